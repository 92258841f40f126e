"""Does the latent shift predict the forgetting? Reads results/shift_vs_forgetting/ (the grid of
configs/experiment/shift_vs_forgetting.yaml and its closed_book reference) and prints, per grid
point, what the lora arm lost on `general` and `unchanged` against closed_book (paired by question,
95% bootstrap CI) next to its shift measures, then the Spearman rank correlation of each measure
with each loss over the points, with its exact permutation p-value (every ordering of the points).

    python experiments/shift_vs_forgetting/analyze.py [--results-dir results] > experiments/shift_vs_forgetting/table.txt
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from updatelab.report.records import dig, records_for_script
from updatelab.report.stats import paired_difference

EXPERIMENT = "shift_vs_forgetting"
LOSSES = ("general", "unchanged")
# (column, path in the record, how it reads): larger = more moved, for every measure
MEASURES = (
    ("1 - CKA mean", "shift.lm.cka_mean", lambda v: 1.0 - v),
    ("1 - CKA min", "shift.lm.cka_min", lambda v: 1.0 - v),
    ("KL nats/token", "shift.lm.kl_mean", lambda v: v),
    ("intruders", "shift.lm.intruders_total", lambda v: v),
    ("‖ΔW‖_F", "shift.lm.delta_fro_total", lambda v: v),
)


def exact_spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided exact p-value: the share of all orderings of y whose |rho|
    is at least the observed one (n! orderings; the grid has a handful of points)."""
    rho = float(spearmanr(x, y).statistic)
    if math.isnan(rho):
        return rho, float("nan")
    rhos = [spearmanr(x, perm).statistic for perm in itertools.permutations(y)]
    return rho, float(np.mean([abs(r) >= abs(rho) - 1e-12 for r in rhos]))


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = [r for r in records if r["strategy"] == "closed_book"]
    if not base:
        raise SystemExit(f"error: no closed_book record in results/{EXPERIMENT}: run "
                         f"`python -m updatelab.run name={EXPERIMENT} strategy=closed_book` first")
    out = []
    # a grid point is its (r, lr, replay): `point` itself is not part of a cell's recorded config
    key = ("config.adapter.r", "config.adapter.lr", "config.strategy.replay_ratio")
    for r in sorted((r for r in records if r["strategy"] == "lora"), key=lambda r: tuple(dig(r, k) for k in key)):
        row: dict[str, Any] = {"r": dig(r, "config.adapter.r"), "lr": dig(r, "config.adapter.lr"),
                               "replay": dig(r, "config.strategy.replay_ratio"),
                               "updated": 100 * dig(r, "metrics.updated.contains", float("nan")),
                               "steps": f"{dig(r, 'cost.train.steps')} / {dig(r, 'training.selected_step', '–')}"}
        for split in LOSSES:
            d = paired_difference([r], base, split)
            row[split] = None if d is None else (-100 * d.mean, -100 * d.hi, -100 * d.lo)  # loss = base - arm
        for name, path, read in MEASURES:
            v = dig(r, path)
            row[name] = None if v is None else float(read(v))
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    table = rows(records_for_script(EXPERIMENT, __doc__.splitlines()[0], argv))
    head = ["r", "lr", "replay", "steps trained / kept (dev)", "updated %", "general loss pp [95% CI]",
            "unchanged loss pp [95% CI]", *[m[0] for m in MEASURES]]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for row in table:
        cells = [row["r"], f"{row['lr']:g}", row["replay"], row["steps"], f"{row['updated']:.1f}"]
        cells += [f"{v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}]" if v else "—" for v in (row[s] for s in LOSSES)]
        cells += ["—" if row[m[0]] is None else f"{row[m[0]]:.4g}" for m in MEASURES]
        print("| " + " | ".join(map(str, cells)) + " |")
    print()
    print(f"Spearman rho over the {len(table)} points (exact permutation p, two-sided):")
    print("| measure | " + " | ".join(f"{s} loss" for s in LOSSES) + " |")
    print("| --- |" + " --- |" * len(LOSSES))
    for name, _, _ in MEASURES:
        cells = []
        for split in LOSSES:
            pts = [(row[name], row[split][0]) for row in table if row[name] is not None and row[split]]
            if len(pts) < 3:
                cells.append("—")
                continue
            if len({round(v, 9) for _, v in pts}) < 3:  # a rank correlation over ties says nothing
                cells.append(f"— (the loss takes {len({round(v, 9) for _, v in pts})} values)")
                continue
            rho, p = exact_spearman(*map(list, zip(*pts)))
            cells.append(f"{rho:+.2f} (p {p:.2f}, n {len(pts)})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
