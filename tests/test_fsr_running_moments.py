"""--fsr-moments-avg: the patch-moment loss on running averages of the batch moments (fsr_plugin.running_moments):
the averages against a direct computation, the loss's value and gradient against independent ones, the limit of no
history, exact resume through the snapshot, and the CLI."""
import json
import os
import pickle
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, params_equal, run_train  # noqa: E402

from fsr_plugin.patch_moment_loss import level_moment_losses  # noqa: E402
from fsr_plugin.patch_swd import level_patch_rows  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from fsr_plugin.running_moments import RunningMoments  # noqa: E402
from training import training_loop  # noqa: E402


def _batches(steps, n=4, res=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    fakes = [torch.randn(n, 3, res, res, generator=g, dtype=torch.float64) for _ in range(steps)]
    reals = [1.3 * torch.randn(n, 3, res, res, generator=g, dtype=torch.float64) + 0.2 for _ in range(steps)]
    return fakes, reals


def _direct_moments(images, q=3):
    """Mean [D] and population covariance [D, D] of the q x q patches, written out with unfold (rows ordered as the
    patch pixels, channel-major)."""
    rows = torch.nn.functional.unfold(images, q).transpose(1, 2).reshape(-1, images.shape[1] * q * q)
    mean = rows.mean(0)
    return mean, (rows - mean).T @ (rows - mean) / rows.shape[0]


def test_running_averages_are_the_decay_weighted_batch_moments():
    fakes, reals = _batches(3)
    rm = RunningMoments(half_life_kimg=0.008)   # half-life 8 images: a batch of 4 keeps 2^-0.5 of the old content
    beta = 2 ** -0.5
    assert rm.decay(4) == pytest.approx(beta)
    for x_f, x_r in zip(fakes, reals):
        rows = list(level_patch_rows({8: x_f}, {8: x_r}, {8: 1.0}, 3, False))
        avg = rm.update(8, rows[0][2], rows[0][3], 4)
    # Bias-corrected: weights beta^2, beta, 1 over their sum.
    w = torch.tensor([beta ** 2, beta, 1.0], dtype=torch.float64)
    w = w / w.sum()
    for key, batches in (('fake', fakes), ('real', reals)):
        moments = [_direct_moments(x) for x in batches]
        mean = sum(wi * m for wi, (m, _) in zip(w, moments))
        cov = sum(wi * c for wi, (_, c) in zip(w, moments))
        # The patch rows' order differs from unfold's only by a permutation: compare permutation-free summaries.
        assert torch.allclose(avg[f'mean_{key}'].sort().values, mean.sort().values, atol=1e-12)
        assert torch.allclose(torch.linalg.eigvalsh(avg[f'cov_{key}']), torch.linalg.eigvalsh(cov), atol=1e-10)


def test_no_history_is_the_plain_batch_loss_value_and_gradient():
    fakes, reals = _batches(1)
    fake = fakes[0].requires_grad_(True)
    out = RunningMoments(1e-9).level_losses({8: fake}, {8: reals[0]}, {8: 2.0}, num_images=4)
    ref = level_moment_losses({8: fake}, {8: reals[0]}, {8: 2.0})
    assert float(out[8][0].detach()) == pytest.approx(float(ref[8][0].detach()), rel=1e-12)
    g_out, = torch.autograd.grad(out[8][0], fake)
    g_ref, = torch.autograd.grad(ref[8][0], fake)
    assert torch.allclose(g_out, g_ref, rtol=1e-9, atol=1e-14)


def test_value_is_the_running_mismatch_and_gradient_follows_it():
    fakes, reals = _batches(4)
    rm = RunningMoments(0.008)
    for x_f, x_r in zip(fakes[:3], reals[:3]):
        rm.level_losses({8: x_f}, {8: x_r}, {8: 1.0}, num_images=4)
    before = rm.state_dict()
    fake = fakes[3].clone().requires_grad_(True)
    loss, mean_term, cov_term = rm.level_losses({8: fake}, {8: reals[3]}, {8: 3.0}, num_images=4)[8]
    # Independent: redo the last update by hand with the batch's moments as a differentiable function, take the
    # exact gradient of the running mismatch, and undo the chain factor (1 - beta) / weight that the loss omits.
    beta = rm.decay(4)
    weight = beta * before[8]['weight'] + (1 - beta)
    rows_f, rows_r = [(rf, rr) for _, _, rf, rr in level_patch_rows({8: fake}, {8: reals[3]}, {8: 1}, 3, False)][0]
    m_f = rows_f.mean(0)
    c_f = (rows_f - m_f).T @ (rows_f - m_f) / rows_f.shape[0]
    m_r = rows_r.mean(0)
    c_r = (rows_r - m_r).T @ (rows_r - m_r) / rows_r.shape[0]
    M_f = (beta * before[8]['mean_fake'] + (1 - beta) * m_f) / weight
    C_f = (beta * before[8]['cov_fake'] + (1 - beta) * c_f) / weight
    M_r = (beta * before[8]['mean_real'] + (1 - beta) * m_r) / weight
    C_r = (beta * before[8]['cov_real'] + (1 - beta) * c_r) / weight
    spread, size = torch.diagonal(C_r).sum(), C_r.square().sum()
    exact = 3.0 * ((M_f - M_r).square().sum() / spread + (C_f - C_r).square().sum() / size)
    assert float(loss.detach()) == pytest.approx(float(exact.detach()), rel=1e-10)
    assert float(mean_term) == pytest.approx(float(((M_f - M_r).square().sum() / spread).detach()), rel=1e-10)
    assert float(cov_term) == pytest.approx(float(((C_f - C_r).square().sum() / size).detach()), rel=1e-10)
    g_loss, = torch.autograd.grad(loss, fake)
    g_exact, = torch.autograd.grad(exact, fake)
    assert torch.allclose(g_loss, g_exact * weight / (1 - beta), rtol=1e-8, atol=1e-14)
    assert g_loss.abs().max() > 0


def test_state_round_trip_and_refusal():
    fakes, reals = _batches(2)
    a = RunningMoments(0.01)
    a.level_losses({8: fakes[0]}, {8: reals[0]}, {8: 1.0}, num_images=4)
    b = RunningMoments(0.01)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    la = a.level_losses({8: fakes[1]}, {8: reals[1]}, {8: 1.0}, num_images=4)[8][0]
    lb = b.level_losses({8: fakes[1]}, {8: reals[1]}, {8: 1.0}, num_images=4)[8][0]
    assert float(la.detach()) == float(lb.detach())
    with pytest.raises(ValueError, match='half_life_kimg must be > 0'):
        RunningMoments(0)


def _plugin(**opts):
    return make_plugin(dict(fsr=True, fsr_pair=False, fsr_moments='8:1,16:3', fsr_moments_avg=0.016, **opts),
                       dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))


def test_training_run_reports_running_terms_and_resumes_exactly(tmp_path, one_thread):
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir(), b.mkdir()
    pa = _plugin()
    ra = training_loop.training_loop(**loop_kwargs(a, 0.032, plugins=[pa], ada_target=-1.0))
    rows = [json.loads(line) for line in (a / 'stats.jsonl').read_text().splitlines()]
    assert sum(row['FSR/moments_cov_r16']['num'] for row in rows if 'FSR/moments_cov_r16' in row) == 4
    assert set(pa.running_moments.levels) == {8, 16}
    # Stopped half-way and continued from its snapshot, the run ends where the uninterrupted one did: the averages
    # travel in the snapshot.
    training_loop.training_loop(**loop_kwargs(b, 0.016, plugins=[_plugin()], ada_target=-1.0))
    snap = str(b / 'network-snapshot-000000.pkl')
    with open(snap, 'rb') as f:
        state = pickle.load(f)['resume_state']['plugin_state']['fsr']['running_moments']
    assert set(state) == {8, 16} and 0 < state[16]['weight'] < 1
    pb = _plugin()
    rb = training_loop.training_loop(**loop_kwargs(b, 0.032, plugins=[pb], resume_snapshot=snap, ada_target=-1.0))
    for key in ('G', 'D', 'G_ema'):
        assert params_equal(ra[key], rb[key]), key
    for r in (8, 16):
        for k, v in pa.running_moments.levels[r].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(pb.running_moments.levels[r][k])), (r, k)
    # Without the averages in the snapshot the continued run differs (the check above can fail).
    c = tmp_path / 'c'
    c.mkdir()
    pc = _plugin()
    load = pc.load_state_dict
    pc.load_state_dict = lambda state: load({k: v for k, v in state.items() if k != 'running_moments'})
    rc = training_loop.training_loop(**loop_kwargs(c, 0.032, plugins=[pc], resume_snapshot=snap, ada_target=-1.0))
    assert not params_equal(ra['G'], rc['G'])


def test_moments_avg_cli_and_refusal(tmp_path):
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + [
        '--fsr=1', '--fsr-moments=8:1', '--fsr-moments-avg=0.5'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_moments_avg": 0.5' in res.stdout
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-moments-avg=0.5'], tmp_path)
    assert res.returncode != 0 and '--fsr-moments-avg: it changes the patch-moment loss, which is off' in res.stderr
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-moments=8:1',
                                                                        '--fsr-moments-avg=-1'], tmp_path)
    assert res.returncode != 0 and '--fsr-moments-avg' in res.stderr
