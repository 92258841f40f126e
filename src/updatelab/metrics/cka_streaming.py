"""Streaming CKA: many layers of two models over a probe set seen in minibatches.

Two estimators, for two questions (CKA itself and its building blocks are in
:mod:`updatelab.metrics.cka`):

* ``MinibatchCKA`` -- every layer pair, from the unbiased HSIC of each minibatch
  (Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks Learn the Same Things?", ICLR 2021).
  The unbiased HSIC of Song, Smola, Gretton, Bedo & Borgwardt ("Feature Selection via
  Dependence Maximization", JMLR 2012) is an unbiased estimate of the population HSIC for
  every batch, so averaging it over batches converges to the population value. The biased
  estimator would not: its bias depends on the batch size and does not average out.
* ``LinearCKAAccumulator`` -- the plain (biased) linear CKA of the *whole* probe set,
  computed exactly from streamed feature statistics.

Both accumulate in float64, for the reason given in :mod:`updatelab.metrics.cka`.
"""

from __future__ import annotations

from typing import Literal, Sequence, Union

import torch

from updatelab.metrics.cka import (
    ArrayLike,
    _check_unbiased_n,
    _power_of_two_exponent,
    _u_centre_,
    cka_from_hsic,
)

__all__ = ["MinibatchCKA", "LinearCKAAccumulator"]

Layers = Union[Sequence[ArrayLike], torch.Tensor]


# --------------------------------------------------------------------------------------
# Streaming: unbiased minibatch CKA for every layer pair
# --------------------------------------------------------------------------------------


def _as_layer_list(feats: Layers, name: str) -> list[torch.Tensor]:
    if isinstance(feats, torch.Tensor) and feats.ndim == 3:
        layers = list(feats.detach().unbind(0))
    else:
        layers = [torch.as_tensor(f).detach() for f in feats]
    if not layers:
        raise ValueError(f"{name} holds no layers")
    for i, f in enumerate(layers):
        if f.ndim != 2:
            raise ValueError(f"{name}[{i}] must be 2-D (batch, features), got shape {tuple(f.shape)}")
    b = layers[0].shape[0]
    if any(f.shape[0] != b for f in layers):
        sizes = [f.shape[0] for f in layers]
        raise ValueError(f"all layers in {name} must hold the same examples; batch sizes {sizes}")
    return layers


def _nonfinite_error(name: str, self_hsic: torch.Tensor) -> ValueError:
    bad = torch.nonzero(~torch.isfinite(self_hsic)).flatten().tolist()
    return ValueError(f"{name} layer(s) {bad} contain NaN or inf")


def _paired_batch(feats_a: Layers, feats_b: Layers) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Both sides of one batch as layer lists, checked to hold the same examples."""
    layers_a = _as_layer_list(feats_a, "feats_a")
    layers_b = _as_layer_list(feats_b, "feats_b")
    b = layers_a[0].shape[0]
    if layers_b[0].shape[0] != b:
        raise ValueError(f"feats_a and feats_b must hold the same examples: batch {b} != {layers_b[0].shape[0]}")
    return layers_a, layers_b, b


class MinibatchCKA:
    """Unbiased minibatch CKA between every layer of model A and every layer of model B.

    Following Nguyen, Raghu & Kornblith 2021, each ``update`` adds the unbiased HSIC
    (Song et al. 2012) of one batch for all cross pairs (i, j) and all self pairs; the
    sums are normalised once, in ``compute``:

        CKA_ij = sum_batches HSIC(K_i, L_j) / sqrt(sum HSIC(K_i, K_i) * sum HSIC(L_j, L_j))

    Normalising per batch and averaging would be a different, biased quantity. Because
    each batch's unbiased HSIC is an unbiased estimate of the population HSIC, the result
    converges to the population CKA as the probe set grows, whatever the batch size; the
    full-batch debiased CKA of the same data differs from it by estimation noise.

    Memory is O(batch^2 * layers + layers^2): the batch Grams of all layers plus the
    L x M sums (and one reused float64 copy of a batch's features); no n x n matrix over
    the probe set ever exists. Linear kernel only: an
    RBF bandwidth chosen per batch would change the kernel between batches.

    Every batch must have the same examples (rows) on both sides and at least 4 of them.
    Layers of a batch may be passed as a list of (b, d_i) tensors or one (L, b, d) tensor.
    """

    def __init__(self, gram_dtype: torch.dtype = torch.float64) -> None:
        """``gram_dtype=torch.float32`` forms the batch Gram products -- the dominant cost --
        in float32, from features already centred and rescaled in float64; U-centring and
        all sums stay float64. On the 30-layer x 576-wide benchmark it is about twice as
        fast on CPU and moves CKA by < 1e-9, far below the estimator's own sampling noise
        (~1e-3 there). It is opt-in because that bound is measured, not guaranteed: the
        Gram entries carry float32 rounding (~1e-7 relative).
        """
        if gram_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"gram_dtype must be torch.float32 or torch.float64, got {gram_dtype}")
        self.gram_dtype = gram_dtype
        self.reset()

    def reset(self) -> None:
        self._cross: torch.Tensor | None = None  # (L, M) sum of HSIC(K_i, L_j)
        self._self_a: torch.Tensor | None = None  # (L,)
        self._self_b: torch.Tensor | None = None  # (M,)
        self._exp_a: torch.Tensor | None = None  # per-layer power-of-two rescale, fixed by batch 1
        self._exp_b: torch.Tensor | None = None
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.n_examples = 0
        self.n_batches = 0

    def _buffer(
        self, key: tuple, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        # Reused across batches: allocating ~50 MB of fresh float64 per batch costs more
        # (page faults) than the Gram products themselves.
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.device != device or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf

    def _flat_u_centred_grams(
        self, side: str, layers: list[torch.Tensor], exponents: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, b*b) U-centred Grams of one batch, and the per-layer rescale exponents."""
        b, device = layers[0].shape[0], layers[0].device
        grams = self._buffer((side, "gram"), (len(layers), b, b), device)
        new_exponents = torch.zeros(len(layers), dtype=torch.int32, device=device)
        # Layers sharing a width (all of them, for transformer hidden states) are stacked
        # so that one batched matmul forms all their Grams.
        by_width: dict[int, list[int]] = {}
        for i, f in enumerate(layers):
            by_width.setdefault(f.shape[1], []).append(i)
        for width, idx in by_width.items():
            x = self._buffer((side, width), (len(idx), b, width), device)
            for k, i in enumerate(idx):
                x[k].copy_(layers[i])  # float64 conversion happens in the copy
            idx_t = torch.tensor(idx, device=device)
            # Rows all equal => constant in this batch. Centring would leave rounding
            # residue (e.g. for 0.1 in float64); zero makes its self-HSIC exactly 0.
            constant = (x == x[:, :1]).all(dim=2).all(dim=1) & torch.isfinite(x[:, 0]).all(dim=1)
            # Per-batch centring is free (U-centring removes what a mean shift adds) and
            # keeps the Gram well conditioned when activations carry a large offset.
            x -= x.mean(dim=1, keepdim=True)
            x[constant] = 0.0
            if exponents is None:
                new_exponents[idx_t] = _power_of_two_exponent(x, (1, 2))
            else:
                new_exponents[idx_t] = exponents[idx_t]
            # One scale per layer for the whole run: a per-batch scale would reweight
            # batches against each other.
            factors = torch.ldexp(torch.ones(len(idx), dtype=x.dtype, device=device), -new_exponents[idx_t])
            x *= factors[:, None, None]
            if self.gram_dtype != torch.float64:
                x = self._buffer((side, width, self.gram_dtype), x.shape, device, self.gram_dtype).copy_(x)
            products = torch.bmm(x, x.transpose(1, 2))
            if len(idx) == len(layers):
                grams.copy_(products)
            else:
                grams[idx_t] = products.to(torch.float64)
        return _u_centre_(grams).reshape(len(layers), b * b), new_exponents

    @torch.no_grad()
    def update(self, feats_a: Layers, feats_b: Layers) -> None:
        """Add one batch: ``feats_a[i]`` is layer i of model A, shape (b, d_i); same for B."""
        layers_a, layers_b, b = _paired_batch(feats_a, feats_b)
        _check_unbiased_n(b, "this batch")
        if self._cross is not None and (len(layers_a), len(layers_b)) != tuple(self._cross.shape):
            got = (len(layers_a), len(layers_b))
            raise ValueError(f"expected {tuple(self._cross.shape)} layers as in earlier batches, got {got}")

        ua, exp_a = self._flat_u_centred_grams("a", layers_a, self._exp_a)
        ub, exp_b = self._flat_u_centred_grams("b", layers_b, self._exp_b)
        # Each batch's HSIC carries its own 1/(b(b-3)), so a short last batch is weighted
        # as the unbiased estimate it is rather than as a full one.
        scale = 1.0 / (b * (b - 3))
        cross = (ua @ ub.T) * scale
        self_a = torch.einsum("ij,ij->i", ua, ua) * scale
        self_b = torch.einsum("ij,ij->i", ub, ub) * scale
        # A NaN or inf anywhere in a layer reaches its self-HSIC (a sum of squares), and
        # |cross_ij| <= sqrt(self_i self_j); checking L + M numbers here is much cheaper
        # than scanning every input, and it happens before any state changes.
        if not torch.isfinite(self_a).all():
            raise _nonfinite_error("feats_a", self_a)
        if not torch.isfinite(self_b).all():
            raise _nonfinite_error("feats_b", self_b)
        if self._cross is None:
            self._cross, self._self_a, self._self_b = cross, self_a, self_b
            self._exp_a, self._exp_b = exp_a, exp_b
        else:
            self._cross += cross
            self._self_a += self_a
            self._self_b += self_b
        self.n_examples += b
        self.n_batches += 1

    def compute(self) -> dict:
        """CKA from the accumulated HSIC sums.

        Returns a dict of float64 CPU tensors and counts:
        ``cross`` (L, M) CKA of layer i of A with layer j of B; ``diagonal`` (L,) CKA of
        layer i of A with layer i of B, or None when L != M; ``n_examples`` and
        ``n_batches``. (The raw HSIC sums are not returned: they are in per-layer rescaled
        units, meaningful only as the ratios above.)
        """
        if self._cross is None:
            raise RuntimeError("MinibatchCKA.compute() called before any update()")
        cross = cka_from_hsic(self._cross, self._self_a[:, None], self._self_b[None, :]).cpu()
        L, M = cross.shape
        return {
            "cross": cross,
            "diagonal": cross.diagonal().clone() if L == M else None,
            "n_examples": self.n_examples,
            "n_batches": self.n_batches,
        }


# --------------------------------------------------------------------------------------
# Streaming: exact full-data (biased) linear CKA
# --------------------------------------------------------------------------------------


class LinearCKAAccumulator:
    """Exact plain (biased) linear CKA over the whole probe set, fed in minibatches.

    For the linear kernel, Kornblith et al. 2019 (Sec. 3) show that with column-centred
    features X, Y

        CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),

    and the centred cross-products only need running sums: X_c^T Y_c = X^T Y - n mu_x mu_y^T.
    So accumulating n, the feature sums and the d x d products X_i^T Y_j in float64 gives
    the full-batch value exactly (to rounding), unlike the minibatch estimator.

    The price is memory d_i * d_j per pair: 30 layers of width 576 cost 2.7 MB per pair,
    so ``pairs="diagonal"`` (layer i with layer i, plus the self terms: ~240 MB) is the
    default; ``pairs="all"`` keeps all L*M cross-products (~2.5 GB at that size). For the full
L x M table use ``MinibatchCKA``, whose memory does not grow with the width.

    Every value is shifted by the first row of the first batch before accumulating: the
    algebra is unchanged by any fixed shift, cancellation in X^T Y - n mu mu^T shrinks to
    the data's spread instead of its offset, and a constant layer becomes exactly zero.
    """

    def __init__(self, pairs: Literal["diagonal", "all"] = "diagonal") -> None:
        if pairs not in ("diagonal", "all"):
            raise ValueError(f"pairs must be 'diagonal' or 'all', got {pairs!r}")
        self.pairs = pairs
        self.reset()

    def reset(self) -> None:
        self.n_examples = 0
        self._shift: dict[str, list[torch.Tensor]] = {}  # first row of the first batch
        self._factor: dict[str, list[float]] = {}  # power-of-two rescale, fixed by batch 1
        self._sum: dict[str, list[torch.Tensor]] = {}
        self._gram: dict[str, list[torch.Tensor]] = {}  # X_i^T X_i (shifted, rescaled)
        self._cross: dict[tuple[int, int], torch.Tensor] = {}  # X_i^T Y_j
        self._buffers: dict[tuple, torch.Tensor] = {}

    def _start(self, side: str, layers: list[torch.Tensor]) -> None:
        self._shift[side] = [f[:1].to(torch.float64, copy=True) for f in layers]
        self._factor[side] = [
            2.0 ** -int(_power_of_two_exponent(f.to(torch.float64) - s, (0, 1)))
            for f, s in zip(layers, self._shift[side])
        ]
        self._sum[side] = [f.new_zeros(f.shape[1], dtype=torch.float64) for f in layers]
        self._gram[side] = [f.new_zeros(f.shape[1], f.shape[1], dtype=torch.float64) for f in layers]

    def _prepared(self, side: str, layers: list[torch.Tensor]) -> list[torch.Tensor]:
        """Shifted, rescaled float64 copies of a batch, in buffers reused across batches."""
        out = []
        for i, (f, shift, factor) in enumerate(zip(layers, self._shift[side], self._factor[side])):
            buf = self._buffers.get((side, i))
            if buf is None or buf.shape != f.shape or buf.device != f.device:
                buf = self._buffers[(side, i)] = torch.empty(f.shape, dtype=torch.float64, device=f.device)
            buf.copy_(f)
            buf -= shift
            buf *= factor
            out.append(buf)
        return out

    @torch.no_grad()
    def update(self, feats_a: Layers, feats_b: Layers) -> None:
        """Add one batch (any size >= 1): ``feats_a[i]`` is layer i of model A, (b, d_i)."""
        layers_a, layers_b, b = _paired_batch(feats_a, feats_b)
        if self.pairs == "diagonal" and len(layers_a) != len(layers_b):
            raise ValueError("pairs='diagonal' needs the same number of layers on both sides")
        if not self._shift:
            self._start("a", layers_a)
            self._start("b", layers_b)
            if self.pairs == "diagonal":
                wanted = [(i, i) for i in range(len(layers_a))]
            else:
                wanted = [(i, j) for i in range(len(layers_a)) for j in range(len(layers_b))]
            self._cross = {
                (i, j): layers_a[i].new_zeros(layers_a[i].shape[1], layers_b[j].shape[1], dtype=torch.float64)
                for i, j in wanted
            }
        elif (len(layers_a), len(layers_b)) != (len(self._sum["a"]), len(self._sum["b"])):
            raise ValueError("the number of layers changed between batches")

        xs = self._prepared("a", layers_a)
        ys = self._prepared("b", layers_b)
        sums = {"a": [z.sum(dim=0) for z in xs], "b": [z.sum(dim=0) for z in ys]}
        # A NaN or inf anywhere in a layer makes that layer's column sums non-finite:
        # a cheap check on d numbers, made before any state changes.
        for side, name in (("a", "feats_a"), ("b", "feats_b")):
            bad = [i for i, v in enumerate(sums[side]) if not torch.isfinite(v).all()]
            if bad:
                raise ValueError(f"{name} layer(s) {bad} contain NaN or inf")
        for side, zs in (("a", xs), ("b", ys)):
            for acc, batch_sum in zip(self._sum[side], sums[side]):
                acc += batch_sum
            for acc, z in zip(self._gram[side], zs):
                acc.addmm_(z.T, z)
        for (i, j), acc in self._cross.items():
            acc.addmm_(xs[i].T, ys[j])
        self.n_examples += b

    def compute(self) -> dict:
        """Returns ``diagonal`` (L,) and, with ``pairs="all"``, ``cross`` (L, M), as float64
        tensors (``cross`` is None for ``pairs="diagonal"``), plus ``n_examples``."""
        if self.n_examples == 0:
            raise RuntimeError("LinearCKAAccumulator.compute() called before any update()")
        n = self.n_examples
        mean_a = [s / n for s in self._sum["a"]]
        mean_b = [s / n for s in self._sum["b"]]

        def centred(prod: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
            return prod - n * torch.outer(mu, nu)

        norm_a = torch.stack([centred(g, m, m).norm() for g, m in zip(self._gram["a"], mean_a)])
        norm_b = torch.stack([centred(g, m, m).norm() for g, m in zip(self._gram["b"], mean_b)])
        # ||X_c^T Y_c||_F^2 is a HSIC up to the common 1/(n-1)^2; the self terms are the
        # squared norms, so pass them squared and let cka_from_hsic take the roots.
        cross_sq = {
            (i, j): centred(p, mean_a[i], mean_b[j]).square().sum() for (i, j), p in self._cross.items()
        }
        L, M = len(norm_a), len(norm_b)
        diagonal = None
        if L == M and all((i, i) in cross_sq for i in range(L)):
            diagonal = torch.stack(
                [cka_from_hsic(cross_sq[i, i], norm_a[i] ** 2, norm_b[i] ** 2) for i in range(L)]
            )
        cross = None
        if self.pairs == "all":
            cross = torch.empty(L, M, dtype=torch.float64)
            for (i, j), v in cross_sq.items():
                cross[i, j] = cka_from_hsic(v, norm_a[i] ** 2, norm_b[j] ** 2)
        return {"diagonal": diagonal, "cross": cross, "n_examples": n}
