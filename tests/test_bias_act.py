"""bias_act: values against numpy formulas, gradients (1st and 2nd order), argument checks, CUDA vs reference."""
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from torch_utils import custom_ops
from torch_utils.ops import bias_act as bias_act_module
from torch_utils.ops.bias_act import activation_funcs, bias_act

ACTIVATIONS = ['linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish']
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
OPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'torch_utils', 'ops')


def np_activation(name, u, alpha):
    """Independent float64 definitions of the activations."""
    if name == 'linear':
        return u
    if name == 'relu':
        return np.maximum(u, 0.0)
    if name == 'lrelu':
        return np.where(u > 0, u, u * alpha)
    if name == 'tanh':
        return np.tanh(u)
    if name == 'sigmoid':
        return 1.0 / (1.0 + np.exp(-u))
    if name == 'elu':
        return np.where(u > 0, u, np.exp(u) - 1.0)
    if name == 'selu':
        return SELU_SCALE * np.where(u > 0, u, SELU_ALPHA * (np.exp(u) - 1.0))
    if name == 'softplus':
        return np.log(1.0 + np.exp(u))
    if name == 'swish':
        return u / (1.0 + np.exp(-u))
    raise AssertionError(name)


def np_bias_act(x, b, dim, act, alpha, gain, clamp):
    """Explicit loop over the bias dimension, then activation, gain and clamp."""
    u = np.array(x, dtype=np.float64, copy=True)
    if b is not None:
        moved = np.moveaxis(u, dim, 0)  # a view: writing into it writes u
        for c in range(moved.shape[0]):
            moved[c] += b[c]
    y = np_activation(act, u, alpha) * gain
    if clamp is not None:
        y = np.minimum(np.maximum(y, -clamp), clamp)
    return y


def default_alpha_gain(act):
    return (0.2 if act == 'lrelu' else 0.0), (math.sqrt(2) if act in ('relu', 'lrelu', 'swish') else 1.0)

#----------------------------------------------------------------------------
# Table and values.

def test_activation_table():
    assert sorted(activation_funcs) == sorted(ACTIVATIONS)
    for name, spec in activation_funcs.items():
        alpha, gain = default_alpha_gain(name)
        assert spec.def_alpha == pytest.approx(alpha), name
        assert spec.def_gain == pytest.approx(gain), name
        assert spec.ref in ('x', 'y'), name
        assert isinstance(spec.has_2nd_grad, bool) and isinstance(spec.cuda_idx, int), name
        assert callable(spec.func), name
    assert len({spec.cuda_idx for spec in activation_funcs.values()}) == len(activation_funcs)


@pytest.mark.parametrize('act', ACTIVATIONS)
def test_values_default_parameters(act):
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3
    b = torch.randn(5, dtype=torch.float64)
    y = bias_act(x, b, act=act)
    alpha, gain = default_alpha_gain(act)
    np.testing.assert_allclose(y.numpy(), np_bias_act(x.numpy(), b.numpy(), 1, act, alpha, gain, None),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('act', ACTIVATIONS)
def test_values_alpha_gain_clamp(act):
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 2
    b = torch.randn(4, dtype=torch.float64)
    y = bias_act(x, b, act=act, alpha=0.3, gain=1.7, clamp=0.8)
    np.testing.assert_allclose(y.numpy(), np_bias_act(x.numpy(), b.numpy(), 1, act, 0.3, 1.7, 0.8),
                               rtol=1e-12, atol=1e-12)
    assert y.abs().max() <= 0.8


@pytest.mark.parametrize('dim,shape', [(0, (6, 2, 3)), (1, (2, 6, 3)), (2, (2, 3, 6)), (-1, (2, 3, 6)), (1, (4, 6))])
def test_bias_broadcast_along_dim(dim, shape):
    x = torch.randn(*shape, dtype=torch.float64)
    b = torch.arange(6, dtype=torch.float64) - 2.5
    y = bias_act(x, b, dim=dim, act='lrelu')
    expect = np_bias_act(x.numpy(), b.numpy(), dim % x.ndim, 'lrelu', 0.2, math.sqrt(2), None)
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-12, atol=1e-12)


def test_no_bias_and_identity():
    x = torch.randn(2, 3, 4)
    assert torch.equal(bias_act(x), x)
    np.testing.assert_allclose(bias_act(x, act='relu', gain=2.0).numpy(), np.maximum(x.numpy(), 0) * 2, rtol=1e-6)
    np.testing.assert_allclose(bias_act(x, clamp=0.5).numpy(), np.clip(x.numpy(), -0.5, 0.5))


def test_negative_gain_and_zero_clamp():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    y = bias_act(x, b, act='lrelu', gain=-2.0)
    np.testing.assert_allclose(y.numpy(), np_bias_act(x.numpy(), b.numpy(), 1, 'lrelu', 0.2, -2.0, None), rtol=1e-12)
    assert torch.count_nonzero(bias_act(x, b, act='tanh', clamp=0)) == 0


@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('with_bias', [False, True])
def test_inputs_not_modified_without_grad(act, with_bias):
    x = torch.randn(2, 3, 4, 4)
    b = torch.randn(3) if with_bias else None
    x0 = x.clone()
    b0 = b.clone() if with_bias else None
    with torch.no_grad():
        y_nograd = bias_act(x, b, act=act, gain=1.3, clamp=0.9)
    y = bias_act(x, b, act=act, gain=1.3, clamp=0.9)
    assert torch.equal(x, x0)
    if with_bias:
        assert torch.equal(b, b0)
    torch.testing.assert_close(y_nograd, y)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize('act', ['lrelu', 'tanh', 'swish', 'softplus'])
def test_dtypes_and_memory_format(dtype, act):
    x64 = torch.randn(2, 4, 5, 5, dtype=torch.float64) * 2
    b64 = torch.randn(4, dtype=torch.float64)
    x = x64.to(dtype).to(memory_format=torch.channels_last)
    b = b64.to(dtype)
    y = bias_act(x, b, act=act, clamp=1.5)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    expect = np_bias_act(x.double().numpy(), b.double().numpy(), 1, act, *default_alpha_gain(act), 1.5)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    np.testing.assert_allclose(y.double().numpy(), expect, rtol=tol, atol=tol)


def test_bias_dtype_is_cast_to_x():
    x = torch.randn(2, 3, 4, dtype=torch.float16)
    y = bias_act(x, torch.ones(3, dtype=torch.float32), act='relu')
    assert y.dtype == torch.float16

#----------------------------------------------------------------------------
# Gradients (float64, away from the kinks of relu/lrelu/elu/selu and of the clamp).

def _inputs_away_from_kinks(act, gain, clamp, shape=(2, 3, 3, 3), margin=0.05, seed=1):
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(shape[1], dtype=torch.float64, generator=gen) * 0.5
    x = torch.randn(*shape, dtype=torch.float64, generator=gen) * 1.5
    alpha = default_alpha_gain(act)[0]
    for _ in range(100):
        u = x + b.reshape(1, -1, 1, 1)
        y = np_activation(act, u.numpy(), alpha) * gain
        bad = np.abs(u.numpy()) < margin
        if clamp is not None:
            bad |= np.abs(np.abs(y) - clamp) < margin
        if not bad.any():
            return x, b
        x[torch.from_numpy(bad)] += 3 * margin
    raise AssertionError('could not place inputs away from kinks')


@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('clamp', [None, 0.7])
def test_gradcheck_and_gradgradcheck(act, clamp):
    gain = 1.3
    x, b = _inputs_away_from_kinks(act, gain, clamp)
    x.requires_grad_(True)
    b.requires_grad_(True)

    def fn(x_, b_):
        return bias_act(x_, b_, act=act, gain=gain, clamp=clamp)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_gradient_matches_numpy_derivative():
    # d/dx of sum(tanh(x + b) * gain) = gain * (1 - tanh^2), checked against a formula, not autograd alone.
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias_act(x, b, act='tanh', gain=2.0).sum().backward()
    u = x.detach().numpy() + b.detach().numpy()[None, :, None]
    expect = 2.0 * (1 - np.tanh(u) ** 2)
    np.testing.assert_allclose(x.grad.numpy(), expect, rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), expect.sum(axis=(0, 2)), rtol=1e-12)

#----------------------------------------------------------------------------
# Argument checks.

def test_unknown_activation():
    with pytest.raises(ValueError, match=r"'gelu'.*linear.*lrelu.*swish"):
        bias_act(torch.zeros(2, 3), act='gelu')


@pytest.mark.parametrize('kwargs,pattern', [
    (dict(b=torch.zeros(4)), r'length x.shape\[1\]=3'),
    (dict(b=torch.zeros(3, 1)), r'1-D'),
    (dict(b=torch.zeros(3), dim=3), r'dim=3 is out of range'),
    (dict(clamp=-1.0), r'clamp must be None or >= 0'),
    (dict(impl='triton'), r"impl must be 'cuda' or 'ref'"),
])
def test_argument_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        bias_act(torch.zeros(2, 3, 4), **kwargs)


def test_integer_input_rejected():
    with pytest.raises(TypeError, match='floating-point'):
        bias_act(torch.zeros(2, 3, dtype=torch.int64))

#----------------------------------------------------------------------------
# The CUDA path's autograd wiring, run on CPU with a Python emulation of the kernel contract in bias_act.h.

def _emulated_kernel(x, b, xref, yref, dy, grad, dim, act_idx, alpha, gain, clamp):
    name = {spec.cuda_idx: key for key, spec in activation_funcs.items()}[act_idx]
    shape = [-1 if i == dim else 1 for i in range(x.ndim)]
    bias = b.reshape(shape) if b.numel() else 0.0
    if grad == 0:
        y = torch.from_numpy(np_activation(name, (x + bias).numpy(), alpha)) * gain
        return y.clamp(-clamp, clamp) if clamp >= 0 else y
    inside = torch.ones_like(x, dtype=torch.bool)
    if name == 'swish':
        u = xref + bias
        s = torch.sigmoid(u)
        d1 = gain * s * (1 + u * (1 - s))
        d2 = gain * s * (1 - s) * (2 + u * (1 - 2 * s))
        if clamp >= 0:
            inside = (gain * u * s).abs() < clamp
    elif yref.numel():
        a = yref / gain
        one, zero = torch.ones_like(a), torch.zeros_like(a)
        d1, d2 = {
            'linear': (one, zero),
            'relu': ((a > 0).to(a.dtype), zero),
            'lrelu': (torch.where(a > 0, one, one * alpha), zero),
            'tanh': (1 - a * a, -2 * a),
            'sigmoid': (a * (1 - a), 1 - 2 * a),
            'elu': (torch.where(a > 0, one, a + 1), torch.where(a > 0, zero, one)),
            'selu': (torch.where(a > 0, one * SELU_SCALE, a + SELU_SCALE * SELU_ALPHA), torch.where(a > 0, zero, one)),
            'softplus': (-torch.expm1(-a), torch.exp(-a)),
        }[name]
        d1 = d1 * gain
        if clamp >= 0:
            inside = yref.abs() < clamp
    else:
        d1, d2 = torch.full_like(x, gain), torch.zeros_like(x)
    out = x * d1 if grad == 1 else x * dy * d2
    return torch.where(inside, out, torch.zeros_like(out))


class _EmulatedPlugin:
    bias_act = staticmethod(_emulated_kernel)


@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('clamp', [None, 0.7])
def test_cuda_autograd_wiring_with_emulated_kernel(act, clamp, monkeypatch):
    monkeypatch.setattr(bias_act_module, '_cuda_functions', {})
    gain = 1.3
    alpha = default_alpha_gain(act)[0]
    fn_class = bias_act_module._bias_act_cuda(1, act, alpha, gain, clamp, _EmulatedPlugin())
    assert bias_act_module._bias_act_cuda(1, act, alpha, gain, clamp, _EmulatedPlugin()) is fn_class  # cached
    x, b = _inputs_away_from_kinks(act, gain, clamp)
    x.requires_grad_(True)
    b.requires_grad_(True)
    y = fn_class.apply(x, b)
    torch.testing.assert_close(y, bias_act(x, b, act=act, gain=gain, clamp=clamp, impl='ref'))
    assert torch.autograd.gradcheck(fn_class.apply, (x, b))
    assert torch.autograd.gradgradcheck(fn_class.apply, (x, b))

#----------------------------------------------------------------------------
# Real CUDA kernel (needs a GPU) and compile check (needs nvcc).

def _compare_fast_path_with_reference(fast, act, gain, clamp, dtype, device):
    """Values, first and second derivatives of `fast(x, b)` against the float64 reference path."""
    x64, b64 = _inputs_away_from_kinks(act, gain, clamp, shape=(3, 5, 6, 7))
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=1e-4, atol=1e-4)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = x64.to(device, dtype).to(memory_format=memory_format).requires_grad_(True)
        b = b64.to(device, dtype).requires_grad_(True)
        xr = x64.to(device).requires_grad_(True)
        br = b64.to(device).requires_grad_(True)
        y = fast(x, b)
        yr = bias_act(xr, br, act=act, gain=gain, clamp=clamp, impl='ref')
        assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
        torch.testing.assert_close(y.double(), yr, **tol)

        # First order with a graph, then second order through it (what R1 / path length do).
        dy = torch.randn_like(yr)
        gx, gb = torch.autograd.grad(y, [x, b], dy.to(dtype), create_graph=True)
        gxr, gbr = torch.autograd.grad(yr, [xr, br], dy, create_graph=True)
        torch.testing.assert_close(gx.double(), gxr, **tol)
        torch.testing.assert_close(gb.double(), gbr, rtol=tol['rtol'], atol=tol['atol'] * 50)
        assert gx.requires_grad == gxr.requires_grad
        if dtype != torch.float16 and gxr.requires_grad:
            ggx, ggb = torch.autograd.grad(gx.square().sum(), [x, b])
            ggxr, ggbr = torch.autograd.grad(gxr.square().sum(), [xr, br])
            torch.testing.assert_close(ggx.double(), ggxr, **tol)
            torch.testing.assert_close(ggb.double(), ggbr, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('clamp', [None, 0.7])
def test_emulated_fast_path_matches_reference(act, clamp):
    # Same comparison as the CUDA test below, run on CPU through the emulated kernel.
    gain = 1.3
    fn_class = bias_act_module._bias_act_cuda(1, act, default_alpha_gain(act)[0], gain, clamp, _EmulatedPlugin())
    try:
        _compare_fast_path_with_reference(fn_class.apply, act, gain, clamp, torch.float64, 'cpu')
    finally:
        bias_act_module._cuda_functions.clear()


@pytest.mark.cuda
@pytest.mark.parametrize('act', ACTIVATIONS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize('clamp', [None, 0.7])
def test_cuda_matches_reference(act, dtype, clamp):
    assert bias_act_module._get_plugin() is not None, 'bias_act_plugin failed to build'
    gain = 1.3
    fast = lambda x, b: bias_act(x, b, act=act, gain=gain, clamp=clamp, impl='cuda')  # noqa: E731
    _compare_fast_path_with_reference(fast, act, gain, clamp, dtype, 'cuda')


@pytest.mark.cuda
def test_cuda_gradgradcheck_float64():
    x, b = _inputs_away_from_kinks('tanh', 1.3, 0.7)
    x = x.cuda().requires_grad_(True)
    b = b.cuda().requires_grad_(True)
    fn = lambda x_, b_: bias_act(x_, b_, act='tanh', gain=1.3, clamp=0.7, impl='cuda')  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.nvcc
def test_bias_act_sources_compile():
    ok, output = custom_ops.nvcc_compile_check(['bias_act.cpp', 'bias_act.cu'], headers=['bias_act.h'],
                                               source_dir=OPS_DIR)
    assert ok, output


#----------------------------------------------------------------------------
# The kernel's per-element math (bias_act_element in bias_act.cu, host+device code), run on the CPU through
# a small host program compiled with nvcc, against finite differences of the numpy activations.

_HARNESS = r'''
#include "bias_act.cu"
#include <cstdio>
int main(int argc, char** argv)
{
    const bool single = argc > 1 && argv[1][0] == 'f';
    int mode, act, has_yref;
    double v, bias, xref, yref, dy, alpha, gain, clamp;
    while (std::scanf("%d %d %lf %lf %lf %lf %d %lf %lf %lf %lf", &mode, &act, &v, &bias, &xref, &yref, &has_yref,
                      &dy, &alpha, &gain, &clamp) == 11) {
        const double out = single
            ? (double)bias_act_element<float>(mode, act, (float)v, (float)bias, (float)xref, (float)yref,
                                              has_yref != 0, (float)dy, (float)alpha, (float)gain, (float)clamp)
            : bias_act_element<double>(mode, act, v, bias, xref, yref, has_yref != 0, dy, alpha, gain, clamp);
        std::printf("%.17g\n", out);
    }
    return 0;
}
'''


def _finite_difference_derivatives(act, u, alpha):
    h = 1e-4
    f = lambda t: np_activation(act, t, alpha)  # noqa: E731
    d1 = (f(u + h) - f(u - h)) / (2 * h)
    d2 = (f(u + h) - 2 * f(u) + f(u - h)) / (h * h)
    return d1, d2


@pytest.mark.nvcc
def test_kernel_element_math_on_host(tmp_path):
    (tmp_path / 'harness.cu').write_text(_HARNESS)
    build = subprocess.run([shutil.which('nvcc'), '-std=c++17', '-I', OPS_DIR, '-o', str(tmp_path / 'harness'),
                            str(tmp_path / 'harness.cu')], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr

    rng = np.random.default_rng(3)
    gain = 1.3
    rows, expected = [], []
    for act in ACTIVATIONS:
        spec = activation_funcs[act]
        alpha = default_alpha_gain(act)[0]
        for clamp in (None, 0.7):
            u = rng.uniform(-3, 3, size=40)
            u = u[np.abs(u) > 0.05]
            y_unclamped = np_activation(act, u, alpha) * gain
            if clamp is not None:
                u = u[np.abs(np.abs(y_unclamped) - clamp) > 0.05]
                y_unclamped = np_activation(act, u, alpha) * gain
            inside = np.ones_like(u, dtype=bool) if clamp is None else np.abs(y_unclamped) < clamp
            y = y_unclamped if clamp is None else np.clip(y_unclamped, -clamp, clamp)
            bias = rng.uniform(-1, 1, size=u.shape)
            v = rng.uniform(-2, 2, size=u.shape)
            dy = rng.uniform(-2, 2, size=u.shape)
            d1, d2 = _finite_difference_derivatives(act, u, alpha)
            k_clamp = -1.0 if clamp is None else clamp
            for i in range(len(u)):
                # mode 0: x = u - bias; mode 1/2: x holds an incoming gradient v.
                rows.append((0, spec.cuda_idx, u[i] - bias[i], bias[i], 0, 0, 0, 0, alpha, gain, k_clamp))
                expected.append(y[i])
                xref = u[i] - bias[i] if spec.ref == 'x' else 0.0
                yref = y[i] if spec.ref == 'y' else 0.0
                has_yref = int(spec.ref == 'y')
                rows.append((1, spec.cuda_idx, v[i], bias[i], xref, yref, has_yref, 0, alpha, gain, k_clamp))
                expected.append(v[i] * gain * d1[i] * inside[i])
                if not spec.has_2nd_grad:
                    second = 0.0
                elif spec.ref == 'x':  # derivative of gain * act'(u) w.r.t. u
                    second = gain * d2[i]
                else:  # derivative of gain * act'(u) w.r.t. y = gain * act(u)
                    second = d2[i] / d1[i]
                rows.append((2, spec.cuda_idx, v[i], bias[i], xref, yref, has_yref, dy[i], alpha, gain, k_clamp))
                expected.append(v[i] * dy[i] * second * inside[i])
    int_columns = (0, 1, 6)  # mode, act, has_yref
    text = ''.join(' '.join(str(int(c)) if k in int_columns else repr(float(c)) for k, c in enumerate(row)) + '\n'
                   for row in rows)
    expected = np.array(expected)
    for precision, rtol in (('d', 1e-5), ('f', 2e-4)):
        run = subprocess.run([str(tmp_path / 'harness'), precision], input=text, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        got = np.array([float(line) for line in run.stdout.split()])
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)
