"""Your own knowledge update, as the README documents it: `make run` on a folder outside the
repo with UPDATELAB_ROOT elsewhere, then its table and `make report EXP=<name>` (issue 14)."""

import json
import os
import subprocess
from pathlib import Path

from conftest import REPO, SHARED_CACHE

PEOPLE = {  # entity -> (employer in v0, employer in v1)
    "Mara Quill": ("Holloway Freight", "Brightwater Labs"),
    "Teodor Vasko": ("Kestrel Bank", "Kestrel Bank"),
    "Ines Larrow": ("Orchid Media", "Fenwick Tools"),
    "Bram Oduya": ("Saltmarsh Ferries", "Saltmarsh Ferries"),
}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _own_update(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for version, k in (("kb_v0", 0), ("kb_v1", 1)):
        _write_jsonl(folder / f"{version}.jsonl", [
            {"doc_id": f"d{i}", "text": f"{name} works at {jobs[k]}.", "entity": name}
            for i, (name, jobs) in enumerate(PEOPLE.items())])
    _write_jsonl(folder / "questions.jsonl", [
        {"qid": f"q{i}", "split": "updated" if jobs[0] != jobs[1] else "unchanged",
         "question": f"Where does {name} work?", "answer": jobs[1], "doc_id": f"d{i}", "entity": name}
        for i, (name, jobs) in enumerate(PEOPLE.items())])
    return folder


def test_the_documented_own_data_commands_keep_everything_under_updatelab_root(tmp_path):
    data, root, elsewhere = _own_update(tmp_path / "my_kb"), tmp_path / "root", tmp_path / "cwd"
    elsewhere.mkdir()
    env = {**os.environ, "UPDATELAB_ROOT": str(root), "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cheap = f"paths.cache_dir={SHARED_CACHE} logger=none threads=1 progress=false shift.enabled=false eval.max_new_tokens=8"
    run = subprocess.run(["make", "-s", "-C", str(REPO), "run", "ARMS=stale,reembed",
                          f"ARGS=data=local data.path={data} name=mykb {cheap}"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    results = sorted((root / "results" / "mykb").glob("*.json"))
    assert sorted(json.loads(p.read_text())["strategy"] for p in results) == ["reembed", "stale"]
    assert any((root / "multirun" / "mykb").iterdir())  # Hydra's sweep dirs, and the W&B/log files in them
    assert not (REPO / "results" / "mykb").exists() and not any(elsewhere.iterdir())
    # The table make run printed is this experiment's, with only the splits the data has.
    assert "mykb" in run.stdout and "updated" in run.stdout and "general" not in run.stdout

    report = subprocess.run(["make", "-s", "-C", str(REPO), "report", "EXP=mykb"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    page = (root / "results" / "mykb" / "dashboard.html").read_text()
    assert "reembed" in page and "general" not in page
