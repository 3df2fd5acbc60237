"""Fused bias + activation + gain + clamp: y = clamp(act(x + b, alpha) * gain, -clamp, +clamp).

Two implementations with the same meaning:
* 'ref': plain PyTorch ops (any device, float16/bfloat16/float32/float64); autograd gives any-order gradients.
* 'cuda': our own kernel (bias_act.cu), used when impl='cuda', x is a float16/32/64 CUDA tensor, the
  reference paths are not forced (custom_ops.reference_ops_forced()) and the plugin builds. First and
  second derivatives are supported (R1 and path-length regularisation need the second).
"""

import math
import os

import torch
import torch.nn.functional as F

import dnnlib
from torch_utils import custom_ops

#----------------------------------------------------------------------------
# Activations. func(x, alpha) is the plain-PyTorch definition; inplace(x, alpha) the same computed in place
# (used only when no gradient is tracked); ref says which tensor the CUDA backward evaluates the derivative
# from ('x': the input, 'y': the output); positive_homogeneous: act(g * u) == g * act(u) for g > 0.

def _identity(x, alpha):
    return x


def _softplus_inplace(x, alpha):
    return F.softplus(x)


activation_funcs = {
    'linear': dnnlib.EasyDict(func=_identity, inplace=_identity, def_alpha=0.0, def_gain=1.0, cuda_idx=1,
                              ref='y', has_2nd_grad=False, positive_homogeneous=True),
    'relu': dnnlib.EasyDict(func=lambda x, alpha: torch.relu(x), inplace=lambda x, alpha: x.relu_(),
                            def_alpha=0.0, def_gain=math.sqrt(2), cuda_idx=2, ref='y', has_2nd_grad=False,
                            positive_homogeneous=True),
    'lrelu': dnnlib.EasyDict(func=lambda x, alpha: F.leaky_relu(x, alpha),
                             inplace=lambda x, alpha: F.leaky_relu_(x, alpha), def_alpha=0.2,
                             def_gain=math.sqrt(2), cuda_idx=3, ref='y', has_2nd_grad=False,
                             positive_homogeneous=True),
    'tanh': dnnlib.EasyDict(func=lambda x, alpha: torch.tanh(x), inplace=lambda x, alpha: x.tanh_(),
                            def_alpha=0.0, def_gain=1.0, cuda_idx=4, ref='y', has_2nd_grad=True,
                            positive_homogeneous=False),
    'sigmoid': dnnlib.EasyDict(func=lambda x, alpha: torch.sigmoid(x), inplace=lambda x, alpha: x.sigmoid_(),
                               def_alpha=0.0, def_gain=1.0, cuda_idx=5, ref='y', has_2nd_grad=True,
                               positive_homogeneous=False),
    'elu': dnnlib.EasyDict(func=lambda x, alpha: F.elu(x), inplace=lambda x, alpha: F.elu(x, inplace=True),
                           def_alpha=0.0, def_gain=1.0, cuda_idx=6, ref='y', has_2nd_grad=True,
                           positive_homogeneous=False),
    'selu': dnnlib.EasyDict(func=lambda x, alpha: F.selu(x), inplace=lambda x, alpha: F.selu(x, inplace=True),
                            def_alpha=0.0, def_gain=1.0, cuda_idx=7, ref='y', has_2nd_grad=True,
                            positive_homogeneous=False),
    'softplus': dnnlib.EasyDict(func=lambda x, alpha: F.softplus(x), inplace=_softplus_inplace,
                                def_alpha=0.0, def_gain=1.0, cuda_idx=8, ref='y', has_2nd_grad=True,
                                positive_homogeneous=False),
    'swish': dnnlib.EasyDict(func=lambda x, alpha: F.silu(x), inplace=lambda x, alpha: F.silu(x, inplace=True),
                             def_alpha=0.0, def_gain=math.sqrt(2), cuda_idx=9, ref='x', has_2nd_grad=True,
                             positive_homogeneous=False),
}

#----------------------------------------------------------------------------

def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
    """y = clamp(act(x + b, alpha) * gain, -clamp, +clamp), same shape, dtype and memory format as x.

    x: floating-point tensor of any rank. b: None or 1-D tensor of length x.shape[dim], broadcast along dim
    (cast to x's dtype). act: a key of activation_funcs. alpha/gain: None = the activation's default
    (alpha only affects 'lrelu'). clamp: None (off) or a non-negative number. impl: 'cuda' or 'ref'.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f'bias_act: x must be a floating-point tensor, got {type(x).__name__}'
                        + (f' of dtype {x.dtype}' if isinstance(x, torch.Tensor) else ''))
    spec = activation_funcs.get(act)
    if spec is None:
        raise ValueError(f'bias_act: unknown activation {act!r}; valid names: {", ".join(activation_funcs)}')
    if impl not in ('cuda', 'ref'):
        raise ValueError(f"bias_act: impl must be 'cuda' or 'ref', got {impl!r}")
    if not isinstance(dim, int) or not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f'bias_act: dim={dim!r} is out of range for a {x.ndim}-D tensor')
    dim %= max(x.ndim, 1)
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or x.ndim == 0 or b.shape[0] != x.shape[dim]:
            raise ValueError(f'bias_act: b must be a 1-D tensor of length x.shape[{dim}]='
                             f'{x.shape[dim] if x.ndim else None}, got '
                             f'{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}')
        if b.dtype != x.dtype:
            b = b.to(x.dtype)
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if clamp is not None:
        clamp = float(clamp)
        if not clamp >= 0:
            raise ValueError(f'bias_act: clamp must be None or >= 0, got {clamp}')

    if (impl == 'cuda' and x.is_cuda and x.ndim > 0 and x.dtype in _CUDA_DTYPES
            and not custom_ops.reference_ops_forced()):
        plugin = _get_plugin()
        if plugin is not None:
            x = _dense(x)
            b = b.contiguous() if b is not None else None
            return _bias_act_cuda(dim, act, alpha, gain, clamp, plugin).apply(x, b)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)

#----------------------------------------------------------------------------
# Reference path. Kept lean because it runs in the networks' hot path on CPU: the gain of positively
# homogeneous activations is folded into the bias add (one pass fewer), clamping uses hardtanh (whose
# backward is a single fused pass, about twice as fast as clamp's), and when no gradient is tracked the
# steps after the first one run in place.

def _bias_act_ref(x, b, dim, spec, alpha, gain, clamp):
    tracked = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    if b is not None:
        b = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    remaining_gain = gain
    if spec.positive_homogeneous and gain > 0 and gain != 1:
        y = torch.add(b * gain, x, alpha=gain) if b is not None else x * gain  # gain * (x + b)
        remaining_gain = 1.0
    else:
        y = x + b if b is not None else x
    in_place = not tracked and y is not x  # y is then a fresh temporary that nobody else sees
    y = (spec.inplace if in_place else spec.func)(y, alpha)
    if remaining_gain != 1:
        y = y.mul_(remaining_gain) if in_place else y * remaining_gain
        in_place = not tracked
    if clamp is not None:
        y = F.hardtanh(y, -clamp, clamp, inplace=in_place and y is not x)
    return y

#----------------------------------------------------------------------------
# CUDA path.

_CUDA_DTYPES = (torch.float16, torch.float32, torch.float64)
_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))


def _get_plugin():
    return custom_ops.get_plugin_once('bias_act_plugin', sources=['bias_act.cpp', 'bias_act.cu'],
                                      headers=['bias_act.h'], source_dir=_SOURCE_DIR)


def _dense(t):
    """t itself if it is contiguous in some standard memory format, else a contiguous copy."""
    if t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _like(t, ref):
    """t with exactly ref's strides (ref is dense), copying only if needed."""
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


_cuda_functions = {}  # (dim, act, alpha, gain, clamp) -> autograd.Function class


def _bias_act_cuda(dim, act, alpha, gain, clamp, plugin):
    """The autograd Function class for one parameter set (created once per process and cached)."""
    key = (dim, act, alpha, gain, clamp)
    if key in _cuda_functions:
        return _cuda_functions[key]

    spec = activation_funcs[act]
    needs_x = spec.ref == 'x'                                          # derivative evaluated from x + b
    needs_y = spec.ref == 'y' and (act != 'linear' or clamp is not None)  # ... or from y (and its clamp mask)
    kernel_clamp = -1.0 if clamp is None else clamp

    def kernel(primary, b, xref, yref, dy, grad):
        return plugin.bias_act(primary, b, xref, yref, dy, grad, dim, spec.cuda_idx, alpha, gain, kernel_clamp)

    def sum_to_bias(t):
        return t.sum([i for i in range(t.ndim) if i != dim])

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):  # pylint: disable=arguments-differ
            empty = x.new_empty([0])
            b = empty if b is None else b
            y = kernel(x, b, empty, empty, empty, 0)
            ctx.save_for_backward(x if needs_x else empty, b if needs_x else empty, y if needs_y else empty)
            return y

        @staticmethod
        def backward(ctx, dy):  # pylint: disable=arguments-differ
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = BiasActCudaGrad.apply(dy, x, b, y)
            if ctx.needs_input_grad[1]:
                db = sum_to_bias(dx)
            return dx, db

    class BiasActCudaGrad(torch.autograd.Function):
        """dx = dy * d(bias_act)/dx; differentiable once more (w.r.t. dy, and x, b or y)."""

        @staticmethod
        def forward(ctx, dy, x, b, y):  # pylint: disable=arguments-differ
            ref = x if needs_x else (y if needs_y else None)
            dy = _like(dy, ref) if ref is not None else _dense(dy)
            empty = dy.new_empty([0])
            dx = kernel(dy, b, x, y, empty, 1)
            ctx.save_for_backward(dy if spec.has_2nd_grad else empty, x, b, y)
            return dx

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, d_dx):  # pylint: disable=arguments-differ
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = d_y = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)
            if spec.has_2nd_grad and any(ctx.needs_input_grad[1:]):
                d_ref = kernel(_like(d_dx, dy), b, x, y, dy, 2)
                if needs_x:
                    d_x = d_ref if ctx.needs_input_grad[1] else None
                    d_b = sum_to_bias(d_ref) if ctx.needs_input_grad[2] else None
                elif ctx.needs_input_grad[3]:
                    d_y = d_ref
            return d_dy, d_x, d_b, d_y

    _cuda_functions[key] = BiasActCuda
    return BiasActCuda

#----------------------------------------------------------------------------
