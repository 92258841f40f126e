"""The terminal comparison table: one row per arm and grid point, means over seeds."""

import importlib.util
from pathlib import Path

import pytest

from updatelab.report.table import summarise

_spec = importlib.util.spec_from_file_location("make_results", Path(__file__).parent / "fixtures" / "make_results.py")
make_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_results)


def test_one_row_per_arm_in_arm_order():
    rows = summarise(make_results.make_records(seeds=(0, 1)))
    assert [r["strategy"] for r in rows] == ["stale", "reembed", "lora", "lora_rag"]
    assert all(r["seeds"] == 2 for r in rows)


def test_accuracy_is_the_mean_over_seeds():
    recs = make_results.make_records(strategies=("reembed",), seeds=(0, 1, 2))
    expected = sum(r["metrics"]["updated"]["contains"] for r in recs) / 3
    assert summarise(recs)[0]["updated"] == pytest.approx(expected)


def test_grid_points_get_their_own_rows():
    recs = make_results.make_records(strategies=("lora",), seeds=(0,), grid={"adapter.r": [4, 16]})
    rows = summarise(recs)
    assert [r["r"] for r in rows] == ["4", "16"] or sorted(r["r"] for r in rows) == ["16", "4"]
    assert len(rows) == 2


def _printed(records) -> str:
    from rich.console import Console

    from updatelab.report.table import report

    console = Console(record=True, width=200)
    report(console, records, "fixture", n_boot=200)
    return console.export_text()


def _without(records, split):
    out = []
    for r in records:
        r = dict(r, predictions=[p for p in r["predictions"] if p["split"] != split])
        r["metrics"] = {k: v for k, v in r["metrics"].items() if k != split}
        out.append(r)
    return out


def test_a_split_no_record_has_is_not_in_the_table():
    recs = _without(make_results.make_records(seeds=(0,)), "general")  # e.g. a user's own data without general questions
    assert all("general" not in r for r in summarise(recs))
    text = _printed(recs)
    assert "general" not in text
    assert "stored" not in text  # the fixture has no stored probe: no column, no caption entry
    assert "updated %" in text and "unchanged" in text


def test_the_table_states_n_and_the_paired_differences_vs_stale():
    from updatelab.report import stats
    from updatelab.report.table import differences, fmt_difference

    recs = make_results.make_records(seeds=(0, 1), n_per_split=12)
    text = _printed(recs)
    assert "n per split: updated 12, paraphrased 12, unchanged 12, general 12 (questions per seed; 2 seeds)" in text
    assert "paired differences vs stale" in text
    rows = dict(differences(recs, n_boot=200))
    assert list(rows) == ["reembed", "lora", "lora_rag"]
    e = rows["reembed"]["updated"]
    by = {s: [r for r in recs if r["strategy"] == s] for s in ("reembed", "stale")}
    assert e.test == stats.mcnemar(by["reembed"], by["stale"], "updated") and e.n == 24 == e.test.n
    assert f"n 24 · p {stats.fmt_p(e.test.p)}" in fmt_difference(e) and fmt_difference(e).split("\n")[0] in text
    # No closed_book records: no forgetting table.
    assert "vs closed_book" not in text


def test_closed_book_is_the_forgetting_reference_on_unchanged_and_general():
    from updatelab.report.table import differences

    recs = make_results.make_records(strategies=("closed_book", "stale", "lora"), seeds=(0,))
    assert [label for label, _ in differences(recs)] == ["lora"]  # closed_book is a reference, not a contender
    vs_cb = differences(recs, "closed_book", n_boot=200)
    assert [label for label, _ in vs_cb] == ["stale", "lora"]
    assert all(list(d) == ["unchanged", "general"] for _, d in vs_cb)
    assert "vs closed_book" in _printed(recs)


def test_without_the_forgetting_splits_there_is_no_forgetting_table():
    from updatelab.report.table import differences

    recs = make_results.make_records(strategies=("closed_book", "stale", "lora"), seeds=(0,))
    recs = _without(_without(recs, "general"), "unchanged")  # own data asking only about the changed facts
    assert differences(recs, "closed_book", n_boot=100) == []
    text = _printed(recs)
    assert "vs closed_book" not in text and "unchanged" not in text and "general" not in text
    assert "Δ updated" in text and "Δ paraphrased" in text


def test_the_recall_difference_is_the_mean_paired_difference_of_per_question_hits():
    from updatelab.report import stats

    recs = make_results.make_records(strategies=("stale", "reembed"), seeds=(0, 1))
    k = recs[0]["config"]["eval"]["top_k"]
    arm, base = [r for r in recs if r["strategy"] == "reembed"], [r for r in recs if r["strategy"] == "stale"]
    hits = {}
    for r in recs:
        for p in r["predictions"]:
            if p.get("gold_doc"):
                hits[(r["strategy"], r["seed"], p["qid"])] = float(p["gold_doc"] in p["retrieved"][:k])
    diffs = [hits[("reembed", s, q)] - hits[("stale", s, q)] for (a, s, q) in hits if a == "reembed"]
    est = stats.paired_difference(arm, base, stats.RETRIEVAL, f"recall@{k}", n_boot=200)
    assert est.n == len(diffs) and est.mean == pytest.approx(sum(diffs) / len(diffs))
    assert est.lo <= est.mean <= est.hi and est.test is not None
    # one record's hits average to the recall@k it stored
    one = stats.question_scores(arm[0], stats.RETRIEVAL, f"recall@{k}")
    assert sum(one.values()) / len(one) == pytest.approx(arm[0]["metrics"]["retrieval"][f"recall@{k}"])


def test_the_differences_vs_stale_show_recall_with_its_ci_and_those_vs_closed_book_do_not():
    recs = make_results.make_records(strategies=("closed_book", "stale", "reembed"), seeds=(0,))
    text = _printed(recs)
    vs_stale, vs_closed = text.split("paired differences vs stale")[1].split("paired differences vs closed_book")
    k = recs[0]["config"]["eval"]["top_k"]
    assert f"Δ recall@{k}" in vs_stale and f"Δ recall@{k}" not in vs_closed
