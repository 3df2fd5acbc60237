"""--fsr-image-moments: moment matching of the images' mean colours per level, against a direct computation, its
gradient, and its wiring into the generator phase and the CLI."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin import patch_moment_loss as pml  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from training import training_loop  # noqa: E402


def test_image_mean_losses_match_numpy():
    gen = torch.Generator().manual_seed(0)
    fake = {8: torch.randn([6, 3, 8, 8], generator=gen, dtype=torch.float64) + torch.randn([6, 3, 1, 1], generator=gen,
                                                                                           dtype=torch.float64),
            4: torch.randn([6, 3, 4, 4], generator=gen, dtype=torch.float64)}
    real = {8: torch.randn([5, 3, 8, 8], generator=gen, dtype=torch.float64) + 0.3,
            4: torch.randn([5, 3, 4, 4], generator=gen, dtype=torch.float64)}
    out = pml.level_image_mean_losses(fake, real, {8: 2.0, 4: 0.0})
    assert set(out) == {8}
    mf = fake[8].numpy().mean(axis=(2, 3))
    mr = real[8].numpy().mean(axis=(2, 3))
    cf, cr = np.cov(mf.T, bias=True), np.cov(mr.T, bias=True)
    mean_term = np.sum((mf.mean(0) - mr.mean(0)) ** 2) / np.trace(cr)
    cov_term = np.sum((cf - cr) ** 2) / np.sum(cr ** 2)
    assert float(out[8][1]) == pytest.approx(mean_term, rel=1e-10)
    assert float(out[8][2]) == pytest.approx(cov_term, rel=1e-10)
    assert float(out[8][0]) == pytest.approx(2 * (mean_term + cov_term), rel=1e-10)
    # Split-half: cross products over halves of the images.
    split = pml.level_image_mean_losses(fake, real, {8: 1.0}, unbiased=True)[8]
    ca, cb = np.cov(mf[:3].T, bias=True), np.cov(mf[3:].T, bias=True)
    ra, rb = np.cov(mr[:2].T, bias=True), np.cov(mr[2:].T, bias=True)
    assert float(split[2]) == pytest.approx(np.sum((ca - ra) * (cb - rb)) / np.sum(cr ** 2), rel=1e-10)
    with pytest.raises(ValueError, match='at least 2 fake images, got 1'):
        pml.level_image_mean_losses({8: fake[8][:1]}, real, {8: 1.0}, unbiased=True)


def test_image_mean_losses_see_an_image_wide_colour_shift_that_patches_barely_see():
    """Each fake image = a real image plus its own random colour offset: patch moments change little, the image-mean
    covariance term a lot."""
    gen = torch.Generator().manual_seed(1)
    real = torch.randn([64, 3, 16, 16], generator=gen, dtype=torch.float64)
    other = torch.randn([64, 3, 16, 16], generator=gen, dtype=torch.float64)
    shifted = other + 0.25 * torch.randn([64, 3, 1, 1], generator=gen, dtype=torch.float64)
    patch_cov = pml.level_moment_losses({16: shifted}, {16: real}, {16: 1.0})[16][2]
    image_cov = pml.level_image_mean_losses({16: shifted}, {16: real}, {16: 1.0})[16][2]
    assert float(image_cov) > 100 * float(patch_cov), (float(patch_cov), float(image_cov))


def test_image_mean_loss_gradcheck():
    gen = torch.Generator().manual_seed(2)
    real = {4: torch.randn([5, 3, 4, 4], generator=gen, dtype=torch.float64)}
    fake = torch.randn([4, 3, 4, 4], generator=gen, dtype=torch.float64, requires_grad=True)
    for unbiased in (False, True):
        assert torch.autograd.gradcheck(
            lambda f: pml.level_image_mean_losses({4: f}, real, {4: 1.0}, unbiased=unbiased)[4][0], (fake,))


def test_fsr_image_moments_trains_reports_and_cli(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_image_moments='8:2,16:3', fsr_moments_unbiased=True),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    os.makedirs(tmp_path / 'run')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    assert plugin.image_moment_weights == {8: 2.0, 16: 3.0}
    stats = [json.loads(line) for line in (tmp_path / 'run' / 'stats.jsonl').read_text().splitlines()][-1]
    for key in ('Loss/fsr/image_moments', 'FSR/image_mean_r8', 'FSR/image_cov_r16'):
        assert key in stats and np.isfinite(stats[key]['mean']), key
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + ['--fsr=1', '--fsr-image-moments=16:5'],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_image_moments": "16:5"' in res.stdout
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-image-moments=-1'],
                    tmp_path)
    assert res.returncode != 0 and 'weights must be >= 0' in res.stderr
