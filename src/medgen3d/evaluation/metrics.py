"""Fidelity and diversity of generated volumes, computed with MONAI's metrics.

Fidelity compares two sets of feature vectors, one per volume, from whatever feature
extractor the caller uses: the Fréchet distance (FID, Heusel et al. 2017) and the kernel
distance (KID, Bińkowski et al. 2018, "Demystifying MMD GANs"). Diversity is the mean
MS-SSIM (Wang et al. 2003) between the generated volumes themselves: identical samples
score 1, unrelated ones near 0, so lower means more diverse.

Both fidelity figures are noisy for the few dozen volumes an evaluation can afford;
:func:`split_halves` gives the two halves of a real set whose distance to each other is
the floor a model can reach.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import FIDMetric, MMDMetric, MultiScaleSSIMMetric

__all__ = [
    "MS_SSIM_KERNEL_SIZE",
    "MS_SSIM_WEIGHTS",
    "frechet_distance",
    "kernel_distance",
    "mean_pairwise_ms_ssim",
    "ms_ssim_scales",
    "split_halves",
]

# Wang et al.'s weights of scales 1..5 (also MONAI's default); fewer scales take the first
# ones, renormalised to sum to 1 so identical volumes still score exactly 1.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Side of the Gaussian window (sigma 1.5). 11 (2-D photographs) leaves a 64³ volume no room
# for more than two scales; 4 is what MONAI's 3-D generative-model tutorials use.
MS_SSIM_KERNEL_SIZE = 4


def frechet_distance(real: torch.Tensor, synthetic: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID).

    ``||mu_r - mu_s||² + tr(S_r + S_s - 2 (S_r S_s)^½)``, computed in float64 by
    :class:`monai.metrics.FIDMetric`. For two sets that differ by a constant shift the
    covariances are equal and the distance is exactly ``||shift||²``.

    Args:
        real: features of real volumes, (N, F), N >= 2, F >= 2.
        synthetic: features of generated volumes, (M, F), M >= 2.

    Returns:
        The distance, >= 0 up to rounding; 0 for identical sets.

    Raises:
        ValueError: when a set is not 2-D, has fewer than 2 rows (no covariance) or the
            feature sizes differ.
    """
    _check_features(real, synthetic, same_size=False)
    try:
        return float(FIDMetric()(synthetic.double(), real.double()))
    except ValueError as exc:
        if "Imaginary component" not in str(exc):
            raise
        # scipy's sqrtm of a nearly singular product (few volumes, many features) can
        # leave an imaginary part MONAI refuses: seen with 4 synthetic head-and-neck CTs.
        return _frechet_by_eigenvalues(real.double(), synthetic.double())


def _frechet_by_eigenvalues(real: torch.Tensor, synthetic: torch.Tensor) -> float:
    """The same distance with ``tr((S_r S_s)^½)`` as the sum of the square roots of the
    eigenvalues of ``S_r S_s``: real and non-negative for two covariance matrices (clipped
    at 0 against rounding), so no matrix square root is needed."""
    cov_real, cov_synthetic = torch.cov(real.T), torch.cov(synthetic.T)
    eigenvalues = torch.linalg.eigvals(cov_real @ cov_synthetic).real.clamp(min=0)
    shift = (real.mean(0) - synthetic.mean(0)).square().sum()
    trace = cov_real.trace() + cov_synthetic.trace() - 2 * eigenvalues.sqrt().sum()
    return float(shift + trace)


def kernel_distance(real: torch.Tensor, synthetic: torch.Tensor) -> float:
    """Kernel distance (KID): unbiased MMD² with the cubic polynomial kernel.

    The kernel is Bińkowski et al.'s ``k(x, y) = (x·y / F + 1)³``. MONAI's
    :class:`~monai.metrics.MMDMetric` computes the unbiased MMD² estimate (Gretton et al.
    2012, eq. 3) with a *linear* kernel on the rows it is given (its ``y_mapping`` maps each
    set on its own and cannot build a pairwise kernel), so it is given exact feature vectors
    of the cubic kernel on the pooled rows: ``V Λ^½`` from the eigendecomposition
    ``K = V Λ Vᵀ`` of their Gram matrix ((2n)², fine for the hundreds of volumes an
    evaluation has). Their dot products are the kernel values, and the number is::

        1/(n(n-1)) Σ_{i≠j} k(r_i, r_j) + 1/(n(n-1)) Σ_{i≠j} k(s_i, s_j) - 2/n² Σ_{i,j} k(r_i, s_j)

    Unlike FID it has no bias from a small n: two independent sets from one distribution
    average 0, so single values can be negative. For two *identical* sets it is exactly
    ``-(2/n) · (mean_i k(r_i, r_i) - mean_{i≠j} k(r_i, r_j))``, a negative number of order
    1/n: the estimator assumes the two sets are independent draws.

    Args:
        real: features of real volumes, (n, F), n >= 2.
        synthetic: features of generated volumes, (n, F): MONAI's estimator needs sets of
            equal size (subsample the larger one, e.g. with :func:`split_halves`).

    Returns:
        The estimate of MMD². For zero-mean, unit-variance features of a large F, shifting every
        feature of one set by ``d`` gives about ``(1 + d²)³ - 1``.

    Raises:
        ValueError: when a set is not 2-D, has fewer than 2 rows, or the shapes differ.
    """
    _check_features(real, synthetic, same_size=True)
    pooled = torch.cat([real, synthetic]).double()
    gram = (pooled @ pooled.T / pooled.shape[1] + 1.0) ** 3
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    # The Gram matrix is positive semi-definite; rounding can leave tiny negative eigenvalues.
    embedded = eigenvectors * eigenvalues.clamp_min(0.0).sqrt()
    n = real.shape[0]
    return float(MMDMetric()(embedded[:n], embedded[n:]))


def ms_ssim_scales(shape: Sequence[int], kernel_size: int = MS_SSIM_KERNEL_SIZE) -> int:
    """Number of MS-SSIM scales (1..5) that a volume of ``shape`` can hold.

    Every scale halves the volume, and the window must still fit in the coarsest one:
    ``side // 2^(L-1) >= kernel_size``. MONAI also requires
    ``side // (L-1)² > kernel_size - 1``, which is stricter for 4 scales. With the default
    window, sides of 64 get all 5 scales, 36 get 4, 16 get 3 and 8 get 2.

    Raises:
        ValueError: when the smallest side is below ``kernel_size`` (not even one scale).
    """
    side = min(shape)
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        fits_window = side // 2 ** (scales - 1) >= kernel_size
        fits_monai_check = side // max(1, scales - 1) ** 2 > kernel_size - 1
        if fits_window and fits_monai_check:
            return scales
    raise ValueError(
        f"volumes of shape {tuple(shape)} are smaller than the {kernel_size}-voxel window"
    )


def mean_pairwise_ms_ssim(
    volumes: Sequence[np.ndarray], data_range: float = 2.0, low: float = -1.0
) -> float:
    """Diversity: mean 3-D MS-SSIM over all unordered pairs ``i < j`` of volumes.

    Computed by :class:`monai.metrics.MultiScaleSSIMMetric` in 3-D with a
    :data:`MS_SSIM_KERNEL_SIZE` Gaussian window and as many scales as the volume holds
    (:func:`ms_ssim_scales`: 5 at 64³, 3 at 16³ to 32³), weighted by the first of
    :data:`MS_SSIM_WEIGHTS`, renormalised. Values from volumes of different sizes can thus
    use different scales and are not comparable.

    Volumes are first shifted by ``-low`` to ``[0, data_range]``: SSIM's luminance term
    assumes non-negative intensities, and on zero-centred data two regions of opposite mean
    would score below 0.

    Args:
        volumes: at least two arrays of one shape (Z, H, W), in ``[low, low + data_range]``
            (model scale [-1, 1] by default).
        data_range: width of the intensity range; sets SSIM's stability constants.
        low: lower end of the intensity range.

    Returns:
        The mean over the ``n(n-1)/2`` pairs, in [0, 1]; 1 when all volumes are identical.
        Lower means more diverse.

    Raises:
        ValueError: for fewer than two volumes, volumes that are not 3-D or whose shapes
            differ, or volumes too small for one scale.
    """
    if len(volumes) < 2:
        raise ValueError(f"diversity needs at least 2 volumes, got {len(volumes)}")
    shape = np.shape(volumes[0])
    if len(shape) != 3:
        raise ValueError(f"volumes must be 3-D (Z, H, W), got shape {shape}")
    shapes = {np.shape(v) for v in volumes}
    if len(shapes) > 1:
        raise ValueError(f"volumes must share one shape, got {sorted(shapes)}")
    weights = np.asarray(MS_SSIM_WEIGHTS[: ms_ssim_scales(shape)])
    metric = MultiScaleSSIMMetric(
        spatial_dims=3,
        data_range=data_range,
        kernel_size=MS_SSIM_KERNEL_SIZE,
        weights=tuple(weights / weights.sum()),
    )
    # (n, 1, Z, H, W): MONAI wants a channel axis.
    batch = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in volumes])[:, None] - low
    # One call per volume against all later ones; the metric accumulates and averages.
    for i in range(len(volumes) - 1):
        later = batch[i + 1 :]
        metric(y_pred=later, y=batch[i : i + 1].expand_as(later))
    return float(metric.aggregate())


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Two disjoint, equally sized halves of ``range(n)``, drawn at random.

    The distance between the halves of a real set is the floor that a model's distance to
    real data should be read against. The halves have ``n // 2`` indices each (one index is
    left out when ``n`` is odd) because :func:`kernel_distance` needs equal sizes.

    Args:
        n: number of items, >= 4 so each half has the 2 rows a covariance needs.
        seed: seed of the permutation; the same seed gives the same halves.

    Returns:
        The two halves, each sorted.
    """
    if n < 4:
        raise ValueError(f"splitting into halves of at least 2 needs n >= 4, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return sorted(order[:half].tolist()), sorted(order[half : 2 * half].tolist())


def _check_features(real: torch.Tensor, synthetic: torch.Tensor, same_size: bool) -> None:
    """Raise ``ValueError`` unless both sets are (rows >= 2, F >= 2) with one F."""
    for name, features in (("real", real), ("synthetic", synthetic)):
        if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 2:
            raise ValueError(
                f"{name} features must be (rows >= 2, features >= 2), got {tuple(features.shape)}"
            )
    if real.shape[1] != synthetic.shape[1]:
        raise ValueError(
            f"feature sizes differ: {real.shape[1]} real, {synthetic.shape[1]} synthetic"
        )
    if same_size and real.shape[0] != synthetic.shape[0]:
        raise ValueError(
            f"kernel distance needs sets of equal size, got {real.shape[0]} real "
            f"and {synthetic.shape[0]} synthetic"
        )
