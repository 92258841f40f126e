"""The dashboard's panels on where an update lands: CKA by layer and across layers, KL divergence
and intruder dimensions by layer (`shift.lm.kl_*`, `shift.lm.intruders_*`), and retrieval recall by
arm when an arm tunes the embedder. A panel whose keys no record has is left out of the page
(the CKA panels, there since the first records, say why they are skipped instead)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from updatelab.report.aggregate import Analysis, Group, curves, layer_panel, lm_untouched, nanmean, recall_by_arm
from updatelab.report.fmt import esc
from updatelab.report.plots import Plots, _mpl, skipped
from updatelab.report.records import num


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
        arr = curves(g, "shift.embedder.cka_per_layer")
        if arr is not None and np.allclose(arr[~np.isnan(arr)], 1.0):
            emb_flat.append(g.label)
    if emb_flat and len(emb_flat) == len([g for g in a.groups if curves(g, "shift.embedder.cka_per_layer") is not None]):
        parts.append("The embedder is frozen in every arm (re-embedding changes the index, not the encoder): its CKA is 1.0 throughout.")
    if moved:
        parts.append(f"<b>{esc(', '.join(moved))}</b> changed the LM: where their curve dips is where the update moved the "
                     "representations most.")
    return f'<div class="note plain">{" ".join(parts)}</div>' if parts else ""


def plot_cka_layers(a: Analysis, plots: Plots) -> str:
    panels = [("lm", "LM (embedding output, then each block)"), ("embedder", "Embedder (embedding output, then each layer)")]
    data = {m: layer_panel(a.groups, f"shift.{m}.cka_per_layer") for m, _ in panels}
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
            mean = nanmean(arr)
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
            mats.append((g, nanmean(np.stack(arrs)), len(arrs)))
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


@dataclass(frozen=True)
class LayerPanel:
    """A per-block curve of the LM's shift, with the per-record total its legend names."""

    name: str  # data-plot id
    path: str  # the per-block list
    total: str  # the scalar beside it: key and legend format
    total_fmt: str
    ylabel: str
    title: str
    caption: str
    alt: str
    step: bool = False  # counts, drawn as steps


KL_PANEL = LayerPanel(
    "kl-layers", "shift.lm.kl_per_layer", "shift.lm.kl_mean", "mean {:.3g} nats/token", "KL(base ‖ updated), nats per token",
    "Next-token KL divergence from the base LM, block by block (logit lens)",
    "KL divergence between the base LM's and the arm's next-token distributions on the general probe text, read out "
    "after each transformer block through the final norm and the LM head (logit lens); mean over seeds, band: min–max "
    "over seeds; the legend gives <code>kl_mean</code>, the KL of the final output. Arms that leave the LM alone are at "
    "0 everywhere. CKA can stay near 1 while this moves: it measures behaviour, not geometry.",
    "line plot of KL divergence per layer")
INTRUDER_PANEL = LayerPanel(
    "intruders", "shift.lm.intruders_per_layer", "shift.lm.intruders_total", "total {:.3g}", "intruder dimensions",
    "Intruder dimensions of the updated weights, block by block",
    "Intruder dimensions per transformer block, summed over its adapted modules: top singular vectors of the updated "
    "weight with low cosine similarity to every singular vector of the base weight (Shuttleworth et al. 2024); mean "
    "over seeds, band: min–max; the legend gives <code>intruders_total</code>. Arms that do not change the LM have none.",
    "line plot of intruder dimensions per layer", step=True)


def plot_layer_panel(a: Analysis, plots: Plots, p: LayerPanel) -> str:
    """One line per arm (mean over seeds; band: min–max), blocks on x; '' when no record has `p.path`."""
    rows = layer_panel(a.groups, p.path)
    if not rows:
        return ""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(10, 4.4))
    for g, arr in rows:
        mean, layers = nanmean(arr), np.arange(arr.shape[1])
        total = g.mean(p.total)
        label = g.label if total is None else f"{g.label} ({p.total_fmt.format(total)})"
        ax.plot(layers, mean, color=g.colour, lw=2, marker="o" if len(mean) <= 10 else None, ms=4, label=label,
                drawstyle="steps-mid" if p.step else "default")
        if arr.shape[0] > 1:
            ax.fill_between(layers, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), color=g.colour, alpha=0.2, lw=0,
                            step="mid" if p.step else None)
    ax.set_xlabel("transformer block")
    ax.set_ylabel(p.ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(p.title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    return plots.render(fig, p.name, p.caption, p.alt)


def plot_recall(a: Analysis, plots: Plots) -> str:
    """Recall@k by arm when an arm tunes the embedder; '' otherwise."""
    rows = recall_by_arm(a)
    if not rows:
        return ""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(9, max(2.6, 0.5 * len(rows) + 1.4)))
    y = np.arange(len(rows))[::-1]
    for (g, vals), yi in zip(rows, y):
        ax.barh(yi, 100 * float(np.mean(vals)), color=g.colour, edgecolor="#333", linewidth=0.4, height=0.65)
        ax.plot([100 * v for v in vals], [yi] * len(vals), "o", color="#222", ms=3.5, zorder=3)
    ax.set_yticks(y, [g.label for g, _ in rows])
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"recall@{a.top_k} (% of questions whose gold document is retrieved)")
    ax.grid(axis="y", visible=False)
    ax.set_title(f"Retrieval recall@{a.top_k} by arm")
    return plots.render(fig, "recall", f"Share of questions whose gold document is among the top {a.top_k} retrieved, per "
                        "arm (bar: mean over seeds; dots: the seeds). <code>embedder_ft_stale</code> asks with the tuned "
                        "embedder against the index of the old one; <code>embedder_ft_reembed</code> re-embeds the "
                        "knowledge base with the tuned embedder: the gap between them is what the stale index costs.",
                        "bar chart of retrieval recall by arm")
