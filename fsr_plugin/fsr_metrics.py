"""The FSR diagnostics (fsr_plugin.diagnostics) as metrics of the host's registry.

The host never imports this module. The plugin calls `register_fsr_metrics(register_metric, context)` from its
`register_metrics` hook (or a plugin package's module-level `register_metrics`, which train.py calls to validate
--metrics names); `register_metric` is the host's `metrics.metric_main.register_metric`. Each metric is a function
of a `MetricOptions` (opts.G is G_ema, opts.dataset_kwargs the training set) returning a dict of floats, written by
the host to <run_dir>/metric-<name>.jsonl.

MetricOptions has fixed fields, and the training loop passes only G_ema, the dataset and `metric_kwargs`, so the
objects a metric needs beyond those (the FSR heads, the discriminator) reach it through an `FSRMetricContext` bound
at registration time: callables that the plugin closes over its live modules. Registering again (e.g. first without
a context for name validation, then from the training hook with one) replaces the functions. Without a context:
  * generator outputs per resolution come from opts.G_pyramid_fn when set, else from G's image downscaled with
    fsr_plugin.pyramid.build_pyramid(filter=opts.pyramid_filter); real images are downscaled the same way;
  * hidden features come from G.synthesis(ws, return_features=True);
  * fsr_feature_sim has no discriminator and returns {'fsr_feature_sim_available': 0.0} with a printed note.

Metrics and result keys (r = resolution):
  fsr_sparsity     fsr_sparsity_active_res<r> (mean active fraction), fsr_sparsity_active_p05/p50/p95_res<r>,
                   fsr_sparsity_hoyer_res<r>, fsr_sparsity_hoyer_p50_res<r>, fsr_sparsity_zero_res<r>
                   (+ fsr_sparsity_union_res<r> when the patch is larger than 1x1)
  fsr_moment_gap   fsr_moment_gap1_res<r>, fsr_moment_gap2_res<r>, fsr_moment_floor1_res<r>,
                   fsr_moment_floor2_res<r>, fsr_moment_learned_res<r> (1 = both gaps within 2x the floor),
                   fsr_moment_learned_levels (count); levels smaller than the patch (r < q) are left out.
                   With moment_draws = K > 1, every gap and floor is the mean over K independent draws.
                   Real images enter as x / 127.5 - 1 (the training convention), generated ones as produced.
  fsr_feature_sim  fsr_feature_sim_cos_res<r>, fsr_feature_sim_frac_res<r>, fsr_feature_sim_random_cos_res<r>,
                   fsr_feature_sim_random_frac_res<r>, fsr_feature_sim_available
  fsr_swd_levels   fsr_swd_res<r> (mean over the level's Laplacian bands, x 1e3), fsr_swd_res<r>_lvl<b>,
                   fsr_swd_mean (mean over levels)
  fsr_level_consistency  for each generated level r with a level r/2 below: fsr_consistency_res<r> = mean over
                   images and pixels of |down(x_r) - x_{r/2}|^2 (channels summed; down = the pyramid filter) over the
                   real level r/2's total pixel variance (0 for a consistent pyramid, as every real one is);
                   fsr_consistency_unpaired_res<r> = the same with x_{r/2} of another sample (the value of unrelated
                   levels, about 2); fsr_consistency_mean (mean of the first over levels). moment_images images
                   per side.
  fsr_position_stats  per level r: fsr_position_mean_res<r> and fsr_position_var_res<r> (diagnostics.position_gaps:
                   the fixed pattern of the mean image over the reals' pixel std, and the rms log unevenness of the
                   variance image), fsr_position_mean_floor_res<r> and fsr_position_var_floor_res<r> (the same for a
                   second real sample), fsr_position_var_scale_res<r> (overall variance ratio); the samples of
                   fsr_moment_gap (moment_images per sample, averaged over moment_draws draws).
  fsr_noise_share  per level r: fsr_noise_var_res<r> (the variance over images of the level, averaged over channels
                   and positions, with fresh noise inputs per image: noise_mode='random'), fsr_noise_var_fixed_res<r>
                   (the same latents with one fixed noise image for all: noise_mode='const') and
                   fsr_noise_share_res<r> = 1 - fixed / random: the share of the level's variation that the
                   synthesis noise inputs, not the latent, make (0 for a generator without noise, 1 for one that
                   ignores its latent; slightly below 0 where the one fixed noise image adds variance that fresh ones
                   average out). moment_images generated images, the random noise seeded with seed; no real data.
                   Only the synthesis layers' noise images are fixed: other draws of the forward pass (the FSR top
                   head's --fsr-top-wta-jitter) stay fresh per image and count with the latent.
Every rank computes the same values (fixed seeds), so the keys agree across processes.
"""

import collections
import copy
import dataclasses
import json
from typing import Callable, Optional, Sequence

import numpy as np
import torch

import dnnlib
from fsr_plugin import diagnostics
from fsr_plugin import pyramid as fsr_pyramid
from metrics import metric_utils

METRIC_NAMES = ('fsr_sparsity', 'fsr_moment_gap', 'fsr_feature_sim', 'fsr_swd_levels', 'fsr_level_consistency',
                'fsr_position_stats', 'fsr_noise_share')


@dataclasses.dataclass
class FSRMetricContext:
    """What the FSR metrics need beyond MetricOptions (all optional; see the module docstring for fallbacks).

    pyramid_fn:       fn(G, z, c, **G_kwargs) -> {r: images [N, C, r, r]} float ~[-1, 1]: G's per-resolution
                      outputs (the FSR heads). Falls back to opts.G_pyramid_fn, then to downscaled G images.
    real_pyramid_fn:  fn(images [N, C, R, R] float in [-1, 1], resolutions) -> {r: images}: the plugin's real
                      pyramid (default: fsr_plugin.pyramid.build_pyramid with opts.pyramid_filter).
    features_fn:      fn(G, z, c, **G_kwargs) -> {r: hidden activations [N, C_r, r, r]} (default: synthesis
                      features with return_features=True).
    get_D:            fn() -> the discriminator to inspect (or None).
    d_filters_fn:     fn(D, r, kernel_size) -> D's effective first-layer filters [F, C, k, k] at r, or None
                      (default: diagnostics.effective_filters_d_first_layer with the mode whose kernel size matches
                      the atoms; random baseline: random_d_first_layer_filters, else i.i.d. normal filters).
    head_atoms_fn:    fn(G, r) -> G's output atoms [A, C, k, k] at r, or None (default: diagnostics.torgb_atoms).
    relu_resolutions: resolutions whose hidden layer is a ReLU (sparsity counts exact non-zeros there).
    resolutions:      resolutions to evaluate (default: the pyramid's, else 4 .. G.img_resolution).
    sparsity_images, sparsity_tau, sparsity_patch:  generated images, tau and patch size of fsr_sparsity.
    moment_images, moment_q:  images per sample (3 samples: real reference, real floor, fake) and patch size.
    moment_draws:     independent draws of the three samples that fsr_moment_gap averages (disjoint reals, 2 x
                      moment_images x moment_draws of them; fresh latents): its gaps and floors are the means over
                      draws, so the gap / floor ratio is that of the expected gap to the expected floor.
    swd_images, swd_patches_per_image:  images per side and patches per image and band of fsr_swd_levels.
    random_draws:     random networks averaged for the feature-similarity baseline.
    seed:             seed of latents, dataset subsets, random baselines and SWD directions.
    """
    pyramid_fn: Optional[Callable] = None
    real_pyramid_fn: Optional[Callable] = None
    features_fn: Optional[Callable] = None
    get_D: Optional[Callable] = None
    d_filters_fn: Optional[Callable] = None
    head_atoms_fn: Optional[Callable] = None
    relu_resolutions: Sequence[int] = ()
    resolutions: Optional[Sequence[int]] = None
    sparsity_images: int = 32
    sparsity_tau: float = 0.1
    sparsity_patch: int = 1
    moment_images: int = 1000
    moment_q: int = 3
    moment_draws: int = 1
    swd_images: int = 1024
    swd_patches_per_image: int = 64
    random_draws: int = 5
    seed: int = 0

    def __post_init__(self):
        for name in ('pyramid_fn', 'real_pyramid_fn', 'features_fn', 'get_D', 'd_filters_fn', 'head_atoms_fn'):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f'FSRMetricContext.{name} must be callable or None, got {type(value).__name__}')
        for name in ('sparsity_images', 'sparsity_patch', 'moment_images', 'moment_q', 'moment_draws', 'swd_images',
                     'swd_patches_per_image', 'random_draws'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'FSRMetricContext.{name} must be an int >= 1, got {value!r}')
        if not self.sparsity_tau >= 0:
            raise ValueError(f'FSRMetricContext.sparsity_tau must be >= 0, got {self.sparsity_tau}')
        self.relu_resolutions = tuple(int(r) for r in self.relu_resolutions)
        if self.resolutions is not None:
            self.resolutions = tuple(sorted(int(r) for r in self.resolutions))


# ----------------------------------------------------------------------------------------------------------------------
# Shared helpers.


def _generator(opts):
    if opts.G is None:
        raise ValueError('FSR metrics need a generator: MetricOptions.G is None')
    return copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)


def _latents(G, opts, num, seed):
    """Batches (z [n, z_dim], c [n, c_dim]) on opts.device, `num` latents in all, z from a seeded CPU generator."""
    gen = torch.Generator().manual_seed(int(seed))
    sample_labels = metric_utils.make_label_sampler(opts, G)
    batch = opts.batch_gen if opts.batch_gen is not None else min(opts.batch_size, 16)
    done = 0
    while done < num:
        n = min(batch, num - done)
        z = torch.randn([n, G.z_dim], generator=gen).to(opts.device)
        yield z, sample_labels(n)
        done += n


def _default_features(G, z, c, **G_kwargs):
    """{r: hidden activations} of G's synthesis blocks for latents z and labels c."""
    mapping_kwargs = {k: G_kwargs.pop(k) for k in ('truncation_psi', 'truncation_cutoff') if k in G_kwargs}
    ws = G.mapping(z, c, **mapping_kwargs)
    _img, features = G.synthesis(ws, return_features=True, **G_kwargs)
    return features


def _pyramid_fn(ctx, opts):
    return ctx.pyramid_fn if ctx.pyramid_fn is not None else opts.G_pyramid_fn


def _resolutions(ctx, opts, G):
    """Evaluated resolutions: context, then opts.pyramid_resolutions, then the pyramid function's output (probed
    with one latent), then the powers of two 4 .. G.img_resolution."""
    if ctx.resolutions is not None:
        return list(ctx.resolutions)
    if opts.pyramid_resolutions:
        return list(opts.pyramid_resolutions)
    fn = _pyramid_fn(ctx, opts)
    if fn is not None:
        z, c = next(_latents(G, opts, 1, ctx.seed))
        with torch.no_grad():
            return sorted(metric_utils.as_level_dict(fn(G, z, c, **metric_utils.generator_call_kwargs(G, opts))))
    out, r = [], 4
    while r <= int(G.img_resolution):
        out.append(r)
        r *= 2
    return out


@torch.no_grad()
def _fake_pyramid(ctx, opts, G, z, c, G_kwargs, resolutions):
    """{r: float32 images} of the generator at each resolution."""
    fn = _pyramid_fn(ctx, opts)
    if fn is not None:
        levels = metric_utils.as_level_dict(fn(G, z, c, **G_kwargs))
        missing = [r for r in resolutions if r not in levels]
        if missing:
            raise ValueError(f'FSR metrics: the pyramid function gave resolutions {sorted(levels)}, not {missing}')
        return {r: levels[r].to(torch.float32) for r in resolutions}
    images = G(z, c, **G_kwargs).to(torch.float32)
    return fsr_pyramid.build_pyramid(images, resolutions, filter=opts.pyramid_filter)


@torch.no_grad()
def _real_pyramid(ctx, opts, images_uint8, resolutions):
    """uint8 [N, C, H, W] dataset images -> {r: float32 images in [-1, 1]} (x / 127.5 - 1, then the pyramid)."""
    x = torch.as_tensor(images_uint8).to(opts.device).to(torch.float32) / 127.5 - 1
    if ctx.real_pyramid_fn is not None:
        levels = metric_utils.as_level_dict(ctx.real_pyramid_fn(x, list(resolutions)))
        missing = [r for r in resolutions if r not in levels]
        if missing:
            raise ValueError(f'FSR metrics: real_pyramid_fn gave resolutions {sorted(levels)}, not {missing}')
        return {r: levels[r].to(torch.float32) for r in resolutions}
    return fsr_pyramid.build_pyramid(x, resolutions, filter=opts.pyramid_filter)


def _open_dataset(opts, G, what):
    """The real dataset (whole, without x-flips), checked against G's channel count."""
    if not opts.dataset_kwargs:
        raise ValueError(f'{what} needs real images: MetricOptions.dataset_kwargs is empty')
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)
    if int(dataset.num_channels) != int(G.img_channels):
        raise ValueError(f'{what}: dataset images have {dataset.num_channels} channels, the generator '
                         f'{G.img_channels}')
    return dataset


def _real_batches(dataset, indices, batch_size):
    """uint8 tensors [n, C, H, W] of the dataset items `indices`, in batches."""
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)][0] for i in indices[start:start + batch_size]]
        yield torch.from_numpy(np.stack(items))


def _log(opts, message):
    if opts.rank == 0:
        print(message, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# The metrics.


def _sparsity_metric(ctx):
    def fsr_sparsity(opts):
        G = _generator(opts)
        G_kwargs = metric_utils.generator_call_kwargs(G, opts)
        features_fn = ctx.features_fn if ctx.features_fn is not None else _default_features
        collected = {}
        with torch.no_grad():
            for z, c in _latents(G, opts, ctx.sparsity_images, ctx.seed):
                for r, f in features_fn(G, z, c, **dict(G_kwargs)).items():
                    collected.setdefault(int(r), []).append(f.detach().to('cpu', torch.float32))
        wanted = set(ctx.resolutions) if ctx.resolutions is not None else set(collected)
        results = {}
        for r in sorted(wanted & set(collected)):
            patch = min(ctx.sparsity_patch, r)
            s = diagnostics.layer_sparsity(torch.cat(collected[r]), tau=ctx.sparsity_tau, patch=patch,
                                           relu_layer=r in ctx.relu_resolutions)
            results[f'fsr_sparsity_active_res{r}'] = s['mean_active_fraction']
            for p, tag in ((0.05, 'p05'), (0.5, 'p50'), (0.95, 'p95')):
                results[f'fsr_sparsity_active_{tag}_res{r}'] = s['active_fraction_quantiles'][p]
            results[f'fsr_sparsity_hoyer_res{r}'] = s['mean_hoyer']
            results[f'fsr_sparsity_hoyer_p50_res{r}'] = s['hoyer_quantiles'][0.5]
            results[f'fsr_sparsity_zero_res{r}'] = s['zero_fraction']
            if patch > 1:
                results[f'fsr_sparsity_union_res{r}'] = s['mean_union_fraction']
        if not results:
            raise ValueError(f'fsr_sparsity: no hidden features at the requested resolutions {sorted(wanted)}; '
                             f'available {sorted(collected)}')
        return results
    return fsr_sparsity


_REAL_MOMENTS_CACHE = collections.OrderedDict()  # key -> {'real_a'/'real_b': {r: PatchMoments}}, newest last
_REAL_MOMENTS_CACHE_SIZE = 4


def _draw_setup(ctx, opts, what, min_images):
    """(G, G_kwargs, dataset, n, draws) of a metric on ctx.moment_draws draws of two disjoint real samples and one
    generated sample of n = min(ctx.moment_images, len(dataset) // (2 draws)) images each (at least min_images)."""
    G = _generator(opts)
    G_kwargs = metric_utils.generator_call_kwargs(G, opts)
    dataset = _open_dataset(opts, G, what)
    draws = ctx.moment_draws
    n = min(ctx.moment_images, len(dataset) // (2 * draws))
    if n < min_images:
        raise ValueError(f'{what} needs at least {2 * draws * min_images} dataset images for {draws} draw(s) of two '
                         f'disjoint real samples{"" if min_images == 1 else f" of {min_images} or more"}, got '
                         f'{len(dataset)}')
    return G, G_kwargs, dataset, n, draws


def _real_draw_indices(ctx, dataset, n, draws):
    """Per draw k, {'real_a', 'real_b'}: dataset indices of two disjoint samples of n images, images 2kn+n..2kn+2n
    and 2kn..2kn+n of one permutation seeded with ctx.seed (so draws never share an image)."""
    perm = np.random.RandomState(ctx.seed).permutation(len(dataset))
    return [dict(real_a=perm[2 * k * n + n:2 * k * n + 2 * n], real_b=perm[2 * k * n:2 * k * n + n])
            for k in range(draws)]


def _fake_draws(ctx, opts, G, G_kwargs, resolutions, n, draws):
    """Yields (k, {r: images}) over one stream of draws * n latents: draw k gets images kn..(k+1)n of it (a
    generator batch that straddles two draws is split)."""
    done = 0
    for z, c in _latents(G, opts, draws * n, ctx.seed):
        levels = _fake_pyramid(ctx, opts, G, z, c, G_kwargs, resolutions)
        pos = 0
        while pos < z.shape[0]:
            stop = min(z.shape[0], pos + n - (done + pos) % n)
            yield (done + pos) // n, {r: x[pos:stop] for r, x in levels.items()}
            pos = stop
        done += z.shape[0]


def _real_moments(ctx, opts, dataset, n, q, resolutions, draws=1):
    """{'real_a', 'real_b': [{r: PatchMoments}] * draws}: per draw, two disjoint samples of n dataset images (a seeded
    permutation; draw k takes images 2kn .. 2(k+1)n of it, so draws never share an image).

    They depend only on the data, the sample and the pyramid, not on the generator, so they are kept in memory
    (the last few settings) and reused for every later snapshot of the same evaluation: the real side was half of
    the metric's time. Not kept when the context brings its own real pyramid function.
    """
    key = None
    if ctx.real_pyramid_fn is None:
        key = (json.dumps(opts.dataset_kwargs, sort_keys=True, default=str), len(dataset), n, q, ctx.seed,
               tuple(resolutions), opts.pyramid_filter, str(opts.device), draws)
        if key in _REAL_MOMENTS_CACHE:
            _REAL_MOMENTS_CACHE.move_to_end(key)
            return copy.deepcopy(_REAL_MOMENTS_CACHE[key])
    moments = {'real_a': [], 'real_b': []}
    for samples in _real_draw_indices(ctx, dataset, n, draws):
        for name, indices in samples.items():
            levels = {r: diagnostics.PatchMoments(q) for r in resolutions}
            for images in _real_batches(dataset, indices, opts.batch_size):
                for r, x in _real_pyramid(ctx, opts, images, resolutions).items():
                    levels[r].update(x)
            moments[name].append(levels)
    if key is not None:
        _REAL_MOMENTS_CACHE[key] = copy.deepcopy(moments)
        while len(_REAL_MOMENTS_CACHE) > _REAL_MOMENTS_CACHE_SIZE:
            _REAL_MOMENTS_CACHE.popitem(last=False)
    return moments


def _moment_gap_metric(ctx):
    def fsr_moment_gap(opts):
        G, G_kwargs, dataset, n, draws = _draw_setup(ctx, opts, 'fsr_moment_gap', 1)
        q = ctx.moment_q
        resolutions = [r for r in _resolutions(ctx, opts, G) if r >= q]
        if not resolutions:
            raise ValueError(f'fsr_moment_gap: no resolution is at least the patch size q={q}')
        moments = _real_moments(ctx, opts, dataset, n, q, resolutions, draws)
        moments['fake'] = [{r: diagnostics.PatchMoments(q) for r in resolutions} for _ in range(draws)]
        for k, levels in _fake_draws(ctx, opts, G, G_kwargs, resolutions, n, draws):
            for r, x in levels.items():
                moments['fake'][k][r].update(x)
        results, learned = {}, 0
        for r in resolutions:
            gaps = [diagnostics.moment_gap_with_floor(moments['real_a'][k][r], moments['real_b'][k][r],
                                                      moments['fake'][k][r], q=q) for k in range(draws)]
            for key in ('gap_1', 'gap_2', 'floor_1', 'floor_2'):
                results[f'fsr_moment_{key.replace("_", "")}_res{r}'] = float(np.mean([g[key] for g in gaps]))
            ok = all(results[f'fsr_moment_gap{k}_res{r}'] <= 2 * results[f'fsr_moment_floor{k}_res{r}'] for k in (1, 2))
            results[f'fsr_moment_learned_res{r}'] = float(ok)
            learned += int(ok)
        results['fsr_moment_learned_levels'] = float(learned)
        return results
    return fsr_moment_gap


def d_mode_for_kernel(D, r, k):
    """'fromrgb' or 'composed': the mode of effective_filters_d_first_layer whose filters are k x k, else None."""
    block = getattr(D, f'b{r}', None)
    fromrgb = getattr(block, 'fromrgb', None)
    if fromrgb is None:
        return None
    k1 = int(fromrgb.weight.shape[-1])
    if k1 == k:
        return 'fromrgb'
    second = getattr(block, 'conv0', None)
    if second is None:
        second = getattr(block, 'conv', None)
    if second is not None and k1 + int(second.weight.shape[-1]) - 1 == k:
        return 'composed'
    return None


def _feature_sim_metric(ctx):
    def fsr_feature_sim(opts):
        D = ctx.get_D() if ctx.get_D is not None else None
        if D is None:
            _log(opts, 'fsr_feature_sim: no discriminator available (register the metric with an FSRMetricContext '
                       'whose get_D returns one); reporting fsr_feature_sim_available = 0')
            return dict(fsr_feature_sim_available=0.0)
        if opts.G is None:
            raise ValueError('fsr_feature_sim needs a generator: MetricOptions.G is None')
        G = opts.G
        resolutions = list(ctx.resolutions) if ctx.resolutions is not None else list(G.synthesis.block_resolutions)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        results, skipped = {}, []
        with torch.no_grad():
            for r in resolutions:
                atoms = ctx.head_atoms_fn(G, r) if ctx.head_atoms_fn is not None else diagnostics.torgb_atoms(G, r)
                if atoms is None:
                    skipped.append(f'{r} (no G atoms)')
                    continue
                atoms = torch.as_tensor(atoms).detach().to('cpu', torch.float64)
                k = int(atoms.shape[-1])
                if ctx.d_filters_fn is not None:
                    filters = ctx.d_filters_fn(D, r, k)
                    if filters is None:
                        skipped.append(f'{r} (no D filters)')
                        continue
                    filters = torch.as_tensor(filters).detach().to('cpu', torch.float64)
                    d_random = [torch.randn(filters.shape, generator=gen, dtype=torch.float64)
                                for _ in range(ctx.random_draws)]
                else:
                    mode = d_mode_for_kernel(D, r, k)
                    if mode is None:
                        skipped.append(f'{r} (no D first layer with {k}x{k} filters)')
                        continue
                    filters = diagnostics.effective_filters_d_first_layer(D, r, mode=mode)
                    d_random = [diagnostics.random_d_first_layer_filters(D, r, mode=mode, generator=gen)
                                for _ in range(ctx.random_draws)]
                g_random = [torch.randn(atoms.shape, generator=gen, dtype=torch.float64)
                            for _ in range(ctx.random_draws)]
                sim = diagnostics.feature_similarity(filters, atoms, random_baseline=(d_random, g_random))
                results[f'fsr_feature_sim_cos_res{r}'] = sim['mean_matched_cos']
                results[f'fsr_feature_sim_frac_res{r}'] = sim['frac_above']
                results[f'fsr_feature_sim_random_cos_res{r}'] = sim['random_mean_matched_cos']
                results[f'fsr_feature_sim_random_frac_res{r}'] = sim['random_frac_above']
        if skipped:
            _log(opts, f'fsr_feature_sim: skipped resolutions {", ".join(skipped)}')
        results['fsr_feature_sim_available'] = float(len(results) > 0)
        return results
    return fsr_feature_sim


def _swd_levels_metric(ctx):
    def fsr_swd_levels(opts):
        G = _generator(opts)
        G_kwargs = metric_utils.generator_call_kwargs(G, opts)
        dataset = _open_dataset(opts, G, 'fsr_swd_levels')
        n = min(ctx.swd_images, len(dataset))
        if n < 1:
            raise ValueError('fsr_swd_levels: the dataset is empty')
        resolutions = _resolutions(ctx, opts, G)
        indices = np.random.RandomState(ctx.seed).permutation(len(dataset))[:n]
        real = {r: [] for r in resolutions}
        fake = {r: [] for r in resolutions}
        for images in _real_batches(dataset, indices, opts.batch_size):
            for r, x in _real_pyramid(ctx, opts, images, resolutions).items():
                real[r].append(metric_utils.images_to_uint8(x).cpu())
        for z, c in _latents(G, opts, n, ctx.seed):
            for r, x in _fake_pyramid(ctx, opts, G, z, c, G_kwargs, resolutions).items():
                fake[r].append(metric_utils.images_to_uint8(x).cpu())
        levels = diagnostics.per_level_swd({r: torch.cat(v) for r, v in real.items()},
                                           {r: torch.cat(v) for r, v in fake.items()},
                                           patches_per_image=ctx.swd_patches_per_image, seed=ctx.seed)
        results = {}
        for r, v in levels.items():
            results[f'fsr_swd_res{r}'] = v['swd']
            for b, value in v['bands'].items():
                results[f'fsr_swd_res{r}_lvl{b}'] = value
        results['fsr_swd_mean'] = float(np.mean([v['swd'] for v in levels.values()]))
        return results
    return fsr_swd_levels


def _consistency_metric(ctx):
    def fsr_level_consistency(opts):
        G = _generator(opts)
        G_kwargs = metric_utils.generator_call_kwargs(G, opts)
        dataset = _open_dataset(opts, G, 'fsr_level_consistency')
        n = min(ctx.moment_images, len(dataset))
        resolutions = _resolutions(ctx, opts, G)
        pairs = [(lo, hi) for lo, hi in zip(resolutions[:-1], resolutions[1:]) if hi == 2 * lo]
        if not pairs or n < 2:
            raise ValueError(f'fsr_level_consistency needs two consecutive levels (got {resolutions}) and at least '
                             f'2 dataset images (got {len(dataset)})')
        lows = sorted({lo for lo, _ in pairs})
        real_sum = {lo: 0.0 for lo in lows}
        real_sq = {lo: 0.0 for lo in lows}
        real_count = {lo: 0 for lo in lows}
        perm = np.random.RandomState(ctx.seed).permutation(len(dataset))[:n]
        for images in _real_batches(dataset, perm, opts.batch_size):
            for lo, x in _real_pyramid(ctx, opts, images, lows).items():
                x = x.double().transpose(0, 1).flatten(1)  # [C, N * r * r]
                real_sum[lo] = real_sum[lo] + x.sum(dim=1)
                real_sq[lo] = real_sq[lo] + x.square().sum(dim=1)
                real_count[lo] += x.shape[1]
        paired = {hi: 0.0 for _, hi in pairs}
        unpaired = {hi: 0.0 for _, hi in pairs}
        images_seen = 0
        for z, c in _latents(G, opts, n, ctx.seed):
            levels = _fake_pyramid(ctx, opts, G, z, c, G_kwargs, sorted({r for pair in pairs for r in pair}))
            for lo, hi in pairs:
                down = fsr_pyramid.downsample2x(levels[hi].double(), opts.pyramid_filter)
                x_lo = levels[lo].double()
                paired[hi] += float((down - x_lo).square().sum(dim=1).mean(dim=[1, 2]).sum())
                other = torch.roll(x_lo, 1, dims=0)  # another sample's lower level (the batch's next image)
                if x_lo.shape[0] > 1:
                    unpaired[hi] += float((down - other).square().sum(dim=1).mean(dim=[1, 2]).sum())
                else:
                    unpaired[hi] = float('nan')
            images_seen += int(z.shape[0])
        results = {}
        for lo, hi in pairs:
            mean = real_sum[lo] / real_count[lo]
            scale = float((real_sq[lo] / real_count[lo] - mean.square()).sum().clamp_min(1e-12))
            results[f'fsr_consistency_res{hi}'] = paired[hi] / images_seen / scale
            results[f'fsr_consistency_unpaired_res{hi}'] = unpaired[hi] / images_seen / scale
        results['fsr_consistency_mean'] = float(np.mean([results[f'fsr_consistency_res{hi}'] for _, hi in pairs]))
        return results
    return fsr_level_consistency


def _position_stats_metric(ctx):
    def fsr_position_stats(opts):
        G, G_kwargs, dataset, n, draws = _draw_setup(ctx, opts, 'fsr_position_stats', 2)
        resolutions = _resolutions(ctx, opts, G)
        # The samples of fsr_moment_gap (_real_draw_indices, _fake_draws).
        stats = {name: [{r: diagnostics.PositionMoments() for r in resolutions} for _ in range(draws)]
                 for name in ('real_a', 'real_b', 'fake')}
        for k, samples in enumerate(_real_draw_indices(ctx, dataset, n, draws)):
            for name, indices in samples.items():
                for images in _real_batches(dataset, indices, opts.batch_size):
                    for r, x in _real_pyramid(ctx, opts, images, resolutions).items():
                        stats[name][k][r].update(x)
        for k, levels in _fake_draws(ctx, opts, G, G_kwargs, resolutions, n, draws):
            for r, x in levels.items():
                stats['fake'][k][r].update(x)
        results = {}
        for r in resolutions:
            gaps = [diagnostics.position_gaps(stats['real_a'][k][r], stats['real_b'][k][r], stats['fake'][k][r])
                    for k in range(draws)]
            for key in ('mean_gap', 'mean_floor', 'var_gap', 'var_floor', 'var_scale'):
                name = {'mean_gap': 'mean', 'var_gap': 'var'}.get(key, key)
                results[f'fsr_position_{name}_res{r}'] = float(np.mean([g[key] for g in gaps]))
        return results
    return fsr_position_stats


def _noise_share_metric(ctx):
    def fsr_noise_share(opts):
        G = _generator(opts)
        if not metric_utils._accepts_kwarg(G.forward, 'noise_mode'):
            raise ValueError('fsr_noise_share: the generator\'s forward takes no noise_mode argument, so its noise '
                             'inputs cannot be fixed')
        G_kwargs = metric_utils.generator_call_kwargs(G, opts)
        resolutions = _resolutions(ctx, opts, G)
        n = ctx.moment_images
        if n < 2:
            raise ValueError(f'fsr_noise_share needs at least 2 generated images (moment_images), got {n}')
        modes = ('random', 'const')
        sums = {m: {r: [0.0, 0.0] for r in resolutions} for m in modes}  # per level: sum, sum of squares [C, r, r]
        devices = [opts.device] if opts.device.type == 'cuda' else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(ctx.seed))  # the random noise images: fixed per seed, the caller's RNG untouched
            for z, c in _latents(G, opts, n, ctx.seed):
                for mode in modes:
                    levels = _fake_pyramid(ctx, opts, G, z, c, dict(G_kwargs, noise_mode=mode), resolutions)
                    for r, x in levels.items():
                        x = x.to(torch.float64)
                        sums[mode][r][0] = sums[mode][r][0] + x.sum(dim=0)
                        sums[mode][r][1] = sums[mode][r][1] + x.square().sum(dim=0)
        results = {}
        for r in resolutions:
            var = {}
            for mode in modes:
                total, squares = sums[mode][r]
                var[mode] = float(((squares - total.square() / n) / (n - 1)).clamp_min(0).mean())
            results[f'fsr_noise_var_res{r}'] = var['random']
            results[f'fsr_noise_var_fixed_res{r}'] = var['const']
            results[f'fsr_noise_share_res{r}'] = 1.0 - var['const'] / var['random'] if var['random'] > 0 else 0.0
        return results
    return fsr_noise_share


# ----------------------------------------------------------------------------------------------------------------------
# Registration.


def make_fsr_metrics(context=None):
    """{name: metric function(opts) -> dict} for the names in METRIC_NAMES, bound to `context` (an
    FSRMetricContext; None = all fallbacks)."""
    ctx = FSRMetricContext() if context is None else context
    if not isinstance(ctx, FSRMetricContext):
        raise TypeError(f'context must be an FSRMetricContext or None, got {type(ctx).__name__}')
    fns = [_sparsity_metric(ctx), _moment_gap_metric(ctx), _feature_sim_metric(ctx), _swd_levels_metric(ctx),
           _consistency_metric(ctx), _position_stats_metric(ctx), _noise_share_metric(ctx)]
    return {fn.__name__: fn for fn in fns}


def register_fsr_metrics(register_metric, context=None):
    """Register the FSR metrics with the host's `register_metric(fn)` (name = fn.__name__); returns their names."""
    if not callable(register_metric):
        raise TypeError('register_fsr_metrics: register_metric must be callable')
    fns = make_fsr_metrics(context)
    for fn in fns.values():
        register_metric(fn)
    return list(fns)
