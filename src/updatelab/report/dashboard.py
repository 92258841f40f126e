"""The HTML dashboard of one experiment: a single self-contained file, no network needed to view it.

    python -m updatelab.report.dashboard --experiment NAME [--results-dir results] [--out PATH]
                                         [--wandb ENTITY/PROJECT] [--cost-unit seconds|usd] [--plot-format svg|png]

Reads `results/<experiment>/*.json` (one record per matched cell) and writes
`results/<experiment>/dashboard.html` (or `--out`): a summary table with hierarchical bootstrap
CIs (seeds, then questions), paired differences between arms with exact McNemar tests, and plots
(accuracy per split, accuracy vs cost with the Pareto front, CKA by layer, cross-layer CKA
heatmaps, cost by phase), all inlined (SVG or PNG). Only the splits some record measured are shown.

Older or partial records may lack any key: what cannot be drawn is skipped with a note saying
why, never an exception. `--wandb` reads the runs of W&B group = experiment through the public
API, only when there are no local results files.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import json
import math
import re
import shlex
import sys
import traceback
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from updatelab.report import stats
from updatelab.tracking.results import load_results

SPLITS = stats.REPORT_SPLITS  # every split a page may show; `Analysis.splits` holds those the records have
# Each arm is compared with these, in turn; closed_book only on the forgetting splits (`stats.reference_splits`).
BASELINES = ("stale", "reembed", stats.FORGETTING_REFERENCE)
UPDATE_PHASES = ("embed", "index", "train")
SERVING_PHASES = ("retrieve", "generate")
PHASES = UPDATE_PHASES + SERVING_PHASES
# Config keys that differ between cells by construction, not because the grid varies them.
IGNORED_CONFIG_PREFIXES = ("seed", "strategy", "name", "paths", "hydra", "logger", "force", "progress", "threads", "device")
STRATEGY_CMAPS = {"stale": "Greys", "reembed": "Blues", "lora": "Oranges", "lora_rag": "Greens"}
OTHER_CMAPS = ("Purples", "Reds", "YlOrBr", "PuRd", "BuGn")
PHASE_COLOURS = {"embed": "#4C78A8", "index": "#72B7B2", "train": "#F58518", "retrieve": "#54A24B", "generate": "#B279A2"}
SPLIT_MARKERS = {"updated": "o", "stored": "v", "paraphrased": "s", "unchanged": "^", "general": "D"}
OTHER_MARKERS = ("P", "X", "*", "h", "<", ">")  # splits a newer schema adds
SPLIT_TEXT = {
    "updated": "<i>updated</i> asks about facts the update changed",
    "paraphrased": "<i>paraphrased</i> about the same changed facts in other words",
    "stored": "<i>stored</i> is the LM alone completing an updated fact's KB sentence (in the weights, whether or not a "
              "question can retrieve it)",
    "unchanged": "<i>unchanged</i> about facts it kept",
    "general": "<i>general</i> about world knowledge",
}


def split_marker(split: str) -> str:
    """The split's marker in the differences plot; splits a newer schema adds take the spare ones in schema order."""
    extra = [s for s in SPLITS if s not in SPLIT_MARKERS]
    return SPLIT_MARKERS.get(split) or OTHER_MARKERS[extra.index(split) % len(OTHER_MARKERS) if split in extra else 0]


def splits_text(splits: Sequence[str]) -> str:
    """What each shown split asks, for captions: only the splits on the page."""
    return "; ".join(SPLIT_TEXT.get(s, f"<i>{esc(s)}</i>") for s in splits) + "."


# ----------------------------------------------------------------------------------------- data


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
    vals = [v for v in (num(x) for x in values) if v is not None]
    return float(np.mean(vals)) if vals else None


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


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _display(v: str | None) -> str:
    if v is None:
        return "–"
    try:
        x = json.loads(v)
    except ValueError:
        return v
    if isinstance(x, float):
        return f"{x:g}"
    if x is None:
        return "null"
    return x if isinstance(x, str) else json.dumps(x)


def _sort_value(v: str | None) -> tuple:
    try:
        x = json.loads(v) if v is not None else None
    except ValueError:
        x = v
    if isinstance(x, bool) or x is None:
        return (2, str(x))
    if isinstance(x, (int, float)):
        return (0, float(x))
    return (1, str(x))


@dataclass
class Group:
    """One row of the summary: a strategy at one point of the grid, over its seeds."""

    strategy: str
    variant: tuple[tuple[str, str | None], ...]  # (config key, JSON value) for the keys this strategy varies
    records: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""
    colour: Any = None
    acc: dict[str, stats.Estimate | None] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Any]:
        return sorted({r.get("seed") for r in self.records}, key=lambda s: (s is None, str(s) if not isinstance(s, int) else f"{s:012d}"))

    def mean(self, path: str) -> float | None:
        return mean_of(dig(r, path) for r in self.records)

    def values(self, path: str) -> list[Any]:
        return [dig(r, path) for r in self.records if dig(r, path) is not None]


def _strategy_rank(s: str) -> tuple:
    return stats.arm_rank(s)


def make_groups(records: Sequence[dict[str, Any]], varied: Sequence[str]) -> list[Group]:
    by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_strategy[str(r.get("strategy") or "unknown")].append(r)
    short = _short_names(varied)
    groups: list[Group] = []
    for s in sorted(by_strategy, key=_strategy_rank):
        rs = by_strategy[s]
        flats = [flatten_config(r.get("config")) for r in rs]
        # Only the keys this strategy's own cells vary: a stale arm run once is one row, not one per adapter rank.
        own = [k for k in varied if len({f.get(k) for f in flats}) > 1]
        cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for r, f in zip(rs, flats):
            cells[tuple((k, f.get(k)) for k in own)].append(r)
        for variant in sorted(cells, key=lambda v: tuple(_sort_value(val) for _, val in v)):
            label = s + (" · " + ", ".join(f"{short[k]}={_display(v)}" for k, v in variant) if variant else "")
            groups.append(Group(s, variant, cells[variant], label))
    _assign_colours(groups)
    return groups


def _assign_colours(groups: Sequence[Group]) -> None:
    import matplotlib

    per: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        per[g.strategy].append(g)
    others = iter(OTHER_CMAPS * 10)
    for s, gs in per.items():
        cmap = matplotlib.colormaps[STRATEGY_CMAPS.get(s) or next(others)]
        n = len(gs)
        for i, g in enumerate(gs):
            shade = 0.65 if n == 1 else 0.45 + 0.45 * i / (n - 1)
            if s == "stale":
                shade = 0.55 if n == 1 else 0.4 + 0.45 * i / (n - 1)
            g.colour = cmap(shade)


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


# ------------------------------------------------------------------------------------- analysis


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


def analyse(records: list[dict[str, Any]], experiment: str, notes: list[str] | None = None, n_boot: int = stats.DEFAULT_BOOT,
            cost_unit: str = "seconds") -> Analysis:
    notes = list(notes or [])
    varied, by_strategy = varied_config_keys(records)
    groups = make_groups(records, varied)
    ks = {int(k) for k in (dig(r, "config.eval.top_k") for r in records) if isinstance(k, int)}
    if not ks:
        for r in records:
            for key in (dig(r, "metrics.retrieval") or {}):
                if str(key).startswith("recall@") and str(key)[7:].isdigit():
                    ks.add(int(str(key)[7:]))
    top_k = min(ks) if ks else 3
    if len(ks) > 1:
        notes.append(f"records use different retrieval depths {sorted(ks)}; recall@{top_k} is shown where present")
    splits = stats.present_splits(records)
    for g in groups:
        for split in splits:
            g.acc[split] = stats.accuracy_estimate(g.records, split, n_boot=n_boot)
    diffs: dict[str, list[tuple[Group, dict[str, stats.Estimate | None]]]] = {}
    for i, base in enumerate(BASELINES):
        rows = []
        for g in groups:
            if not _compared(g.strategy, base, i):
                continue
            b = baseline_group(g, base, groups)
            if b is None:
                continue
            per_split = {}
            for split in stats.reference_splits(base, splits):
                _, pnotes = stats.matched_pairs(g.records, b.records, split)
                for n in dict.fromkeys(pnotes):
                    notes.append(f"{g.label} vs {b.label}: {n}")
                per_split[split] = stats.paired_difference(g.records, b.records, split, n_boot=n_boot)
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


# ---------------------------------------------------------------------------------- formatting


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt_pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def fmt_seconds(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0 s"
    if v < 0.1:
        return f"{v:.3f} s"
    if v < 100:
        return f"{v:.1f} s"
    if v < 3600:
        return f"{v:.0f} s ({v / 60:.1f} min)"
    return f"{v:.0f} s ({v / 3600:.1f} h)"


def fmt_usd(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "$0"
    if v >= 1:
        return f"${v:,.2f}"
    decimals = max(2, 1 - int(math.floor(math.log10(abs(v)))))
    return f"${v:.{decimals}f}"


def fmt_num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_estimate(e: stats.Estimate | None, signed: bool = False) -> str:
    if e is None or e.mean is None:
        return '<span class="na">–</span>'
    main = fmt_pct(e.mean, signed)
    tip = f"{e.source}; n={e.n}" if e.n else e.source
    if e.per_seed:
        tip += "; per seed: " + ", ".join(f"s{k}: {100 * v:.1f}" for k, v in e.per_seed.items())
    ci = f'<span class="ci">[{fmt_pct(e.lo, signed)}, {fmt_pct(e.hi, signed)}]</span>' if e.has_ci else '<span class="ci">no CI</span>'
    cls = ""
    if signed and e.has_ci:
        cls = " pos" if e.lo > 0 else " neg" if e.hi < 0 else ""
    return f'<span class="est{cls}" title="{esc(tip)}">{main}</span> {ci}' + (fmt_test(e.test) if e.test else "")


def fmt_test(t: stats.McNemar) -> str:
    """'n 40 · p 0.003' under a paired difference; the discordant counts in the tooltip."""
    tip = f"exact McNemar test over {t.n} matched (seed, question) pairs: b = {t.b} arm right, baseline wrong; c = {t.c} the reverse"
    return f'<span class="ci test" title="{esc(tip)}">n {t.n} · p {esc(stats.fmt_p(t.p))}</span>'


# ---------------------------------------------------------------------------------------- plots


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.fonttype": "none", "svg.hashsalt": "updatelab", "font.size": 10, "axes.titlesize": 11,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "legend.frameon": False, "figure.dpi": 100,
    })
    return plt


class Plots:
    """Figures rendered inline: SVG with ids made unique per figure, or base64 PNG."""

    def __init__(self, fmt: str = "svg"):
        self.fmt = fmt
        self.count = 0

    def render(self, fig, name: str, caption: str, alt: str) -> str:
        plt = _mpl()
        self.count += 1
        try:
            if self.fmt == "png":
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=144, bbox_inches="tight", metadata={"Software": None})
                data = base64.b64encode(buf.getvalue()).decode()
                body = f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            else:
                buf = io.StringIO()
                fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
                body = self._inline_svg(buf.getvalue(), f"f{self.count}-", alt)
        finally:
            plt.close(fig)
        return (f'<figure class="plot" id="plot-{esc(name)}" data-plot="{esc(name)}">{body}'
                f"<figcaption>{caption}</figcaption></figure>")

    @staticmethod
    def _inline_svg(svg: str, prefix: str, alt: str) -> str:
        svg = svg[svg.index("<svg"):]
        svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
        # Several SVGs share one document: ids (clip paths, markers) must not collide.
        svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
        svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", svg)
        svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)
        return svg.replace("<svg ", f'<svg role="img" aria-label="{esc(alt)}" ', 1)


def skipped(name: str, why: str) -> str:
    return f'<div class="note skipped" data-skipped="{esc(name)}"><b>Plot skipped:</b> {esc(why)}</div>'


def plot_accuracy(a: Analysis, plots: Plots) -> str:
    splits = a.splits
    rows = [g for g in a.groups if any(g.acc.get(s) for s in splits)]
    if not rows:
        return skipped("accuracy", "no record has per-split metrics or predictions")
    plt = _mpl()
    n = len(rows)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(min(14.0, max(10.0, 2 + 0.3 * n * len(splits))), 4.8))
    x = np.arange(len(splits))
    for i, g in enumerate(rows):
        means, lo, hi = [], [], []
        for s in splits:
            e = g.acc.get(s)
            m = e.mean if e and e.mean is not None else np.nan
            means.append(100 * m)
            lo.append(100 * (m - e.lo) if e and e.has_ci else 0)
            hi.append(100 * (e.hi - m) if e and e.has_ci else 0)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, means, width * 0.92, color=g.colour, edgecolor="#333", linewidth=0.4, label=g.label,
               yerr=[lo, hi], capsize=min(4, 30 / n), error_kw={"elinewidth": 1, "ecolor": "#222"})
    ax.set_xticks(x, [f"{s}\n(n≈{_n_questions(rows, s)})" for s in splits])
    ax.set_ylabel("accuracy (% answers containing the gold answer)")
    ax.set_ylim(0, 105)
    ax.grid(axis="x", visible=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    ax.set_title(f"Accuracy per split, 95% CI resampling seeds, then questions ({a.experiment})")
    return plots.render(fig, "accuracy", "Accuracy per split and arm; n ≈ questions per seed. Error bars: 95% percentile "
                        "bootstrap that resamples the seeds (worlds), then the questions within each resampled seed. "
                        + splits_text(splits), "grouped bar chart of accuracy per split")


def _n_questions(groups: Sequence[Group], split: str) -> str:
    ns = [g.acc[split].n // max(1, g.acc[split].n_seeds) for g in groups if g.acc.get(split) and g.acc[split].n]
    return str(int(np.median(ns))) if ns else "?"


def plot_pareto(a: Analysis, plots: Plots) -> str:
    unit = a.cost_unit
    pts = []
    missing = []
    for g in a.groups:
        e, c = g.acc.get("updated"), total_cost(g, unit)
        if e is None or e.mean is None or c is None:
            missing.append(g.label)
            continue
        pts.append((g, c, e))
    if not pts:
        return skipped("pareto", "no record has both accuracy on the updated split and a cost ledger "
                       "(cost.update_total, cost.serving_per_1k)")
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(9.5, 5.2))
    positive = [c for _, c, _ in pts if c > 0]
    floor = (min(positive) / 3) if positive else 1e-3
    xy = [(max(c, floor), e.mean) for _, c, e in pts]
    front = stats.pareto_front(xy)
    for i, ((g, c, e), (x, y)) in enumerate(zip(pts, xy)):
        yerr = [[100 * (y - e.lo)], [100 * (e.hi - y)]] if e.has_ci else None
        ax.errorbar([x], [100 * y], yerr=yerr, fmt="o", ms=9, color=g.colour, mec="#222", mew=0.6, ecolor="#555",
                    elinewidth=1, capsize=3, label=g.label, zorder=3)
        if len(pts) <= 8 or i in front:  # many points: name the front, the legend names the rest
            ax.annotate(g.label, (x, 100 * y), xytext=(7, 5), textcoords="offset points", fontsize=8.5)
    if front:
        fx = [xy[i][0] for i in front]
        fy = [100 * xy[i][1] for i in front]
        ax.step(fx + [fx[-1] * 3], fy + [fy[-1]], where="post", color="#c0392b", lw=1.6, ls="--", alpha=0.8,
                label="Pareto front", zorder=2)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    lo_x, hi_x = min(x for x, _ in xy), max(x for x, _ in xy)
    ax.set_xlim(lo_x / 2, hi_x * 4)
    ax.set_ylim(-3, 103)
    what = "USD" if unit == "usd" else "seconds"
    ax.set_xlabel(f"update cost + serving cost of 1,000 queries ({what}, log scale)")
    ax.set_ylabel("accuracy on updated facts (%)")
    ax.set_title("Accuracy on the updated split vs cost")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    note = (f" Not drawn (no cost or accuracy): {esc(', '.join(missing))}." if missing else "")
    zero = [g.label for g, c, _ in pts if c <= 0]
    if zero:
        note += f" Zero cost drawn at the axis floor: {esc(', '.join(zero))}."
    return plots.render(fig, "pareto", "Each point is an arm (mean over seeds; error bar: 95% CI of accuracy). x = the "
                        "one-off update cost (embed + index + train) plus what serving 1,000 queries costs. Arms on the "
                        "dashed line are Pareto-optimal: none is both cheaper and more accurate." + note,
                        "scatter plot of accuracy versus cost with the Pareto front")


def _nanmean(arr: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer no seed measured stays NaN, silently
        return np.nanmean(arr, axis=axis)


def _curves(g: Group, model: str, key: str = "cka_per_layer") -> np.ndarray | None:
    cs = [c for c in g.values(f"shift.{model}.{key}") if isinstance(c, list) and c]
    cs = [[num(v) if num(v) is not None else np.nan for v in c] for c in cs]
    if not cs:
        return None
    n = max(len(c) for c in cs)
    arr = np.full((len(cs), n), np.nan)
    for i, c in enumerate(cs):
        arr[i, : len(c)] = c
    return arr


def plot_cka_layers(a: Analysis, plots: Plots) -> str:
    panels = [("lm", "LM (embedding output, then each block)"), ("embedder", "Embedder (embedding output, then each layer)")]
    data = {m: [(g, _curves(g, m)) for g in a.groups] for m, _ in panels}
    data = {m: [(g, c) for g, c in v if c is not None] for m, v in data.items()}
    if not any(data.values()):
        return skipped("cka-layers", "no record has shift.lm.cka_per_layer or shift.embedder.cka_per_layer "
                       "(latent shift not measured: shift.enabled=false, or an older record)")
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2.2, 1]})
    styles = ["-", "--", ":", "-."]
    ymin = 1.0
    for ax, (m, title) in zip(axes, panels):
        if not data[m]:
            ax.text(0.5, 0.5, f"no {m} CKA in these records", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title)
            continue
        for i, (g, arr) in enumerate(data[m]):
            mean = _nanmean(arr)
            layers = np.arange(len(mean))
            flat = np.allclose(mean[~np.isnan(mean)], 1.0)
            ax.plot(layers, mean, color=g.colour, lw=2.4 if not flat else 1.8 + 0.8 * (i % 3),
                    ls=styles[i % len(styles)] if flat else "-", marker="o" if len(mean) <= 10 else None, ms=4,
                    label=g.label + (" (=1: unchanged)" if flat else ""), zorder=3 if not flat else 2)
            if arr.shape[0] > 1 and not flat:
                ax.fill_between(layers, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), color=g.colour, alpha=0.2, lw=0)
            if np.isfinite(arr).any():
                ymin = min(ymin, float(np.nanmin(arr)))
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_ylabel("CKA(base, updated)")
    lo = min(0.9, ymin - 0.03)
    for ax in axes:
        ax.set_ylim(lo, 1.01)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    axes[1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
    fig.suptitle("Representation similarity to the base model, layer by layer (debiased CKA; 1 = same geometry)", y=1.02)
    fig.tight_layout()
    return plots.render(fig, "cka-layers", "Debiased minibatch CKA between the base model's and the arm's hidden states "
                        "on a fixed probe set, per layer (mean over seeds; band: min–max over seeds). Lines at exactly "
                        "1.0 belong to arms that did not change that model.",
                        "line plots of CKA per layer for the LM and the embedder")


def plot_cross_layer(a: Analysis, plots: Plots) -> str:
    mats = []
    for g in a.groups:
        ms = [m for m in g.values("shift.lm.cross_layer") if isinstance(m, list) and m and all(isinstance(r, list) for r in m)]
        arrs = []
        for m in ms:
            try:
                arr = np.array([[num(v) if num(v) is not None else np.nan for v in row] for row in m], dtype=float)
            except (TypeError, ValueError):
                continue
            if arr.ndim == 2:
                arrs.append(arr)
        shapes = {x.shape for x in arrs}
        if arrs and len(shapes) == 1:
            mats.append((g, _nanmean(np.stack(arrs)), len(arrs)))
    if not mats:
        return skipped("cross-layer", "no record has shift.lm.cross_layer")
    plt = _mpl()
    ncol = min(4, len(mats))
    nrow = math.ceil(len(mats) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 0.9, 3.3 * nrow + 0.5), squeeze=False)
    im = None
    for i, (ax, (g, m, n)) in enumerate(zip(axes.flat, mats)):
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", origin="lower", interpolation="nearest", aspect="equal")
        ax.set_title(f"{g.label}\n(mean of {n} seed{'s' if n != 1 else ''})", fontsize=9.5)
        ax.set_xlabel("updated model layer")
        if i % ncol == 0:
            ax.set_ylabel("base model layer")
        ax.grid(False)
    for ax in list(axes.flat)[len(mats):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, label="debiased CKA")
    return plots.render(fig, "cross-layer", "Cross-layer CKA: base layer i (rows) against the arm's layer j (columns), "
                        "LM, mean over seeds. An untouched model shows the base model's own layer-similarity pattern; "
                        "a fine-tuned one fades along the diagonal where its layers drifted.",
                        "heatmaps of cross-layer CKA, one per arm")


def plot_cost_phases(a: Analysis, plots: Plots) -> str:
    have = [g for g in a.groups if any(isinstance(dig(r, f"cost.{p}"), Mapping) for r in g.records for p in PHASES)]
    if not have:
        return skipped("cost-phases", "no record has per-phase costs (cost.embed, cost.train, cost.generate, ...)")
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(13, max(2.6, 0.55 * len(have) + 1.6)), sharey=True)
    y = np.arange(len(have))[::-1]
    for ax, phases, title in ((axes[0], UPDATE_PHASES, "update (one-off)"), (axes[1], SERVING_PHASES, "serving (this evaluation)")):
        left = np.zeros(len(have))
        for p in phases:
            vals = np.array([g.mean(f"cost.{p}.wall_s") or 0.0 for g in have])
            if not vals.any():
                continue
            ax.barh(y, vals, left=left, color=PHASE_COLOURS[p], label=p, edgecolor="white", linewidth=0.5, height=0.65)
            left += vals
        for yi, tot in zip(y, left):
            ax.annotate(fmt_seconds(tot) if tot else "none", (tot, yi), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=8.5)
        ax.set_xlim(0, max(left.max() * 1.3, 1e-3))
        ax.set_title(f"wall time by phase: {title}")
        ax.set_xlabel("seconds (mean over seeds)")
        ax.grid(axis="y", visible=False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=9)
    axes[0].set_yticks(y, [g.label for g in have])
    fig.tight_layout()
    return plots.render(fig, "cost-phases", "Wall time of each phase, stacked per arm (mean over seeds). Update phases "
                        "are paid once per knowledge update; serving phases are what answering this evaluation's questions "
                        "cost (retrieval adds context tokens to every prompt).", "stacked bar charts of cost by phase")


def plot_differences(a: Analysis, plots: Plots) -> str:
    panels = [(b, rows) for b, rows in a.diffs.items() if any(e for _, d in rows for e in d.values())]
    if not panels:
        return skipped("differences", "no arm shares (seed, question) pairs with a baseline arm (stale or reembed): "
                       "predictions are missing or the baselines were not run")
    plt = _mpl()
    nrows = max(len(rows) for _, rows in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.3 * len(panels), 1.0 + 0.75 * nrows * 1.15), squeeze=False)
    drawn = [s for s in a.splits if any(d.get(s) for _, rows in panels for _, d in rows)]  # legend: these only
    offsets = np.linspace(-0.27, 0.27, len(drawn))
    for ax, (b, rows) in zip(axes[0], panels):
        y = np.arange(len(rows))[::-1]
        for (g, d), yi in zip(rows, y):
            for off, split in zip(offsets, drawn):
                e = d.get(split)
                if not e or e.mean is None:
                    continue
                ax.errorbar([100 * e.mean], [yi + off], xerr=[[100 * (e.mean - e.lo)], [100 * (e.hi - e.mean)]],
                            fmt=split_marker(split), color=g.colour, mec="#222", mew=0.5, ms=6, ecolor="#444",
                            elinewidth=1, capsize=2)
        ax.axvline(0, color="#333", lw=1)
        ax.set_yticks(y, [g.label for g, _ in rows])
        ax.set_xlabel(f"accuracy difference vs {b} (percentage points)")
        ax.set_title(f"arm − {b}, paired by (seed, question)")
        ax.grid(axis="y", visible=False)
        ax.set_ylim(-0.6, len(rows) - 0.4)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=split_marker(s), ls="", color="#777", mec="#222", label=s) for s in drawn]
    axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, title="split")
    fig.tight_layout()
    return plots.render(fig, "differences", "Paired differences in accuracy (arm minus baseline) with 95% CIs "
                        "of a bootstrap over matched (seed, question) pairs that resamples the seeds, then the pairs "
                        "within each seed." + forgetting_text(a) + " Intervals that do not cross 0 are differences the "
                        "questions support; intervals across 0 are not.", "forest plot of paired accuracy differences")


def plot_sweep(a: Analysis, plots: Plots) -> str | None:
    """Accuracy on the updated split against the one numeric config key the grid varies (if there is one)."""
    numeric = [k for k in a.varied if all(isinstance(_json(v), (int, float)) and not isinstance(_json(v), bool)
                                          for g in a.groups for kk, v in g.variant if kk == k)]
    if len(a.varied) != 1 or not numeric:
        return None
    key = numeric[0]
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    by_s: dict[str, list[tuple[float, stats.Estimate, Group]]] = defaultdict(list)
    flat_arms = []
    for g in a.groups:
        e = g.acc.get("updated")
        if e is None or e.mean is None:
            continue
        v = dict(g.variant).get(key)
        if v is None:
            flat_arms.append((g, e))
        else:
            by_s[g.strategy].append((float(_json(v)), e, g))
    if not by_s:
        plt.close(fig)
        return None
    for s, pts in by_s.items():
        pts.sort(key=lambda t: t[0])
        xs = [p[0] for p in pts]
        ys = [100 * p[1].mean for p in pts]
        lo = [100 * (p[1].mean - p[1].lo) if p[1].has_ci else 0 for p in pts]
        hi = [100 * (p[1].hi - p[1].mean) if p[1].has_ci else 0 for p in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", color=pts[-1][2].colour, capsize=3, label=s)
    for g, e in flat_arms:
        ax.axhline(100 * e.mean, color=g.colour, ls="--", lw=1.4, label=f"{g.label} (not varied)")
    xs_all = [p[0] for pts in by_s.values() for p in pts]
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8:  # ranks 8..64, learning rates 1e-5..1e-3
        ax.set_xscale("log", base=2 if all(float(v).is_integer() for v in xs_all) else 10)
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        ax.xaxis.set_major_locator(FixedLocator(sorted(set(xs_all))))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(key)
    ax.set_ylabel("accuracy on updated facts (%)")
    ax.set_ylim(-3, 103)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    ax.set_title(f"Accuracy on the updated split vs {key}")
    return plots.render(fig, "sweep", f"Accuracy on updated facts as the grid varies <code>{esc(key)}</code> (95% CI).",
                        f"line plot of accuracy versus {key}")


def _json(v: str | None) -> Any:
    try:
        return json.loads(v) if v is not None else None
    except ValueError:
        return v


# --------------------------------------------------------------------------------------- tables


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", header_titles: Sequence[str] | None = None) -> str:
    th = "".join(f'<th title="{esc(t)}">{h}</th>' if t else f"<th>{h}</th>"
                 for h, t in zip(headers, header_titles or [""] * len(headers)))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def arm_cell(g: Group) -> str:
    sw = f'<span class="swatch" style="background:{_hex(g.colour)}"></span>'
    return f'{sw}<b>{esc(g.strategy)}</b>' + (
        '<br><span class="variant">' + esc(", ".join(f"{k}={_display(v)}" for k, v in g.variant)) + "</span>" if g.variant else "")


def _hex(c: Any) -> str:
    try:
        from matplotlib.colors import to_hex

        return to_hex(c)
    except (ValueError, TypeError, ImportError):
        return "#999999"


def summary_table(a: Analysis) -> str:
    k = a.top_k
    sizes = {s: stats.fmt_sizes(stats.questions_per_world(a.records, s)) for s in a.splits}
    headers = ["arm", "seeds", *[f"{s}<br><small>acc. % [95% CI]<br>n {sizes[s]} / seed</small>" for s in a.splits],
               f"recall@{k}<br><small>% · MRR</small>", "CKA mean<br><small>LM</small>", "CKA min<br><small>LM</small>",
               "update<br><small>time · $</small>", "serving / 1k queries<br><small>time · $</small>"]
    titles = ["strategy (and grid point)", "distinct seeds (runs)",
              *[f"accuracy on the {s} split: % answers containing the gold answer; CI: bootstrap resampling seeds, "
                f"then questions within each seed; n: questions per seed" for s in a.splits],
              "share of questions whose gold document is in the top k retrieved; below: mean reciprocal rank",
              "mean over layers of CKA(base LM, updated LM)", "lowest layer CKA",
              "wall time of the one-off update (embed + index + train), priced at the configured $/hour",
              "serving wall time (retrieve + generate) scaled to 1,000 queries, and its price"]
    rows = []
    for g in a.groups:
        rec_k = g.mean(f"metrics.retrieval.recall@{k}")
        mrr = g.mean("metrics.retrieval.mrr")
        closed = rec_k is None and all(dig(r, "metrics") and not dig(r, "metrics.retrieval") for r in g.records)
        if closed:
            recall = '<span class="na">closed-book</span>'
        else:
            recall = fmt_pct(rec_k) + (f'<span class="ci">MRR {fmt_num(mrr)}</span>' if mrr is not None else "")
        cka_mean, cka_min = g.mean("shift.lm.cka_mean"), g.mean("shift.lm.cka_min")
        cka_m = fmt_num(cka_mean)
        if cka_mean is not None and lm_untouched(g):
            cka_m += '<span class="ci">LM untouched</span>'
        n_runs, seeds = len(g.records), len(g.seeds)
        update = fmt_seconds(g.mean("cost.update_total.wall_s"))
        u_usd = g.mean("cost.update_total.usd")
        serve = fmt_seconds(g.mean("cost.serving_per_1k.wall_s"))
        s_usd = g.mean("cost.serving_per_1k.usd")
        rows.append([
            arm_cell(g), f"{seeds}" + (f" ({n_runs} runs)" if n_runs != seeds else ""),
            *[fmt_estimate(g.acc.get(s)) for s in a.splits],
            recall, cka_m, fmt_num(cka_min),
            update + (f'<span class="ci">{fmt_usd(u_usd)}</span>' if u_usd is not None else ""),
            serve + (f'<span class="ci">{fmt_usd(s_usd)}</span>' if s_usd is not None else ""),
        ])
    return table(headers, rows, "summary", titles)


def differences_tables(a: Analysis) -> str:
    if not a.diffs:
        return ('<div class="note">No paired differences: they need per-question predictions of an arm and of a '
                "baseline arm (stale or reembed) on the same seed.</div>")
    out = []
    for b, rows in a.diffs.items():
        splits = [s for s in a.splits if s in rows[0][1]]
        body = []
        for g, d in rows:
            seeds = max((e.n_seeds for e in d.values() if e), default=0)
            body.append([arm_cell(g), *[fmt_estimate(d.get(s), signed=True) for s in splits], str(seeds or "–")])
        what = f" (forgetting reference: {' and '.join(splits)} only)" if b == stats.FORGETTING_REFERENCE else ""
        out.append(f"<h3>vs <code>{esc(b)}</code>{esc(what)}</h3>" + table(
            ["arm", *[f"{s}<br><small>Δ pp [95% CI]<br>n pairs · McNemar p</small>" for s in splits], "seeds"], body, "diffs"))
    return "".join(out)


def cost_table(a: Analysis) -> str:
    rows = []
    for g in a.groups:
        cells = []
        for p in PHASES:
            w = g.mean(f"cost.{p}.wall_s")
            t = g.mean(f"cost.{p}.tokens")
            cells.append("–" if w is None else f"{fmt_seconds(w)}<br><span class=\"ci\">{_tokens(t)} tok</span>")
        reused = [dig(r, "cost.train.reused_adapter") for r in g.records]
        extra = '<br><span class="ci">adapter reused (training time booked)</span>' if any(reused) else ""
        rows.append([arm_cell(g), *cells, fmt_seconds(g.mean("cost.total.wall_s")) + extra,
                     _tokens(g.mean("cost.serving_per_1k.prompt_tokens")), _flops(g.mean("cost.update_total.flops"))])
    return table(["arm", *PHASES, "total", "prompt tokens / 1k q", "update FLOPs"], rows, "cost")


def _tokens(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def _flops(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    e = int(math.floor(math.log10(abs(v))))
    return f"{v / 10 ** e:.1f}e{e}"


def drift_table(a: Analysis) -> str:
    rows = []
    for g in a.groups:
        d = [dig(r, "shift.kb_drift") for r in g.records]
        d = [x for x in d if isinstance(x, Mapping)]
        if not d:
            rows.append([arm_cell(g), '<span class="na">not measured</span>', "", "", ""])
            continue
        applied = [x for x in d if x.get("applied", True) is not False and "changed" in x]
        if not applied:
            rows.append([arm_cell(g), f'<span class="na">not applied: {esc(d[0].get("note", ""))}</span>', "", "", ""])
            continue
        mean = lambda p: mean_of(dig(x, p) for x in applied)  # noqa: E731
        rows.append([arm_cell(g), fmt_num(mean("changed.mean")), fmt_num(mean("changed.min")),
                     fmt_num(mean("unchanged.mean")), f"{mean('n_new_docs') or 0:.0f} / {mean('n_removed_docs') or 0:.0f}"])
    return table(["arm", "cos(v0, v1) changed docs, mean", "changed, min", "unchanged docs, mean", "new / removed docs"],
                 rows, "drift")


def runs_table(a: Analysis) -> str:
    rows = []
    for r in sorted(a.records, key=lambda r: (_strategy_rank(str(r.get("strategy"))), str(r.get("seed")), str(r.get("run_id")))):
        lacking = [k for k in ("metrics", "cost", "shift", "predictions", "config") if not r.get(k)]
        rows.append([esc(r.get("run_id", "?")), esc(r.get("strategy", "?")), esc(r.get("seed", "?")),
                     f"<code>{esc(str(r.get('data_fingerprint') or '–')[:12])}</code>", esc(r.get("finished_at") or r.get("source") or "–"),
                     esc(len(r.get("predictions") or [])), esc(", ".join(lacking) or "–")])
    return table(["run id", "strategy", "seed", "data fingerprint", "finished", "predictions", "missing"], rows, "runs")


# ----------------------------------------------------------------------------------------- page


CSS = """
:root { --fg:#1d2327; --muted:#5f6b73; --line:#d9dee2; --bg:#ffffff; --band:#f5f7f8; --accent:#2c6ca3; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 36px 0 10px; padding-top: 10px; border-top: 2px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
nav { position: sticky; top: 0; background: rgba(255,255,255,.96); border-bottom: 1px solid var(--line); padding: 8px 32px; z-index: 2; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 16px; white-space: nowrap; }
.meta { color: var(--muted); font-size: 13px; }
pre.cmd { background: var(--band); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; overflow-x: auto; font-size: 13px; }
.howto { background: #f3f8fc; border-left: 4px solid var(--accent); padding: 10px 16px; border-radius: 4px; }
.howto p { margin: 6px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: right; vertical-align: top; white-space: nowrap; }
table.runs td, table.runs th { text-align: left; }
table.summary .ci, table.diffs .ci { display: block; }
th { background: var(--band); font-weight: 600; vertical-align: bottom; }
td:first-child, th:first-child { text-align: left; }
tbody tr:hover { background: #fafbfc; }
.ci { color: var(--muted); font-size: 12px; white-space: nowrap; }
.est { font-weight: 600; } .est.pos { color: #1e7b34; } .est.neg { color: #b03a2e; }
.na { color: var(--muted); font-style: italic; }
.variant { color: var(--muted); font-size: 12px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px; border: 1px solid #0003; vertical-align: -1px; }
figure.plot { margin: 14px 0 22px; padding: 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
figure.plot svg, figure.plot img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.note { background: #fff8e6; border-left: 4px solid #e0a800; padding: 8px 12px; margin: 8px 0; border-radius: 4px; font-size: 14px; }
.note.error { background: #fdecea; border-color: #c0392b; }
.note.plain { background: #eef7ee; border-color: #3c9a4a; }
ul.notes { margin: 4px 0; padding-left: 20px; } ul.notes li { margin: 2px 0; }
code { font-size: 90%; }
details summary { cursor: pointer; color: var(--accent); }
"""

RENDER_CHECK_JS = """
window.addEventListener('load', function () {
  var figs = document.querySelectorAll('figure.plot'), ok = 0;
  figs.forEach(function (f) {
    var el = f.querySelector('svg, img');
    if (!el) return;
    var r = el.getBoundingClientRect();
    var loaded = el.tagName.toLowerCase() !== 'img' || (el.complete && el.naturalWidth > 0);
    if (r.width > 50 && r.height > 50 && loaded) { ok++; f.setAttribute('data-rendered', 'yes'); }
  });
  document.body.setAttribute('data-plots-total', String(figs.length));
  document.body.setAttribute('data-plots-rendered', String(ok));
});
"""


def how_to_read(a: Analysis) -> str:
    general = " and\n<i>general</i> about world knowledge" if "general" in a.splits else ""
    stored = ("""<i>stored</i> is not a question: the LM alone,
with no retrieval, completes each updated fact's sentence from the knowledge base; high <i>stored</i> with low
<i>updated</i> means the facts are in the weights but the model cannot answer questions with them.""" if stats.STORED in a.splits else "")
    return f"""
<div class="howto" id="how-to-read">
<p><b>How to read this.</b> Every arm starts from the same base system (an LM, a frozen embedder and an index over the
knowledge base before the update) and answers the same questions, seed by seed; only the update strategy differs.
<code>stale</code> changes nothing, <code>reembed</code> re-embeds the new knowledge base and rebuilds the index,
<code>lora</code> fine-tunes the LM on the new facts and answers without retrieval (closed-book), <code>lora_rag</code>
does both; retrieval arms put the top {a.top_k} documents in the prompt. Accuracy is the share of answers that contain the gold answer. The <i>updated</i> and <i>paraphrased</i>
splits ask about facts the update changed (a good update raises them), <i>unchanged</i> about facts it kept{general}
(a good update does not lower them). {stored}</p>
<p>Numbers in brackets are 95% bootstrap confidence intervals that resample the seeds (each seed is its own fictional
world with its own questions), then the questions within each resampled seed: they say how much a number would move in
another world, not only with other questions. The differences table compares arms on
the very same questions (paired by seed and question), which is much more sensitive than comparing two intervals:
a difference whose interval excludes 0 is shown in colour; beneath it, n matched pairs and the exact McNemar test's p.
CKA measures how similar the updated model's internal representations are to the base model's (1 = identical geometry); arms that do not touch the LM (stale, reembed) have
CKA exactly 1.0 by construction. Update cost is paid once per knowledge update; serving cost is per 1,000 queries.
Hover over a number for its source, the number of questions behind it and its per-seed values.</p>
</div>"""


def _names(groups: Sequence[Group], every: Sequence[Group]) -> list[str]:
    """Labels, with a strategy named once when all of its rows (in `every`) are in `groups`."""
    out = []
    for s in dict.fromkeys(g.strategy for g in groups):
        mine = [g for g in groups if g.strategy == s]
        if len(mine) > 1 and len(mine) == len([g for g in every if g.strategy == s]):
            out.append(f"{s} (every grid point)")
        else:
            out.extend(g.label for g in mine)
    return out


def cka_note(a: Analysis) -> str:
    untouched = _names([g for g in a.groups if lm_untouched(g)], a.groups)
    moved = _names([g for g in a.groups if lm_untouched(g) is False], a.groups)
    parts = []
    if untouched:
        parts.append(f"<b>{esc(', '.join(untouched))}</b>: the LM was not changed (no adapter, base weights identical), so "
                     "their LM CKA is exactly 1.0 at every layer — flat lines at 1 are expected, not a bug.")
    emb_flat = []
    for g in a.groups:
        arr = _curves(g, "embedder")
        if arr is not None and np.allclose(arr[~np.isnan(arr)], 1.0):
            emb_flat.append(g.label)
    if emb_flat and len(emb_flat) == len([g for g in a.groups if _curves(g, "embedder") is not None]):
        parts.append("The embedder is frozen in every arm (re-embedding changes the index, not the encoder): its CKA is 1.0 throughout.")
    if moved:
        parts.append(f"<b>{esc(', '.join(moved))}</b> changed the LM: where their curve dips is where the update moved the "
                     "representations most.")
    return f'<div class="note plain">{" ".join(parts)}</div>' if parts else ""


def _section(title: str, anchor: str, build: Callable[[], str]) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of partial records: drawn as gaps
            body = build()
    except Exception as e:  # the page must come out whatever one section makes of odd records
        tb = traceback.format_exc()
        print(f"dashboard: section {title!r} failed: {type(e).__name__}: {e}", file=sys.stderr)
        body = (f'<div class="note error" data-section-error="{esc(anchor)}">This section could not be drawn: '
                f"{esc(type(e).__name__)}: {esc(e)}<details><summary>traceback</summary><pre>{esc(tb)}</pre></details></div>")
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


SECTIONS = (("summary", "Summary"), ("differences", "Paired differences"), ("accuracy", "Accuracy by split"),
            ("cost-accuracy", "Accuracy vs cost"), ("shift", "Latent shift (CKA)"), ("cost", "Cost by phase"), ("runs", "Runs"))


def forgetting_text(a: Analysis) -> str:
    if stats.FORGETTING_REFERENCE not in a.diffs:
        return ""
    on = " and ".join(f"<i>{esc(s)}</i>" for s in stats.reference_splits(stats.FORGETTING_REFERENCE, a.splits))
    return f" <code>{stats.FORGETTING_REFERENCE}</code>, the base LM untouched, is the reference for forgetting: compared on {on} only."


def render_html(a: Analysis, command: str, plot_format: str = "svg") -> str:
    plots = Plots(plot_format)

    def grid_text() -> str:
        if a.varied:
            return ("Rows per strategy and per value of the config keys this grid varies: "
                    + ", ".join(f"<code>{esc(k)}</code>" for k in a.varied) + ".")
        return "The records' configs differ only in seed and strategy: one row per strategy."

    def summary() -> str:
        parts = [f"<p>{grid_text()} Accuracy is pooled over seeds; time and cost are means over seeds.</p>", summary_table(a)]
        if a.strategy_keys:
            parts.append('<p class="meta">Config keys that differ only between strategies (arm definitions, not a grid): '
                         + ", ".join(f"<code>{esc(k)}</code>" for k in a.strategy_keys[:12])
                         + (" …" if len(a.strategy_keys) > 12 else "") + "</p>")
        return "".join(parts)

    def differences() -> str:
        return ("<p>Mean difference in accuracy (percentage points, arm minus baseline) over (seed, question) pairs "
                "matched by <code>qid</code> within each seed, with a 95% bootstrap CI that resamples the seeds, then "
                f"the pairs within each resampled seed ({a.n_boot} resamples, seeded). Green: CI above 0; red: below 0. "
                "Under each: n, the matched pairs, and p, the two-sided exact McNemar test on them (b = pairs the arm "
                "answers and the baseline misses, c = the reverse; hover for b and c)."
                + forgetting_text(a) + "</p>"
                + differences_tables(a) + plot_differences(a, plots))

    def accuracy() -> str:
        out = plot_accuracy(a, plots)
        sweep = plot_sweep(a, plots)
        return out + (sweep or "")

    def shift() -> str:
        return (cka_note(a) + plot_cka_layers(a, plots) + plot_cross_layer(a, plots)
                + "<h3>Knowledge-base drift</h3><p>Cosine between each document's embedding before and after the update, "
                  "for arms whose index holds the new knowledge base.</p>" + drift_table(a))

    def cost() -> str:
        return plot_cost_phases(a, plots) + "<h3>Per phase (mean over seeds)</h3>" + cost_table(a)

    def runs() -> str:
        return f"<p>{len(a.records)} results files.</p>" + runs_table(a)

    builders = {"summary": summary, "differences": differences, "accuracy": accuracy,
                "cost-accuracy": lambda: plot_pareto(a, plots), "shift": shift, "cost": cost, "runs": runs}
    sections = "".join(_section(t, k, builders[k]) for k, t in SECTIONS)
    notes = ""
    if a.notes:
        notes = ('<div class="note" id="notes"><b>Notes on these records.</b><ul class="notes">'
                 + "".join(f"<li>{esc(n)}</li>" for n in dict.fromkeys(a.notes)) + "</ul></div>")
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in SECTIONS)
    strategies = ", ".join(dict.fromkeys(g.strategy for g in a.groups))
    seeds = sorted({str(r.get("seed")) for r in a.records})
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>updatelab — {esc(a.experiment)}</title>
<style>{CSS}</style></head>
<body data-plots="{plots.count}">
<nav>{nav}</nav>
<main>
<h1>updatelab — experiment <code>{esc(a.experiment)}</code></h1>
<p class="meta">{len(a.records)} runs · strategies: {esc(strategies)} · seeds: {esc(', '.join(seeds))} · generated {esc(now)}</p>
<pre class="cmd" id="command">{esc(command)}</pre>
{how_to_read(a)}
{notes}
{sections}
</main>
<script>{RENDER_CHECK_JS}</script>
</body></html>
"""


def build_dashboard(records: list[dict[str, Any]], experiment: str, out: str | Path, command: str,
                    notes: Sequence[str] = (), plot_format: str = "svg", cost_unit: str = "seconds",
                    n_boot: int = stats.DEFAULT_BOOT) -> Path:
    a = analyse(records, experiment, list(notes), n_boot=n_boot, cost_unit=cost_unit)
    page = render_html(a, command, plot_format)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m updatelab.report.dashboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", required=True, help="experiment name: reads <results-dir>/<experiment>/*.json")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--out", default=None, help="HTML file to write (default <results-dir>/<experiment>/dashboard.html)")
    ap.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT",
                    help="when there are no local results, read the runs of W&B group=<experiment> from this project")
    ap.add_argument("--cost-unit", choices=("seconds", "usd"), default="seconds", help="x axis of the accuracy-vs-cost plot")
    ap.add_argument("--plot-format", choices=("svg", "png"), default="svg")
    ap.add_argument("--n-boot", type=int, default=stats.DEFAULT_BOOT, help="bootstrap resamples")
    args = ap.parse_args(argv)
    command = "python -m updatelab.report.dashboard " + shlex.join(list(argv) if argv is not None else sys.argv[1:])

    records, notes = load_records(args.results_dir, args.experiment)
    if not records and args.wandb:
        try:
            records, wnotes = load_wandb_records(args.wandb, args.experiment)
            notes += wnotes
        except Exception as e:  # network, credentials, a missing project: say so, do not trace back
            print(f"dashboard: could not read W&B runs from {args.wandb}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    elif records and args.wandb:
        notes.append(f"--wandb {args.wandb} ignored: local results files exist")
    if not records:
        folder = Path(args.results_dir) / args.experiment
        known = sorted(p.name for p in Path(args.results_dir).glob("*") if p.is_dir() and any(p.glob("*.json")))
        print(f"dashboard: no results records in {folder}" + (f"; experiments with results: {', '.join(known)}" if known else ""),
              file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.results_dir) / args.experiment / "dashboard.html"
    path = build_dashboard(records, args.experiment, out, command, notes, args.plot_format, args.cost_unit, args.n_boot)
    print(f"dashboard: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
