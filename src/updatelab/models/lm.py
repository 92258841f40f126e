"""Loading the LM and answering questions by batched greedy generation."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from updatelab.models.batching import pad_batch
from updatelab.progress import steps


def autocast_context(device: str | torch.device, dtype_name: str | None):
    """Autocast to `dtype_name` (None/"float32": none). "auto" must be resolved first
    (`updatelab.hardware.choose`; `generate` and `Embedder` do it themselves)."""
    if not dtype_name or dtype_name in ("float32", "fp32", "none"):
        return contextlib.nullcontext()
    if dtype_name == "auto":
        raise ValueError("autocast 'auto' is decided by updatelab.hardware.choose; pass the chosen dtype name here")
    dtype = getattr(torch, dtype_name)
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def load_lm(path: str, cfg: Mapping[str, Any], device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trust = bool(cfg.get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, cfg.get("dtype", "float32")), trust_remote_code=trust
    )
    model.to(device).eval()
    return model, tokenizer


@dataclass
class PromptBuilder:
    """One prompt format for every arm, so that arms differ only in strategy.

    The instruct model needs its chat template; a system turn asking for only the answer
    keeps it from restating the passage (experiments/fair_contest/README.md, "The prompt").
    """

    system: str  # closed-book system turn
    rag_user: str
    closed_user: str
    rag_system: str | None = None  # system turn when passages are given (default: `system`)

    def messages(self, question: str, passages: Sequence[str] | None) -> list[dict[str, str]]:
        if passages is None:
            user = self.closed_user.format(question=question)
        else:
            # Unnumbered passages: with "[1] ..." the 135M model tends to echo the markers.
            context = "\n".join(passages)
            user = self.rag_user.format(question=question, context=context)
        msgs = [{"role": "user", "content": user}]
        system = self.system if passages is None or self.rag_system is None else self.rag_system
        if system:
            msgs.insert(0, {"role": "system", "content": system})
        return msgs

    def render(self, tokenizer, question: str, passages: Sequence[str] | None) -> str:
        return tokenizer.apply_chat_template(
            self.messages(question, passages), tokenize=False, add_generation_prompt=True
        )


@dataclass
class GenerationStats:
    prompts: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # per prompt, amortised within a batch
    truncated: list[bool] = field(default_factory=list)  # per prompt: the budget ran out before an end token


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    autocast: str | None = "auto",
    progress: bool = True,
    desc: str = "generate",
) -> tuple[list[str], GenerationStats]:
    """Greedy answers for chat-rendered prompts, in input order.

    Prompts are sorted by length so that left padding wastes little compute, and answered one
    batch per `generate` call (experiments/bench compares it with one call per prompt). `autocast`:
    a dtype name, None (fp32) or "auto" (`generation_autocast`).
    """
    device = next(model.parameters()).device
    autocast = generation_autocast(model, tokenizer, prompts, autocast)
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    answers: list[str] = [""] * len(prompts)
    stats = GenerationStats(prompts=len(prompts), latencies_s=[0.0] * len(prompts), truncated=[False] * len(prompts))
    pad_id = tokenizer.pad_token_id
    eos_ids = model.generation_config.eos_token_id
    stop_ids = {pad_id, *(eos_ids if isinstance(eos_ids, (list, tuple)) else [eos_ids])} - {None}
    start = time.perf_counter()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in steps(batches, desc, progress):
        ids, mask = pad_batch(tokenizer, [enc[i] for i in batch], side="left")
        width = ids.shape[1]
        t0 = time.perf_counter()
        with autocast_context(device, autocast):
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
            )
        dt = time.perf_counter() - t0
        new = out[:, width:]
        for row, i in enumerate(batch):
            toks = new[row]
            stop = (toks == pad_id).nonzero()
            n_gen = int(stop[0]) if len(stop) else len(toks)
            stats.generated_tokens += n_gen
            stats.prompt_tokens += len(enc[i])
            stats.latencies_s[i] = dt / len(batch)
            stats.truncated[i] = 0 < n_gen == len(toks) and int(toks[-1]) not in stop_ids
            answers[i] = tokenizer.decode(toks[:n_gen], skip_special_tokens=True).strip()
    stats.wall_s = time.perf_counter() - start
    return answers, stats


# Generation's precision is measured on a batch shaped like the expensive case (RAG prompts, a batch
# of several): a few short closed-book prompts are all overhead, and there fp32 and bf16 tie.
MEASURE_PROMPTS, MEASURE_WORDS, MEASURE_NEW_TOKENS = 8, 96, 4


def generation_autocast(model, tokenizer, prompts: Sequence[str], requested: str | None = "auto") -> str | None:
    """The autocast dtype `generate` runs with (`updatelab.hardware.choose`, phase ``generate``):
    explicit values unchanged; "auto" times one fixed batch (`MEASURE_PROMPTS` texts of
    `MEASURE_WORDS` words, `MEASURE_NEW_TOKENS` new tokens, greedy) in fp32 and under bf16
    autocast, once per machine. `prompts` only says whether there is anything to generate."""
    from updatelab import hardware

    device = next(model.parameters()).device
    if requested != "auto":
        hardware.choose("generate", requested, model=hardware.model_id(model, adapter=False), device=device)  # recorded
        return requested
    sample = hardware.sample_texts(MEASURE_PROMPTS, MEASURE_WORDS)

    def measure(candidate: str) -> None:
        generate(model, tokenizer, sample, max_new_tokens=MEASURE_NEW_TOKENS, batch_size=len(sample),
                 autocast=candidate, progress=False)

    shape = f"{MEASURE_PROMPTS}x{MEASURE_WORDS}w+{MEASURE_NEW_TOKENS}"  # in the key: another shape, another measurement
    return hardware.choose("generate", "auto", measure=measure if prompts else None,
                           model=f"{hardware.model_id(model, adapter=False)}:{shape}", device=device).precision
