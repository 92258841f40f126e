"""A wheel built from the repo carries its config tree: installed (not editable) it runs a cell
from a directory that is not the checkout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_CACHE

pytestmark = pytest.mark.timeout(600)


def test_a_wheel_runs_a_cell_from_another_directory(tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    # Built from a copy of what the repo tracks for the package (an in-tree build would leave build/
    # behind, whose stale files a later wheel would pick up); --no-build-isolation: the venv's setuptools.
    src = tmp_path / "repo"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("src", "configs"):
        shutil.copytree(REPO / part, src / part, ignore=skip)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.glob("updatelab-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    # PYTHONPATH comes before the editable install's path entry: this process imports the wheel's copy.
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    env.pop("UPDATELAB_ROOT", None)
    where = subprocess.run([sys.executable, "-c", "import updatelab.run as r; print(r.__file__); print(r.CONFIG_DIR)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(target / "updatelab" / "run.py"), str(target / "updatelab" / "configs")]
    proc = subprocess.run([str(target / "bin" / "updatelab"), "strategy=stale", "data=tiny", "logger=none",
                           "progress=false", "threads=1", "shift.enabled=false", "eval.max_new_tokens=2",
                           f"paths.cache_dir={SHARED_CACHE}"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((work / "results" / "default").glob("stale_s0_*.json"))) == 1
