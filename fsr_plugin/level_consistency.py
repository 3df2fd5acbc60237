"""Pyramid consistency of the generated levels: a generator loss (`--fsr-consistency`).

The real pyramid is built by repeated 2x downsampling (fsr_plugin.pyramid), so every real pair of consecutive levels
satisfies x_{l-1} = down(x_l) exactly: the low level is the high level seen coarser. The target distribution of the
generator's pyramid (x_1, ..., x_L) therefore satisfies it with probability 1 too, and a generator whose levels match
the reals' joint distribution (what the pair discriminators D_l(x_{l-1}, x_l) ask for) paints consistent levels.

The FSR heads paint every level from that level's own hidden features, and nothing but the pair discriminators ties
the levels of one sample together. On the synthetic teacher they did not: the 40-kimg snapshots of the best recipe
paint levels about as unrelated as two independent samples (|down(x_l) - x_{l-1}|^2 about twice the level's
variance; docs/RESULTS.md section 19), while their pair discriminators separate real from fake pairs by scores of
+-6 at 32x32 that the generator does not follow. Each level can then match its own patch statistics and still give
every image a different mean colour at 16x16 than at 8x8.

This term writes the constraint out. For every consecutive pair (r/2, r) of generated levels,

    c_r = mean over images and pixels of |down(x_r) - x_{r/2}|^2 (summed over channels) / v_{r/2},

with v_{r/2} the total per-pixel variance of the real level r/2 in the same step (sum over channels of the variance
over images and positions; no gradient). c_r is unitless: 0 for a consistent pair, about 2 when the two levels are
independent samples with the reals' spread. With `detach_lower=True` (the default, the forward super-resolution
direction) x_{r/2} is a fixed target and only the higher level r moves; otherwise both do.

`mode='mean'` (`--fsr-consistency-mode=mean`) keeps only the constant part of the constraint: each image's mean colour
at level r against the same image's at r/2 (both equal for a box pyramid), |mean(x_r) - mean(x_{r/2})|^2 summed over
channels, averaged over images, over the reals' between-image variance of the level r/2's mean colour (summed over
channels). Three numbers per image instead of every pixel: it ties the image-wide colour that a style-modulated block
can set on its own (the 16x16 and 32x32 levels of the best synthetic recipe vary 4-10x more in mean colour than the
teacher's, where the 4x4 and 8x8 levels do not) and leaves the patches free.

Measured on the synthetic teacher (docs/RESULTS.md section 19): either mode ties what it targets, and at weight 10
either costs the upper levels' patch covariances more than it gains; neither is part of the best recipe.
"""

import torch

from .pyramid import downsample2x

__all__ = ['CONSISTENCY_MODES', 'consistency_loss', 'level_consistency_losses']

CONSISTENCY_MODES = ('full', 'mean')


def consistency_loss(x_hi, x_lo, scale, filter='box', detach_lower=True, mode='full'):
    """mode 'full': c = mean_{n, y, x} sum_c (down(x_hi) - x_lo)^2 / scale; mode 'mean': c = mean_n sum_c
    (mean_{y, x} x_hi - mean_{y, x} x_lo)^2 / scale; for x_hi [N, C, 2r, 2r], x_lo [N, C, r, r] and a positive scale (a
    float or a scalar tensor without gradient). down: fsr_plugin.pyramid.downsample2x with `filter`. Returns a scalar,
    differentiable in x_hi (and in x_lo unless detach_lower)."""
    if mode not in CONSISTENCY_MODES:
        raise ValueError(f'consistency_loss: mode must be one of {CONSISTENCY_MODES}, got {mode!r}')
    if x_hi.ndim != 4 or x_lo.ndim != 4 or x_hi.shape[:2] != x_lo.shape[:2] or \
            x_hi.shape[2] != 2 * x_lo.shape[2] or x_hi.shape[3] != 2 * x_lo.shape[3]:
        raise ValueError(f'consistency_loss: expected x_hi [N, C, 2r, 2r] and x_lo [N, C, r, r], got '
                         f'{list(x_hi.shape)} and {list(x_lo.shape)}')
    scale = torch.as_tensor(scale, dtype=x_hi.dtype, device=x_hi.device).detach()
    if not bool(scale > 0):
        raise ValueError(f'consistency_loss: the scale must be > 0, got {float(scale)}')
    target = (x_lo.detach() if detach_lower else x_lo).to(x_hi.dtype)
    if mode == 'mean':
        return (x_hi.mean(dim=[2, 3]) - target.mean(dim=[2, 3])).square().sum(dim=1).mean() / scale
    diff = downsample2x(x_hi, filter) - target
    return diff.square().sum(dim=1).mean() / scale


def level_consistency_losses(fake_pyramid, real_pyramid, weights, filter='box', detach_lower=True, mode='full',
                             eps=1e-12):
    """{r: (weights[r] * c_r, c_r)} for every level r in `weights` whose lower level r/2 is in fake_pyramid and
    real_pyramid ({r: [N, C, r, r]}); c_r as in the module docstring, normalised by the real level r/2's total pixel
    variance (mode 'full') or the between-image variance of its mean colour (mode 'mean'; needs 2 real images),
    clamped to eps. Levels without a lower neighbour are skipped."""
    out = {}
    for r, w in sorted(weights.items()):
        lo = r // 2
        if r not in fake_pyramid or lo not in fake_pyramid or lo not in real_pyramid or r % 2:
            continue
        real_lo = real_pyramid[lo].detach().to(fake_pyramid[r].dtype)
        if mode == 'mean':
            if real_lo.shape[0] < 2:
                raise ValueError('level_consistency_losses: mode "mean" needs at least 2 real images for its scale')
            scale = real_lo.mean(dim=[2, 3]).var(dim=0, unbiased=False).sum().clamp_min(eps)
        else:
            rows = real_lo.transpose(0, 1).reshape(real_lo.shape[1], -1)
            scale = rows.var(dim=1, unbiased=False).sum().clamp_min(eps)
        value = consistency_loss(fake_pyramid[r], fake_pyramid[lo], scale, filter=filter, detach_lower=detach_lower,
                                 mode=mode)
        out[int(r)] = (float(w) * value, value)
    return out
