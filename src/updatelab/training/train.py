"""`train_lora`: LoRA fine-tuning of a causal LM with PEFT inside a Lightning Trainer.

Layout of `out_dir`:

- ``adapter/``: the trained adapter (``adapter_model.safetensors`` + ``adapter_config.json``),
  loadable with ``PeftModel.from_pretrained(base_model, out_dir / "adapter")``;
- ``checkpoints/last.ckpt``: the latest Lightning checkpoint, adapter tensors + AdamW state
  only (~3x the adapter, never the base model). It is written every
  `checkpoint_every_n_steps` optimizer steps and once more when training ends, and it is
  **kept** after a successful run: it is small, and it makes `train_lora` resumable and
  extendable: a call on an `out_dir` that holds it continues from its step (an interrupted
  run continues where it stopped; the same call again returns at once with the trained
  adapter; a larger `max_steps` trains on from the saved step). A checkpoint written by a
  different run (data, seed, batching or adapter shape) is refused with an error.

`model` is modified in place: PEFT injects the LoRA layers into it. Its original weights are
never changed (only LoRA parameters require grad; a test checks bit-identity), and
``peft_model.unload()`` gives back the original module without the LoRA layers.

The defaults and the Trainer's setup (precision, LoRA config, checkpoint callback, placement)
are in :mod:`updatelab.training.trainer_setup`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch

from updatelab import threads
from updatelab.signals import StopOnSignal
from updatelab.training.datamodule import LoraDataModule
from updatelab.training.dev_selection import DevSelection
from updatelab.training.examples import TrainExample, TrainStats
from updatelab.training.frozen_weights import FrozenWeightsCast
from updatelab.training.log_progress import LogProgress
from updatelab.training.module import LoraLightningModule
from updatelab.training.trainer_setup import (
    _OWN_TRAINER_KEYS,
    ADAPTER_DEFAULTS,
    TRAINER_DEFAULTS,
    FinalStepCheckpoint,
    _placement,
    _trainer_world_size,
    build_lora_config,
    resolve_precision,
)

log = logging.getLogger(__name__)


def _fingerprint(data: LoraDataModule, acfg: Mapping[str, Any], seed: int) -> str:
    h = hashlib.sha256()
    for it in data.items:
        h.update(it.input_ids.numpy().tobytes())
        h.update(it.labels.numpy().tobytes())
        if it.stage:
            h.update(f"stage{it.stage}".encode())
    if data.staged:
        h.update(repr(data.buckets).encode())
    targets = acfg.get("target_modules")
    shape = (int(acfg["r"]), float(acfg["alpha"]), targets if isinstance(targets, str) or targets is None else sorted(targets))
    if acfg.get("method", "lora") != "lora":
        shape = (acfg["method"],)
    h.update(repr((shape, data.batch_size, seed)).encode())
    return h.hexdigest()[:16]


def train_lora(
    model,
    tokenizer,
    examples: Sequence[TrainExample],
    adapter_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    out_dir: str | Path,
    seed: int,
    logger=None,
    progress: bool = True,
    dev_score: Callable[[Any], float] | None = None,
):
    """Train a LoRA adapter on `examples`; return ``(peft_model in eval mode, TrainStats)``.

    With ``adapter_cfg["method"] == "full"`` every weight of `model` trains instead (full
    fine-tuning, the reference LoRA is compared to): `model` itself is returned, changed in place,
    and saved whole under ``out_dir/model``. `dev_score(model) -> float` scores held-out dev
    questions; with ``select: best_dev`` the weights of the best-scoring step are returned.

    `adapter_cfg` keys (see `ADAPTER_DEFAULTS`): r, alpha, dropout, target_modules (list of
    module names, "all-linear" or None = all attention+MLP linears), lr, weight_decay, epochs,
    max_steps (None = epochs), batch_size, max_length, warmup_ratio, scheduler
    ("cosine" | "constant"), min_lr_ratio, pad_to_multiple_of.
    `trainer_cfg` keys (see `TRAINER_DEFAULTS`): accelerator, devices, strategy, precision,
    log_every_n_steps, checkpoint_every_n_steps, enable_progress_bar, gradient_clip_val,
    accumulate_grad_batches, deterministic, callbacks (extra callback objects); other keys go
    to `pl.Trainer` unchanged.
    `logger`: a Lightning logger (e.g. a `WandbLogger` on the caller's run) or None.
    """
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError("train_lora expects the base model, not a PeftModel (unload() it first)")
    acfg = {**ADAPTER_DEFAULTS, **{k: v for k, v in dict(adapter_cfg).items()}}
    method = acfg["method"]
    if method not in ("lora", "full"):
        raise ValueError(f"adapter.method must be 'lora' or 'full', got {method!r}")
    if acfg["select"] not in ("last", "best_dev"):
        raise ValueError(f"adapter.select must be 'last' or 'best_dev', got {acfg['select']!r}")
    tcfg = {**TRAINER_DEFAULTS, **{k: v for k, v in dict(trainer_cfg).items()}}
    extra = {k: v for k, v in tcfg.items() if k not in _OWN_TRAINER_KEYS}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"

    pl.seed_everything(seed, workers=True, verbose=False)
    data = LoraDataModule(
        tokenizer,
        examples,
        batch_size=int(acfg["batch_size"]),
        max_length=int(acfg["max_length"]),
        seed=seed,
        pad_to_multiple_of=acfg.get("pad_to_multiple_of"),
        epochs=float(acfg["epochs"]) if acfg["epochs"] is not None else 1.0,
    )

    if method == "full":
        peft_model = model
        for p in peft_model.parameters():
            p.requires_grad_(True)
        trainable = total = sum(p.numel() for p in peft_model.parameters())
    else:
        with warnings.catch_warnings():
            # peft 0.21 reads `model.is_gradient_checkpointing`, deprecated in transformers 5.
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, build_lora_config(acfg))
        bad = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
        if bad:
            raise RuntimeError(f"non-LoRA parameters require grad: {bad[:5]}")
        trainable, total = peft_model.get_nb_trainable_parameters()

    single = str(tcfg["devices"]) in ("1", "[0]") and int(tcfg.get("num_nodes") or 1) == 1
    if single and tcfg["accelerator"] == "cpu":
        threads.resample()  # before the precision is timed: both at the thread count the training gets
    precision = resolve_precision(tcfg.get("precision"), tcfg["accelerator"], model=peft_model, data=data,
                                  attn_implementation=tcfg.get("attn_implementation"))
    accum = int(tcfg.get("accumulate_grad_batches") or 1)
    max_steps = acfg.get("max_steps")
    epochs = float(acfg["epochs"]) if acfg["epochs"] is not None else 1.0
    if max_steps is None and acfg["epochs"] is None:
        raise ValueError("adapter: set epochs or max_steps")
    world = 1
    if not single:
        world = _trainer_world_size(tcfg, precision, extra)
    steps_per_epoch = math.ceil(data.batches_per_epoch(world) / accum)
    if max_steps is None:
        # A staged schedule already holds every stage's epochs.
        max_steps = max(1, math.ceil((1.0 if data.staged else epochs) * steps_per_epoch))
    max_steps = int(max_steps)
    every = tcfg.get("checkpoint_every_n_steps") or steps_per_epoch

    module = LoraLightningModule(
        peft_model,
        lr=acfg["lr"],
        weight_decay=acfg["weight_decay"],
        warmup_ratio=acfg["warmup_ratio"],
        scheduler=acfg["scheduler"],
        min_lr_ratio=acfg.get("min_lr_ratio") or 0.0,
        fingerprint=_fingerprint(data, acfg, seed),
    )
    # Under bf16 autocast the adapted layers compute with bf16 copies of their frozen weights anyway.
    frozen_cast = FrozenWeightsCast(peft_model) if method == "lora" and precision == "bf16-mixed" else None
    if frozen_cast is not None and dev_score is not None:
        score_at_own_precision = dev_score

        def dev_score(m):  # generation chooses its own precision, which may be fp32
            with frozen_cast.original():
                return score_at_own_precision(m)
    checkpoint_cb = FinalStepCheckpoint(ckpt_dir, int(every))
    callbacks = [checkpoint_cb, *(tcfg.get("callbacks") or [])]
    selector = None
    if dev_score is not None:
        n_evals = epochs * (len({it.stage for it in data.items}) if data.staged else 1)
        dev_every = acfg.get("dev_every_steps") or max(1, round(max_steps / max(1.0, n_evals)))
        selector = DevSelection(
            dev_score, int(dev_every), acfg.get("patience"),
            on_stop=lambda tr: tr.save_checkpoint(checkpoint_cb.last_path, weights_only=False),
        )
        callbacks.append(selector)
    elif acfg["select"] == "best_dev":
        raise ValueError("adapter.select=best_dev needs a dev split (dev.jsonl); none was given")
    # A redirected log gets lines instead of the bar (which would leave its last frame there).
    redirected = not sys.stdout.isatty()
    if progress and redirected:
        callbacks.append(LogProgress(every=max(1, max_steps // 20)))
    callbacks.append(StopOnSignal(checkpoint_cb.last_path))  # SIGTERM/INT/USR2: save last.ckpt now, stop (updatelab.signals)
    trainer = pl.Trainer(
        **_placement(tcfg, precision, extra),
        max_steps=max_steps,
        # max_steps decides; max_epochs (the epochs those steps touch) only labels the progress bar
        max_epochs=math.ceil(max_steps / steps_per_epoch),
        log_every_n_steps=int(tcfg["log_every_n_steps"]),
        enable_progress_bar=bool(progress and tcfg["enable_progress_bar"] and not redirected),
        gradient_clip_val=tcfg.get("gradient_clip_val"),
        accumulate_grad_batches=accum,
        deterministic=tcfg.get("deterministic"),
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        default_root_dir=str(out_dir),
        use_distributed_sampler=False,  # the bucket sampler shards batches itself
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )

    ckpt_path = str(last_ckpt) if last_ckpt.exists() else None
    log.info(
        "%s: %d/%d trainable params; %d seqs, %d tokens/epoch (%.1f%% padding), "
        "%d steps, precision %s%s%s",
        "full fine-tuning" if method == "full" else f"LoRA r={acfg['r']} on {acfg.get('target_modules') or 'all-linear'}",
        trainable, total, data.num_sequences,
        data.tokens_per_epoch, 100 * data.padding_fraction, max_steps, precision,
        f" (frozen weights of {len(frozen_cast)} adapted layers held in bf16)" if frozen_cast is not None else "",
        f", resuming from {ckpt_path}" if ckpt_path else "",
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # num_workers=0 is deliberate (data is in memory); out_dir/checkpoints is reused on purpose.
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        base_model = peft_model.get_base_model() if method == "lora" else peft_model
        attn_before = base_model.config._attn_implementation
        try:
            if tcfg.get("attn_implementation"):
                base_model.set_attn_implementation(tcfg["attn_implementation"])
            if frozen_cast is not None:
                frozen_cast.apply()
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
        finally:
            # Training and generation are fastest with different kernels on CPU.
            base_model.set_attn_implementation(attn_before)
            if frozen_cast is not None:
                frozen_cast.restore()
    wall = time.perf_counter() - t0

    if selector is not None:
        with torch.inference_mode(False):
            selector.finish(peft_model, int(trainer.global_step), restore_best=acfg["select"] == "best_dev")
    peft_model.eval()
    if method == "full":
        for p in peft_model.parameters():
            p.requires_grad_(False)
    tokens, trained_tokens, micro, computed = module.global_counters()
    wall_s = module.prior_wall_s + wall  # the whole run, as the counters

    adapter_dir = out_dir / ("model" if method == "full" else "adapter")
    if trainer.is_global_zero:
        peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    trainer.strategy.barrier("train_lora.save_adapter")
    weights = adapter_dir / ("model.safetensors" if method == "full" else "adapter_model.safetensors")
    adapter_bytes = weights.stat().st_size if weights.exists() else 0

    curve = list(module.loss_curve)
    tail = curve[-10:]
    passes = micro / max(1, data.batches_per_epoch(trainer.world_size) * trainer.world_size)
    stats = TrainStats(
        steps=int(trainer.global_step),
        epochs=passes * epochs if data.staged else passes,
        tokens=tokens,
        trained_tokens=trained_tokens,
        computed_tokens=computed,
        wall_s=wall_s,
        tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
        final_loss=sum(tail) / len(tail) if tail else float("nan"),
        loss_curve=curve,
        trainable_params=int(trainable),
        total_params=int(total),
        adapter_bytes=int(adapter_bytes),
        adapter_path=str(adapter_dir),
        resumed_from_step=int(module.resumed_from_step),
        padding_fraction=float(data.padding_fraction),
        method=method,
        dev=selector.summary() if selector is not None else None,
        selected_step=(selector.best_step if selector is not None and acfg["select"] == "best_dev"
                       else int(trainer.global_step)),
    )
    if logger is not None:
        logger.log_metrics(
            {
                "train/tokens_per_s": stats.tokens_per_s,
                "train/wall_s": stats.wall_s,
                "train/tokens": stats.tokens,
                "train/trained_tokens": stats.trained_tokens,
                "train/final_loss": stats.final_loss,
                "train/adapter_bytes": stats.adapter_bytes,
            },
            step=stats.steps,
        )
    return peft_model, stats
