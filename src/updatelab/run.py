"""Run one matched cell: build the base system, apply a strategy, evaluate, record.

    updatelab strategy=reembed seed=1             # one cell
    updatelab -m strategy=stale,reembed,lora      # matched arms (Hydra multirun)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from updatelab import config_schema

log = logging.getLogger("updatelab")
# FAISS's loader logs each AVX build it lacks as "Could not load library ... ModuleNotFoundError"
# (at INFO, before it loads the generic build): read as failures, they are not.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

# A wheel carries the config tree inside the package (setup.py); a checkout has it at the top.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = str(_PACKAGED_CONFIGS if _PACKAGED_CONFIGS.is_dir() else Path(__file__).resolve().parents[2] / "configs")
# The YAML files name their schemas (updatelab/config_schema.py): stored before anything composes them.
config_schema.register()
# Groups every arm shares; a strategy adds the groups it uses (LoRA: adapter, trainer, qa_generator).
SHARED_KEYS = ("name", "seed", "model", "embedder", "data", "index", "eval", "shift")
# Groups added after results existed: at this option they do nothing, and leave a cell's run id as it was.
INERT_OPTIONS = {"qa_generator": "none"}

def _project_root() -> str:
    """UPDATELAB_ROOT if set, else the directory the command was started in (Hydra keeps cwd)."""
    return os.environ.get("UPDATELAB_ROOT") or os.getcwd()


if not OmegaConf.has_resolver("ul.uid"):
    OmegaConf.register_new_resolver("ul.uid", lambda: uuid.uuid4().hex[:6], use_cache=True)
if not OmegaConf.has_resolver("ul.root"):
    OmegaConf.register_new_resolver("ul.root", _project_root)


def cell_config(cfg: DictConfig) -> dict[str, Any]:
    """The part of the config that defines a cell's result (not paths, logging or verbosity)."""
    from hydra.utils import get_class

    keys = list(SHARED_KEYS) + ["strategy"] + list(getattr(get_class(cfg.strategy._target_), "config_groups", ()))
    keys = [k for k in keys if k not in INERT_OPTIONS or OmegaConf.select(cfg, f"{k}.name") not in (None, INERT_OPTIONS[k])]
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k] for k in keys}
    if cfg.data.source == "synthetic":  # the same parameters make other files after a generator change
        from updatelab.data.synthetic import GENERATOR_VERSION

        out["data_generator_version"] = GENERATOR_VERSION
    return out


def run_id_for(cfg: DictConfig) -> str:
    """Deterministic, so that a re-run finds a finished cell's results file and skips it."""
    digest = hashlib.sha256(json.dumps(cell_config(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.strategy.name}_s{cfg.seed}_{digest}"


def output_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # called outside @hydra.main (tests compose configs directly)
        return Path("outputs")


def run_cell(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any] | None:
    from updatelab.config_check import validate

    # every cell (e.g. of an experiment's sweep grid), before anything is written or loaded -- and
    # before torch and the model libraries are imported: a bad value fails in about a second
    validate(cfg)
    from hydra.utils import instantiate

    from updatelab import threads
    from updatelab.pipeline import execute
    from updatelab.signals import handling_signals
    from updatelab.tracking.results import results_path

    run_id = run_id_for(cfg)
    target = results_path(cfg.paths.results_dir, cfg.name, run_id)
    if target.exists() and not cfg.force:
        log.info("cell %s already done (%s); skipping (force=true re-runs it)", run_id, target)
        return None
    # SIGTERM / SIGINT / SIGUSR2 stop the cell with a checkpoint and no results file (updatelab.signals);
    # under submitit this is the outermost handler scope, and SIGUSR2 is handed on to submitit's requeue.
    try:
        with handling_signals():
            threads.apply_threads(cfg.threads)  # null: torch's default; auto: the cores free now
            strategy = instantiate(cfg.strategy)
            return execute(cfg, strategy, run_id, target, out_dir or output_dir())
    except BaseException:
        try:
            _prune_empty(target.with_suffix(""), stop=Path(cfg.paths.results_dir))
        except OSError:  # e.g. a concurrent cell writing there: leave it
            pass
        raise


def _prune_empty(folder: Path, stop: Path) -> None:
    """A failed cell leaves nothing half-made under results/: empty folders go (from `folder` up to,
    not including, `stop`); a training checkpoint, which a re-run resumes from, stays."""
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    for d in (folder, *folder.parents):
        if d == stop or stop not in d.parents or not d.is_dir() or any(d.iterdir()):
            break
        d.rmdir()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    run_cell(cfg)


def main() -> None:
    from updatelab.config_check import ConfigError, check_config, check_overrides
    from updatelab.signals import handling_signals

    # Installed for the whole process (a sweep stops at a signal between cells too, with the same
    # status); each cell's own scope is nested in this one.
    with handling_signals():
        try:
            # Bad inputs end here, before any model loads: one line `error: <key>: <problem>`, exit 2.
            check_overrides()
            check_config()
            _hydra_main()
        except ConfigError as err:
            print(err, file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
