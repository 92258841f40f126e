"""One W&B run per matched cell: group = experiment, job_type = strategy.

Offline by default (no account needed; `wandb sync` uploads later), `disabled` in tests.
The run is always finished — with a non-zero exit code when the cell fails — so that an
interrupted sweep never leaves a run that looks alive.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import wandb

log = logging.getLogger("updatelab")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


@contextlib.contextmanager
def wandb_run(cfg: Mapping[str, Any], config: Mapping[str, Any], run_id: str, out_dir: Path) -> Iterator[Any]:
    mode = cfg.get("mode", "offline") if cfg.get("enabled", True) else "disabled"
    os.environ.setdefault("WANDB_SILENT", "true")
    init = functools.partial(
        wandb.init,
        project=cfg.get("project", "updatelab"),
        entity=cfg.get("entity") or None,
        group=config["name"],
        job_type=config["strategy"]["name"],
        name=run_id,
        # A fresh W&B id per attempt: a re-run of a failed cell must not append to a dead run.
        config=dict(config),
        tags=list(cfg.get("tags") or []),
        dir=str(out_dir),
        reinit="finish_previous",
    )
    if mode == "online":
        run = _online_or_offline(init, out_dir)
    else:
        run = init(mode=mode)
    try:
        yield run
    except BaseException as err:
        # A signal's exit status (143 SIGTERM, 130 SIGINT, 140 SIGUSR2; updatelab.signals), else 1.
        code = getattr(err, "code", None) if isinstance(err, SystemExit) else None
        run.finish(exit_code=code if isinstance(code, int) and code != 0 else 1)
        raise
    else:
        run.finish()


def _online_or_offline(init, out_dir: Path):
    """Online if W&B answers within WANDB_INIT_TIMEOUT seconds (default 60), else offline with a
    warning: compute nodes of a cluster often have no internet (nor a key); `wandb sync` uploads later."""
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", "60"))
    try:
        return init(mode="online", settings=wandb.Settings(init_timeout=timeout))
    except Exception as err:  # no network, no API key, server error: the cell itself must not fail
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        folder = Path(out_dir) / "wandb"
        log.warning("W&B online failed (%s): logging offline to %s instead; upload later with "
                    "`wandb sync %s`", reason, folder, folder / "offline-run-*")
        return init(mode="offline")


def log_config(run: Any, values: Mapping[str, Any]) -> None:
    """Add what was decided during the cell (e.g. the precision of each phase) to the run config."""
    if run is None or getattr(run, "disabled", False):
        return
    run.config.update(dict(values), allow_val_change=True)


def log_summary(run: Any, metrics: Mapping[str, Any]) -> None:
    """Nested metrics become slash-separated summary keys (`metrics/updated/contains`)."""
    for k, v in _flatten(metrics).items():
        run.summary[k] = v


def log_predictions(run: Any, predictions: list[Mapping[str, Any]]) -> None:
    if not predictions:
        return
    columns = list(predictions[0].keys())
    table = wandb.Table(columns=columns, data=[[p.get(c) if not isinstance(p.get(c), (list, dict)) else str(p.get(c)) for c in columns] for p in predictions])
    run.log({"predictions": table})


def lightning_logger(run: Any):
    """A Lightning WandbLogger writing into the cell's run (None when W&B is disabled)."""
    if run is None or getattr(run, "disabled", False) or run.settings.mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger

    return WandbLogger(experiment=run)


def log_shift(run: Any, shift: Mapping[str, Any]) -> None:
    """CKA by layer as a line plot and the cross-layer matrix as a heatmap image."""
    lm = shift.get("lm") or {}
    per_layer = lm.get("cka_per_layer")
    if not per_layer or getattr(run, "disabled", False):
        return
    rows = [[i, v, lin] for i, (v, lin) in enumerate(zip(per_layer, lm.get("cka_linear_per_layer", per_layer)))]
    table = wandb.Table(columns=["layer", "cka_debiased", "cka_linear"], data=rows)
    payload: dict[str, Any] = {
        "shift/cka_by_layer": wandb.plot.line(table, "layer", "cka_debiased", title="LM CKA (base vs arm) by layer"),
        "shift/cka_table": table,
    }
    cross = lm.get("cross_layer")
    if cross:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4.2))
        im = ax.imshow(cross, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xlabel("arm layer")
        ax.set_ylabel("base layer")
        ax.set_title("cross-layer CKA")
        fig.colorbar(im, ax=ax)
        payload["shift/cross_layer"] = wandb.Image(fig)
        plt.close(fig)
    run.log(payload)
