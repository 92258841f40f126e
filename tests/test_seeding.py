"""A cell seeds its RNGs as Lightning would (updatelab.seeding), without importing Lightning."""

import os
import random
import subprocess
import sys

import numpy as np
import torch

from updatelab.seeding import seed_everything


def _states():
    return (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist(),
            os.environ.get("PL_GLOBAL_SEED"), os.environ.get("PL_SEED_WORKERS"))


def test_the_rng_states_are_those_lightnings_seed_everything_sets(monkeypatch):
    import pytorch_lightning as pl

    for seed in (0, 7):
        monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
        monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
        pl.seed_everything(seed, workers=True, verbose=False)
        want = _states()
        random.random(), np.random.rand(), torch.rand(3)  # move every RNG on
        monkeypatch.delenv("PL_GLOBAL_SEED")
        monkeypatch.delenv("PL_SEED_WORKERS")
        assert seed_everything(seed) == seed
        assert _states() == want


def test_a_cell_that_trains_nothing_does_not_import_lightning():
    code = ("import sys; from updatelab import pipeline, seeding; seeding.seed_everything(0); "
            "print('pytorch_lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
