"""Where `make run` spends its time: wall time by phase and arm, from the default experiment's results.

Reads ``results/<experiment>/*.json`` (default experiment: ``default``, what `make run` writes)
and tabulates per cell (arm x seed):

  setup     building the base system every arm starts from (``setup.embed`` + ``setup.index``:
            KB v0 embeddings, mostly from the shared cache)
  embed, index, train          the update (``cost.<phase>.wall_s``)
  retrieve, generate           serving the evaluation questions
  shift     measuring the latent-space shift (``shift.wall_s``)
  other     the rest of the cell (``setup.cell_wall_s`` minus all of the above): loading the
            knowledge update and the models, W&B, writing results
  cell      ``setup.cell_wall_s``

and names the slowest phase (per arm, and over all cells). A `train` time of a cell that
reused an identical, earlier training's adapter is the cost *booked* from that training, not
time spent in the cell; such cells are marked, and their booked train time is left out of
`other`'s arithmetic.

Nothing is timed here (no repetitions, no sides): the figures are the runs' own.

    python experiments/bench/make_run_phases.py                     # results/default
    python experiments/bench/make_run_phases.py --experiment dev_t1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import benchlib as bl

NAME = "make_run_phases"
PHASES = ["setup", "embed", "index", "train", "retrieve", "generate", "shift", "other"]
ARM_ORDER = ["stale", "reembed", "lora", "lora_rag"]


def cell_phases(rec: dict) -> dict:
    cost, setup = rec.get("cost") or {}, rec.get("setup") or {}

    def wall(d: dict, key: str) -> float:
        v = d.get(key)
        return float(v.get("wall_s", 0.0)) if isinstance(v, dict) else 0.0

    train = cost.get("train") or {}
    reused = bool(train.get("reused_adapter"))
    row = {
        "setup": wall(setup, "embed") + wall(setup, "index"),
        "embed": wall(cost, "embed"),
        "index": wall(cost, "index"),
        "train": wall(cost, "train"),
        "retrieve": wall(cost, "retrieve"),
        "generate": wall(cost, "generate"),
        "shift": float((rec.get("shift") or {}).get("wall_s") or 0.0),
    }
    cell = setup.get("cell_wall_s")
    spent = sum(v for k, v in row.items() if not (k == "train" and reused))
    row["other"] = max(0.0, float(cell) - spent) if cell is not None else 0.0
    return {"arm": rec.get("strategy", "?"), "seed": rec.get("seed"), "run_id": rec.get("run_id"),
            "phases": row, "cell_wall_s": float(cell) if cell is not None else None, "train_reused_adapter": reused,
            "finished_at": rec.get("finished_at")}


def collect(results_dir: Path) -> list[dict]:
    cells = []
    for f in sorted(results_dir.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"skipping {f}: {e}", file=sys.stderr)
            continue
        if "cost" not in rec or "setup" not in rec:
            continue
        c = cell_phases(rec)
        c["file"] = str(f.relative_to(bl.ROOT)) if f.is_relative_to(bl.ROOT) else str(f)
        cells.append(c)
    order = {a: i for i, a in enumerate(ARM_ORDER)}
    cells.sort(key=lambda c: (order.get(c["arm"], 99), c["arm"], c["seed"] or 0))
    return cells


def run(args: argparse.Namespace) -> dict:
    results_dir = (args.results_dir or bl.ROOT / "results") / args.experiment
    cells = collect(results_dir) if results_dir.is_dir() else []
    report = {"name": NAME, "quick": bool(args.quick), "command": bl.command_line(),
              "machine": bl.machine_info(args.threads), "experiment": args.experiment,
              "results_dir": str(results_dir), "cells": cells}
    if not cells:
        report["message"] = (f"no results in {results_dir} (run `make run` first: it writes results/default/"
                             "<arm>_s<seed>_<hash>.json, one file per finished cell)")
        return report
    # Slowest phase per cell and overall (time actually spent: a reused adapter's train is booked, not spent).
    for c in cells:
        spent = {k: v for k, v in c["phases"].items() if not (k == "train" and c["train_reused_adapter"])}
        c["slowest_phase"] = max(spent, key=spent.get)
    totals = {k: sum(c["phases"][k] for c in cells if not (k == "train" and c["train_reused_adapter"])) for k in PHASES}
    all_cells = sum(c["cell_wall_s"] or 0.0 for c in cells)
    slowest = max(totals, key=totals.get)
    report["totals_s"] = totals
    report["cells_wall_s"] = all_cells
    report["slowest_phase"] = {"phase": slowest, "seconds": totals[slowest],
                               "share_of_all_cells": totals[slowest] / all_cells if all_cells else None}
    by_arm = {}
    for c in cells:
        by_arm.setdefault(c["arm"], []).append(c)
    report["by_arm_median_s"] = {
        arm: {k: statistics.median(c["phases"][k] for c in cs) for k in PHASES} | {
            "cell": statistics.median(c["cell_wall_s"] or 0.0 for c in cs), "n": len(cs)}
        for arm, cs in by_arm.items()
    }
    return report


def markdown(report: dict) -> str:
    lines = [f"## Where `make run` spends its time (results/{report['experiment']})", ""]
    if not report["cells"]:
        lines.append(f"**No results**: {report['message']}.")
        return "\n".join(lines)
    lines.append("Wall seconds by phase, one row per finished cell, from the results files (`cost.<phase>.wall_s`, "
                 "`setup.cell_wall_s`, `shift.wall_s`); `setup` = base system (KB v0 embed + index), `other` = the rest "
                 "of the cell (loading data and models, W&B, writing results). Not re-timed here.")
    lines.append("")
    rows = []
    for c in report["cells"]:
        ph = c["phases"]
        vals = []
        for k in PHASES:
            v = f"{ph[k]:.1f}" if ph[k] >= 0.05 else ("0" if ph[k] == 0 else f"{ph[k]:.3f}")
            if k == "train" and c["train_reused_adapter"]:
                v += " (booked: adapter reused)"
            if k == c["slowest_phase"]:
                v = f"**{v}**"
            vals.append(v)
        rows.append([f"{c['arm']} (seed {c['seed']})", *vals, f"{c['cell_wall_s']:.1f}" if c["cell_wall_s"] else "-"])
    t = report["totals_s"]
    rows.append(["**all cells**", *[f"{t[k]:.1f}" for k in PHASES], f"{report['cells_wall_s']:.1f}"])
    lines.append(bl.md_table(["arm", *PHASES, "cell"], rows))
    lines.append("")
    s = report["slowest_phase"]
    share = f" ({100 * s['share_of_all_cells']:.0f}% of all cells' wall time)" if s["share_of_all_cells"] else ""
    lines.append(f"Slowest phase over all cells: **{s['phase']}**, {s['seconds']:.1f} s{share}. Per cell: "
                 + "; ".join(f"{c['arm']}: {c['slowest_phase']}" for c in report["cells"]) + ".")
    lines.append("")
    lines.append(f"Command: `{report['command']}`.")
    return "\n".join(lines)


def headline(report: dict) -> list[list[str]]:
    if not report["cells"]:
        return [["make run: slowest phase", "no results", "-", "-"]]
    s = report["slowest_phase"]
    share = f" ({100 * s['share_of_all_cells']:.0f}% of cell time)" if s["share_of_all_cells"] else ""
    return [[f"make run (results/{report['experiment']}): slowest phase", f"{s['phase']}: {s['seconds']:.1f} s{share}",
             "-", "-"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bl.common_args(p, default_repeats=1)
    p.add_argument("--experiment", default="default", help="results/<experiment>/ (default: default, what make run writes)")
    p.add_argument("--results-dir", type=Path, default=None, help="default: <repo>/results")
    args = p.parse_args()
    report = run(args)
    path = bl.write_json(NAME, report, args.quick)
    md = markdown(report)
    bl.update_results_md(NAME, md, args.quick)
    print(md)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
