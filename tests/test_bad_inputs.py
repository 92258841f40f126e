"""Bad inputs end in one line naming the key -- `error: <key>: <problem>` on stderr, exit 2 -- with
no traceback and nothing written under results/, before any model loads (issue 14). Every case
runs the real CLI; the subprocesses run two at a time in one module-scoped fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

# (id, overrides, the key the one line must name)
CASES = [
    ("r-not-a-number", ["adapter.r=abc"], "adapter.r"),
    ("r-zero", ["adapter.r=0"], "adapter.r"),
    ("r-negative", ["adapter.r=-4"], "adapter.r"),
    ("lr-negative", ["adapter.lr=-1"], "adapter.lr"),
    ("batch-size-zero", ["adapter.batch_size=0"], "adapter.batch_size"),
    ("epochs-zero", ["adapter.epochs=0"], "adapter.epochs"),
    ("no-epochs-no-steps", ["adapter.epochs=null", "adapter.max_steps=null"], "adapter.epochs"),
    ("scheduler-typo", ["adapter.scheduler=cosinee"], "adapter.scheduler"),
    ("select-unknown", ["strategy=lora", "adapter.select=worst"], "adapter.select"),
    ("method-unknown", ["strategy=lora", "adapter.method=half"], "adapter.method"),
    ("patience-zero", ["strategy=lora", "adapter.patience=0"], "adapter.patience"),
    ("order-unknown", ["strategy=lora", "strategy.order=sideways"], "strategy.order"),
    ("replay-negative", ["strategy=lora", "strategy.replay_ratio=-1"], "strategy.replay_ratio"),
    ("qa-per-fact-zero", ["strategy=lora", "strategy.qa_per_fact=0"], "strategy.qa_per_fact"),
    ("precision-typo", ["trainer.precision=bf17"], "trainer.precision"),
    ("checkpoint-every-zero", ["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps"),
    ("top-k-zero", ["eval.top_k=0"], "eval.top_k"),
    ("max-new-tokens-zero", ["eval.max_new_tokens=0"], "eval.max_new_tokens"),
    ("n-people-zero", ["data.generator.n_people=0"], "data.generator.n_people"),
    ("seed-not-a-number", ["seed=abc"], "seed"),
    ("threads-not-a-number", ["threads=abc"], "threads"),
    ("cuda-without-gpu", ["device=cuda"], "device"),
    ("results-dir-unwritable", ["paths.results_dir=/proc/x"], "paths.results_dir"),
    ("logger-mode-unknown", ["logger.mode=loud"], "logger.mode"),
    ("local-data-without-path", ["data=local"], "data.path"),
    ("local-data-missing-folder", ["data=local", "data.path=/nonexistent/updatelab"], "data.path"),
    ("local-model-missing", ["model.source=local", "model.path=/nonexistent/model"], "model.path"),
    ("unknown-strategy", ["strategy=finetune"], "strategy"),
    ("unknown-group-option", ["index=faiss"], "index"),
    ("unknown-key", ["eval.topk=3"], "eval.topk"),
    ("grammar-error", ["seed=[1,2"], "seed"),
    ("bad-cell-in-a-sweep", ["-m", "strategy=stale,lora", "adapter.r=0"], "adapter.r"),
    ("bool-not-a-bool", ["force=maybe"], "force"),
    ("nested-not-a-number", ["shift.kl.batch_size=many"], "shift.kl.batch_size"),
    ("arm-adapter-override-out-of-range", ["strategy=full_ft", "strategy.adapter_overrides.lr=-1"],
     "strategy.adapter_overrides.lr"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}

    def run(case):
        name, overrides, _ = case
        cwd = root / name
        cwd.mkdir()
        proc = subprocess.run([PY, "-m", "updatelab.run", f"paths.root={cwd}", "threads=1", *overrides],  # the case last: it wins
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        return name, (proc, cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("name,overrides,key", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_ends_in_one_line_naming_the_key(outcomes, name, overrides, key):
    proc, cwd = outcomes[name]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (cwd / "results").exists() and not (cwd / "outputs").exists() and not (cwd / "multirun").exists()


def test_epochs_null_with_max_steps_is_valid(compose_cfg):
    from updatelab.config_check import validate

    validate(compose_cfg("strategy=lora", "adapter.epochs=null", "adapter.max_steps=12"))


def test_the_checks_option_lists_agree_with_the_code_they_guard():
    import typing

    from lightning_fabric.connector import _PRECISION_INPUT_STR

    from updatelab.config_check import DATA_SOURCES, PRECISIONS
    from updatelab.data.formats import FORMATS

    # (strategy.order's and strategy.sources' lists have one home, config_schema: the recipe and the
    # embedder tuning import them from there)
    assert set(typing.get_args(_PRECISION_INPUT_STR)) <= set(PRECISIONS)
    assert set(DATA_SOURCES) == {"synthetic", "local", "hub", *FORMATS}


WANDB_SCRIPT = """
import sys
from pathlib import Path
from updatelab.tracking.wandb_run import wandb_run
with wandb_run({"mode": "online", "project": "p"}, {"name": "e", "strategy": {"name": "s"}}, "rid", Path(sys.argv[1])) as run:
    print("mode", run.settings.mode)
"""


def test_wandb_online_without_network_falls_back_to_offline_with_a_warning(tmp_path):
    # Nothing listens on port 9 of localhost: no network is contacted.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="5", WANDB_API_KEY="x" * 40,
               HOME=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run([PY, "-c", WANDB_SCRIPT, str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mode offline" in proc.stdout
    assert f"logging offline to {tmp_path / 'out' / 'wandb'}" in proc.stderr and "wandb sync" in proc.stderr
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))


def test_prune_empty_keeps_the_checkpoint_and_removes_empty_folders(tmp_path):
    from updatelab.run import _prune_empty

    results = tmp_path / "results"
    (results / "default" / "lora_x" / "train" / "checkpoints").mkdir(parents=True)
    _prune_empty(results / "default" / "lora_x", stop=results)
    assert results.exists() and not (results / "default").exists()
    (results / "default" / "lora_x" / "train" / "checkpoints").mkdir(parents=True)
    (results / "default" / "lora_x" / "train" / "checkpoints" / "last.ckpt").write_text("x")
    _prune_empty(results / "default" / "lora_x", stop=results)
    assert (results / "default" / "lora_x" / "train" / "checkpoints" / "last.ckpt").exists()


def test_the_values_of_hydra_flags_are_not_read_as_overrides():
    from updatelab.config_check import cells

    assert cells(["--cfg", "job", "seed=3"]) == [["seed=3"]]
    assert cells(["-cn", "config", "--package", "_global_", "seed=3"]) == [["seed=3"]]
