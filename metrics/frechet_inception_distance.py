"""Frechet Inception Distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a
local Nash equilibrium"): the Frechet distance between Gaussians fitted to Inception-v3 pool features of real
and generated images.

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

All in float64, with population covariances (FeatureStats.get_mean_cov).
"""

import numpy as np
import scipy.linalg

from . import metric_utils


def _check_gaussian(mu, sigma, name):
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f'frechet_distance: {name} needs mean [F] and covariance [F, F], got {mu.shape} and '
                         f'{sigma.shape}')
    return mu, sigma


def _clip_eigenvalues(eigval):
    """Eigenvalues of a PSD matrix with rounding noise removed: values below max * dim * machine epsilon -> 0."""
    tol = max(float(np.abs(eigval).max(initial=0.0)), 0.0) * eigval.shape[0] * np.finfo(np.float64).eps
    return np.where(eigval > tol, eigval, 0.0)


def _sqrtm_psd(sigma):
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues at rounding level -> 0)."""
    sigma = (sigma + sigma.T) / 2
    eigval, eigvec = np.linalg.eigh(sigma)
    return (eigvec * np.sqrt(_clip_eigenvalues(eigval))) @ eigvec.T


def trace_sqrtm_product(sigma1, sigma2, method='eigh'):
    """Tr((sigma1 sigma2)^(1/2)) for covariance matrices [F, F], float64.

    'eigh' (default): sigma1 sigma2 is similar to the PSD matrix A = sigma1^(1/2) sigma2 sigma1^(1/2), so the trace
    is the sum of square roots of A's eigenvalues (those at rounding-noise level, below max * F * machine epsilon,
    count as 0). Stable even for
    rank-deficient covariances (fewer samples than features).
    'sqrtm': scipy.linalg.sqrtm of the product; a complex result is accepted only when its imaginary part is
    negligible (<= 1e-3 of the largest magnitude), and its real part is used.
    """
    if method == 'eigh':
        root1 = _sqrtm_psd(sigma1)
        inner = root1 @ sigma2 @ root1
        eigval = np.linalg.eigvalsh((inner + inner.T) / 2)
        return float(np.sqrt(_clip_eigenvalues(eigval)).sum())
    if method == 'sqrtm':
        root = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if isinstance(root, tuple):  # older scipy with disp=False semantics
            root = root[0]
        if np.iscomplexobj(root):
            scale = max(float(np.abs(root).max()), 1e-30)
            if float(np.abs(root.imag).max()) > 1e-3 * scale:
                raise ValueError('frechet_distance: sqrtm of the covariance product has a large imaginary part '
                                 f'({float(np.abs(root.imag).max()):.3g}); use method="eigh"')
            root = root.real
        return float(np.trace(root))
    raise ValueError(f"frechet_distance: method must be 'eigh' or 'sqrtm', got {method!r}")


def frechet_distance(mu1, sigma1, mu2, sigma2, method='eigh'):
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) for two Gaussians ([F] means, [F, F]
    covariances); float. `method` picks the matrix square root (see trace_sqrtm_product)."""
    mu1, sigma1 = _check_gaussian(mu1, sigma1, 'first Gaussian')
    mu2, sigma2 = _check_gaussian(mu2, sigma2, 'second Gaussian')
    if mu1.shape != mu2.shape:
        raise ValueError(f'frechet_distance: feature dimensions differ ({mu1.shape[0]} vs {mu2.shape[0]})')
    mean_term = float(np.square(mu1 - mu2).sum())
    trace_term = float(np.trace(sigma1) + np.trace(sigma2)) - 2 * trace_sqrtm_product(sigma1, sigma2, method)
    return mean_term + trace_term


def compute_fid(opts, max_real, num_gen):
    """FID between up to `max_real` dataset images (None = all) and `num_gen` generated images (Inception pool
    features, detector = metric_utils.inception_url(opts)). Returns a float on rank 0, NaN on other ranks."""
    detector_url = metric_utils.inception_url(opts)
    detector_kwargs = dict(return_features=True)  # [N, 2048] pool features

    mu_real, sigma_real = metric_utils.compute_feature_stats_for_dataset(
        opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs, rel_lo=0, rel_hi=0,
        batch_size=opts.batch_size, capture_mean_cov=True, max_items=max_real).get_mean_cov()
    mu_gen, sigma_gen = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs, rel_lo=0, rel_hi=1,
        batch_size=opts.batch_size, capture_mean_cov=True, max_items=num_gen).get_mean_cov()
    if opts.rank != 0:
        return float('nan')
    return float(frechet_distance(mu_real, sigma_real, mu_gen, sigma_gen))
