"""W&B: one offline run per cell with real run files, always finished, also on failure; its
lineage (the data used, the results and adapter made) and summary metrics read back from the
run file by wandb's own reader."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_CACHE, TINY_CELL
from updatelab.data import synthetic
from updatelab.data.load import load_update
from updatelab.tracking import wandb_run as wb

CFG = {"enabled": True, "mode": "offline", "project": "updatelab-test", "entity": None, "tags": []}
CONFIG = {"name": "exp", "strategy": {"name": "reembed"}, "seed": 0}
TINY_DATA = dict(n_people=12, edit_fraction=0.25, n_new=4, eval_fraction=0.5, n_unchanged_questions=4, n_general=4,
                 renderings=2, sentences_per_doc=2)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")  # conftest disables W&B; these tests write real offline files
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging, not ~/.local/share


def run_records(root: Path) -> list[dict]:
    """The records of the one offline run under `root`, via `wandb leet inspect --json`."""
    (log,) = root.glob("**/wandb/offline-run-*/run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def artifacts(records: list[dict]) -> dict[str, dict]:
    """Artifact type -> its record (name, digest, manifest, use_after_commit)."""
    return {r["artifact"]["type"]: r["artifact"] for r in records if r["type"] == "artifact"}


def manifest_paths(artifact: dict) -> set[str]:
    return {entry["path"] for entry in artifact["manifest"]["contents"]}


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


def test_runs_on_the_same_data_use_one_dataset_artifact_version(tmp_path, offline):
    update = load_update(synthetic.generate(tmp_path / "data", seed=0, **TINY_DATA))
    used = []
    for arm in ("stale", "reembed"):
        with wb.wandb_run(CFG, {**CONFIG, "strategy": {"name": arm}}, f"{arm}_s0", tmp_path / arm) as run:
            wb.use_dataset(run, update)
        used.append(artifacts(run_records(tmp_path / arm))["dataset"])
    a, b = used
    assert a["use_after_commit"]  # an input of the run, once synced
    assert a["name"] == b["name"] and a["digest"] == b["digest"]  # same content: same version
    assert manifest_paths(a) == {"kb_v0.jsonl", "kb_v1.jsonl", "questions.jsonl", "train_docs.jsonl", "train_qa.jsonl",
                                 "inject_qa.jsonl", "dev.jsonl"}
    assert json.loads(a["metadata"])["fingerprint"] == update.fingerprint


def test_the_results_file_and_a_lora_adapter_are_output_artifacts(tmp_path, offline):
    results = tmp_path / "results" / "lora_s0.json"
    adapter = tmp_path / "results" / "lora_s0" / "train" / "adapter"
    adapter.mkdir(parents=True)
    results.write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    record = {"run_id": "lora_s0", "strategy": "lora", "artifacts": {"adapter": {"path": str(adapter), "bytes": 7}},
              "cost": {"train": {"adapter_key": "k123", "reused_adapter": False}}}
    with wb.wandb_run(CFG, CONFIG, "lora_s0", tmp_path) as run:
        wb.log_outputs(run, results, record)
    made = artifacts(run_records(tmp_path))
    assert manifest_paths(made["results"]) == {"lora_s0.json"} and not made["results"].get("use_after_commit")
    assert manifest_paths(made["adapter"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert made["adapter"]["name"] == "adapter-k123" and not made["adapter"].get("use_after_commit")


def test_a_cell_that_reused_a_training_uses_the_adapter_artifact_that_training_made(tmp_path, offline):
    """lora trains; lora_rag with the same recipe reuses the training and keeps its own copy of the
    adapter: the copy is an input of lora_rag's run, the same artifact version lora's run made."""
    runs = {}
    for arm, reused in (("lora", False), ("lora_rag", True)):
        folder = tmp_path / arm / "adapter"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"the same weights")
        results = tmp_path / arm / f"{arm}_s0.json"
        results.write_text("{}")
        record = {"run_id": f"{arm}_s0", "strategy": arm, "artifacts": {"adapter": {"path": str(folder)}},
                  "cost": {"train": {"adapter_key": "k123", "reused_adapter": reused}}}
        with wb.wandb_run(CFG, {**CONFIG, "strategy": {"name": arm}}, f"{arm}_s0", tmp_path / arm / "run") as run:
            wb.log_outputs(run, results, record)
        runs[arm] = artifacts(run_records(tmp_path / arm / "run"))["adapter"]
    made, used = runs["lora"], runs["lora_rag"]
    assert not made.get("use_after_commit") and used["use_after_commit"]  # output of one, input of the other
    assert made["name"] == used["name"] == "adapter-k123" and made["digest"] == used["digest"]


def test_a_full_fine_tunes_model_folder_is_no_adapter_artifact(tmp_path, offline):
    results, model = tmp_path / "full_ft_s0.json", tmp_path / "model"
    model.mkdir()
    results.write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    with wb.wandb_run(CFG, CONFIG, "full_ft_s0", tmp_path / "run") as run:
        wb.log_outputs(run, results, {"run_id": "full_ft_s0", "artifacts": {"adapter": {"path": str(model)}}})
    assert set(artifacts(run_records(tmp_path / "run"))) == {"results"}


def test_split_accuracies_are_summarised_by_their_last_value_at_the_optimizer_step(tmp_path, offline):
    with wb.wandb_run(CFG, CONFIG, "reembed_s0_m", tmp_path) as run:
        wb.log_scores(run, {"updated": {"contains": 0.5, "em": 0.25, "n": 4, "contains_ci": [0.1, 0.9]},
                            "retrieval": {"mrr": 0.7}})
    records = run_records(tmp_path)
    defined = {r["metric"]["name"]: r["metric"] for r in records if r["type"] == "metric" and "name" in r["metric"]}
    contains = defined["metrics/updated/contains"]
    assert contains["step_metric"] == wb.STEP and contains["summary"] == {"last": True}
    (row,) = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert row["metrics/updated/contains"] == 0.5 and row["metrics/updated/em"] == 0.25
    assert "metrics/updated/n" not in row and "metrics/retrieval/mrr" not in row  # not accuracies


def test_a_tiny_cell_records_its_lineage_in_the_offline_run(tmp_path, offline, monkeypatch):
    from hydra import compose, initialize_config_dir

    from updatelab.run import CONFIG_DIR, run_cell

    monkeypatch.setenv("UPDATELAB_ROOT", str(tmp_path))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.cache_dir={SHARED_CACHE}", f"paths.data_dir={tmp_path / 'data'}",
                                           "logger=wandb", "progress=false", "strategy=stale", "shift.enabled=false",
                                           *TINY_CELL])
    monkeypatch.setitem(sys.modules, "pytorch_lightning.loggers", None)  # importing it fails: trains nothing, needs no logger
    record = run_cell(cfg, out_dir=tmp_path / "out")
    made = artifacts(run_records(tmp_path / "out"))
    assert {"dataset", "results"} <= set(made) and "adapter" not in made  # (and the predictions' run_table)
    assert made["dataset"]["use_after_commit"]
    assert json.loads(made["dataset"]["metadata"])["fingerprint"] == record["data_fingerprint"]
    assert manifest_paths(made["results"]) == {f"{record['run_id']}.json"}
