"""What the report says about each arm: records grouped into rows (an arm at one grid point,
over its seeds), their accuracies and paired differences (`updatelab.report.stats`), and the
per-row means, curves and costs the tables and plots draw."""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from updatelab.report import stats
from updatelab.report.records import (column_mean, dig, display, flatten_config, frame, num, own_varied, short_names,
                                      sort_value, varied_config_keys)

if TYPE_CHECKING:
    import pandas as pd

# Each arm is compared with these, in turn; closed_book only on the forgetting splits (`stats.reference_splits`).
BASELINES = ("stale", "reembed", stats.FORGETTING_REFERENCE)
UPDATE_PHASES = ("embed", "index", "train")
SERVING_PHASES = ("retrieve", "generate")
PHASES = UPDATE_PHASES + SERVING_PHASES


@dataclass
class Group:
    """One row of the summary: a strategy at one point of the grid, over its seeds."""

    strategy: str
    variant: tuple[tuple[str, str | None], ...]  # (config key, JSON value) for the keys this strategy varies
    records: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""
    colour: Any = None
    acc: dict[str, stats.Estimate | None] = field(default_factory=dict)
    df: "pd.DataFrame | None" = None  # the records flattened (`records.frame`), one row each

    @property
    def seeds(self) -> list[Any]:
        return sorted({r.get("seed") for r in self.records}, key=lambda s: (s is None, str(s) if not isinstance(s, int) else f"{s:012d}"))

    def mean(self, path: str) -> float | None:
        """Mean over the group's records of the number at a dotted path (records without it left out)."""
        if self.df is None:
            self.df = frame(self.records)
        return column_mean(self.df, path)

    def values(self, path: str) -> list[Any]:
        return [dig(r, path) for r in self.records if dig(r, path) is not None]


def make_groups(records: Sequence[dict[str, Any]], varied: Sequence[str]) -> list[Group]:
    by_strategy: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_strategy[str(r.get("strategy") or "unknown")].append(i)
    table = frame(records)
    short = short_names(varied)
    groups: list[Group] = []
    for s in sorted(by_strategy, key=stats.arm_rank):
        rows = by_strategy[s]
        flats = [flatten_config(records[i].get("config")) for i in rows]
        own = own_varied(flats, varied)
        cells: dict[tuple, list[int]] = defaultdict(list)
        for i, f in zip(rows, flats):
            cells[tuple((k, f.get(k)) for k in own)].append(i)
        for variant in sorted(cells, key=lambda v: tuple(sort_value(val) for _, val in v)):
            label = s + (" · " + ", ".join(f"{short[k]}={display(v)}" for k, v in variant) if variant else "")
            idx = cells[variant]
            groups.append(Group(s, variant, [records[i] for i in idx], label, df=table.iloc[idx]))
    return groups


def baseline_group(g: Group, baseline: str, groups: Sequence[Group]) -> Group | None:
    """The baseline arm's row matched to `g`: equal on every key the baseline's own cells vary."""
    cands = [b for b in groups if b.strategy == baseline]
    if not cands:
        return None
    flat = flatten_config(g.records[0].get("config")) if g.records else {}
    for b in cands:
        if all(flat.get(k) == v for k, v in b.variant):
            return b
    return None


@dataclass
class Analysis:
    experiment: str
    records: list[dict[str, Any]]
    groups: list[Group]
    varied: list[str]
    strategy_keys: list[str]
    top_k: int
    notes: list[str]
    diffs: dict[str, list[tuple[Group, dict[str, stats.Estimate | None]]]]  # baseline -> [(arm, split -> estimate)]
    n_boot: int
    cost_unit: str
    splits: list[str] = field(default_factory=list)  # the report splits some record measured, in report order


def _compared(arm: str, baseline: str, i: int) -> bool:
    """Whether `arm` gets a row against BASELINES[i]."""
    if arm in (baseline, stats.FORGETTING_REFERENCE):
        return False  # closed_book is what arms are measured against, not a contender
    # Every arm against the forgetting reference; otherwise reembed vs stale once, not again as stale vs reembed.
    return baseline == stats.FORGETTING_REFERENCE or arm not in BASELINES[:i]


def retrieval_depth(records: Sequence[Mapping[str, Any]], notes: list[str]) -> int:
    """The k of recall@k: the configured top_k (the smallest when records differ), else the recorded one."""
    ks = {int(k) for k in (dig(r, "config.eval.top_k") for r in records) if isinstance(k, int)}
    if not ks:
        for r in records:
            for key in (dig(r, "metrics.retrieval") or {}):
                if str(key).startswith("recall@") and str(key)[7:].isdigit():
                    ks.add(int(str(key)[7:]))
    top_k = min(ks) if ks else 3
    if len(ks) > 1:
        notes.append(f"records use different retrieval depths {sorted(ks)}; recall@{top_k} is shown where present")
    return top_k


def analyse(records: list[dict[str, Any]], experiment: str, notes: list[str] | None = None, n_boot: int = stats.DEFAULT_BOOT,
            cost_unit: str = "seconds") -> Analysis:
    notes = list(notes or [])
    varied, by_strategy = varied_config_keys(records)
    groups = make_groups(records, varied)
    top_k = retrieval_depth(records, notes)
    splits = stats.present_splits(records)
    for g in groups:
        for split in splits:
            g.acc[split] = stats.accuracy_estimate(g.records, split, n_boot=n_boot)
    diffs: dict[str, list[tuple[Group, dict[str, stats.Estimate | None]]]] = {}
    for i, base in enumerate(BASELINES):
        on = stats.reference_splits(base, splits)
        if not on:
            continue  # own data without the splits this baseline is a reference for: no empty table
        rows = []
        for g in groups:
            if not _compared(g.strategy, base, i):
                continue
            b = baseline_group(g, base, groups)
            if b is None:
                continue
            per_split = {}
            for split in on:
                _, pnotes = stats.matched_pairs(g.records, b.records, split)
                for n in dict.fromkeys(pnotes):
                    notes.append(f"{g.label} vs {b.label}: {n}")
                per_split[split] = stats.paired_difference(g.records, b.records, split, n_boot=n_boot)
            per_split.update(stats.recall_difference(g.records, b.records, base, top_k, n_boot=n_boot))
            rows.append((g, per_split))
        if rows:
            diffs[base] = rows
    # What older or partial records lack, said once per key.
    for key, what in (("predictions", "per-question predictions (no bootstrap CI, no paired differences)"),
                      ("shift", "latent-shift measurements (no CKA)"), ("cost", "cost ledger (no cost plots)"),
                      ("metrics", "metrics"), ("config", "config (grid detection)")):
        lacking = [str(r.get("run_id", "?")) for r in records if not r.get(key)]
        if lacking:
            notes.append(f"{len(lacking)} of {len(records)} record(s) lack {what}: " + ", ".join(lacking[:8]) + (" …" if len(lacking) > 8 else ""))
    return Analysis(experiment, records, groups, varied, by_strategy, top_k, notes, diffs, n_boot, cost_unit, splits)


# ------------------------------------------------------------------------------- per-row numbers


def lm_untouched(g: Group) -> bool | None:
    """True when every cell of the group left the LM as it was (no adapter, same weights)."""
    flags = []
    for r in g.records:
        lm = dig(r, "shift.lm")
        if not isinstance(lm, Mapping):
            continue
        if "moved" in lm:
            flags.append(not lm["moved"])
        elif "has_adapter" in lm:
            flags.append(not lm["has_adapter"] and bool(lm.get("base_weights_untouched", True)))
    return all(flags) if flags else None


def total_cost(g: Group, unit: str) -> float | None:
    """Update cost + serving cost of 1,000 queries, mean over seeds."""
    key = "usd" if unit == "usd" else "wall_s"
    vals = []
    for r in g.records:
        u, s = num(dig(r, f"cost.update_total.{key}")), num(dig(r, f"cost.serving_per_1k.{key}"))
        if s is None and u is None:
            continue
        vals.append((u or 0.0) + (s or 0.0))
    return float(np.mean(vals)) if vals else None


def nanmean(arr: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer no seed measured stays NaN, silently
        return np.nanmean(arr, axis=axis)


def curves(g: Group, path: str) -> np.ndarray | None:
    """(seeds, layers) array of the per-layer lists at `path` (`shift.lm.cka_per_layer`), NaN where
    a value is missing or a seed has fewer layers; None when no record of the group has one."""
    cs = [c for c in g.values(path) if isinstance(c, list) and c]
    cs = [[num(v) if num(v) is not None else np.nan for v in c] for c in cs]
    if not cs:
        return None
    n = max(len(c) for c in cs)
    arr = np.full((len(cs), n), np.nan)
    for i, c in enumerate(cs):
        arr[i, : len(c)] = c
    return arr


def layer_panel(groups: Sequence[Group], path: str) -> list[tuple[Group, np.ndarray]]:
    """The groups that measured the per-layer curve at `path`, with their (seeds, layers) arrays."""
    return [(g, arr) for g, arr in ((g, curves(g, path)) for g in groups) if arr is not None]


def recall_by_arm(a: Analysis) -> list[tuple[Group, list[float]]]:
    """(group, per-record recall@k) for the groups that retrieve, when an embedder-tuning arm is
    among them: the stale-index cost is the recall such an arm keeps or loses against the others."""
    key = f"metrics.retrieval.recall@{a.top_k}"
    rows = [(g, [v for v in (num(x) for x in g.values(key)) if v is not None]) for g in a.groups]
    rows = [(g, vs) for g, vs in rows if vs]
    return rows if any(g.strategy in stats.EMBEDDER_ARMS for g, _ in rows) else []


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when cost (x) is minimised and accuracy (y) maximised,
    sorted by cost. A point is dominated when another is no costlier and no less accurate, and
    strictly better on one of the two."""
    idx = [i for i, (x, y) in enumerate(points) if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    front = []
    for i in idx:
        xi, yi = points[i]
        dominated = any(
            (points[j][0] <= xi and points[j][1] >= yi) and (points[j][0] < xi or points[j][1] > yi) for j in idx if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
