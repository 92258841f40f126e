"""The one seed of a cell, set in every RNG it draws from exactly as Lightning's
`seed_everything(seed, workers=True)` sets them (tests/test_seeding.py holds the two equal),
without importing Lightning: a cell that trains nothing would pay seconds of imports for it."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> int:
    """Python's, NumPy's and torch's global RNGs seeded with `seed`; PL_GLOBAL_SEED and
    PL_SEED_WORKERS set for the processes and data-loader workers Lightning starts."""
    seed = int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PL_SEED_WORKERS"] = "1"
    return seed
