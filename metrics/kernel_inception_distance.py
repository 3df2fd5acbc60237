"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared
maximum mean discrepancy between Inception-v3 pool features of real and generated images, with the cubic
polynomial kernel k(u, v) = (u.v / n + 1)^3 (n = feature dimension), averaged over random subsets.
"""

import numpy as np

from . import metric_utils


def kernel_mmd2(real_features, gen_features, num_subsets=100, max_subset_size=1000, seed=None):
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over `num_subsets` random subset pairs.

    real_features [Nr, n], gen_features [Ng, n]; m = min(Nr, Ng, max_subset_size). For each pair of subsets
    x (generated) and y (real) of size m drawn without replacement:
        t += [sum(Kxx + Kyy) - trace(Kxx + Kyy)] / (m - 1) - 2 sum(Kxy) / m
    and the result is t / num_subsets / m. Computed in float64; `seed` seeds the subset choice (None = the
    global numpy RNG, as in the original metric).
    """
    real = np.asarray(real_features, dtype=np.float64)
    gen = np.asarray(gen_features, dtype=np.float64)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f'kernel_mmd2: expected [N, n] feature arrays with equal n, got {real.shape} and {gen.shape}')
    if num_subsets < 1:
        raise ValueError(f'kernel_mmd2: num_subsets must be >= 1, got {num_subsets}')
    n = real.shape[1]
    m = min(real.shape[0], gen.shape[0], int(max_subset_size))
    if m < 2:
        raise ValueError(f'kernel_mmd2: need at least 2 real and 2 generated samples, got {real.shape[0]} and '
                         f'{gen.shape[0]}')
    rng = np.random if seed is None else np.random.RandomState(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)]
        y = real[rng.choice(real.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def compute_kid(opts, max_real, num_gen, num_subsets, max_subset_size):
    """KID between up to `max_real` dataset images (None = all) and `num_gen` generated images. Returns a float on
    rank 0, NaN on other ranks."""
    detector_url = metric_utils.inception_url(opts)
    detector_kwargs = dict(return_features=True)  # [N, 2048] pool features

    real_features = metric_utils.compute_feature_stats_for_dataset(
        opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs, rel_lo=0, rel_hi=0,
        batch_size=opts.batch_size, capture_all=True, max_items=max_real).get_all()
    gen_features = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs, rel_lo=0, rel_hi=1,
        batch_size=opts.batch_size, capture_all=True, max_items=num_gen).get_all()
    if opts.rank != 0:
        return float('nan')
    return kernel_mmd2(real_features, gen_features, num_subsets=num_subsets, max_subset_size=max_subset_size)
