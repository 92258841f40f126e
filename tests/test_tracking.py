"""W&B: one offline run per cell with real run files, always finished, also on failure."""

import pytest

from updatelab.tracking import wandb_run as wb

CFG = {"enabled": True, "mode": "offline", "project": "updatelab-test", "entity": None, "tags": []}
CONFIG = {"name": "exp", "strategy": {"name": "reembed"}, "seed": 0}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # conftest disables W&B; these tests write real offline files


def test_offline_run_writes_run_files_with_group_and_job_type(tmp_path, offline):
    with wb.wandb_run(CFG, CONFIG, "reembed_s0_x", tmp_path) as run:
        assert run.group == "exp" and run.job_type == "reembed"
        wb.log_summary(run, {"metrics": {"updated": {"contains": 0.5}}})
        wb.log_predictions(run, [{"qid": "q1", "split": "updated", "prediction": "Oslo", "correct": True}])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_a_failing_cell_still_finishes_its_run(tmp_path, offline):
    with pytest.raises(RuntimeError):
        with wb.wandb_run(CFG, CONFIG, "reembed_s0_y", tmp_path) as run:
            raise RuntimeError("boom")
    assert run._is_finished


def test_nested_metrics_become_slash_keys():
    assert wb._flatten({"metrics": {"updated": {"em": 1.0}}, "x": [1]}) == {"metrics/updated/em": 1.0}
