"""The comparison table `make run` prints: one row per strategy, averaged over seeds; the questions
behind each split; and each arm's paired difference from the baseline with its hierarchical CI and
exact McNemar test (`updatelab.report.stats`)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from updatelab.report import stats
from updatelab.report.aggregate import retrieval_depth
from updatelab.report.records import column_mean, dig, flatten_config, frame, own_varied, varied_config_keys
from updatelab.tracking.results import default_results_dir, load_results

BASELINE = "stale"  # what a retrieval or fine-tuning arm must beat: the system before the update


def group_records(records: Sequence[dict[str, Any]]) -> tuple[list[str], dict[tuple, list[dict[str, Any]]]]:
    """(config keys the grid varies, (strategy, *their values) -> records), in arm order."""
    varied, _ = varied_config_keys(records)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        flat = flatten_config(r.get("config"))
        groups[(r["strategy"], *(flat.get(k, "–") for k in varied))].append(r)
    ordered = sorted(groups, key=lambda key: (*stats.arm_rank(key[0]), *key[1:]))
    return varied, {key: groups[key] for key in ordered}


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy — and per value of whatever else the grid varies (rank, lr, KB
    change...) — with means over seeds of the headline numbers. Only the splits some record
    measured get a column."""
    varied, groups = group_records(records)
    splits = stats.present_splits(records)
    rows = []
    for key, rs in groups.items():
        s = key[0]
        k = dig(rs[0], "config.eval.top_k", 3)
        df = frame(rs)
        row: dict[str, Any] = {"strategy": s}
        row.update({name.rsplit(".", 1)[-1]: value for name, value in zip(varied, key[1:])})
        row["seeds"] = len(rs)
        for split in splits:
            row[split] = column_mean(df, f"metrics.{split}.contains")
        row[f"recall@{k}"] = column_mean(df, f"metrics.retrieval.recall@{k}")
        row["cka_mean"] = column_mean(df, "shift.lm.cka_mean")
        row["cka_min"] = column_mean(df, "shift.lm.cka_min")
        row["update_s"] = column_mean(df, "cost.update_total.wall_s")
        row["serve_s_per_1k"] = column_mean(df, "cost.serving_per_1k.wall_s")
        row["wall_s"] = column_mean(df, "cost.total.wall_s")
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


def _caption(cols: Sequence[str]) -> str:
    stored = ("stored = the LM alone completes the updated fact's KB sentence (in the weights, extractable or not); "
              if stats.STORED in cols else "")  # no legend for a column that is not there
    return ("% = answers containing the gold answer (mean over seeds); " + stored + "recall = gold document in the top k; "
            "LM CKA 1.000 = the LM's latent space did not move; update s = one-off update cost; serve s/1k q = serving 1,000 queries")


def render(rows: Sequence[dict[str, Any]], title: str) -> Table:
    cols = [c for c in rows[0].keys()] if rows else []
    table = Table(title=title, caption=_caption(cols))
    for c in cols:
        table.add_column(HEADERS.get(c, f"{c} %" if c in stats.REPORT_SPLITS else c), justify="left" if c == "strategy" else "right")
    for row in rows:
        table.add_row(*[_fmt(row[c], pct=c in stats.REPORT_SPLITS or c.startswith("recall@")) for c in cols])
    return table


def sizes_line(records: Sequence[dict[str, Any]]) -> str:
    """'n per split: updated 15, ... (questions per seed; 3 seeds)': the n behind every accuracy."""
    splits = stats.present_splits(records)
    sizes = {s: stats.questions_per_world(records, s) for s in splits}
    parts = [f"{s} {stats.fmt_sizes(sizes[s])}" for s in splits if sizes[s]]
    if not parts:
        return ""
    seeds = len({r.get("seed") for r in records})
    return "n per split: " + ", ".join(parts) + f" (questions per seed; {seeds} seed{'s' if seeds != 1 else ''})"


def _baseline_records(rs: Sequence[dict[str, Any]], baseline: str, records: Sequence[dict[str, Any]],
                      varied: Sequence[str]) -> list[dict[str, Any]]:
    """The baseline's records matched to a row: equal on every key the baseline's own cells vary
    (a stale arm run once pairs with every grid point of a fine-tuning arm)."""
    cands = [r for r in records if r.get("strategy") == baseline]
    flats = [flatten_config(r.get("config")) for r in cands]
    own = own_varied(flats, varied)
    mine = flatten_config(rs[0].get("config"))
    return [r for r, f in zip(cands, flats) if all(f.get(k) == mine.get(k) for k in own)]


def differences(records: Sequence[dict[str, Any]], baseline: str = BASELINE, n_boot: int = stats.DEFAULT_BOOT,
                seed: int = 0) -> list[tuple[str, dict[str, stats.Estimate | None]]]:
    """(row label, split -> paired difference arm - baseline) for every arm but the baseline and
    the forgetting reference, on the splits the baseline is a reference for."""
    varied, groups = group_records(records)
    splits = stats.reference_splits(baseline, stats.present_splits(records))
    k = retrieval_depth(records, [])
    out = []
    for key, rs in groups.items():
        if key[0] in (baseline, stats.FORGETTING_REFERENCE):
            continue
        base = _baseline_records(rs, baseline, records, varied)
        if not base:
            continue
        label = key[0] + "".join(f" · {k.rsplit('.', 1)[-1]}={v}" for k, v in zip(varied, key[1:]))
        est = stats.compare(rs, base, splits, n_boot=n_boot, seed=seed)
        est.update(stats.recall_difference(rs, base, baseline, k, n_boot=n_boot, seed=seed))
        if any(est.values()):
            out.append((label, est))
    return out


def fmt_difference(e: stats.Estimate | None) -> str:
    """'+56.7 [40.0, 71.1]' over 'n 45 · p 0.00012': the difference in points, its CI, pairs and McNemar p."""
    if e is None or e.mean is None:
        return "–"
    ci = f" [{100 * e.lo:+.1f}, {100 * e.hi:+.1f}]" if e.has_ci else ""
    p = f" · p {stats.fmt_p(e.test.p)}" if e.test else ""
    return f"{100 * e.mean:+.1f}{ci}\nn {e.n}{p}"


def render_differences(rows: Sequence[tuple[str, Mapping[str, stats.Estimate | None]]], baseline: str) -> Table | None:
    if not rows:
        return None
    splits = [s for s in rows[0][1]]
    table = Table(
        title=f"paired differences vs {baseline} (percentage points)",
        caption="arm − baseline on the same (seed, question) pairs; [95% CI]: bootstrap resampling seeds, then questions "
        "within each seed; n = matched pairs; p = exact McNemar test on those pairs",
    )
    table.add_column("arm", justify="left")
    for s in splits:
        table.add_column(f"Δ {s}", justify="right")
    for label, est in rows:
        table.add_row(label, *[fmt_difference(est.get(s)) for s in splits])
    return table


def report(console: Console, records: Sequence[dict[str, Any]], experiment: str, n_boot: int = stats.DEFAULT_BOOT) -> None:
    """Print the comparison table, the questions behind it, and the paired differences vs
    `stale` and vs `closed_book` (forgetting splits) where those arms were run."""
    console.print(render(summarise(records), f"updatelab — experiment '{experiment}'"))
    line = sizes_line(records)
    if line:
        console.print(line)
    for baseline in (BASELINE, stats.FORGETTING_REFERENCE):
        table = render_differences(differences(records, baseline, n_boot=n_boot), baseline)
        if table is not None:
            console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiment", default="default")
    ap.add_argument("--results-dir", default=str(default_results_dir()),
                    help="default: $UPDATELAB_ROOT/results, else ./results (where the runs write)")
    ap.add_argument("--n-boot", type=int, default=stats.DEFAULT_BOOT, help="bootstrap resamples")
    args = ap.parse_args(argv)
    records = load_results(args.results_dir, args.experiment)
    console = Console(width=max(Console().width, 150))
    if not records:
        console.print(f"no results in {Path(args.results_dir) / args.experiment}")
        return
    report(console, records, args.experiment, n_boot=args.n_boot)


if __name__ == "__main__":
    main()
