"""Copy an experiment's small artefacts into experiments/<name>/: table, summary, dashboard."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Sequence

from rich.console import Console

from updatelab.report.records import dig
from updatelab.report.table import report, summarise
from updatelab.tracking.results import load_results


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--out-dir", default="experiments")
    args = ap.parse_args(argv)
    records = load_results(args.results_dir, args.experiment)
    if not records:
        raise SystemExit(f"no results in {Path(args.results_dir) / args.experiment}")
    out = Path(args.out_dir) / args.experiment
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(records)
    console = Console(record=True, width=170)
    report(console, records, args.experiment)  # the table make run prints: accuracies, n, paired differences
    (out / "table.txt").write_text(console.export_text())
    cells = [{"run_id": r["run_id"], "strategy": r["strategy"], "seed": r["seed"],
              "metrics": {k: v for k, v in r["metrics"].items()},
              "cost_total_s": dig(r, "cost.total.wall_s"),
              "update_s": dig(r, "cost.update_total.wall_s"),
              "training": r.get("training"),
              "cka_per_layer": dig(r, "shift.lm.cka_per_layer")} for r in records]
    (out / "summary.json").write_text(json.dumps({"experiment": args.experiment, "rows": rows, "cells": cells}, indent=1))
    dash = Path(args.results_dir) / args.experiment / "dashboard.html"
    if dash.exists():
        shutil.copy(dash, out / "dashboard.html")
    print(f"exported {len(records)} cells to {out}")


if __name__ == "__main__":
    main()
