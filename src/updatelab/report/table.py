"""The comparison table `make run` prints: one row per strategy, averaged over seeds."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from updatelab.tracking.results import load_results

SPLITS = ("updated", "stored", "paraphrased", "unchanged", "general")  # stored: the cloze probe of the updated facts
STRATEGY_ORDER = ("closed_book", "stale", "reembed", "lora", "lora_rag")


def _get(d: dict[str, Any], path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _mean(values: Sequence[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy — and per value of whatever else the grid varies (rank, lr, KB
    change...) — with means over seeds of the headline numbers."""
    from updatelab.report.dashboard import flatten_config, varied_config_keys

    varied, _ = varied_config_keys(records)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        flat = flatten_config(r.get("config"))
        groups[(r["strategy"], *(flat.get(k, "–") for k in varied))].append(r)

    def rank(key: tuple) -> tuple:
        s = key[0]
        return (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else 99, s, *key[1:])

    rows = []
    for key in sorted(groups, key=rank):
        rs = groups[key]
        s = key[0]
        k = _get(rs[0], "config.eval.top_k", 3)
        row: dict[str, Any] = {"strategy": s}
        row.update({name.rsplit(".", 1)[-1]: value for name, value in zip(varied, key[1:])})
        row["seeds"] = len(rs)
        for split in SPLITS:
            row[split] = _mean([_get(r, f"metrics.{split}.contains") for r in rs])
        row[f"recall@{k}"] = _mean([_get(r, f"metrics.retrieval.recall@{k}") for r in rs])
        row["cka_mean"] = _mean([_get(r, "shift.lm.cka_mean") for r in rs])
        row["cka_min"] = _mean([_get(r, "shift.lm.cka_min") for r in rs])
        row["update_s"] = _mean([_get(r, "cost.update_total.wall_s") for r in rs])
        row["serve_s_per_1k"] = _mean([_get(r, "cost.serving_per_1k.wall_s") for r in rs])
        row["wall_s"] = _mean([_get(r, "cost.total.wall_s") for r in rs])
        rows.append(row)
    return rows


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.1f}"
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)


HEADERS = {"strategy": "arm", "seeds": "seeds", "updated": "updated %", "stored": "stored %", "paraphrased": "paraphr. %", "unchanged": "unchanged %",
           "general": "general %", "cka_mean": "LM CKA mean", "cka_min": "LM CKA min", "update_s": "update s",
           "serve_s_per_1k": "serve s/1k q", "wall_s": "arm wall s"}


def render(rows: Sequence[dict[str, Any]], title: str) -> Table:
    table = Table(
        title=title,
        caption="% = answers containing the gold answer (mean over seeds); stored = the LM alone completes the updated fact's "
        "KB sentence (in the weights, extractable or not); recall = gold document in the top k; "
        "LM CKA 1.000 = the LM's latent space did not move; update s = one-off update cost; serve s/1k q = serving 1,000 queries",
    )
    cols = [c for c in rows[0].keys()] if rows else []
    for c in cols:
        table.add_column(HEADERS.get(c, c), justify="left" if c == "strategy" else "right")
    for row in rows:
        table.add_row(*[_fmt(row[c], pct=c in SPLITS or c.startswith("recall@")) for c in cols])
    return table


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiment", default="default")
    ap.add_argument("--results-dir", default="results")
    args = ap.parse_args(argv)
    records = load_results(args.results_dir, args.experiment)
    console = Console(width=max(Console().width, 150))
    if not records:
        console.print(f"no results in {Path(args.results_dir) / args.experiment}")
        return
    console.print(render(summarise(records), f"updatelab — experiment '{args.experiment}'"))


if __name__ == "__main__":
    main()
