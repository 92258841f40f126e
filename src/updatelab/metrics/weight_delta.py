"""Weight-space shift per module: intruder dimensions, and the size and rank of ΔW.

Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence"): singular vectors of the fine-tuned weight that resemble none of the pre-trained
weight's singular vectors. For each of the top-k left singular vectors of W_updated, the largest
|cosine| with any left singular vector of W_base; below `epsilon` it is an intruder. LoRA tends to
create them, full fine-tuning much less, and their number tracks forgetting. The definition is the
one in peft's `reduce_intruder_dimension` (peft/tuners/lora/intruders.py); peft ships it only as a
mitigation that adds an adapter to the model, so the count is computed here.

Cost. A LoRA's ΔW = B·A·scale has rank r: its singular values come from the r×r core of two thin
QR factorisations, exactly, without forming ΔW. Singular vectors come from the eigendecomposition
of the smaller Gram matrix (float64), not an SVD (a randomized SVD is no substitute: the spectra of
LLM weights are flat, and its top vectors come out as mixtures that look like intruders); the base weight's full set of left singular vectors, which every arm's count is compared with, is
computed once per process and weight (kept by a hash of the weight's bytes).

Effective rank (Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality"):
exp of the Shannon entropy of the singular values normalised to sum 1: k equal singular values
give k, one dominant one gives ~1.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterator

import torch

__all__ = ["effective_rank", "intruder_dimensions", "module_delta", "changed_weights", "block_index", "summarise"]

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(H(p)), p = s / sum(s); 0.0 for an all-zero matrix (no direction at all)."""
    s = singular_values.detach().double().clamp_min(0.0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


_BASE_U: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}


def left_singular_vectors(w: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The top-k (None: all min(m, n)) left singular vectors of `w` (columns), from the
    eigendecomposition of the smaller Gram matrix in float64: for the block weights of an LLM
    (one side a few hundred) that is several times faster than an SVD. Directions whose singular
    value is ~0 are not defined by `w` (any completion is an SVD); they come out of the Gram
    matrix's eigenvectors as well."""
    w = w.detach().double()
    m, n = w.shape
    if m <= n:
        vals, vecs = torch.linalg.eigh(w @ w.T)  # ascending
        u = vecs.flip(-1)
    else:
        vals, vecs = torch.linalg.eigh(w.T @ w)
        v, s = vecs.flip(-1), vals.flip(-1).clamp_min(0).sqrt()
        # u_i = W v_i / s_i, re-orthonormalised (QR, signs kept): rounding in W v_i / s_i for
        # small s_i would otherwise leave the columns slightly non-orthogonal.
        q, r = torch.linalg.qr((w @ v) / s.clamp_min(torch.finfo(torch.float64).tiny))
        u = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
    u = u if k is None else u[:, :k]
    return u.float()


def base_left_singular_vectors(w_base: torch.Tensor) -> torch.Tensor:
    """All left singular vectors of `w_base` (columns), computed once per process and weight."""
    w = w_base.detach().float().contiguous()
    key = (hashlib.blake2b(w.numpy().tobytes(), digest_size=16).hexdigest(), tuple(w.shape))
    if key not in _BASE_U:
        _BASE_U[key] = left_singular_vectors(w)
    return _BASE_U[key]


def intruder_dimensions(w_base: torch.Tensor, w_updated: torch.Tensor, top_k: int = 10, epsilon: float = 0.5,
                        u_base: torch.Tensor | None = None) -> tuple[int, list[float]]:
    """(number of intruders among the top-k, the top-k max |cos| values).

    `u_base`: the base weight's left singular vectors, if already computed (columns).
    """
    if u_base is None:
        u_base = base_left_singular_vectors(w_base)
    u_upd = left_singular_vectors(w_updated, top_k)
    max_cos = (u_upd.T @ u_base).abs().amax(dim=1)
    return int((max_cos < epsilon).sum()), [float(c) for c in max_cos]


def lowrank_singular_values(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Singular values of b @ a (b: m×r, a: r×n), from the r×r core: b = Qb Rb, aᵀ = Qa Ra, so
    b a = Qb (Rb Raᵀ) Qaᵀ with orthonormal Qb, Qa."""
    _, rb = torch.linalg.qr(b.detach().float())
    _, ra = torch.linalg.qr(a.detach().float().T)
    return torch.linalg.svdvals(rb @ ra.T)


def module_delta(w_base: torch.Tensor, w_updated: torch.Tensor, top_k: int = 10,
                 epsilon: float = 0.5, factors: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """{"intruders", "fro", "spectral", "eff_rank"} of one module; ΔW = W_updated - W_base.

    `factors` (b, a) with ΔW = b @ a (a LoRA's scaled B and A): ΔW's singular values from them.
    Identical weights are answered without an SVD: same singular vectors, so 0 intruders, and
    ΔW = 0. (An SVD of identical inputs would say the same up to sign and rounding.)
    """
    w_base, w_updated = w_base.detach().float(), w_updated.detach().float()
    if w_base.shape != w_updated.shape:
        raise ValueError(f"weight shapes differ: {tuple(w_base.shape)} vs {tuple(w_updated.shape)}")
    if torch.equal(w_base, w_updated):
        return {"intruders": 0, "fro": 0.0, "spectral": 0.0, "eff_rank": 0.0}
    s = lowrank_singular_values(*factors) if factors is not None else torch.linalg.svdvals(w_updated - w_base)
    intruders, _ = intruder_dimensions(w_base, w_updated, top_k, epsilon)
    return {"intruders": intruders, "fro": float(torch.linalg.vector_norm(s)), "spectral": float(s[0]),
            "eff_rank": effective_rank(s)}


def block_index(name: str) -> int | None:
    """The transformer block a module belongs to (`model.layers.3.mlp.up_proj` -> 3), or None."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def _clean(name: str) -> str:
    """PEFT's module names (`base_model.model.model.layers.0...`) as the plain model's."""
    return name[len("base_model.model."):] if name.startswith("base_model.model.") else name


def changed_weights(base_model, updated_model) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(module name, W_base, W_updated) for the linear modules of the transformer blocks that an
    arm adapted (LoRA: every LoRA-wrapped module, W_updated = W_base + B A * scale) or changed
    (full fine-tuning: weights not bit-identical to the base model's).

    A PEFT `updated_model` carries its own base weights (`base_layer`), so `base_model` is used only
    for a plain one. Modules outside the blocks (embeddings, the tied LM head) are left out: a
    vocabulary-sized SVD, and not a per-block quantity.
    """
    for name, w_base, w_updated, _ in _changed(base_model, updated_model):
        yield name, w_base, w_updated


def _changed(base_model, updated_model):
    """`changed_weights` with, for a LoRA module, ΔW's factors (b, a): ΔW = b @ a."""
    if hasattr(updated_model, "peft_config"):
        from peft.tuners.lora import LoraLayer

        for name, module in updated_model.named_modules():
            if not isinstance(module, LoraLayer) or block_index(name) is None:
                continue
            w = module.get_base_layer().weight
            names = [a for a in module.active_adapters if a in module.lora_A]
            delta = sum((module.get_delta_weight(a) for a in names), torch.zeros_like(w))
            # Several adapters: ΔW = sum_i s_i B_i A_i = [s_1 B_1, ...] @ [A_1; ...] (fan_in_fan_out
            # layers store the transpose: no factors, ΔW's SVD instead).
            factors = None
            if names and not getattr(module, "fan_in_fan_out", False):
                factors = (torch.cat([module.lora_B[a].weight * module.scaling[a] for a in names], dim=1),
                           torch.cat([module.lora_A[a].weight for a in names], dim=0))
            merged = getattr(module, "merged", False)  # a merged adapter is already inside the base weight
            yield (_clean(name), w - delta, w, factors) if merged else (_clean(name), w, w + delta, factors)
        return
    base_mods = dict(base_model.named_modules())
    for name, module in updated_model.named_modules():
        if not isinstance(module, torch.nn.Linear) or block_index(name) is None:
            continue
        ref = base_mods.get(name)
        if ref is None or torch.equal(ref.weight, module.weight):  # also for the very same tensor: compared
            continue
        yield name, ref.weight, module.weight, None


@torch.no_grad()
def summarise(base_model, updated_model, n_blocks: int, top_k: int = 10, epsilon: float = 0.5) -> dict[str, Any]:
    """The record's weight-space keys: ``delta`` per module, ``delta_fro_total`` (the Frobenius
    norm of all modules' ΔW together), ``intruders_total`` and ``intruders_per_layer``."""
    delta = {name: module_delta(wb, wu, top_k, epsilon, factors)
             for name, wb, wu, factors in _changed(base_model, updated_model)}
    per_layer = [0] * n_blocks
    for name, d in delta.items():
        i = block_index(name)
        if i is not None and i < n_blocks:
            per_layer[i] += d["intruders"]
    return {
        "delta": delta,
        "delta_fro_total": float(sum(d["fro"] ** 2 for d in delta.values()) ** 0.5),
        "intruders_total": int(sum(d["intruders"] for d in delta.values())),
        "intruders_per_layer": per_layer,
        "intruders_top_k": int(top_k),
        "intruders_epsilon": float(epsilon),
    }
