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
"""

import torch

from .pyramid import downsample2x

__all__ = ['consistency_loss', 'level_consistency_losses']


def consistency_loss(x_hi, x_lo, scale, filter='box', detach_lower=True):
    """c = mean_{n, y, x} sum_c (down(x_hi) - x_lo)^2 / scale for x_hi [N, C, 2r, 2r], x_lo [N, C, r, r] and a positive
    scale (a float or a scalar tensor without gradient). down: fsr_plugin.pyramid.downsample2x with `filter`. Returns a
    scalar, differentiable in x_hi (and in x_lo unless detach_lower)."""
    if x_hi.ndim != 4 or x_lo.ndim != 4 or x_hi.shape[:2] != x_lo.shape[:2] or \
            x_hi.shape[2] != 2 * x_lo.shape[2] or x_hi.shape[3] != 2 * x_lo.shape[3]:
        raise ValueError(f'consistency_loss: expected x_hi [N, C, 2r, 2r] and x_lo [N, C, r, r], got '
                         f'{list(x_hi.shape)} and {list(x_lo.shape)}')
    scale = torch.as_tensor(scale, dtype=x_hi.dtype, device=x_hi.device).detach()
    if not bool(scale > 0):
        raise ValueError(f'consistency_loss: the scale must be > 0, got {float(scale)}')
    target = x_lo.detach() if detach_lower else x_lo
    diff = downsample2x(x_hi, filter) - target.to(x_hi.dtype)
    return diff.square().sum(dim=1).mean() / scale


def level_consistency_losses(fake_pyramid, real_pyramid, weights, filter='box', detach_lower=True, eps=1e-12):
    """{r: (weights[r] * c_r, c_r)} for every level r in `weights` whose lower level r/2 is in fake_pyramid and
    real_pyramid ({r: [N, C, r, r]}); c_r as in the module docstring, normalised by the real level r/2's total pixel
    variance (clamped to eps). Levels without a lower neighbour are skipped."""
    out = {}
    for r, w in sorted(weights.items()):
        lo = r // 2
        if r not in fake_pyramid or lo not in fake_pyramid or lo not in real_pyramid or r % 2:
            continue
        real_lo = real_pyramid[lo].detach().to(fake_pyramid[r].dtype)
        scale = real_lo.transpose(0, 1).reshape(real_lo.shape[1], -1).var(dim=1, unbiased=False).sum().clamp_min(eps)
        value = consistency_loss(fake_pyramid[r], fake_pyramid[lo], scale, filter=filter, detach_lower=detach_lower)
        out[int(r)] = (float(w) * value, value)
    return out
