"""The dashboard page: each section's body from the tables and plots, composed by the Jinja2
template `templates/dashboard.html.j2` (markup, styles and the how-to-read text live there)."""

from __future__ import annotations

import datetime as _dt
import sys
import traceback
import warnings
from typing import Callable

import jinja2
from markupsafe import Markup

from updatelab.report import stats
from updatelab.report.aggregate import Analysis, layer_panel
from updatelab.report.fmt import esc
from updatelab.report.plots import (Plots, assign_colours, forgetting_text, plot_accuracy, plot_cost_phases,
                                    plot_differences, plot_pareto, plot_sweep)
from updatelab.report.shift_plots import (INTRUDER_PANEL, KL_PANEL, cka_note, plot_cka_layers, plot_cross_layer,
                                          plot_layer_panel, plot_recall)
from updatelab.report.tables import cost_table, differences_tables, drift_table, runs_table, summary_table


def _section(title: str, anchor: str, build: Callable[[], str]) -> str | None:
    """The section's HTML; None when it has nothing to show (a panel for keys no record has)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of partial records: drawn as gaps
            body = build()
    except Exception as e:  # the page must come out whatever one section makes of odd records
        tb = traceback.format_exc()
        print(f"dashboard: section {title!r} failed: {type(e).__name__}: {e}", file=sys.stderr)
        body = (f'<div class="note error" data-section-error="{esc(anchor)}">This section could not be drawn: '
                f"{esc(type(e).__name__)}: {esc(e)}<details><summary>traceback</summary><pre>{esc(tb)}</pre></details></div>")
    if not body:
        return None
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _sections(a: Analysis, plots: Plots) -> list[tuple[str, str, Callable[[], str]]]:
    """(anchor, title, build) of every section, in page order."""

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

    def shift() -> str:
        return (cka_note(a) + plot_cka_layers(a, plots) + plot_cross_layer(a, plots)
                + plot_layer_panel(a, plots, KL_PANEL) + plot_layer_panel(a, plots, INTRUDER_PANEL)
                + "<h3>Knowledge-base drift</h3><p>Cosine between each document's embedding before and after the update, "
                  "for arms whose index holds the new knowledge base.</p>" + drift_table(a))

    beyond = any(layer_panel(a.groups, p.path) for p in (KL_PANEL, INTRUDER_PANEL))
    return [
        ("summary", "Summary", summary),
        ("differences", "Paired differences", differences),
        ("accuracy", "Accuracy by split", lambda: plot_accuracy(a, plots) + (plot_sweep(a, plots) or "")),
        ("recall", "Retrieval recall by arm", lambda: plot_recall(a, plots)),
        ("cost-accuracy", "Accuracy vs cost", lambda: plot_pareto(a, plots)),
        ("shift", "Latent shift (CKA, KL, intruder dimensions)" if beyond else "Latent shift (CKA)", shift),
        ("cost", "Cost by phase", lambda: plot_cost_phases(a, plots) + "<h3>Per phase (mean over seeds)</h3>" + cost_table(a)),
        ("runs", "Runs", lambda: f"<p>{len(a.records)} results files.</p>" + runs_table(a)),
    ]


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("updatelab.report", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_html(a: Analysis, command: str, plot_format: str = "svg") -> str:
    plots = Plots(plot_format)
    assign_colours(a.groups)
    built = [(k, t, _section(t, k, build)) for k, t, build in _sections(a, plots)]
    built = [(k, t, Markup(html)) for k, t, html in built if html is not None]
    return _ENV.get_template("dashboard.html.j2").render(
        a=a, command=command, sections=built, plots_count=plots.count,
        notes=list(dict.fromkeys(a.notes)),
        strategies=", ".join(dict.fromkeys(g.strategy for g in a.groups)),
        seeds=", ".join(sorted({str(r.get("seed")) for r in a.records})),
        now=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        embedder_arms=[s for s in stats.EMBEDDER_ARMS if any(g.strategy == s for g in a.groups)],
        stored=stats.STORED,
    )
