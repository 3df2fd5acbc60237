"""Filtered leaky ReLU (StyleGAN3): bias, upsample + filter, leaky ReLU, filter + downsample.

Per channel: add bias `b`; upsample by `up` (zero insertion), pad by `padding`, filter with `fu` (gain up**2);
multiply by `gain`, apply leaky ReLU with negative slope `slope`, clamp to +-`clamp`; filter with `fd` and
keep every `down`-th sample. This module implements it as that composition of bias_act and upfirdn2d, so it
runs on any device; on CUDA tensors with impl='cuda' the components use their own CUDA kernels (there is no
fused kernel here).
"""

import numpy as np
import torch

from . import bias_act as bias_act_ops
from . import upfirdn2d as upfirdn2d_ops

#----------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _parse_args(x, fu, fd, b, up, down, padding, clamp):
    """Validate arguments; returns (padding (x0, x1, y0, y1), clamp as float or None)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError('filtered_lrelu: x must be a floating-point 4-D tensor [N, C, H, W]')
    for name, f in (('fu', fu), ('fd', fd)):
        if f is not None and (not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or f.dtype != torch.float32):
            raise TypeError(f'filtered_lrelu: {name} must be None or a float32 tensor with 1 or 2 dimensions')
    if b is not None and (not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[1]):
        raise ValueError(f'filtered_lrelu: b must be None or a 1-D tensor with x.shape[1]={x.shape[1]} elements')
    for name, value in (('up', up), ('down', down)):
        if not _is_int(value) or value < 1:
            raise ValueError(f'filtered_lrelu: {name} must be an int >= 1, got {value!r}')
    if clamp is not None:
        clamp = float(clamp)
        if not clamp >= 0:
            raise ValueError(f'filtered_lrelu: clamp must be None or >= 0, got {clamp}')
    return upfirdn2d_ops._parse_padding(padding), clamp


def output_size(in_size, up, down, pad0, pad1, fu_taps, fd_taps):
    """Output length along one axis: (in * up + pad0 + pad1 - (fu_taps - 1) - (fd_taps - 1) + down - 1) // down."""
    return (in_size * up + pad0 + pad1 - (fu_taps - 1) - (fd_taps - 1) + (down - 1)) // down

#----------------------------------------------------------------------------

def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=np.sqrt(2), slope=0.2, clamp=None,
                   flip_filter=False, impl='cuda'):
    """Bias, upsample with fu, leaky ReLU, downsample with fd, for a batch of images.

    x: [N, C, H, W] float. fu, fd: float32 filters ([taps] separable or [fh, fw]) or None (identity).
    b: None or [C]. up, down: ints >= 1. padding: int, [px, py] or [x0, x1, y0, y1] (upsampled pixels,
    negative crops). gain: multiplies the filtered signal before the activation; slope: negative slope of
    the leaky ReLU; clamp: None or bound applied after gain and activation. flip_filter: correlate instead
    of convolve. impl: 'cuda' (CUDA kernels of the components for CUDA tensors) or 'ref'.
    Returns [N, C, H_out, W_out], W_out = (W * up + x0 + x1 - (fu_w - 1) - (fd_w - 1) + down - 1) // down.
    """
    if impl not in ('ref', 'cuda'):
        raise ValueError(f"filtered_lrelu: impl must be 'ref' or 'cuda', got {impl!r}")
    return _filtered_lrelu_composed(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter, impl)


def _filtered_lrelu_ref(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=np.sqrt(2), slope=0.2,
                        clamp=None, flip_filter=False):
    """Reference filtered_lrelu (pure PyTorch components); same arguments and result as filtered_lrelu."""
    return _filtered_lrelu_composed(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter, 'ref')


def _filtered_lrelu_composed(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter, impl):
    (px0, px1, py0, py1), clamp = _parse_args(x, fu, fd, b, up, down, padding, clamp)
    fu_w, fu_h = upfirdn2d_ops._get_filter_size(fu)
    fd_w, fd_h = upfirdn2d_ops._get_filter_size(fd)
    out_w = output_size(x.shape[3], up, down, px0, px1, fu_w, fd_w)
    out_h = output_size(x.shape[2], up, down, py0, py1, fu_h, fd_h)
    if out_w < 1 or out_h < 1:
        raise ValueError(f'filtered_lrelu: output would be empty ({out_h}x{out_w}) for input {list(x.shape)}')

    if b is not None:
        x = bias_act_ops.bias_act(x, b, impl=impl)
    x = upfirdn2d_ops.upfirdn2d(x, fu, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter,
                                impl=impl)
    x = bias_act_ops.bias_act(x, act='lrelu', alpha=slope, gain=gain, clamp=clamp, impl=impl)
    x = upfirdn2d_ops.upfirdn2d(x, fd, down=down, flip_filter=flip_filter, impl=impl)
    if x.shape[2:] != (out_h, out_w):
        raise AssertionError(f'filtered_lrelu: internal size mismatch {list(x.shape[2:])} vs {[out_h, out_w]}')
    return x
