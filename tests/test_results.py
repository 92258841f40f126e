"""The results file: atomic, complete, JSON that any reader can parse."""

import json

import pytest

from updatelab.tracking.results import REQUIRED_KEYS, load_results, results_path, write_results


def _record(**kw):
    rec = {k: {} for k in REQUIRED_KEYS}
    rec.update(experiment="exp", run_id="stale_s0_abc", strategy="stale", seed=0, predictions=[])
    rec.update(kw)
    return rec


def test_results_file_has_the_required_keys(tmp_path):
    path = write_results(results_path(tmp_path, "exp", "stale_s0_abc"), _record())
    data = json.loads(path.read_text())
    assert set(REQUIRED_KEYS) <= set(data)
    assert path == tmp_path / "exp" / "stale_s0_abc.json"


def test_nan_is_written_as_null(tmp_path):
    path = write_results(tmp_path / "r.json", _record(metrics={"x": float("nan")}))
    assert json.loads(path.read_text())["metrics"]["x"] is None


def test_incomplete_record_is_refused_and_nothing_written(tmp_path):
    rec = _record()
    del rec["cost"]
    with pytest.raises(KeyError):
        write_results(tmp_path / "r.json", rec)
    assert list(tmp_path.iterdir()) == []


def test_load_results_reads_every_cell(tmp_path):
    for rid in ("a", "b"):
        write_results(results_path(tmp_path, "exp", rid), _record(run_id=rid))
    assert [r["run_id"] for r in load_results(tmp_path, "exp")] == ["a", "b"]
