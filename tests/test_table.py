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
