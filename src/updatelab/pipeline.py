"""The loop every arm goes through: update -> strategy -> evaluate -> record."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from updatelab import hardware, threads
from updatelab.data.update import KnowledgeUpdate
from updatelab.evaluation import evaluate
from updatelab.measure_shift import ShiftProbe
from updatelab.metrics.cost import CostLedger, add_serving_per_1k
from updatelab.models.lm import load_lm
from updatelab.models.registry import resolve_embedder, resolve_lm
from updatelab.retrieval.embedder import EmbeddingCache, build_embedder
from updatelab.seeding import seed_everything
from updatelab.strategies.base import RunContext, Strategy, System, index_documents
from updatelab.tracking import wandb_run as wb
from updatelab.tracking.results import write_results

log = logging.getLogger("updatelab")


def load_knowledge_update(data_cfg: DictConfig, data_dir: str | Path) -> KnowledgeUpdate:
    from updatelab.data.formats import FORMATS, ensure_converted
    from updatelab.data.load import load_update
    from updatelab.data.schema import DatasetSchemaError

    try:
        if data_cfg.source == "synthetic":
            from updatelab.data.synthetic import ensure_generated

            params = OmegaConf.to_container(data_cfg.generator, resolve=True)
            folder = ensure_generated(data_dir, **params)
            return load_update(source="local", path=folder)
        if data_cfg.source == "local":
            return load_update(source="local", path=data_cfg.path)
        if data_cfg.source == "hub":
            files = OmegaConf.to_container(data_cfg.data_files, resolve=True) if data_cfg.get("data_files") else None
            return load_update(source="hub", path=data_cfg.path, data_files=files)
        if data_cfg.source in FORMATS:  # a published benchmark, converted once into an update folder
            params = OmegaConf.to_container(data_cfg, resolve=True)
            folder, name = ensure_converted(params.pop("source"), data_dir, **params)
            return load_update(source="local", path=folder, name=name)
    except (DatasetSchemaError, FileNotFoundError) as err:
        # Malformed or missing input data is the user's to fix, not a bug: one line and exit 1, as
        # for an unknown config key (Hydra would print any Exception with its traceback).
        raise SystemExit(f"error: {err}") from err
    raise ValueError(f"unknown data source {data_cfg.source!r}; valid: synthetic, local, hub, {', '.join(FORMATS)}")


def build_base_system(cfg: DictConfig, update: KnowledgeUpdate, cache: EmbeddingCache | None, embedder, out_dir: Path) -> tuple[System, CostLedger, Any]:
    """The system before the update: base LM, frozen embedder, index over KB v0.

    Its cost is setup, not update cost: every arm starts from it (and the embeddings are
    cached, so matched arms compute them once).
    """
    lm_path = resolve_lm(cfg.model, cfg.paths.cache_dir)
    lm, tokenizer = load_lm(lm_path, cfg.model, device=cfg.device)
    setup = CostLedger(cfg.costs, cfg.device)
    ctx = RunContext(cfg=cfg, ledger=setup, embedding_cache=cache, out_dir=out_dir, seed=cfg.seed, progress=cfg.progress)
    base = index_documents(System(lm=lm, tokenizer=tokenizer, embedder=embedder), update.kb_v0, ctx, kb_version="v0")
    return base, setup, ctx.notes.get("embed_stats", [None])[0]


def is_rank_zero() -> bool:
    """False in the extra processes of a cell that trains with DDP (known before any process group).

    Lightning's own DDP children get LOCAL_RANK (and NODE_RANK), SLURM tasks SLURM_PROCID,
    torchrun RANK. submitit's local executor sets only SUBMITIT_LOCAL_*: they are exported as
    the torch.distributed variables, so that Lightning treats its tasks as externally launched
    ranks, as it treats SLURM's (it cannot start processes itself inside a submitit task).
    """
    env = os.environ
    if env.get("SUBMITIT_EXECUTOR") == "local" and int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1 and "RANK" not in env:
        env.update(RANK=env["SUBMITIT_LOCAL_GLOBALID"], LOCAL_RANK=env["SUBMITIT_LOCAL_LOCALID"],
                   WORLD_SIZE=env["SUBMITIT_LOCAL_NTASKS"], MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(20000 + int(env["SUBMITIT_LOCAL_JOB_ID"]) % 20000))
    rank = next((env[k] for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID") if k in env), "0")
    return int(rank) == 0 and int(env.get("NODE_RANK", "0")) == 0


def check_ddp_launch(cfg: DictConfig) -> None:
    """Lightning starts the extra DDP ranks by re-running the command line. For one run that is
    fine (it passes them hydra.run.dir), but in a multirun under Hydra's basic launcher every rank
    would re-run the whole sweep: refuse, and name the launchers that start the ranks themselves."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    devices = str(cfg.trainer.get("devices", 1))
    several = (devices.isdigit() and int(devices) > 1) or int(cfg.trainer.get("num_nodes") or 1) > 1
    external = "LOCAL_RANK" in os.environ or "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if several and not external and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RuntimeError("a multi-process trainer (trainer.devices > 1) in a sweep needs a launcher that starts "
                           "one task per device: hydra/launcher=local or hydra/launcher=slurm (tasks_per_node = "
                           "trainer.devices); Hydra's basic launcher would make every rank re-run the whole sweep")


def execute(cfg: DictConfig, strategy: Strategy, run_id: str, target: Path, out_dir: Path) -> dict[str, Any] | None:
    """Run one cell; in a DDP cell only rank 0 evaluates and records (the other ranks return None
    after training, and open no W&B run)."""
    rank_zero = is_rank_zero()
    if "trainer" in getattr(strategy, "config_groups", ()):  # a Lightning training
        check_ddp_launch(cfg)
    elif not rank_zero:
        return None  # nothing to train: rank 0 does the whole cell
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    hardware.set_cache_dir(cfg.paths.cache_dir)  # per-machine precision measurements
    hardware.reset_recorded()
    with wb.wandb_run(cfg.logger, resolved, run_id, out_dir) if rank_zero else contextlib.nullcontext() as run:
        update = load_knowledge_update(cfg.data, cfg.paths.data_dir)
        wb.use_dataset(run, update)
        log.info("[%s] knowledge update %s: KB v0 %d docs -> v1 %d docs, %d questions",
                 run_id, update.name, len(update.kb_v0), len(update.kb_v1), len(update.questions))
        embedder = build_embedder(resolve_embedder(cfg.embedder), cfg.embedder, device=cfg.device)
        cache = EmbeddingCache(cfg.paths.cache_dir, embedder.fingerprint)
        base, setup, base_embed = build_base_system(cfg, update, cache, embedder, out_dir)

        ledger = CostLedger(cfg.costs, cfg.device)
        trains = "trainer" in getattr(strategy, "config_groups", ())  # only a Lightning training needs (and imports) its logger
        ctx = RunContext(cfg=cfg, ledger=ledger, embedding_cache=cache, out_dir=out_dir, seed=cfg.seed,
                         artifact_dir=target.with_suffix(""), logger=wb.lightning_logger(run) if trains else None,
                         progress=cfg.progress)
        ctx.notes["base_embed_stats"] = base_embed
        probe = ShiftProbe(cfg, base, update) if cfg.shift.enabled and rank_zero else None
        log.info("[%s] applying strategy %s", run_id, strategy.name)
        updated = strategy.apply(base, update, ctx)
        if not rank_zero:
            return None
        seed_everything(cfg.seed)  # same decoding state for every arm
        metrics, predictions = evaluate(updated, update.questions, ctx, kb=update.kb_v1)
        if probe is not None:
            ctx.notes["shift"] = probe.measure(updated, update, ctx)
        add_serving_per_1k(ledger, len(update.questions))
        ctx.notes["precision"] = hardware.recorded()  # phase -> what ran, and the timings it was chosen by

        record = {
            "experiment": cfg.name,
            "run_id": run_id,
            "strategy": strategy.name,
            "seed": int(cfg.seed),
            "data_fingerprint": update.fingerprint,
            "config": resolved,
            "metrics": metrics,
            "cost": ledger.as_dict(),
            "setup": {**setup.as_dict(), "cell_wall_s": time.perf_counter() - t_start},
            "shift": ctx.notes.get("shift", {}),
            "artifacts": ctx.notes.get("artifacts", {}),
            "train_loss_curve": ctx.notes.get("train_loss_curve"),  # one mean loss per optimizer step (LoRA arms)
            "training": ctx.notes.get("training"),  # fine-tuning arms: the recipe, what it produced, dev selection
            "precision": ctx.notes["precision"],
            "threads": threads.threads_record(),
            "predictions": predictions,
            "output_dir": str(out_dir),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        wb.log_config(run, {"precision": record["precision"], "threads_used": record["threads"],
                            **({"training_ran": record["training"]} if record["training"] else {})})
        wb.log_scores(run, metrics)
        wb.log_summary(run, {"metrics": metrics, "cost": record["cost"], "shift": _shift_summary(record["shift"])})
        wb.log_shift(run, record["shift"])
        wb.log_predictions(run, predictions)
        write_results(target, record)
        wb.log_outputs(run, target, record)
        log.info("[%s] done: %s", run_id, target)
    return record


def _shift_summary(shift: dict[str, Any]) -> dict[str, Any]:
    """Scalars only: the per-layer lists live in the results file and the W&B plots."""
    out: dict[str, Any] = {}
    for part in ("lm", "embedder"):
        d = shift.get(part) or {}
        out[part] = {k: d[k] for k in ("cka_mean", "cka_min", "base_weights_untouched", "has_adapter",
                                       "kl_mean", "intruders_total", "delta_fro_total") if k in d}
    drift = shift.get("kb_drift") or {}
    if "changed" in drift:
        out["kb_drift"] = {"changed_mean": drift["changed"].get("mean"), "unchanged_mean": drift["unchanged"].get("mean")}
    return out
