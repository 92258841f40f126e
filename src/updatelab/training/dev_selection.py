"""Checkpoint selection and early stopping on a development split.

Training to convergence on new facts degrades what the model knew (Gekhman et al. 2024), and
how long a recipe should train differs between recipes; so training is scored on held-out dev
questions (never an evaluation question) every `every_n_steps` optimizer steps, the trainable
weights of the best-scoring step are kept, and training stops once `patience` evaluations in a
row have not improved on the best. `restore_best` puts the best weights back after training.

The callback's state (history, best step and its weights, whether it stopped) travels in the
Lightning checkpoint, so a resumed run selects exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class DevSelection(pl.Callback):
    def __init__(self, score: Callable[[torch.nn.Module], float], every_n_steps: int, patience: int | None = None,
                 on_stop: Callable[[pl.Trainer], None] | None = None):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or null, got {patience}")
        self.score_fn = score
        self.every = int(every_n_steps)
        self.patience = patience
        self.on_stop = on_stop
        self.history: list[tuple[int, float]] = []  # (optimizer step, dev score)
        self.best_step = -1
        self.best_score = float("-inf")
        self.best_state: dict[str, torch.Tensor] = {}
        self.stopped = False

    @property
    def state_key(self) -> str:
        return "DevSelection"

    # -- scoring ----------------------------------------------------------------------------------
    def evaluate(self, module: torch.nn.Module, step: int) -> float:
        if self.history and self.history[-1][0] == step:
            return self.history[-1][1]
        was_training = module.training
        module.eval()
        try:
            score = float(self.score_fn(module))
        finally:
            module.train(was_training)
        self.history.append((step, score))
        if score > self.best_score:  # ties keep the earlier (less trained) step
            self.best_score, self.best_step = score, step
            self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters()
                               if p.requires_grad}
        log.info("dev score at step %d: %.3f (best %.3f at step %d)", step, score, self.best_score, self.best_step)
        return score

    def _since_best(self) -> int:
        return sum(1 for s, _ in self.history if s > self.best_step)

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopped:  # a re-run of a run that already stopped early
            trainer.should_stop = True
        elif not self.history:
            self.evaluate(pl_module.model, int(trainer.global_step))  # step 0: the base model

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step == 0 or step % self.every != 0 or (self.history and self.history[-1][0] == step):
            return
        self.evaluate(pl_module.model, step)
        if self.patience is not None and self._since_best() >= self.patience:
            log.info("early stop at step %d: no dev improvement in %d evaluations", step, self.patience)
            self.stopped = True
            trainer.should_stop = True
            if self.on_stop is not None:
                self.on_stop(trainer)

    def finish(self, module: torch.nn.Module, step: int, restore_best: bool = True) -> None:
        """Score the final step (if not yet) and, with `restore_best`, load the best weights."""
        self.evaluate(module, step)
        if restore_best and self.best_state and self.best_step != step:
            params = dict(module.named_parameters())
            with torch.no_grad():
                for name, value in self.best_state.items():
                    params[name].copy_(value.to(params[name].device))
            log.info("restored the weights of step %d (dev %.3f)", self.best_step, self.best_score)

    def summary(self) -> dict[str, Any]:
        return {"history": [[s, v] for s, v in self.history], "best_step": self.best_step,
                "best_score": self.best_score, "stopped_early": self.stopped}

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "best_step": self.best_step, "best_score": self.best_score,
                "best_state": self.best_state, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(s), float(v)) for s, v in state["history"]]
        self.best_step, self.best_score = int(state["best_step"]), float(state["best_score"])
        self.best_state, self.stopped = dict(state["best_state"]), bool(state["stopped"])
