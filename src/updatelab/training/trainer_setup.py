"""How `train_lora` (:mod:`updatelab.training.train`) sets up its Trainer: the adapter and
trainer defaults, the training precision, the LoRA config, the checkpoint callback that also saves
the final step, and where (on how many processes) the Trainer runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from updatelab.training.datamodule import LoraDataModule
from updatelab.training.frozen_weights import FrozenWeightsCast, adapted_linears

LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The same values as configs/adapter/lora.yaml, for callers of the library without Hydra; `select`
# and `patience` default to "last" and None here: a library caller may have no dev scorer.
ADAPTER_DEFAULTS: dict[str, Any] = {
    "method": "lora",  # lora | full (full fine-tuning: every weight trains, no adapter)
    "r": 16,
    "alpha": 32,
    "dropout": 0.0,
    "target_modules": None,  # None: every linear layer of attention and MLP (PEFT "all-linear", no lm_head)
    "lr": 1e-3,
    "weight_decay": 0.0,
    "epochs": 6,
    "max_steps": None,  # None: derived from epochs
    "batch_size": 16,
    "max_length": 384,
    "warmup_ratio": 0.05,
    "scheduler": "constant",
    "min_lr_ratio": 0.0,
    "pad_to_multiple_of": None,
    "select": "last",  # last | best_dev: keep the weights of the best dev-scored step (needs a dev scorer)
    "dev_every_steps": None,  # None: once per data epoch
    "patience": None,  # stop after this many dev evaluations without improvement; None: never
}

TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "strategy": "auto",
    "precision": None,  # None/"auto": bf16-mixed where the device supports bf16, else 32-true / 16-mixed
    "log_every_n_steps": 1,
    "checkpoint_every_n_steps": None,  # None: once per epoch's worth of steps
    "enable_progress_bar": True,
    "gradient_clip_val": 1.0,
    "accumulate_grad_batches": 1,
    "deterministic": None,  # True also calls torch.use_deterministic_algorithms (process-wide)
    "attn_implementation": None,  # None: keep the model's; e.g. "eager" on CPU (see configs/trainer/cpu.yaml)
}

# Keys of the trainer config that this module consumes; any other key is passed to pl.Trainer.
_OWN_TRAINER_KEYS = set(TRAINER_DEFAULTS) | {"num_nodes", "callbacks"}


def resolve_precision(precision: Any, accelerator: str, model=None, data: LoraDataModule | None = None,
                      attn_implementation: str | None = None, max_rows: int | None = None) -> str:
    """The Lightning precision of the training; explicit values are returned unchanged.

    `None`/"auto" (`updatelab.hardware.choose`, phase ``train``): on a GPU bf16-mixed where
    supported (else 16-mixed); on the CPU the faster of 32-true and bf16-mixed, measured once per
    machine on a real step of `model` (forward + backward of the training loss) on a middle-length
    batch of `data` (a whole batch unless `max_rows` caps it: a batch of a few rows underrates bf16 on
    CPUs whose bf16 matmuls are fast, because the fixed costs of a step weigh more), with the
    training's attention kernel and, under bf16-mixed, the frozen weights in bf16. Without
    `model` and `data` (and no cached measurement) the CPU falls back to 32-true.
    """
    from updatelab import hardware
    from updatelab.training.loss import labelled_positions_loss

    acc = str(accelerator).lower()
    device = "cuda" if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()) else (
        "cpu" if acc in ("cpu", "auto") else acc)
    requested = "auto" if precision in (None, "auto") else str(precision)
    measure = None
    if model is not None and data is not None and device == "cpu":
        bucket = data.buckets[len(data.buckets) // 2]
        batch = data.collator([data.items[i] for i in bucket[:max_rows]])
        casts: list[FrozenWeightsCast] = []  # made at the first measurement (not when the cache answers), outside the timing

        def measure(candidate: str) -> None:
            if not casts:
                casts.append(FrozenWeightsCast(model))
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            attn_before, was_training = base.config._attn_implementation, model.training
            # The RNG state is kept: whether a measurement ran must not change the training.
            with torch.random.fork_rng(devices=[]):
                try:
                    if attn_implementation:
                        base.set_attn_implementation(attn_implementation)
                    model.train()
                    bf16 = candidate == "bf16-mixed"
                    if bf16:  # what the training runs: under bf16-mixed the frozen weights are held in bf16
                        casts[0].apply()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        loss = labelled_positions_loss(model, batch)
                    loss.backward()
                finally:
                    casts[0].restore()
                    model.zero_grad(set_to_none=True)
                    model.train(was_training)
                    base.set_attn_implementation(attn_before)

    mid = hardware.model_id(model, trainable=True) if model is not None else ""
    if model is not None and data is not None:
        # What the measurement times belongs to the key: a whole batch, frozen weights in bf16 under bf16-mixed.
        mid += f":{len(data.buckets[len(data.buckets) // 2][:max_rows])}rows" + (":frozen-bf16" if adapted_linears(model) else "")
    return hardware.choose("train", requested, measure=measure, model=mid, device=device).precision


def build_lora_config(adapter_cfg: Mapping[str, Any]):
    from peft import LoraConfig, TaskType

    targets = adapter_cfg.get("target_modules")
    if targets is None:
        targets = "all-linear"
    elif not isinstance(targets, str):
        targets = list(targets)
    return LoraConfig(
        r=int(adapter_cfg["r"]),
        lora_alpha=float(adapter_cfg["alpha"]),
        lora_dropout=float(adapter_cfg["dropout"]),
        target_modules=targets,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


class FinalStepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (last.ckpt only) that also saves at the final optimizer step.

    Lightning's own end-of-training save (`on_train_end`) is skipped once any periodic
    checkpoint exists, and when it does run it records a post-loop state ("epoch finished")
    from which a resume skips the rest of the epoch. Saving at the final batch end instead
    records the same loop state as a periodic save.
    """

    def __init__(self, dirpath: Path, every_n_train_steps: int):
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,  # no step-named files: only last.ckpt
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,  # overwrite last.ckpt, never write last-v1.ckpt
        )
        self.every = int(every_n_train_steps)
        self.last_path = str(Path(dirpath) / "last.ckpt")
        self._final_saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        final = trainer.max_steps > 0 and step >= trainer.max_steps
        if final and step % self.every != 0 and self._final_saved_step != step:
            self._final_saved_step = step
            trainer.save_checkpoint(self.last_path, weights_only=False)  # False = with optimizer state

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning would save last.ckpt here when this session made no periodic save, but
        # after the loop has ended the loop state says "epoch finished": a resume from it
        # skips the rest of the epoch. The final batch-end save above is the correct one.
        return


def _placement(tcfg: Mapping[str, Any], precision: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Where and how the Trainer runs; the world-size probe and the real Trainer must agree."""
    return dict(accelerator=tcfg["accelerator"], devices=tcfg["devices"], strategy=tcfg["strategy"],
                num_nodes=int(tcfg.get("num_nodes") or 1), precision=precision, **extra)


def _trainer_world_size(tcfg: Mapping[str, Any], precision: str, extra: Mapping[str, Any]) -> int:
    """World size the Trainer will use (devices x nodes), resolved by Lightning itself."""
    probe = pl.Trainer(
        **_placement(tcfg, precision, extra),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return int(probe.world_size)
