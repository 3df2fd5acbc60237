"""FIR filtering of NCHW image batches with integer up- and downsampling ("upfirdn2d").

Per channel and per axis the op (1) upsamples by inserting `up - 1` zeros after every sample, (2) pads
by `padding` (negative values crop), (3) convolves with the FIR filter `f` (true convolution, i.e. the
filter is flipped, unless `flip_filter=True`), keeping only outputs whose footprint lies fully inside the
padded signal, and (4) keeps every `down`-th sample. The output size per axis is
`(in * up + pad0 + pad1 - taps + down) // down`.

Two implementations, both inside an autograd Function whose backward is again upfirdn2d (up and down
swapped, filter flipped), so gradients of any order work and each one takes the fastest path:
* the reference path (`impl='ref'`, every CPU tensor, and CUDA when the plugin is unavailable): torch ops
  (depthwise convolutions / transposed convolutions / small matrix products, see _upfirdn2d_ref) that never
  build the zero-inserted image. It is also differentiable on its own (used when f requires grad).
* the CUDA plugin (`upfirdn2d.cpp/.cu/.h`, built once per process) for CUDA tensors with `impl='cuda'`.
"""

import functools
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

#----------------------------------------------------------------------------
# Argument parsing.

def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _parse_scaling(scaling, name='up/down'):
    """int or [x, y] -> (sx, sy), both ints >= 1."""
    if _is_int(scaling):
        scaling = [scaling, scaling]
    if not isinstance(scaling, (list, tuple)) or len(scaling) != 2 or not all(_is_int(s) for s in scaling):
        raise ValueError(f'upfirdn2d: {name} must be an int or a list [x, y] of two ints, got {scaling!r}')
    sx, sy = int(scaling[0]), int(scaling[1])
    if sx < 1 or sy < 1:
        raise ValueError(f'upfirdn2d: {name} factors must be >= 1, got {scaling!r}')
    return sx, sy


def _parse_padding(padding):
    """int, [px, py] or [x0, x1, y0, y1] -> (x0, x1, y0, y1) ints (negative values crop)."""
    if _is_int(padding):
        padding = [padding, padding]
    if not isinstance(padding, (list, tuple)) or not all(_is_int(p) for p in padding):
        raise ValueError(f'upfirdn2d: padding must be an int, [px, py] or [x0, x1, y0, y1] of ints, got {padding!r}')
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f'upfirdn2d: padding must be an int, [px, py] or [x0, x1, y0, y1] of ints, got {padding!r}')
    return tuple(int(p) for p in padding)


def _get_filter_size(f):
    """(width, height) in taps of a filter as used by upfirdn2d; None means 1x1."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError('upfirdn2d: f must be None or a 1-D or 2-D tensor')
    fw = int(f.shape[-1])
    fh = int(f.shape[0])
    return fw, fh


def _check_filter(f):
    if f is None:
        return
    if not isinstance(f, torch.Tensor):
        raise TypeError(f'upfirdn2d: f must be a torch.Tensor or None, got {type(f).__name__}')
    if f.ndim not in (1, 2):
        raise ValueError(f'upfirdn2d: f must be 1-D (separable) or 2-D, got shape {list(f.shape)}')
    if f.dtype != torch.float32:
        raise TypeError(f'upfirdn2d: f must be float32, got {f.dtype}')
    if f.numel() == 0:
        raise ValueError('upfirdn2d: f must have at least one tap')

#----------------------------------------------------------------------------

def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn filter taps into the float32 tensor that upfirdn2d expects.

    f: None (unit impulse), a number, or an array-like of shape [taps] or [height, width].
    A 1-D filter stays 1-D (separable, applied on both axes) if `separable` is True, or, when `separable`
    is None, iff it has at least 8 taps; otherwise it becomes the 2-D outer product with itself.
    The result is normalised to sum 1 (if `normalize`), optionally flipped, multiplied by
    `gain ** (ndim / 2)` and placed on `device`. Returns float32 [taps] or [height, width].
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f'setup_filter: f must be a scalar, 1-D or 2-D and non-empty, got shape {list(f.shape)}')
    if separable is None:
        separable = (f.ndim == 1 and f.numel() >= 8)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError(f'setup_filter: separable={separable} needs a {"1-D" if separable else "1-D or 2-D"} '
                         f'filter, got shape {list(f.shape)}')
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError('setup_filter: cannot normalize a filter whose taps sum to zero')
        f = f / total
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)

#----------------------------------------------------------------------------
# Public ops.

def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample, pad, FIR-filter and downsample a batch of 2-D images.

    x: [N, C, H, W] tensor (any float dtype; channels_last kept). f: float32 [taps] (separable, applied
    on both axes) or [fh, fw], or None (identity). up, down: int or [x, y]. padding: int, [px, py] or
    [x0, x1, y0, y1] in samples of the upsampled image (negative crops). The filter is scaled by
    `gain ** (f.ndim / 2)`. Returns [N, C, H_out, W_out] with
    `W_out = (W * up_x + x0 + x1 - fw + down_x) // down_x` (same for H), dtype of x.
    impl: 'cuda' (CUDA kernel for CUDA tensors when it can be built, else reference) or 'ref'.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'upfirdn2d: x must be a torch.Tensor, got {type(x).__name__}')
    if x.ndim != 4:
        raise ValueError(f'upfirdn2d: x must be 4-D [N, C, H, W], got shape {list(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'upfirdn2d: x must be a floating-point tensor, got {x.dtype}')
    _check_filter(f)
    if impl not in ('ref', 'cuda'):
        raise ValueError(f"upfirdn2d: impl must be 'ref' or 'cuda', got {impl!r}")
    up = _parse_scaling(up, 'up')
    down = _parse_scaling(down, 'down')
    padding = _parse_padding(padding)
    gain = float(gain)
    fw, fh = _get_filter_size(f)
    out_w = (x.shape[3] * up[0] + padding[0] + padding[1] - fw + down[0]) // down[0]
    out_h = (x.shape[2] * up[1] + padding[2] + padding[3] - fh + down[1]) // down[1]
    if out_w < 1 or out_h < 1:
        raise ValueError(f'upfirdn2d: output would be empty ({out_h}x{out_w}) for input {list(x.shape)}, '
                         f'filter {fh}x{fw}, up={list(up)}, down={list(down)}, padding={list(padding)}')

    flip_filter = bool(flip_filter)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if impl == 'cuda' and x.is_cuda:
        kernel = _cuda_kernel()
        if kernel is not None:
            impl_fn = _kernel_impl(kernel)
            return _Upfirdn2dFunction.apply(x, f.to(x.device), up, down, padding, flip_filter, gain, impl_fn)
    if f.requires_grad:
        return _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)  # plain autograd: f gets a gradient
    return _Upfirdn2dFunction.apply(x, f, up, down, padding, flip_filter, gain, _upfirdn2d_ref)


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Filter x [N, C, H, W] with f, padded so that the output has the input's size (plus `padding`).

    Adds [fw // 2, (fw - 1) // 2, fh // 2, (fh - 1) // 2] to `padding`. Returns [N, C, H, W] for padding=0.
    """
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample x [N, C, H, W] by `up` (int or [x, y]) with filter f; returns [N, C, H * up_y, W * up_x].

    Adds [(fw + up_x - 1) // 2, (fw - up_x) // 2, (fh + up_y - 1) // 2, (fh - up_y) // 2] to `padding`
    and multiplies the gain by up_x * up_y so that the mean brightness is kept.
    """
    upx, upy = _parse_scaling(up, 'up')
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=[upx, upy], padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Downsample x [N, C, H, W] by `down` (int or [x, y]) with filter f; returns [N, C, H // down_y, W // down_x].

    Adds [(fw - down_x + 1) // 2, (fw - down_x) // 2, (fh - down_y + 1) // 2, (fh - down_y) // 2] to `padding`.
    """
    downx, downy = _parse_scaling(down, 'down')
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=[downx, downy], padding=p, flip_filter=flip_filter, gain=gain, impl=impl)

#----------------------------------------------------------------------------
# Reference implementation.
#
# All methods compute the definition exactly (up to float rounding) with differentiable torch ops:
# * 'conv': passes without upsampling -> depthwise conv2d with stride `down` (nothing is materialised but
#   the padded input, and only when the padding is asymmetric or negative).
# * 'conv_transpose': upsampling -> depthwise transposed conv2d with stride `up` (the zero-inserted image is
#   never built), then crop/pad and subsample. bfloat16 CPU tensors are computed in float32 here, because
#   torch's bfloat16 transposed convolutions on CPU are very slow.
# * 'matmul': two 1-D passes, each a product with a dense [out, in] matrix of filter taps. Fastest way to
#   upsample small bfloat16 CPU images; needs a separable filter (1-D, or 2-D of rank one).
# * 'zero_insert': the literal definition (zero insertion, pad, depthwise conv2d).
# float16 CPU tensors are computed in float32 (torch's float16 CPU convolutions and matmuls are slow).
# Choices measured on a 2-core AVX-512 CPU with torch 2.13 (see bench/bench_resample_ops.py).

_METHODS = ('conv', 'conv_transpose', 'matmul', 'zero_insert')
_SPLIT_TAPS = 8          # 1-D filters with this many taps run as two 1-D conv passes (when not upsampling)
_MATMUL_MAX_INPUT = 64   # 'matmul' is chosen automatically only for images up to this size


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain, method=None):
    """Reference upfirdn2d on parsed arguments (up, down: (x, y); padding: (x0, x1, y0, y1)).

    Differentiable to any order, also w.r.t. f. method: None (pick the fastest) or one of _METHODS;
    passes without upsampling always use 'conv' unless 'matmul' or 'zero_insert' is forced.
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if x.dtype == torch.float16 and x.device.type == 'cpu':  # torch's float16 CPU kernels are slow
        return _upfirdn2d_ref(x.float(), f, up, down, padding, flip_filter, gain, method).half()
    if method is None:
        method = _choose_method(x, f, up)
    if method not in _METHODS:
        raise ValueError(f'unknown upfirdn2d method {method!r}')
    memory_format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format

    if method == 'matmul':
        factors = _separable_factors(f, gain, x.dtype)
        if factors is not None:
            y = _upfirdn2d_matmul(x, factors, up, down, padding, flip_filter)
            return y.contiguous(memory_format=memory_format)
        method = 'conv_transpose'  # not separable

    compute_dtype = x.dtype
    if method == 'conv_transpose' and up != (1, 1) and x.device.type == 'cpu' and x.dtype == torch.bfloat16:
        compute_dtype = torch.float32
    if x.dtype == torch.float64:
        f = f.double()  # build kernels in the precision of the computation
    y = x.to(compute_dtype)
    split = up == (1, 1) or method == 'zero_insert'
    for f2, pass_gain, pass_up, pass_down, pass_padding in _conv_passes(f, gain, up, down, padding, split):
        y = _conv_pass(y, f2, pass_gain, pass_up, pass_down, pass_padding, flip_filter, method)
    return y.to(x.dtype).contiguous(memory_format=memory_format)


def _choose_method(x, f, up):
    if up == (1, 1):
        return 'conv'
    if x.is_cuda or x.dtype in (torch.float32, torch.float64):
        return 'conv_transpose'
    if max(x.shape[2], x.shape[3]) <= _MATMUL_MAX_INPUT and (f.ndim == 1 or f.device.type == 'cpu'):
        return 'matmul'
    return 'conv_transpose'


def _is_channels_last(x):
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _conv_passes(f, gain, up, down, padding, split):
    """The op as 2-D filtering passes [(f2d, gain, up, down, padding)]: one, or two for a long 1-D f if split."""
    if f.ndim == 2 or not split or f.shape[0] < _SPLIT_TAPS:
        f2 = f if f.ndim == 2 else torch.outer(f, f)
        return [(f2, gain, up, down, padding)]
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    g = math.sqrt(gain)
    return [(f[None, :], g, (upx, 1), (downx, 1), (px0, px1, 0, 0)),
            (f[:, None], g, (1, upy), (1, downy), (0, 0, py0, py1))]


def _conv_pass(x, f2, gain, up, down, padding, flip_filter, method):
    """One 2-D filtering pass with depthwise convolutions. f2: [fh, fw] float32/64 (true convolution)."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    n, c, h, w = x.shape
    fh, fw = f2.shape
    kernel = f2.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if gain != 1:
        kernel = kernel * gain
    if not flip_filter:
        kernel = kernel.flip([0, 1])  # conv2d correlates: flip to convolve
    kernel = kernel.to(x.dtype)[None, None].expand(c, 1, fh, fw)

    if upx == 1 and upy == 1:
        if px0 == px1 >= 0 and py0 == py1 >= 0:
            return F.conv2d(x, kernel, stride=(downy, downx), padding=(py0, px0), groups=c)
        return F.conv2d(_pad(x, padding), kernel, stride=(downy, downx), groups=c)

    if method == 'conv_transpose':
        # The transposed conv with the true-convolution kernel yields the fully filtered zero-inserted image;
        # the padded, validly filtered image is that shifted by taps - 1 - pad0 (zeros outside). Part of the
        # crop is done by the transposed conv's own (symmetric) padding.
        qx = max(0, min(fw - 1 - px0, fw - upx - px1))
        qy = max(0, min(fh - 1 - py0, fh - upy - py1))
        y = F.conv_transpose2d(x, kernel.flip([2, 3]), stride=(upy, upx), padding=(qy, qx), groups=c)
        y = _pad(y, (px0 - fw + 1 + qx, px1 - fw + upx + qx, py0 - fh + 1 + qy, py1 - fh + upy + qy))
        if downx > 1 or downy > 1:
            y = y[:, :, ::downy, ::downx]
        return y

    # Literal definition: insert zeros, pad, filter, subsample.
    y = x.reshape(n, c, h, 1, w, 1)
    y = F.pad(y, [0, upx - 1, 0, 0, 0, upy - 1])
    y = y.reshape(n, c, h * upy, w * upx)
    return F.conv2d(_pad(y, padding), kernel, stride=(downy, downx), groups=c)


def _pad(x, padding):
    """F.pad with (x0, x1, y0, y1); negative values crop; no copy when all are zero."""
    if not any(padding):
        return x
    return F.pad(x, list(padding))


def _separable_factors(f, gain, dtype):
    """(fx, fy): 1-D taps whose outer product fy[:, None] * fx[None, :] equals gain-scaled f, or None.

    1-D filters are separable by definition (each axis gets gain ** 0.5). A 2-D filter is factored when
    one of its sides is 1, or when it is a constant CPU tensor of rank one (checked numerically, exactly
    enough for `dtype`); otherwise None.
    """
    if dtype == torch.float64:
        f = f.double()  # scale the taps in the precision of the computation
    if f.ndim == 1:
        g = f * math.sqrt(gain) if gain != 1 else f
        return g, g
    fh, fw = f.shape
    if fh == 1:
        return (f[0] * gain if gain != 1 else f[0]), f.new_ones([1])
    if fw == 1:
        return f.new_ones([1]), (f[:, 0] * gain if gain != 1 else f[:, 0])
    if f.requires_grad or f.device.type != 'cpu':
        return None  # reading the taps would cut the graph or synchronise the device
    return _rank_one_factors(f.detach().numpy().astype(np.float64), float(gain), dtype == torch.float64)


def _rank_one_factors(a, gain, exact):
    """Factor the 2-D array `a` as outer(col, row) if it has rank one; float32 tensors (float64 if exact)."""
    amax = np.abs(a).max()
    if not np.isfinite(amax) or amax == 0:
        return None
    i, j = np.unravel_index(np.argmax(np.abs(a)), a.shape)
    row = a[i, :]
    # Scale the row to sum 1 when possible: for binomial-like filters both factors then have short binary
    # expansions (e.g. [1,3,3,1]/8 twice), so low-precision dtypes represent them exactly.
    row_sum = row.sum()
    scale = row_sum if abs(row_sum) > 1e-3 * np.abs(row).max() else row[j]
    row = row / scale
    col = a[:, j] / row[j]
    err = np.abs(np.outer(col, row) - a).max()
    if err > (1e-14 if exact else 2.5e-7) * amax:
        return None
    out_dtype = torch.float64 if exact else torch.float32
    return torch.from_numpy(row * gain).to(out_dtype), torch.from_numpy(col).to(out_dtype)


def _upfirdn2d_matmul(x, factors, up, down, padding, flip_filter):
    """Separable upfirdn2d as two 1-D matrix passes; factors = (fx, fy), gain already included."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    fx, fy = factors
    channels_last = _is_channels_last(x)
    # Work on a contiguous layout: [N, C, H, W] or, for channels_last input, the view [N, H, W, C].
    t = x.permute(0, 2, 3, 1) if channels_last else x.contiguous()
    h_dim, w_dim = (1, 2) if channels_last else (2, 3)
    t = _fir_axis(t, w_dim, fx, upx, downx, px0, px1, flip_filter)
    t = _fir_axis(t, h_dim, fy, upy, downy, py0, py1, flip_filter)
    return t.permute(0, 3, 1, 2) if channels_last else t


@functools.lru_cache(maxsize=256)
def _fir_matrix_taps(taps, up, down, pad0, rows, cols):
    """Tap index (or `taps` for zero) of each entry of the [rows, cols] matrix of a 1-D upfirdn.

    out[r] = sum_c corr[c * up + pad0 - r * down] * in[c], where corr is the correlation kernel.
    Returns a LongTensor [rows, cols].
    """
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    k = c * up + pad0 - r * down
    k = np.where((k >= 0) & (k < taps), k, taps)
    return torch.from_numpy(k.astype(np.int64))


def _fir_matrix(corr, up, down, pad0, rows, cols, dtype):
    """Dense [rows, cols] matrix of a 1-D upfirdn built from correlation taps `corr` (differentiable)."""
    taps = corr.shape[0]
    index = _fir_matrix_taps(taps, up, down, pad0, rows, cols).to(corr.device)
    padded = torch.cat([corr.to(dtype), corr.new_zeros([1], dtype=dtype)])
    return padded[index]


def _fir_axis(t, dim, f1, up, down, pad0, pad1, flip_filter):
    """1-D upfirdn of contiguous tensor `t` along `dim` with 1-D taps `f1` (true convolution unless flipped)."""
    f1 = f1.to(t.device)
    length = t.shape[dim]
    taps = f1.shape[0]
    out_len = (length * up + pad0 + pad1 - taps + down) // down
    if taps == 1 and up == 1 and down == 1 and pad0 == 0 and pad1 == 0:
        if f1.device.type == 'cpu' and not f1.requires_grad and float(f1[0]) == 1.0:
            return t
        return t * f1.to(t.dtype)
    corr = f1 if flip_filter else f1.flip(0)
    pre = math.prod(t.shape[:dim])
    post = math.prod(t.shape[dim + 1:])
    t3 = t.reshape(pre, length, post)
    out_shape = list(t.shape)
    out_shape[dim] = out_len
    m = _fir_matrix(corr, up, down, pad0, out_len, length, t.dtype)  # [out_len, length]
    if post == 1:
        y = t3.reshape(pre, length) @ m.t()
    else:
        y = torch.matmul(m, t3)
    return y.reshape(out_shape)

#----------------------------------------------------------------------------
# CUDA implementation.

_PLUGIN_SOURCES = ['upfirdn2d.cpp', 'upfirdn2d.cu']
_PLUGIN_HEADERS = ['upfirdn2d.h']


def _cuda_kernel():
    """The plugin's `upfirdn2d` entry point, or None (reference forced, or the build failed)."""
    from .. import custom_ops  # imported lazily: only CUDA callers need the builder
    if custom_ops.reference_ops_forced():
        return None
    plugin = custom_ops.get_plugin_once('upfirdn2d_plugin', sources=_PLUGIN_SOURCES, headers=_PLUGIN_HEADERS,
                                        source_dir=os.path.dirname(__file__))
    return None if plugin is None else plugin.upfirdn2d


def _kernel_impl(kernel):
    """Forward implementation (x, f, up, down, padding, flip_filter, gain) -> y around the raw plugin entry.

    A 1-D filter runs as two kernel passes ([1, taps] along x, then [taps, 1] along y), each with gain ** 0.5.
    """
    def run(x, f, up, down, padding, flip_filter, gain):
        (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
        f = f.contiguous()
        if f.ndim == 2:
            return kernel(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)
        g = math.sqrt(gain)
        y = kernel(x, f[None, :], upx, 1, downx, 1, px0, px1, 0, 0, flip_filter, g)
        return kernel(y, f[:, None], 1, upy, 1, downy, 0, 0, py0, py1, flip_filter, g)
    return run


def _gradient_padding(in_size, out_size, taps, up, down, pad0):
    """Padding (p0, p1) of the transposed op (up and down swapped, filter flipped) along one axis."""
    p0 = taps - 1 - pad0
    p1 = in_size * up - out_size * down + pad0 - up + 1
    return p0, p1


class _Upfirdn2dFunction(torch.autograd.Function):
    """upfirdn2d with a given forward `impl(x, f, up, down, padding, flip_filter, gain)` (parsed arguments).

    Backward is the same Function with up/down swapped, the filter flipped and the padding adjusted, so
    gradients of any order are available, each computed by the fastest forward configuration. No gradient
    flows to f.
    """

    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain, impl):
        y = impl(x, f, up, down, padding, flip_filter, gain)
        ctx.save_for_backward(f)
        ctx.params = (x.shape, up, down, padding, flip_filter, gain, impl)
        return y

    @staticmethod
    def backward(ctx, dy):
        f, = ctx.saved_tensors
        x_shape, up, down, padding, flip_filter, gain, impl = ctx.params
        dx = None
        if ctx.needs_input_grad[0]:
            fw, fh = _get_filter_size(f)
            gx = _gradient_padding(x_shape[3], dy.shape[3], fw, up[0], down[0], padding[0])
            gy = _gradient_padding(x_shape[2], dy.shape[2], fh, up[1], down[1], padding[2])
            dx = _Upfirdn2dFunction.apply(dy, f, down, up, (gx[0], gx[1], gy[0], gy[1]), not flip_filter, gain, impl)
        return dx, None, None, None, None, None, None, None
