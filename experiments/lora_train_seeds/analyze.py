"""How far does one world's `lora` figure move with the training's own chance? Reads
results/lora_train_seeds/ (configs/experiment/lora_train_seeds.yaml: world 0, training seeds
0..4, `lora` and its closed_book reference) and prints, per training seed, `lora`'s accuracies,
its `general` against closed_book (paired by question, 95% bootstrap CI over the questions of
that one training) and the dev selection; then the spread over the trainings and how many meet
each acceptance criterion of the fair-contest issue on their own.

    python experiments/lora_train_seeds/analyze.py [--results-dir results] > experiments/lora_train_seeds/table.txt
"""

from __future__ import annotations

import statistics
from typing import Any

from updatelab.report.records import dig, records_for_script
from updatelab.report.stats import paired_difference

EXPERIMENT = "lora_train_seeds"
SPLITS = ("updated", "paraphrased", "unchanged", "general")
# The closed-book targets of `lora` (issue 12): split -> (what is compared, bound in points)
CRITERIA = {"updated ≥ 60": ("updated", 60.0), "paraphrased ≥ 40": ("paraphrased", 40.0),
            "general within 10 of closed_book": ("general_delta", -10.0)}


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = [r for r in records if r["strategy"] == "closed_book"]
    worlds = {r.get("data_fingerprint") for r in records}
    if len(worlds) != 1:
        raise SystemExit(f"error: results/{EXPERIMENT} holds {len(worlds)} worlds; the trainings must share one")
    out = []
    for r in sorted((r for r in records if r["strategy"] == "lora"), key=lambda r: r["seed"]):
        d = paired_difference([r], base, "general")
        if d is None:
            raise SystemExit(f"error: no closed_book record for training seed {r['seed']} in results/{EXPERIMENT}")
        row: dict[str, Any] = {s: 100 * dig(r, f"metrics.{s}.contains", float("nan")) for s in SPLITS}
        row.update(seed=r["seed"], general_delta=100 * d.mean, general_ci=(100 * d.lo, 100 * d.hi), n=d.n,
                   base_general=100 * next(dig(b, "metrics.general.contains") for b in base if b["seed"] == r["seed"]),
                   kept=dig(r, "training.selected_step"), steps=dig(r, "cost.train.steps"),
                   dev=[round(s, 2) for _, s in dig(r, "training.dev.history", [])],
                   tok_s=dig(r, "cost.train.tokens_per_s"))
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    table = rows(records_for_script(EXPERIMENT, __doc__.splitlines()[0], argv))
    head = ["training seed", *[f"{s} %" for s in SPLITS], "closed_book general %",
            "general − closed_book pp [95% CI over questions]", "kept step / steps", "dev score by evaluation"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for row in table:
        lo, hi = row["general_ci"]
        print("| " + " | ".join(map(str, [
            row["seed"], *[f"{row[s]:.1f}" for s in SPLITS], f"{row['base_general']:.1f}",
            f"{row['general_delta']:+.1f} [{lo:+.1f}, {hi:+.1f}] (n {row['n']})", f"{row['kept']} / {row['steps']}",
            " → ".join(f"{v:g}" for v in row["dev"])])) + " |")
    print()
    print(f"Over the {len(table)} trainings (one world; the spread is the training's own chance):")
    for name in (*SPLITS, "general_delta"):
        values = [row[name] for row in table]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"- {name}: mean {statistics.fmean(values):.1f}, sd {sd:.1f}, min {min(values):.1f}, max {max(values):.1f}")
    for label, (name, bound) in CRITERIA.items():
        met = sum(row[name] >= bound - 1e-9 for row in table)
        print(f"- {label}: met by {met} of {len(table)} trainings")


if __name__ == "__main__":
    main()
