"""--fsr-contrast: the patch total-variance (contrast) matching loss against a direct computation, its unbiased
split-half form, its gradient, and its wiring into the generator phase and the CLI."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin import patch_moment_loss as pml  # noqa: E402
from fsr_plugin import patch_swd  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from training import training_loop  # noqa: E402


def _total_variance(rows):
    rows = rows.detach().numpy()
    return float(np.trace(np.cov(rows.T, bias=True)))


def test_contrast_loss_matches_numpy_and_scales_as_g_squared():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn([200, 12], generator=gen, dtype=torch.float64) * 0.7 + 0.3
    fake = torch.randn([150, 12], generator=gen, dtype=torch.float64) * 0.5 - 0.1
    t_f, t_r = _total_variance(fake), _total_variance(real)
    value = pml.contrast_matching_loss(fake, real)
    assert float(value) == pytest.approx((t_f - t_r) ** 2 / t_r ** 2, rel=1e-10)
    # Deviations from the mean scaled by g: (g^2 - 1)^2, whatever the mean.
    for g in (0.8, 1.0, 1.3):
        scaled = (real - real.mean(0)) * g + 5.0
        assert float(pml.contrast_matching_loss(scaled, real)) == pytest.approx((g * g - 1) ** 2, abs=1e-12)


def test_contrast_loss_split_half_matches_cross_product():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn([40, 6], generator=gen, dtype=torch.float64)
    fake = 1.5 * torch.randn([30, 6], generator=gen, dtype=torch.float64)
    value = pml.contrast_matching_loss(fake, real, split_fake=10, split_real=25)
    diff_a = _total_variance(fake[:10]) - _total_variance(real[:25])
    diff_b = _total_variance(fake[10:]) - _total_variance(real[25:])
    assert float(value) == pytest.approx(diff_a * diff_b / _total_variance(real) ** 2, rel=1e-10)
    with pytest.raises(ValueError, match='both split_fake and split_real'):
        pml.contrast_matching_loss(fake, real, split_fake=10)
    with pytest.raises(ValueError, match='split_real=40 must leave rows on both sides of 40'):
        pml.contrast_matching_loss(fake, real, split_fake=10, split_real=40)
    with pytest.raises(ValueError, match=r'expected fake \[N, D\] and real \[M, D\]'):
        pml.contrast_matching_loss(fake, real[:, :5])


def test_contrast_loss_gradcheck():
    gen = torch.Generator().manual_seed(2)
    real = torch.randn([9, 4], generator=gen, dtype=torch.float64)
    fake = torch.randn([8, 4], generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: pml.contrast_matching_loss(f, real), (fake,))
    assert torch.autograd.gradcheck(lambda f: pml.contrast_matching_loss(f, real, split_fake=4, split_real=5),
                                    (fake,))


def test_unbiased_contrast_estimates_the_population_mismatch():
    """Fakes with 1.2x the reals' variance: the split-half term's mean over batches is (1.2 - 1)^2 = 0.04 (up to the
    (1 - 1/n) factor both sides share); the plain term's mean lies above it by the estimates' variance."""
    gen = torch.Generator().manual_seed(3)
    plain, split = [], []
    for _ in range(400):
        real = torch.randn([4, 1, 6, 6], generator=gen, dtype=torch.float64)
        fake = 1.2 ** 0.5 * torch.randn([4, 1, 6, 6], generator=gen, dtype=torch.float64)
        plain.append(float(pml.level_contrast_losses({6: fake}, {6: real}, {6: 1.0})[6][1]))
        split.append(float(pml.level_contrast_losses({6: fake}, {6: real}, {6: 1.0}, unbiased=True)[6][1]))
    split = np.array(split)
    assert abs(split.mean() - 0.04) < 3 * split.std() / len(split) ** 0.5, split.mean()
    assert np.mean(plain) > 0.04 + 0.02


def test_level_contrast_losses_weights_ratio_and_skips():
    torch.manual_seed(0)
    fake = {4: torch.randn(4, 3, 4, 4).double(), 8: 0.5 * torch.randn(4, 3, 8, 8).double(),
            2: torch.randn(4, 3, 2, 2).double()}
    real = {4: torch.randn(6, 3, 4, 4).double(), 8: torch.randn(6, 3, 8, 8).double(),
            2: torch.randn(6, 3, 2, 2).double()}
    out = pml.level_contrast_losses(fake, real, {2: 1.0, 4: 0.0, 8: 3.0})
    assert set(out) == {8}  # 4 has weight 0; 2 is smaller than the patch
    rows_f, rows_r = patch_swd.patch_rows(fake[8], 3), patch_swd.patch_rows(real[8], 3)
    expected = pml.contrast_matching_loss(rows_f, rows_r)
    torch.testing.assert_close(out[8][0], 3 * expected)
    assert float(out[8][2]) == pytest.approx(_total_variance(rows_f) / _total_variance(rows_r), rel=1e-10)
    split = pml.level_contrast_losses(fake, real, {8: 1.0}, unbiased=True)[8][1]
    torch.testing.assert_close(split, pml.contrast_matching_loss(rows_f, rows_r, split_fake=2 * 36,
                                                                 split_real=3 * 36))
    with pytest.raises(ValueError, match='at least 2 fake images, got 1'):
        pml.level_contrast_losses({8: fake[8][:1]}, real, {8: 1.0}, unbiased=True)


def test_contrast_descent_restores_a_dim_sample():
    """Gradient descent on the term alone brings a dimmed copy of the reals back to their total variance."""
    gen = torch.Generator().manual_seed(4)
    real = torch.randn([8, 3, 8, 8], generator=gen, dtype=torch.float64)
    fake = (0.6 * real.clone()).requires_grad_(True)
    opt = torch.optim.SGD([fake], lr=20.0)
    for _ in range(100):
        opt.zero_grad()
        pml.level_contrast_losses({8: fake}, {8: real}, {8: 1.0})[8][0].backward()
        opt.step()
    ratio = pml.level_contrast_losses({8: fake.detach()}, {8: real}, {8: 1.0})[8][2]
    assert float(ratio) == pytest.approx(1.0, abs=0.01)


def test_fsr_contrast_trains_reports_and_cli(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_contrast='8:2,16:3', fsr_moments_unbiased=True),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    os.makedirs(tmp_path / 'run')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    assert plugin.contrast_weights == {8: 2.0, 16: 3.0} and not plugin.moment_weights
    stats = [json.loads(line) for line in (tmp_path / 'run' / 'stats.jsonl').read_text().splitlines()][-1]
    for key in ('Loss/fsr/contrast', 'FSR/contrast_r8', 'FSR/contrast_r16', 'FSR/contrast_ratio_r16'):
        assert key in stats and np.isfinite(stats[key]['mean']), key
    assert stats['FSR/contrast_ratio_r8']['mean'] > 0 and 'FSR/contrast_r4' not in stats
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + ['--fsr=1', '--fsr-contrast=8:5,16:10'],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_contrast": "8:5,16:10"' in res.stdout
    for bad, message in (('--fsr-contrast=-1', 'weights must be >= 0'), ('--fsr-contrast=12:1', '12 is not a synth'),
                         ('--fsr-contrast=x', 'expected a number')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', bad], tmp_path)
        assert res.returncode != 0 and message in res.stderr, (bad, res.stderr[-2000:])
