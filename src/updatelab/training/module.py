"""LightningModule around a PEFT model: AdamW on the adapter, warmup + cosine/constant, adapter-only checkpoints.

Checkpoints hold only what cannot be rebuilt from the base model: `on_save_checkpoint` keeps
the trainable (LoRA) tensors in ``checkpoint["state_dict"]`` and `strict_loading = False` lets
Lightning load that partial state dict on resume (the frozen base comes from the model the
caller passes in). Optimizer and scheduler state cover trainable parameters only, so a
checkpoint is ~3x the adapter (weights + two AdamW moments), never the base model.

The checkpoint also carries the run's counters (tokens, loss curve, ...), the torch RNG
state (LoRA dropout) and a fingerprint of data + adapter shape: a resume continues the exact
same run, and a stale checkpoint from a different run is refused instead of silently mixed in.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl
import torch

from updatelab.training.datamodule import IGNORE_INDEX
from updatelab.training.loss import computed_tokens, labelled_positions_loss, prefix_to_share

CKPT_KEY = "updatelab"


def lr_lambda_factory(total_steps: int, warmup_steps: int, scheduler: str, min_lr_ratio: float = 0.0):
    """Multiplier of the base lr at optimizer step `s` (0-based).

    Linear warmup from lr/(warmup+1) (the first step already moves the weights), then cosine
    decay towards `min_lr_ratio * lr` (reached after the last step) or a constant lr.
    """
    if scheduler not in ("cosine", "constant"):
        raise ValueError(f"scheduler must be 'cosine' or 'constant', got {scheduler!r}")

    def fn(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        if scheduler == "constant":
            return 1.0
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


class LoraLightningModule(pl.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        scheduler: str = "cosine",
        min_lr_ratio: float = 0.0,
        fingerprint: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.warmup_ratio = float(warmup_ratio)
        self.scheduler_name = scheduler
        self.min_lr_ratio = float(min_lr_ratio)
        self.fingerprint = fingerprint
        # Checkpoints hold only the adapter; the base weights are not in them.
        self.strict_loading = False
        self.trainable_names = [n for n, p in self.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise ValueError("the model has no trainable parameter")
        # Whole-run counters (restored on resume) ...
        self.tokens = 0
        self.computed_tokens = 0  # positions run through the model: a shared prefix counts once per batch
        self.trained_tokens = 0
        self.micro_batches = 0
        self.loss_curve: list[float] = []
        # Resume bookkeeping.
        self.resumed_from_step = 0
        self.prior_wall_s = 0.0  # wall time of earlier sessions, up to the checkpoint resumed from
        self._t_fit: float | None = None
        self._step_losses: list[float] = []
        self._pending_rng: dict[str, Any] | None = None
        lr_lambda_factory(1, 0, scheduler)  # validate the name early

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        # Not `trainer.estimated_stepping_batches`: with a finite max_epochs it builds the train
        # dataloader before the checkpoint is restored, so the loader's resume state is never
        # loaded (pytorch-lightning 2.6). `train_lora` always sets max_steps.
        total = int(self.trainer.max_steps)
        if total <= 0:
            raise ValueError("LoraLightningModule needs Trainer(max_steps=...) for its lr schedule")
        warmup = int(math.ceil(self.warmup_ratio * total)) if self.warmup_ratio > 0 else 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda_factory(total, warmup, self.scheduler_name, self.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        prefix = prefix_to_share(self.model, batch)
        loss = labelled_positions_loss(self.model, batch, prefix=prefix)
        self.tokens += int(batch["attention_mask"].sum())
        self.computed_tokens += computed_tokens(batch, prefix)
        self.trained_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.micro_batches += 1
        self._step_losses.append(float(loss.detach()))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # Runs once per optimizer step, after the last accumulated backward.
        step_loss = sum(self._step_losses) / max(1, len(self._step_losses))
        self._step_losses = []
        self.loss_curve.append(step_loss)
        lr = optimizer.param_groups[0]["lr"]
        self.log("train/loss", step_loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=False, batch_size=1)

    # -- modes and timing ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # Lightning 2.x no longer calls .train(); callers hand over models in eval mode
        # (`load_lm` does), which would silently switch LoRA dropout off.
        self.train()
        self._t_fit = time.perf_counter()

    def on_train_start(self) -> None:
        self._restore_rng()

    # -- checkpoints ----------------------------------------------------------------------------
    def global_counters(self) -> list[int]:
        """(tokens, trained_tokens, micro_batches, computed_tokens) of the whole run, summed over ranks."""
        counts = [self.tokens, self.trained_tokens, self.micro_batches, self.computed_tokens]
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            t = torch.tensor(counts, dtype=torch.float64, device=self.device)
            counts = [int(x) for x in trainer.strategy.reduce(t, reduce_op="sum").tolist()]
        return counts

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_names)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        tokens, trained, micro, computed = self.global_counters()
        session_s = time.perf_counter() - self._t_fit if self._t_fit is not None else 0.0
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[CKPT_KEY] = {
            "fingerprint": self.fingerprint,
            "tokens": tokens,
            "trained_tokens": trained,
            "micro_batches": micro,
            "computed_tokens": computed,
            "wall_s": self.prior_wall_s + session_s,
            "world_size": self._trainer.world_size if self._trainer is not None else 1,
            "loss_curve": list(self.loss_curve),
            "rng": rng,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CKPT_KEY)
        if state is None:
            raise ValueError("not an updatelab LoRA checkpoint (no adapter-run state in it)")
        if self.fingerprint is not None and state.get("fingerprint") not in (None, self.fingerprint):
            raise ValueError(
                "the checkpoint in out_dir was written by a different run (other data, seed, batching "
                "or adapter shape); delete it or use another out_dir"
            )
        missing = sorted(set(self.trainable_names) - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} adapter tensors, e.g. {missing[:3]}")
        extra = sorted(set(checkpoint["state_dict"]) - set(self.trainable_names))
        if extra:
            raise ValueError(f"checkpoint holds tensors that are not trainable here, e.g. {extra[:3]}")
        # Counters are global sums; under DDP each rank keeps its share so the end-of-run sum is right.
        ws = self._trainer.world_size if self._trainer is not None else 1
        rank = self._trainer.global_rank if self._trainer is not None else 0

        def share(total: int) -> int:
            return total // ws + (total % ws if rank == 0 else 0)

        self.tokens = share(int(state["tokens"]))
        self.trained_tokens = share(int(state["trained_tokens"]))
        self.micro_batches = share(int(state["micro_batches"]))
        self.computed_tokens = share(int(state.get("computed_tokens", state["tokens"])))  # older checkpoints ran every token
        self.loss_curve = list(state["loss_curve"])
        self.resumed_from_step = int(checkpoint.get("global_step", 0))
        self.prior_wall_s = float(state.get("wall_s", 0.0))
        # Applied in on_train_start: between here and the first batch Lightning creates the
        # DataLoader iterator, which draws a base seed from the global generator.
        self._pending_rng = state.get("rng") or None

    def _restore_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if not rng:
            return
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(rng["cuda"])
            except Exception:  # different device count: leave the CUDA generators as seeded
                pass
