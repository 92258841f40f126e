"""Probe: `train_lora` at each explicit training precision, on the LoRA bench's examples.

    python experiments/bench/lora_precision_probe.py [--repeats 2] [--epochs 1]

Sides, each in a fresh process, alternated: ``32-true``; ``bf16-mixed`` as the training runs it
(frozen weights of the adapted layers held in bf16); ``bf16-mixed-autocast-only`` (those copies
switched off: autocast casts the fp32 weights at every forward). It answers whether
`precision: auto` picked the faster precision for the real training on this machine, and what the
bf16 copies are worth here. Prints one line per run; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib as bl
import lora_throughput as lt

SIDES = ("32-true", "bf16-mixed", "bf16-mixed-autocast-only")


def worker(p: dict) -> dict:
    bl.set_threads(p["threads"])
    from updatelab.models.lm import load_lm
    from updatelab.training import frozen_weights
    from updatelab.training.examples import TrainExample
    from updatelab.training.train import train_lora

    side = p["side"]
    if side == "bf16-mixed-autocast-only":
        frozen_weights.FrozenWeightsCast.apply = lambda self: None  # the training's copies, switched off
    model, tok = load_lm(str(bl.LM_PATH), {"dtype": "float32"})
    examples = [TrainExample(**e) for e in json.loads(Path(p["examples_file"]).read_text())]
    trainer = {**p["trainer"], "precision": side.replace("-autocast-only", ""), "enable_progress_bar": False}
    with tempfile.TemporaryDirectory() as d, bl.timed() as t:
        _, stats = train_lora(model, tok, examples, p["adapter"], trainer, out_dir=d, seed=0, logger=None, progress=False)
    return {"side": side, "tokens": stats.tokens, "fit_s": round(stats.wall_s, 2),
            "tok_s": round(stats.tokens / stats.wall_s, 1), "final_loss": stats.final_loss,
            "others_busy_cores": round(t.others_busy_cores, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=bl.default_threads())
    ap.add_argument("--worker", help="(internal) one run's parameters, JSON")
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    print(bl.machine_line(bl.machine_info(args.threads)), flush=True)
    cfg = bl.default_config(["strategy=lora"])
    adapter = {**cfg["adapter"], "epochs": args.epochs, "max_steps": None, "select": "last", "patience": None}
    subset, _ = lt.build_examples(cfg, 128, seed=0)
    with tempfile.TemporaryDirectory() as d:
        ex_file = Path(d) / "examples.json"
        ex_file.write_text(json.dumps(subset))
        for rep in range(args.repeats):
            for side in SIDES:
                p = {"side": side, "threads": args.threads, "examples_file": str(ex_file), "adapter": adapter,
                     "trainer": cfg["trainer"]}
                out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(p)], capture_output=True,
                                     text=True, cwd=str(bl.ROOT), env={**os.environ, **bl.WORKER_ENV})
                lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                print(f"repeat {rep + 1}: " + (lines[0][7:] if lines else f"FAILED: {out.stderr[-500:]}"), flush=True)


if __name__ == "__main__":
    main()
