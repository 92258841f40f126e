"""Self-generated rehearsal: the base model's own answers to general prompts, replayed in training.

Fine-tuning a small model on new facts makes it answer everything with them (it forgets the
general split and the unchanged facts); mixing in the base model's own answers to unrelated
prompts keeps its behaviour where the update does not reach, and needs no data from outside the
machine. The prompts (`replay_prompts.txt`) are disjoint from the `general` split's questions.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from updatelab.io import atomic_write_text
from updatelab.models.lm import PromptBuilder, generate
from updatelab.training.examples import TrainExample


def replay_prompts() -> list[str]:
    text = resources.files("updatelab.data").joinpath("replay_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def rehearsal_examples(
    model,
    tokenizer,
    builder: PromptBuilder,
    eval_cfg: Any,
    cache_dir: str | Path,
    model_key: str,
    passages_for: Callable[[list[str]], list[list[str]] | None] = lambda questions: None,
    progress: bool = False,
) -> tuple[list[TrainExample], bool]:
    """One example per replay prompt: the prompt as the evaluation renders it (with the passages
    `passages_for(questions)` gives, for a RAG arm) and the base model's greedy answer to it.

    Answers are cached under `cache_dir` by a hash of `model_key` and the rendered prompts, so
    every arm and seed sharing them generates once. Returns (examples, whether cached).
    """
    questions = replay_prompts()
    passages = passages_for(questions) or [None] * len(questions)
    prompts = [builder.render(tokenizer, q, p) for q, p in zip(questions, passages)]
    key = hashlib.sha256(json.dumps({"model": model_key, "prompts": prompts,
                                     "max_new_tokens": int(eval_cfg.max_new_tokens)}).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / "replay" / f"{key}.json"
    if cache.exists():
        answers, cached = json.loads(cache.read_text(encoding="utf-8")), True
    else:
        answers, _ = generate(model, tokenizer, prompts, max_new_tokens=int(eval_cfg.max_new_tokens),
                              batch_size=int(eval_cfg.batch_size), autocast=eval_cfg.autocast, progress=progress,
                              desc="replay answers")
        atomic_write_text(cache, json.dumps(answers))
        cached = False
    end = tokenizer.eos_token or ""
    examples = [TrainExample(prompt=p, completion=a + end, add_eos=False) for p, a in zip(prompts, answers) if a]
    return examples, cached


def take_cyclic(pool: Sequence[TrainExample], n: int) -> list[TrainExample]:
    """`n` examples from `pool`, cycling through it (a small pool is replayed several times)."""
    return [pool[i % len(pool)] for i in range(n)] if pool else []
