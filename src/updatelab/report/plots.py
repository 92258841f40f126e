"""The dashboard's figures (matplotlib), inlined as SVG or PNG: accuracy per split, paired
differences, accuracy vs cost, a grid sweep and cost by phase. Each plot function returns the
figure's HTML, or a note saying why it was skipped; the shift panels are in `shift_plots`."""

from __future__ import annotations

import base64
import io
import re
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

from updatelab.report import stats
from updatelab.report.aggregate import PHASES, SERVING_PHASES, UPDATE_PHASES, Analysis, Group, pareto_front, total_cost
from updatelab.report.fmt import esc, fmt_seconds
from updatelab.report.records import config_value, dig

STRATEGY_CMAPS = {"stale": "Greys", "reembed": "Blues", "embedder_ft_stale": "RdPu", "embedder_ft_reembed": "BuPu",
                  "lora": "Oranges", "lora_rag": "Greens"}
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
    extra = [s for s in stats.REPORT_SPLITS if s not in SPLIT_MARKERS]
    return SPLIT_MARKERS.get(split) or OTHER_MARKERS[extra.index(split) % len(OTHER_MARKERS) if split in extra else 0]


def splits_text(splits: Sequence[str]) -> str:
    """What each shown split asks, for captions: only the splits on the page."""
    return "; ".join(SPLIT_TEXT.get(s, f"<i>{esc(s)}</i>") for s in splits) + "."


def forgetting_text(a: Analysis) -> str:
    if stats.FORGETTING_REFERENCE not in a.diffs:
        return ""
    on = " and ".join(f"<i>{esc(s)}</i>" for s in stats.reference_splits(stats.FORGETTING_REFERENCE, a.splits))
    return f" <code>{stats.FORGETTING_REFERENCE}</code>, the base LM untouched, is the reference for forgetting: compared on {on} only."


def assign_colours(groups: Sequence[Group]) -> None:
    """A colour per row: each arm its own colour map, its grid points shades of it."""
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
    front = pareto_front(xy)
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
    numeric = [k for k in a.varied if all(isinstance(config_value(v), (int, float)) and not isinstance(config_value(v), bool)
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
            by_s[g.strategy].append((float(config_value(v)), e, g))
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
