"""Progress of the long loops: a bar on a terminal, plain lines in a redirected log (updatelab.progress)."""

import subprocess
import sys

from tqdm.auto import tqdm

from updatelab import progress

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from updatelab.progress import steps
print(sum(steps(range(3), "embed (3 batches)")))
"""


def test_in_a_redirected_log_progress_is_lines_without_carriage_returns():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "3"  # every item, in order
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("embed (3 batches): 1/3 steps") and lines[-1].startswith("embed (3 batches): 3/3 steps")


def test_on_a_terminal_progress_is_a_bar(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    bar = progress.steps([1, 2], "x")
    assert isinstance(bar, tqdm) and list(bar) == [1, 2]


def test_disabled_progress_is_the_items_themselves():
    items = [1, 2]
    assert progress.steps(items, "x", enabled=False) is items
