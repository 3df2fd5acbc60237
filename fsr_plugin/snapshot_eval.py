"""Evaluation of saved training snapshots for the FSR experiments (fsr_plugin.experiments).

A snapshot (network-snapshot-NNNNNN.pkl of a train.py run, or any network pickle) is loaded with
`legacy.load_network`; `Snapshot` keeps what the FSR diagnostics need: G_ema, D, the FSR output heads (the EMA copy
the training loop saved, when the run used --fsr), the training set and the image count. `evaluate` computes the
registered fsr_* metrics through the host's metric registry (`metrics.metric_main.calc_metric`), exactly as
calc_metrics.py would, but with an `fsr_metrics.FSRMetricContext` bound to the snapshot's heads and discriminator
(calc_metrics.py itself knows neither, so it would fall back to downscaled G images and no D). Runs without heads use
the same fallbacks as calc_metrics.py: per-resolution outputs are G's image downscaled with the box pyramid, G's
atoms are its ToRGB atoms.

Results are appended to JSON-lines files in the host's record format (the calc_metric result plus snapshot_pkl and
timestamp) with two extra fields, cur_nimg and kimg (exact, from the snapshot's resume state).
"""

import copy
import glob
import json
import os
import re
import time

import numpy as np
import torch

import dnnlib
import legacy
from fsr_plugin import fsr_metrics
from fsr_plugin import pyramid as fsr_pyramid
from fsr_plugin.wta import painted_mass
from metrics import metric_main
from metrics.metric_utils import isolated_rng

__all__ = ['Snapshot', 'find_heads', 'list_snapshots', 'read_training_options', 'snapshot_kimg', 'evaluate', 'append_record',
           'read_records', 'pyramid_images', 'real_pyramid_images', 'torgb_atoms_3x3', 'composed_host_atoms',
           'random_generator_like', 'EvalSizes', 'pyramid_spread']

_SNAPSHOT_NAME = re.compile(r'network-snapshot-(\d+)\.pkl$')


class EvalSizes:
    """Sample sizes of the evaluation: images per sample of fsr_moment_gap and per side of fsr_swd_levels
    (`images`), generated images of fsr_sparsity (`sparsity_images`), the sparsity threshold tau and patch size,
    the metric seed, the evaluation batch size, and the independent draws that fsr_moment_gap averages
    (`moment_draws`)."""

    def __init__(self, images=1000, sparsity_images=64, sparsity_tau=0.1, sparsity_patch=1, seed=0, batch_size=32,
                 moment_draws=1):
        for name, value in (('images', images), ('sparsity_images', sparsity_images),
                            ('sparsity_patch', sparsity_patch), ('batch_size', batch_size),
                            ('moment_draws', moment_draws)):
            if int(value) < 1:
                raise ValueError(f'EvalSizes: {name} must be >= 1, got {value}')
        self.images = int(images)
        self.sparsity_images = int(sparsity_images)
        self.sparsity_tau = float(sparsity_tau)
        self.sparsity_patch = int(sparsity_patch)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.moment_draws = int(moment_draws)

    def with_seed(self, seed):
        """A copy of these sizes with the metric seed `seed` (fresh generated samples, other real samples)."""
        return EvalSizes(**dict(self.as_dict(), seed=seed))

    def as_dict(self):
        return dict(images=self.images, sparsity_images=self.sparsity_images, sparsity_tau=self.sparsity_tau,
                    sparsity_patch=self.sparsity_patch, seed=self.seed, batch_size=self.batch_size,
                    moment_draws=self.moment_draws)


def snapshot_kimg(path):
    """kimg encoded in a snapshot file name (network-snapshot-<kimg>.pkl), or None."""
    m = _SNAPSHOT_NAME.search(os.path.basename(str(path)))
    return int(m.group(1)) if m else None


def list_snapshots(run_dir):
    """Paths of the run's network-snapshot-*.pkl, sorted by the kimg in their names. Raises ValueError when the
    folder does not exist or holds none."""
    if not os.path.isdir(run_dir):
        raise ValueError(f'run directory {run_dir!r} does not exist')
    paths = [p for p in glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')) if snapshot_kimg(p) is not None]
    if not paths:
        raise ValueError(f'{run_dir}: no network-snapshot-*.pkl (not a finished train.py run?)')
    return sorted(paths, key=snapshot_kimg)


def read_training_options(run_dir):
    """The run's training_options.json as a dict. Raises ValueError when it is missing."""
    path = os.path.join(run_dir, 'training_options.json')
    if not os.path.isfile(path):
        raise ValueError(f'{run_dir}: not a train.py run directory (no training_options.json)')
    with open(path, 'rt') as f:
        return json.load(f)


def find_heads(data):
    """(key, module) of the per-resolution output module (the FSR heads) among a loaded network file's EMA extra
    modules (data['extra_modules_ema'][key]), or (None, None)."""
    modules = data.get('extra_modules_ema') or {}
    for name in sorted(modules, key=lambda n: (not n.endswith('heads'), n)):
        module = modules[name]
        if hasattr(module, 'resolutions') and hasattr(module, 'atoms') and callable(module):
            return name, module
    return None, None


class Snapshot:
    """A loaded network file. Attributes: path, G (G_ema, eval mode), D (or None), heads (FSR OutputHeads or None)
    and heads_key (its key in the file's 'extra_modules_ema', or None),
    training_set_kwargs (dict or None), cur_nimg (int or None), kimg (float: cur_nimg / 1000, else the kimg of the
    file name, else None), relu (True when G's synthesis layers use ReLU)."""

    def __init__(self, path, device='cpu'):
        if not os.path.isfile(path):
            raise ValueError(f'network file {path!r} does not exist')
        try:
            data = legacy.load_network(path)
        except (legacy.NetworkFileError, OSError) as e:
            raise ValueError(f'{path}: cannot load the network: {e}') from None
        self.path = os.path.abspath(path)
        self.device = torch.device(device)
        self.G = data['G_ema'].eval().requires_grad_(False).to(self.device)
        self.D = data.get('D')
        if self.D is not None:
            self.D = self.D.eval().requires_grad_(False)
        self.heads_key, self.heads = find_heads(data)
        if self.heads is not None:
            self.heads = self.heads.eval().requires_grad_(False).to(self.device)
        self.training_set_kwargs = data.get('training_set_kwargs')
        state = data.get('resume_state') or {}
        self.cur_nimg = int(state['cur_nimg']) if 'cur_nimg' in state else None
        name_kimg = snapshot_kimg(path)
        self.kimg = self.cur_nimg / 1000 if self.cur_nimg is not None else \
            (float(name_kimg) if name_kimg is not None else None)
        activation = getattr(self.G, 'init_kwargs', {}).get('synthesis_kwargs', {}).get('activation')
        self.relu = activation == 'relu'

    @property
    def resolutions(self):
        return list(self.G.synthesis.block_resolutions)

    def pyramid_fn(self):
        """fn(G, z, c, **G_kwargs) -> {r: X_r} through the heads (as the plugin's pyramid_fn), or None without
        heads (the metrics then downscale G's image)."""
        heads = self.heads
        if heads is None:
            return None

        def heads_pyramid(G, z, c, **G_kwargs):
            call = {k: v for k, v in G_kwargs.items() if k in ('noise_mode', 'force_fp32')}
            ws = G.mapping(z, c, truncation_psi=G_kwargs.get('truncation_psi', 1))
            img, feats = G.synthesis(ws, return_features=True, **call)
            return heads({r: f.float() for r, f in feats.items() if r in heads.resolutions}, img=img)
        return heads_pyramid

    def head_atoms(self, r):
        """The heads' atoms at r [A, C, k, k] (float64 CPU), or None without a head there."""
        if self.heads is None or r not in self.heads.resolutions:
            return None
        return self.heads.atoms(r).detach().to('cpu', torch.float64)

    def context(self, sizes, resolutions=None, features_fn=None, G=None):
        """An FSRMetricContext for this snapshot (heads, D, ReLU layers) with the sample sizes `sizes`."""
        relu_res = tuple(self.resolutions) if self.relu else ()
        return fsr_metrics.FSRMetricContext(
            pyramid_fn=self.pyramid_fn(), get_D=(lambda: self.D) if self.D is not None else None,
            head_atoms_fn=(lambda _G, r: self.head_atoms(r)) if self.heads is not None else None,
            features_fn=features_fn, relu_resolutions=relu_res, resolutions=resolutions,
            sparsity_images=sizes.sparsity_images, sparsity_tau=sizes.sparsity_tau,
            sparsity_patch=sizes.sparsity_patch, moment_images=sizes.images, swd_images=sizes.images,
            seed=sizes.seed, moment_draws=sizes.moment_draws)


def evaluate(snapshot, metric, sizes, dataset_kwargs=None, G=None, features_fn=None, device=None):
    """Compute one fsr_* metric of `snapshot` through the host's registry (metric_main.calc_metric).

    dataset_kwargs: the real data (default: the snapshot's training set); G: evaluate this generator instead of the
    snapshot's G_ema (e.g. a randomly initialised one) with the snapshot's context; features_fn: passed to the
    context (see FSRMetricContext). Returns the calc_metric result (EasyDict: results, metric, total_time, ...).
    The registry entries are restored to their context-free versions afterwards.
    """
    if metric not in fsr_metrics.METRIC_NAMES:
        raise ValueError(f'unknown FSR metric {metric!r}; one of {", ".join(fsr_metrics.METRIC_NAMES)}')
    dataset_kwargs = dataset_kwargs if dataset_kwargs is not None else snapshot.training_set_kwargs
    needs_data = metric in ('fsr_moment_gap', 'fsr_swd_levels', 'fsr_position_stats')
    if needs_data and not dataset_kwargs:
        raise ValueError(f'{metric} needs real images: {snapshot.path} records no training set')
    ctx = snapshot.context(sizes, features_fn=features_fn)
    device = torch.device(device) if device is not None else snapshot.device
    fsr_metrics.register_fsr_metrics(metric_main.register_metric, ctx)
    try:
        return metric_main.calc_metric(metric=metric, G=G if G is not None else snapshot.G,
                                       dataset_kwargs=copy.deepcopy(dict(dataset_kwargs or {})),
                                       device=device, batch_size=sizes.batch_size)
    finally:
        fsr_metrics.register_fsr_metrics(metric_main.register_metric)


def append_record(jsonl_path, result, snapshot):
    """Append a calc_metric result as one JSON line (host format + cur_nimg, kimg) to jsonl_path; returns the
    record."""
    record = dict(result, snapshot_pkl=snapshot.path, cur_nimg=snapshot.cur_nimg, kimg=snapshot.kimg,
                  timestamp=time.time())
    os.makedirs(os.path.dirname(os.path.abspath(jsonl_path)), exist_ok=True)
    with open(jsonl_path, 'at') as f:
        f.write(json.dumps(record) + '\n')
    return record


def read_records(jsonl_path):
    """The records of a metric-<name>.jsonl file (list of dicts with 'results'), in file order."""
    if not os.path.isfile(jsonl_path):
        raise ValueError(f'{jsonl_path}: no such file')
    out = []
    with open(jsonl_path, 'rt') as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f'{jsonl_path}:{i}: not a JSON line ({e.msg})') from None
                if isinstance(rec, dict) and isinstance(rec.get('results'), dict):
                    out.append(rec)
    return out


@torch.no_grad()
def pyramid_images(snapshot, num, seed=0, G=None, noise_mode='const', batch_size=None):
    """{r: generated images [num, C, r, r] float} at every synthesis resolution: the FSR heads' outputs, or (no
    heads) G's image box-downscaled. z ~ N(0, I) from a torch generator seeded with `seed`; noise_mode 'random'
    draws G's noise inputs from torch's global generator. batch_size: run G on this many latents at a time (None:
    all at once; G's features take about 2.3 MB per image on the 32x32 cpu config, so 10,000 at once need 23 GB).
    The latents do not depend on it; with random noise inputs the noise does."""
    G = snapshot.G if G is None else G
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn([int(num), G.z_dim], generator=gen).to(snapshot.device)
    step = max(int(num), 1) if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f'pyramid_images: batch_size must be >= 1, got {batch_size}')
    kwargs = dict(noise_mode=noise_mode, force_fp32=True)
    fn = snapshot.pyramid_fn()
    parts = {}
    for z_part in z.split(step):
        c = torch.zeros([z_part.shape[0], G.c_dim], device=snapshot.device)
        if fn is not None:
            levels = {int(r): x.float().cpu() for r, x in fn(G, z_part, c, **kwargs).items()}
        else:
            img = G(z_part, c, **kwargs).float()
            levels = {int(r): x.cpu() for r, x in fsr_pyramid.build_pyramid(img, snapshot.resolutions).items()}
        for r, x in levels.items():
            parts.setdefault(r, []).append(x)
    return {r: torch.cat(xs) if len(xs) > 1 else xs[0] for r, xs in parts.items()}


def top_channel_usage(snapshot, num, seed=0, noise_mode='random'):
    """float64 [C]: each input channel's share of what the top head paints over `num` samples (z from a generator
    seeded with `seed`): the sum of the channel's features at the top resolution that the head uses (the winners of
    its winner-take-all selection, with its jitter, when it has one; else their absolute values). A channel whose
    share is near 0 paints nothing, whatever its atom looks like. Random noise inputs are drawn from `seed` too.
    None when the snapshot has no head at the top resolution."""
    R = int(snapshot.G.img_resolution)
    if snapshot.heads is None or R not in snapshot.heads.resolutions:
        return None
    head = snapshot.heads.head(R)
    s = top_features(snapshot, num, seed=seed, noise_mode=noise_mode)
    with torch.no_grad():
        mass = painted_mass(s, getattr(head, 'wta', 0), getattr(head, 'wta_jitter', 0.0),
                            torch.Generator(device=s.device).manual_seed(int(seed) + 1),
                            min_value=getattr(head, 'wta_min', 0.0))
    total = float(mass.sum())
    return mass / total if total > 0 else mass


def top_features(snapshot, num, seed=0, noise_mode='random'):
    """float32 [num, C, R, R]: G_ema's features at its image resolution R for `num` samples (z from a generator
    seeded with `seed`; random noise inputs drawn from `seed` too, the global RNG untouched)."""
    R = int(snapshot.G.img_resolution)
    G = snapshot.G
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn([int(num), G.z_dim], generator=gen).to(snapshot.device)
    c = torch.zeros([int(num), G.c_dim], device=snapshot.device)
    with torch.no_grad(), isolated_rng(int(seed), snapshot.device):
        ws = G.mapping(z, c)
        _, feats = G.synthesis(ws, return_features=True, noise_mode=noise_mode, force_fp32=True)
    return feats[R].float()


def pyramid_spread(fake_levels, real_levels):
    """fake_levels, real_levels: {r: images [N, C, r, r]} -> {r: mean pairwise L2 distance of the fakes / that of
    the reals} for the levels both have. 1 = the samples vary as much as the data; a generator that draws nearly
    the same image every time gives values near 0 (a collapse monitor; N >= 2 on each side)."""
    out = {}
    for r in sorted(set(fake_levels) & set(real_levels)):
        f, x = fake_levels[r].double().flatten(1), real_levels[r].double().flatten(1)
        if f.shape[0] < 2 or x.shape[0] < 2:
            raise ValueError(f'pyramid_spread needs at least 2 images per side, got {f.shape[0]} and {x.shape[0]}')
        out[int(r)] = float(torch.pdist(f).mean() / torch.pdist(x).mean().clamp_min(1e-12))
    return out


def real_pyramid_images(dataset_kwargs, resolutions, num, seed=0):
    """{r: real images [num, C, r, r] float in [-1, 1]} (x / 127.5 - 1, box pyramid) of `num` dataset images drawn
    without replacement with numpy seed `seed`."""
    kwargs = dict(copy.deepcopy(dict(dataset_kwargs)), max_size=None, xflip=False)
    dataset = dnnlib.util.construct_class_by_name(**kwargs)
    idx = np.random.RandomState(int(seed)).permutation(len(dataset))[:int(num)]
    x = torch.from_numpy(np.stack([dataset[int(i)][0] for i in idx])).float() / 127.5 - 1
    return fsr_pyramid.build_pyramid(x, resolutions)


def _torgb_parts(G, r):
    block = getattr(G.synthesis, f'b{int(r)}', None)
    torgb = getattr(block, 'torgb', None)
    if torgb is None:
        return None, None
    w = G.mapping.w_avg.detach().to(torch.float32).reshape(1, -1).to(torgb.weight.device)
    return block, w


@torch.no_grad()
def torgb_atoms_3x3(G, r):
    """G's ToRGB atoms at r (diagnostics.torgb_atoms: weight x style at w_avg, [C_r, C, 1, 1]) placed in the centre
    tap of a 3x3 patch: [C_r, C, 3, 3] float64. A 1x1 atom can match a 3x3 teacher atom only up to the share of
    the teacher atom's norm in its centre tap."""
    from fsr_plugin import diagnostics
    atoms = diagnostics.torgb_atoms(G, r)
    if atoms is None:
        return None
    out = torch.zeros([atoms.shape[0], atoms.shape[1], 3, 3], dtype=torch.float64)
    out[:, :, 1, 1] = atoms[:, :, 0, 0]
    return out


@torch.no_grad()
def composed_host_atoms(G, r):
    """The 3x3 patch each input channel of block b<r>'s last convolution (conv1) paints through conv1 and ToRGB,
    at the style of w_avg, with the bias and activation between them left out (linearised):

        atom_i[c, d] = sum_o T[c, o] * W''[o, i, 2 - d]    (d in 0..2 per axis; conv1 is a cross-correlation, so a
                                                            unit at q reaches pixel q + d - 1 through tap 2 - d)

    with W'' the modulated, demodulated conv1 weight and T the modulated ToRGB weight (x weight_gain). Returns
    float64 [C_in, img_channels, 3, 3], or None when the block has no ToRGB or conv1 is not 3x3."""
    block, w = _torgb_parts(G, r)
    if block is None:
        return None
    conv1, torgb = block.conv1, block.torgb
    if conv1.weight.shape[-1] != 3 or getattr(conv1, 'up', 1) != 1:
        return None
    s1 = conv1.affine(w).to('cpu', torch.float64)[0]                            # [I]
    w1 = conv1.weight.detach().to('cpu', torch.float64) * s1.reshape(1, -1, 1, 1)
    w1 = w1 / (w1.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()      # demodulated [O, I, 3, 3]
    s2 = (torgb.affine(w) * torgb.weight_gain).to('cpu', torch.float64)[0]       # [O]
    t = torgb.weight.detach().to('cpu', torch.float64)[:, :, 0, 0] * s2.reshape(1, -1)   # [C, O]
    atoms = torch.einsum('co,oiyx->icyx', t, w1)                                  # [I, C, 3, 3] correlation taps
    return atoms.flip(2, 3).contiguous()


def random_generator_like(G, seed=0, device='cpu'):
    """A freshly initialised generator with G's constructor arguments (training.networks.Generator), seeded."""
    kwargs = copy.deepcopy(dict(getattr(G, 'init_kwargs', {})))
    if not kwargs:
        raise ValueError('random_generator_like: the generator has no init_kwargs')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        G0 = dnnlib.util.construct_class_by_name(class_name='training.networks.Generator', **kwargs)
    return G0.eval().requires_grad_(False).to(device)
