"""fma, conv2d_gradfix and grid_sample_gradfix: values and gradients against plain PyTorch / numpy."""
import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
from torch_utils.ops.fma import fma

#----------------------------------------------------------------------------
# fma

FMA_SHAPES = [
    ((2, 3, 4), (2, 3, 4), (2, 3, 4)),
    ((2, 3, 4), (3, 1), (1,)),
    ((4,), (2, 1, 4), (2, 3, 4)),
    ((), (2, 3), (3,)),
    ((5, 1, 3), (1, 4, 1), ()),
]


@pytest.mark.parametrize('shapes', FMA_SHAPES)
def test_fma_values_and_gradients(shapes):
    a, b, c = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes)
    out = fma(a, b, c)
    expect = a.detach().numpy() * b.detach().numpy() + c.detach().numpy()
    np.testing.assert_allclose(out.detach().numpy(), expect, rtol=1e-12, atol=1e-12)

    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (a, b, c), dout)
    ref = torch.autograd.grad(a * b + c, (a, b, c), dout)
    for g, r, t in zip(grads, ref, (a, b, c), strict=True):
        assert g.shape == t.shape
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize('shapes', FMA_SHAPES[1:3])
def test_fma_gradcheck_and_gradgradcheck(shapes):
    inputs = tuple(torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes)
    assert torch.autograd.gradcheck(fma, inputs)
    assert torch.autograd.gradgradcheck(fma, inputs)


def test_fma_partial_requires_grad_and_numbers():
    a = torch.randn(2, 3, requires_grad=True)
    b = torch.randn(3)
    out = fma(a, b, 0.5)
    torch.testing.assert_close(out, a * b + 0.5)
    out.sum().backward()
    torch.testing.assert_close(a.grad, b.expand(2, 3))
    with pytest.raises(TypeError, match='tensor'):
        fma(1.0, 2.0, 3.0)

#----------------------------------------------------------------------------
# conv2d_gradfix

CONV_CASES = [
    dict(stride=1, padding=1, dilation=1, groups=1),
    dict(stride=2, padding=0, dilation=1, groups=2),
    dict(stride=(1, 2), padding=(2, 1), dilation=2, groups=1),
]


def _conv_inputs(groups, transpose=False):
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    if transpose:
        w = torch.randn(4, 6 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    else:
        w = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    return x, w, b


def test_conv_module_defaults():
    # A fresh copy: the training loop switches `enabled` on process-wide, and may have run in this worker process.
    fresh = _fresh_copy(conv2d_gradfix)
    assert fresh.enabled is False
    assert fresh.weight_gradients_disabled is False


def test_no_weight_gradients_context_restores_flag():
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled
        with conv2d_gradfix.no_weight_gradients(False):
            assert conv2d_gradfix.weight_gradients_disabled  # disable=False leaves the current state
        assert conv2d_gradfix.weight_gradients_disabled
    assert not conv2d_gradfix.weight_gradients_disabled
    with conv2d_gradfix.no_weight_gradients(disable=False):
        assert not conv2d_gradfix.weight_gradients_disabled
    with pytest.raises(RuntimeError):
        with conv2d_gradfix.no_weight_gradients():
            raise RuntimeError('inside')
    assert not conv2d_gradfix.weight_gradients_disabled


@pytest.mark.parametrize('enabled', [False, True])
@pytest.mark.parametrize('case', CONV_CASES)
def test_conv2d_values(monkeypatch, enabled, case):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', enabled)
    x, w, b = _conv_inputs(case['groups'])
    expect = F.conv2d(x, w, b, **case)
    torch.testing.assert_close(conv2d_gradfix.conv2d(x, w, b, **case), expect)
    with conv2d_gradfix.no_weight_gradients():
        torch.testing.assert_close(conv2d_gradfix.conv2d(input=x, weight=w, bias=b, **case), expect)


@pytest.mark.parametrize('enabled', [False, True])
@pytest.mark.parametrize('case', CONV_CASES)
def test_conv_transpose2d_values(monkeypatch, enabled, case):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', enabled)
    x, w, b = _conv_inputs(case['groups'], transpose=True)
    kwargs = dict(case, output_padding=1 if case['stride'] == 2 else 0)
    expect = F.conv_transpose2d(x, w, b, **kwargs)
    torch.testing.assert_close(conv2d_gradfix.conv_transpose2d(x, w, b, **kwargs), expect)
    with conv2d_gradfix.no_weight_gradients():
        torch.testing.assert_close(conv2d_gradfix.conv_transpose2d(x, w, b, **kwargs), expect)


def _plain_and_gradfix(transpose, case):
    if transpose:
        kwargs = dict(case, output_padding=1 if case['stride'] == 2 else 0)
        return (lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs),
                lambda x, w, b: conv2d_gradfix.conv_transpose2d(x, w, b, **kwargs))
    return (lambda x, w, b: F.conv2d(x, w, b, **case),
            lambda x, w, b: conv2d_gradfix.conv2d(x, w, b, **case))


@pytest.mark.parametrize('transpose', [False, True])
@pytest.mark.parametrize('case', CONV_CASES)
def test_no_weight_gradients_skips_only_the_weight(monkeypatch, transpose, case):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    plain, gradfix = _plain_and_gradfix(transpose, case)
    x, w, b = _conv_inputs(case['groups'], transpose)
    dy = torch.randn_like(plain(x, w, b))
    gx_ref, gb_ref = torch.autograd.grad(plain(x, w, b), (x, b), dy)

    with conv2d_gradfix.no_weight_gradients():
        y = gradfix(x, w, b)
    y.backward(dy)
    assert w.grad is None
    torch.testing.assert_close(x.grad, gx_ref)
    torch.testing.assert_close(b.grad, gb_ref)

    # Outside the context the same function gives the weight its gradient again.
    gradfix(x, w, b).backward(dy)
    assert w.grad is not None


@contextlib.contextmanager
def one_thread():
    """Tiny float64 convolutions in gradgradcheck: threads only add scheduling overhead on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize('transpose', [False, True])
def test_no_weight_gradients_double_backward(monkeypatch, transpose):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    case = CONV_CASES[1]
    plain, gradfix = _plain_and_gradfix(transpose, case)
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with one_thread(), conv2d_gradfix.no_weight_gradients():
        assert torch.autograd.gradcheck(lambda x_: gradfix(x_, w, b), (x,))
        assert torch.autograd.gradgradcheck(lambda x_: gradfix(x_, w, b), (x,))

    # R1-style penalty on the input gradient of a loss that is linear in the output: the penalty's
    # gradients w.r.t. the input and the weight must match the plain path.
    v = torch.randn_like(plain(x, w, b))

    def penalty_grads(fn):
        g = torch.autograd.grad((fn(x, w, b) * v).sum(), x, create_graph=True)[0]
        return torch.autograd.grad((g * g * x).sum(), (x, w))

    ref = penalty_grads(plain)
    with conv2d_gradfix.no_weight_gradients():
        got = penalty_grads(gradfix)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])


def test_plain_path_when_not_enabled_or_not_disabled(monkeypatch):
    # The training loop turns the module switch on for the whole process; a loop run earlier in this worker must not
    # decide what this test sees.
    monkeypatch.setattr(conv2d_gradfix, 'enabled', False)
    x, w, b = _conv_inputs(1)
    with conv2d_gradfix.no_weight_gradients():  # enabled is False: native op
        y = conv2d_gradfix.conv2d(x, w, b, padding=1)
    y.sum().backward()
    assert w.grad is not None
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    w.grad = None
    conv2d_gradfix.conv2d(x, w, b, padding=1).sum().backward()  # enabled, but weight gradients wanted
    assert w.grad is not None

#----------------------------------------------------------------------------
# grid_sample_gradfix

def np_grid_sample(x, grid):
    """Bilinear, zero padding, align_corners=False, with explicit loops."""
    n_, c_, h, w = x.shape
    _, ho, wo, _ = grid.shape
    out = np.zeros((n_, c_, ho, wo))
    for n in range(n_):
        for i in range(ho):
            for j in range(wo):
                px = ((grid[n, i, j, 0] + 1) * w - 1) / 2
                py = ((grid[n, i, j, 1] + 1) * h - 1) / 2
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                    for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                        if 0 <= yy < h and 0 <= xx < w:
                            out[n, :, i, j] += wy * wx * x[n, :, yy, xx]
    return out


def _fresh_copy(module):
    """A newly executed copy of `module` (the training loop flips module flags process-wide)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('_fresh_' + module.__name__.replace('.', '_'), module.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    return fresh


def test_grid_sample_module_attr():
    assert _fresh_copy(grid_sample_gradfix).enabled is False


def test_grid_sample_values():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    grid = torch.rand(2, 4, 3, 2, dtype=torch.float64) * 2.4 - 1.2  # some samples fall outside
    y = grid_sample_gradfix.grid_sample(x, grid)
    np.testing.assert_allclose(y.numpy(), np_grid_sample(x.numpy(), grid.numpy()), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False))


def test_grid_sample_first_and_second_derivative_wrt_input():
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    grid = torch.rand(1, 3, 3, 2, dtype=torch.float64) * 2 - 1
    fn = lambda x_: grid_sample_gradfix.grid_sample(x_, grid)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    dy = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    (g,) = torch.autograd.grad(fn(x), x, dy)
    (g_ref,) = torch.autograd.grad(F.grid_sample(x, grid, align_corners=False), x, dy)
    torch.testing.assert_close(g, g_ref)


def test_double_backward_path_matches_torch_and_is_twice_differentiable():
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(2, 3, 4, 2, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)
    fn = grid_sample_gradfix.grid_sample_double_backward
    y = fn(x, grid)
    y_ref = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    dy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, grid), dy), torch.autograd.grad(y_ref, (x, grid), dy))
    assert torch.autograd.gradcheck(fn, (x, grid))
    assert torch.autograd.gradgradcheck(lambda x_: fn(x_, grid.detach()), (x,))
    # R1-style: d/dv of ||S^T v||^2 where v depends on a parameter, against the same through torch's CPU op.
    w = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)

    def r1(sample):
        xi = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((sample(xi, grid.detach()) * w).sum(), xi, create_graph=True)
        return torch.autograd.grad(g.square().sum(), w)[0]
    ref = r1(lambda a, b: F.grid_sample(a, b, mode='bilinear', padding_mode='zeros', align_corners=False))
    torch.testing.assert_close(r1(fn), ref)


def test_routing_cpu_takes_torch_op_and_bad_shapes_are_named(monkeypatch):
    monkeypatch.setattr(grid_sample_gradfix, 'enabled', True)
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    grid = torch.zeros(1, 2, 2, 2)
    assert 'GridSampler2D' in type(grid_sample_gradfix.grid_sample(x, grid).grad_fn).__name__
    assert '_GridSampleForward' in type(grid_sample_gradfix.grid_sample_double_backward(x, grid).grad_fn).__name__
    with pytest.raises(ValueError, match=r'grid \[N, Ho, Wo, 2\]'):
        grid_sample_gradfix.grid_sample_double_backward(x, torch.zeros(1, 2, 2, 3))
