"""Tests for torch_utils.ops.conv2d_resample: every fast path against the naive composition."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix
from torch_utils.ops import upfirdn2d
from torch_utils.ops.conv2d_resample import conv2d_resample


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors: one thread avoids OpenMP wake-up stalls on a loaded machine (results do not depend on it).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def naive_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """The definition: pad + upsample (f, gain up^2) -> valid conv with w -> f + subsample."""
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    if isinstance(padding, int):
        padding = [padding] * 4
    elif len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    px0, px1, py0, py1 = padding
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    y = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                            flip_filter=flip_filter)
    y = F.conv2d(y, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        y = upfirdn2d.upfirdn2d(y, f, down=down, flip_filter=flip_filter)
    return y


FILTERS = {
    'none': lambda: None,
    'binomial4': lambda: upfirdn2d.setup_filter([1, 3, 3, 1]),
    'separable12': lambda: upfirdn2d.setup_filter(torch.linspace(0.1, 1.0, 12)),
    'general2d': lambda: torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.1, -0.7]]),
    'odd3': lambda: upfirdn2d.setup_filter([1, 2, 1]),
}


@pytest.mark.parametrize('fname', list(FILTERS))
@pytest.mark.parametrize('up,down', [(1, 1), (2, 1), (1, 2), (3, 1), (1, 3), (2, 2), (2, 3)])
@pytest.mark.parametrize('ksize', [(1, 1), (3, 3), (2, 3)])
def test_matches_naive_composition(fname, up, down, ksize):
    f = FILTERS[fname]()
    kh, kw = ksize
    gen = torch.Generator().manual_seed(up * 100 + down * 10 + kh)
    cases = itertools.product([0, 1, [2, 1], [2, 0, 1, 3], [-1, 2, 0, -1]], [1, 2], [True, False], [False, True])
    for padding, groups, flip_weight, flip_filter in cases:
        x = torch.randn(2, 4, 6, 7, dtype=torch.float64, generator=gen)
        w = torch.randn(6, 4 // groups, kh, kw, dtype=torch.float64, generator=gen)
        expected = naive_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
        got = conv2d_resample(x=x, w=w, f=f, up=up, down=down, padding=padding, groups=groups,
                              flip_weight=flip_weight, flip_filter=flip_filter)
        assert got.shape == expected.shape, (padding, groups, flip_weight, flip_filter)
        msg = f'padding={padding} groups={groups} flip_weight={flip_weight} flip_filter={flip_filter}'
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=msg)


@pytest.mark.parametrize('up,down,ksize,padding', [(1, 1, 3, 1), (2, 1, 3, 0), (1, 2, 3, 1), (1, 2, 1, 0), (2, 1, 1, 0),
                                                   (3, 2, 2, [1, 0, 2, 1])])
def test_output_size_formula(up, down, ksize, padding):
    x = torch.zeros(1, 2, 9, 8)
    w = torch.zeros(3, 2, ksize, ksize)
    for f in [None, upfirdn2d.setup_filter([1, 3, 3, 1]), upfirdn2d.setup_filter([1, 2, 1])]:
        y = conv2d_resample(x, w, f=f, up=up, down=down, padding=padding)
        p = [padding] * 4 if isinstance(padding, int) else padding
        assert y.shape == (1, 3, (9 * up + p[2] + p[3] - ksize + 1) // down, (8 * up + p[0] + p[1] - ksize + 1) // down)


class _ConvCalls:
    def __init__(self, monkeypatch):
        self.names = []
        for name in ['conv2d', 'conv_transpose2d']:
            original = getattr(conv2d_gradfix, name)
            monkeypatch.setattr(conv2d_gradfix, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def wrapped(*args, **kwargs):
            self.names.append((name, kwargs.get('stride', 1)))
            return original(*args, **kwargs)
        return wrapped


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_stylegan2_calls_use_fast_paths_and_match(monkeypatch, dtype):
    calls = _ConvCalls(monkeypatch)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 8, 8, 8, dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=1e-1)

    def check(expected_call, **kwargs):
        calls.names.clear()
        got = conv2d_resample(**kwargs)
        assert calls.names == [expected_call]
        args = dict(f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False)
        args.update(kwargs)
        ref = naive_conv2d_resample(**{k: (v.double() if isinstance(v, torch.Tensor) and k != 'f' else v)
                                       for k, v in args.items()})
        torch.testing.assert_close(got.double(), ref, **tol)
        return got

    # Synthesis conv0: up=2, 3x3, padding=1, true convolution.
    w3 = torch.randn(16, 8, 3, 3, dtype=dtype) * 0.2
    y = check(('conv_transpose2d', 2), x=x, w=w3, f=f, up=2, padding=1, flip_weight=False)
    assert y.shape == (2, 16, 16, 16)
    # Discriminator conv1: down=2, 3x3, padding=1.
    y = check(('conv2d', 2), x=x, w=w3, f=f, down=2, padding=1)
    assert y.shape == (2, 16, 4, 4)
    # Discriminator skip: 1x1, down=2.
    w1 = torch.randn(16, 8, 1, 1, dtype=dtype) * 0.3
    y = check(('conv2d', 1), x=x, w=w1, f=f, down=2)
    assert y.shape == (2, 16, 4, 4)
    # Plain 3x3 conv with symmetric padding, and a grouped (fused modulated) conv.
    check(('conv2d', 1), x=x, w=w3, padding=1)
    wg = torch.randn(8, 4, 3, 3, dtype=dtype) * 0.2
    y = check(('conv_transpose2d', 2), x=x, w=wg, f=f, up=2, padding=1, groups=2, flip_weight=False)
    assert y.shape == (2, 8, 16, 16)


def test_channels_last_input():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 8, 8, 8)
    w = torch.randn(8, 8, 3, 3)
    for kwargs in [dict(up=2, padding=1, flip_weight=False), dict(down=2, padding=1), dict(padding=1)]:
        ref = conv2d_resample(x, w, f=f, **kwargs)
        got = conv2d_resample(x.contiguous(memory_format=torch.channels_last), w, f=f, **kwargs)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('up,down,ksize,padding,flip_weight,groups', [
    (2, 1, 3, 1, False, 1),
    (1, 2, 3, 1, True, 2),
    (1, 2, 1, 0, True, 1),
    (2, 1, 1, 0, True, 1),
    (1, 1, 3, [1, 0, 2, -1], False, 1),
    (2, 2, 2, [0, 1, 1, 0], True, 2),
])
def test_gradcheck(up, down, ksize, padding, flip_weight, groups):
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2 // groups, ksize, ksize, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: conv2d_resample(a, b, f=f, up=up, down=down, padding=padding, groups=groups,
                                      flip_weight=flip_weight)
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_bad_input_errors():
    x = torch.zeros(1, 4, 6, 6)
    w = torch.zeros(2, 4, 3, 3)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match='x must be a 4-D'):
        conv2d_resample(torch.zeros(4, 6, 6), w, f)
    with pytest.raises(ValueError, match='w must be a 4-D'):
        conv2d_resample(x, torch.zeros(2, 4, 3), f)
    with pytest.raises(TypeError, match='dtype'):
        conv2d_resample(x, w.double(), f)
    with pytest.raises(TypeError, match='float32'):
        conv2d_resample(x, w, f.double())
    with pytest.raises(ValueError, match='up must be'):
        conv2d_resample(x, w, f, up=0)
    with pytest.raises(ValueError, match='down must be'):
        conv2d_resample(x, w, f, down=1.5)
    with pytest.raises(ValueError, match='groups must be'):
        conv2d_resample(x, w, f, groups=0)
    with pytest.raises(ValueError, match='channels'):
        conv2d_resample(x, w, f, groups=2)
