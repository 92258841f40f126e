"""The project on a real (one-node) SLURM, through `hydra/launcher=slurm`: `make test-cluster`
starts the cluster (tests/cluster/slurm_up.sh) and runs these; a plain `make test` deselects them
(marker `cluster`) and they skip where `sinfo` finds no idle node.

- a job array of two cells writes both results files;
- a LoRA cell whose time limit ends several attempts is requeued by submitit, resumes each time from
  the checkpoint taken at the signal, and finishes with the metrics of an uninterrupted local run;
- `scancel` of one array task, then the same sweep again runs only that cell.

Two things this one-node cluster lacks and the tests make up for:
- SLURM holds a requeued job for 120 s (its begin time) before it may start again; `released_requeues`
  starts such jobs at once (`scontrol update StartTime=now`, as an administrator may), so that
  three attempts take minutes, not ten.
- There is no accounting database: `sacct` fails, so submitit cannot learn that a task was cancelled
  and the launching process would wait for it for ever; after the scancel the test stops the
  launching process itself, as a user would with Ctrl+C.

The training steps are paced to at least MIN_STEP_S each (tests/cluster/pace, a Lightning callback
from an entry point, only in the SLURM jobs' environment), so that the number of steps one attempt
gets within its time limit hardly depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_CACHE


def _node_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and "idle" in out.stdout.split()


pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(not _node_idle(), reason="no idle SLURM node (make test-cluster starts one)")]

PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
PACE = REPO / "tests" / "cluster" / "pace"
MIN_STEP_S = 5
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3"]
# The cheapest cells that still go through the whole pipeline (as in test_sweep.py).
CHEAP = ["data=tiny", "logger=none", "threads=1", "progress=false", "shift.enabled=false", "eval.max_new_tokens=1",
         "eval.top_k=1", "data.generator.n_general=1", "data.generator.n_unchanged_questions=1",
         f"paths.cache_dir={SHARED_CACHE}"]
SAVED = re.compile(r"training checkpoint saved at step (\d+)")
TRAINED = re.compile(r"`Trainer.fit` stopped: `max_steps=\d+` reached")
RESUMED = re.compile(r"resuming from \S+last\.ckpt")
HANDED_OVER = "SIGUSR2: handing over to submitit"


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "UPDATELAB_ROOT": str(root), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", **extra}


def _sweep(root: Path, *overrides: str) -> list[str]:
    return [PY, "-m", "updatelab.run", "-m", *LAUNCHER, *overrides, f"paths.data_dir={root / 'data'}"]


def _task_logs(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.glob("multirun/*/*/.submitit/*/*_log.*")))


def _squeue(name: str, *args: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %t", *args], capture_output=True, text=True)
    return out.stdout.split("\n")[:-1] if out.returncode == 0 else []


@pytest.fixture
def released_requeues():
    """Start requeued jobs as soon as SLURM would let them run, instead of 120 s later."""
    stop = threading.Event()
    released: list[str] = []

    def loop() -> None:
        while not stop.wait(1.0):
            out = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                job, _, reason = line.partition(" ")
                if reason.strip() == "BeginTime":
                    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
                    released.append(job)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield released
    stop.set()
    thread.join()


def _results(root: Path, name: str) -> dict[str, Path]:
    return {p.stem: p for p in (root / "results" / name).glob("*.json")}


def test_array_sweep_writes_both_cells(tmp_path, compose_cfg):
    from updatelab.run import run_id_for

    cells = [*CHEAP, "name=array"]
    expected = {run_id_for(compose_cfg(*cells, f"strategy={s}")) for s in ("stale", "reembed")}
    t0 = time.perf_counter()
    proc = subprocess.run(_sweep(tmp_path, "strategy=stale,reembed", *cells, "hydra.launcher.timeout_min=10"),
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=420)
    print(f"array sweep of 2 cells: {time.perf_counter() - t0:.0f} s")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:] + _task_logs(tmp_path)[-3000:]
    assert "2 cells, 0 done, 2 to run" in log
    assert set(_results(tmp_path, "array")) == expected
    task_logs = _task_logs(tmp_path)
    assert len(set(re.findall(r"Starting with JobEnvironment\(job_id=(\d+_\d)", task_logs))) == 2  # one array, two tasks


# A LoRA cell of ~MAX_STEPS * MIN_STEP_S s of training under a 2-minute limit with the timeout signal
# (SIGUSR2) 30 s before it: at most ~(120 - 30 - startup) / MIN_STEP_S steps per attempt, so it needs
# three attempts or more. No periodic checkpoint: every resume is from the checkpoint taken at a signal.
MAX_STEPS = 30
LORA = ["data=tiny", "name=requeue", "strategy=lora", f"adapter.max_steps={MAX_STEPS}", "adapter.select=last",
        "adapter.patience=null", "++strategy.replay_ratio=0", "++strategy.reuse_adapter=false", "threads=1",
        "logger=none", "progress=false", "shift.enabled=false", "trainer.checkpoint_every_n_steps=1000",
        "trainer.precision=32-true", "eval.autocast=float32", "embedder.autocast=float32", "adapter.batch_size=4",
        "adapter.r=2", "adapter.max_length=96", "eval.max_new_tokens=8", f"paths.cache_dir={SHARED_CACHE}"]
# What must not depend on how often the cell was interrupted (wall times and paths do).
DETERMINISTIC = ("run_id", "data_fingerprint", "config", "metrics", "predictions", "train_loss_curve")


@pytest.mark.timeout(1200)
def test_a_lora_cell_requeued_at_its_time_limit_resumes_and_matches_an_uninterrupted_run(tmp_path, released_requeues):
    slurm_root, ref_root = tmp_path / "slurm", tmp_path / "reference"
    slurm_root.mkdir()
    ref_root.mkdir()
    t0 = time.perf_counter()
    proc = subprocess.run(
        _sweep(slurm_root, *LORA, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
               "hydra.launcher.max_num_timeout=10"),
        cwd=slurm_root, env=_env(slurm_root, PYTHONPATH=str(PACE), UPDATELAB_TEST_MIN_STEP_S=str(MIN_STEP_S)),
        capture_output=True, text=True, timeout=1000)
    t_slurm = time.perf_counter() - t0
    # The reference: the same cell, uninterrupted, with the basic launcher. Run after, not meanwhile: on
    # 2 cores a concurrent run can slow an attempt's start-up until the signal comes before its first step.
    ref = subprocess.run([PY, "-m", "updatelab.run", *LORA, f"paths.data_dir={ref_root / 'data'}"], cwd=ref_root,
                         env=_env(ref_root), capture_output=True, text=True, timeout=600)
    ref_log = ref.stdout + ref.stderr
    log, task_log = proc.stdout + proc.stderr, _task_logs(slurm_root)
    assert proc.returncode == 0, log[-3000:] + task_log[-5000:]
    assert ref.returncode == 0, ref_log[-3000:]

    # One attempt per "Starting with JobEnvironment" (SLURM appends to the job's log on a requeue). Not
    # counted from submitit's "Requeued job" line: `scontrol requeue` may end the attempt before it is written.
    attempts = [a for f in sorted(slurm_root.glob("multirun/*/*/.submitit/*/*_log.*"))
                for a in f.read_text(errors="replace").split("Starting with JobEnvironment")[1:]]
    requeued, last = attempts[:-1], attempts[-1]
    saved = [int(s) for s in SAVED.findall(task_log)]
    print(f"LoRA cell on SLURM: {t_slurm:.0f} s, {len(attempts)} attempts, checkpoints at the signal at steps "
          f"{saved}, {len(RESUMED.findall(task_log))} resumes, requeued jobs released early: {released_requeues}")
    assert len(requeued) >= 2, task_log[-5000:]
    assert "Job completed successfully" in last and HANDED_OVER not in last, last[-3000:]
    # Every requeued attempt was ended by the timeout signal and took a checkpoint at it -- or had finished
    # training already (the signal came during evaluation; the next attempt resumes from the final
    # checkpoint) -- and each checkpoint at a signal is further on than the one before.
    for attempt in requeued:
        assert HANDED_OVER in attempt, attempt[-3000:]
        assert SAVED.search(attempt) or TRAINED.search(attempt.split(HANDED_OVER)[0]), attempt[-3000:]
    assert saved and saved == sorted(set(saved)) and saved[0] > 0, task_log[-5000:]
    assert len(RESUMED.findall(task_log)) == len(requeued)
    assert "Traceback" not in task_log, task_log[-5000:]

    (slurm_file,) = _results(slurm_root, "requeue").values()
    (ref_file,) = _results(ref_root, "requeue").values()
    got, want = json.loads(slurm_file.read_text()), json.loads(ref_file.read_text())
    assert got["cost"]["train"]["steps"] == want["cost"]["train"]["steps"] == MAX_STEPS
    for record in (got, want):
        record["config"].pop("paths")  # each run has its own root
    for key in DETERMINISTIC:
        assert got[key] == want[key], key


def test_scancel_of_one_array_task_then_the_rerun_runs_only_that_cell(tmp_path, compose_cfg):
    from updatelab.run import run_id_for

    name = f"cancel{os.getpid()}"
    cells = [*CHEAP, f"name={name}"]
    stale_id, reembed_id = (run_id_for(compose_cfg(*cells, f"strategy={s}")) for s in ("stale", "reembed"))
    cmd = _sweep(tmp_path, "strategy=stale,reembed", *cells, "hydra.launcher.timeout_min=10")
    job_name = f"updatelab-{name}"

    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
        try:
            t0 = time.perf_counter()
            while f"_1 R" not in " ".join(_squeue(job_name)):  # task 1 = reembed, running
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.perf_counter() - t0 < 180, "array task 1 did not start in 180 s"
                time.sleep(0.5)
            (task,) = [line.split()[0] for line in _squeue(job_name) if line.split()[0].endswith("_1")]
            time.sleep(3)
            subprocess.run(["scancel", task], check=True)
            # Task 0 finishes, task 1 leaves the queue; without sacct, submitit never learns that task 1
            # was cancelled (it waits for its result): stop the launching process as a user would.
            while _squeue(job_name) or stale_id not in _results(tmp_path, name):
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.perf_counter() - t0 < 360, "the array did not end in 360 s"
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    assert set(_results(tmp_path, name)) == {stale_id}
    task_logs = _task_logs(tmp_path)
    assert "received SIGTERM: stopping the cell" in task_logs or "CANCELLED" in task_logs, task_logs[-3000:]
    kept = _results(tmp_path, name)[stale_id]
    kept_stat, kept_text = kept.stat(), kept.read_text()

    rerun = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=420)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "2 cells, 1 done, 1 to run" in log
    assert set(_results(tmp_path, name)) == {stale_id, reembed_id}
    assert kept.stat().st_mtime_ns == kept_stat.st_mtime_ns and kept.read_text() == kept_text
    second = max(tmp_path.glob(f"multirun/{name}/*"), key=lambda p: p.stat().st_mtime)
    second_logs = "\n".join(p.read_text() for p in second.glob(".submitit/*/*_log.out"))
    assert "skip (done)" in second_logs and re.search(r"cell 2/2: strategy=reembed\n", second_logs), second_logs[-3000:]
