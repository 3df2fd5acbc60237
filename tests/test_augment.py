"""Tests for training/augment.py (ADA augmentation pipeline)."""
import copy
import math
import pickle

import numpy as np
import pytest
import torch

from training import augment
from training.augment import AugmentPipe, augpipe_specs

PRESETS = ['blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc']


def normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def make_pipe(p, **kwargs):
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def mirror_shift_reference(img, dx, dy):
    """Numpy reference: content moved by (dx, dy) whole pixels, borders filled by reflection (no edge repeat)."""
    c, h, w = img.shape
    pad = max(h, w)
    padded = np.pad(img, [(0, 0), (pad, pad), (pad, pad)], mode='reflect')
    out = np.empty_like(img)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = padded[:, pad + i - dy, pad + j - dx]
    return out


def separable_filter_reference(img, kernel):
    """Numpy reference: correlate every channel with `kernel` along x then y, reflect padding."""
    c, h, w = img.shape
    r = len(kernel) // 2
    padded = np.pad(img, [(0, 0), (0, 0), (r, r)], mode='reflect')
    tmp = np.zeros_like(img, dtype=np.float64)
    for j in range(w):
        for t, k in enumerate(kernel):
            tmp[:, :, j] += k * padded[:, :, j + t]
    padded = np.pad(tmp, [(0, 0), (r, r), (0, 0)], mode='reflect')
    out = np.zeros_like(tmp)
    for i in range(h):
        for t, k in enumerate(kernel):
            out[:, i, :] += k * padded[:, i + t, :]
    return out

# ------------------------------------------------------------------------------------------------
# Presets, buffers, filters.


def test_augpipe_specs_presets():
    blit = {'xflip', 'rotate90', 'xint'}
    geom = {'scale', 'rotate', 'aniso', 'xfrac'}
    color = {'brightness', 'contrast', 'lumaflip', 'hue', 'saturation'}
    expected = {
        'blit': blit, 'geom': geom, 'color': color, 'filter': {'imgfilter'}, 'noise': {'noise'},
        'cutout': {'cutout'}, 'bg': blit | geom, 'bgc': blit | geom | color,
        'bgcf': blit | geom | color | {'imgfilter'}, 'bgcfn': blit | geom | color | {'imgfilter', 'noise'},
        'bgcfnc': blit | geom | color | {'imgfilter', 'noise', 'cutout'},
    }
    assert set(augpipe_specs) == set(expected)
    for name, flags in expected.items():
        assert augpipe_specs[name] == {flag: 1 for flag in flags}, name
        AugmentPipe(**augpipe_specs[name])  # every preset is a valid set of constructor kwargs


def test_buffers_names_shapes():
    pipe = AugmentPipe(**augpipe_specs['bgcfnc'])
    buffers = dict(pipe.named_buffers())
    assert set(buffers) == {'p', 'Hz_geom', 'Hz_fbank'}
    assert buffers['p'].shape == () and buffers['p'].dtype == torch.float32
    assert buffers['Hz_geom'].shape == (12,) and buffers['Hz_geom'].dtype == torch.float32
    assert buffers['Hz_fbank'].ndim == 2 and buffers['Hz_fbank'].shape[0] == 4
    assert abs(buffers['Hz_geom'].sum().item() - 1) < 1e-6
    assert list(pipe.parameters()) == []


def test_geometric_lowpass_is_orthonormal_symlet():
    h = np.asarray(augment.least_asymmetric_lowpass(6))
    assert h.shape == (12,)
    assert abs(h.sum() - math.sqrt(2)) < 1e-10
    for shift in range(6):  # double-shift orthonormality
        assert abs(np.dot(h[:12 - 2 * shift], h[2 * shift:]) - (shift == 0)) < 1e-10
    g = h[::-1] * (-1.0) ** np.arange(12)  # high-pass: 6 vanishing moments
    for moment in range(6):
        assert abs(np.sum(g * np.arange(12) ** moment)) < 1e-6 * 12 ** moment
    # Published sym6 decomposition low-pass (PyWavelets 'sym6' dec_lo), first and largest taps.
    published = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
                 0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
                 -0.02106029251230056, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]
    np.testing.assert_allclose(h, published, atol=1e-9)


def test_filter_bank_bands():
    bank = np.asarray(augment.octave_filter_bank(2, 4))
    n = bank.shape[1]
    assert bank.shape[0] == 4 and n % 2 == 1
    impulse = np.zeros(n)
    impulse[n // 2] = 1
    np.testing.assert_allclose(bank.sum(axis=0), impulse, atol=1e-12)
    np.testing.assert_allclose(bank, bank[:, ::-1], atol=1e-12)  # zero phase
    # Frequency responses: each band dominates its own octave.
    t = np.arange(n) - n // 2
    centres = [0.0, 3 * np.pi / 16, 3 * np.pi / 8, 3 * np.pi / 4]
    for i, w in enumerate(centres):
        response = np.cos(w * t) @ bank.T  # real (zero-phase) responses of the 4 bands at w
        assert np.argmax(response) == i, (i, response)
        assert response[i] > 0.6
    dc = np.ones(n) @ bank.T
    np.testing.assert_allclose(dc, [1, 0, 0, 0], atol=1e-12)
    pipe = AugmentPipe()
    np.testing.assert_allclose(pipe.Hz_fbank.numpy(), bank, atol=1e-7)

# ------------------------------------------------------------------------------------------------
# Identity, exact blits.


@pytest.mark.parametrize('preset', PRESETS)
@pytest.mark.parametrize('channels', [1, 3])
def test_p0_is_exact_identity(preset, channels):
    pipe = make_pipe(0.0, **augpipe_specs[preset])
    x = torch.randn(5, channels, 12, 12)
    y = pipe(x)
    assert torch.equal(y, x)


def test_xflip_p1_gives_flipped_or_unflipped():
    pipe = make_pipe(1.0, xflip=1)
    x = torch.randn(64, 3, 7, 9)
    y = pipe(x)
    flipped = 0
    for i in range(len(x)):
        is_same, is_flip = torch.equal(y[i], x[i]), torch.equal(y[i], x[i].flip(2))
        assert is_same != is_flip
        flipped += is_flip
    assert 10 < flipped < 54


def test_xflip_probability_is_p_times_half():
    pipe = make_pipe(0.5, xflip=1)
    x = torch.tensor([[[[0.0, 1.0]]]]).expand(4000, 1, 1, 2)
    y = pipe(x)
    fraction = (y[:, 0, 0, 0] == 1).float().mean().item()
    assert abs(fraction - 0.25) < 0.03


def test_rotate90_p1_gives_exact_quarter_turns():
    pipe = make_pipe(1.0, rotate90=1)
    x = torch.randn(64, 2, 8, 8)
    y = pipe(x)
    seen = set()
    for i in range(len(x)):
        matches = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_integer_translation_p1_moves_by_whole_pixels():
    h = w = 16
    max_shift = round(0.125 * w)
    pipe = make_pipe(1.0, xint=1)
    x = torch.randn(24, 3, h, w)
    y = pipe(x)
    moved = 0
    for i in range(len(x)):
        found = []
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                ref = mirror_shift_reference(x[i].numpy(), dx, dy)
                if np.array_equal(y[i].numpy(), ref):
                    found.append((dx, dy))
        assert len(found) == 1, found
        dx, dy = found[0]
        # Away from the padded border the content is a plain roll.
        rolled = torch.roll(x[i], shifts=(dy, dx), dims=(1, 2))
        inner = (slice(None), slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
        assert torch.equal(y[i][inner], rolled[inner])
        moved += (dx, dy) != (0, 0)
    assert moved >= 12


def test_blit_preset_is_pixel_permutation():
    pipe = make_pipe(1.0, **augpipe_specs['blit'])
    x = torch.randn(8, 1, 10, 10)
    y = pipe(x)
    # Every output value is a value of the same input sample.
    for i in range(len(x)):
        assert torch.isin(y[i], x[i]).all()

# ------------------------------------------------------------------------------------------------
# General geometric path (upsample, grid_sample, downsample).


def test_fractional_translation_by_whole_pixels_matches_exact_shift():
    # xfrac translation t * W with t = xfrac_std * z; choose z via debug_percentile so the shift is 2 px.
    w = 16
    z = 2 / (0.125 * w)
    pipe = make_pipe(1.0, xfrac=1)
    x = torch.randn(3, 3, w, w)
    y = pipe(x, debug_percentile=normal_cdf(z))
    ref = torch.from_numpy(np.stack([mirror_shift_reference(img, 2, 2) for img in x.numpy()]))
    assert (y - ref).abs().max().item() < 1e-3


def test_general_rotation_by_pi_matches_flip():
    # rotate_max=0.5 and debug_percentile=1 give +90 degrees before and after aniso: a half turn.
    pipe = make_pipe(1.0, rotate=1, rotate_max=0.5)
    x = torch.randn(2, 3, 12, 12)
    y = pipe(x, debug_percentile=1.0)
    assert (y - x.flip(2, 3)).abs().max().item() < 1e-4


def test_subpixel_translation_of_smooth_signal():
    # A low-frequency cosine shifted by 0.5 px must match the analytic shift away from the border.
    w = 32
    z = 0.5 / (0.125 * w)
    freq = 2 * math.pi / 16
    cols = torch.arange(w, dtype=torch.float32)
    x = torch.cos(freq * cols).expand(1, 1, w, w).clone()
    pipe = make_pipe(1.0, xfrac=1)
    y = pipe(x, debug_percentile=normal_cdf(z))
    ref = torch.cos(freq * (cols - 0.5)).expand(1, 1, w, w)
    inner = (slice(None), slice(None), slice(8, 24), slice(8, 24))
    assert (y[inner] - ref[inner]).abs().max().item() < 2e-2


def test_moderate_rotation_of_smooth_pattern_matches_analytic_rotation():
    w = 48
    coords = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing='ij')
    freq = 0.25 * math.pi
    img = torch.cos(freq * (0.8 * xx + 0.6 * yy) + 0.3)[None, None]
    total = math.radians(40)  # pre- and post-rotation of 20 degrees each (debug_percentile=1)
    pipe = make_pipe(1.0, rotate=1, rotate_max=total / 2 / math.pi)
    y = pipe(img, debug_percentile=1.0)[0, 0]
    # output(o) = input(R^-1 o) with R a rotation by `total` in (x, y) pixel coordinates.
    src_x = math.cos(total) * xx + math.sin(total) * yy
    src_y = -math.sin(total) * xx + math.cos(total) * yy
    ref = torch.cos(freq * (0.8 * src_x + 0.6 * src_y) + 0.3)
    assert (y - ref)[12:36, 12:36].abs().max().item() < 0.03
    wrong = torch.cos(freq * (0.8 * (math.cos(total) * xx - math.sin(total) * yy)
                              + 0.6 * (math.sin(total) * xx + math.cos(total) * yy)) + 0.3)
    assert (y - wrong)[12:36, 12:36].abs().max().item() > 0.3  # the test can tell the direction


def test_strong_downscale_fills_with_mirrored_content():
    pipe = make_pipe(1.0, scale=1, scale_std=1, rotate=1)
    x = torch.full([2, 3, 16, 16], -0.4)
    y = pipe(x, debug_percentile=0.05)  # scale 2^-1.64 plus rotation: sources far outside the image
    assert (y + 0.4).abs().max().item() < 1e-4  # no zero (black) regions


def test_bg_preset_keeps_blits_exact_when_general_part_is_identity():
    # debug_percentile=0.5: xflip on, rotate90 by 180 degrees, zero translation, unit scale, zero rotation.
    pipe = make_pipe(1.0, **augpipe_specs['bg'])
    x = torch.randn(3, 3, 10, 10)
    y = pipe(x, debug_percentile=0.5)
    assert torch.equal(y, torch.rot90(x.flip(3), 2, dims=(2, 3)))


def test_isotropic_scale_preserves_centre_and_mean_level():
    pipe = make_pipe(1.0, scale=1)
    x = torch.full([2, 3, 16, 16], 0.7)
    y = pipe(x, debug_percentile=0.9)  # upscale by 2^(0.2 * 1.28)
    assert (y - 0.7).abs().max().item() < 1e-4  # a constant image stays constant (mirror padding)

# ------------------------------------------------------------------------------------------------
# Colour.


def test_brightness_shifts_mean_by_normal_offset():
    pipe = make_pipe(1.0, brightness=1)
    x = torch.randn(4000, 3, 2, 2)
    y = pipe(x)
    diff = (y - x).reshape(len(x), -1)
    assert (diff - diff[:, :1]).abs().max().item() < 1e-5  # one offset per sample, all pixels/channels
    offsets = diff[:, 0]
    assert abs(offsets.mean().item()) < 0.02
    assert abs(offsets.std().item() - 0.2) < 0.02
    # Deterministic percentile: one standard deviation up.
    y = pipe(x[:4], debug_percentile=normal_cdf(1.0))
    assert ((y.mean(dim=(1, 2, 3)) - x[:4].mean(dim=(1, 2, 3))) - 0.2).abs().max().item() < 1e-4


def test_contrast_scales_around_zero():
    pipe = make_pipe(1.0, contrast=1)
    x = torch.randn(3, 3, 5, 5)
    y = pipe(x, debug_percentile=normal_cdf(1.0))
    torch.testing.assert_close(y, x * 2 ** 0.5, rtol=1e-4, atol=1e-5)


def test_lumaflip_rgb_reflects_luma_keeps_chroma():
    pipe = make_pipe(1.0, lumaflip=1)
    x = torch.randn(64, 3, 4, 4)
    y = pipe(x)
    flips = 0
    for i in range(len(x)):
        xi = x[i].numpy().astype(np.float64)
        ref = np.empty_like(xi)
        for r in range(4):
            for c in range(4):
                mean = xi[:, r, c].mean()
                ref[:, r, c] = xi[:, r, c] - 2 * mean  # mirror across the plane orthogonal to (1,1,1)
        is_flip = np.allclose(y[i].numpy(), ref, atol=1e-5)
        assert is_flip or torch.allclose(y[i], x[i], atol=1e-6)
        flips += is_flip
    assert 10 < flips < 54


def test_greyscale_colour_semantics():
    x = torch.randn(32, 1, 6, 6)
    # lumaflip on one channel negates the image (or leaves it).
    y = make_pipe(1.0, lumaflip=1)(x)
    for i in range(len(x)):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], -x[i])
    # hue and saturation are the identity on one channel.
    y = make_pipe(1.0, hue=1, saturation=1)(x)
    assert torch.equal(y, x)
    # brightness and contrast act as on RGB.
    y = make_pipe(1.0, brightness=1, contrast=1)(x, debug_percentile=normal_cdf(1.0))
    torch.testing.assert_close(y, (x + 0.2) * 2 ** 0.5, rtol=1e-4, atol=1e-5)


def test_hue_rotation_preserves_luma_and_chroma_norm():
    pipe = make_pipe(1.0, hue=1)
    x = torch.randn(16, 3, 4, 4, dtype=torch.float64)
    y = pipe(x)
    torch.testing.assert_close(y.mean(dim=1), x.mean(dim=1))
    chroma = lambda t: (t - t.mean(dim=1, keepdim=True)).norm(dim=1)  # noqa: E731
    torch.testing.assert_close(chroma(y), chroma(x))
    assert (y - x).abs().max().item() > 0.1


def test_saturation_scales_chroma():
    pipe = make_pipe(1.0, saturation=1)
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    y = pipe(x, debug_percentile=normal_cdf(1.0))  # s = 2 ** 1
    luma = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(y, luma + 2 * (x - luma))


def test_colour_needs_one_or_three_channels():
    pipe = make_pipe(1.0, brightness=1)
    with pytest.raises(ValueError, match='1 or 3 channels'):
        pipe(torch.randn(2, 2, 4, 4))
    make_pipe(1.0, **augpipe_specs['bg'])(torch.randn(2, 2, 8, 8))  # geometry works for any channel count

# ------------------------------------------------------------------------------------------------
# Filter, noise, cutout.


def test_imgfilter_unit_gains_is_identity():
    pipe = make_pipe(1.0, imgfilter=1)
    x = torch.randn(2, 3, 16, 16)
    y = pipe(x, debug_percentile=0.5)  # every band gain 2^0 = 1
    assert (y - x).abs().max().item() < 1e-5


def test_imgfilter_matches_numpy_reference():
    pipe = make_pipe(1.0, imgfilter=1, imgfilter_bands=[0, 0, 0, 1])  # only the top band is changed
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    y = pipe(x, debug_percentile=normal_cdf(1.0))  # top-band gain 2^1
    gains = np.array([1.0, 1.0, 1.0, 2.0])
    power = np.array([4.0, 1.0, 1.0, 1.0]) / 7
    gains /= np.sqrt(np.sum(power * gains ** 2))
    kernel = gains @ np.asarray(augment.octave_filter_bank(2, 4))
    for i in range(len(x)):
        ref = separable_filter_reference(x[i].numpy(), kernel)
        np.testing.assert_allclose(y[i].numpy(), ref, atol=1e-6)


def test_noise_std():
    pipe = make_pipe(1.0, noise=1)
    x = torch.zeros(4, 3, 32, 32)
    y = pipe(x, debug_percentile=normal_cdf(1.0))  # sigma = |z| * noise_std = 0.1
    std = y.reshape(4, -1).std(dim=1)
    assert (std - 0.1).abs().max().item() < 0.01


def test_cutout_centre_square():
    pipe = make_pipe(1.0, cutout=1)
    x = torch.ones(2, 3, 16, 16)
    y = pipe(x, debug_percentile=0.5)  # centre (0.5, 0.5), side 0.5
    ref = np.ones([16, 16])
    for i in range(16):
        for j in range(16):
            if abs((i + 0.5) / 16 - 0.5) < 0.25 and abs((j + 0.5) / 16 - 0.5) < 0.25:
                ref[i, j] = 0
    for n in range(2):
        for c in range(3):
            np.testing.assert_array_equal(y[n, c].numpy(), ref)
    assert ref.sum() == 256 - 64

# ------------------------------------------------------------------------------------------------
# Whole presets: shapes, finiteness, gradients, determinism, pickling, dtypes.


@pytest.mark.parametrize('preset', PRESETS)
@pytest.mark.parametrize('channels', [1, 3])
def test_presets_finite_shape_preserving(preset, channels):
    pipe = make_pipe(0.5, **augpipe_specs[preset])
    for shape in ([6, channels, 16, 16], [3, channels, 12, 20]):
        x = torch.randn(shape)
        y = pipe(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all()


def test_empty_batch():
    pipe = make_pipe(0.5, **augpipe_specs['bgcfnc'])
    x = torch.randn(0, 3, 8, 8)
    assert pipe(x).shape == (0, 3, 8, 8)


@pytest.mark.parametrize('preset', ['bgc', 'bgcfnc'])
@pytest.mark.parametrize('gradfix', [False, True])
def test_grad_and_double_grad(preset, gradfix, monkeypatch):
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
    monkeypatch.setattr(conv2d_gradfix, 'enabled', gradfix)  # the training loop enables both
    monkeypatch.setattr(grid_sample_gradfix, 'enabled', gradfix)
    pipe = make_pipe(0.8, **augpipe_specs[preset])
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    y = pipe(x)
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    (grad2,) = torch.autograd.grad(grad.square().sum(), x)
    assert torch.isfinite(grad2).all() and grad2.abs().sum() > 0


def test_gradcheck_and_gradgradcheck_full_pipeline():
    pipe = make_pipe(1.0, **augpipe_specs['bgcfnc'])  # p=1: every stage is active

    def fn(x):
        torch.manual_seed(123)  # same random transformation on every call
        return pipe(x)

    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, fast_mode=True)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-6, fast_mode=True)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)  # full Jacobian on a tiny input


def test_same_seed_same_output():
    pipe = make_pipe(0.6, **augpipe_specs['bgcfnc'])
    x = torch.randn(8, 3, 16, 16)
    torch.manual_seed(7)
    a = pipe(x)
    torch.manual_seed(7)
    b = pipe(x)
    torch.manual_seed(8)
    c = pipe(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pickle_and_deepcopy_round_trip():
    pipe = make_pipe(0.6, **augpipe_specs['bgcfnc'])
    pipe.p.fill_(0.37)
    clone = pickle.loads(pickle.dumps(pipe))
    dup = copy.deepcopy(pipe)
    assert type(clone).__name__ == 'AugmentPipe'
    assert clone.p.item() == pytest.approx(0.37)
    assert clone.init_kwargs == pipe.init_kwargs
    x = torch.randn(6, 3, 16, 16)
    outputs = []
    for module in (pipe, clone, dup):
        torch.manual_seed(5)
        outputs.append(module(x))
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(outputs[0], outputs[2])


def test_bfloat16_and_float64():
    pipe = make_pipe(0.6, **augpipe_specs['bgc'])
    x = torch.randn(4, 3, 16, 16).to(torch.bfloat16).float()  # exactly representable in bfloat16
    torch.manual_seed(3)
    ref = pipe(x)
    torch.manual_seed(3)
    y16 = pipe(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert ((y16.float() - ref).abs() <= ref.abs() * 2 ** -8 + 1e-6).all()  # one bfloat16 rounding
    torch.manual_seed(3)
    y64 = pipe(x.double())
    assert y64.dtype == torch.float64
    assert (y64.float() - ref).abs().max().item() < 1e-4


def test_bad_input_messages():
    pipe = make_pipe(0.5, **augpipe_specs['bgc'])
    with pytest.raises(ValueError, match='4-D'):
        pipe(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match='floating point'):
        pipe(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match='debug_percentile'):
        pipe(torch.randn(1, 3, 8, 8), debug_percentile=1.5)
    with pytest.raises(ValueError, match='imgfilter_bands'):
        AugmentPipe(imgfilter=1, imgfilter_bands=[1, 1, 1])


@pytest.mark.cuda
def test_cuda_matches_cpu_in_debug_mode():
    pipe = make_pipe(0.5, **augpipe_specs['bgcf'])  # no noise: its pixels stay random in debug mode
    x = torch.randn(4, 3, 16, 16)
    ref = pipe(x, debug_percentile=0.3)
    gpu = copy.deepcopy(pipe).cuda()
    y = gpu(x.cuda(), debug_percentile=0.3)
    assert (y.cpu() - ref).abs().max().item() < 1e-4
    torch.manual_seed(0)
    z = gpu(x.cuda().requires_grad_())
    assert z.shape == x.shape and torch.isfinite(z).all()
