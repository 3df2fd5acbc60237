"""fsr_plugin.ema_calibration: the per-level contrast gain of the EMA heads against a direct computation, what
apply_gain keeps (means, other levels, the winner-take-all selection) and refuses, and the command on a real
snapshot of a short --fsr training run (pickle round trip, metrics on the result)."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import REPO, loop_kwargs  # noqa: E402

import legacy  # noqa: E402
from fsr_plugin import ema_calibration as cal  # noqa: E402
from fsr_plugin import heads as heads_lib  # noqa: E402
from fsr_plugin import snapshot_eval as se  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from training import training_loop  # noqa: E402


def _patch_total_variance(x, q=3):
    """Independent: the trace of the covariance of every q x q patch (numpy, population form)."""
    x = x.double().numpy()
    n, c, h, w = x.shape
    rows = [x[i, :, a:a + q, b:b + q].reshape(-1) for i in range(n) for a in range(h - q + 1) for b in range(w - q + 1)]
    return float(np.trace(np.cov(np.stack(rows).T, bias=True)))


def test_level_gains_match_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    real = {8: torch.randn([5, 3, 8, 8], generator=gen), 4: torch.randn([5, 3, 4, 4], generator=gen),
            2: torch.randn([5, 3, 2, 2], generator=gen)}
    fake = {8: 0.7 * torch.randn([6, 3, 8, 8], generator=gen) + 0.2, 4: 1.3 * torch.randn([6, 3, 4, 4], generator=gen),
            2: torch.randn([6, 3, 2, 2], generator=gen)}
    gains = cal.level_gains(fake, real)
    assert set(gains) == {4, 8}  # 2x2 holds no 3x3 patch
    for r in (4, 8):
        k, mean = gains[r]
        assert k == pytest.approx((_patch_total_variance(real[r]) / _patch_total_variance(fake[r])) ** 0.5, rel=1e-9)
        np.testing.assert_allclose(mean.numpy(), fake[r].double().mean(dim=[0, 2, 3]).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match='level 8 is flat'):
        cal.level_gains({8: torch.ones([2, 3, 8, 8])}, real)


@pytest.mark.parametrize('gain_param, unit_norm', [(True, True), (False, False)])
def test_apply_gain_scales_about_the_mean_and_keeps_the_selection(gain_param, unit_norm):
    torch.manual_seed(1)
    head = heads_lib.OutputHead(6, 3, kernel_size=3, unit_norm_atoms=unit_norm, gain=gain_param, wta=3,
                                wta_jitter=0.0)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    s = torch.relu(torch.randn([4, 6, 8, 8]))
    x = head(s).detach()
    mean = x.double().mean(dim=[0, 2, 3])
    cal.apply_gain(head, 1.25, mean)
    y = head(s).detach()
    expected = mean.float().reshape(1, 3, 1, 1) + 1.25 * (x - mean.float().reshape(1, 3, 1, 1))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # Total patch variance scales by the gain squared; the means stay.
    assert _patch_total_variance(y) == pytest.approx(1.25 ** 2 * _patch_total_variance(x), rel=1e-4)
    torch.testing.assert_close(y.mean(dim=[0, 2, 3]), x.mean(dim=[0, 2, 3]), rtol=1e-5, atol=1e-5)


def test_apply_gain_refusals():
    unit_no_gain = heads_lib.OutputHead(4, 3, unit_norm_atoms=True, gain=False)
    with pytest.raises(ValueError, match='cannot carry a gain'):
        cal.apply_gain(unit_no_gain, 1.1, torch.zeros(3))
    with pytest.raises(ValueError, match='residual head'):
        cal.apply_gain(heads_lib.OutputHead(4, 3, residual=True), 1.1, torch.zeros(3))
    with pytest.raises(ValueError, match='no bias'):
        cal.apply_gain(heads_lib.OutputHead(4, 3, bias=False), 1.1, torch.zeros(3))
    with pytest.raises(ValueError, match='must be > 0'):
        cal.apply_gain(heads_lib.OutputHead(4, 3), 0.0, torch.zeros(3))


def test_level_mean_shifts_and_apply_mean_shift():
    gen = torch.Generator().manual_seed(3)
    real = {8: torch.randn([5, 3, 8, 8], generator=gen) + 0.1, 4: torch.randn([5, 3, 4, 4], generator=gen)}
    fake = {8: torch.randn([7, 3, 8, 8], generator=gen), 4: torch.randn([7, 3, 4, 4], generator=gen),
            16: torch.randn([2, 3, 16, 16], generator=gen)}
    shifts = cal.level_mean_shifts(fake, real)
    assert set(shifts) == {4, 8}  # 16 has no reals
    for r in (4, 8):
        direct = real[r].double().numpy().mean(axis=(0, 2, 3)) - fake[r].double().numpy().mean(axis=(0, 2, 3))
        np.testing.assert_allclose(shifts[r].numpy(), direct, rtol=1e-12, atol=1e-15)
    torch.manual_seed(2)
    head = heads_lib.OutputHead(6, 3, kernel_size=3, unit_norm_atoms=True, gain=True, wta=3, wta_jitter=0.0,
                                resolution=8, offset_gain=0.5)
    s = torch.relu(torch.randn([4, 6, 8, 8]))
    x = head(s).detach()
    cal.apply_mean_shift(head, torch.tensor([0.25, -0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(head(s).detach(), x + torch.tensor([0.25, -0.5, 0.0]).reshape(1, 3, 1, 1))
    with pytest.raises(ValueError, match='expected 3 channel shifts, got 2'):
        cal.apply_mean_shift(head, torch.zeros(2))
    with pytest.raises(ValueError, match='no bias'):
        cal.apply_mean_shift(heads_lib.OutputHead(4, 3, bias=False), torch.zeros(3))


@pytest.fixture(scope='module')
def fsr_snapshot(tmp_path_factory):
    run = tmp_path_factory.mktemp('calib_run')
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_head_kernel=3, fsr_head_gain=True, fsr_relu=True),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    torch.set_num_threads(1)
    training_loop.training_loop(**loop_kwargs(run, 0.064, plugins=[plugin]))
    return sorted(glob.glob(str(run / 'network-snapshot-*.pkl')))[-1]


def test_calibrate_snapshot_heads_restores_the_reals_total_variance(fsr_snapshot):
    snap = se.Snapshot(fsr_snapshot)
    torch.manual_seed(1)  # the calibration's own sample: its noise inputs and latents
    before = se.pyramid_images(snap, 64, seed=1000004, noise_mode='random')
    gains = cal.calibrate_snapshot_heads(snap, num=64, seed=1)
    assert set(gains) == {4, 8, 16} and all(g > 0 for g in gains.values())  # every level holds a 3x3 patch
    torch.manual_seed(1)
    after = se.pyramid_images(snap, 64, seed=1000004, noise_mode='random')
    real = se.real_pyramid_images(snap.training_set_kwargs, [4, 8, 16], 64, seed=1)
    for r, gain in gains.items():
        assert _patch_total_variance(after[r]) == pytest.approx(gain ** 2 * _patch_total_variance(before[r]), rel=1e-3)
        assert _patch_total_variance(after[r]) == pytest.approx(_patch_total_variance(real[r]), rel=1e-3)


def test_shift_snapshot_head_means_moves_each_level_onto_the_reals(fsr_snapshot):
    snap = se.Snapshot(fsr_snapshot)
    cal.calibrate_snapshot_heads(snap, num=32, seed=1)
    torch.manual_seed(4)
    before = se.pyramid_images(snap, 48, seed=2000007, noise_mode='random')
    shifts = cal.shift_snapshot_head_means(snap, num=48, seed=4)
    assert set(shifts) == {4, 8, 16}
    torch.manual_seed(4)  # the shift's own sample again: its means now equal the reals'
    after = se.pyramid_images(snap, 48, seed=2000007, noise_mode='random')
    real = se.real_pyramid_images(snap.training_set_kwargs, [4, 8, 16], 48, seed=4)
    for r, shift in shifts.items():
        torch.testing.assert_close(after[r].double().mean(dim=[0, 2, 3]), real[r].double().mean(dim=[0, 2, 3]),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(after[r] - before[r], shift.float().reshape(1, -1, 1, 1).expand_as(after[r]),
                                   rtol=0, atol=1e-5)
    assert max(float(s.abs().max()) for s in shifts.values()) > 1e-3  # a short run's colours are off: a real move


def test_pyramid_images_in_batches_equal_one_batch(fsr_snapshot):
    snap = se.Snapshot(fsr_snapshot)
    whole = se.pyramid_images(snap, 10, seed=5)
    parts = se.pyramid_images(snap, 10, seed=5, batch_size=4)  # 4 + 4 + 2, the same latents, constant noise
    assert sorted(parts) == [4, 8, 16]
    for r in whole:
        assert parts[r].shape == (10, 3, r, r)
        torch.testing.assert_close(parts[r], whole[r], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='batch_size must be >= 1, got 0'):
        se.pyramid_images(snap, 10, seed=5, batch_size=0)


def test_ema_calibration_command_round_trip(fsr_snapshot, tmp_path):
    out = tmp_path / 'calibrated.pkl'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, '-m', 'fsr_plugin.ema_calibration', fsr_snapshot, f'--out={out}',
                          '--images=32'], cwd=REPO, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'gains r4=' in res.stdout and ' r16=' in res.stdout
    data = legacy.load_network(str(out))
    original = legacy.load_network(fsr_snapshot)
    record = data['fsr_ema_calibration']
    assert record['images'] == 32 and set(record['gains']) >= {8, 16}
    heads, heads0 = se.find_heads(data)[1], se.find_heads(original)[1]
    for r, gain in record['gains'].items():
        h, h0 = heads.head(r), heads0.head(r)
        assert float(h.log_gain - h0.log_gain) == pytest.approx(np.log(gain), abs=1e-6)
        torch.testing.assert_close(h.weight, h0.weight)
    for key in ('G', 'G_ema', 'D'):
        for (n, a), (_, b) in zip(data[key].named_parameters(), original[key].named_parameters()):
            assert torch.equal(a, b), (key, n)
    # The calibrated file is a network file like any other: the FSR metrics read it.
    res = se.evaluate(se.Snapshot(str(out)), 'fsr_moment_gap', se.EvalSizes(images=16, sparsity_images=8))
    assert np.isfinite(res.results['fsr_moment_gap2_res16'])
    # --mean-images: the same gains, and each bias moved by the recorded shift.
    out2 = tmp_path / 'calibrated_mean.pkl'
    res = subprocess.run([sys.executable, '-m', 'fsr_plugin.ema_calibration', fsr_snapshot, f'--out={out2}',
                          '--images=32', '--mean-images=24'], cwd=REPO, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '; mean shifts r4=(' in res.stdout
    data2 = legacy.load_network(str(out2))
    record2 = data2['fsr_ema_calibration']
    assert record2['gains'] == record['gains'] and record2['mean_images'] == 24
    assert set(record2['mean_shifts']) == {4, 8, 16}
    heads2 = se.find_heads(data2)[1]
    for r, shift in record2['mean_shifts'].items():
        torch.testing.assert_close(heads2.head(r).bias - heads.head(r).bias,
                                   torch.tensor(shift, dtype=torch.float32).reshape(heads.head(r).bias.shape),
                                   rtol=0, atol=1e-6)
    assert 'mean_shifts' not in record
    res = subprocess.run([sys.executable, '-m', 'fsr_plugin.ema_calibration', fsr_snapshot, f'--out={fsr_snapshot}'],
                         cwd=REPO, capture_output=True, text=True, env=env)
    assert res.returncode != 0 and '--out must differ from NETWORK' in res.stderr


def test_ema_calibration_refuses_a_network_without_heads(tmp_path):
    torch.set_num_threads(1)
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.032))
    snapshot = sorted(glob.glob(str(tmp_path / 'network-snapshot-*.pkl')))[-1]
    res = subprocess.run([sys.executable, '-m', 'fsr_plugin.ema_calibration', snapshot, f'--out={tmp_path / "x.pkl"}'],
                         cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 1 and 'no FSR output heads to calibrate' in res.stderr, res.stderr[-2000:]
    assert not os.path.exists(tmp_path / 'x.pkl')
