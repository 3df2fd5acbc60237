"""Image pyramids for FSR: every real (or generated) image seen at every resolution r_1 < ... < r_L.

x_{l-1} = down(x_l) with one declared filter (FSR.md section 1). The pyramid is built once per batch by repeated 2x
downsampling with the host's upfirdn2d op (so its CUDA kernel serves here too):

* 'box': 2x2 average (filter [1, 1] x [1, 1] / 4, no padding). Level r equals F.avg_pool2d(x, R // r) exactly.
* 'fir': the host's [1, 3, 3, 1] low-pass (outer product, normalised to sum 1), upfirdn2d.downsample2d with its usual
  zero padding of 1 pixel per side; the same filter the host uses to shrink reals for progressive growing.

`upsample(x, factor, mode)` is the matching helper for the pair discriminators: 'nearest' (pixel replication, the
adjoint of 'box' up to a factor) or 'fir' (repeated upfirdn2d.upsample2d with [1, 3, 3, 1], gain kept).
"""

import torch

from torch_utils.ops import upfirdn2d

PYRAMID_FILTERS = ('box', 'fir')
UPSAMPLE_MODES = ('nearest', 'fir')

_TAPS = {'box': [1, 1], 'fir': [1, 3, 3, 1]}


def _is_power_of_two(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (v & (v - 1)) == 0


def resample_filter(name, device=torch.device('cpu')):
    """The 2-D float32 filter of pyramid filter `name` ('box' or 'fir'), from upfirdn2d.setup_filter."""
    if name not in _TAPS:
        raise ValueError(f'pyramid filter must be one of {PYRAMID_FILTERS}, got {name!r}')
    return upfirdn2d.setup_filter(_TAPS[name], device=device)


def downsample2x(x, filter='box'):
    """One pyramid step: x [N, C, H, W] (H, W even) -> [N, C, H/2, W/2] with the named filter."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f'downsample2x: x must be a 4-D tensor [N, C, H, W], got {_describe(x)}')
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f'downsample2x: height and width must be even, got {list(x.shape)}')
    return upfirdn2d.downsample2d(x, resample_filter(filter, x.device))


def build_pyramid(images, resolutions, filter='box'):
    """Images at every requested resolution, by repeated 2x downsampling (computed once, shared steps).

    images: [N, C, R, R] float tensor. resolutions: iterable of ints r with R / r a power of two (r = R returns
    `images` itself). filter: 'box' or 'fir'. Returns {r: [N, C, r, r]} for each requested r (ascending keys).
    Gradients flow through (the ops are linear).
    """
    if filter not in PYRAMID_FILTERS:
        raise ValueError(f'pyramid filter must be one of {PYRAMID_FILTERS}, got {filter!r}')
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f'build_pyramid: images must be a square batch [N, C, R, R], got {_describe(images)}')
    if not images.is_floating_point():
        raise TypeError(f'build_pyramid: images must be floating point, got {images.dtype}')
    R = int(images.shape[-1])
    wanted = sorted({int(r) for r in resolutions})
    if not wanted:
        raise ValueError('build_pyramid: need at least one resolution')
    for r in wanted:
        if r < 1 or r > R or R % r or not _is_power_of_two(R // r):
            raise ValueError(f'build_pyramid: resolution {r} is not the image size {R} divided by a power of two')
    f = resample_filter(filter, images.device)
    out = {}
    x = images
    while True:
        r = int(x.shape[-1])
        if r in wanted:
            out[r] = x
        if r <= wanted[0]:
            break
        x = upfirdn2d.downsample2d(x, f)
    return {r: out[r] for r in wanted}


def upsample(x, factor, mode='nearest'):
    """Upsample x [N, C, H, W] by an integer power-of-two `factor` -> [N, C, H * factor, W * factor].

    mode 'nearest': every pixel becomes a factor x factor block of its value. mode 'fir': log2(factor) steps of
    upfirdn2d.upsample2d with the [1, 3, 3, 1] filter (zero insertion, filter with gain 4 per step: a constant image
    stays constant away from the borders).
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f'upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}')
    if not _is_power_of_two(factor):
        raise ValueError(f'upsample factor must be a power of two >= 1, got {factor!r}')
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f'upsample: x must be a 4-D tensor [N, C, H, W], got {_describe(x)}')
    if factor == 1:
        return x
    if mode == 'nearest':
        return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    f = resample_filter('fir', x.device)
    while factor > 1:
        x = upfirdn2d.upsample2d(x, f)
        factor //= 2
    return x


def _describe(x):
    if isinstance(x, torch.Tensor):
        return f'tensor of shape {list(x.shape)}'
    return type(x).__name__
