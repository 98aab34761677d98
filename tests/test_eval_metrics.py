"""Fidelity (FID, KID) and diversity (MS-SSIM) against closed forms and known orderings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from medgen3d.evaluation.metrics import (
    frechet_distance,
    kernel_distance,
    mean_pairwise_ms_ssim,
    ms_ssim_scales,
    split_halves,
)


def _features(n: int, f: int, seed: int) -> torch.Tensor:
    """(n, f) float64 draws of one distribution (per f) with correlated, unequal dimensions."""
    mixing = torch.randn(f, f, generator=torch.Generator().manual_seed(f), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=g, dtype=torch.float64) @ mixing / f**0.5 + 0.3


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Reference KID: unbiased MMD² with k(a, b) = (a·b / F + 1)³, written out directly."""
    f = x.shape[1]

    def k(a, b):
        return (a @ b.T / f + 1.0) ** 3

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    off_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    off_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(off_x + off_y - 2.0 * k(x, y).mean())


def _smooth_volume(size: int, seed: int) -> np.ndarray:
    """A (size,)*3 float32 volume with structure at several scales, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 1.5)
    return (volume / np.abs(volume).max()).astype(np.float32)


# ---- Fréchet distance ----------------------------------------------------------------------


def test_frechet_distance_of_identical_sets_is_zero():
    x = _features(40, 6, seed=0)
    assert frechet_distance(x, x.clone()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_pure_shift_is_the_squared_shift_and_grows():
    x = _features(40, 6, seed=1)
    direction = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    distances = []
    for t in (0.0, 0.1, 0.5, 1.0, 2.0):
        distances.append(frechet_distance(x, x + t * direction))
        # Same covariance, so only the mean term remains.
        assert distances[-1] == pytest.approx(t**2 * float(direction @ direction), abs=1e-6)
    assert all(a < b for a, b in itertools.pairwise(distances))


def test_frechet_distance_sees_a_change_of_spread():
    # x against 2x: ||mu||² + tr(S) + tr(4S) - 2 tr((4S²)^½) = ||mu||² + tr(S).
    x = _features(50, 5, seed=2)
    mean, cov = x.mean(0), torch.cov(x.T)
    expected = float(mean @ mean + torch.trace(cov))
    assert frechet_distance(x, 2 * x) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_is_float64_accurate_for_float32_input():
    x = _features(40, 6, seed=3)
    assert frechet_distance(x.float(), x.float() + 1.0) == pytest.approx(6.0, rel=1e-6)


def test_frechet_distance_survives_monai_refusing_an_imaginary_square_root(monkeypatch):
    """When scipy's sqrtm leaves an imaginary part MONAI refuses (few, nearly degenerate
    rows), the distance comes from the eigenvalues of the covariance product instead, and
    it is the same distance: equal to MONAI's on sets where MONAI succeeds."""
    from medgen3d.evaluation import metrics

    real, synthetic = _features(30, 8, seed=4), 1.5 * _features(12, 8, seed=5) + 0.3
    expected = frechet_distance(real, synthetic)

    class Refusing:
        def __call__(self, y_pred, y):
            raise ValueError("Imaginary component 0.0046 too high.")

    monkeypatch.setattr(metrics, "FIDMetric", Refusing)
    assert frechet_distance(real, synthetic) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("real_shape", "synthetic_shape"),
    [((10, 1), (10, 1)), ((1, 4), (10, 4)), ((10, 4), (10, 5)), ((10,), (10,))],
)
def test_frechet_distance_rejects_unusable_feature_sets(real_shape, synthetic_shape):
    with pytest.raises(ValueError, match="feature"):
        frechet_distance(torch.zeros(real_shape), torch.zeros(synthetic_shape))


# ---- kernel distance -----------------------------------------------------------------------


def test_kernel_distance_matches_the_written_out_polynomial_mmd():
    x, y = _features(30, 8, seed=4), _features(30, 8, seed=5) * 1.5 + 0.2
    expected = _polynomial_mmd2(x.numpy(), y.numpy())
    assert kernel_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_kernel_distance_of_identical_sets_is_the_small_negative_closed_form():
    n, f = 100, 16
    x = _features(n, f, seed=6)
    gram = ((x @ x.T) / f + 1.0) ** 3
    mean_diagonal = float(torch.diagonal(gram).mean())
    mean_off_diagonal = float((gram.sum() - torch.trace(gram)) / (n * (n - 1)))
    value = kernel_distance(x, x.clone())
    assert value == pytest.approx(-(2 / n) * (mean_diagonal - mean_off_diagonal), rel=1e-6)
    assert value < 0
    # Of order 1/n: close to 0 beside the distance that a unit shift gives.
    assert abs(value) < 0.02 * kernel_distance(x, x + 1.0)


def test_kernel_distance_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    x, y = _features(200, 16, seed=7), _features(200, 16, seed=8)
    same = kernel_distance(x, y)
    distances = [kernel_distance(x, y + t) for t in (0.25, 0.5, 1.0, 2.0)]
    assert abs(same) < 0.1 * distances[0]
    assert all(a < b for a, b in itertools.pairwise(distances))


def test_kernel_distance_needs_sets_of_equal_size():
    with pytest.raises(ValueError, match="equal size"):
        kernel_distance(_features(10, 4, seed=0), _features(12, 4, seed=1))


# ---- MS-SSIM diversity ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "scales"),
    [
        ((64,) * 3, 5),
        ((36,) * 3, 4),
        ((32,) * 3, 3),
        ((16,) * 3, 3),
        ((8,) * 3, 2),
        ((4,) * 3, 1),
        ((16, 64, 64), 3),
    ],
)
def test_ms_ssim_scales_follow_the_smallest_side(shape, scales):
    assert ms_ssim_scales(shape) == scales


@pytest.mark.parametrize("size", [16, 24, 32])
def test_ms_ssim_of_identical_volumes_is_one(size):
    volume = _smooth_volume(size, seed=0)
    assert mean_pairwise_ms_ssim([volume, volume.copy(), volume.copy()]) == pytest.approx(
        1.0, abs=1e-5
    )


def test_ms_ssim_of_independent_noise_is_low():
    rng = np.random.default_rng(1)
    noise = [rng.uniform(-1, 1, size=(16, 16, 16)).astype(np.float32) for _ in range(4)]
    assert mean_pairwise_ms_ssim(noise) < 0.2


def test_ms_ssim_falls_as_the_volumes_drift_apart():
    base = _smooth_volume(20, seed=2)
    rng = np.random.default_rng(3)
    scores = []
    for sigma in (0.02, 0.1, 0.3, 1.0):
        noisy = [base + sigma * rng.normal(size=base.shape).astype(np.float32) for _ in range(3)]
        scores.append(mean_pairwise_ms_ssim([np.clip(v, -1, 1) for v in noisy]))
    assert all(a > b for a, b in itertools.pairwise(scores))
    assert scores[0] > 0.9


def test_ms_ssim_averages_every_unordered_pair():
    base = _smooth_volume(16, seed=4)
    rng = np.random.default_rng(5)
    a, b, c = (base + s * rng.normal(size=base.shape).astype(np.float32) for s in (0.05, 0.1, 0.3))
    pairs = [mean_pairwise_ms_ssim([p, q]) for p, q in ((a, b), (a, c), (b, c))]
    assert len(set(pairs)) == 3  # distinct, so a wrong pairing would show
    assert mean_pairwise_ms_ssim([a, b, c]) == pytest.approx(np.mean(pairs), rel=1e-5)


def test_ms_ssim_depends_on_intensities_relative_to_the_range_start():
    # The same volumes on [0, 2] with low=0 score as on [-1, 1] with low=-1...
    volumes = [_smooth_volume(16, seed=s) for s in (7, 8)]
    model_scale = mean_pairwise_ms_ssim(volumes)
    assert mean_pairwise_ms_ssim([v + 1 for v in volumes], low=0.0) == pytest.approx(
        model_scale, rel=1e-5
    )
    # ...and differently when the range start is wrong (luminance is not shift-invariant).
    assert mean_pairwise_ms_ssim(volumes, low=0.0) != pytest.approx(model_scale, rel=1e-3)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ([(16, 16, 16)], "at least 2"),
        ([(16, 16, 16), (16, 16, 17)], "one shape"),
        ([(16, 16), (16, 16)], "3-D"),
        ([(3, 16, 16), (3, 16, 16)], "window"),
    ],
)
def test_ms_ssim_rejects_unusable_sets(shapes, match):
    with pytest.raises(ValueError, match=match):
        mean_pairwise_ms_ssim([np.zeros(s, dtype=np.float32) for s in shapes])


# ---- halves --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 9, 20])
def test_split_halves_are_disjoint_equal_and_seeded(n):
    first, second = split_halves(n, seed=3)
    assert len(first) == len(second) == n // 2
    assert not set(first) & set(second)
    assert set(first) | set(second) <= set(range(n))
    assert split_halves(n, seed=3) == (first, second)


def test_split_halves_change_with_the_seed():
    assert len({tuple(split_halves(20, seed=s)[0]) for s in range(5)}) > 1


def test_split_halves_need_two_per_half():
    with pytest.raises(ValueError, match="n >= 4"):
        split_halves(3, seed=0)
