"""The torch thread count. Torch's default uses every core, and on a shared machine a core that
another process keeps busy stalls every parallel region at its barrier. ``auto`` samples the
per-core idle time over a short interval (``/proc/stat``, else psutil) and uses the cores that
are mostly idle, within the process's CPU affinity (at least 1)."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

log = logging.getLogger("updatelab")
AUTO = "auto"


@dataclass
class ThreadsChoice:
    requested: Any
    threads: int  # torch intra-op threads in use
    usable_cores: int  # cores in the process's CPU affinity
    idle_fraction: list[float] | None = None  # per usable core, over the sampling interval
    source: str = "auto"  # auto | explicit | torch default | no load information

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_chosen: ThreadsChoice | None = None  # set by apply_threads


def threads_from_idle(idle: Sequence[float], min_idle: float = 0.7) -> int:
    """Threads for per-core idle fractions (0 = fully busy, 1 = idle): the cores that are mostly
    idle (>= `min_idle`), but no more than the idle time adds up to in whole cores (one process
    hopping between two cores leaves each half idle: one free core, not two); at least 1."""
    mostly_idle = sum(1 for f in idle if f >= min_idle)
    whole_cores = math.floor(sum(idle) + 0.3 + 1e-9)
    return max(1, min(mostly_idle, whole_cores))


def usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _proc_stat() -> dict[int, tuple[float, float]]:
    """cpu index -> (idle + iowait jiffies, total jiffies)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+)\s+(.*)", line)
        if m:
            v = [float(x) for x in m.group(2).split()[:8]]  # user nice system idle iowait irq softirq steal
            out[int(m.group(1))] = (v[3] + v[4], sum(v))
    return out


def cpu_idle_fractions(interval: float = 0.2, cpus: Sequence[int] | None = None) -> list[float] | None:
    """Idle fraction of each CPU in `cpus` (default: the usable ones) over `interval` seconds;
    None where neither /proc/stat nor psutil is available."""
    cpus = list(cpus) if cpus is not None else usable_cpus()
    try:
        a = _proc_stat()
        time.sleep(interval)
        b = _proc_stat()
        return [max(0.0, min(1.0, (b[c][0] - a[c][0]) / (b[c][1] - a[c][1]))) if b[c][1] > a[c][1] else 1.0
                for c in cpus]
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        import psutil

        busy = psutil.cpu_percent(interval=interval, percpu=True)
        return [1.0 - busy[c] / 100.0 for c in cpus if c < len(busy)]
    except Exception:  # psutil missing or unusable
        return None


def choose_threads(requested: Any, interval: float = 0.2) -> ThreadsChoice:
    """`requested`: None = torch's default; a number = that; ``"auto"`` = the free cores."""
    cpus = usable_cpus()
    if requested in (None, "", 0):
        return ThreadsChoice(requested, torch.get_num_threads(), len(cpus), source="torch default")
    if requested != AUTO:
        return ThreadsChoice(requested, int(requested), len(cpus), source="explicit")
    idle = cpu_idle_fractions(interval, cpus)
    if not idle:
        return ThreadsChoice(requested, len(cpus), len(cpus), source="no load information")
    return ThreadsChoice(requested, min(len(cpus), threads_from_idle(idle)), len(cpus),
                         [round(f, 3) for f in idle], source="auto")


def apply_threads(requested: Any, interval: float = 0.2) -> ThreadsChoice:
    """Choose the thread count, set it in torch and keep it for the results record."""
    global _chosen
    choice = choose_threads(requested, interval)
    if choice.source != "torch default":
        torch.set_num_threads(choice.threads)
    if choice.source == "auto":
        log.info("threads: auto -> %d of %d usable cores (idle per core over %.1f s: %s)", choice.threads,
                 choice.usable_cores, interval, ", ".join(f"{f:.2f}" for f in choice.idle_fraction or []))
    _chosen = choice
    return choice


def resample(interval: float = 0.2) -> ThreadsChoice | None:
    """Choose ``auto`` again from the cores free now (None when the count was not ``auto``). A
    training is most of a cell's time: the cores free when the cell started, maybe beside a
    job that has ended since, are the wrong sample for it."""
    if _chosen is None or _chosen.source != "auto":
        return None
    return apply_threads(AUTO, interval)


def threads_record() -> dict[str, Any]:
    """The thread choice of this process (as `apply_threads` made it) with torch's current count
    (``threads``; ``chosen`` differs from it when something set another count later)."""
    now = torch.get_num_threads()
    if _chosen is None:
        return {**ThreadsChoice(None, now, len(usable_cpus()), source="torch default").as_dict(), "chosen": now}
    return {**_chosen.as_dict(), "threads": now, "chosen": _chosen.threads}


def current() -> ThreadsChoice | None:
    """The choice `apply_threads` made in this process (None before it ran)."""
    return _chosen
