"""Multi-scale sliced Wasserstein distance (SWD) between real and generated images, on Laplacian-pyramid patches as
introduced with progressive GANs (Karras et al. 2018, "Progressive Growing of GANs", appendix D). Needs no
pretrained network, so it works offline and on CPU.

Procedure (our choices are marked *):
1. Each uint8 image (values 0..255 as float) is decomposed into a Laplacian pyramid with the 5-tap binomial filter
   [1, 4, 6, 4, 1] / 16 (mirror padding): band-pass levels at the image resolution, half of it, ... down to
   `min_res` (16), whose level is the low-pass residual. Images at or below min_res give one level: the image.
2. From every level of every image, `patches_per_image` random 7x7 neighbourhoods are taken (descriptors of
   7*7*C values; * levels smaller than 7 pixels use the whole level).
3. * Descriptors of both sets are normalised per colour channel with the mean and standard deviation of the REAL
   descriptors of that level (the original normalised each set by its own statistics, which hides a global
   colour or brightness shift).
4. Per level: `dir_repeats` x `dirs_per_repeat` random unit directions (fixed by `seed`), both sets projected,
   projections sorted, distance = mean absolute difference of the sorted projections (sliced Wasserstein-1),
   averaged over the directions. Both sets are first brought to the same size by a seeded random subset.
5. Reported like the original: each level's distance x 1e3, plus their mean over levels.

Defaults (metric `swd`): 10000 real and 10000 generated images, 16 patches per image and level (160k
descriptors per level), 4 x 128 directions. `swd2k`: 2048 images, 64 patches per image and level.
"""

import numpy as np
import torch
import torch.nn.functional as F

from . import metric_utils

NHOOD_SIZE = 7
MIN_RES = 16
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
SWD_SCALE = 1e3  # reported value = distance x 1e3, as in progressive GANs

_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur(x, gain=1.0):
    """Separable 5-tap binomial blur of float [N, C, H, W] with mirror padding, times `gain`."""
    k = torch.tensor(_BINOMIAL_5, dtype=x.dtype, device=x.device)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, [2, 2, 2, 2], mode='reflect')
    x = F.conv2d(x, (k * gain).view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)
    return x


def pyr_down(x):
    """Blur, then keep every second row and column: [N, C, H, W] -> [N, C, H/2, W/2]."""
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x):
    """Zero-insertion upsampling by 2 followed by the blur with gain 4: [N, C, H, W] -> [N, C, 2H, 2W]."""
    n, c, h, w = x.shape
    y = torch.zeros([n, c, h * 2, w * 2], dtype=x.dtype, device=x.device)
    y[:, :, ::2, ::2] = x
    return _blur(y, gain=4.0)


def laplacian_pyramid(images, min_res=MIN_RES):
    """Levels of float images [N, C, H, H], finest first: band-pass levels at H, H/2, ... (> min_res), then the
    low-pass residual at the first resolution <= min_res (the image itself when H <= min_res)."""
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f'laplacian_pyramid: expected square [N, C, H, H] images, got {tuple(images.shape)}')
    if min_res < 2:
        raise ValueError(f'laplacian_pyramid: min_res must be >= 2, got {min_res}')
    levels = []
    g = images
    while g.shape[2] > min_res and g.shape[2] % 2 == 0:
        down = pyr_down(g)
        levels.append(g - pyr_up(down))
        g = down
    levels.append(g)
    return levels


def level_layout(resolution, channels, patches_per_image, nhood_size=NHOOD_SIZE, min_res=MIN_RES):
    """[(level resolution, patch size, descriptor dim)] of the pyramid of [C, r, r] images (finest first)."""
    layout = []
    res = int(resolution)
    while res > min_res and res % 2 == 0:
        layout.append(res)
        res //= 2
    layout.append(res)
    out = []
    for r in layout:
        ps = min(nhood_size, r)
        out.append((r, ps, ps * ps * int(channels)))
    return out


class LaplacianPatchDescriptor:
    """Feature "detector" for SWD: uint8 images [N, C, H, H] -> float32 [N, sum_l P * D_l], the concatenated
    P = patches_per_image random patches of every Laplacian level (each patch flattened channel-last, D_l =
    ps * ps * C). Patch positions come from a CPU generator seeded with `seed`, so the same image sequence gives
    the same descriptors."""

    def __init__(self, patches_per_image=16, nhood_size=NHOOD_SIZE, min_res=MIN_RES, seed=0):
        if patches_per_image < 1 or nhood_size < 1:
            raise ValueError('LaplacianPatchDescriptor: patches_per_image and nhood_size must be >= 1')
        self.patches_per_image = int(patches_per_image)
        self.nhood_size = int(nhood_size)
        self.min_res = int(min_res)
        self.generator = torch.Generator().manual_seed(int(seed))

    def name(self):
        """Identifier of the descriptor settings (used as the cache key's detector name)."""
        return f'swd-laplacian-patches-p{self.patches_per_image}-n{self.nhood_size}-m{self.min_res}'

    @torch.no_grad()
    def __call__(self, images):
        n = images.shape[0]
        out = []
        for level in laplacian_pyramid(images.to(torch.float32), self.min_res):
            h, w, c = level.shape[2], level.shape[3], level.shape[1]
            ps = min(self.nhood_size, h)
            ys = torch.randint(0, h - ps + 1, [n, self.patches_per_image], generator=self.generator)
            xs = torch.randint(0, w - ps + 1, [n, self.patches_per_image], generator=self.generator)
            ar = torch.arange(ps)
            rows = (ys[:, :, None] + ar)[:, :, :, None].to(level.device)   # [n, P, ps, 1]
            cols = (xs[:, :, None] + ar)[:, :, None, :].to(level.device)   # [n, P, 1, ps]
            idx = torch.arange(n, device=level.device)[:, None, None, None]
            patches = level.permute(0, 2, 3, 1)[idx, rows, cols]           # [n, P, ps, ps, c]
            out.append(patches.reshape(n, -1))
        return torch.cat(out, dim=1)

    def split_levels(self, features, resolution, channels):
        """[N, total] descriptors -> list (finest level first) of [N * P, D_l] arrays."""
        layout = level_layout(resolution, channels, self.patches_per_image, self.nhood_size, self.min_res)
        total = sum(self.patches_per_image * dim for _, _, dim in layout)
        if features.shape[1] != total:
            raise ValueError(f'SWD: descriptors have {features.shape[1]} values per image, expected {total} for '
                             f'{channels}-channel {resolution}x{resolution} images')
        out, start = [], 0
        for _, _, dim in layout:
            size = self.patches_per_image * dim
            out.append(features[:, start:start + size].reshape(-1, dim))
            start += size
        return out


def normalize_descriptors(real, fake, channels):
    """Normalise both [M, ps*ps*C] descriptor sets (channel-last) per channel with the real set's mean and
    standard deviation; float64 tensors."""
    real = torch.as_tensor(real, dtype=torch.float64)
    fake = torch.as_tensor(fake, dtype=torch.float64)
    r = real.reshape(-1, channels)
    mean = r.mean(dim=0)
    std = r.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    norm = lambda d: ((d.reshape(d.shape[0], -1, channels) - mean) / std).reshape(d.shape[0], -1)
    return norm(real), norm(fake)


def sliced_wasserstein_distance(a, b, dir_repeats=DIR_REPEATS, dirs_per_repeat=DIRS_PER_REPEAT, seed=0,
                                device=None):
    """Sliced Wasserstein-1 distance between point sets a [N, D] and b [M, D]: mean over random unit directions
    (dir_repeats x dirs_per_repeat, seeded) of the mean |sorted(a.dir) - sorted(b.dir)|. When N != M the larger
    set is replaced by a seeded random subset of the smaller size. float64; returns a float (unscaled)."""
    a = torch.as_tensor(a, dtype=torch.float64, device=device)
    b = torch.as_tensor(b, dtype=torch.float64, device=device)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f'sliced_wasserstein_distance: expected [N, D] and [M, D], got {tuple(a.shape)} and '
                         f'{tuple(b.shape)}')
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError('sliced_wasserstein_distance: empty point set')
    gen = torch.Generator().manual_seed(int(seed))
    n = min(a.shape[0], b.shape[0])
    if a.shape[0] > n:
        a = a[torch.randperm(a.shape[0], generator=gen)[:n].to(a.device)]
    if b.shape[0] > n:
        b = b[torch.randperm(b.shape[0], generator=gen)[:n].to(b.device)]
    total = 0.0
    for _ in range(dir_repeats):
        dirs = torch.randn([a.shape[1], dirs_per_repeat], generator=gen, dtype=torch.float64).to(a.device)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        proj_a = (a @ dirs).sort(dim=0).values
        proj_b = (b @ dirs).sort(dim=0).values
        total += float((proj_a - proj_b).abs().mean())
    return total / dir_repeats


def swd_levels(real_levels, fake_levels, channels, dir_repeats=DIR_REPEATS, dirs_per_repeat=DIRS_PER_REPEAT,
               seed=0, device=None):
    """Per-level SWD x 1e3 (list, finest first) of matching lists of real/fake descriptor arrays [M, ps*ps*C]."""
    if len(real_levels) != len(fake_levels):
        raise ValueError(f'SWD: {len(real_levels)} real vs {len(fake_levels)} fake pyramid levels')
    out = []
    for idx, (real, fake) in enumerate(zip(real_levels, fake_levels)):
        real, fake = normalize_descriptors(real, fake, channels)
        dist = sliced_wasserstein_distance(real, fake, dir_repeats, dirs_per_repeat, seed=seed * 1000 + idx,
                                           device=device)
        out.append(dist * SWD_SCALE)
    return out


def swd_images(real_images, fake_images, patches_per_image=16, nhood_size=NHOOD_SIZE, min_res=MIN_RES,
               dir_repeats=DIR_REPEATS, dirs_per_repeat=DIRS_PER_REPEAT, seed=0):
    """SWD x 1e3 between two uint8 image batches [N, C, H, H] held in memory: (dict {level res: value}, mean)."""
    if real_images.shape[1:] != fake_images.shape[1:]:
        raise ValueError(f'swd_images: image shapes differ: {tuple(real_images.shape)} vs {tuple(fake_images.shape)}')
    channels, resolution = real_images.shape[1], real_images.shape[2]
    real_desc = LaplacianPatchDescriptor(patches_per_image, nhood_size, min_res, seed)
    fake_desc = LaplacianPatchDescriptor(patches_per_image, nhood_size, min_res, seed)
    real = real_desc.split_levels(real_desc(real_images), resolution, channels)
    fake = fake_desc.split_levels(fake_desc(fake_images), resolution, channels)
    values = swd_levels(real, fake, channels, dir_repeats, dirs_per_repeat, seed)
    layout = level_layout(resolution, channels, patches_per_image, nhood_size, min_res)
    per_level = {res: v for (res, _, _), v in zip(layout, values)}
    return per_level, float(np.mean(values))


def compute_swd(opts, num_images, patches_per_image=16, nhood_size=NHOOD_SIZE, min_res=MIN_RES,
                dir_repeats=DIR_REPEATS, dirs_per_repeat=DIRS_PER_REPEAT, seed=0):
    """SWD x 1e3 between up to `num_images` dataset images and `num_images` generated images.

    Returns (dict {level resolution: value}, mean over levels) on rank 0; (dict of NaNs, NaN) on other ranks.
    Images are compared at opts.eval_resolution when set (per-resolution evaluation), else at G.img_resolution.
    """
    if opts.G is None:
        raise ValueError('SWD needs a generator: MetricOptions.G is None')
    resolution = opts.eval_resolution or int(opts.G.img_resolution)
    channels = int(opts.G.img_channels)
    layout = level_layout(resolution, channels, patches_per_image, nhood_size, min_res)
    real_desc = LaplacianPatchDescriptor(patches_per_image, nhood_size, min_res, seed)
    fake_desc = LaplacianPatchDescriptor(patches_per_image, nhood_size, min_res, seed)  # same patch positions
    detector_url = f'{real_desc.name()}-s{seed}'

    real = metric_utils.compute_feature_stats_for_dataset(
        opts=opts, detector_url=detector_url, detector_kwargs={}, rel_lo=0, rel_hi=0, batch_size=opts.batch_size,
        detector=real_desc, gray_to_rgb=False, capture_all=True, max_items=num_images).get_all()
    fake = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector_url=detector_url, detector_kwargs={}, rel_lo=0, rel_hi=1, batch_size=opts.batch_size,
        detector=fake_desc, gray_to_rgb=False, capture_all=True, max_items=num_images).get_all()
    if opts.rank != 0:
        return {res: float('nan') for res, _, _ in layout}, float('nan')
    real_levels = real_desc.split_levels(real, resolution, channels)
    fake_levels = fake_desc.split_levels(fake, resolution, channels)
    values = swd_levels(real_levels, fake_levels, channels, dir_repeats, dirs_per_repeat, seed, device=opts.device)
    return {res: v for (res, _, _), v in zip(layout, values)}, float(np.mean(values))
