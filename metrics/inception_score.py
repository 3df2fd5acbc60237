"""Inception Score (Salimans et al. 2016, "Improved techniques for training GANs"): exp(E_x KL(p(y|x) || p(y)))
over Inception-v3 class probabilities of generated images (1008 classes, output bias left out as in the original
TensorFlow metric), computed on `num_splits` equal parts; the mean and standard deviation over parts are reported.
"""

import numpy as np
import scipy.special

from . import metric_utils


def inception_score(probs, num_splits=10):
    """(mean, std) over `num_splits` consecutive parts of exp(mean_i KL(p_i || mean_j p_j)) for class
    probabilities probs [N, K] (rows sum to 1). float64; 0 * log 0 counts as 0."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f'inception_score: expected probabilities [N, K], got shape {probs.shape}')
    if num_splits < 1 or probs.shape[0] < num_splits:
        raise ValueError(f'inception_score: need num_splits >= 1 and at least num_splits rows, got '
                         f'{num_splits=} and {probs.shape[0]} rows')
    n = probs.shape[0]
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits: (i + 1) * n // num_splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = scipy.special.rel_entr(part, marginal).sum(axis=1).mean()  # rel_entr(p, q) = p log(p / q), 0 at p = 0
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts, num_gen, num_splits):
    """Inception score of `num_gen` generated images. Returns (mean, std) on rank 0, NaNs on other ranks."""
    detector_url = metric_utils.inception_url(opts)
    detector_kwargs = dict(no_output_bias=True)  # [N, 1008] class probabilities without the output bias

    gen_probs = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs, rel_lo=0, rel_hi=1,
        batch_size=opts.batch_size, capture_all=True, max_items=num_gen).get_all()
    if opts.rank != 0:
        return float('nan'), float('nan')
    return inception_score(gen_probs, num_splits=num_splits)
