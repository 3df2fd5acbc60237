"""--fsr-mean-image: the per-position first-moment loss against a direct computation, its split-half form's
expectation, its gradient, that descent removes a fixed pattern, and its wiring into training and the CLI."""
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


def _numpy_value(fake, real):
    f, r = fake.numpy().astype(np.float64), real.numpy().astype(np.float64)
    diff = f.mean(axis=0) - r.mean(axis=0)  # [C, H, W]
    spread = sum(r[:, c].var() for c in range(r.shape[1]))
    return (diff ** 2).sum(axis=0).mean() / spread


def test_mean_image_loss_matches_numpy_and_scales():
    gen = torch.Generator().manual_seed(0)
    fake, real = torch.randn([6, 3, 5, 5], generator=gen), 2 * torch.randn([8, 3, 5, 5], generator=gen)
    np.testing.assert_allclose(float(pml.mean_image_loss(fake, real)), _numpy_value(fake, real), rtol=1e-5)
    # A constant shift of every pixel by one real pixel standard deviation (in every channel, reals of unit variance
    # per channel: total variance C) scores 1 against the reals' own mean image.
    real = torch.randn([4000, 2, 3, 3], generator=gen)
    real = (real - real.mean(dim=[0, 2, 3], keepdim=True)) / real.std(dim=[0, 2, 3], keepdim=True, unbiased=False)
    shifted = real + torch.tensor([1.0, 1.0]).reshape(1, 2, 1, 1) / np.sqrt(2)
    np.testing.assert_allclose(float(pml.mean_image_loss(shifted, real)), 0.5, rtol=1e-5)
    # Split halves: the cross product of the two halves' mean-image differences, as written out.
    fake, real = torch.randn([6, 3, 4, 4], generator=gen), torch.randn([8, 3, 4, 4], generator=gen)
    da = fake[:3].mean(0) - real[:4].mean(0)
    db = fake[3:].mean(0) - real[4:].mean(0)
    spread = real.var(dim=[0, 2, 3], unbiased=False).sum()
    np.testing.assert_allclose(float(pml.mean_image_loss(fake, real, unbiased=True)),
                               float((da * db).sum() / (16 * spread)), rtol=1e-5)


def test_split_half_form_is_unbiased_where_the_plain_form_is_not():
    """Fakes and reals from one distribution: the plain form's expectation is the batch means' variance (> 0), the
    split-half form's is 0; a fixed pattern p added to the fakes: the split-half form's expectation is |p|^2 / ...."""
    gen = torch.Generator().manual_seed(1)
    plain, split, shifted = [], [], []
    pattern = torch.zeros([1, 3, 4, 4])
    pattern[0, :, 1, :] = 0.5  # a line in every fake image
    for _ in range(400):
        fake, real = torch.randn([16, 3, 4, 4], generator=gen), torch.randn([16, 3, 4, 4], generator=gen)
        plain.append(float(pml.mean_image_loss(fake, real)))
        split.append(float(pml.mean_image_loss(fake, real, unbiased=True)))
        shifted.append(float(pml.mean_image_loss(fake + pattern, real, unbiased=True)))
    # Plain: E = (1/16 + 1/16) per channel and position, over a total variance of 3 per position -> 2/16.
    assert abs(np.mean(plain) - 2 / 16) < 0.01
    assert abs(np.mean(split)) < 0.01
    # Pattern: 4 positions of 16 with 3 * 0.25 -> 0.75 * 4 / 16 / 3 = 1/16.
    assert abs(np.mean(shifted) - 1 / 16) < 0.01


def test_mean_image_loss_gradcheck_descent_and_refusals():
    gen = torch.Generator().manual_seed(2)
    fake = torch.randn([4, 2, 3, 3], dtype=torch.float64, generator=gen, requires_grad=True)
    real = torch.randn([6, 2, 3, 3], dtype=torch.float64, generator=gen)
    for unbiased in (False, True):
        assert torch.autograd.gradcheck(lambda x: pml.mean_image_loss(x, real, unbiased=unbiased), (fake,))
    # Descent on a learned fixed pattern added to fixed images removes the pattern's mismatch.
    base = torch.randn([32, 3, 8, 8], generator=gen)
    real = torch.randn([64, 3, 8, 8], generator=gen)
    bias = torch.zeros([1, 3, 8, 8], requires_grad=True)
    with torch.no_grad():
        bias[0, :, :, 6] = 1.0  # a column in every image
    start = float(pml.mean_image_loss(base + bias, real).detach())
    opt = torch.optim.SGD([bias], lr=20.0)
    for _ in range(200):
        opt.zero_grad()
        pml.mean_image_loss(base + bias, real).backward()
        opt.step()
    assert float(pml.mean_image_loss(base + bias, real).detach()) < 1e-4 < start
    with pytest.raises(ValueError, match='of one size'):
        pml.mean_image_loss(torch.zeros([2, 3, 4, 4]), torch.zeros([2, 3, 8, 8]))
    with pytest.raises(ValueError, match='at least 2 fake images'):
        pml.mean_image_loss(torch.zeros([1, 3, 4, 4]), torch.zeros([2, 3, 4, 4]), unbiased=True)
    levels = pml.level_mean_image_losses({8: base, 4: base[:, :, :4, :4]}, {8: real, 4: real[:, :, :4, :4]},
                                         {8: 2.0, 4: 0.0})
    assert set(levels) == {8}
    torch.testing.assert_close(levels[8][0], 2.0 * pml.mean_image_loss(base, real))


def test_fsr_mean_image_trains_reports_and_cli(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_mean_image='8:2,16:3', fsr_moments_unbiased=True),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    os.makedirs(tmp_path / 'run')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    assert plugin.mean_image_weights == {8: 2.0, 16: 3.0}
    stats = [json.loads(line) for line in (tmp_path / 'run' / 'stats.jsonl').read_text().splitlines()][-1]
    for key in ('Loss/fsr/mean_image', 'FSR/mean_image_r8', 'FSR/mean_image_r16'):
        assert key in stats and np.isfinite(stats[key]['mean']), key
    assert 'FSR/mean_image_r4' not in stats
    # --fsr-mean-image-kimg: the term is on only in the steps from that many images on (here the last two of four).
    late = make_plugin(dict(fsr=True, fsr_pair=False, fsr_mean_image='16:3', fsr_mean_image_kimg=0.016),
                       dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert late.cfg.mean_image_kimg == 0.016 and plugin.cfg.mean_image_kimg == 0.0
    os.makedirs(tmp_path / 'late')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'late', 0.032, plugins=[late]))

    def steps_with_term(run):
        rows = [json.loads(line) for line in (tmp_path / run / 'stats.jsonl').read_text().splitlines()]
        return sum(row['FSR/mean_image_r16']['num'] for row in rows if 'FSR/mean_image_r16' in row)

    assert steps_with_term('run') == 4 and steps_with_term('late') == 2
    # Per level: 8x8 from the start, 16x16 from 24 images (the last of four steps of 8).
    per_level = make_plugin(dict(fsr=True, fsr_pair=False, fsr_mean_image='8:2,16:3', fsr_mean_image_kimg='16:0.024'),
                            dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert per_level.cfg.mean_image_kimg == {16: 0.024}
    os.makedirs(tmp_path / 'per_level')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'per_level', 0.032, plugins=[per_level]))
    rows = [json.loads(line) for line in (tmp_path / 'per_level' / 'stats.jsonl').read_text().splitlines()]
    assert [sum(row[f'FSR/mean_image_r{r}']['num'] for row in rows if f'FSR/mean_image_r{r}' in row)
            for r in (8, 16)] == [4, 1]
    assert per_level.mean_image_weights_at(23) == {8: 2.0} and per_level.mean_image_weights_at(24) == {8: 2.0, 16: 3.0}
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + ['--fsr=1', '--fsr-mean-image=8:1,16:5',
                                                                         '--fsr-mean-image-kimg=8:104,16:80'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_mean_image": "8:1,16:5"' in res.stdout and '"fsr_mean_image_kimg": "8:104,16:80"' in res.stdout
    for extra, message in ((['--fsr-mean-image=16:5', '--fsr-mean-image-kimg=8:10'], 'level 8 has no --fsr-mean-'),
                           (['--fsr-mean-image=16:5', '--fsr-mean-image-kimg=64:10'], '64 is not a synthesis res'),
                           (['--fsr-mean-image=16:5', '--fsr-mean-image-kimg=16:-1'], 'must be >= 0')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1'] + extra, tmp_path)
        assert res.returncode != 0 and message in res.stderr, (extra, res.stderr[-2000:])
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-mean-image=-1'], tmp_path)
    assert res.returncode != 0 and 'weights must be >= 0' in res.stderr, res.stderr[-2000:]
