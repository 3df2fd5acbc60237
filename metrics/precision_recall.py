"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved precision and recall metric for assessing
generative models"), on VGG16 features.

The manifold of a feature set is the union of balls around its points, each with radius = distance to the point's
k-th nearest neighbour within the set (the point itself excluded). Precision = fraction of generated points inside
the real manifold; recall = fraction of real points inside the generated manifold. Distances are computed in
column batches spread over the ranks, in float64 on CPU and float32 on CUDA (many GPUs run float64 matrix
products at a small fraction of their float32 speed; only near-ties between a distance and a radius can differ).
Features are kept in float32 (the original kept them in float16).
"""

import torch

from . import metric_utils


def distance_dtype(device):
    """float64 on CPU, float32 on CUDA and other accelerators."""
    return torch.float64 if torch.device(device).type == 'cpu' else torch.float32


def compute_distances(row_features, col_features, num_gpus=1, rank=0, col_batch_size=10000):
    """Euclidean distances [R, C] between rows [R, F] and columns [C, F] on rank 0 (None elsewhere), in
    distance_dtype(device). Column batch i is computed by rank i % num_gpus and broadcast; every rank must pass
    the same features."""
    if row_features.ndim != 2 or col_features.ndim != 2 or row_features.shape[1] != col_features.shape[1]:
        raise ValueError(f'compute_distances: expected [R, F] and [C, F], got {tuple(row_features.shape)} and '
                         f'{tuple(col_features.shape)}')
    dtype = distance_dtype(row_features.device)
    rows = row_features.to(dtype)
    batches = []
    for idx, start in enumerate(range(0, col_features.shape[0], col_batch_size)):
        cols = col_features[start:start + col_batch_size].to(dtype)
        owner = idx % num_gpus
        if rank == owner:
            dist = torch.cdist(rows, cols)
        else:
            dist = torch.empty([rows.shape[0], cols.shape[0]], dtype=dtype, device=rows.device)
        if num_gpus > 1:
            torch.distributed.broadcast(dist, src=owner)
        if rank == 0:
            batches.append(dist)
    return torch.cat(batches, dim=1) if rank == 0 else None


def manifold_coverage(manifold, probes, nhood_size=3, row_batch_size=10000, col_batch_size=10000, num_gpus=1,
                      rank=0):
    """Fraction of `probes` [P, F] that lie within the k-NN ball (k = nhood_size) of at least one point of
    `manifold` [M, F]; float on rank 0, NaN on other ranks."""
    if manifold.shape[0] <= nhood_size:
        raise ValueError(f'precision/recall: need more than nhood_size={nhood_size} points, got {manifold.shape[0]}')
    radii = []
    for batch in manifold.split(row_batch_size):
        dist = compute_distances(batch, manifold, num_gpus=num_gpus, rank=rank, col_batch_size=col_batch_size)
        if rank == 0:
            radii.append(dist.kthvalue(nhood_size + 1, dim=1).values)  # +1: the point itself is at distance 0
    radii = torch.cat(radii) if rank == 0 else None
    inside = []
    for batch in probes.split(row_batch_size):
        dist = compute_distances(batch, manifold, num_gpus=num_gpus, rank=rank, col_batch_size=col_batch_size)
        if rank == 0:
            inside.append((dist <= radii.unsqueeze(0)).any(dim=1))
    if rank != 0:
        return float('nan')
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(real_features, gen_features, nhood_size=3, row_batch_size=10000, col_batch_size=10000,
                     num_gpus=1, rank=0):
    """(precision, recall) of generated features [Ng, F] against real features [Nr, F]."""
    precision = manifold_coverage(real_features, gen_features, nhood_size, row_batch_size, col_batch_size,
                                  num_gpus, rank)
    recall = manifold_coverage(gen_features, real_features, nhood_size, row_batch_size, col_batch_size,
                               num_gpus, rank)
    return precision, recall


def compute_pr(opts, max_real, num_gen, nhood_size, row_batch_size, col_batch_size):
    """Precision and recall between up to `max_real` dataset images (None = all) and `num_gen` generated images,
    on VGG16 features. Returns (precision, recall) on rank 0, NaNs on other ranks."""
    detector_url = metric_utils.vgg16_url(opts)
    detector_kwargs = dict(return_features=True)

    real_features = metric_utils.compute_feature_stats_for_dataset(
        opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs, rel_lo=0, rel_hi=0,
        batch_size=opts.batch_size, capture_all=True, max_items=max_real).get_all_torch().to(opts.device)
    gen_features = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs, rel_lo=0, rel_hi=1,
        batch_size=opts.batch_size, capture_all=True, max_items=num_gen).get_all_torch().to(opts.device)
    return precision_recall(real_features, gen_features, nhood_size=nhood_size, row_batch_size=row_batch_size,
                            col_batch_size=col_batch_size, num_gpus=opts.num_gpus, rank=opts.rank)
