"""The fsr_noise_share metric: how much of each level's variation over images the synthesis noise inputs make, against
a direct computation, and its two limits (no noise: 0; a latent with no effect: 1)."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__)))
from test_fsr_diagnostics import _calc, _tiny_G, tiny_dataset  # noqa: E402,F401

from fsr_plugin import fsr_metrics  # noqa: E402


def _levels(G, z, c, **kwargs):
    x = G(z, c, **kwargs)
    return {16: x, 8: F.avg_pool2d(x, 2)}


def _noisy_G(strength=0.5, seed=0):
    torch.manual_seed(seed)
    G = _tiny_G(16)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(strength)
    return G


def _context(n, seed=3):
    return fsr_metrics.FSRMetricContext(pyramid_fn=_levels, resolutions=(8, 16), moment_images=n, seed=seed)


def test_noise_share_against_direct_computation(tiny_dataset):
    n, seed = 7, 3  # one generator batch
    G = _noisy_G()
    res = _calc('fsr_noise_share', G, tiny_dataset, _context(n, seed))
    z = torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(seed))
    c = torch.zeros([n, 0])
    with torch.no_grad():
        torch.manual_seed(seed)  # the metric's random noise images
        fresh = _levels(G, z, c, noise_mode='random', force_fp32=True)
        fixed = _levels(G, z, c, noise_mode='const', force_fp32=True)
    for r in (8, 16):
        v_fresh = float(fresh[r].double().var(dim=0, unbiased=True).mean())
        v_fixed = float(fixed[r].double().var(dim=0, unbiased=True).mean())
        assert res[f'fsr_noise_var_res{r}'] == pytest.approx(v_fresh, rel=1e-9)
        assert res[f'fsr_noise_var_fixed_res{r}'] == pytest.approx(v_fixed, rel=1e-9)
        assert res[f'fsr_noise_share_res{r}'] == pytest.approx(1 - v_fixed / v_fresh, rel=1e-9)
        assert 0.05 < res[f'fsr_noise_share_res{r}'] < 0.999  # both the noise and the latent move this generator
    # Fixed per seed, and the caller's random stream is left where it was.
    torch.manual_seed(11)
    before = torch.randn(4)
    torch.manual_seed(11)
    again = _calc('fsr_noise_share', G, tiny_dataset, _context(n, seed))
    assert torch.equal(torch.randn(4), before)
    assert again == res


def test_noise_share_limits(tiny_dataset):
    # No noise: the fixed and fresh noise images give the same images, the share is 0.
    res = _calc('fsr_noise_share', _noisy_G(strength=0.0), tiny_dataset, _context(6))
    for r in (8, 16):
        assert res[f'fsr_noise_var_res{r}'] > 0
        assert res[f'fsr_noise_var_fixed_res{r}'] == res[f'fsr_noise_var_res{r}']
        assert res[f'fsr_noise_share_res{r}'] == 0.0
    # A latent with no effect (every style constant): with one fixed noise image all images are the same, share 1.
    G = _noisy_G()
    with torch.no_grad():
        for name, p in G.synthesis.named_parameters():
            if name.endswith('affine.weight'):
                p.zero_()
    res = _calc('fsr_noise_share', G, tiny_dataset, _context(6))
    for r in (8, 16):
        assert res[f'fsr_noise_var_res{r}'] > 1e-6
        assert res[f'fsr_noise_var_fixed_res{r}'] < 1e-12
        assert res[f'fsr_noise_share_res{r}'] == pytest.approx(1.0, abs=1e-9)


def test_noise_share_refuses_what_it_cannot_measure(tiny_dataset):
    assert 'fsr_noise_share' in fsr_metrics.METRIC_NAMES
    with pytest.raises(ValueError, match='at least 2 generated images'):
        _calc('fsr_noise_share', _noisy_G(), tiny_dataset, _context(1))

    class NoNoiseMode(torch.nn.Module):
        z_dim, c_dim, img_resolution, img_channels = 8, 0, 16, 3

        def forward(self, z, c):
            return torch.zeros([z.shape[0], 3, 16, 16])

    with pytest.raises(ValueError, match='takes no noise_mode'):
        _calc('fsr_noise_share', NoNoiseMode(), tiny_dataset, fsr_metrics.FSRMetricContext(moment_images=4))
