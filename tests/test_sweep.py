"""Sweeps: a grid run through submitit (`hydra/launcher=local`), killed after its first cell and
started again, finishes exactly the missing cells; sweep output dirs never collide; the
experiment grids have the sizes they claim."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import SHARED_CACHE

# The cheapest cells that still go through the whole pipeline (models, index, generation).
CELL = ["data=tiny", "name=sweep", "logger=none", "threads=1", "progress=false", "shift.enabled=false",
        "eval.max_new_tokens=1", "eval.top_k=1", "data.generator.n_general=1", "data.generator.n_unchanged_questions=1"]
GRID = ["strategy=stale,reembed"]


def _sweep_cmd(tmp_path: Path) -> list[str]:
    # max_batch_size=1: submitit's local executor would start both cells at once; one after
    # another, the kill below lands between cell 1 and cell 2.
    return [sys.executable, "-m", "updatelab.run", "-m", "hydra/launcher=local", "hydra.sweeper.max_batch_size=1",
            *GRID, *CELL, f"paths.cache_dir={SHARED_CACHE}", f"paths.data_dir={tmp_path / 'data'}"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "UPDATELAB_ROOT": str(tmp_path), "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}


def _results(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "results" / "sweep").glob("*.json"))  # written atomically: no partial *.json


def test_killed_sweep_resumes_with_only_the_missing_cells(tmp_path, compose_cfg):
    from updatelab.run import run_id_for

    expected = {run_id_for(compose_cfg(*CELL, f"strategy={s}")) for s in ("stale", "reembed")}
    assert len(expected) == 2

    # 1. Start the sweep in its own process group; kill the whole group once a cell is done.
    t0 = time.perf_counter()
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(_sweep_cmd(tmp_path), cwd=tmp_path, env=_env(tmp_path), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not _results(tmp_path):
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.perf_counter() - t0 < 150, "no cell finished in 150 s"
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep, submitit's controller and the running task
            proc.wait()
    t_kill = time.perf_counter() - t0
    first = _results(tmp_path)
    assert len(first) == 1
    first_stat, first_text = first[0].stat(), first[0].read_text()
    assert "2 cells, 0 done, 2 to run" in (tmp_path / "first.log").read_text()

    # 2. The same command again.
    t1 = time.perf_counter()
    proc = subprocess.run(_sweep_cmd(tmp_path), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=200)
    t_rerun = time.perf_counter() - t1
    print(f"first run killed after {t_kill:.0f} s, re-run {t_rerun:.0f} s")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "2 cells, 1 done, 1 to run" in log

    # Exactly the two cells, each once; the finished one untouched.
    files = _results(tmp_path)
    records = [json.loads(p.read_text()) for p in files]
    assert sorted(r["run_id"] for r in records) == sorted(expected)
    assert {p.stem for p in files} == expected
    assert first[0].stat().st_mtime_ns == first_stat.st_mtime_ns and first[0].read_text() == first_text

    # One sweep dir per run, and every cell's output dir inside its run's sweep dir: the uid in
    # hydra.sweep.dir resolved once, in the launching process (the submitit tasks reuse it).
    sweeps = sorted((tmp_path / "multirun" / "sweep").iterdir())
    assert len(sweeps) == 2 and sweeps[0].name != sweeps[1].name
    by_sweep = {s: [r for r in records if Path(r["output_dir"]).resolve().parent == s.resolve()] for s in sweeps}
    first_sweep = Path(json.loads(first_text)["output_dir"]).resolve().parent
    (second,) = [s for s in sweeps if s.resolve() != first_sweep]
    assert [Path(r["output_dir"]).name for r in by_sweep[first_sweep]] == ["0_stale_s0"]
    assert [Path(r["output_dir"]).name for r in by_sweep[second]] == ["1_reembed_s0"]

    # The re-run's first cell printed that it skipped (in its submitit task's log).
    task_logs = "\n".join(p.read_text() for p in second.glob(".submitit/*/*_log.out"))
    assert "cell 1/2: strategy=stale -- skip (done)" in task_logs
    assert "cell 2/2: strategy=reembed\n" in task_logs


def test_sweep_dirs_of_runs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    from updatelab.run import CONFIG_DIR

    monkeypatch.setenv("UPDATELAB_ROOT", str(tmp_path))
    dirs = []
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            OmegaConf.register_new_resolver("now", lambda pattern: "2026-01-01_00-00-00", replace=True, use_cache=True)
            for _ in range(2):
                cfg = compose("config", overrides=["experiment=update_strategies"], return_hydra_config=True)
                dirs.append((str(cfg.hydra.sweep.dir), str(cfg.hydra.run.dir)))
    finally:
        setup_globals()  # Hydra's own `now` again
    (sweep_a, run_a), (sweep_b, run_b) = dirs
    assert sweep_a.startswith(f"{tmp_path}/multirun/update_strategies/2026-01-01_00-00-00_")
    assert sweep_a != sweep_b and run_a != run_b


@pytest.mark.parametrize("experiment, cells", [("update_strategies", 15), ("lora_rank", 27), ("kb_change", 27),
                                              ("shift_vs_forgetting", 6), ("lora_train_seeds", 10)])
def test_experiment_grids(experiment, cells, compose_cfg):
    from hydra import compose, initialize_config_dir

    from updatelab.run import CONFIG_DIR
    from updatelab.tracking.sweep_progress import sweep_cells

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.name == experiment
    grid = sweep_cells(cfg)
    assert len(grid) == cells and len({tuple(sorted(c)) for c in grid}) == cells


def test_lora_train_seeds_vary_the_training_and_keep_the_world(compose_cfg):
    cells = [compose_cfg("experiment=lora_train_seeds", "strategy=lora", f"seed={s}") for s in (0, 3)]
    assert [c.seed for c in cells] == [0, 3]
    assert [c.data.generator.seed for c in cells] == [0, 0]


def test_lora_rank_keeps_alpha_at_twice_the_rank(compose_cfg):
    for r in (4, 16, 64):
        cfg = compose_cfg("experiment=lora_rank", "strategy=lora", f"adapter.r={r}")
        assert cfg.adapter.alpha == 2 * r


@pytest.mark.parametrize("level, fraction", [("1pct", 0.01), ("10pct", 0.10), ("50pct", 0.50)])
def test_kb_change_levels_change_that_fraction_of_the_documents(level, fraction, compose_cfg, tmp_path):
    from updatelab.data.synthetic import META_FILE, generate

    cfg = compose_cfg("experiment=kb_change", f"kb_change={level}")
    params = OmegaConf.to_container(cfg.data.generator, resolve=True)
    params.update(n_general=0, n_unchanged_questions=0, renderings=1)  # do not change the KB
    meta = json.loads((generate(tmp_path / level, **params) / META_FILE).read_text())
    counts = meta["counts"]
    assert counts["changed_docs"] / counts["docs_v1"] == pytest.approx(fraction, abs=0.0015)


def test_slurm_preset_makes_one_array_with_a_task_per_device(tmp_path, monkeypatch):
    """The `slurm` launcher preset, turned into the sbatch script submitit would submit (the
    plugin's own parameter mapping, without a cluster: a stub `srun` satisfies submitit's check)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf

    from updatelab.run import CONFIG_DIR

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=update_strategies", "hydra/launcher=slurm", "trainer=ddp",
                                           "hydra.launcher.partition=gpu"], return_hydra_config=True)
    assert OmegaConf.get_type(cfg.hydra.launcher) is SlurmQueueConf  # the plugin's typed config, extended
    params = dict(instantiate(cfg.hydra.launcher).params)  # resolved as the launcher resolves them
    # hydra_plugins.hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher.launch:
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "%j"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    slurm = executor._executor
    slurm.parameters["map_count"] = 12  # what map_array sets for the 12 cells
    script = slurm._make_submission_file_text(slurm._submitit_command_str, "uid")
    for line in ("#SBATCH --array=0-11%12", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --nodes=1", "#SBATCH --time=240", "#SBATCH --mem=64GB",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --job-name=updatelab-update_strategies",
                 "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"):
        assert line in script, script
