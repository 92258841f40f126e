"""One W&B run per matched cell: group = experiment, job_type = strategy.

Offline by default (no account needed; `wandb sync` uploads later), `disabled` in tests.
The run is always finished — with a non-zero exit code when the cell fails — so that an
interrupted sweep never leaves a run that looks alive.

Lineage: the knowledge update is a ``dataset`` artifact the run uses (one version per content,
so the runs of a matched experiment hang off the same version); the results file is a
``results`` artifact, an output; a LoRA arm's adapter folder an ``adapter`` artifact named by its
training key, the output of the cell that trained it and an input of every cell that reused it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import wandb

from updatelab.data.schema import SPLITS

log = logging.getLogger("updatelab")

STEP = "trainer/global_step"
"""The step Lightning's logger writes with every training metric: the optimizer step."""
ACCURACY = ("em", "f1", "contains", "strict")
"""The per-split scores of `updatelab.evaluation.split_metrics` that are accuracies."""
SCORED_SPLITS = (*SPLITS, "stored")  # stored: the LM alone completing KB v1 facts (eval.stored_splits)


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
    if _active(run):
        define_metrics(run)
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
    if not _active(run):
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


def _active(run: Any) -> bool:
    return run is not None and not getattr(run, "disabled", False) and run.settings.mode != "disabled"


def define_metrics(run: Any) -> None:
    """Training curves against the optimizer step; each split's accuracies, measured once on the
    final system, at the step that system was trained to (none for arms that do not train) and
    summarised by that value (W&B's default summary would be right too, but by accident)."""
    # Lightning defines these only for a run it starts itself; this one it is handed.
    run.define_metric(STEP)
    run.define_metric("train/*", step_metric=STEP)
    for split in SCORED_SPLITS:
        for score in ACCURACY:
            run.define_metric(f"metrics/{split}/{score}", step_metric=STEP, summary="last")


def log_scores(run: Any, metrics: Mapping[str, Any]) -> None:
    """The per-split accuracies as one history row (so the metrics defined above get their step)."""
    if not _active(run):
        return
    row = {f"metrics/{split}/{score}": metrics[split][score] for split in SCORED_SPLITS
           if isinstance(metrics.get(split), Mapping) for score in ACCURACY if score in metrics[split]}
    if row:
        run.log(row)


def _artifact_name(*parts: str) -> str:
    # W&B artifact names allow letters, digits, '-', '_' and '.' (a hub id has '/', a benchmark ':')
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))[:128]


def use_dataset(run: Any, update: Any) -> None:
    """The knowledge update as a ``dataset`` artifact this run uses.

    Its files are the update saved in canonical form (`KnowledgeUpdate.save`), not the source
    folder: the same content then has the same digest, hence the same artifact version, whether
    it came from a folder, the hub or a differently formatted copy (as the fingerprint)."""
    if not _active(run):
        return
    art = wandb.Artifact(_artifact_name("data", update.name), type="dataset",
                         metadata={**update.summary(), "fingerprint": update.fingerprint, "source": update.source})
    with tempfile.TemporaryDirectory(prefix="updatelab-dataset-") as tmp:
        update.save(tmp)
        art.add_dir(tmp)  # copied into W&B's staging area now, so the folder may go
        _use(run, art, [f"fp-{update.fingerprint[:12]}"])


def _use(run: Any, art: Any, aliases: list[str] | None = None) -> None:
    """`art` as an input of the run (the same content as a version logged before is that version)."""
    if run.settings._offline:
        # `use_artifact` refuses offline runs, but for a new artifact all it does is log it
        # marked "use after commit"; that record in the run file links it as an input on sync.
        run._log_artifact(art, aliases=aliases, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(art, aliases=aliases)


def log_outputs(run: Any, results_file: Path, record: Mapping[str, Any]) -> None:
    """The results file as a ``results`` artifact and, for a LoRA arm, its adapter folder as an
    ``adapter`` artifact named by its training key (a full fine-tune's model folder is not an
    adapter and is left out): an output of the cell that trained it, an input of a cell that
    reused that training (e.g. `lora_rag` with `lora`'s recipe), which then hangs off the same version."""
    if not _active(run):
        return
    meta = {k: record.get(k) for k in ("experiment", "run_id", "strategy", "seed", "data_fingerprint")}
    results = wandb.Artifact(_artifact_name("results", record["run_id"]), type="results", metadata=meta)
    results.add_file(str(results_file))
    run.log_artifact(results)
    adapter = (record.get("artifacts") or {}).get("adapter") or {}
    folder = Path(adapter["path"]) if adapter.get("path") else None
    if folder is not None and (folder / "adapter_config.json").is_file():
        train = (record.get("cost") or {}).get("train") or {}
        key = train.get("adapter_key") or record["run_id"]
        art = wandb.Artifact(_artifact_name("adapter", key), type="adapter",
                             metadata={**meta, "adapter_key": key, "bytes": adapter.get("bytes")})
        # Immutable: uploaded from the results folder it stays in, rather than copied into
        # W&B's staging area to wait there for `wandb sync`.
        art.add_dir(str(folder), policy="immutable")
        if train.get("reused_adapter"):
            _use(run, art)
        else:
            run.log_artifact(art)
