"""A minimum wall time per training step, for the cluster tests only: on PYTHONPATH (with its
dist-info beside it) Lightning loads it through its `pytorch_lightning.callbacks_factory` entry
point. With UPDATELAB_TEST_MIN_STEP_S set, each step lasts at least that long, so that the number
of steps one SLURM attempt gets within its time limit hardly depends on the machine's speed.
Sleeping touches no random state: the trained weights do not change."""

import os
import time

import pytorch_lightning as pl


class MinStepTime(pl.Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.monotonic()

    def on_train_batch_start(self, *args) -> None:
        self.t0 = time.monotonic()

    def on_train_batch_end(self, *args) -> None:
        time.sleep(max(0.0, self.seconds - (time.monotonic() - self.t0)))


def factory() -> list[pl.Callback]:
    seconds = float(os.environ.get("UPDATELAB_TEST_MIN_STEP_S") or 0)
    return [MinStepTime(seconds)] if seconds > 0 else []
