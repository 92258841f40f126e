"""Behavioural shift: KL divergence between the base and the updated LM's next-token distributions.

CKA compares representations and can stay high while behaviour changes (Davari et al. 2023);
the KL divergence of the next-token distributions measures the change in what the model says.
Direction: KL(base || updated) = sum_v p_base(v) (log p_base(v) - log p_updated(v)), in nats,
averaged over every real (non-padding) token of the probe text: the expected extra code length
of the base model's text under the updated model, the quantity forgetting is about.

Per layer, the logit lens (nostalgebraist 2020): the final norm and the LM head applied to each
block's hidden state read it as a next-token distribution; block i's KL compares the base's and
the updated model's readings of block i. The last block's reading is the model's own output
(Hugging Face's last hidden state already carries the final norm), so its KL is the mean KL.
The lens costs a vocabulary-sized head and softmax per block and token, the bulk of the whole
measurement: `lens_tokens` reads it on an evenly spaced subset of the real tokens (every k-th in
text order, deterministic); the mean KL is always over every real token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch

from updatelab.models.batching import pad_batch
from updatelab.models.lm import autocast_context

__all__ = ["kl_from_logits", "LMSide", "final_norm_and_head", "next_token_kl"]

_FINAL_NORMS = ("norm", "final_layernorm", "ln_f")  # Llama/Mistral/Qwen, Phi, GPT-2


def kl_from_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) in nats per row, P and Q the softmax of the last dimension.

    Computed in float64 for float64 input, else in float32: over a 50k vocabulary and thousands
    of tokens float64 is most of the measurement's time, and float32 rounding (~1e-6 nats per
    row) is far below the differences between arms. Identical rows give exactly 0 in either:
    log-softmax is a deterministic function of its input, so log p - log q is 0.0 term by term.
    Rounding can leave a true KL near 0 as a tiny negative number; KL is never negative, so it is
    clamped at 0.
    """
    dtype = torch.float64 if torch.float64 in (p_logits.dtype, q_logits.dtype) else torch.float32
    logp = torch.log_softmax(p_logits.to(dtype), dim=-1)
    logq = torch.log_softmax(q_logits.to(dtype), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def final_norm_and_head(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """hidden state -> logits through the model's final norm and LM head (PEFT-wrapped or not);
    None when the architecture names its final norm otherwise."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else getattr(inner, "model", None)
    norm = next((getattr(decoder, n) for n in _FINAL_NORMS if decoder is not None and hasattr(decoder, n)), None)
    if head is None or norm is None:
        return None
    return lambda h: head(norm(h))


@dataclass
class LMSide:
    """One side of the comparison: a causal LM and the context its calls run in (for a PEFT
    model's base side, ``model.disable_adapter``; the same model object serves both sides)."""

    model: Any
    context: Callable[[], ContextManager] = field(default=contextlib.nullcontext)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        with self.context():
            return self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    def lens(self, hidden: torch.Tensor) -> torch.Tensor:
        head = final_norm_and_head(self.model)
        with self.context():
            return head(hidden)


@torch.inference_mode()
def next_token_kl(
    base: LMSide, updated: LMSide | None, tokenizer, texts: Sequence[str], batch_size: int = 4,
    max_length: int = 128, autocast: str | None = None, per_layer: bool = True, lens_tokens: int | None = None,
) -> dict[str, Any]:
    """``kl_mean`` (nats per real token) and, with `per_layer`, ``kl_per_layer`` (index = block)
    over ``kl_lens_tokens`` tokens: all real tokens, or about `lens_tokens` of them, evenly spaced.

    `updated` None: the arm's LM is the base object itself; one forward serves both sides and
    the KL is computed from it (exactly 0). Texts are tokenized as the CKA probe does
    (`metrics.shift.pooled_hidden_states`) and right-padded; padding positions are dropped
    before the vocabulary-sized head, which is where the cost is.
    """
    if not texts:
        raise ValueError("next-token KL needs at least one probe text")
    model = base.model
    device = next(model.parameters()).device
    if per_layer and (final_norm_and_head(model) is None
                      or (updated is not None and final_norm_and_head(updated.model) is None)):
        per_layer = False  # no logit lens for this architecture: the mean KL alone
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    n_real = sum(len(r) for r in enc)
    stride = 1 if lens_tokens is None or lens_tokens >= n_real else -(-n_real // int(lens_tokens))
    n_lens = 0
    total = torch.zeros((), dtype=torch.float64)  # sums of float32 rows, accumulated in float64
    per_block: torch.Tensor | None = None
    n_tokens = 0
    for start in range(0, len(enc), batch_size):
        ids, mask = pad_batch(tokenizer, enc[start : start + batch_size])
        ids, mask = ids.to(device), mask.to(device)
        real = mask.bool()
        with autocast_context(device, autocast):
            out_b = base.forward(ids, mask)
            out_u = out_b if updated is None else updated.forward(ids, mask)
            kl = kl_from_logits(out_b.logits[real].float(), out_u.logits[real].float())
            total += kl.double().sum().cpu()
            n_here = int(real.sum())
            if per_layer:
                # `real` flattens row by row: the batch's real tokens in text order.
                lens = (torch.arange(n_tokens, n_tokens + n_here, device=device) % stride) == 0
                n_blocks = len(out_b.hidden_states) - 1  # hidden_states[0] is the embedding output
                if per_block is None:
                    per_block = torch.zeros(n_blocks, dtype=torch.float64)
                # Blocks 0..n-2 stacked: one head call per side (a PEFT side's context toggles
                # every adapted module; the last block's reading is the output, `kl` above).
                m = int(lens.sum())

                def stacked(out) -> torch.Tensor:
                    return torch.cat([out.hidden_states[i + 1][real][lens] for i in range(n_blocks - 1)])

                lb = base.lens(stacked(out_b))
                lu = lb if updated is None else updated.lens(stacked(out_u))
                per_block[: n_blocks - 1] += kl_from_logits(lb.float(), lu.float()).view(n_blocks - 1, m).double().sum(1).cpu()
                per_block[n_blocks - 1] += kl[lens].double().sum().cpu()
                n_lens += m
            n_tokens += n_here
    out: dict[str, Any] = {"kl_mean": float(total / n_tokens), "kl_n_tokens": n_tokens}
    if per_block is not None:
        out["kl_per_layer"] = [float(v) for v in per_block / n_lens]
        out["kl_lens_tokens"] = n_lens
    return out
