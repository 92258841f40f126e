"""Retrieval quality against the gold document of each question."""

from __future__ import annotations

from typing import Sequence


def recall_at_k(retrieved: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> float:
    if not gold:
        return float("nan")
    return sum(g in list(r)[:k] for r, g in zip(retrieved, gold)) / len(gold)


def mrr(retrieved: Sequence[Sequence[str]], gold: Sequence[str]) -> float:
    """Mean reciprocal rank within the retrieved list (0 when the gold document is absent)."""
    if not gold:
        return float("nan")
    total = 0.0
    for r, g in zip(retrieved, gold):
        r = list(r)
        total += 1.0 / (r.index(g) + 1) if g in r else 0.0
    return total / len(gold)
