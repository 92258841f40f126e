"""Files shared by concurrent processes: written so that a reader never sees half of one (write a
sibling, then rename), and work done once under a lock the others wait on."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path: str | Path, write: Callable[[str], None], mode: int = 0o644) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary sibling onto `path` (atomic on one file
    system); an exception leaves `path` as it was and removes the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp makes 0600; collaborators on a shared file system must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) across processes: sweep cells, DDP ranks
    and test workers that need the same one-off result wait for the first one's instead of
    computing it again. Not POSIX: no lock (the atomic writes still keep every file whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
