"""FSR plugin model components: output heads, pyramids, sparsity penalty, pair discriminators, layer-wise schedule.

Values are checked against independent computations (explicit numpy loops / closed forms), gradients with gradcheck.
"""
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsr_plugin import heads as heads_lib
from fsr_plugin import pair_disc
from fsr_plugin import pyramid
from fsr_plugin import schedule as schedule_lib
from fsr_plugin import sparsity
from fsr_plugin import wta
from training import growing
from training import networks


def tiny_G(res=16, channels=3, arch='skip'):
    return networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=channels,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=128, channel_max=16, architecture=arch))


# ----------------------------------------------------------------------------------------------------------------------
# Pyramid.

def _np_fir_down(x):
    """Reference 2x FIR downsampling of [N, C, H, W]: separable [1,3,3,1]/8, zero padding 1 per side, stride 2."""
    f = np.array([1, 3, 3, 1], dtype=np.float64) / 8
    N, C, H, W = x.shape
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    out = np.zeros([N, C, H // 2, W // 2])
    for i in range(H // 2):
        for j in range(W // 2):
            for a in range(4):
                for b in range(4):
                    out[:, :, i, j] += f[a] * f[b] * xp[:, :, 2 * i + a, 2 * j + b]
    return out


def _np_fir_up(x):
    """Reference 2x FIR upsampling: zero insertion, pad [2, 1], separable [1,3,3,1]/8 * 2 per axis."""
    f = np.array([1, 3, 3, 1], dtype=np.float64) / 8 * 2
    N, C, H, W = x.shape
    z = np.zeros([N, C, 2 * H, 2 * W])
    z[:, :, ::2, ::2] = x
    zp = np.pad(z, [(0, 0), (0, 0), (2, 1), (2, 1)])
    out = np.zeros([N, C, 2 * H, 2 * W])
    for i in range(2 * H):
        for j in range(2 * W):
            for a in range(4):
                for b in range(4):
                    out[:, :, i, j] += f[a] * f[b] * zp[:, :, i + a, j + b]
    return out


def test_box_pyramid_equals_average_pooling():
    x = torch.randn([2, 3, 16, 16], dtype=torch.float64)
    pyr = pyramid.build_pyramid(x, [16, 8, 4, 2], filter='box')
    assert list(pyr) == [2, 4, 8, 16]
    assert pyr[16] is x
    for r in (2, 4, 8):
        assert pyr[r].shape == (2, 3, r, r)
        torch.testing.assert_close(pyr[r], F.avg_pool2d(x, 16 // r), rtol=0, atol=1e-12)


def test_fir_pyramid_equals_repeated_numpy_filtering():
    x = torch.randn([2, 2, 16, 16], dtype=torch.float64)
    pyr = pyramid.build_pyramid(x, [4, 16], filter='fir')
    assert list(pyr) == [4, 16]
    ref = _np_fir_down(_np_fir_down(x.numpy()))
    np.testing.assert_allclose(pyr[4].numpy(), ref, rtol=0, atol=1e-12)


def test_pyramid_rejects_bad_input():
    x = torch.randn([1, 3, 16, 16])
    with pytest.raises(ValueError, match='divided by a power of two'):
        pyramid.build_pyramid(x, [6])
    with pytest.raises(ValueError, match='divided by a power of two'):
        pyramid.build_pyramid(x, [32])
    with pytest.raises(ValueError, match='pyramid filter'):
        pyramid.build_pyramid(x, [8], filter='lanczos')
    with pytest.raises(ValueError, match='square batch'):
        pyramid.build_pyramid(torch.randn([1, 3, 16, 8]), [8])


def test_upsample_nearest_and_fir_against_numpy():
    x = torch.randn([2, 3, 4, 4], dtype=torch.float64)
    near = pyramid.upsample(x, 4, 'nearest')
    ref = np.kron(x.numpy(), np.ones([1, 1, 4, 4]))
    np.testing.assert_array_equal(near.numpy(), ref)
    fir = pyramid.upsample(x, 2, 'fir')
    np.testing.assert_allclose(fir.numpy(), _np_fir_up(x.numpy()), rtol=0, atol=1e-12)
    fir4 = pyramid.upsample(x, 4, 'fir')
    np.testing.assert_allclose(fir4.numpy(), _np_fir_up(_np_fir_up(x.numpy())), rtol=0, atol=1e-12)
    # The pair discriminator's own copy of the helper agrees.
    for mode in ('nearest', 'fir'):
        torch.testing.assert_close(pair_disc.upsample2x(x, mode), pyramid.upsample(x, 2, mode), rtol=0, atol=0)
    with pytest.raises(ValueError, match='power of two'):
        pyramid.upsample(x, 3)


# ----------------------------------------------------------------------------------------------------------------------
# Output heads.

def _np_paint(S, A, b):
    """X[n, o, p] = b[o] + sum_i sum_q S[n, i, q] * A[o, i, p - q + c], c = k // 2 (atoms painted at q - c)."""
    N, C, H, W = S.shape
    O, _, k, _ = A.shape
    c = k // 2
    X = np.zeros([N, O, H, W]) + b.reshape(1, O, 1, 1)
    for qy in range(H):
        for qx in range(W):
            for dy in range(k):
                for dx in range(k):
                    py, px = qy - c + dy, qx - c + dx
                    if 0 <= py < H and 0 <= px < W:
                        X[:, :, py, px] += np.einsum('ni,oi->no', S[:, :, qy, qx], A[:, :, dy, dx])
    return X


@pytest.mark.parametrize('k', [1, 3, 4])
@pytest.mark.parametrize('unit_norm', [False, True])
def test_head_paints_atoms(k, unit_norm):
    heads = heads_lib.OutputHeads({4: 5, 8: 6}, img_channels=3, kernel_size=k, unit_norm_atoms=unit_norm)
    with torch.no_grad():
        for r in (4, 8):
            heads.head(r).bias.copy_(torch.randn([3]))
    feats = {4: torch.randn([2, 5, 4, 4]), 8: torch.randn([2, 6, 8, 8])}
    out = heads(feats)
    assert set(out) == {4, 8}
    for r in (4, 8):
        assert out[r].shape == (2, 3, r, r) and out[r].dtype == torch.float32
        atoms = heads.atoms(r)  # [C, 3, k, k]
        assert atoms.shape == (feats[r].shape[1], 3, k, k)
        W = heads.head(r).weight.detach().double().numpy()
        if unit_norm:
            A = W / np.sqrt((W ** 2).sum(axis=(0, 2, 3), keepdims=True))
            np.testing.assert_allclose(np.sqrt((atoms.detach().numpy() ** 2).sum(axis=(1, 2, 3))), 1, atol=1e-5)
        else:
            A = W / np.sqrt(feats[r].shape[1] * k * k)
        np.testing.assert_allclose(atoms.detach().numpy(), A.transpose(1, 0, 2, 3), rtol=1e-5, atol=1e-6)
        ref = _np_paint(feats[r].double().numpy(), A, heads.head(r).bias.detach().double().numpy())
        np.testing.assert_allclose(out[r].detach().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_head_delta_input_shows_its_atom():
    heads = heads_lib.OutputHeads({8: 4}, img_channels=3, kernel_size=3, bias=False)
    S = torch.zeros([1, 4, 8, 8])
    S[0, 2, 3, 5] = 1.0
    X = heads({8: S})[8][0]
    atom = heads.atoms(8)[2]
    torch.testing.assert_close(X[:, 2:5, 4:7], atom)
    assert X.abs().sum().item() == pytest.approx(atom.abs().sum().item(), rel=1e-5)


def test_unit_norm_head_is_scale_invariant_and_has_gradients():
    heads = heads_lib.OutputHeads({4: 3}, img_channels=1, kernel_size=3, unit_norm_atoms=True)
    S = torch.randn([2, 3, 4, 4])
    before = heads({4: S})[4]
    with torch.no_grad():
        heads.head(4).weight[:, 1] *= 7.0
    torch.testing.assert_close(heads({4: S})[4], before, rtol=1e-5, atol=1e-6)
    heads({4: S})[4].square().sum().backward()
    assert heads.head(4).weight.grad.abs().sum() > 0 and heads.head(4).bias.grad.abs().sum() > 0


def test_head_gain_scales_unit_atoms_and_learns():
    heads = heads_lib.OutputHeads({4: 3, 8: 2}, img_channels=3, kernel_size=3, unit_norm_atoms=True, head_gain=True)
    plain = heads_lib.OutputHeads({4: 3, 8: 2}, img_channels=3, kernel_size=3, unit_norm_atoms=True)
    plain.load_state_dict({k: v for k, v in heads.state_dict().items() if 'log_gain' not in k})
    feats = {4: torch.randn([2, 3, 4, 4]), 8: torch.randn([2, 2, 8, 8])}
    # A dense unit-atom head starts at the equalised-lr scale of a plain head; a winner-take-all head at 1.
    torch.testing.assert_close(heads(feats)[8], plain(feats)[8] / math.sqrt(2 * 9), rtol=1e-5, atol=1e-6)
    top = heads_lib.OutputHeads({4: 3, 8: 2}, img_channels=3, kernel_size=3, unit_norm_atoms=True, head_gain=True,
                                top_wta=1)
    gain_top, gain_4 = float(top.head(8).log_gain.detach()), float(top.head(4).log_gain.detach())
    assert gain_top == 0 and gain_4 == pytest.approx(-0.5 * math.log(3 * 9))
    plain_gain = heads_lib.OutputHead(4, 3, kernel_size=3, gain=True).log_gain.detach()
    assert float(plain_gain) == 0  # plain heads: already scaled
    with torch.no_grad():
        heads.head(4).log_gain.fill_(math.log(0.25))
    # Atom directions stay unit-norm; the head paints them at a quarter of the contrast (bias 0).
    norms = heads.atoms(4).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full([3], 0.25), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(heads(feats)[4], 0.25 * plain(feats)[4], rtol=1e-5, atol=1e-6)
    heads(feats)[4].square().sum().backward()
    assert heads.head(4).log_gain.grad.abs() > 0 and heads.head(8).log_gain.grad is None
    clone = pickle.loads(pickle.dumps(heads))
    torch.testing.assert_close(clone(feats)[4], heads(feats)[4], rtol=0, atol=0)
    heads.head(4).set_effective_weight(torch.ones([3, 3, 3, 3]))
    assert float(heads.head(4).log_gain.detach()) == 0  # an explicit weight resets the gain
    assert heads_lib.OutputHead(3, 3).log_gain is None


@pytest.mark.parametrize('style', ['unit', 'w_avg'])
def test_torgb_init_copies_the_unmodulated_torgb(style):
    G = tiny_G()
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn([G.w_dim]))
        for r in G.synthesis.block_resolutions:
            getattr(G.synthesis, f'b{r}').torgb.bias.copy_(torch.randn([3]))
    heads = heads_lib.OutputHeads.for_generator(G, kernel_size=1, init='torgb', style=style)
    assert heads.resolutions == [4, 8, 16] and not heads.residual_final
    for r in heads.resolutions:
        torgb = getattr(G.synthesis, f'b{r}').torgb
        S = torch.randn([2, torgb.in_channels, r, r])
        if style == 'unit':
            # Independent check: a ToRGB whose affine layer outputs exactly 1 (zero weight, unit bias).
            with torch.no_grad():
                torgb.affine.weight.zero_()
                torgb.affine.bias.fill_(1.0)
            ref = torgb(S, torch.randn([2, G.w_dim]))
        else:
            ref = torgb(S, G.mapping.w_avg.reshape(1, -1).repeat(2, 1))
        torch.testing.assert_close(heads({r: S})[r], ref, rtol=1e-5, atol=1e-5)


def test_torgb_init_with_odd_kernel_uses_centre_tap_and_rejects_even():
    G = tiny_G()
    heads = heads_lib.OutputHeads.for_generator(G, kernel_size=3, init='torgb')
    a = heads.atoms(8)
    assert a[:, :, [0, 0, 2, 2], [0, 2, 0, 2]].abs().max() == 0
    ref = (G.synthesis.b8.torgb.weight * G.synthesis.b8.torgb.weight_gain)[:, :, 0, 0].t()
    torch.testing.assert_close(a[:, :, 1, 1], ref)
    with pytest.raises(ValueError, match='odd kernel_size'):
        heads_lib.OutputHeads.for_generator(G, kernel_size=4, init='torgb')


def test_identity_init_reproduces_the_generator_output():
    G = tiny_G()
    heads = heads_lib.OutputHeads.for_generator(G, kernel_size=3, init='identity')
    assert heads.residual_final and heads.head(16).residual and not heads.head(8).residual
    ws = G.mapping(torch.randn([3, G.z_dim]), torch.zeros([3, 0]))
    img, feats = G.synthesis(ws, return_features=True, noise_mode='const')
    out = heads(feats, img=img)
    torch.testing.assert_close(out[16], img, rtol=0, atol=0)
    # Lower heads were initialised from ToRGB (not zero), and the residual head learns.
    assert heads.atoms(8).abs().sum() > 0
    (out[16] - img.detach() + 0.1).square().sum().backward()
    assert heads.head(16).weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='needs the generator image'):
        heads(feats)
    with pytest.raises(ValueError, match='unit_norm_atoms'):
        heads_lib.OutputHeads.for_generator(G, init='identity', unit_norm_atoms=True)


def test_heads_reject_unknown_resolution_and_pickle_round_trip():
    heads = heads_lib.OutputHeads({4: 2, 8: 3}, img_channels=1, kernel_size=4, unit_norm_atoms=True)
    with pytest.raises(KeyError, match='no output head for resolution 16'):
        heads({16: torch.zeros([1, 3, 16, 16])})
    with pytest.raises(ValueError, match=r'\[N, 3, r, r\]'):
        heads({8: torch.zeros([1, 2, 8, 8])})
    clone = pickle.loads(pickle.dumps(heads))
    feats = {4: torch.randn([2, 2, 4, 4]), 8: torch.randn([2, 3, 8, 8])}
    for r, x in heads(feats).items():
        torch.testing.assert_close(clone(feats)[r], x, rtol=0, atol=0)
    assert type(clone).__name__ == 'OutputHeads' and clone.init_kwargs.kernel_size == 4


# ----------------------------------------------------------------------------------------------------------------------
# Winner-take-all top level.

def _np_wta(a, window, min_value=0.0):
    """Explicit loops: keep a[n, c, y, x] iff c holds the channel maximum at (y, x), that maximum exceeds min_value
    (0: is positive) and it is at least every site's maximum in the window around (y, x)."""
    N, C, H, W = a.shape
    best = a.max(axis=1)
    out = np.zeros_like(a)
    h = window // 2
    for n in range(N):
        for y in range(H):
            for x in range(W):
                m = best[n, y, x]
                if m <= min_value:
                    continue
                if m < best[n, max(y - h, 0):y + h + 1, max(x - h, 0):x + h + 1].max():
                    continue
                for c in range(C):
                    if a[n, c, y, x] == m:
                        out[n, c, y, x] = m
    return out


@pytest.mark.parametrize('window', [1, 3, 5])
def test_winner_take_all_matches_loops(window):
    torch.manual_seed(window)
    a = torch.randn([2, 4, 7, 6], dtype=torch.float64)
    got = wta.winner_take_all(a, window)
    np.testing.assert_array_equal(got.numpy(), _np_wta(a.numpy(), window))
    kept = (got != 0).sum(dim=1)
    assert kept.max() <= 1  # one channel per site
    if window == 3:  # no two kept sites touch (a 3x3 neighbourhood holds one winner unless values tie)
        sites = (kept > 0).double().unsqueeze(1)
        assert F.conv2d(sites, torch.ones([1, 1, 3, 3], dtype=torch.float64), padding=1)[sites > 0].max() == 1


def test_winner_take_all_gradient_reaches_winners_only():
    a = torch.tensor([[[[0.5, 0.1], [-1.0, 0.2]], [[0.3, 0.4], [-2.0, 0.1]]]], dtype=torch.float64,
                     requires_grad=True)
    out = wta.winner_take_all(a, 1)
    expected = torch.tensor([[[[0.5, 0.0], [0.0, 0.2]], [[0.0, 0.4], [0.0, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)  # the all-negative site keeps nothing
    out.sum().backward()
    torch.testing.assert_close(a.grad, (expected != 0).double())
    # Away from ties the selection is locally constant: gradcheck sees a masked identity.
    b = torch.randn([2, 3, 5, 5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: wta.winner_take_all(x, 3), (b,), eps=1e-7)
    with pytest.raises(ValueError, match='odd'):
        wta.winner_take_all(b, 2)
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'):
        wta.winner_take_all(b[0], 1)


def test_winner_take_all_straight_through_passes_a_share_of_the_gradient_to_losers():
    torch.manual_seed(3)
    a = torch.randn([2, 4, 6, 6], dtype=torch.float64, requires_grad=True)
    upstream = torch.randn([2, 4, 6, 6], dtype=torch.float64)
    keep = wta.wta_mask(a, 3).double()
    for b in (0.0, 0.25, 1.0):
        out = wta.winner_take_all(a, 3, straight_through=b)
        torch.testing.assert_close(out, a * keep, rtol=0, atol=0)  # the images do not change
        (grad,) = torch.autograd.grad((out * upstream).sum(), a)
        # Winners get all of their gradient, every other entry b of it (hand-written from the definition).
        torch.testing.assert_close(grad, upstream * (keep + b * (1 - keep)))
    assert 0 < keep.mean() < 0.5  # both kinds of entry are tested
    # By design this is not the derivative of the forward value (gradcheck would fail for b > 0): the losers'
    # share is a surrogate, like a straight-through estimator.
    with pytest.raises(ValueError, match='straight_through must be >= 0'):
        wta.winner_take_all(a, 3, straight_through=-0.1)


def test_winner_take_all_jitter_matches_loops_on_the_jittered_scores():
    """With jitter the suppression runs on best + jitter * std(best per image) * noise; the kept values are the
    unjittered winners. Reproduced with the same generator and the loops above."""
    torch.manual_seed(0)
    a = torch.rand([2, 4, 9, 8], dtype=torch.float64)
    got = wta.winner_take_all(a, 3, jitter=0.7, generator=torch.Generator().manual_seed(5))
    best = a.amax(dim=1, keepdim=True)
    noise = torch.randn(best.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    score = best + 0.7 * best.flatten(1).std(dim=1).reshape(-1, 1, 1, 1) * noise
    winners = (a == best).double()
    # _np_wta on a tensor whose channel maximum is the jittered score at the winning channel.
    surrogate = winners * score + (1 - winners) * (score - 10)
    keep = _np_wta((surrogate + 100).numpy(), 3) != 0
    np.testing.assert_array_equal(got.numpy(), np.where(keep, a.numpy(), 0))
    assert torch.equal(got, wta.winner_take_all(a, 3, jitter=0.7, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(wta.winner_take_all(a, 3, jitter=0.0), wta.winner_take_all(a, 3))
    with pytest.raises(ValueError, match='jitter'):
        wta.winner_take_all(a, 1, jitter=0.5)
    with pytest.raises(ValueError, match='jitter'):
        wta.winner_take_all(a, 3, jitter=-1)


def test_winner_take_all_jitter_adds_sites_to_a_smooth_map():
    """A smooth feature map has few local maxima; jitter brings the density towards one site per 3x3 window."""
    y, x = torch.meshgrid(torch.arange(32.), torch.arange(32.), indexing='ij')
    smooth = (2 + torch.sin(y / 5) * torch.cos(x / 4)).expand(8, 1, 32, 32).contiguous()
    def sites_per_window(jitter):
        kept = wta.winner_take_all(smooth, 3, jitter=jitter, generator=torch.Generator().manual_seed(0))
        return 9 * float((kept > 0).double().mean())
    assert sites_per_window(0.0) < 0.2
    assert 0.6 < sites_per_window(3.0) < 1.3


@pytest.mark.parametrize('window', [1, 3])
def test_winner_take_all_min_value_drops_weak_winners_after_the_suppression(window):
    torch.manual_seed(10 + window)
    a = torch.randn([2, 4, 7, 6], dtype=torch.float64)
    plain = wta.winner_take_all(a, window)
    thr = float(plain[plain != 0].median())
    got = wta.winner_take_all(a, window, min_value=thr)
    np.testing.assert_array_equal(got.numpy(), _np_wta(a.numpy(), window, min_value=thr))
    assert 0 < int((got != 0).sum()) < int((plain != 0).sum())
    assert torch.equal(got, plain * (plain > thr))       # a weak maximum still suppresses its neighbours
    hand = torch.tensor([[[[0.5, 0.3, 0.0, 0.9]]]], dtype=torch.float64)  # 0.5 suppresses 0.3, then is dropped
    assert wta.winner_take_all(hand, 3, min_value=0.6).flatten().tolist() == [0, 0, 0, 0.9]
    assert wta.winner_take_all(hand, 3).flatten().tolist() == [0.5, 0, 0, 0.9]
    assert wta.painted_mass(hand, 3, min_value=0.6).tolist() == [pytest.approx(0.9)]
    with pytest.raises(ValueError, match='min_value must be >= 0'):
        wta.winner_take_all(a, window, min_value=-1)
    heads = heads_lib.OutputHeads({4: 2, 8: 3}, img_channels=3, kernel_size=3, top_wta=3, top_wta_min=0.8)
    assert heads.head(8).wta_min == 0.8 and heads.head(4).wta_min == 0
    feats = {8: torch.rand([2, 3, 8, 8]) * 2}
    base = heads_lib.OutputHeads({4: 2, 8: 3}, img_channels=3, kernel_size=3)
    base.load_state_dict(heads.state_dict())
    torch.testing.assert_close(heads(feats)[8], base({8: wta.winner_take_all(feats[8], 3, min_value=0.8)})[8])
    assert pickle.loads(pickle.dumps(heads)).head(8).wta_min == 0.8
    with pytest.raises(ValueError, match='wta_min'):
        heads_lib.OutputHeads({4: 2}, img_channels=3, top_wta_min=0.5)


def test_top_wta_head_paints_one_atom_per_winner_and_survives_pickle():
    heads = heads_lib.OutputHeads({4: 2, 8: 3}, img_channels=3, kernel_size=3, top_wta=3)
    assert heads.head(8).wta == 3 and heads.head(4).wta == 0
    torch.manual_seed(0)
    feats = {4: torch.rand([2, 2, 4, 4]), 8: torch.rand([2, 3, 8, 8])}
    out = heads(feats)
    plain = heads_lib.OutputHeads({4: 2, 8: 3}, img_channels=3, kernel_size=3)
    plain.load_state_dict(heads.state_dict())
    torch.testing.assert_close(out[4], plain(feats)[4])  # lower heads unchanged
    torch.testing.assert_close(out[8], plain({8: wta.winner_take_all(feats[8], 3)})[8])
    clone = pickle.loads(pickle.dumps(heads))
    torch.testing.assert_close(clone(feats)[8], out[8], rtol=0, atol=0)
    with pytest.raises(ValueError, match='wta'):
        heads_lib.OutputHeads({4: 2}, img_channels=3, top_wta=2)
    jittered = heads_lib.OutputHeads({4: 2, 8: 3}, img_channels=3, kernel_size=3, top_wta=3, top_wta_jitter=0.5)
    jittered.load_state_dict(heads.state_dict())
    assert jittered.head(8).wta_jitter == 0.5 and jittered.head(4).wta_jitter == 0
    torch.manual_seed(1)
    first = jittered(feats)[8]
    torch.manual_seed(1)
    torch.testing.assert_close(jittered(feats)[8], first, rtol=0, atol=0)  # the draw follows the global generator
    torch.manual_seed(1)
    expected = plain({8: wta.winner_take_all(feats[8], 3, jitter=0.5)})[8]
    torch.testing.assert_close(first, expected)
    assert not torch.equal(first, out[8])
    assert pickle.loads(pickle.dumps(jittered)).head(8).wta_jitter == 0.5
    with pytest.raises(ValueError, match='wta_jitter'):
        heads_lib.OutputHeads({4: 2}, img_channels=3, top_wta=1, top_wta_jitter=0.5)
    # Straight-through losers: same images, the top head's losing features get a share of the gradient.
    st = heads_lib.OutputHeads({4: 2, 8: 3}, img_channels=3, kernel_size=3, top_wta=3, top_wta_straight_through=0.5)
    st.load_state_dict(heads.state_dict())
    assert st.head(8).wta_straight_through == 0.5 and st.head(4).wta_straight_through == 0
    f8 = feats[8].clone().requires_grad_(True)
    torch.testing.assert_close(st({8: f8})[8], out[8], rtol=0, atol=0)
    (g_st,) = torch.autograd.grad(st({8: f8})[8].square().sum(), f8)
    (g_plain,) = torch.autograd.grad(heads({8: f8})[8].square().sum(), f8)
    losers = ~wta.wta_mask(feats[8], 3)
    assert torch.equal(g_plain[losers], torch.zeros_like(g_plain[losers])) and g_st[losers].abs().sum() > 0
    torch.testing.assert_close(g_st[~losers], g_plain[~losers])
    assert pickle.loads(pickle.dumps(st)).head(8).wta_straight_through == 0.5
    with pytest.raises(ValueError, match='wta_straight_through'):
        heads_lib.OutputHeads({4: 2}, img_channels=3, top_wta=0, top_wta_straight_through=0.5)


# ----------------------------------------------------------------------------------------------------------------------
# Sparsity.

def _np_density(a, mode, q, s, k=1, eps=1e-4):
    """Explicit loops over samples and windows."""
    N, C, H, W = a.shape
    out = []
    for n in range(N):
        row = []
        for y in range(0, H - q + 1, s):
            for x in range(0, W - q + 1, s):
                p = a[n, :, y:y + q, x:x + q]
                v = p.reshape(-1)
                D = v.size
                rms = math.sqrt((v ** 2).mean() + eps)
                if mode == 'l1':
                    row.append(np.maximum(v, 0).mean() / rms)
                elif mode == 'hoyer':
                    row.append(max((math.sqrt(D) * np.abs(v).mean() / rms - 1) / (math.sqrt(D) - 1), 0.0))
                else:
                    e = (p ** 2).sum(axis=(1, 2))
                    row.append((e.sum() - np.sort(e)[::-1][:k].sum()) / (e.sum() + D * eps))
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize('mode', ['l1', 'hoyer', 'topk'])
@pytest.mark.parametrize('q,s', [(1, None), (2, None), (3, 1)])
def test_patch_density_matches_loops(mode, q, s):
    a = torch.randn([2, 5, 6, 6], dtype=torch.float64)
    got = sparsity.patch_density(a, mode, patch_size=q, patch_stride=s, topk=2)
    ref = _np_density(a.numpy(), mode, q, q if s is None else s, k=2)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_density_on_known_activations():
    C = 9
    onehot = torch.zeros([1, C, 4, 4], dtype=torch.float64)
    onehot[0, torch.arange(16) % C, torch.arange(16) // 4, torch.arange(16) % 4] = 3.0
    uniform = torch.full([1, C, 4, 4], 2.0, dtype=torch.float64)
    kw = dict(eps=1e-12)
    # Hoyer: one-hot -> sparsity 1 (density 0), uniform -> sparsity 0 (density 1).
    torch.testing.assert_close(sparsity.patch_density(onehot, 'hoyer', **kw), torch.zeros([1, 16], dtype=torch.float64))
    torch.testing.assert_close(sparsity.patch_density(uniform, 'hoyer', **kw), torch.ones([1, 16], dtype=torch.float64))
    # L1 of the positive part / (sqrt(D) |a|_2): 1/sqrt(C) for one-hot, 1 for uniform, 0 for negative patches.
    torch.testing.assert_close(sparsity.patch_density(onehot, 'l1', **kw),
                               torch.full([1, 16], 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(sparsity.patch_density(uniform, 'l1', **kw), torch.ones([1, 16], dtype=torch.float64))
    assert sparsity.patch_density(-uniform, 'l1', **kw).abs().max() == 0
    # Two equal positives and one equal negative out of 4 entries: L1+ = 2v, |a|_2 = sqrt(3) v -> 2 / (2 sqrt(3)).
    mixed = torch.tensor([1.0, 1.0, -1.0, 0.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    assert sparsity.patch_density(mixed, 'l1', **kw).item() == pytest.approx(1 / math.sqrt(3))
    # Top-k: k active channels -> 0; uniform -> 1 - k / C.
    assert sparsity.patch_density(onehot, 'topk', topk=1, **kw).abs().max() == 0
    torch.testing.assert_close(sparsity.patch_density(uniform, 'topk', topk=3, **kw),
                               torch.full([1, 16], 1 - 3 / C, dtype=torch.float64))
    # 2x2 patches of the one-hot layer: 4 active entries of D = 36 -> L1 density 4/(6 * 2) = 1/3.
    torch.testing.assert_close(sparsity.patch_density(onehot, 'l1', patch_size=2, **kw),
                               torch.full([1, 4], 4 / (6 * 2), dtype=torch.float64))
    # All-zero activations count as perfectly sparse.
    for mode in sparsity.SPARSITY_MODES:
        assert sparsity.patch_density(torch.zeros([1, C, 2, 2]), mode).abs().max() == 0


@pytest.mark.parametrize('mode', ['l1', 'hoyer', 'topk'])
def test_density_gradcheck(mode):
    shape = [1, 3, 4, 4]
    a = (torch.rand(shape, dtype=torch.float64) + 0.1) * torch.sign(torch.randn(shape, dtype=torch.float64))
    fn = lambda t: sparsity.patch_density(t, mode, patch_size=2, topk=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a.requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_sparsity_penalty_weights_target_and_report():
    feats = {4: torch.randn([3, 6, 4, 4], dtype=torch.float64), 8: torch.randn([3, 4, 8, 8], dtype=torch.float64),
             16: torch.randn([3, 2, 16, 16], dtype=torch.float64)}
    pen = sparsity.SparsityPenalty({4: 2.0, 8: 0.5, 16: 0.0}, mode='hoyer', patch_size=2)
    terms, report = pen(feats)
    assert set(terms) == {4, 8}
    for r, w in ((4, 2.0), (8, 0.5)):
        dens = sparsity.patch_density(feats[r], 'hoyer', patch_size=2).mean(dim=1)
        assert terms[r].shape == (3,)
        torch.testing.assert_close(terms[r], w * dens)
        assert report[f'density_r{r}'].item() == pytest.approx(dens.mean().item())
    # Target: zero (and zero gradient) below it, the excess above it.
    a = feats[8].clone().requires_grad_(True)
    dens = sparsity.patch_density(a, 'l1').mean(dim=1).detach()
    low = sparsity.SparsityPenalty({8: 1.0}, mode='l1', target=float(dens.max()) + 0.01)
    terms, _ = low({8: a})
    assert terms[8].abs().max() == 0
    terms[8].sum().backward()
    assert a.grad.abs().max() == 0
    t = float(dens.min()) - 0.01
    high = sparsity.SparsityPenalty({8: 3.0}, mode='l1', target={8: t})
    torch.testing.assert_close(high({8: a})[0][8], 3.0 * (dens - t))
    mid = sparsity.SparsityPenalty({8: 1.0}, mode='l1', target=float(dens.median()))
    assert (mid({8: a})[0][8] == 0).sum() >= 1 and (mid({8: a})[0][8] > 0).sum() >= 1


def test_sparsity_rejects_bad_options():
    a = torch.randn([1, 3, 4, 4])
    with pytest.raises(ValueError, match='sparsity mode'):
        sparsity.patch_density(a, 'l0')
    with pytest.raises(ValueError, match='topk'):
        sparsity.patch_density(a, 'topk', topk=3)
    with pytest.raises(ValueError, match='larger than'):
        sparsity.patch_density(a, 'l1', patch_size=5)
    with pytest.raises(ValueError, match='target'):
        sparsity.SparsityPenalty({4: 1.0}, target=1.5)
    with pytest.raises(ValueError, match='weight'):
        sparsity.SparsityPenalty({4: -1.0})


# ----------------------------------------------------------------------------------------------------------------------
# Pair discriminators.

def test_pair_discriminators_shapes_and_gradients():
    D = pair_disc.PairDiscriminators([4, 8, 16], img_channels=3, channels={8: 8, 16: 6}, depth=2,
                                     mbstd_group_size=2, upsample='fir')
    assert D.levels == [8, 16] and D.block(16).channels == 6
    x = torch.randn([4, 3, 16, 16], requires_grad=True)
    pyr = pyramid.build_pyramid(x, [4, 8, 16])
    scores = D(pyr)
    assert set(scores) == {8, 16} and all(s.shape == (4, 1) for s in scores.values())
    sum(s.sum() for s in scores.values()).backward()
    assert x.grad.abs().sum() > 0
    for name, p in D.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Only levels whose pair is present run.
    assert set(D({4: pyr[4], 8: pyr[8]})) == {8}
    assert set(D(pyr, levels=[16])) == {16}
    with pytest.raises(ValueError, match='x_lo must be'):
        D.block(8)(torch.zeros([4, 3, 8, 8]), torch.zeros([4, 3, 8, 8]))
    clone = pickle.loads(pickle.dumps(D))
    with torch.no_grad():
        for r, s in D(pyr).items():
            torch.testing.assert_close(clone(pyr)[r], s, rtol=0, atol=0)


def test_pair_discriminator_is_local():
    depth = 2
    D = pair_disc.PairDiscriminator(16, img_channels=3, channels=8, depth=depth, kernel_size=3, upsample='nearest')
    lo, hi = torch.randn([1, 3, 8, 8]), torch.randn([1, 3, 16, 16])
    base = D.score_map(lo, hi)[0, 0]
    assert base.shape == (16, 16)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing='ij')

    hi2 = hi.clone()
    hi2[0, :, 3, 5] += 5.0
    diff = (D.score_map(lo, hi2)[0, 0] - base).abs()
    far = torch.maximum((yy - 3).abs(), (xx - 5).abs()) > depth
    assert diff[far].max() == 0 and diff[~far].max() > 0

    lo2 = lo.clone()
    lo2[0, :, 6, 1] += 5.0  # covers hi pixels (12..13, 2..3) after nearest upsampling
    diff = (D.score_map(lo2, hi)[0, 0] - base).abs()
    dist_y = torch.clamp(12 - yy, min=0) + torch.clamp(yy - 13, min=0)
    dist_x = torch.clamp(2 - xx, min=0) + torch.clamp(xx - 3, min=0)
    far = torch.maximum(dist_y, dist_x) > depth
    assert diff[far].max() == 0 and diff[~far].max() > 0


def test_pair_r1_penalty_closed_form_on_linear_discriminator():
    r, C = 8, 3
    D = pair_disc.PairDiscriminator(r, img_channels=C, depth=0, upsample='nearest')
    w = (D.out.weight * D.out.weight_gain).detach()[0, :, 0, 0]  # [2C]: first C act on up(x_lo), last C on x_hi
    lo = torch.randn([5, C, r // 2, r // 2], requires_grad=True)
    hi = torch.randn([5, C, r, r], requires_grad=True)
    scores = D(lo, hi)
    # score = mean_p (w_lo . up(x_lo)(p) + w_hi . x_hi(p)) + b: d/dx_hi = w_hi / r^2 at each of r^2 pixels,
    # d/dx_lo = 4 w_lo / r^2 at each of (r/2)^2 pixels.
    expected = (w[C:].square().sum() + 4 * w[:C].square().sum()) / r ** 2
    pen = pair_disc.pair_r1_penalty(scores, [lo, hi])
    assert pen.shape == (5,)
    torch.testing.assert_close(pen, expected.expand(5), rtol=1e-5, atol=0)
    # Only x_hi: the x_hi part of the closed form.
    pen_hi = pair_disc.pair_r1_penalty(D(lo, hi), [hi])
    torch.testing.assert_close(pen_hi, (w[C:].square().sum() / r ** 2).expand(5), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match='does not require grad'):
        pair_disc.pair_r1_penalty(scores, [lo.detach()])


def test_pair_r1_penalty_is_differentiable_wrt_discriminator():
    D = pair_disc.PairDiscriminator(8, img_channels=1, channels=4, depth=2)
    lo = torch.randn([2, 1, 4, 4], requires_grad=True)
    hi = torch.randn([2, 1, 8, 8], requires_grad=True)
    pen = pair_disc.pair_r1_penalty(D(lo, hi), [lo, hi])
    assert (pen > 0).all()
    pen.sum().backward()
    assert D.conv0.weight.grad is not None and D.conv0.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------------
# Schedule.

def _host_block_key(name):
    """The host optimiser's grouping of parameter names into blocks (training_loop._block_param_groups)."""
    parts = name.split('.')
    return '.'.join(parts[:2]) if parts[0] == 'synthesis' and len(parts) > 2 else (parts[0] if len(parts) > 1 else '')


@pytest.mark.parametrize('policy,earlier', [('frozen', 0.0), ('finetune', 0.25), ('joint', 1.0)])
@pytest.mark.parametrize('mapping', ['follow', 'train'])
def test_lr_multipliers_per_stage(policy, earlier, mapping):
    G = tiny_G()
    heads = heads_lib.OutputHeads.for_generator(G, kernel_size=3)
    sched = schedule_lib.FSRSchedule([4, 8, 16], stage_kimg=[1, 2], policy=policy, finetune_lr_mult=0.25,
                                     mapping=mapping)
    # Expected multiplier per block resolution at each stage (written out by hand).
    table = {0: {4: 1.0, 8: 0.0, 16: 0.0}, 1: {4: earlier, 8: 1.0, 16: 0.0}, 2: {4: earlier, 8: earlier, 16: 1.0}}
    g_names = {p: n for n, p in G.named_parameters()}
    h_names = {p: n for n, p in heads.named_parameters()}
    for stage, expected in table.items():
        mults = sched.lr_multipliers(G, heads, stage)
        assert set(mults) == set(g_names) | set(h_names)  # every parameter, nothing else
        for p, m in mults.items():
            if p in g_names:
                name = g_names[p]
                if name.startswith('mapping.'):
                    want = 1.0 if (mapping == 'train' or stage == 0) else earlier
                else:
                    want = expected[int(name.split('.')[1][1:])]
            else:
                want = expected[int(h_names[p].split('.')[0][1:])]
            assert m == want, (stage, g_names.get(p, h_names.get(p)))
        # Constant within every host optimiser block (the host rejects mixed multipliers in one group).
        for names in (g_names, h_names):
            groups = {}
            for p, n in names.items():
                groups.setdefault(_host_block_key(n), set()).add(mults[p])
            assert all(len(v) == 1 for v in groups.values())
    # The host's growing Stage objects are accepted (matched by resolution), None means all 1.
    stage = sched.growing.at(1500)
    assert sched.lr_multipliers(G, heads, stage) == sched.lr_multipliers(G, heads, 1)
    assert set(sched.lr_multipliers(G, None, None).values()) == {1.0}


def test_start_res_groups_the_lowest_blocks():
    G = tiny_G()
    sched = schedule_lib.FSRSchedule([4, 8, 16], stage_kimg=5, start_res=8, policy='frozen')
    assert sched.stage_resolutions == [8, 16] and sched.num_stages == 2
    assert sched.block_multipliers(0) == {4: 1.0, 8: 1.0, 16: 0.0}
    assert sched.block_multipliers(1) == {4: 0.0, 8: 0.0, 16: 1.0}
    mults = sched.lr_multipliers(G, None, 1)
    assert mults[G.synthesis.b4.const] == 0 and mults[G.synthesis.b16.torgb.weight] == 1
    assert mults[G.mapping.fc0.weight] == 0
    assert sched.growing_kwargs() == dict(resolutions=[8, 16], stage_kimg=[5.0], fade_kimg=0.0)


def test_stage_boundaries_and_fade():
    sched = schedule_lib.FSRSchedule([4, 8, 16], stage_kimg=[1, 2], fade_kimg=0.5)
    assert sched.stage_at(0) == (0, 4, 1.0)
    assert sched.stage_at(999) == (0, 4, 1.0)
    assert sched.stage_at(1000) == (1, 8, 0.0)
    assert sched.stage_at(1250) == (1, 8, 0.5)
    assert sched.stage_at(1500) == (1, 8, 1.0)
    assert sched.stage_at(2999) == (1, 8, 1.0)
    assert sched.stage_at(3100) == (2, 16, pytest.approx(0.2))
    assert sched.stage_at(10 ** 7) == (2, 16, 1.0)
    kw = sched.growing_kwargs()
    assert kw == dict(resolutions=[4, 8, 16], stage_kimg=[1.0, 2.0], fade_kimg=0.5)
    host = growing.GrowingSchedule(**kw)
    for nimg in (0, 999, 1000, 1250, 3100, 5000):
        st = host.at(nimg)
        assert (st.index, st.resolution, st.alpha) == sched.stage_at(nimg)
    assert schedule_lib.FSRSchedule(**sched.to_dict()).to_dict() == sched.to_dict()


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match='policy'):
        schedule_lib.FSRSchedule([4, 8], stage_kimg=1, policy='greedy')
    with pytest.raises(ValueError, match='double'):
        schedule_lib.FSRSchedule([4, 16], stage_kimg=1)
    with pytest.raises(ValueError, match='start_res'):
        schedule_lib.FSRSchedule([4, 8], stage_kimg=1, start_res=32)
    sched = schedule_lib.FSRSchedule([4, 8], stage_kimg=1)
    with pytest.raises(ValueError, match='not covered'):
        sched.lr_multipliers(tiny_G(res=16), None, 0)
    with pytest.raises(ValueError, match='stage must be an index'):
        sched.block_multipliers(2)
