"""Latent-space shift: how far an arm moved the model's internal geometry from the base.

Hidden states of a fixed probe set (the evaluation questions plus general text), pooled per
sequence, for the embedding output and every block, compared between the base and the arm's
model by CKA layer by layer (debiased minibatch CKA, Nguyen, Raghu & Kornblith 2021; plain
linear CKA beside it) and across layers (base layer i vs updated layer j).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from updatelab.metrics.cka_streaming import LinearCKAAccumulator, MinibatchCKA
from updatelab.models.batching import mean_pool, pad_batch
from updatelab.models.lm import autocast_context
from updatelab.progress import steps

GENERAL_TEXT = Path(__file__).with_name("general_text.txt")


def probe_texts(questions: Sequence[Any]) -> list[str]:
    general = [line.strip() for line in GENERAL_TEXT.read_text().splitlines() if line.strip()]
    return [q.question for q in questions] + general


@torch.inference_mode()
def pooled_hidden_states(
    model, tokenizer, texts: Sequence[str], batch_size: int = 32, pooling: str = "mean", autocast: str | None = "bfloat16",
    max_length: int = 128, progress: bool = False, desc: str = "probe",
) -> torch.Tensor:
    """(layers, n, d) float32: embedding output and every block, pooled per sequence.

    Works for a causal LM (PEFT-wrapped or not) and for an encoder (the embedder).
    Mean pooling averages non-padding tokens; `last` takes each sequence's last real token.
    """
    device = next(model.parameters()).device
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    out: list[torch.Tensor] = []
    for start in steps(range(0, len(texts), batch_size), desc, progress):
        ids, mask = pad_batch(tokenizer, enc[start : start + batch_size])
        with autocast_context(device, autocast):
            hs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
        stacked = torch.stack([h.float() for h in hs])  # (layers, b, t, d)
        m = mask.to(stacked.device)
        if pooling == "last":
            last = m.sum(1) - 1
            pooled = stacked[:, torch.arange(len(last)), last]
        else:
            pooled = mean_pool(stacked, m)
        out.append(pooled.cpu())
    return torch.cat(out, dim=1)


def cached_states(cache_dir: str | Path, key_parts: Any, compute) -> torch.Tensor:
    """The base model's probe states are computed once per (model, probe) and shared by arms."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / "probe_states" / f"{key}.pt"
    if path.exists():
        return torch.load(path)
    states = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    os.close(fd)
    torch.save(states, tmp)
    os.replace(tmp, path)
    return states


def compare(base: torch.Tensor, updated: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Per-layer debiased minibatch CKA, plain linear CKA and the cross-layer matrix."""
    n = base.shape[1]
    if n < 4:
        raise ValueError(f"latent shift needs at least 4 probe sequences, got {n}")
    # Every minibatch needs n >= 4 for the unbiased HSIC: fold a short last batch into the previous one.
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 4:
        bounds.pop(-2)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)  # batches mix question and general-text probes
    mb, lin = MinibatchCKA(), LinearCKAAccumulator(pairs="diagonal")
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = perm[lo:hi]
        a, b = list(base[:, idx]), list(updated[:, idx])
        mb.update(a, b)
        lin.update(a, b)
    debiased, linear = mb.compute(), lin.compute()
    per_layer = [float(v) for v in torch.as_tensor(debiased["diagonal"])]
    per_layer_lin = [float(v) for v in torch.as_tensor(linear["diagonal"])]
    return {
        "cka_per_layer": per_layer,
        "cka_linear_per_layer": per_layer_lin,
        "cross_layer": torch.as_tensor(debiased["cross"]).tolist(),
        "cka_mean": float(np.mean(per_layer)),
        "cka_min": float(np.min(per_layer)),
        "n_probe": int(n),
    }


def kb_drift(v0: dict[str, np.ndarray], v1: dict[str, np.ndarray], changed: set[str]) -> dict[str, Any]:
    """Cosine between each document's v0 and v1 embedding, for documents in both KB versions."""
    common = sorted(set(v0) & set(v1))

    def summary(ids: list[str]) -> dict[str, Any]:
        if not ids:
            return {"n": 0, "mean": None, "min": None}
        a = np.stack([v0[i] for i in ids]).astype(np.float64)
        b = np.stack([v1[i] for i in ids]).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(1e-12)
        return {"n": len(ids), "mean": float(cos.mean()), "min": float(cos.min()), "p10": float(np.quantile(cos, 0.1))}

    return {
        "changed": summary([i for i in common if i in changed]),
        "unchanged": summary([i for i in common if i not in changed]),
        "n_new_docs": len(set(v1) - set(v0)),
        "n_removed_docs": len(set(v0) - set(v1)),
    }
