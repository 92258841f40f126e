"""Batches of token rows for a model, and its hidden states back to one vector per row: the
padding and the mean pooling that generation, the embedder and the shift probes share."""

from __future__ import annotations

from typing import Sequence

import torch


def pad_batch(tokenizer, rows: Sequence[Sequence[int]], side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows -> (ids, attention mask), padded by `tokenizer.pad` with its pad token: on the
    left for generation (a decoder-only model continues every row right after its last real
    token), on the right for a plain forward (positions and causal attention stay as unpadded)."""
    out = tokenizer.pad({"input_ids": [list(r) for r in rows]}, padding=True, padding_side=side, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(..., batch, tokens, dim) hidden states, (batch, tokens) mask -> (..., batch, dim): the
    mean over each row's real tokens (a row without any gives zeros), in float32 at least: bf16
    hidden states under autocast are summed in float32."""
    w = mask.to(hidden.device).unsqueeze(-1).float()
    return (hidden * w).sum(-2) / w.sum(-2).clamp(min=1.0)
