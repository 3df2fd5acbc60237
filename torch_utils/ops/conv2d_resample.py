"""2-D convolution with optional integer upsampling before it and downsampling after it.

Mathematically (all padding relative to the upsampled image, applied once, at the start):
  1. upsample: zero insertion by `up` + FIR filter `f` with gain up**2, after padding by `padding`
     (plus the upsample2d helper padding of `f`),
  2. convolve with `w` (valid; correlation like F.conv2d when flip_weight=True, true convolution otherwise),
  3. downsample: FIR filter `f` (valid, downsample2d helper padding added at step 1) and keep every
     `down`-th sample.
The implementation reorders these linear, shift-invariant steps where that is cheaper; every path gives the
same result as that composition (up to float rounding).
"""

import torch

from . import conv2d_gradfix
from . import upfirdn2d

#----------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_args(x, w, f, up, down, groups):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('conv2d_resample: x must be a 4-D tensor [N, C, H, W]')
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        raise ValueError('conv2d_resample: w must be a 4-D tensor [out_channels, in_channels / groups, kh, kw]')
    if w.dtype != x.dtype:
        raise TypeError(f'conv2d_resample: w.dtype ({w.dtype}) must equal x.dtype ({x.dtype})')
    if f is not None:
        if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or f.dtype != torch.float32:
            raise TypeError('conv2d_resample: f must be None or a float32 tensor with 1 or 2 dimensions')
    for name, value in (('up', up), ('down', down), ('groups', groups)):
        if not _is_int(value) or value < 1:
            raise ValueError(f'conv2d_resample: {name} must be an int >= 1, got {value!r}')
    if w.shape[0] % groups != 0 or x.shape[1] != w.shape[1] * groups:
        raise ValueError(f'conv2d_resample: x has {x.shape[1]} channels but w {list(w.shape)} with groups={groups} '
                         f'expects {w.shape[1] * groups}')


def _conv2d(x, w, stride=1, padding=0, groups=1, flip_weight=True):
    """conv2d with w [Cout, Cin/groups, kh, kw]; flip_weight=False turns correlation into true convolution."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    return conv2d_gradfix.conv2d(input=x, weight=w, stride=stride, padding=padding, groups=groups)


def _conv_transpose2d(x, w, stride, padding, groups, flip_weight):
    """Strided transposed conv with the conv2d-layout weight w [Cout, Cin/groups, kh, kw].

    Returns the full convolution of the zero-inserted x (stride = up factor) with the kernel that
    _conv2d(..., flip_weight) would apply, minus `padding` samples cropped on each side.
    """
    out_channels, in_per_group, kh, kw = w.shape
    if flip_weight and (kh > 1 or kw > 1):
        w = w.flip([2, 3])  # conv_transpose2d already convolves; undo the correlation convention
    # [Cout, Cin/g, kh, kw] -> [Cin, Cout/g, kh, kw]
    w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    return conv2d_gradfix.conv_transpose2d(input=x, weight=w, stride=stride, padding=padding, groups=groups)

#----------------------------------------------------------------------------

def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Upsample, convolve and downsample a batch of images in one call.

    x: [N, C_in, H, W]. w: [C_out, C_in / groups, kh, kw], same dtype as x. f: float32 FIR filter
    ([taps] separable or [fh, fw]) from upfirdn2d.setup_filter, or None. up, down: ints >= 1.
    padding: int, [px, py] or [x0, x1, y0, y1] in pixels of the upsampled image (negative crops).
    groups: int >= 1. flip_weight: True = correlation (like F.conv2d), False = true convolution.
    flip_filter: passed to upfirdn2d. Returns [N, C_out, H', W'] with
    W' = (W * up + x0 + x1 - kw + 1) // down (same for H with y0, y1, kh), whatever the filter size.
    """
    _check_args(x, w, f, up, down, groups)
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = upfirdn2d._get_filter_size(f)
    px0, px1, py0, py1 = upfirdn2d._parse_padding(padding)

    # Padding that makes the filtering steps shape-preserving (the upsample2d / downsample2d conventions).
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    pad = [px0, px1, py0, py1]

    # 1x1 kernel, downsampling only: the conv commutes with the per-channel filter; filter first (fewer
    # channels are touched when C_in <= C_out, and the conv runs on the small image).
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: convolve on the small image, then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: pre-filter (with all the padding), then a strided conv does the subsampling.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: the strided transposed conv computes conv(w) of the zero-inserted image without building
    # it; its full output, shifted by k - 1 - pad0, is the padded valid conv. The remaining padding/cropping
    # and the filter f (gain up**2) follow in one upfirdn2d call, then the optional downsampling.
    if up > 1:
        qx = max(0, min(kw - 1 - px0, kw - up - px1))
        qy = max(0, min(kh - 1 - py0, kh - up - py1))
        x = _conv_transpose2d(x, w, stride=up, padding=[qy, qx], groups=groups, flip_weight=flip_weight)
        post_pad = [px0 - kw + 1 + qx, px1 - kw + up + qx, py0 - kh + 1 + qy, py1 - kh + up + qy]
        x = upfirdn2d.upfirdn2d(x, f, padding=post_pad, gain=up ** 2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling: let the conv pad when the padding is symmetric and non-negative.
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        return _conv2d(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Generic: explicit pad/crop, then a valid conv.
    x = upfirdn2d.upfirdn2d(x, None, padding=pad, flip_filter=flip_filter)
    return _conv2d(x, w, groups=groups, flip_weight=flip_weight)
