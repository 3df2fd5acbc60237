"""The FSR plugin's fast paths compute what the direct expressions compute (values and gradients).

* PairDiscriminator.forward pools the features before the final linear 1x1 layer instead of averaging the score map;
* the 'l1' / 'hoyer' densities are one autograd node with a hand-written backward pass;
* nearest 2x upsampling is a broadcast copy.
Each is compared, in float64, with the composed torch expression it replaces (autograd gives the reference
gradients), and the penalty the plugin adds in the G phase is checked against the direct computation.
"""
import math

import pytest
import torch

from fsr_plugin import pair_disc
from fsr_plugin import sparsity
from fsr_plugin.options import FSRConfig
from fsr_plugin.plugin import FSRPlugin
from training import networks


def _direct_density(a, mode, eps):
    """The composed expression: f(a).mean over the patch entries / sqrt(mean a^2 + eps) (q = 1 patches)."""
    N, C, H, W = a.shape
    flat = a.reshape(N, C, H * W)
    rms = (flat.square().mean(dim=1) + eps).sqrt()
    if mode == 'l1':
        return flat.relu().mean(dim=1) / rms
    sqrt_d = math.sqrt(C)
    return ((sqrt_d * flat.abs().mean(dim=1) / rms - 1) / (sqrt_d - 1)).relu()


@pytest.mark.parametrize('mode', ['l1', 'hoyer'])
def test_density_fast_path_matches_direct_expression(mode):
    torch.manual_seed(0)
    a = torch.randn([3, 7, 5, 5], dtype=torch.float64)
    a[0, :, 0, 0] = 0          # an all-zero patch (eps dominates)
    a[1, 2:5, 1, :] = 0        # exact zeros: relu / abs take derivative 0 there, like torch's
    a[2, :, 3, 3] = -a[2, :, 3, 3].abs()  # a patch without positive entries
    g = torch.randn([3, 25], dtype=torch.float64)
    x1 = a.clone().requires_grad_(True)
    x2 = a.clone().requires_grad_(True)
    got = sparsity.patch_density(x1, mode, eps=1e-4)
    ref = _direct_density(x2, mode, 1e-4)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    got.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-14)
    assert x1.grad.abs().sum() > 0


def test_density_fast_path_float32_and_patches():
    torch.manual_seed(1)
    a = torch.randn([2, 6, 8, 8])
    x1 = a.clone().requires_grad_(True)
    x2 = a.clone().requires_grad_(True)
    got = sparsity.patch_density(x1, 'l1', patch_size=2)
    cols = torch.nn.functional.unfold(x2, kernel_size=2, stride=2)  # [N, C*4, P]
    ref = cols.relu().mean(dim=1) / (cols.square().mean(dim=1) + 1e-4).sqrt()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)
    # Once differentiable: a second derivative is refused instead of silently wrong.
    x3 = a.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sparsity.patch_density(x3, 'l1').sum(), x3, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize('depth,mbstd,upsample', [(2, 4, 'nearest'), (1, 2, 'fir'), (0, 0, 'nearest'),
                                                   (0, 2, 'nearest')])
def test_pair_forward_equals_mean_of_score_map(depth, mbstd, upsample):
    torch.manual_seed(2)
    D = pair_disc.PairDiscriminator(8, img_channels=3, channels=5, depth=depth, mbstd_group_size=mbstd,
                                    upsample=upsample)
    with torch.no_grad():
        for p in D.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-zero biases too
    lo = torch.randn([4, 3, 4, 4])
    hi = torch.randn([4, 3, 8, 8])
    lo1, hi1 = lo.clone().requires_grad_(True), hi.clone().requires_grad_(True)
    lo2, hi2 = lo.clone().requires_grad_(True), hi.clone().requires_grad_(True)
    got = D(lo1, hi1)
    ref = D.score_map(lo2, hi2).mean(dim=[2, 3])  # the direct form (float32: the blocks compute in float32)
    assert got.shape == (4, 1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn([4, 1])
    grads_got = torch.autograd.grad(got, [lo1, hi1] + list(D.parameters()), g)
    grads_ref = torch.autograd.grad(ref, [lo2, hi2] + list(D.parameters()), g)
    for a, b in zip(grads_got, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_nearest_upsample_is_pixel_replication():
    x = torch.randn([2, 3, 4, 5])
    up = pair_disc.upsample2x(x, 'nearest')
    assert up.shape == (2, 3, 8, 10)
    for i in range(8):
        for j in range(10):
            assert torch.equal(up[:, :, i, j], x[:, :, i // 2, j // 2])


def test_plugin_g_phase_terms_match_direct_computation():
    """The G-phase terms of the plugin (shared float32 features, pooled pair scores, fused sparsity) equal the
    losses written out directly from the components."""
    torch.manual_seed(3)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16))
    cfg = FSRConfig(enabled=True, sparsity='l1', sparsity_weight=0.05, pair=True, pair_channels=6, pair_mbstd=2)
    plugin = FSRPlugin(cfg, r1_gamma=1.0)
    plugin.extra_modules(G, None, None, 'cpu')

    class _Loss:
        loss_type = 'nonsaturating'
    z = torch.randn([4, 8])
    img, feats = G.synthesis(G.mapping(z, None), return_features=True)
    terms = plugin.loss_terms('G', dict(loss=_Loss(), gen_img=img, gen_features=feats))
    assert set(terms) == {'sparsity', 'pair_G'}
    pyr = {r: plugin.heads.head(r)(f) for r, f in feats.items()}
    ref_pair = sum(torch.nn.functional.softplus(-plugin.pairs.block(r).score_map(pyr[r // 2], pyr[r]).mean(
        dim=[2, 3])).squeeze(1) for r in plugin.pairs.levels)
    torch.testing.assert_close(terms['pair_G'], ref_pair, rtol=1e-5, atol=1e-6)
    ref_sp = sum(0.05 * _direct_density(f.float(), 'l1', 1e-4).mean(dim=1) for f in feats.values())
    torch.testing.assert_close(terms['sparsity'], ref_sp, rtol=1e-5, atol=1e-7)
