"""Benchmark: batched RAG answering, updatelab `generate` vs one `model.generate` call per question.

Same model (SmolLM2-135M-Instruct, the packaged safetensors cache), same prompts: a seeded
sample of the default update's questions (all splits; one eval batch by default, since the
one-call-per-question side is slow), each rendered as the `reembed` arm renders it —
the chat template, the system turn and the top-k KB v1 passages the default embedder and a
FAISS flat index retrieve for it (configs/eval/default.yaml, configs/embedder/minilm_l6.yaml).
Greedy decoding, the same `max_new_tokens`, EOS stops a row.

Sides (each in a fresh process, alternated; each does one warm-up call on 4 prompts first):

  ours        `updatelab.models.lm.generate(model, tok, prompts, max_new_tokens, batch_size)` with
              the eval config's batch size and `autocast: auto` (the precision this machine's
              measurement chose for the `generate` phase): length-sorted, left-padded batches
  loop_fp32   what a user writes first: for each prompt, `tok(prompt, return_tensors="pt")` and
              `model.generate(**enc, max_new_tokens, do_sample=False)`, fp32
  loop_bf16   the same loop under `torch.autocast("cpu", torch.bfloat16)`

The ratio is against the faster of the two loops in the same repetition, so each side runs at
its own best precision on this machine. Answers must agree: the share of questions whose
answer text is identical between ours and loop_fp32 is reported (batching and padding change
float rounding, so a few may differ; identical precision would not make them bit-equal either).

    python experiments/bench/rag_generation.py            # 64 questions, 2 repeats
    python experiments/bench/rag_generation.py --quick    # 8 questions, 2 repeats (smoke test)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import benchlib as bl

NAME = "rag_generation"
GOAL = 4.0
SIDES = ["ours", "loop_fp32", "loop_bf16"]
LOOPS = ["loop_fp32", "loop_bf16"]


def build_prompts(cfg: dict, n: int | None) -> tuple[list[str], dict]:
    """The `reembed` arm's RAG prompts for the default update's questions."""
    import numpy as np
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from updatelab.evaluation import prompt_builder
    from updatelab.pipeline import load_knowledge_update
    from updatelab.retrieval.embedder import build_embedder
    from updatelab.retrieval.index import build_index, search

    tok = AutoTokenizer.from_pretrained(str(bl.LM_PATH))
    update = load_knowledge_update(OmegaConf.create(cfg["data"]), cfg["paths"]["data_dir"])
    questions = list(update.questions)
    if n and n < len(questions):  # a seeded sample across the splits, in file order
        import random

        questions = [questions[i] for i in sorted(random.Random(0).sample(range(len(questions)), n))]
    emb = build_embedder(bl.embedder_path(), cfg["embedder"])
    docs = [d.text for d in update.kb_v1]
    vecs, _ = emb.encode(docs)
    index = build_index(np.asarray(vecs, dtype=np.float32), {"kind": "flat"})
    k = int(cfg["eval"]["top_k"])
    _, hits = search(index, emb.encode_queries([q.question for q in questions]), k)
    builder = prompt_builder(OmegaConf.create(cfg["eval"]))
    prompts = [builder.render(tok, q.question, [docs[i] for i in row]) for q, row in zip(questions, hits.tolist())]
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    info = {"questions": len(prompts), "top_k": k, "update": update.name,
            "prompt_tokens_mean": sum(lengths) / len(lengths), "prompt_tokens_max": max(lengths)}
    return prompts, info


def worker(side: str, p: dict) -> dict:
    import torch

    from updatelab.models.lm import generate, generation_autocast, load_lm

    bl.set_threads(p["threads"])
    prompts = json.loads(Path(p["prompts_file"]).read_text())
    model, tok = load_lm(str(bl.LM_PATH), {"dtype": "float32"})
    n_new = p["max_new_tokens"]
    if side == "ours":
        precision = generation_autocast(model, tok, prompts, p["autocast"])  # the cached per-machine choice
        generate(model, tok, prompts[:4], max_new_tokens=n_new, batch_size=4, autocast=precision, progress=False)
        with bl.timed() as t:
            answers, stats = generate(model, tok, prompts, max_new_tokens=n_new, batch_size=p["batch_size"],
                                      autocast=precision, progress=False)
        info = {"batch_size": p["batch_size"], "precision": precision or "float32",
                "generated_tokens": stats.generated_tokens}
    elif side in LOOPS:
        dtype = torch.bfloat16 if side == "loop_bf16" else None
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

        def answer(prompt: str) -> tuple[str, int]:
            enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
            ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
            with torch.no_grad(), ctx:
                out = model.generate(**enc, max_new_tokens=n_new, do_sample=False, num_beams=1, pad_token_id=pad)
            new = out[0, enc["input_ids"].shape[1]:]
            return tok.decode(new, skip_special_tokens=True).strip(), int(new.numel())

        for prompt in prompts[:4]:
            answer(prompt)
        with bl.timed() as t:
            results = [answer(prompt) for prompt in prompts]
        answers = [a for a, _ in results]
        info = {"batch_size": 1, "precision": "bfloat16" if dtype else "float32",
                "generated_tokens": sum(n for _, n in results)}
    else:
        raise ValueError(side)
    Path(p["answers_dir"], f"{side}_{p['repeat']}.json").write_text(json.dumps(answers))
    return {"questions": len(prompts), "questions_per_s": len(prompts) / t.wall_s, **t.as_dict(), **info}


def run(args: argparse.Namespace) -> dict:
    repeats = args.repeats or 2
    cfg = bl.default_config(["strategy=reembed"])
    prompts, data_info = build_prompts(cfg, args.questions or (8 if args.quick else 64))
    eval_cfg = cfg["eval"]
    print(f"[{NAME}] {len(prompts)} RAG prompts (mean {data_info['prompt_tokens_mean']:.0f} tokens), "
          f"{repeats} repeats, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as d:
        prompts_file = Path(d) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        reps = {s: 0 for s in SIDES}

        def params_for(side: str) -> dict:
            reps[side] += 1
            return {"threads": args.threads, "prompts_file": str(prompts_file), "answers_dir": d,
                    "repeat": reps[side] - 1, "max_new_tokens": int(eval_cfg["max_new_tokens"]),
                    "batch_size": int(eval_cfg["batch_size"]), "autocast": eval_cfg["autocast"]}

        runs = bl.run_alternating(
            Path(__file__), SIDES, repeats, params_for,
            describe=lambda r: f"{r['questions_per_s']:7.2f} questions/s  ({r['wall_s']:.1f} s, {r['precision']}, "
                               f"others {bl.fmt_cores(r['others_busy_cores'])})",
            quiet=bl.quiet_of(args),
        )
        ours_answers = json.loads((Path(d) / "ours_0.json").read_text())
        loop_answers = json.loads((Path(d) / "loop_fp32_0.json").read_text())
    same = sum(a == b for a, b in zip(ours_answers, loop_answers)) / len(prompts)
    best_loop = [max(runs[s][i]["questions_per_s"] for s in LOOPS) for i in range(repeats)]
    ratio = bl.paired_ratio([r["questions_per_s"] for r in runs["ours"]], best_loop)
    return {
        "name": NAME, "quick": bool(args.quick), "command": bl.command_line(), "machine": bl.machine_info(args.threads),
        "config": {"repeats": repeats, "max_new_tokens": int(eval_cfg["max_new_tokens"]),
                   "batch_size": int(eval_cfg["batch_size"]), **data_info},
        "sides": {s: {"questions_per_s": bl.summarize([r["questions_per_s"] for r in runs[s]]),
                      "wall_s": bl.summarize([r["wall_s"] for r in runs[s]]),
                      "others_busy_cores": bl.summarize_known([r["others_busy_cores"] for r in runs[s]]),
                      "precision": runs[s][0]["precision"], "batch_size": runs[s][0]["batch_size"],
                      "generated_tokens": runs[s][0]["generated_tokens"]} for s in SIDES},
        "ratio": {"ours_vs_best_loop": ratio},
        "answers_identical_to_loop_fp32": same,
        "contamination": bl.contamination([r for s in SIDES for r in runs[s]]),
        "goal": {"speed": bl.goal_verdict(ratio["median"], GOAL)},
        "runs": runs,
        "notes": {"timing": "wall time of answering every prompt after a 4-prompt warm-up in the same process; "
                            "model loading and retrieval excluded"},
    }


def markdown(report: dict) -> str:
    c, g = report["config"], report["goal"]
    lines = [f"## Batched RAG generation: `generate` vs one `model.generate` per question{' (QUICK)' if report['quick'] else ''}",
             "",
             f"SmolLM2-135M-Instruct, {c['questions']} RAG prompts of the default update (top-{c['top_k']} passages, "
             f"mean {c['prompt_tokens_mean']:.0f} / max {c['prompt_tokens_max']} prompt tokens), greedy, "
             f"max_new_tokens {c['max_new_tokens']}, {c['repeats']} alternated repeats.", ""]
    rows = []
    for s, v in report["sides"].items():
        q = v["questions_per_s"]
        rows.append([s, v["precision"], v["batch_size"], f"{q['median']:.2f} ({q['min']:.2f}–{q['max']:.2f})",
                     f"{v['wall_s']['median']:.1f}", v["generated_tokens"], bl.fmt_others(v["others_busy_cores"])])
    lines.append(bl.md_table(["side", "precision", "batch", "questions/s (min–max)", "wall s", "new tokens", "others"], rows))
    lines.append("")
    verdict = "meets" if g["speed"]["met"] else f"**MISSES** ({g['speed']['shortfall']})"
    lines.append(f"- speed ours / faster loop: {bl.fmt_ratio(report['ratio']['ours_vs_best_loop'])} — goal ≥ {GOAL:g}x: {verdict}")
    lines.append(f"- answers identical to the fp32 loop: {100 * report['answers_identical_to_loop_fp32']:.1f}% of questions")
    lines += bl.report_footer(report)
    return "\n".join(lines)


def headline(report: dict) -> list[list[str]]:
    g = report["goal"]["speed"]
    return [["RAG answers/s, batched vs one generate per question (faster precision)",
             bl.fmt_ratio(report["ratio"]["ours_vs_best_loop"]), f"≥ {GOAL:g}x",
             "met" if g["met"] else f"MISSED: {g['shortfall']}"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bl.common_args(p, default_repeats=2)
    p.add_argument("--questions", type=int, default=None,
                   help="questions answered per side (default 64, a seeded sample of the default update's; quick 8)")
    bl.main(NAME, p.parse_args(), worker, run, markdown)


if __name__ == "__main__":
    sys.exit(main())
