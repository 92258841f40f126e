"""Training progress as log lines, for logs that are not a terminal.

Lightning's tqdm bar redraws one line with carriage returns on stdout; in a redirected log (a
`make run > log`, a SLURM .out file) the minutes of LoRA training then show nothing at all. This
callback writes a plain line every `every` optimizer steps: step, epoch, loss, tokens/s, elapsed
and the time left at the current rate.
"""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

log = logging.getLogger("updatelab.training")


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


class LogProgress(pl.Callback):
    def __init__(self, every: int):
        self.every = max(1, int(every))
        self._t0 = 0.0
        self._step0 = 0
        self._tokens0 = 0
        self._last = 0  # the last step written (or the session's first): with accumulation a step ends several batches

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume the rate counts only this session's steps and tokens.
        self._t0 = time.perf_counter()
        self._step0 = self._last = trainer.global_step
        self._tokens0 = getattr(pl_module, "tokens", 0)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if step == self._last or not trainer.is_global_zero or (step % self.every and step != total):
            return
        self._last = step
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._step0) / elapsed if elapsed > 0 else 0.0
        curve = getattr(pl_module, "loss_curve", [])
        tok_s = (getattr(pl_module, "tokens", 0) - self._tokens0) * trainer.world_size / elapsed if elapsed > 0 else 0.0
        left = (total - step) / rate if rate > 0 else float("nan")
        log.info(
            "train step %d/%d (epoch %d): loss %.3f, %.0f tok/s, %s elapsed, ~%s left",
            step, total, trainer.current_epoch, curve[-1] if curve else float("nan"), tok_s, _clock(elapsed),
            _clock(left) if left == left else "?",
        )
