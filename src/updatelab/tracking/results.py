"""One results file per matched cell, written atomically: its presence means the cell is done."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("experiment", "run_id", "strategy", "seed", "config", "metrics", "cost", "predictions")


def default_results_dir() -> Path:
    """Where a run writes results unless told otherwise (configs/config.yaml `paths.results_dir`):
    $UPDATELAB_ROOT/results, else ./results -- so the report finds what the run wrote."""
    return Path(os.environ.get("UPDATELAB_ROOT") or ".") / "results"


def results_path(results_dir: str | Path, experiment: str, run_id: str) -> Path:
    return Path(results_dir) / experiment / f"{run_id}.json"


def _clean(obj: Any) -> Any:
    """JSON has no NaN; write null so that every reader (browsers included) can parse it."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _clean(obj.item())
    return obj


def write_results(path: str | Path, record: dict[str, Any]) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise KeyError(f"results record lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(record), f, indent=1, allow_nan=False)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; collaborators on a shared file system must read results
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_results(results_dir: str | Path, experiment: str) -> list[dict[str, Any]]:
    folder = Path(results_dir) / experiment
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
