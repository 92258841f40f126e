"""How many epochs does LoRA need to store the update? One training on the development world, extended.

    .venv/bin/python experiments/lora_epochs/choose_epochs.py 16 24 32
    .venv/bin/python experiments/lora_epochs/choose_epochs.py 1 2 data=tiny   # a smoke run (extra Hydra overrides)

Runs the `lora` cell on data seed 99 (a world no evaluation seed uses) with a constant learning
rate, first for the smallest epoch count; each later count starts from the previous cell's
checkpoint (the adapter-only last.ckpt, whose fingerprint covers data, seed and adapter shape),
so the whole list costs one training of the largest count. With a constant lr a resumed run
differs from a fresh one only in the warmup's length (5% of the steps). Prints one line per count.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from updatelab.run import CONFIG_DIR, run_cell, run_id_for
from updatelab.tracking.results import results_path

SPLITS = ("updated", "stored", "paraphrased", "unchanged", "general")


def main(epochs: list[int], overrides: list[str]) -> None:
    prev = None
    for e in sorted(epochs):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[
                "name=lora_epochs", "seed=99", "strategy=lora", "adapter.scheduler=constant", f"adapter.epochs={e}",
                "shift.enabled=false", "logger=none", "strategy.reuse_adapter=false", *overrides])
        target = results_path(cfg.paths.results_dir, cfg.name, run_id_for(cfg))
        ckpt = target.with_suffix("") / "train" / "checkpoints" / "last.ckpt"
        if prev is not None and not ckpt.exists():
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(prev, ckpt)
        t0 = time.time()
        rec = run_cell(cfg, out_dir=Path("outputs") / "lora_epochs" / f"e{e}") or json.loads(target.read_text())
        prev = ckpt
        m, tr = rec["metrics"], rec["cost"]["train"]
        print(f"epochs={e} steps={tr['steps']} loss={tr['final_loss']:.3f} "
              + " ".join(f"{s}={m[s]['contains']:.3f}(n={m[s]['n']})" for s in SPLITS)
              + f" wall={time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the progress lines; compose() sets up no logging
    args = sys.argv[1:]
    main([int(a) for a in args if "=" not in a] or [16, 24, 32], [a for a in args if "=" in a])
