"""--fsr-consistency: the pyramid consistency loss |down(x_r) - x_{r/2}|^2 against a direct computation, its scale for
consistent and for unrelated levels, its gradient and detaching, and its wiring into the generator phase and the CLI."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin import level_consistency as lc  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from fsr_plugin.pyramid import build_pyramid  # noqa: E402
from training import training_loop  # noqa: E402


def _numpy_value(x_hi, x_lo, real_lo):
    hi = x_hi.numpy().astype(np.float64)
    n, c, h, w = hi.shape
    down = hi.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    err = ((down - x_lo.numpy()) ** 2).sum(axis=1).mean()
    real = real_lo.numpy().astype(np.float64)
    scale = sum(real[:, k].var() for k in range(real.shape[1]))
    return err / scale


def test_consistency_losses_match_numpy():
    gen = torch.Generator().manual_seed(0)
    fake = {r: torch.randn([6, 3, r, r], generator=gen, dtype=torch.float64) for r in (4, 8, 16)}
    real = {r: 0.5 * torch.randn([5, 3, r, r], generator=gen, dtype=torch.float64) + 0.2 for r in (4, 8, 16)}
    out = lc.level_consistency_losses(fake, real, {8: 2.0, 16: 3.0})
    assert sorted(out) == [8, 16]
    for r, w in ((8, 2.0), (16, 3.0)):
        expected = _numpy_value(fake[r], fake[r // 2], real[r // 2])
        assert float(out[r][1]) == pytest.approx(expected, rel=1e-6)
        assert float(out[r][0]) == pytest.approx(w * expected, rel=1e-6)
    # A level without a lower neighbour in the pyramid (or the lowest level) contributes nothing.
    assert lc.level_consistency_losses({16: fake[16], 4: fake[4]}, real, {16: 1.0, 4: 1.0}) == {}


@pytest.mark.parametrize('filt', ['box', 'fir'])
def test_a_real_pyramid_is_consistent_and_unrelated_levels_score_two(filt):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn([400, 3, 16, 16], generator=gen)
    b = torch.randn([400, 3, 16, 16], generator=gen)
    pyr_a = build_pyramid(a, [4, 8, 16], filter=filt)
    pyr_b = build_pyramid(b, [4, 8, 16], filter=filt)
    same = lc.level_consistency_losses(pyr_a, pyr_a, {8: 1.0, 16: 1.0}, filter=filt)
    for r in (8, 16):
        assert float(same[r][1]) < 1e-10
    # Levels drawn from two independent samples with the reals' spread: twice the lower level's variance.
    mixed = {16: pyr_a[16], 8: pyr_b[8], 4: pyr_a[4]}
    out = lc.level_consistency_losses(mixed, pyr_a, {8: 1.0, 16: 1.0}, filter=filt)
    # The box filter's 2x2 average of white noise has exactly the variance of the real level; the 'fir' level's
    # zero-padded borders make it a little smaller, within a few percent of 2 as well.
    assert float(out[16][1]) == pytest.approx(2.0, rel=0.06)
    assert float(out[8][1]) == pytest.approx(2.0, rel=0.06)


def test_consistency_loss_gradcheck_and_detach():
    gen = torch.Generator().manual_seed(2)
    x_hi = torch.randn([3, 2, 4, 4], generator=gen, dtype=torch.float64, requires_grad=True)
    x_lo = torch.randn([3, 2, 2, 2], generator=gen, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64)

    def value(hi, lo, detach):
        return lc.consistency_loss(hi, lo, scale, detach_lower=detach).double()

    assert torch.autograd.gradcheck(lambda h, lo: value(h, lo, False), (x_hi, x_lo))
    grad_hi, grad_lo = torch.autograd.grad(value(x_hi, x_lo, True), (x_hi, x_lo), allow_unused=True)
    assert grad_lo is None and grad_hi.abs().sum() > 0
    grad_lo = torch.autograd.grad(value(x_hi, x_lo, False), x_lo)[0]
    assert grad_lo.abs().sum() > 0


def test_descent_makes_the_higher_level_agree_with_the_fixed_lower_one():
    gen = torch.Generator().manual_seed(3)
    x_hi = torch.randn([4, 3, 8, 8], generator=gen, requires_grad=True)
    x_lo = torch.randn([4, 3, 4, 4], generator=gen)
    lo_before = x_lo.clone()
    opt = torch.optim.SGD([x_hi], lr=50.0)  # the mean over 64 positions scales the gradient down
    start = float(lc.consistency_loss(x_hi, x_lo, 1.0).detach())
    for _ in range(200):
        opt.zero_grad()
        lc.consistency_loss(x_hi, x_lo, 1.0).backward()
        opt.step()
    assert start > 1.0 and float(lc.consistency_loss(x_hi, x_lo, 1.0).detach()) < 1e-6
    assert torch.equal(x_lo, lo_before)


def test_mean_mode_sees_only_the_images_mean_colours():
    gen = torch.Generator().manual_seed(5)
    real = {4: torch.randn([7, 3, 4, 4], generator=gen, dtype=torch.float64) * 0.4}
    x_lo = torch.randn([5, 3, 4, 4], generator=gen, dtype=torch.float64)
    x_hi = torch.randn([5, 3, 8, 8], generator=gen, dtype=torch.float64)
    out = lc.level_consistency_losses({4: x_lo, 8: x_hi}, real, {8: 2.0}, mode='mean')
    m_hi = x_hi.numpy().mean(axis=(2, 3))
    m_lo = x_lo.numpy().mean(axis=(2, 3))
    scale = real[4].numpy().mean(axis=(2, 3)).var(axis=0).sum()
    expected = ((m_hi - m_lo) ** 2).sum(axis=1).mean() / scale
    assert float(out[8][1]) == pytest.approx(expected, rel=1e-10) and float(out[8][0]) == pytest.approx(2 * expected)
    # A higher level that rearranges the lower one's pixels keeps its mean colour: 0 for 'mean', not for 'full'.
    shuffled = x_lo.flip(dims=[2, 3]).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert float(lc.consistency_loss(shuffled, x_lo, 1.0, mode='mean')) < 1e-20
    assert float(lc.consistency_loss(shuffled, x_lo, 1.0, mode='full')) > 0.1
    # A colour shift of one image is seen in full.
    shifted = x_lo.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).clone()
    shifted[2, 1] += 0.5
    assert float(lc.consistency_loss(shifted, x_lo, 1.0, mode='mean')) == pytest.approx(0.25 / 5)
    x_hi.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: lc.consistency_loss(h, x_lo, 0.7, mode='mean'), (x_hi,))
    with pytest.raises(ValueError, match='mode must be one of'):
        lc.consistency_loss(x_hi, x_lo, 1.0, mode='dc')


def test_consistency_loss_refuses_bad_input():
    with pytest.raises(ValueError, match='expected x_hi'):
        lc.consistency_loss(torch.zeros([2, 3, 8, 8]), torch.zeros([2, 3, 8, 8]), 1.0)
    with pytest.raises(ValueError, match='scale must be > 0'):
        lc.consistency_loss(torch.zeros([2, 3, 8, 8]), torch.zeros([2, 3, 4, 4]), 0.0)


def test_fsr_consistency_trains_reports_and_cli(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_consistency='8:2,16:3'),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    os.makedirs(tmp_path / 'run')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    assert plugin.consistency_weights == {8: 2.0, 16: 3.0}
    stats = [json.loads(line) for line in (tmp_path / 'run' / 'stats.jsonl').read_text().splitlines()][-1]
    for key in ('Loss/fsr/consistency', 'FSR/consistency_r8', 'FSR/consistency_r16'):
        assert key in stats and np.isfinite(stats[key]['mean']), key
    assert 'FSR/consistency_r4' not in stats
    # A number applies to every level that has one below.
    plugin = make_plugin(dict(fsr=True, fsr_consistency='1.5'),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert plugin.cfg.consistency_weight == 1.5 and plugin.cfg.consistency_detach is True
    assert plugin.cfg.consistency_mode == 'full'
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY +
                    ['--fsr=1', '--fsr-consistency=16:5', '--fsr-consistency-detach=0', '--fsr-consistency-mode=mean'],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_consistency": "16:5"' in res.stdout and '"fsr_consistency_detach": false' in res.stdout
    assert '"fsr_consistency_mode": "mean"' in res.stdout
    for bad, message in (('-1', 'weights must be >= 0'), ('4:1', 'level 4 is the lowest level')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', f'--fsr-consistency={bad}'],
                        tmp_path)
        assert res.returncode != 0 and message in res.stderr, res.stderr[-2000:]
