"""Benchmark: LoRA training tokens/s, updatelab `train_lora` vs a plain Hugging Face Trainer + PEFT.

Same model (SmolLM2-135M-Instruct, the packaged safetensors cache), same data (a fixed,
seeded subset of the real training examples of the default update:
the `lora` arm's recipe without its replay on the default synthetic world), same
max length, batch size, adapter (r=16, alpha=32, dropout 0.05, every attention+MLP linear),
learning rate, one epoch.

Sides (each in a fresh process, alternated):

  ours      `updatelab.training.train.train_lora` with the default `adapter` and `trainer`
            configs (the `lora` arm's code path: Lightning, the precision chosen by measurement,
            length bucketing, tokenize once, the vocabulary projection only on answer tokens,
            a batch's shared chat-template prefix run once: updatelab.training.loss), no logger,
            no progress bar
  hf_fp32   what a user writes: `datasets.map(tokenizer(..., truncation=True, max_length))`,
            `get_peft_model`, `Trainer(TrainingArguments(per_device_train_batch_size, num_train_epochs=1,
            learning_rate, report_to=[]), data_collator=DataCollatorForLanguageModeling(tok, mlm=False))`,
            the default bf16=False
  hf_bf16   the same with TrainingArguments(bf16=True); transformers refuses that on a machine
            without a GPU ("You need to assign use_cpu ..."), so, as the message says, use_cpu=True
            is added (the refusal is recorded); accelerate then autocasts to bf16 on the CPU
  gemm      this machine's matmul peak in the same run: 2048x2048 fp32 and bf16 GEMM GFLOP/s

"tok/s after step 1" leaves out the first optimizer step (cold: kernels built per new shape,
allocator growth), which weighs heavily in a short run; the `lora` arm trains several epochs, so its steady state is
the closer figure for the arm.

Tokens are REAL (non-padding) tokens, counted from the attention masks of the batches each
side actually trained on. Utilisation = `lora_train_flops(N_base_non_embedding, N_adapter,
computed tokens)` / training-loop wall (computed: the positions that ran, a shared prefix once
per batch; the HF sides run every token), against the best GEMM GFLOP/s seen in the run (bf16 peak for
bf16 sides, fp32 peak for fp32).

    python experiments/bench/lora_throughput.py            # 128 examples, 3 repeats
    python experiments/bench/lora_throughput.py --quick    # 16 examples, batch 8, max_length 64, 2 repeats (smoke test)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl

NAME = "lora_throughput"
GOAL = 2.0
SIDES = ["ours", "hf_fp32", "hf_bf16", "gemm"]
TRAIN_SIDES = ["ours", "hf_fp32", "hf_bf16"]


# --------------------------------------------------------------------------------------------
# Data (built once by the driver, read by every worker)
# --------------------------------------------------------------------------------------------


def build_examples(cfg: dict, n: int, seed: int) -> tuple[list[dict], dict]:
    from dataclasses import asdict, fields

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from updatelab.evaluation import prompt_builder
    from updatelab.pipeline import load_knowledge_update
    from updatelab.training.recipe import Recipe, build_training_data

    tok = AutoTokenizer.from_pretrained(str(bl.LM_PATH))
    update = load_knowledge_update(OmegaConf.create(cfg["data"]), cfg["paths"]["data_dir"])
    # The arm's recipe without replay (rehearsal examples are the base model's own generations)
    recipe = Recipe(**{**{f.name: cfg["strategy"][f.name] for f in fields(Recipe)}, "replay_ratio": 0.0})
    examples = build_training_data(update, tok, prompt_builder(OmegaConf.create(cfg["eval"])), recipe).examples
    picked = sorted(random.Random(seed).sample(range(len(examples)), min(n, len(examples))))
    subset = [asdict(examples[i]) for i in picked]
    info = {"all_examples": len(examples), "subset": len(subset), "subset_seed": seed,
            "documents": sum(1 for e in subset if not e["prompt"]), "qa_pairs": sum(1 for e in subset if e["prompt"]),
            "update": update.name}
    return subset, info


def hf_text(ex: dict, eos: str) -> str:
    """The same sequence as ours, as one string (a document gets EOS appended, as `train_lora` does)."""
    add_eos = ex["add_eos"] if ex["add_eos"] is not None else (not ex["prompt"] and not ex["completion"].endswith(eos))
    return ex["prompt"] + ex["completion"] + (eos if add_eos else "")


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def worker_gemm(p: dict) -> dict:
    import torch

    bl.set_threads(p["threads"])
    n = 2048
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        for _ in range(3):  # warm-up: thread pool, oneDNN kernel selection
            a @ b
        iters, t0 = 0, time.perf_counter()
        with bl.timed() as t:
            while time.perf_counter() - t0 < p["gemm_seconds"]:
                a @ b
                iters += 1
        out[f"{name}_gflops"] = 2.0 * n**3 * iters / t.wall_s / 1e9
        out[f"{name}_others_busy_cores"] = t.others_busy_cores
    return out


def worker_ours(p: dict) -> dict:
    from updatelab.metrics.cost import lora_train_flops, non_embedding_params
    from updatelab.models.lm import load_lm
    from updatelab.training.examples import TrainExample
    from updatelab.training.train import train_lora
    from updatelab import hardware

    bl.set_threads(p["threads"])
    model, tok = load_lm(str(bl.LM_PATH), {"dtype": "float32"})
    n_base = non_embedding_params(model)
    examples = [TrainExample(**e) for e in json.loads(Path(p["examples_file"]).read_text())]
    import pytorch_lightning as pl

    class StepClock(pl.Callback):
        """Time and cumulative real tokens at the end of every optimizer step."""

        def __init__(self):
            self.start, self.marks = None, []

        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.marks.append((time.perf_counter(), int(pl_module.tokens)))

    clock = StepClock()
    trainer_cfg = {**p["trainer"], "enable_progress_bar": False, "callbacks": [clock]}
    with tempfile.TemporaryDirectory() as d:
        with bl.timed() as t:
            _, stats = train_lora(model, tok, examples, p["adapter"], trainer_cfg, out_dir=d, seed=0, logger=None,
                                  progress=False)
    step_tokens = [b - a for a, b in zip([0] + [k for _, k in clock.marks], [k for _, k in clock.marks])]
    return {
        **step_profile(clock.start, [t for t, _ in clock.marks], step_tokens),
        "precision": hardware.recorded().get("train", {}).get("precision"),  # what train_lora ran with
        "tokens": stats.tokens,
        "padding_fraction": stats.padding_fraction,
        "steps": stats.steps,
        "loop_wall_s": stats.wall_s,  # trainer.fit
        "e2e_wall_s": t.wall_s,  # train_lora: tokenize, inject LoRA, fit, save adapter
        "others_busy_cores": t.others_busy_cores,
        "cpu_s": t.cpu_s,
        "final_loss": stats.final_loss,
        "n_base": n_base,
        "n_adapter": stats.trainable_params,
        "computed_tokens": stats.computed_tokens,
        "flops": lora_train_flops(n_base, stats.trainable_params, stats.computed_tokens),
    }


def worker_hf(p: dict, bf16: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from updatelab.metrics.cost import lora_train_flops, non_embedding_params

    bl.set_threads(p["threads"])
    a = p["adapter"]
    tok = AutoTokenizer.from_pretrained(str(bl.LM_PATH))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(bl.LM_PATH))
    n_base = non_embedding_params(model)
    examples = json.loads(Path(p["examples_file"]).read_text())
    ds = Dataset.from_dict({"text": [hf_text(e, tok.eos_token) for e in examples]})

    from transformers import TrainerCallback

    counts = {"real": 0, "positions": 0, "per_batch": []}
    refused = None

    class StepClock(TrainerCallback):
        def __init__(self):
            self.start, self.marks = None, []

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.marks.append(time.perf_counter())

    clock = StepClock()

    class CountingCollator:
        """Passes batches through unchanged; counts real tokens and padded positions."""

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, features):
            batch = self.inner(features)
            counts["real"] += int(batch["attention_mask"].sum())
            counts["per_batch"].append(int(batch["attention_mask"].sum()))
            counts["positions"] += int(batch["attention_mask"].numel())
            return batch

    with tempfile.TemporaryDirectory() as d:
        with bl.timed() as t:
            tokenized = ds.map(lambda b: tok(b["text"], truncation=True, max_length=int(a["max_length"])),
                               batched=True, remove_columns=["text"])
            lcfg = LoraConfig(r=int(a["r"]), lora_alpha=float(a["alpha"]), lora_dropout=float(a["dropout"]),
                              target_modules=list(a["target_modules"]), task_type="CAUSAL_LM")
            peft_model = get_peft_model(model, lcfg)
            n_adapter = sum(q.numel() for q in peft_model.parameters() if q.requires_grad)
            seen: set[str] = set()  # dtype of a projection's output in training: did autocast happen?
            probe = next(m for n, m in peft_model.named_modules() if n.endswith("q_proj.base_layer"))
            hook = probe.register_forward_hook(lambda _m, _i, out: seen.add(str(out.dtype)))
            kwargs = dict(
                output_dir=d,
                per_device_train_batch_size=int(a["batch_size"]),
                num_train_epochs=1,
                learning_rate=float(a["lr"]),
                bf16=bf16,
                report_to=[],
                seed=0,
            )
            try:
                args = TrainingArguments(**kwargs)
            except ValueError as e:
                # transformers refuses bf16=True without a GPU ("You need to assign use_cpu if you
                # want to train the model on CPU"): do what the message says, and record it.
                if not bf16 or "use_cpu" not in str(e):
                    raise
                refused = f"{type(e).__name__}: {e}"
                kwargs["use_cpu"] = True
                args = TrainingArguments(**kwargs)
            trainer = Trainer(model=peft_model, args=args, train_dataset=tokenized,
                              data_collator=CountingCollator(DataCollatorForLanguageModeling(tok, mlm=False)),
                              callbacks=[clock])
            with bl.timed() as tl:
                result = trainer.train()
            peft_model.save_pretrained(str(Path(d) / "adapter"))
        hook.remove()
    tokens = counts["real"]
    return {
        # batch i is step i (no gradient accumulation); counted per batch because the loader
        # may fetch a batch ahead of the step that uses it
        **step_profile(clock.start, clock.marks, counts["per_batch"][: len(clock.marks)]),
        "precision": "bf16 (autocast)" if bf16 else "fp32",
        "tokens": tokens,
        "padding_fraction": 1.0 - tokens / counts["positions"] if counts["positions"] else 0.0,
        "steps": int(result.global_step),
        "loop_wall_s": tl.wall_s,  # trainer.train
        "e2e_wall_s": t.wall_s,  # datasets.map, get_peft_model, Trainer(...), train, save adapter
        "others_busy_cores": t.others_busy_cores,
        "cpu_s": t.cpu_s,
        "final_loss": float(result.training_loss),
        "n_base": n_base,
        "n_adapter": n_adapter,
        "flops": lora_train_flops(n_base, n_adapter, tokens),
        "training_arguments": {k: v for k, v in kwargs.items() if k != "output_dir"},
        "bf16_alone_refused": refused,
        "matmul_output_dtypes": sorted(seen),
        "accelerate_mixed_precision": str(getattr(trainer.accelerator, "mixed_precision", None)),
    }


def step_profile(start: float | None, ends: list[float], step_tokens: list[int]) -> dict:
    """First step (cold: kernel selection per new shape, allocator) vs the rest (steady state)."""
    out = {"step_ends_s": [t - start for t in ends] if start is not None else [], "step_tokens": step_tokens}
    if start is not None and ends:
        out["first_step_s"] = ends[0] - start
    if len(ends) >= 2:
        out["steady_tokens"] = sum(step_tokens[1:])
        out["steady_wall_s"] = ends[-1] - ends[0]
    return out


def worker(side: str, p: dict) -> dict:
    if side == "gemm":
        return worker_gemm(p)
    if side == "ours":
        return worker_ours(p)
    if side in ("hf_fp32", "hf_bf16"):
        try:
            return worker_hf(p, bf16=side == "hf_bf16")
        except Exception as e:  # bf16=True may be refused on some CPUs/versions: report, do not crash
            if side == "hf_bf16":
                return {"failed": f"{type(e).__name__}: {e}"}
            raise
    raise ValueError(side)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    repeats = args.repeats or (2 if args.quick else 3)
    n_examples = args.examples or (16 if args.quick else 128)
    print(f"[{NAME}] building the default update's training examples ...", flush=True)
    cfg = bl.default_config(["strategy=lora"])
    # One epoch, no dev selection: the throughput of the training loop itself.
    adapter = {**cfg["adapter"], "epochs": 1, "max_steps": None, "select": "last", "patience": None}
    if args.batch_size or args.quick:
        adapter["batch_size"] = args.batch_size or 8
    if args.max_length or args.quick:
        adapter["max_length"] = args.max_length or 64
    subset, data_info = build_examples(cfg, n_examples, seed=0)
    sides = [s for s in SIDES if s not in (args.skip or [])]
    with tempfile.TemporaryDirectory() as d:
        ex_file = Path(d) / "examples.json"
        ex_file.write_text(json.dumps(subset))
        params = {"threads": args.threads, "examples_file": str(ex_file), "adapter": adapter, "trainer": cfg["trainer"],
                  "gemm_seconds": 1.0 if args.quick else 3.0}

        def describe(r: dict) -> str:
            if "failed" in r:
                return f"FAILED: {r['failed'][:120]}"
            if "tokens" in r:
                return (f"{r['tokens']:6d} tok  loop {r['loop_wall_s']:6.1f} s = {r['tokens'] / r['loop_wall_s']:6.1f} tok/s"
                        f"  e2e {r['e2e_wall_s']:6.1f} s  pad {100 * r['padding_fraction']:4.1f}%"
                        f"  others {bl.fmt_cores(r['others_busy_cores'])}")
            return f"GEMM fp32 {r['fp32_gflops']:6.1f}  bf16 {r['bf16_gflops']:6.1f} GFLOP/s"

        print(f"[{NAME}] {len(subset)} examples, batch {adapter['batch_size']}, max_length {adapter['max_length']}, "
              f"{repeats} repeats, sides {sides}", flush=True)
        runs = bl.run_alternating(Path(__file__), sides, repeats, lambda s: params, describe=describe,
                                  quiet=bl.quiet_of(args))

    report = summarize_runs(runs, repeats)
    report.update({
        "name": NAME, "quick": bool(args.quick), "command": bl.command_line(), "machine": bl.machine_info(args.threads),
        "config": {"examples": data_info, "adapter": adapter, "trainer": cfg["trainer"], "repeats": repeats,
                   "model": str(bl.LM_PATH.relative_to(bl.ROOT)), "sides": sides},
        "runs": runs,
        "notes": {
            "tokens": "real (non-padding) tokens of the batches each side trained on, from their attention masks",
            "loop": "ours: trainer.fit inside train_lora (TrainStats.wall_s); HF: trainer.train()",
            "e2e": "from the examples to a saved adapter (tokenization, LoRA injection, trainer construction, "
                   "training, adapter save); model loading excluded on both sides",
            "flops": "updatelab.metrics.cost.lora_train_flops(N_base non-embedding, N_adapter, tokens) = "
                     "tokens x (4 N_base + 6 N_adapter)",
            "utilisation": "achieved FLOP/s over the training loop / the best 2048x2048 GEMM GFLOP/s of the run "
                           "in the side's compute dtype",
            "hf_loss": "the HF side trains plain causal LM on the whole sequence (prompt tokens too), ours masks "
                       "prompts; this changes the loss, not the compute",
        },
    })
    return report


def summarize_runs(runs: dict, repeats: int) -> dict:
    gemm = runs.get("gemm") or []
    peak = {k: max(r[f"{k}_gflops"] for r in gemm) for k in ("fp32", "bf16")} if gemm else {}
    per_side = {}
    for side in TRAIN_SIDES:
        rs = runs.get(side) or []
        if not rs or any("failed" in r for r in rs):
            per_side[side] = {"failed": next((r["failed"] for r in rs if "failed" in r), "not run")}
            continue
        loop_tps = [r["tokens"] / r["loop_wall_s"] for r in rs]
        e2e_tps = [r["tokens"] / r["e2e_wall_s"] for r in rs]
        gflops = [r["flops"] / r["loop_wall_s"] / 1e9 for r in rs]
        steady = [r["steady_tokens"] / r["steady_wall_s"] for r in rs if r.get("steady_wall_s")]
        dtype = "fp32" if rs[0]["precision"] in ("fp32", "32-true", "32") else "bf16"
        per_side[side] = {
            "precision": rs[0]["precision"],
            "tokens": rs[0]["tokens"],
            "padding_fraction": rs[0]["padding_fraction"],
            "steps": rs[0]["steps"],
            "loop_tokens_per_s": bl.summarize(loop_tps),
            "e2e_tokens_per_s": bl.summarize(e2e_tps),
            "steady_tokens_per_s": bl.summarize(steady) if len(steady) == len(rs) else None,
            "first_step_s": bl.summarize([r["first_step_s"] for r in rs]) if all("first_step_s" in r for r in rs) else None,
            "loop_wall_s": bl.summarize([r["loop_wall_s"] for r in rs]),
            "e2e_wall_s": bl.summarize([r["e2e_wall_s"] for r in rs]),
            "achieved_gflops": bl.summarize(gflops),
            "utilisation_dtype": dtype,
            "utilisation": (bl.summarize([g / peak[dtype] for g in gflops]) if peak else None),
            "others_busy_cores": bl.summarize_known([r["others_busy_cores"] for r in rs]),
            "n_base_non_embedding": rs[0]["n_base"],
            "n_adapter": rs[0]["n_adapter"],
        }
    ratios, goals = {}, {}
    ours = runs.get("ours") or []
    for hf in ("hf_fp32", "hf_bf16"):
        other = runs.get(hf) or []
        if not ours or not other or "failed" in per_side.get(hf, {}) or "failed" in per_side.get("ours", {}):
            continue
        ratios[f"ours_vs_{hf}"] = {
            "loop_tokens_per_s": bl.paired_ratio([r["tokens"] / r["loop_wall_s"] for r in ours],
                                                 [r["tokens"] / r["loop_wall_s"] for r in other]),
            "e2e_tokens_per_s": bl.paired_ratio([r["tokens"] / r["e2e_wall_s"] for r in ours],
                                                [r["tokens"] / r["e2e_wall_s"] for r in other]),
        }
        if all(r.get("steady_wall_s") for r in ours + other):
            ratios[f"ours_vs_{hf}"]["steady_tokens_per_s"] = bl.paired_ratio(
                [r["steady_tokens"] / r["steady_wall_s"] for r in ours], [r["steady_tokens"] / r["steady_wall_s"] for r in other])
    # The goal is against the faster HF precision of each repetition: each side at its own best.
    hf_ok = [hf for hf in ("hf_fp32", "hf_bf16") if runs.get(hf) and "failed" not in per_side.get(hf, {})]
    if ours and hf_ok and "failed" not in per_side.get("ours", {}):
        best = [max(runs[hf][i]["tokens"] / runs[hf][i]["loop_wall_s"] for hf in hf_ok) for i in range(len(ours))]
        ratios["ours_vs_best_hf"] = {"loop_tokens_per_s": bl.paired_ratio(
            [r["tokens"] / r["loop_wall_s"] for r in ours], best), "hf_sides": hf_ok}
        goals["ours_vs_best_hf"] = bl.goal_verdict(ratios["ours_vs_best_hf"]["loop_tokens_per_s"]["median"], GOAL)
    timed_runs = [r for s in TRAIN_SIDES for r in runs.get(s) or [] if "others_busy_cores" in r]
    token_counts = {s: v["tokens"] for s, v in per_side.items() if "tokens" in v}
    return {
        "contamination": bl.contamination(timed_runs),
        "peak_gflops": peak,
        "gemm": {k: bl.summarize([r[f"{k}_gflops"] for r in gemm]) for k in ("fp32", "bf16")} if gemm else {},
        "sides": per_side,
        "same_real_tokens_on_every_side": len(set(token_counts.values())) <= 1,
        "ratios": ratios,
        "goal": goals,
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    cfg = report["config"]
    ex = cfg["examples"]
    a = cfg["adapter"]
    lines = [f"## LoRA training throughput: `train_lora` vs HF `Trainer` + PEFT{' (QUICK)' if report['quick'] else ''}", ""]
    lines.append(f"SmolLM2-135M-Instruct, {ex['subset']} of the default update's {ex['all_examples']} training examples "
                 f"({ex['documents']} documents, {ex['qa_pairs']} QA pairs), batch {a['batch_size']}, max_length "
                 f"{a['max_length']}, LoRA r={a['r']} alpha={a['alpha']} on {len(a['target_modules'] or [])} linear kinds, "
                 f"1 epoch, {cfg['repeats']} alternated repeats. Tokens = real (non-padding) tokens.")
    lines.append("")
    rows = []
    for side, s in report["sides"].items():
        if "failed" in s:
            rows.append([side, "-", "-", "-", f"FAILED: {s['failed'][:80]}", "-", "-", "-", "-", "-", "-"])
            continue
        u = s["utilisation"]
        rows.append([
            side, s["precision"], s["tokens"], f"{100 * s['padding_fraction']:.1f}%",
            f"{s['loop_tokens_per_s']['median']:.0f} ({s['loop_tokens_per_s']['min']:.0f}–{s['loop_tokens_per_s']['max']:.0f})",
            f"{s['steady_tokens_per_s']['median']:.0f}" if s.get("steady_tokens_per_s") else "-",
            f"{s['first_step_s']['median']:.1f}" if s.get("first_step_s") else "-",
            f"{s['e2e_tokens_per_s']['median']:.0f}",
            f"{s['achieved_gflops']['median']:.1f}",
            f"{100 * u['median']:.0f}% of {s['utilisation_dtype']}" if u else "-",
            bl.fmt_others(s["others_busy_cores"]),
        ])
    lines.append(bl.md_table(["side", "precision", "tokens", "padding", "tok/s loop (min–max)", "tok/s after step 1",
                              "step 1 s", "tok/s end-to-end", "GFLOP/s (loop)", "utilisation", "others"], rows))
    if not report.get("same_real_tokens_on_every_side", True):
        lines += ["", "Note: the sides trained on different numbers of real tokens (tokenization differs); "
                      "tokens/s stays comparable, wall times do not."]
    hf_args = next((r.get("training_arguments") for r in report["runs"].get("hf_bf16") or [] if "training_arguments" in r), None)
    refused = next((r.get("bf16_alone_refused") for r in report["runs"].get("hf_bf16") or [] if r.get("bf16_alone_refused")), None)
    if hf_args:
        lines.append("")
        lines.append(f"hf_bf16 ran with `TrainingArguments({', '.join(f'{k}={v!r}' for k, v in hf_args.items())})`"
                     + (f"; `bf16=True` alone was refused: \"{refused}\"" if refused else "") + ".")
    lines.append("")
    pk = report.get("gemm") or {}
    if pk:
        lines.append(f"Matmul peak this run (2048², {m['torch_threads']} threads, median / best): fp32 "
                     f"{pk['fp32']['median']:.0f} / {pk['fp32']['max']:.0f} GFLOP/s, bf16 {pk['bf16']['median']:.0f} / "
                     f"{pk['bf16']['max']:.0f} GFLOP/s (utilisation uses the best).")
        lines.append("")
    for key, r in report["ratios"].items():
        g = report["goal"].get(key)
        verdict = "" if g is None else " — goal ≥ {}x (loop): {}".format(
            GOAL, "meets" if g["met"] else f"**MISSES** ({g['shortfall']})")
        steady = f", after step 1 {bl.fmt_ratio(r['steady_tokens_per_s'])}" if "steady_tokens_per_s" in r else ""
        e2e = f", end-to-end {bl.fmt_ratio(r['e2e_tokens_per_s'])}" if "e2e_tokens_per_s" in r else ""
        lines.append(f"- {key}: training loop {bl.fmt_ratio(r['loop_tokens_per_s'])}{steady}{e2e}{verdict}")
    lines += bl.report_footer(report)
    return "\n".join(lines)


def headline(report: dict) -> list[list[str]]:
    """Rows for run_all's summary: [comparison, result, goal, verdict]."""
    rows = []
    for key, r in report["ratios"].items():
        g = report["goal"].get(key)
        if g is None:
            continue
        rows.append([f"LoRA tok/s, {key.replace('_', ' ')} (training loop)", bl.fmt_ratio(r["loop_tokens_per_s"]),
                     f"≥ {GOAL:g}x", "met" if g["met"] else f"MISSED: {g['shortfall']}"])
    for side, s in report["sides"].items():
        if "failed" in s:
            rows.append([f"LoRA {side}", "failed", "-", s["failed"][:100]])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bl.common_args(p, default_repeats=3)
    p.add_argument("--examples", type=int, default=None, help="training examples (default 128, quick 16)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the adapter config's (16); quick 8")
    p.add_argument("--max-length", type=int, default=None, help="default: the adapter config's (128); quick 64")
    p.add_argument("--skip", nargs="*", choices=SIDES, help="sides to leave out")
    bl.main(NAME, p.parse_args(), worker, run, markdown)


if __name__ == "__main__":
    sys.exit(main())
