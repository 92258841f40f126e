"""Signals are part of the contract (../shared/DESIGN.md): a cell is either finished (its results
file exists) or it is not -- exit status != 0, training checkpoint saved, W&B run failed.

SIGTERM (``kill``, SLURM at a time limit or preemption), SIGINT (Ctrl+C) and SIGUSR2 (submitit's
timeout/preemption signal, sent ``signal_delay_s`` before the limit) all stop the running cell:

- outside training, at once: the handler raises `CellInterrupted` (a `SystemExit`, so that no
  ``except Exception`` -- Hydra's ``run_job``, submitit's ``process_job`` -- turns it into a
  "failed job" and carries on with the next cell of a sweep);
- during training, at the next batch end: the handler only records the signal, and
  `StopOnSignal` (a Lightning callback in `train_lora`) saves ``checkpoints/last.ckpt`` with the
  optimizer state -- the same loop state as a periodic save, so a re-run resumes from it -- and
  then raises. A second signal while the first waits for the batch end raises at once.

Exit statuses (what a shell reports for a process killed by the signal): SIGTERM 143, SIGINT 130,
SIGUSR2 140 (128 + 12). Under submitit (``hydra/launcher=local|slurm``) submitit has installed its
own SIGUSR2 handler before the cell starts (``JobEnvironment._handle_signals``): after the
checkpoint it is called, and it requeues the task through the launcher's ``checkpoint()`` (the
same cell, which then resumes from last.ckpt) and exits itself; after ``max_num_timeout``
requeues it raises submitit's ``UncompletedJobError`` instead. So every attempt ends with a
checkpoint taken at the signal, and a cell advances between attempts.

Lightning installs its own SIGTERM handler while it fits (``_SignalConnector``; on SLURM also a
requeue handler and a "Bypassing SIGTERM" one): `StopOnSignal` turns SLURM auto-requeue off before
Lightning registers them and puts this module's handlers back once training starts (Lightning's
teardown restores them anyway), forwarding the signal to the DDP processes Lightning started
itself, as Lightning's handler does.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("updatelab")

EXIT_CODES: dict[int, int] = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGUSR2: 140}
HANDLED = tuple(EXIT_CODES)


class CellInterrupted(SystemExit):
    """The cell was stopped by a signal; its `code` is the process's exit status."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(EXIT_CODES.get(signum, 128 + int(signum)))

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


class _State:
    depth = 0  # nested `handling_signals()` (the CLI's and the cell's): the outermost one installs
    previous: dict[int, Any] = {}  # the handlers found when installing (submitit's, or the defaults)
    pending: int | None = None  # a signal waiting for a safe point
    deferring = False  # training: wait for the batch end
    forward: Callable[[int], None] | None = None  # e.g. Lightning's launcher.kill for its DDP children


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum: int, frame: Any) -> None:
    if _State.forward is not None:
        with contextlib.suppress(Exception):
            _State.forward(signum)
    first = _State.pending is None
    if first:
        _State.pending = signum
    if _State.deferring and first:
        log.warning("received %s: saving the training checkpoint at the end of this batch, then stopping",
                    _name(signum))
        return
    log.warning("received %s: stopping the cell (no results file is written)", _name(signum))
    interrupt(signum)


def _install() -> None:
    for s in HANDLED:
        signal.signal(s, _handler)


def interrupt(signum: int | None = None) -> None:
    """Stop now (a safe point): hand SIGUSR2 to submitit if it handles it, else raise."""
    signum = signum if signum is not None else _State.pending
    if signum is None:
        return
    _State.deferring = False
    previous = _State.previous.get(signum)
    if signum == signal.SIGUSR2 and callable(previous) and previous is not _handler:
        log.warning("%s: handing over to submitit (requeue of this cell; it resumes from its checkpoint)",
                    _name(signum))
        previous(signum, None)  # submitit: requeue + sys.exit(-1), or UncompletedJobError when out of requeues
    raise CellInterrupted(signum)


def pending() -> int | None:
    return _State.pending


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """Install the handlers for the duration of the block (main thread only; nests)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _State.depth == 0
    if outermost:
        _State.previous = {s: signal.getsignal(s) for s in HANDLED}
        _State.pending, _State.deferring, _State.forward = None, False, None
        _install()
    _State.depth += 1
    try:
        yield
        if _State.pending is not None:  # recorded during a deferral that ended without a safe point
            interrupt()
    finally:
        _State.depth -= 1
        _State.deferring, _State.forward = False, None
        if outermost:
            for s, h in _State.previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            _State.previous, _State.pending = {}, None


def __getattr__(name: str) -> Any:
    # `StopOnSignal` is built on first use: the CLI imports this module before any check of the
    # config, and must not pay for importing Lightning there.
    if name == "StopOnSignal":
        cls = _stop_on_signal_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _stop_on_signal_class() -> type:
    import pytorch_lightning as pl

    class StopOnSignal(pl.Callback):
        """While `trainer.fit` trains: on a signal, save `ckpt_path` at the batch end, then stop."""

        def __init__(self, ckpt_path: str | Path) -> None:
            self.ckpt_path = str(ckpt_path)

        @staticmethod
        def _active() -> bool:
            return _State.depth > 0

        def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
            env = getattr(trainer._accelerator_connector, "cluster_environment", None)
            if self._active() and getattr(env, "auto_requeue", False):
                env.auto_requeue = False  # we checkpoint and submitit requeues; Lightning must not as well

        def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
            if not self._active() or threading.current_thread() is not threading.main_thread():
                return
            _install()  # over Lightning's SIGTERM handler (its teardown restores ours anyway)
            launcher = trainer.strategy.launcher
            _State.forward = getattr(launcher, "kill", None) if launcher is not None else None
            _State.deferring = True
            if _State.pending is not None:  # arrived while Lightning set up
                self._stop(trainer)

        def on_train_batch_end(self, trainer: "pl.Trainer", pl_module, outputs, batch, batch_idx) -> None:
            if self._active() and _State.pending is not None:
                self._stop(trainer)

        def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
            # The final batch end has saved the final step (FinalStepCheckpoint): nothing left to save.
            _State.deferring, _State.forward = False, None
            if self._active() and _State.pending is not None:
                interrupt()

        def on_exception(self, trainer: "pl.Trainer", pl_module, exception: BaseException) -> None:
            _State.deferring, _State.forward = False, None

        def _stop(self, trainer: "pl.Trainer") -> None:
            signum = _State.pending
            _State.deferring = False
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # False = with the optimizer state
            log.warning("%s: training checkpoint saved at step %d (%s); a re-run resumes from it",
                        _name(signum), trainer.global_step, self.ckpt_path)
            interrupt(signum)

    return StopOnSignal
