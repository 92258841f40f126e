"""Sweep progress: how many cells a multirun has, how many are done, which one is running.

Registered in `configs/config.yaml` under `hydra.callbacks`. On multirun start (in the process
that launches the sweep) it expands the grid the way Hydra's basic sweeper does, composes each
cell's config once (what the sweeper's own validation does too) and checks whether the cell's
results file exists:

    sweep update_strategies: 12 cells, 4 done, 8 to run

On job start (in the process that runs the cell: the same one under the basic launcher, a
submitit task under `hydra/launcher=local|slurm`) it prints

    cell 5/12: strategy=stale seed=1
    cell 2/12: strategy=reembed seed=0 -- skip (done)

Only the overrides that differ between cells are shown. Nothing here changes what runs:
`run_cell` itself skips a finished cell (`force=true` re-runs it).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("updatelab.sweep")

MAX_CHECKED = 500  # composing one cell's config takes ~0.1-0.2 s: beyond this many cells, only count them


def sweep_cells(config: DictConfig) -> list[list[str]] | None:
    """Every cell's overrides, in launch order; None for a sweeper other than the basic one."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    args += list(config.hydra.overrides.task)  # the command line wins over hydra.sweeper.params
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(args)
    return [cell for batch in BasicSweeper.split_arguments(overrides, None) for cell in batch]


def cell_done(cfg: DictConfig) -> bool:
    """The cell's results file exists (what makes `run_cell` skip it, unless force=true)."""
    from updatelab.run import run_id_for
    from updatelab.tracking.results import results_path

    return results_path(cfg.paths.results_dir, cfg.name, run_id_for(cfg)).exists()


class SweepProgress(Callback):
    def __init__(self) -> None:
        self.total: int | None = None
        self.common: set[str] = set()  # overrides shared by every cell (not worth printing)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            cells = sweep_cells(config)
        except Exception as e:  # progress output must never stop a sweep
            log.warning("sweep progress: cannot expand the grid (%s)", e)
            return
        if cells is None:
            log.info("sweep progress: not the basic sweeper; cells are counted as they start")
            return
        self.total = len(cells)
        self.common = set.intersection(*(set(c) for c in cells)) if cells else set()
        if self.total > MAX_CHECKED:
            log.info("sweep %s: %d cells (too many to check which are done; finished ones are skipped)",
                     config.name, self.total)
            return
        done, force = self._count_done(config, cells)
        todo = self.total - (0 if force else done)
        extra = " (force=true: they run again)" if force and done else ""
        log.info("sweep %s: %d cell%s, %d done, %d to run%s [%.1fs]", config.name, self.total,
                 "" if self.total == 1 else "s", done, todo, extra, time.perf_counter() - t0)

    def _count_done(self, config: DictConfig, cells: Sequence[Sequence[str]]) -> tuple[int, bool]:
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        hc = HydraConfig.instance()
        previous = hc.cfg
        done, force = 0, False
        try:
            for cell in cells:
                try:
                    cfg = loader.load_sweep_config(config, list(cell))
                    hc.set_config(cfg)  # ${hydra:runtime.cwd} in paths.root resolves through it
                    done += cell_done(cfg)
                    force = force or bool(cfg.force)
                except Exception as e:  # a cell that does not compose fails when it runs, with Hydra's error
                    log.debug("sweep progress: cannot check %s: %s", " ".join(cell), e)
        finally:
            hc.cfg = previous
        return done, force

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        if hydra.mode != RunMode.MULTIRUN:
            return
        num = int(hydra.job.num) + 1
        shown = [o for o in hydra.overrides.task if o not in self.common] or list(hydra.overrides.task)
        where = f"{num}/{self.total}" if self.total else str(num)
        try:
            skip = cell_done(config) and not config.force
        except Exception:
            skip = False
        log.info("cell %s: %s%s", where, " ".join(shown), " -- skip (done)" if skip else "")
