"""Results records as the report reads them: loaded from the results files (or W&B run
summaries), read by dotted path, flattened into one pandas DataFrame, and compared by config to
find what a grid varies.

Older or partial records may lack any key or hold a wrong type: every reader here returns None (or
leaves the record out with a note) rather than raising.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from updatelab.tracking.results import load_results

if TYPE_CHECKING:
    import pandas as pd

# Config keys that differ between cells by construction, not because the grid varies them.
IGNORED_CONFIG_PREFIXES = ("seed", "strategy", "name", "paths", "hydra", "logger", "force", "progress", "threads", "device")


def dig(d: Any, path: str, default: Any = None) -> Any:
    """`dig(rec, "cost.update_total.wall_s")`; `default` when any part is missing or null."""
    for part in path.split("."):
        if not isinstance(d, Mapping) or part not in d or d[part] is None:
            return default
        d = d[part]
    return d


def num(v: Any) -> float | None:
    """A finite float, or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def mean_of(values: Iterable[Any]) -> float | None:
    """Mean of the finite numbers among `values`; None when there are none."""
    vals = [v for v in (num(x) for x in values) if v is not None]
    return float(np.mean(vals)) if vals else None


def frame(records: Sequence[Any]) -> "pd.DataFrame":
    """One row per record, one column per dotted path to a leaf (`metrics.updated.contains`);
    lists (predictions, per-layer curves) stay whole in their cell."""
    import pandas as pd  # here, not at import: evaluation imports the statistics, which read records

    return pd.json_normalize([r if isinstance(r, Mapping) else {} for r in records], sep=".")


def column_mean(df: "pd.DataFrame", path: str) -> float | None:
    """Mean over the rows of `df` of the finite numbers at `path` (as :func:`mean_of`)."""
    if path not in df.columns:
        return None
    vals = df[path].map(num).dropna()
    return float(vals.astype(float).mean()) if len(vals) else None


def load_records(results_dir: str | Path, experiment: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The experiment's records (and notes about files that are not records)."""
    notes: list[str] = []
    folder = Path(results_dir) / experiment
    try:
        raw = load_results(results_dir, experiment)
    except (ValueError, OSError, UnicodeDecodeError):
        # One unreadable file must not hide the others: read them one by one.
        raw = []
        for p in sorted(folder.glob("*.json")):
            try:
                raw.append(json.loads(p.read_text()))
            except (ValueError, OSError, UnicodeDecodeError) as e:
                notes.append(f"{p.name}: not readable JSON ({type(e).__name__}: {e}); skipped")
    records = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or not ({"strategy", "metrics", "run_id"} & set(r)):
            notes.append(f"file #{i + 1} in {folder} is not a results record; skipped")
            continue
        records.append(r)
    return records, notes


def records_for_script(experiment: str, description: str, argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """An analysis script's records: ``--results-dir`` (default ``results``) parsed from argv, the
    experiment's records loaded, each note about a skipped file printed first."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--results-dir", default="results")
    args = ap.parse_args(argv)
    records, notes = load_records(args.results_dir, experiment)
    for n in notes:
        print(f"note: {n}")
    return records


def _unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        if key.startswith("_"):
            continue
        cur = out
        *parents, last = str(key).split(sep)
        ok = True
        for p in parents:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                ok = False
                break
            cur = nxt
        if ok:
            cur[last] = v
    return out


def load_wandb_records(path: str, experiment: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs of W&B group = experiment, as records built from their summaries (no predictions,
    no latent shift: the run summaries hold metrics and cost only)."""
    import wandb

    api = wandb.Api()
    records: list[dict[str, Any]] = []
    for run in api.runs(path, filters={"group": experiment}):
        summary = getattr(run.summary, "_json_dict", None)
        if not isinstance(summary, Mapping):
            summary = {k: run.summary[k] for k in run.summary.keys()}
        nested = _unflatten(summary)
        cfg = dict(run.config or {})
        strategy = run.job_type or dig(cfg, "strategy.name") or "unknown"
        records.append({
            "experiment": experiment, "run_id": run.name, "strategy": strategy, "seed": cfg.get("seed"),
            "config": cfg, "metrics": nested.get("metrics") or {}, "cost": nested.get("cost") or {},
            "source": f"wandb:{path}/{run.id}", "state": getattr(run, "state", None),
        })
    notes = [f"records come from W&B ({path}, group {experiment!r}) run summaries: no per-question predictions "
             "(CIs are the stored per-split ones, or none) and no latent-shift measurements"] if records else []
    return records, notes


# ------------------------------------------------------------------------------------- grouping


def flatten_config(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Dotted key -> canonical JSON of the value (lists as values, dicts recursed)."""
    out: dict[str, str] = {}
    if not isinstance(cfg, Mapping):
        return out
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str)
    return out


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED_CONFIG_PREFIXES) or key.rsplit(".", 1)[-1] == "seed"


def varied_config_keys(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(keys the grid varies, keys that differ only with the strategy).

    A key varies when records that have it hold more than one value, leaving out seed and
    strategy and what follows from them: keys equal to the seed, and keys whose value is fixed by
    the strategy (arm definitions)."""
    flats = [flatten_config(r.get("config")) for r in records]
    keys = sorted(set().union(*flats)) if flats else []
    varied, by_strategy = [], []
    strategies = {r.get("strategy") for r in records}
    for k in keys:
        if _ignored(k):
            continue
        present = [(r, f[k]) for r, f in zip(records, flats) if k in f]
        if len({v for _, v in present}) < 2:
            continue
        if all(v == json.dumps(r.get("seed")) for r, v in present):
            continue
        per_strategy: dict[Any, set[str]] = defaultdict(set)
        for r, v in present:
            per_strategy[r.get("strategy")].add(v)
        if len(strategies) > 1 and all(len(vs) == 1 for vs in per_strategy.values()):
            by_strategy.append(k)
            continue
        varied.append(k)
    return varied, by_strategy


def own_varied(flats: Sequence[Mapping[str, str]], varied: Sequence[str]) -> list[str]:
    """The keys of `varied` on which these cells (of one arm) differ: a stale arm run once is
    one row and pairs with every grid point of a fine-tuning arm, not one row per adapter rank."""
    return [k for k in varied if len({f.get(k) for f in flats}) > 1]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Dotted key -> its last part, where that is unambiguous among `keys`."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def config_value(v: str | None) -> Any:
    """The value behind :func:`flatten_config`'s JSON (the text itself when it is not JSON)."""
    try:
        return json.loads(v) if v is not None else None
    except ValueError:
        return v


def display(v: str | None) -> str:
    """A config value as a row label shows it."""
    if v is None:
        return "–"
    x = config_value(v)
    if isinstance(x, float):
        return f"{x:g}"
    if x is None:
        return "null"
    return x if isinstance(x, str) else json.dumps(x)


def sort_value(v: str | None) -> tuple:
    """Sort key of config values: numbers by value, then text, then booleans and null."""
    x = config_value(v)
    if isinstance(x, bool) or x is None:
        return (2, str(x))
    if isinstance(x, (int, float)):
        return (0, float(x))
    return (1, str(x))
