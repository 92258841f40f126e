"""Specification of updatelab.metrics.cka and updatelab.metrics.cka_streaming: one behaviour per test, seeded, fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from updatelab.metrics.cka import cka, cka_from_hsic
from updatelab.metrics.cka_streaming import LinearCKAAccumulator, MinibatchCKA

KERNEL_VARIANTS = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def correlated_pair(n: int, d_x: int = 32, d_y: int = 24, noise: float = 1.0, seed: int = 0):
    """y is a noisy linear read-out of x: a pair with CKA well inside (0, 1)."""
    g = gen(seed)
    x = torch.randn(n, d_x, generator=g, dtype=torch.float64)
    w = torch.randn(d_x, d_y, generator=g, dtype=torch.float64)
    y = x @ w + noise * math.sqrt(d_x) * torch.randn(n, d_y, generator=g, dtype=torch.float64)
    return x, y


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed, not just any Q


def song_unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. 2012's unbiased HSIC_1, transcribed literally (not the module's U-centred form)."""
    n = k.shape[0]
    kt, lt = k.clone(), l.clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    one = torch.ones(n, dtype=k.dtype)
    return (
        torch.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


# --- identity and invariances ---------------------------------------------------------


@pytest.mark.parametrize("kernel,debiased", KERNEL_VARIANTS)
def test_cka_of_a_representation_with_itself_is_one(kernel, debiased):
    x, _ = correlated_pair(64)
    assert cka(x, x, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel,debiased", KERNEL_VARIANTS)
def test_invariant_to_orthogonal_transform(kernel, debiased):
    x, y = correlated_pair(80)
    q = random_orthogonal(x.shape[1], seed=1)
    assert cka(x @ q, y, kernel=kernel, debiased=debiased) == pytest.approx(
        cka(x, y, kernel=kernel, debiased=debiased), abs=1e-10
    )


@pytest.mark.parametrize("kernel,debiased", KERNEL_VARIANTS)
def test_invariant_to_isotropic_scaling(kernel, debiased):
    x, y = correlated_pair(80)
    assert cka(7.5 * x, 0.01 * y, kernel=kernel, debiased=debiased) == pytest.approx(
        cka(x, y, kernel=kernel, debiased=debiased), abs=1e-10
    )


def test_not_invariant_to_arbitrary_invertible_linear_map():
    x, y = correlated_pair(200)
    # Anisotropic and invertible: stretches one direction of x by 100x.
    d = x.shape[1]
    a = torch.eye(d, dtype=torch.float64) + 0.1 * torch.randn(d, d, generator=gen(3), dtype=torch.float64)
    a[:, 0] *= 100.0
    assert torch.linalg.matrix_rank(a) == x.shape[1]
    assert abs(cka(x @ a, y) - cka(x, y)) > 0.05


def test_numpy_and_torch_inputs_agree():
    x, y = correlated_pair(50)
    assert cka(x.numpy(), y.numpy().astype(np.float32)) == pytest.approx(cka(x, y.float()), abs=1e-12)


# --- bias -----------------------------------------------------------------------------


def test_debiased_cka_of_independent_gaussians_is_near_zero_while_biased_is_not():
    g = gen(4)
    x = torch.randn(256, 64, generator=g)
    y = torch.randn(256, 64, generator=g)
    assert abs(cka(x, y, debiased=True)) < 0.02
    assert cka(x, y, debiased=False) > 0.1


def test_debiased_cka_uses_song_et_al_unbiased_hsic():
    x, y = correlated_pair(40, d_x=6, d_y=5)
    k, l = x @ x.T, y @ y.T
    expected = song_unbiased_hsic(k, l) / torch.sqrt(song_unbiased_hsic(k, k) * song_unbiased_hsic(l, l))
    assert cka(x, y, debiased=True) == pytest.approx(float(expected), abs=1e-12)


# --- worked examples, by hand ---------------------------------------------------------


def test_worked_example_one_feature_biased_is_squared_correlation():
    # With one feature per side, linear CKA = (x_c . y_c)^2 / (|x_c|^2 |y_c|^2) = r^2.
    # x_c = (-1.5, -0.5, 0.5, 1.5), y_c = (-1.5, 0.5, -0.5, 1.5):
    # x_c . y_c = 2.25 - 0.25 - 0.25 + 2.25 = 4, |x_c|^2 = |y_c|^2 = 5  ->  16/25.
    x = np.array([[1], [2], [3], [4]])
    y = np.array([[1], [3], [2], [4]])
    assert cka(x, y) == pytest.approx(16 / 25, abs=1e-12)


def test_worked_example_cross_versus_its_first_coordinate():
    # X = the 4 points (+-1, 0), (0, +-1) (already centred); Y = X's first column.
    # Feature-space form: ||X^T Y||^2 / (||X^T X||_F ||Y^T Y||_F).
    # X^T Y = (2, 0) -> 4;  X^T X = diag(2, 2) -> 2*sqrt(2);  Y^T Y = 2  ->  4 / (4 sqrt 2).
    x = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])
    assert cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_worked_example_one_feature_debiased():
    # Same data as the r^2 example, doubled to integers: a = (-3, -1, 1, 3), b = (-3, 1, -1, 3),
    # K = a a^T, L = b b^T, n = 4. Song's terms (common 1/(n(n-3)) dropped):
    #   tr(K~L~)       = (sum a_i b_i)^2 - sum a_i^2 b_i^2 = 16^2 - 164 = 92
    #   1'K~1 * 1'L~1  = ((sum a)^2 - sum a^2)((sum b)^2 - sum b^2) = (-20)(-20); / (3*2) -> 200/3
    #   1'K~L~1        = sum_i (-a_i^2)(-b_i^2) = 164;  * 2/(n-2) -> 164
    #   HSIC(K, L) ~ 92 + 200/3 - 164 = -16/3
    #   HSIC(K, K) ~ (400 - 164) + 200/3 - 164 = 416/3, and HSIC(L, L) the same
    #   -> CKA = (-16/3) / (416/3) = -1/26: the biased 0.64 is mostly small-n inflation.
    x = np.array([[1], [2], [3], [4]])
    y = np.array([[1], [3], [2], [4]])
    assert cka(x, y, debiased=True) == pytest.approx(-1 / 26, abs=1e-12)


# --- minibatch CKA --------------------------------------------------------------------


def test_minibatch_with_one_batch_equals_full_batch_debiased():
    g = gen(5)
    base = torch.randn(96, 16, generator=g, dtype=torch.float64)
    # Mixed widths, a rotated copy and a noisy copy: every code path of the grouping.
    noise = torch.randn(2, 96, 16, generator=g, dtype=torch.float64)
    feats_a = [base, base @ torch.randn(16, 8, generator=g, dtype=torch.float64), base + 0.5 * noise[0]]
    feats_b = [base @ random_orthogonal(16, 6), base + noise[1]]
    acc = MinibatchCKA()
    acc.update(feats_a, feats_b)
    out = acc.compute()
    expected = torch.tensor([[cka(a, b, debiased=True) for b in feats_b] for a in feats_a], dtype=torch.float64)
    assert out["cross"].shape == (3, 2)
    torch.testing.assert_close(out["cross"], expected, atol=1e-9, rtol=0)
    assert out["diagonal"] is None  # L != M
    assert out["n_examples"] == 96 and out["n_batches"] == 1


def test_minibatch_over_many_batches_approaches_full_batch_debiased():
    layers_a, layers_b = [], []
    for noise, seed in ((0.3, 7), (3.0, 9)):  # a high- and a low-similarity layer
        x, y = correlated_pair(4096, d_x=64, d_y=64, noise=noise, seed=seed)
        layers_a.append(x.float())  # as hidden states arrive
        layers_b.append(y.float())
    acc = MinibatchCKA()
    for start in range(0, 4096, 256):
        acc.update([f[start : start + 256] for f in layers_a], [f[start : start + 256] for f in layers_b])
    diagonal = acc.compute()["diagonal"]
    full = torch.tensor([cka(a, b, debiased=True) for a, b in zip(layers_a, layers_b)], dtype=torch.float64)
    # Both are estimates of one population CKA; what separates them is sampling noise.
    assert (diagonal - full).abs().max() < 0.02
    assert full.min() > 0.05 and full.max() < 0.95  # a non-trivial regime, not 0 or 1


def test_minibatch_sums_song_hsic_over_batches_and_normalises_once():
    # The definition (Nguyen et al. 2021), written out with Song's estimator per batch;
    # unequal batch sizes check that each batch keeps its own 1/(b(b-3)).
    x, y = correlated_pair(70, d_x=6, d_y=5)
    acc = MinibatchCKA()
    sums = torch.zeros(3, dtype=torch.float64)
    for start, stop in ((0, 30), (30, 60), (60, 70)):
        xb, yb = x[start:stop], y[start:stop]
        acc.update([xb], [yb])
        k, l = xb @ xb.T, yb @ yb.T
        sums += torch.stack([song_unbiased_hsic(k, l), song_unbiased_hsic(k, k), song_unbiased_hsic(l, l)])
    expected = sums[0] / torch.sqrt(sums[1] * sums[2])
    assert float(acc.compute()["cross"][0, 0]) == pytest.approx(float(expected), abs=1e-12)


def test_minibatch_accepts_a_stacked_layer_tensor():
    x, y = correlated_pair(64, d_x=16, d_y=16)
    from_list, from_stack = MinibatchCKA(), MinibatchCKA()
    from_list.update([x, y], [y, x])
    from_stack.update(torch.stack([x, y]), torch.stack([y, x]))
    torch.testing.assert_close(from_list.compute()["cross"], from_stack.compute()["cross"], atol=1e-14, rtol=0)


def test_float32_gram_option_stays_within_float32_rounding_of_float64():
    # A near-copy (CKA ~ 1, where rounding shows most) with a large offset on top.
    x = torch.randn(256, 64, generator=gen(11), dtype=torch.float64)
    y = x @ random_orthogonal(64, 12) + 0.05 * torch.randn(256, 64, generator=gen(13), dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.float32):
        acc = MinibatchCKA(gram_dtype=dtype)
        for start in range(0, 256, 64):
            acc.update([x[start : start + 64]], [y[start : start + 64] + 100.0])
        results.append(float(acc.compute()["cross"][0, 0]))
    assert results[0] > 0.99
    assert results[1] == pytest.approx(results[0], abs=1e-6)


def test_batch_smaller_than_four_raises_a_clear_error():
    x, y = correlated_pair(3, d_x=4, d_y=4)
    with pytest.raises(ValueError, match=r"unbiased HSIC.*n >= 4"):
        MinibatchCKA().update([x], [y])
    with pytest.raises(ValueError, match=r"unbiased HSIC.*n >= 4"):
        cka(x, y, debiased=True)


def test_zero_variance_layer_gives_zero_not_nan():
    x, y = correlated_pair(48, d_x=8, d_y=8)
    # 0.1 is not representable and 24 is not a power of two: a mean over 24 rows is off
    # by an ulp, so plain centring would leave a rounding-residue "signal".
    constant = torch.full_like(x, 0.1)
    acc = MinibatchCKA()
    for start in range(0, 48, 24):
        rows = slice(start, start + 24)
        acc.update([constant[rows], x[rows]], [y[rows], constant[rows]])
    cross = acc.compute()["cross"]
    assert torch.isfinite(cross).all()
    assert cross[0, 0] == 0.0 and cross[1, 1] == 0.0 and cross[0, 1] == 0.0  # both constant: 0 by choice
    assert cross[1, 0] > 0.1
    for kernel, debiased in KERNEL_VARIANTS:
        assert cka(constant[:24], y[:24], kernel=kernel, debiased=debiased) == 0.0
        assert cka(constant[:24], constant[:24], kernel=kernel, debiased=debiased) == 0.0


def test_tiny_negative_self_hsic_is_clamped_not_nan():
    assert float(cka_from_hsic(1e-20, -1e-18, 1.0)) == 0.0
    values = cka_from_hsic(torch.tensor([0.5, 1e-20]), torch.tensor([1.0, -1e-18]), torch.tensor([1.0, 1.0]))
    assert torch.equal(values, torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_features_of_very_different_scales_do_not_overflow():
    x, y = correlated_pair(64, d_x=8, d_y=8)
    reference = cka(x, y, debiased=True)
    assert cka(x.numpy() * 1e150, y.numpy() * 1e-150, debiased=True) == pytest.approx(reference, abs=1e-12)
    # float32 near its maximum: each self-HSIC fits float64, their product would not.
    big_x, big_y = (x * 1e37).float(), (y * 1e37).float()
    acc = MinibatchCKA()
    acc.update([big_x], [big_y])
    value = float(acc.compute()["cross"][0, 0])
    assert value == pytest.approx(cka(big_x.double() * 1e-37, big_y.double() * 1e-37, debiased=True), abs=1e-9)


# --- exact streaming linear CKA -------------------------------------------------------


def test_streaming_linear_cka_equals_full_batch_biased_linear_cka():
    g = gen(10)
    n = 300
    # A large common offset, as LM hidden states have, to exercise the cancellation.
    layers_a = [torch.randn(n, 20, generator=g, dtype=torch.float64) + 50.0 for _ in range(3)]
    layers_b = [
        a @ torch.randn(20, 12, generator=g, dtype=torch.float64) + torch.randn(n, 12, generator=g, dtype=torch.float64)
        for a in layers_a
    ]
    acc = LinearCKAAccumulator(pairs="all")
    for start, stop in ((0, 1), (1, 64), (64, 200), (200, 300)):  # uneven, including a single row
        acc.update([f[start:stop] for f in layers_a], [f[start:stop] for f in layers_b])
    out = acc.compute()
    expected = torch.tensor([[cka(a, b) for b in layers_b] for a in layers_a], dtype=torch.float64)
    torch.testing.assert_close(out["cross"], expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(out["diagonal"], expected.diagonal(), atol=1e-9, rtol=0)
    assert out["n_examples"] == n


def test_non_finite_features_raise_and_leave_the_accumulators_unchanged():
    x, y = correlated_pair(32, d_x=8, d_y=8)
    bad = x.clone()
    bad[5, 3] = float("nan")
    for acc in (MinibatchCKA(), LinearCKAAccumulator()):
        acc.update([x[:16], y[:16]], [y[:16], x[:16]])
        before = acc.compute()["diagonal"].clone()
        with pytest.raises(ValueError, match=r"feats_b layer\(s\) \[1\] contain NaN or inf"):
            acc.update([x[16:], y[16:]], [y[16:], bad[:16]])  # row 5 is NaN
        torch.testing.assert_close(acc.compute()["diagonal"], before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        cka(bad, y)
