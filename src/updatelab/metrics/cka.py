"""Centered kernel alignment (CKA): how similar two sets of representations are.

CKA (Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019) compares two representations X (n, d1) and Y (n, d2) of the same n
examples through their n x n kernel (Gram) matrices K and L:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

It is invariant to orthogonal transforms and isotropic scaling of either side, but not to
arbitrary invertible linear maps, which is what makes it a useful "did this layer change"
measure when comparing a base model with an updated one.

This module holds ``cka(x, y)`` -- one pair of matrices that fit in memory; linear or RBF
kernel, biased (Kornblith et al. 2019) or debiased HSIC -- and the building blocks (Gram
matrices, centring, ``cka_from_hsic``) it shares with the streaming estimators of
:mod:`updatelab.metrics.cka_streaming` (many layers over a probe set seen in minibatches).

Everything is computed in float64. HSIC is quartic in the features and sums b^2 terms of
both signs per batch; in float32 a CKA of 0.999x -- the regime a base-vs-updated comparison
lives in -- would keep only two or three trustworthy digits.
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
import torch

__all__ = ["cka", "cka_from_hsic"]

ArrayLike = Union[np.ndarray, torch.Tensor]

# Song et al.'s unbiased estimator divides by n(n-3) and (n-1)(n-2).
MIN_UNBIASED_N = 4


# --------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------


def _as_float64_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_examples, n_features), got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        # A single NaN would silently turn every accumulated sum into NaN.
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _check_unbiased_n(n: int, what: str) -> None:
    if n < MIN_UNBIASED_N:
        raise ValueError(
            f"{what} has {n} examples; the unbiased HSIC estimator (Song et al. 2012) needs "
            f"n >= {MIN_UNBIASED_N} because it divides by n(n-3) and (n-1)(n-2). "
            "Use a larger batch, or merge a short last batch into the previous one."
        )


def _power_of_two_exponent(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Exponent e with max|x| / 2**e in [0.5, 1) along ``dims`` (0 where x is all zero).

    Dividing by a power of two is exact, so rescaling with it changes no digit of the
    result. It keeps fourth powers of the features (HSIC is quartic in them) inside the
    float64 range for inputs as large as 1e100 or as small as 1e-100.
    """
    return torch.frexp(x.abs().amax(dim=dims)).exponent


def _double_centre_(gram: torch.Tensor) -> torch.Tensor:
    """H K H in place (H = I - 11^T/n): the centring of the biased HSIC estimator."""
    gram -= gram.mean(dim=-1, keepdim=True)
    gram -= gram.mean(dim=-2, keepdim=True)
    return gram


def _u_centre_(gram: torch.Tensor) -> torch.Tensor:
    """U-centre Gram matrices in place (batched over leading dimensions).

    U-centring (Szekely & Rizzo 2014, "Partial distance correlation"; the form used in
    Kornblith et al.'s reference code) zeroes the diagonal and removes row/column effects
    so that <U(K), U(L)>_F / (n(n-3)) equals Song et al.'s unbiased HSIC

        [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),

    K~ = K with zeroed diagonal. Writing it as an inner product is what lets a whole L x M
    table of HSICs be one matrix product of flattened U-centred Grams, and it makes every
    self-HSIC a sum of squares.
    """
    n = gram.shape[-1]
    gram.diagonal(dim1=-2, dim2=-1).zero_()
    means = gram.sum(dim=-1) / (n - 2)
    means -= means.sum(dim=-1, keepdim=True) / (2 * (n - 1))
    gram -= means.unsqueeze(-1)
    gram -= means.unsqueeze(-2)
    gram.diagonal(dim1=-2, dim2=-1).zero_()
    return gram


def _linear_gram(xc: torch.Tensor) -> torch.Tensor:
    return xc @ xc.transpose(-1, -2)


def _rbf_gram(xc: torch.Tensor, rbf_factor: float) -> torch.Tensor:
    """exp(-||x_i - x_j||^2 / (2 sigma^2)), sigma = rbf_factor * median pairwise distance.

    The bandwidth follows Kornblith et al. 2019 (sigma as a fraction of the median
    distance), with the median taken over distinct pairs i < j: the reference code also
    counts the n zero self-distances, which shrinks sigma slightly for small n.
    """
    sq_norms = (xc * xc).sum(dim=1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * _linear_gram(xc)).clamp_(min=0.0)
    n = xc.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    pair_sq = sq_dist[iu[0], iu[1]]
    # torch.median returns the lower median, which commutes with squaring, so this is
    # exactly (median distance)^2.
    median_sq = pair_sq.median()
    if median_sq <= 0:
        # More than half the pairs coincide: fall back to the positive distances rather
        # than divide by zero.
        positive = pair_sq[pair_sq > 0]
        if positive.numel() == 0:
            # All points coincide: the kernel is constant, and a constant matrix centres
            # to exactly zero, so return the zero matrix without rounding noise.
            return torch.zeros_like(sq_dist)
        median_sq = positive.median()
    return torch.exp(-sq_dist / (2.0 * rbf_factor**2 * median_sq))


def cka_from_hsic(hsic_xy: ArrayLike | float, hsic_xx: ArrayLike | float, hsic_yy: ArrayLike | float) -> torch.Tensor:
    """Normalise HSIC values into CKA (elementwise, broadcasting), safely.

    * Self-HSICs are clamped at 0 first. Mathematically they are >= 0, but a sum of
      estimates computed another way (e.g. Song's trace formula) can land at -1e-17,
      whose square root would be NaN.
    * A side with zero self-HSIC -- a zero-variance (e.g. constant) representation --
      gives 0.0, including when *both* sides are constant. CKA is 0/0 there; we report
      0 ("no shared structure detected") rather than 1, because a collapsed layer scoring
      as perfectly preserved would hide exactly the failure this metric is meant to flag.
    * sqrt(a) * sqrt(b), not sqrt(a * b): the product of two self-HSICs of large features
      overflows float64 long before either factor does.
    * The result is clipped to [-1, 1], the Cauchy-Schwarz bound that rounding can
      overshoot by an ulp.
    """
    xy = torch.as_tensor(hsic_xy, dtype=torch.float64)
    xx = torch.as_tensor(hsic_xx, dtype=torch.float64).clamp(min=0.0)
    yy = torch.as_tensor(hsic_yy, dtype=torch.float64).clamp(min=0.0)
    denom = xx.sqrt() * yy.sqrt()
    safe = denom > 0
    out = torch.where(safe, xy / torch.where(safe, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    return out.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------
# One pair of representations
# --------------------------------------------------------------------------------------


def cka(
    x: ArrayLike,
    y: ArrayLike,
    kernel: Literal["linear", "rbf"] = "linear",
    debiased: bool = False,
    rbf_factor: float = 1.0,
) -> float:
    """CKA between x (n, d1) and y (n, d2), rows being the same n examples.

    ``debiased=False`` is the CKA of Kornblith et al. 2019 (biased HSIC, double-centred
    Grams). It is inflated for small n relative to d: independent random features score
    well above 0. ``debiased=True`` uses the unbiased HSIC of Song et al. 2012, as advocated
    by Nguyen, Raghu & Kornblith 2021, which removes that floor; it needs n >= 4 and can be
    slightly negative.

    Returns 0.0 when either side has zero variance (see ``cka_from_hsic``). Numpy arrays and
    torch tensors of any float dtype are accepted; the computation is float64.
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    if kernel == "rbf" and not rbf_factor > 0:
        raise ValueError(f"rbf_factor must be > 0, got {rbf_factor}")
    xt = _as_float64_matrix(x, "x")
    yt = _as_float64_matrix(y, "y")
    n = xt.shape[0]
    if yt.shape[0] != n:
        raise ValueError(f"x and y must have the same number of rows (examples): {n} != {yt.shape[0]}")
    if debiased:
        _check_unbiased_n(n, "x")
    elif n < 2:
        raise ValueError(f"CKA needs at least 2 examples, got {n}")

    grams = []
    for t in (xt, yt):
        if (t == t[0]).all():
            # Constant representation: centring it would leave rounding residue, not
            # signal. A zero Gram makes its self-HSIC exactly 0.
            grams.append(t.new_zeros(n, n))
            continue
        # Centring the features first changes no HSIC (both centrings remove exactly the
        # row/column effects a mean shift adds to K) but avoids cancellation when
        # activations carry a large common offset, as LM hidden states do.
        tc = t - t.mean(dim=0, keepdim=True)
        tc = torch.ldexp(tc, -_power_of_two_exponent(tc, (0, 1)))
        gram = _linear_gram(tc) if kernel == "linear" else _rbf_gram(tc, rbf_factor)
        grams.append(_u_centre_(gram) if debiased else _double_centre_(gram))
    kx, ky = (g.reshape(-1) for g in grams)
    # The estimator's 1/(n-1)^2 or 1/(n(n-3)) factor is common to all three HSICs and
    # cancels in the ratio.
    return float(cka_from_hsic(kx @ ky, kx @ kx, ky @ ky))
