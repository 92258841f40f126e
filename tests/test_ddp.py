"""DDP under Hydra on the CPU (2 processes, gloo): one output dir, one results file, one adapter.

Slow by nature: two processes each load the LM (~30-60 s per test on 2 shared cores).

1. `python -m updatelab.run trainer=ddp_cpu` (no sweep): Lightning's subprocess launcher
   re-runs the command line for rank 1 and passes it `hydra.run.dir=<rank 0's dir>`.
2. A multirun through `hydra/launcher=local` with tasks_per_node = trainer.devices = 2: the
   ranks are submitit tasks (as on SLURM), Lightning starts no process itself.
3. A multirun under Hydra's basic launcher: refused (each rank would re-run the sweep).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import SHARED_CACHE, own_cache

LORA_DDP = [
    "strategy=lora", "trainer=ddp_cpu", "data=tiny", "name=ddp",
    # tiny training and evaluation: the test is about processes and files, not accuracy
    "adapter.max_steps=2", "adapter.batch_size=2", "adapter.max_length=48",
    "data.generator.n_general=1", "data.generator.n_unchanged_questions=1",
    "eval.max_new_tokens=2", "eval.top_k=1", "shift.enabled=false",
    "logger=none", "threads=1", "progress=false",
]


def _run(tmp_path: Path, *args: str, timeout: int = 280) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "UPDATELAB_ROOT": str(tmp_path), "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cache = own_cache(tmp_path)
    cmd = [sys.executable, "-m", "updatelab.run", *args, *LORA_DDP,
           f"paths.cache_dir={cache}", f"paths.data_dir={tmp_path / 'data'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, time.perf_counter() - t0


def _one_results_file(tmp_path: Path) -> dict:
    files = sorted((tmp_path / "results" / "ddp").glob("*.json"))
    assert len(files) == 1, files
    record = json.loads(files[0].read_text())
    assert record["strategy"] == "lora" and record["cost"]["train"]["steps"] == 2
    assert not record["cost"]["train"]["reused_adapter"]
    return record


def _one_stored_adapter(tmp_path: Path) -> None:
    stored = list((tmp_path / "cache" / "adapters").iterdir())
    assert len(stored) == 1 and not stored[0].name.count(".tmp"), stored  # no leftover temporary folder
    assert (stored[0] / "train_stats.json").exists() and (stored[0] / "adapter" / "adapter_model.safetensors").exists()


def test_ddp_run_makes_one_output_dir_and_one_results_file(tmp_path):
    proc, wall = _run(tmp_path)
    print(f"ddp run: {wall:.0f} s")
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "distributed_backend=gloo" in log

    # (a) Lightning started rank 1 with hydra.run.dir = rank 0's dir: no second output dir.
    dirs = [p for p in (tmp_path / "outputs" / "ddp" / "lora_s0").iterdir()]
    assert len(dirs) == 1, dirs
    assert (dirs[0] / "train_ddp_process_1.log").exists()  # rank 1's Hydra log, in the same dir
    assert not (tmp_path / "multirun").exists()

    # (b) only rank 0 evaluated and wrote: one results file, one stored adapter.
    record = _one_results_file(tmp_path)
    assert record["output_dir"] == str(dirs[0])
    _one_stored_adapter(tmp_path)
    rank1 = (dirs[0] / "train_ddp_process_1.log").read_text()
    assert "applying strategy lora" in rank1 and "done:" not in rank1
    # The arm's replay is generated once (rank 1 reads rank 0's), and dev selection runs on both
    # ranks at the same steps (a rank that stopped alone would leave the other waiting for ever).
    assert "self-generated answers of the base model (cached)" in rank1
    n_dev = rank1.count("dev score at step")
    assert n_dev >= 1 and log.count("dev score at step") == 2 * n_dev


# The arm's replay and dev selection under DDP are the test above's; here the launch alone is the subject.
PLAIN_TRAINING = ["++strategy.replay_ratio=0", "adapter.select=last", "adapter.patience=null"]


def test_ddp_cell_as_submitit_tasks_makes_one_output_dir_and_one_results_file(tmp_path):
    proc, wall = _run(tmp_path, "-m", "hydra/launcher=local", *PLAIN_TRAINING)
    print(f"ddp cell as submitit tasks: {wall:.0f} s")
    sweeps = list((tmp_path / "multirun" / "ddp").iterdir())
    assert len(sweeps) == 1, sweeps
    jobs = [p for p in sweeps[0].iterdir() if not p.name.startswith(".") and p.is_dir()]
    assert [p.name for p in jobs] == ["0_lora_s0"]
    logs = sorted(sweeps[0].glob(".submitit/*/*_log.out"))
    assert len(logs) == 2  # two tasks: the two ranks
    text = "\n".join(p.read_text() for p in logs)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert not (tmp_path / "outputs").exists()

    record = _one_results_file(tmp_path)
    assert Path(record["output_dir"]).resolve() == jobs[0].resolve()
    _one_stored_adapter(tmp_path)


def test_ddp_in_a_sweep_under_the_basic_launcher_is_refused(tmp_path):
    """Lightning would re-run `-m ...` for rank 1, i.e. the whole sweep: refused before any work."""
    env = {**os.environ, "UPDATELAB_ROOT": str(tmp_path), "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "updatelab.run", "-m", *LORA_DDP, f"paths.cache_dir={SHARED_CACHE}",
           f"paths.data_dir={tmp_path / 'data'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "hydra/launcher=local or hydra/launcher=slurm" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
