"""Tests for torch_utils.ops.filtered_lrelu (reference path) against a manual composition."""
import numpy as np
import pytest
import torch

from torch_utils.ops import filtered_lrelu as flr
from torch_utils.ops import upfirdn2d


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors: one thread avoids OpenMP wake-up stalls on a loaded machine (results do not depend on it).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def manual_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    """bias -> upsample/filter (gain up^2) -> gain * leaky ReLU -> clamp -> filter/downsample, spelled out."""
    if b is not None:
        x = x + b[None, :, None, None]
    x = upfirdn2d.upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2, flip_filter=flip_filter, impl='ref')
    x = torch.where(x >= 0, x, x * slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d.upfirdn2d(x, fd, down=down, flip_filter=flip_filter, impl='ref')


def _lowpass(taps, seed):
    rng = np.random.default_rng(seed)
    return torch.tensor(np.hanning(taps + 2)[1:-1] * rng.uniform(0.8, 1.2, taps), dtype=torch.float32)


CASES = [
    # up, down, padding, fu taps/2-D, fd taps/2-D, gain, slope, clamp, flip_filter
    (2, 2, [5, 6, 5, 6], 12, 12, np.sqrt(2), 0.2, 256, False),   # StyleGAN3 layer (separable filters)
    (4, 2, [10, 9, 10, 9], 24, 12, np.sqrt(2), 0.2, 0.5, False),
    (1, 1, 0, None, None, 1.0, 1.0, None, False),                # ToRGB-like: linear, no filtering
    (2, 1, [3, 2, 1, 4], '2d', 4, 1.5, 0.1, 1.0, True),          # radial-style 2-D up filter
    (1, 2, [-1, 2, 1, 1], 3, '2d', np.sqrt(2), 0.2, None, False),
]


def _filter(spec, seed):
    if spec is None:
        return None
    if spec == '2d':
        g = torch.Generator().manual_seed(seed)
        return upfirdn2d.setup_filter(torch.rand(5, 5, generator=g) + 0.1)
    return upfirdn2d.setup_filter(_lowpass(spec, seed), separable=True)


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_matches_manual_composition_and_size(case, dtype):
    up, down, padding, fu_spec, fd_spec, gain, slope, clamp, flip = case
    fu, fd = _filter(fu_spec, 1), _filter(fd_spec, 2)
    x = torch.randn(2, 3, 9, 10, dtype=dtype)
    b = torch.randn(3, dtype=dtype)
    y = flr.filtered_lrelu(x=x, fu=fu, fd=fd, b=b, up=up, down=down, padding=padding, gain=gain, slope=slope,
                           clamp=clamp, flip_filter=flip)
    ref = manual_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, ref, **tol)
    y_ref = flr._filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip)
    torch.testing.assert_close(y_ref, ref, **tol)

    p = [padding] * 4 if isinstance(padding, int) else padding
    fu_w, fu_h = (1, 1) if fu is None else (fu.shape[-1], fu.shape[0])
    fd_w, fd_h = (1, 1) if fd is None else (fd.shape[-1], fd.shape[0])
    assert y.shape == (2, 3, (9 * up + p[2] + p[3] - (fu_h - 1) - (fd_h - 1) + down - 1) // down,
                       (10 * up + p[0] + p[1] - (fu_w - 1) - (fd_w - 1) + down - 1) // down)
    assert y.dtype == dtype


def test_clamp_and_slope_take_effect():
    x = torch.full((1, 1, 4, 4), 3.0)
    y = flr.filtered_lrelu(x, gain=2.0, clamp=5.0)
    assert torch.allclose(y, torch.full_like(y, 5.0))
    y = flr.filtered_lrelu(-x, gain=2.0, slope=0.25)
    assert torch.allclose(y, torch.full_like(y, -1.5))
    y = flr.filtered_lrelu(-x, b=torch.tensor([4.0]), gain=1.0)
    assert torch.allclose(y, torch.ones_like(y))


def test_channels_last_input():
    fu = _filter(12, 3)
    x = torch.randn(2, 4, 8, 8)
    b = torch.randn(4)
    ref = flr.filtered_lrelu(x, fu, fu, b, up=2, down=2, padding=[5, 6, 5, 6], clamp=256)
    got = flr.filtered_lrelu(x.contiguous(memory_format=torch.channels_last), fu, fu, b, up=2, down=2,
                             padding=[5, 6, 5, 6], clamp=256)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('case', [CASES[0], CASES[3]])
def test_gradcheck(case):
    up, down, padding, fu_spec, fd_spec, gain, slope, clamp, flip = case
    fu, fd = _filter(fu_spec, 1), _filter(fd_spec, 2)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda x_, b_: flr.filtered_lrelu(x_, fu, fd, b_, up=up, down=down, padding=padding, gain=gain, slope=slope,
                                           clamp=None, flip_filter=flip)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bad_input_errors():
    x = torch.zeros(1, 2, 4, 4)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match='4-D'):
        flr.filtered_lrelu(torch.zeros(2, 4, 4))
    with pytest.raises(TypeError, match='fu must be'):
        flr.filtered_lrelu(x, fu=f.double())
    with pytest.raises(TypeError, match='fd must be'):
        flr.filtered_lrelu(x, fd=torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match='b must be'):
        flr.filtered_lrelu(x, b=torch.zeros(3))
    with pytest.raises(ValueError, match='up must be'):
        flr.filtered_lrelu(x, up=0)
    with pytest.raises(ValueError, match='down must be'):
        flr.filtered_lrelu(x, down=2.0)
    with pytest.raises(ValueError, match='clamp'):
        flr.filtered_lrelu(x, clamp=-1)
    with pytest.raises(ValueError, match='padding'):
        flr.filtered_lrelu(x, padding=[1, 2, 3])
    with pytest.raises(ValueError, match='empty'):
        flr.filtered_lrelu(x, fu=f, padding=-2)
    with pytest.raises(ValueError, match='impl'):
        flr.filtered_lrelu(x, impl='fused')
