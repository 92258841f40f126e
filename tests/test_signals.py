"""Signals are part of the contract: SIGTERM / SIGINT / SIGUSR2 stop a cell with a checkpoint taken
at the signal, exit status 143 / 130 / 140, no results file, and a re-run resumes (updatelab.signals).

The training part runs the tiny offline Llama of test_training.py in a subprocess (one per signal,
~5 s each, most of it imports); one real-CLI test sends SIGTERM to a Hydra multirun of a real
lora cell and re-runs it to the end."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, own_cache

PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
SAVED = re.compile(r"training checkpoint saved at step (\d+)")

# Trains the tiny Llama "for ever" (a short sleep per batch keeps it cheap) inside the cell's
# signal scope. Mode "submitit": a SIGUSR2 handler is installed first, as submitit's
# JobEnvironment does; it records whether the checkpoint was already there when it was called.
SCRIPT = textwrap.dedent("""
    import json, logging, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import pytorch_lightning as pl
    from test_training import ADAPTER, TRAINER, make_examples, make_model, make_tokenizer
    from updatelab import signals
    from updatelab.training.train import train_lora

    out, mode = Path(sys.argv[1]), sys.argv[2]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    class Slow(pl.Callback):
        def on_train_batch_end(self, *args):
            time.sleep(0.05)

    if mode == "submitit":
        def requeue(signum, frame):
            ckpt = out / "checkpoints" / "last.ckpt"
            step = torch.load(ckpt, weights_only=True)["global_step"] if ckpt.exists() else None
            (out / "requeued.json").write_text(json.dumps({{"signum": signum, "ckpt_step": step}}))
            sys.exit(-1)  # what submitit's handler does after `scontrol requeue`
        signal.signal(signal.SIGUSR2, requeue)

    tok = make_tokenizer()
    with signals.handling_signals():
        train_lora(make_model(tok), tok, make_examples(tok), {{**ADAPTER, "warmup_ratio": 0.0, "max_steps": 100000}},
                   {{**TRAINER, "checkpoint_every_n_steps": 5, "callbacks": [Slow()]}},
                   out_dir=out, seed=0, progress=False)
    print("finished")
""")


def _wait_for(pattern: str, proc: subprocess.Popen, timeout: float) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        hits = glob.glob(pattern)
        if hits:
            return hits[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended ({proc.returncode}) before {pattern} appeared:\n{err[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{pattern} did not appear within {timeout} s")


@pytest.mark.parametrize("sig,mode,status", [
    (signal.SIGTERM, "plain", 143),
    (signal.SIGINT, "plain", 130),
    (signal.SIGUSR2, "plain", 140),
    (signal.SIGUSR2, "submitit", 255),  # submitit's handler requeues and exits -1
], ids=["TERM", "INT", "USR2", "USR2-submitit"])
def test_a_signal_saves_the_checkpoint_at_once_exits_and_the_rerun_resumes(tmp_path, caplog, sig, mode, status):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    out = tmp_path / "train"
    proc = subprocess.Popen([PY, str(script), str(out), mode], env=ENV, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = Path(_wait_for(str(out / "checkpoints" / "last.ckpt"), proc, 120))  # the first periodic save: step 5
    time.sleep(0.3)
    t_signal = time.time()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr[-3000:]
    assert "finished" not in stdout
    assert "Traceback" not in stderr, stderr[-3000:]
    saved = SAVED.findall(stderr)
    assert len(saved) == 1, stderr[-3000:]
    step = int(saved[0])
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == step > 5 and ckpt.stat().st_mtime >= t_signal - 0.01  # written at the signal
    assert not (out / "adapter").exists()  # training did not finish
    if mode == "submitit":
        # checkpoint first, then submitit's requeue (which exits itself)
        assert json.loads((out / "requeued.json").read_text()) == {"signum": int(sig), "ckpt_step": step}

    # The re-run resumes from the signal's checkpoint and ends exactly where an uninterrupted run does
    # (no warmup: with it the learning rate of a step depends on max_steps).
    from test_training import ADAPTER, TRAINER, make_examples, make_model, make_tokenizer
    from updatelab.training.train import train_lora

    tok, n = make_tokenizer(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kw = dict(seed=0, progress=False)
        with caplog.at_level(logging.INFO, logger="updatelab.training.train"):
            _, resumed = train_lora(make_model(tok), tok, make_examples(tok), {**ADAPTER, "warmup_ratio": 0.0, "max_steps": step + 2},
                                    {**TRAINER, "checkpoint_every_n_steps": 5}, out_dir=out, **kw)
        _, fresh = train_lora(make_model(tok), tok, make_examples(tok), {**ADAPTER, "warmup_ratio": 0.0, "max_steps": step + 2},
                              {**TRAINER, "checkpoint_every_n_steps": 5}, out_dir=tmp_path / "fresh", **kw)
    finally:
        torch.set_num_threads(n)
    assert "resuming from" in caplog.text
    assert resumed.resumed_from_step == step and resumed.steps == step + 2
    assert resumed.loss_curve == fresh.loss_curve


def test_sigterm_stops_a_real_sweep_with_143_and_the_rerun_finishes_the_cell(tmp_path, converted_lm):
    """`python -m updatelab.run -m strategy=lora,lora_rag`, SIGTERM while lora trains: status 143, a
    checkpoint at the signal, no results file, the lora_rag cell never starts; the lora cell re-run
    resumes and writes its results file."""
    own_cache(tmp_path)
    cell = ["data=tiny", "adapter.max_steps=6", "adapter.select=last", "adapter.patience=null",
            "++strategy.replay_ratio=0", "threads=1", "logger=none", "progress=false", "shift.enabled=false",
            f"paths.root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.checkpoint_every_n_steps=2",
            "trainer.precision=32-true", "eval.autocast=float32", "adapter.batch_size=4", "adapter.r=2",
            "adapter.max_length=96", "eval.max_new_tokens=8"]
    # `++`: a multirun composes the sweep's base config with the default strategy (reembed) first
    cmd = [PY, "-m", "updatelab.run"]
    proc = subprocess.Popen([*cmd, "-m", "strategy=lora,lora_rag", *cell], env=ENV, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = Path(_wait_for(str(tmp_path / "results" / "default" / "*" / "train" / "checkpoints" / "last.ckpt"), proc, 240))
    t_signal = time.time()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    log = stdout + stderr
    assert proc.returncode == 143, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    step = int(SAVED.findall(log)[0])
    assert torch.load(ckpt, weights_only=True)["global_step"] == step and ckpt.stat().st_mtime >= t_signal - 0.01
    assert not list((tmp_path / "results" / "default").glob("*.json"))  # neither lora's nor lora_rag's
    assert "cell 2/2" not in log  # the sweep stopped: lora_rag never started
    assert "ModuleNotFoundError" not in log  # FAISS's loader no longer reports the AVX builds it lacks

    rerun = subprocess.run([*cmd, "strategy=lora", *cell], env=ENV, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {ckpt}" in rerun.stdout + rerun.stderr
    (result,) = (tmp_path / "results" / "default").glob("lora_*.json")
    record = json.loads(result.read_text())
    assert record["cost"]["train"]["steps"] == 6
