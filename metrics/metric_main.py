"""Metric registry: names -> metric functions, evaluation (`calc_metric`) and reporting (`report_metric`).

A metric function takes a `metric_utils.MetricOptions` and returns a dict {result key: float}. Register one with
the `@register_metric` decorator (the name is the function's name) from anywhere, e.g. a plugin; the host needs no
edit. `register_per_resolution_metric(base)` turns a registered metric into one evaluated at every resolution of
an image pyramid (keys get a `_res<r>` suffix).

Standard names (as in StyleGAN2-ADA / StyleGAN3):
    fid50k_full, kid50k_full, pr50k3_full, ppl2_wend, is50k     -- against the whole dataset, 50k fakes
    fid50k, kid50k, pr50k3                                       -- legacy: 50k reals, dataset x-flips kept
    ppl_zfull, ppl_wfull, ppl_zend, ppl_wend                      -- PPL variants with the face crop
CPU-practical variants (same definitions, fewer images):
    fid10k_full, fid5k_full, fid2k_full, kid10k_full, is10k  -- whole dataset, 10k / 5k / 2k fakes
    pr10k3_full                                               -- up to 10k reals, 10k fakes
    ppl2k_wend                                                -- 2000 paths, 8 per batch
Offline (no pretrained network):
    swd (10k images), swd2k (2048 images): multi-scale sliced Wasserstein distance x 1e3, keys <name> (mean over
    pyramid levels) and <name>_lvl<r> (each Laplacian level)
Per-resolution:
    swd_multires, swd2k_multires, fid10k_full_multires: the base metric at each pyramid resolution

A plugin with its own per-resolution generator outputs registers per-level metrics like this:

    from metrics import metric_main
    def heads_pyramid(G, z, c, **G_kwargs):      # -> {resolution: images in [-1, 1]} (or a list)
        ...
    metric_main.register_per_resolution_metric('swd2k', name='fsr_swd2k', G_pyramid_fn=heads_pyramid,
                                               pyramid_filter='box')
    # or, from a training hook that receives only register_metric:
    register_metric(metric_main.make_per_resolution_metric('swd2k', name='fsr_swd2k', G_pyramid_fn=heads_pyramid))
    # result keys are the base keys with a suffix: swd2k_res8, swd2k_lvl8_res8, swd2k_res16, ...
"""

import copy
import json
import os
import re
import time

import torch

import dnnlib

from . import frechet_inception_distance
from . import inception_score
from . import kernel_inception_distance
from . import metric_utils
from . import perceptual_path_length
from . import precision_recall
from . import sliced_wasserstein

# ---------------------------------------------------------------------------------------------------------------
# Registry.

_metric_dict = dict()  # name -> fn(opts) -> dict of results


def register_metric(fn=None, *, name=None):
    """Register `fn(opts) -> dict` under `name` (default fn.__name__); usable as a bare decorator. Registering an
    existing name replaces it. Returns fn."""
    if fn is None:
        return lambda f: register_metric(f, name=name)
    if not callable(fn):
        raise ValueError(f'register_metric: expected a function, got {type(fn).__name__}')
    name = fn.__name__ if name is None else name
    if not isinstance(name, str) or not re.fullmatch(r'[A-Za-z0-9_]+', name) or name == 'none':
        raise ValueError(f'register_metric: invalid metric name {name!r} (letters, digits and _ only; not "none")')
    _metric_dict[name] = fn
    return fn


def unregister_metric(name):
    """Remove a registered metric (KeyError if unknown)."""
    del _metric_dict[name]


def is_valid_metric(metric):
    """True if `metric` is a registered name."""
    return metric in _metric_dict


def list_valid_metrics():
    """Registered metric names, in registration order."""
    return list(_metric_dict.keys())


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and reporting.


def calc_metric(metric, seed=0, **kwargs):
    """Evaluate a registered metric. kwargs are MetricOptions fields (G, dataset_kwargs, num_gpus, rank, device,
    ...). Returns EasyDict(results=EasyDict{key: float}, metric, total_time (s), total_time_str, num_gpus); with
    num_gpus > 1 the results of rank 0 are broadcast to all ranks.

    The metric's random draws from the global generators (latents, labels, noise inputs) start from `seed` + rank,
    and the caller's global random states (torch CPU and the metric's CUDA device, numpy, python) are restored
    afterwards; work that runs or not depending on caches (dataset statistics, detector loading) leaves the global
    generators as it found them. So a metric's value does not depend on what ran before it, and a training run that
    evaluates metrics continues exactly as one that does not."""
    if not is_valid_metric(metric):
        raise ValueError(f'unknown metric {metric!r}; valid metrics: {", ".join(list_valid_metrics())}')
    opts = metric_utils.MetricOptions(**kwargs)

    start_time = time.time()
    with metric_utils.isolated_rng(seed + opts.rank, opts.device):
        results = _metric_dict[metric](opts)
    total_time = time.time() - start_time
    if not isinstance(results, dict):
        raise TypeError(f'metric {metric!r} returned {type(results).__name__}, expected a dict of results')

    results = dict(results)
    for key, value in results.items():
        if opts.num_gpus > 1:
            value = torch.as_tensor(float(value), dtype=torch.float64, device=opts.device)
            torch.distributed.broadcast(tensor=value, src=0)
            value = value.cpu()
        results[key] = float(value)

    return dnnlib.EasyDict(results=dnnlib.EasyDict(results), metric=metric, total_time=total_time,
                           total_time_str=dnnlib.util.format_time(total_time), num_gpus=opts.num_gpus)


def report_metric(result_dict, run_dir=None, snapshot_pkl=None):
    """Print the JSON line of a calc_metric result and, when run_dir is an existing folder, append it to
    <run_dir>/metric-<metric>.jsonl. The record is the result plus "snapshot_pkl" (relative to run_dir when both
    are given) and "timestamp" (seconds since the epoch). Returns the line."""
    metric = result_dict['metric']
    if run_dir is not None and snapshot_pkl is not None and not dnnlib.util.is_url(snapshot_pkl):
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    line = json.dumps(dict(result_dict, snapshot_pkl=snapshot_pkl, timestamp=time.time()))
    print(line)
    if run_dir is not None and os.path.isdir(run_dir):
        with open(os.path.join(run_dir, f'metric-{metric}.jsonl'), 'at') as f:
            f.write(line + '\n')
    return line


# ---------------------------------------------------------------------------------------------------------------
# Per-resolution evaluation.


def pyramid_resolutions(opts):
    """Resolutions evaluated by per-resolution metrics: opts.pyramid_resolutions if set, else the resolutions
    G_pyramid_fn produces (probed with one sample), else the powers of two from 4 to G.img_resolution."""
    if opts.pyramid_resolutions:
        return list(opts.pyramid_resolutions)
    if opts.G is None:
        raise ValueError('per-resolution metrics need a generator (or MetricOptions.pyramid_resolutions)')
    if opts.G_pyramid_fn is not None:
        G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
        with torch.no_grad():
            z = torch.randn([1, G.z_dim], device=opts.device)
            c = metric_utils.make_label_sampler(opts, G)(1)
            G_kwargs = metric_utils.generator_call_kwargs(G, opts)
            levels = metric_utils.as_level_dict(opts.G_pyramid_fn(G, z, c, **G_kwargs))
        return sorted(levels)
    resolutions, r = [], 4
    while r <= int(opts.G.img_resolution):
        resolutions.append(r)
        r *= 2
    return resolutions


def register_per_resolution_metric(base, name=None, resolutions=None, G_pyramid_fn=None, pyramid_filter=None):
    """Register make_per_resolution_metric(...) under its name; returns the function."""
    fn = make_per_resolution_metric(base, name=name, resolutions=resolutions, G_pyramid_fn=G_pyramid_fn,
                                    pyramid_filter=pyramid_filter)
    return register_metric(fn)


def make_per_resolution_metric(base, name=None, resolutions=None, G_pyramid_fn=None, pyramid_filter=None):
    """Build (without registering) metric `name` (default '<base>_multires', the function's __name__) that
    evaluates the registered metric `base` once per pyramid resolution r (MetricOptions.eval_resolution = r: real
    images downscaled with the pyramid filter, generated images taken from G_pyramid_fn or downscaled the same
    way). Each base result key k becomes k_res<r>, e.g. swd_res16, fid10k_full_res16.

    resolutions:    fixed list (default: see pyramid_resolutions).
    G_pyramid_fn:   ``fn(G, z, c, **G_kwargs) -> [images per resolution] or {r: images}`` used instead of
                    MetricOptions.G_pyramid_fn (a plugin attaches its per-resolution outputs this way).
    pyramid_filter: 'box' or 'fir', used instead of MetricOptions.pyramid_filter.
    A plugin that only receives `register_metric` (training hooks) can call
    ``register_metric(metric_main.make_per_resolution_metric('swd2k', name='fsr_swd2k', G_pyramid_fn=...))``.
    """
    if not is_valid_metric(base):
        raise ValueError(f'per-resolution metric: unknown base metric {base!r}')
    if G_pyramid_fn is not None and not callable(G_pyramid_fn):
        raise ValueError('per-resolution metric: G_pyramid_fn must be callable')
    if pyramid_filter is not None and pyramid_filter not in metric_utils.PYRAMID_FILTERS:
        raise ValueError(f'per-resolution metric: pyramid_filter must be one of '
                         f'{metric_utils.PYRAMID_FILTERS}, got {pyramid_filter!r}')
    name = f'{base}_multires' if name is None else name
    fixed = None if resolutions is None else sorted(int(r) for r in resolutions)
    overrides = {}
    if G_pyramid_fn is not None:
        overrides['G_pyramid_fn'] = G_pyramid_fn
    if pyramid_filter is not None:
        overrides['pyramid_filter'] = pyramid_filter

    def per_resolution_metric(opts):
        opts = opts.replace(**overrides)
        res_list = fixed if fixed is not None else pyramid_resolutions(opts)
        base_fn = _metric_dict[base]
        results = {}
        for idx, r in enumerate(res_list):
            sub = opts.replace(eval_resolution=r, progress=opts.progress.sub(rel_lo=idx / len(res_list),
                                                                             rel_hi=(idx + 1) / len(res_list)))
            for key, value in base_fn(sub).items():
                results[f'{key}_res{r}'] = value
        return results

    per_resolution_metric.__name__ = name
    per_resolution_metric.__doc__ = f'Metric {base!r} evaluated at every pyramid resolution.'
    return per_resolution_metric


# ---------------------------------------------------------------------------------------------------------------
# Standard metrics.


def _use_full_dataset(opts):
    """Evaluate against every dataset image, without x-flips (the *_full metrics)."""
    if opts.dataset_kwargs:
        opts.dataset_kwargs.update(max_size=None, xflip=False)


@register_metric
def fid50k_full(opts):
    _use_full_dataset(opts)
    return dict(fid50k_full=frechet_inception_distance.compute_fid(opts, max_real=None, num_gen=50000))


@register_metric
def kid50k_full(opts):
    _use_full_dataset(opts)
    kid = kernel_inception_distance.compute_kid(opts, max_real=1000000, num_gen=50000, num_subsets=100,
                                                max_subset_size=1000)
    return dict(kid50k_full=kid)


@register_metric
def pr50k3_full(opts):
    _use_full_dataset(opts)
    precision, recall = precision_recall.compute_pr(opts, max_real=200000, num_gen=50000, nhood_size=3,
                                                    row_batch_size=10000, col_batch_size=10000)
    return dict(pr50k3_full_precision=precision, pr50k3_full_recall=recall)


@register_metric
def ppl2_wend(opts):
    ppl = perceptual_path_length.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space='w', sampling='end',
                                             crop=False, batch_size=2)
    return dict(ppl2_wend=ppl)


@register_metric
def is50k(opts):
    _use_full_dataset(opts)
    mean, std = inception_score.compute_is(opts, num_gen=50000, num_splits=10)
    return dict(is50k_mean=mean, is50k_std=std)


# Legacy metrics: 50k reals, the dataset's own x-flip setting kept.

@register_metric
def fid50k(opts):
    if opts.dataset_kwargs:
        opts.dataset_kwargs.update(max_size=None)
    return dict(fid50k=frechet_inception_distance.compute_fid(opts, max_real=50000, num_gen=50000))


@register_metric
def kid50k(opts):
    if opts.dataset_kwargs:
        opts.dataset_kwargs.update(max_size=None)
    kid = kernel_inception_distance.compute_kid(opts, max_real=50000, num_gen=50000, num_subsets=100,
                                                max_subset_size=1000)
    return dict(kid50k=kid)


@register_metric
def pr50k3(opts):
    if opts.dataset_kwargs:
        opts.dataset_kwargs.update(max_size=None)
    precision, recall = precision_recall.compute_pr(opts, max_real=50000, num_gen=50000, nhood_size=3,
                                                    row_batch_size=10000, col_batch_size=10000)
    return dict(pr50k3_precision=precision, pr50k3_recall=recall)


def _ppl_face(opts, space, sampling):
    return perceptual_path_length.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space=space,
                                              sampling=sampling, crop=True, batch_size=2)


@register_metric
def ppl_zfull(opts):
    return dict(ppl_zfull=_ppl_face(opts, 'z', 'full'))


@register_metric
def ppl_wfull(opts):
    return dict(ppl_wfull=_ppl_face(opts, 'w', 'full'))


@register_metric
def ppl_zend(opts):
    return dict(ppl_zend=_ppl_face(opts, 'z', 'end'))


@register_metric
def ppl_wend(opts):
    return dict(ppl_wend=_ppl_face(opts, 'w', 'end'))


# CPU-practical variants: same definitions, fewer generated images.

@register_metric
def fid10k_full(opts):
    _use_full_dataset(opts)
    return dict(fid10k_full=frechet_inception_distance.compute_fid(opts, max_real=None, num_gen=10000))


@register_metric
def fid5k_full(opts):
    _use_full_dataset(opts)
    return dict(fid5k_full=frechet_inception_distance.compute_fid(opts, max_real=None, num_gen=5000))


@register_metric
def fid2k_full(opts):
    _use_full_dataset(opts)
    return dict(fid2k_full=frechet_inception_distance.compute_fid(opts, max_real=None, num_gen=2000))


@register_metric
def kid10k_full(opts):
    _use_full_dataset(opts)
    kid = kernel_inception_distance.compute_kid(opts, max_real=1000000, num_gen=10000, num_subsets=100,
                                                max_subset_size=1000)
    return dict(kid10k_full=kid)


@register_metric
def pr10k3_full(opts):
    _use_full_dataset(opts)
    precision, recall = precision_recall.compute_pr(opts, max_real=10000, num_gen=10000, nhood_size=3,
                                                    row_batch_size=5000, col_batch_size=5000)
    return dict(pr10k3_full_precision=precision, pr10k3_full_recall=recall)


@register_metric
def is10k(opts):
    _use_full_dataset(opts)
    mean, std = inception_score.compute_is(opts, num_gen=10000, num_splits=10)
    return dict(is10k_mean=mean, is10k_std=std)


@register_metric
def ppl2k_wend(opts):
    ppl = perceptual_path_length.compute_ppl(opts, num_samples=2000, epsilon=1e-4, space='w', sampling='end',
                                             crop=False, batch_size=8)
    return dict(ppl2k_wend=ppl)


# Offline sliced Wasserstein distance (no pretrained network).

def swd_results(name, per_level, mean):
    """Result dict of an SWD metric: {name: mean, name_lvl<r>: value of Laplacian level r}."""
    results = {name: mean}
    results.update({f'{name}_lvl{res}': value for res, value in per_level.items()})
    return results


@register_metric
def swd(opts):
    _use_full_dataset(opts)
    per_level, mean = sliced_wasserstein.compute_swd(opts, num_images=10000, patches_per_image=16)
    return swd_results('swd', per_level, mean)


@register_metric
def swd2k(opts):
    _use_full_dataset(opts)
    per_level, mean = sliced_wasserstein.compute_swd(opts, num_images=2048, patches_per_image=64)
    return swd_results('swd2k', per_level, mean)


register_per_resolution_metric('swd')
register_per_resolution_metric('swd2k')
register_per_resolution_metric('fid10k_full')
