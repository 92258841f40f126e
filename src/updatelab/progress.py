"""Progress of the long loops (embedding, generation, the shift probe): a tqdm bar on a terminal;
in a redirected log (`make run > log`, a SLURM .out file) plain log lines instead, since a bar
redraws itself with carriage returns that a log keeps as one unreadable line. (Training has its
own: updatelab.training.log_progress.)"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Sized, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("updatelab")
T = TypeVar("T")
EVERY_S = 10.0  # a redirected log gets a line when a step ends at least this long after the last line


def on_terminal() -> bool:
    return sys.stderr.isatty()


def steps(items: Iterable[T], desc: str, enabled: bool = True) -> Iterable[T]:
    """`items`, reporting progress as it is consumed (nothing when not `enabled`)."""
    if not enabled:
        return items
    if on_terminal():
        return tqdm(items, desc=desc, leave=False)
    return _lines(items, desc)


def _lines(items: Iterable[T], desc: str) -> Iterator[T]:
    """One line after the first step, then after a step ending >= EVERY_S after the last line,
    and after the last: 'desc: i/n steps, elapsed s'."""
    total = len(items) if isinstance(items, Sized) else None
    t0 = last = time.perf_counter()
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if i == 1 or i == total or now - last >= EVERY_S:
            log.info("%s: %d%s steps, %.0f s", desc, i, f"/{total}" if total else "", now - t0)
            last = now
