"""Shared machinery of the metrics: options, feature statistics, progress reporting, and the two feature
pipelines (real images from the dataset, fake images from the generator) that feed a feature detector.

A *detector* is any callable ``detector(images_uint8_NCHW_RGB, **detector_kwargs) -> [N, F]`` float tensor.
Pretrained detectors (Inception-v3, VGG16) are loaded by ``metrics.detectors``; metrics that need no pretrained
network (sliced Wasserstein) pass their own callable.

Per-resolution evaluation: when ``MetricOptions.eval_resolution`` is set, both pipelines feed the detector
images at that resolution: real images are downscaled after decoding to uint8 (``pyramid_filter``: 'box' =
average pooling, 'fir' = repeated [1,3,3,1] low-pass with edge-replicated borders + decimation by 2 via
``torch_utils.ops.upfirdn2d``); generated images come from ``G_pyramid_fn`` when given (it receives the
metric's device copy of G; modules it needs beyond G are its own business), else the generator's
full-resolution output is converted to uint8 and downscaled exactly like the real images.
"""

import contextlib
import copy
import hashlib
import inspect
import os
import pickle
import random
import re
import time
import uuid

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib

# Environment variables overriding the default detector locations (read by metrics.detectors).
INCEPTION_URL_ENV = 'GAN_INCEPTION_URL'
VGG16_URL_ENV = 'GAN_VGG16_URL'

PYRAMID_FILTERS = ('box', 'fir')

# ---------------------------------------------------------------------------------------------------------------
# Options.


class MetricOptions:
    """Everything a metric function needs, passed as its only argument.

    Args:
        G:                   generator module (deep-copied to `device` by the pipelines); None for data-only use.
        G_kwargs:            extra kwargs of every ``G(z, c, **G_kwargs)`` call (e.g. truncation_psi, noise_mode).
        dataset_kwargs:      kwargs of ``dnnlib.util.construct_class_by_name`` building the real dataset (copied).
        num_gpus, rank:      process group size and this process's rank (torch.distributed must be initialised
                             when num_gpus > 1).
        device:              torch device; None = cuda:<rank> when CUDA is available, else cpu.
        progress:            a ProgressMonitor (or None = a silent one); metrics report through ``progress.sub``.
        cache:               cache dataset statistics under <dnnlib cache>/gan-metrics/.
        detector_url:        Inception-v3 detector path or URL overriding the default (FID, KID, IS).
        vgg16_url:           VGG16 detector path or URL overriding the default (precision/recall, PPL).
        batch_size:          images per detector call.
        batch_gen:           images per generator call (None = min(batch_size, 4)).
        G_pyramid_fn:        optional ``fn(G, z, c, **G_kwargs) -> list/tuple of [N, C, r, r] image tensors or a
                             dict {r: tensor}`` giving the generator's own per-resolution outputs (float, ~[-1, 1]).
        pyramid_resolutions: resolutions evaluated by per-resolution metrics (None = from G_pyramid_fn's output,
                             else the powers of two from 4 to G.img_resolution).
        pyramid_filter:      'box' or 'fir': how images are downscaled for per-resolution evaluation.
        eval_resolution:     evaluate at this resolution (set by the per-resolution wrapper; None = native).
        data_loader_kwargs:  kwargs of the real-image DataLoader (None = a device-dependent default).
    """

    def __init__(self, G=None, G_kwargs={}, dataset_kwargs={}, num_gpus=1, rank=0, device=None, progress=None,
                 cache=True, detector_url=None, vgg16_url=None, batch_size=64, batch_gen=None, G_pyramid_fn=None,
                 pyramid_resolutions=None, pyramid_filter='box', eval_resolution=None, data_loader_kwargs=None):
        num_gpus, rank, batch_size = int(num_gpus), int(rank), int(batch_size)
        if num_gpus < 1 or not 0 <= rank < num_gpus:
            raise ValueError(f'MetricOptions: need num_gpus >= 1 and 0 <= rank < num_gpus, got {num_gpus=}, {rank=}')
        if batch_size < 1:
            raise ValueError(f'MetricOptions: batch_size must be >= 1, got {batch_size}')
        if batch_gen is not None and (int(batch_gen) < 1 or batch_size % int(batch_gen) != 0):
            raise ValueError(f'MetricOptions: batch_gen must divide batch_size={batch_size}, got {batch_gen}')
        if pyramid_filter not in PYRAMID_FILTERS:
            raise ValueError(f'MetricOptions: pyramid_filter must be one of {PYRAMID_FILTERS}, got {pyramid_filter!r}')
        if G_pyramid_fn is not None and not callable(G_pyramid_fn):
            raise ValueError('MetricOptions: G_pyramid_fn must be callable')
        if device is None:
            device = torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
        self.G = G
        self.G_kwargs = dnnlib.EasyDict(G_kwargs)
        self.dataset_kwargs = dnnlib.EasyDict(dataset_kwargs)
        self.num_gpus = num_gpus
        self.rank = rank
        self.device = torch.device(device)
        self.progress = progress.sub() if progress is not None else ProgressMonitor()
        self.cache = bool(cache)
        self.detector_url = detector_url
        self.vgg16_url = vgg16_url
        self.batch_size = batch_size
        self.batch_gen = None if batch_gen is None else int(batch_gen)
        self.G_pyramid_fn = G_pyramid_fn
        self.pyramid_resolutions = None if pyramid_resolutions is None else sorted(int(r) for r in pyramid_resolutions)
        self.pyramid_filter = pyramid_filter
        self.eval_resolution = None if eval_resolution is None else int(eval_resolution)
        self.data_loader_kwargs = data_loader_kwargs

    def replace(self, **changes):
        """A shallow copy with some fields changed (dataset_kwargs and G_kwargs are copied, not shared)."""
        other = copy.copy(self)
        other.G_kwargs = dnnlib.EasyDict(self.G_kwargs)
        other.dataset_kwargs = dnnlib.EasyDict(self.dataset_kwargs)
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(f'MetricOptions has no field {name!r}')
            setattr(other, name, value)
        return other


def inception_url(opts):
    """Inception-v3 detector location: opts.detector_url, else $GAN_INCEPTION_URL, else the standard URL."""
    from metrics import detectors  # imported lazily: the formulas and SWD work without it
    return opts.detector_url or detectors.inception_url()


def vgg16_url(opts):
    """VGG16 detector location: opts.vgg16_url, else $GAN_VGG16_URL, else the standard URL."""
    from metrics import detectors
    return opts.vgg16_url or detectors.vgg16_url()


# ---------------------------------------------------------------------------------------------------------------
# Detectors.


def get_feature_detector_name(url):
    """Short name of a detector for cache file names: last path component without extension, sanitised."""
    base = re.split(r'[/\\]', str(url).rstrip('/\\'))[-1]
    base = os.path.splitext(base)[0] or 'detector'
    return re.sub(r'[^0-9a-zA-Z._-]', '_', base)


def get_feature_detector(url, device=torch.device('cpu'), num_gpus=1, rank=0, verbose=False, dtype=torch.float32):
    """Load (once per url/device, cached by ``metrics.detectors``) the detector module at a path or URL. Leaves the
    global random generators as it found them (building a module draws its initial weights)."""
    from metrics import detectors  # imported lazily: the formulas and utilities work without it
    with preserved_rng(device):
        return detectors.get_feature_detector(url, device=device, num_gpus=num_gpus, rank=rank, verbose=verbose,
                                              dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# Global random state around metrics.


@contextlib.contextmanager
def preserved_rng(device=None):
    """Restore the global generators (torch CPU and, for a CUDA `device`, that device; numpy; python) on exit."""
    device = torch.device(device) if device is not None else torch.device('cpu')
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def isolated_rng(seed, device=None):
    """preserved_rng, with the body's global generators seeded with `seed`."""
    device = torch.device(device) if device is not None else torch.device('cpu')
    with preserved_rng(device):
        torch.random.default_generator.manual_seed(seed)
        if device.type == 'cuda':
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)
        yield


# ---------------------------------------------------------------------------------------------------------------
# Feature statistics.


class FeatureStats:
    """Accumulates feature vectors: float64 running sum and sum of outer products (mean/covariance) and/or all
    rows as float32.

    Args:
        capture_all:      keep every row (``get_all``).
        capture_mean_cov: keep sum and sum of outer products (``get_mean_cov``).
        max_items:        stop accepting rows after this many (None = unlimited).
    """

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        if max_items is not None and int(max_items) < 0:
            raise ValueError(f'FeatureStats: max_items must be >= 0 or None, got {max_items}')
        self.capture_all = bool(capture_all)
        self.capture_mean_cov = bool(capture_mean_cov)
        self.max_items = None if max_items is None else int(max_items)
        self.num_items = 0
        self.num_features = None
        self.all_features = None
        self.raw_mean = None
        self.raw_cov = None

    def set_num_features(self, num_features):
        """Fix the feature dimension F (first call) or check it (later calls)."""
        if self.num_features is not None:
            if num_features != self.num_features:
                raise ValueError(f'FeatureStats: got {num_features} features, expected {self.num_features}')
            return
        self.num_features = int(num_features)
        self.all_features = []
        if self.capture_mean_cov:
            self.raw_mean = np.zeros([num_features], dtype=np.float64)
            self.raw_cov = np.zeros([num_features, num_features], dtype=np.float64)

    def is_full(self):
        """True once max_items rows have been accepted."""
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x):
        """Add rows of a [N, F] array (cast to float32); rows beyond max_items are dropped."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f'FeatureStats.append: expected a [N, F] array, got shape {x.shape}')
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        self.set_num_features(x.shape[1])
        if x.shape[0] == 0:
            return
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_mean += x64.sum(axis=0)
            self.raw_cov += x64.T @ x64

    def append_torch(self, x, num_gpus=1, rank=0):
        """Add rows of a [N, F] tensor; with num_gpus > 1 every rank's rows are gathered (broadcast from each rank
        in turn) and interleaved (row i of rank r lands at i * num_gpus + r), so all ranks hold the same stats."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f'FeatureStats.append_torch: expected a [N, F] tensor, got {getattr(x, "shape", x)!r}')
        if not 0 <= rank < num_gpus:
            raise ValueError(f'FeatureStats.append_torch: need 0 <= rank < num_gpus, got {rank=}, {num_gpus=}')
        if num_gpus > 1:
            gathered = []
            for src in range(num_gpus):
                y = x.clone()
                torch.distributed.broadcast(y, src=src)
                gathered.append(y)
            x = torch.stack(gathered, dim=1).flatten(0, 1)
        self.append(x.detach().float().cpu().numpy())

    def get_all(self):
        """float32 numpy [num_items, F] of all rows (needs capture_all)."""
        if not self.capture_all:
            raise ValueError('FeatureStats.get_all: statistics were collected without capture_all')
        if self.num_features is None:
            return np.zeros([0, 0], dtype=np.float32)
        if len(self.all_features) == 0:
            return np.zeros([0, self.num_features], dtype=np.float32)
        return np.concatenate(self.all_features, axis=0)

    def get_all_torch(self):
        """float32 tensor [num_items, F] of all rows (needs capture_all)."""
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self):
        """(mean [F], population covariance E[x x^T] - mean mean^T [F, F]), float64 (needs capture_mean_cov)."""
        if not self.capture_mean_cov:
            raise ValueError('FeatureStats.get_mean_cov: statistics were collected without capture_mean_cov')
        if self.num_items == 0:
            raise ValueError('FeatureStats.get_mean_cov: no items')
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    def save(self, pkl_file):
        """Pickle the state (``__dict__``) to a file path."""
        with open(pkl_file, 'wb') as f:
            pickle.dump(self.__dict__, f)

    @staticmethod
    def load(pkl_file):
        """Inverse of ``save``."""
        with open(pkl_file, 'rb') as f:
            state = dnnlib.EasyDict(pickle.load(f))
        obj = FeatureStats(capture_all=state.capture_all, max_items=state.max_items)
        obj.__dict__.update(state)
        return obj


# ---------------------------------------------------------------------------------------------------------------
# Progress.


class ProgressMonitor:
    """Prints ``<tag> items N time T ms/item X`` every `flush_interval` items (when verbose and tagged) and
    forwards overall progress to ``progress_fn(done, total)`` scaled into [pfn_lo, pfn_hi] of pfn_total."""

    def __init__(self, tag=None, num_items=None, flush_interval=1000, verbose=False, progress_fn=None, pfn_lo=0,
                 pfn_hi=1000, pfn_total=1000):
        self.tag = tag
        self.num_items = num_items
        self.flush_interval = int(flush_interval)
        self.verbose = bool(verbose)
        self.progress_fn = progress_fn
        self.pfn_lo = pfn_lo
        self.pfn_hi = pfn_hi
        self.pfn_total = pfn_total
        self.start_time = time.time()
        self.batch_time = self.start_time
        self.batch_items = 0
        if self.progress_fn is not None:
            self.progress_fn(self.pfn_lo, self.pfn_total)

    def update(self, cur_items):
        """Report that `cur_items` items are done (prints at most once per flush_interval items, and at the end)."""
        cur_items = int(cur_items)
        if self.num_items is not None and cur_items > self.num_items:
            raise ValueError(f'ProgressMonitor: {cur_items} items done exceeds the announced {self.num_items}')
        done = self.num_items is not None and cur_items >= self.num_items
        if cur_items < self.batch_items + self.flush_interval and not done:
            return
        now = time.time()
        total_time = now - self.start_time
        time_per_item = (now - self.batch_time) / max(cur_items - self.batch_items, 1)
        if self.verbose and self.tag is not None:
            print(f'{self.tag:<19s} items {cur_items:<7d} time {dnnlib.util.format_time(total_time):<12s} '
                  f'ms/item {time_per_item * 1e3:.2f}', flush=True)
        self.batch_time = now
        self.batch_items = cur_items
        if self.progress_fn is not None and self.num_items:
            frac = cur_items / self.num_items
            self.progress_fn(self.pfn_lo + (self.pfn_hi - self.pfn_lo) * frac, self.pfn_total)

    def sub(self, tag=None, num_items=None, flush_interval=1000, rel_lo=0, rel_hi=1):
        """A monitor for a sub-task occupying the fraction [rel_lo, rel_hi] of this one's progress range."""
        return ProgressMonitor(tag=tag, num_items=num_items, flush_interval=flush_interval, verbose=self.verbose,
                               progress_fn=self.progress_fn,
                               pfn_lo=self.pfn_lo + (self.pfn_hi - self.pfn_lo) * rel_lo,
                               pfn_hi=self.pfn_lo + (self.pfn_hi - self.pfn_lo) * rel_hi,
                               pfn_total=self.pfn_total)


# ---------------------------------------------------------------------------------------------------------------
# Image helpers.


def images_to_uint8(images):
    """Generator output (float, about [-1, 1]) -> uint8 with (x * 127.5 + 128).clamp(0, 255), same shape."""
    return (images.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def downscale_images(images, resolution, pyramid_filter='box'):
    """Downscale uint8 [N, C, H, H] images to [N, C, r, r] (r = resolution, H a multiple of r); same dtype.

    'box' averages (H/r) x (H/r) blocks; 'fir' applies the [1,3,3,1] (outer product) low-pass with edge-replicated
    borders and decimates by 2, repeatedly (H/r must be a power of two). uint8 results are rounded."""
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f'downscale_images: expected square [N, C, H, H] images, got {tuple(images.shape)}')
    size = images.shape[2]
    resolution = int(resolution)
    if resolution == size:
        return images
    if resolution < 1 or resolution > size or size % resolution != 0:
        raise ValueError(f'downscale_images: cannot downscale {size}x{size} images to {resolution}x{resolution}')
    x = images.to(torch.float32)
    if pyramid_filter == 'box':
        x = F.avg_pool2d(x, kernel_size=size // resolution)
    elif pyramid_filter == 'fir':
        factor = size // resolution
        if factor & (factor - 1):
            raise ValueError(f'downscale_images: fir filter needs a power-of-two factor, got {size} -> {resolution}')
        from torch_utils.ops import upfirdn2d
        f = upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device)
        while x.shape[2] > resolution:
            # Edge-replicated borders (no darkening), then filter and decimate: [.., 2r, 2r] -> [.., r, r].
            x = upfirdn2d.upfirdn2d(F.pad(x, [1, 1, 1, 1], mode='replicate'), f, down=2)
    else:
        raise ValueError(f'downscale_images: unknown filter {pyramid_filter!r}; expected one of {PYRAMID_FILTERS}')
    if images.dtype == torch.uint8:
        return x.round().clamp(0, 255).to(torch.uint8)
    return x.to(images.dtype)


def _prepare_for_detector(images, resolution, pyramid_filter, gray_to_rgb):
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f'expected uint8 [N, C, H, W] images, got {images.dtype} {tuple(images.shape)}')
    if resolution is not None:
        images = downscale_images(images, resolution, pyramid_filter)
    if gray_to_rgb and images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])
    return images


def as_level_dict(levels):
    """G_pyramid_fn output (list/tuple of [N, C, r, r] tensors or dict {r: tensor}) -> dict {r: tensor}."""
    if isinstance(levels, dict):
        return {int(r): img for r, img in levels.items()}
    if isinstance(levels, (list, tuple)):
        return {int(img.shape[-1]): img for img in levels}
    raise ValueError(f'G_pyramid_fn must return a list, tuple or dict of image tensors, got {type(levels).__name__}')


def _accepts_kwarg(fn, name):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def generator_call_kwargs(G, opts):
    """opts.G_kwargs, plus force_fp32=True off CUDA when G's forward accepts it (half precision is for GPUs)."""
    kwargs = dict(opts.G_kwargs)
    if opts.device.type != 'cuda' and 'force_fp32' not in kwargs and _accepts_kwarg(G.forward, 'force_fp32'):
        kwargs['force_fp32'] = True
    return kwargs


def make_label_sampler(opts, G):
    """``sample(n) -> [n, c_dim] float32 tensor on opts.device``: labels of random dataset items (zeros [n, 0]
    for unconditional G; a conditional G needs opts.dataset_kwargs)."""
    c_dim = int(G.c_dim)
    if c_dim == 0:
        return lambda n: torch.zeros([n, 0], device=opts.device)
    if not opts.dataset_kwargs:
        raise ValueError(f'conditional generator (c_dim={c_dim}) needs dataset_kwargs to draw labels from')
    dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)
    if dataset.label_dim != c_dim:
        raise ValueError(f'dataset labels have {dataset.label_dim} dimensions but the generator has c_dim={c_dim} '
                         f'(use_labels={opts.dataset_kwargs.get("use_labels")})')

    def sample(n):
        labels = [dataset.get_label(np.random.randint(len(dataset))) for _ in range(n)]
        return torch.from_numpy(np.stack(labels).astype(np.float32)).to(opts.device)
    return sample


def generate_images_uint8(G, z, c, G_kwargs, opts):
    """One generator batch as uint8 [N, C, r, r] at opts.eval_resolution (None = native): taken from
    opts.G_pyramid_fn when given, else the full-resolution output downscaled like the real images."""
    r = opts.eval_resolution
    if r is not None and opts.G_pyramid_fn is not None:
        levels = as_level_dict(opts.G_pyramid_fn(G, z, c, **G_kwargs))
        if r not in levels:
            raise ValueError(f'G_pyramid_fn returned resolutions {sorted(levels)}, not the requested {r}')
        return images_to_uint8(levels[r])
    images = images_to_uint8(G(z, c, **G_kwargs))
    if r is not None:
        images = downscale_images(images, r, opts.pyramid_filter)
    return images


def default_data_loader_kwargs(device):
    """Real-image DataLoader defaults: 3 workers and pinned memory on CUDA, in-process loading on CPU."""
    if torch.device(device).type == 'cuda':
        return dict(pin_memory=True, num_workers=3, prefetch_factor=2)
    return dict(num_workers=0)


def _canonical_repr(obj):
    """repr with dict keys sorted at every level, so equal settings give equal cache keys."""
    if isinstance(obj, dict):
        return '{' + ', '.join(f'{k!r}: {_canonical_repr(obj[k])}' for k in sorted(obj, key=repr)) + '}'
    if isinstance(obj, (list, tuple)):
        inner = ', '.join(_canonical_repr(v) for v in obj)
        return f'[{inner}]' if isinstance(obj, list) else f'({inner})'
    return repr(obj)


def dataset_stats_cache_file(opts, dataset_name, detector_url, detector_kwargs, stats_kwargs, extra=None):
    """Cache path <dnnlib cache>/gan-metrics/<dataset>-<detector>-<md5>.pkl of one dataset statistics setting."""
    key = dict(dataset_kwargs=opts.dataset_kwargs, detector_url=detector_url, detector_kwargs=detector_kwargs,
               stats_kwargs=stats_kwargs)
    if extra:
        key.update(extra)
    md5 = hashlib.md5(_canonical_repr(key).encode('utf-8')).hexdigest()
    safe_name = re.sub(r'[^0-9a-zA-Z._-]', '_', str(dataset_name))
    file_name = f'{safe_name}-{get_feature_detector_name(detector_url)}-{md5}.pkl'
    return dnnlib.util.make_cache_dir_path('gan-metrics', file_name)


def _broadcast_flag(flag, opts):
    if opts.num_gpus == 1:
        return bool(flag)
    t = torch.as_tensor(float(flag), dtype=torch.float32, device=opts.device)
    torch.distributed.broadcast(tensor=t, src=0)
    return float(t.cpu()) != 0


# ---------------------------------------------------------------------------------------------------------------
# The two feature pipelines.


@torch.no_grad()
def compute_feature_stats_for_dataset(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64,
                                      data_loader_kwargs=None, max_items=None, detector=None, gray_to_rgb=True,
                                      **stats_kwargs):
    """FeatureStats of the detector's features of real images (the first max_items dataset items, all if None).

    Items are split across ranks by stride and gathered, so every rank returns the same statistics. With
    opts.cache the result is stored in (and on later calls read from) the dnnlib cache, keyed by an md5 of the
    dataset kwargs, detector url and kwargs, stats kwargs and evaluation resolution; the detector is then not
    loaded at all. `detector` (a callable) may replace loading `detector_url`, which then only names it.
    `gray_to_rgb` repeats 1-channel images to 3 channels. stats_kwargs go to FeatureStats.
    """
    if not opts.dataset_kwargs:
        raise ValueError('this metric needs real images: MetricOptions.dataset_kwargs is empty')
    dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)
    resolution = opts.eval_resolution
    if resolution is not None and resolution == dataset.resolution:
        resolution = None
    if resolution is not None and (resolution > dataset.resolution or dataset.resolution % resolution != 0):
        raise ValueError(f'cannot evaluate {dataset.resolution}x{dataset.resolution} dataset images at '
                         f'resolution {resolution}')
    if data_loader_kwargs is None:
        data_loader_kwargs = opts.data_loader_kwargs
    if data_loader_kwargs is None:
        data_loader_kwargs = default_data_loader_kwargs(opts.device)

    # Cached statistics?
    cache_file = None
    if opts.cache:
        extra = dict(max_items=max_items)
        if resolution is not None:
            extra['eval_resolution'] = (resolution, opts.pyramid_filter)
        if not gray_to_rgb:
            extra['gray_to_rgb'] = False
        cache_file = dataset_stats_cache_file(opts, dataset.name, detector_url, detector_kwargs, stats_kwargs, extra)
        if _broadcast_flag(os.path.isfile(cache_file) if opts.rank == 0 else False, opts):
            return FeatureStats.load(cache_file)

    num_items = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    stats = FeatureStats(max_items=num_items, **stats_kwargs)
    progress = opts.progress.sub(tag='dataset features', num_items=num_items, rel_lo=rel_lo, rel_hi=rel_hi)
    if detector is None:
        detector = get_feature_detector(url=detector_url, device=opts.device, num_gpus=opts.num_gpus,
                                        rank=opts.rank, verbose=progress.verbose)

    item_subset = [(i * opts.num_gpus + opts.rank) % num_items for i in range((num_items - 1) // opts.num_gpus + 1)]
    # The pass runs only on a cache miss, so it must leave the global generators as it found them (creating the
    # loader's iterator draws its workers' base seed from torch's global generator).
    with preserved_rng(opts.device):
        loader = torch.utils.data.DataLoader(dataset=dataset, sampler=item_subset, batch_size=batch_size,
                                             **data_loader_kwargs)
        for images, _labels in loader:
            images = _prepare_for_detector(torch.as_tensor(images).to(opts.device), resolution, opts.pyramid_filter,
                                           gray_to_rgb)
            features = detector(images, **detector_kwargs)
            stats.append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
            progress.update(stats.num_items)

    if cache_file is not None and opts.rank == 0:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        temp_file = f'{cache_file}.{uuid.uuid4().hex}.tmp'
        try:
            stats.save(temp_file)
            os.replace(temp_file, cache_file)  # atomic: readers never see a partial file
        finally:
            if os.path.exists(temp_file):
                os.remove(temp_file)
    return stats


@torch.no_grad()
def compute_feature_stats_for_generator(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64,
                                        batch_gen=None, detector=None, gray_to_rgb=True, **stats_kwargs):
    """FeatureStats of the detector's features of generated images, until stats_kwargs['max_items'] rows.

    A deep copy of opts.G runs on opts.device with z ~ N(0, I), labels drawn from the dataset (zeros when
    unconditional), `batch_gen` images per call (default min(batch_size, 4)); images go to the detector in memory
    as uint8 (x * 127.5 + 128).clamp(0, 255). Every rank generates its own batches; rows are gathered.
    """
    if opts.G is None:
        raise ValueError('this metric needs a generator: MetricOptions.G is None')
    if batch_gen is None:
        batch_gen = opts.batch_gen if opts.batch_gen is not None else min(batch_size, 4)
    if batch_size % batch_gen != 0:
        raise ValueError(f'batch_gen={batch_gen} must divide batch_size={batch_size}')
    stats = FeatureStats(**stats_kwargs)
    if stats.max_items is None:
        raise ValueError('compute_feature_stats_for_generator needs max_items')
    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    sample_labels = make_label_sampler(opts, G)
    G_kwargs = generator_call_kwargs(G, opts)
    progress = opts.progress.sub(tag='generator features', num_items=stats.max_items, rel_lo=rel_lo, rel_hi=rel_hi)
    if detector is None:
        detector = get_feature_detector(url=detector_url, device=opts.device, num_gpus=opts.num_gpus,
                                        rank=opts.rank, verbose=progress.verbose)

    while not stats.is_full():
        images = []
        for _ in range(batch_size // batch_gen):
            z = torch.randn([batch_gen, G.z_dim], device=opts.device)
            c = sample_labels(batch_gen)
            images.append(generate_images_uint8(G, z, c, G_kwargs, opts))
        images = _prepare_for_detector(torch.cat(images), None, opts.pyramid_filter, gray_to_rgb)
        features = detector(images, **detector_kwargs)
        stats.append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
        progress.update(stats.num_items)
    return stats
