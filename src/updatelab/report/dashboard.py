"""The HTML dashboard of one experiment: a single self-contained file, no network needed to view it.

    python -m updatelab.report.dashboard --experiment NAME [--results-dir DIR] [--out PATH]
                                         [--wandb ENTITY/PROJECT] [--cost-unit seconds|usd] [--plot-format svg|png]

Reads `results/<experiment>/*.json` (one record per matched cell) and writes
`results/<experiment>/dashboard.html` (or `--out`): a summary table with hierarchical bootstrap
CIs (seeds, then questions), paired differences between arms with exact McNemar tests, and plots
(accuracy per split, accuracy vs cost with the Pareto front, CKA by layer, cross-layer CKA
heatmaps, cost by phase; KL and intruder dimensions by layer and recall by arm where records have
them), all inlined (SVG or PNG). Only the splits some record measured are shown.

The page is composed of: `records` (files or W&B -> records, config grouping), `aggregate` (rows
per arm and grid point, their estimates), `plots` and `shift_plots` (figures), `tables` (HTML
tables), `page` with `templates/dashboard.html.j2` (the page); this module is the command line.

Older or partial records may lack any key: what cannot be drawn is skipped with a note saying
why, never an exception. `--wandb` reads the runs of W&B group = experiment through the public
API, only when there are no local results files.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from updatelab.io import atomic_write_text
from updatelab.report import stats
from updatelab.report.aggregate import analyse
from updatelab.report.page import render_html
from updatelab.report.records import load_records, load_wandb_records
from updatelab.tracking.results import default_results_dir


def build_dashboard(records: list[dict[str, Any]], experiment: str, out: str | Path, command: str,
                    notes: Sequence[str] = (), plot_format: str = "svg", cost_unit: str = "seconds",
                    n_boot: int = stats.DEFAULT_BOOT) -> Path:
    a = analyse(records, experiment, list(notes), n_boot=n_boot, cost_unit=cost_unit)
    return atomic_write_text(out, render_html(a, command, plot_format))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m updatelab.report.dashboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", required=True, help="experiment name: reads <results-dir>/<experiment>/*.json")
    ap.add_argument("--results-dir", default=str(default_results_dir()),
                    help="default: $UPDATELAB_ROOT/results, else ./results (where the runs write)")
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
