"""--fsr-moments: the patch mean/covariance matching loss against numpy and against the fsr_moment_gap diagnostic,
its gradient, what it sees that random-direction SWD barely does, and its wiring into the generator phase and CLI."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin import diagnostics  # noqa: E402
from fsr_plugin import patch_moment_loss as pml  # noqa: E402
from fsr_plugin import patch_swd  # noqa: E402
from fsr_plugin import pyramid as pyramid_lib  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from training import training_loop  # noqa: E402


def test_moment_matching_loss_matches_numpy():
    rng = np.random.RandomState(0)
    fake = rng.randn(50, 4) * [1, 2, 0.5, 1] + [0.3, 0, 0, -1]
    real = rng.randn(70, 4) @ rng.randn(4, 4) + 0.5
    mean_term, cov_term = pml.moment_matching_loss(torch.from_numpy(fake), torch.from_numpy(real))
    c_fake, c_real = np.cov(fake.T, bias=True), np.cov(real.T, bias=True)
    expected_mean = np.sum((fake.mean(0) - real.mean(0)) ** 2) / np.trace(c_real)
    expected_cov = np.sum((c_fake - c_real) ** 2) / np.sum(c_real ** 2)
    np.testing.assert_allclose(float(mean_term), expected_mean, rtol=1e-10)
    np.testing.assert_allclose(float(cov_term), expected_cov, rtol=1e-10)
    same = pml.moment_matching_loss(torch.from_numpy(real), torch.from_numpy(real))
    assert float(same[0]) == 0 and float(same[1]) < 1e-28
    # One point at the reals' mean: no mean shift, and the whole covariance missing.
    point = torch.from_numpy(np.repeat(real.mean(0, keepdims=True), 10, axis=0))
    at_mean = pml.moment_matching_loss(point, torch.from_numpy(real))
    assert abs(float(at_mean[0])) < 1e-20 and abs(float(at_mean[1]) - 1) < 1e-12


def test_covariance_term_is_the_squared_moment_gap_diagnostic():
    torch.manual_seed(0)
    real, fake = torch.randn(4, 3, 8, 8).double(), (0.5 * torch.randn(3, 3, 8, 8) + 0.1).double()
    out = pml.level_moment_losses({8: fake}, {8: real}, {8: 1.0})
    gaps = diagnostics.patch_moment_gap(real, fake, q=3)
    np.testing.assert_allclose(float(out[8][2]), gaps['gap_2'] ** 2, rtol=1e-9)


def test_moment_matching_loss_gradcheck():
    torch.manual_seed(0)
    fake = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    real = torch.randn(7, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: sum(pml.moment_matching_loss(f, real)), (fake,))


def test_moments_rank_a_wrong_covariance_shape_below_a_collapse_and_swd_does_not():
    """Reals: white patches. Fakes: the reals' trace, but all variance in one smooth direction (a flat patch). On the
    covariance term this scores worse than a collapse to the reals' mean (1); on random-direction SWD, whose value
    along a direction u depends on u^T C u and averages trace(C) / D whatever the shape, it scores better."""
    torch.manual_seed(0)
    d, n = 27, 4000
    real = torch.randn(n, d)
    flat = torch.ones(d) / d ** 0.5
    fake = torch.randn(n, 1) * d ** 0.5 * flat
    collapsed = real.mean(0, keepdim=True).expand(n, d)
    _, cov_term = pml.moment_matching_loss(fake, real)
    _, cov_collapsed = pml.moment_matching_loss(collapsed, real)
    assert abs(float(cov_collapsed) - 1) < 1e-5 and float(cov_term) > 20  # |C_f - I|^2 / |I|^2 = d - 1 = 26
    dirs = patch_swd.random_directions(d, 64, seed=0)
    swd = patch_swd.sliced_wasserstein_loss(fake, real, dirs, relative=True)
    swd_collapsed = patch_swd.sliced_wasserstein_loss(collapsed, real, dirs, relative=True)
    assert float(swd) < 0.7 * float(swd_collapsed)


def test_moment_descent_whitens_smooth_patches():
    torch.manual_seed(0)
    real = {8: torch.randn(16, 3, 8, 8)}
    base = torch.randn(16, 3, 1, 1)
    fake = (base.expand(16, 3, 8, 8) + 0.01 * torch.randn(16, 3, 8, 8)).clone().requires_grad_(True)
    opt = torch.optim.Adam([fake], lr=0.05)
    first = None
    for _ in range(200):
        loss = pml.level_moment_losses({8: fake}, real, {8: 1.0})[8][0]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first
    assert diagnostics.patch_moment_gap(real[8], fake.detach())['gap_2'] < 0.2


def test_level_moment_losses_weights_pairs_and_skips():
    torch.manual_seed(0)
    x8 = torch.randn(5, 3, 8, 8)
    real = {8: x8, 4: pyramid_lib.build_pyramid(x8, [4, 8])[4], 2: torch.randn(5, 3, 2, 2)}
    fake = {8: x8.clone(), 4: real[4][torch.tensor([1, 2, 3, 4, 0])], 2: torch.randn(5, 3, 2, 2)}
    out = pml.level_moment_losses(fake, real, {2: 1.0, 4: 0.0, 8: 3.0})
    assert set(out) == {8}  # 2 is smaller than the patch, 4 has weight 0
    assert float(out[8][0]) == 0  # level 8 alone matches exactly
    pairs = pml.level_moment_losses(fake, real, {8: 3.0}, pairs=True)
    # The low-resolution context comes from other images: the cross-covariance differs.
    mean_term, cov_term = pml.moment_matching_loss(patch_swd.patch_rows(patch_swd.pair_images(fake, 8), 3),
                                                   patch_swd.patch_rows(patch_swd.pair_images(real, 8), 3))
    assert float(cov_term) > 0.01
    torch.testing.assert_close(pairs[8][0], 3 * (mean_term + cov_term))
    torch.testing.assert_close(pairs[8][2], cov_term)


def test_fsr_moments_trains_and_reports_per_level(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_moments='8:1,16:2', fsr_moments_pairs=True),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.064, plugins=[plugin]))
    assert plugin.moment_weights == {8: 1.0, 16: 2.0}
    stats = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()][-1]
    for key in ('Loss/fsr/moments', 'FSR/moments_cov_r8', 'FSR/moments_cov_r16', 'FSR/moments_mean_r16'):
        assert key in stats and stats[key]['mean'] > 0, key
    assert 'FSR/moments_cov_r4' not in stats


def test_train_cli_fsr_moments_options(tmp_path):
    res = run_train(['--outdir', str(tmp_path), '-n'] + TINY + ['--fsr=1', '--fsr-moments=0.5',
                                                                '--fsr-moments-pairs=1'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for bad, message in (('--fsr-moments=-1', 'weights must be >= 0'), ('--fsr-moments=12:1', '12 is not a synthesis'),
                         ('--fsr-moments=x', 'expected a number')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', bad], tmp_path)
        assert res.returncode != 0 and message in res.stderr, (bad, res.stderr[-2000:])
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-moments=4:1',
                                                                        '--fsr-moments-patch=5'], tmp_path)
    assert res.returncode != 0 and 'smaller than the patch (--fsr-moments-patch=5)' in res.stderr


def test_patch_covariance_report_splits_contrast_from_shape():
    from bench.fsr_patch_covariance import covariance_report
    torch.manual_seed(0)
    real, real_b = torch.randn(20, 3, 8, 8).double(), torch.randn(20, 3, 8, 8).double()
    rep = covariance_report(real, real_b, 2 * real)  # the same patches at twice the contrast
    assert rep['trace_ratio'] == pytest.approx(4) and rep['gap_2'] == pytest.approx(3)
    assert rep['gap_2_shape'] < 1e-12 and rep['floor_2'] > 0
    np.testing.assert_allclose(rep['eig_fake'], 4 * rep['eig_real'])


def test_patch_covariance_batch_terms_split_variance_from_gap():
    from bench.fsr_patch_covariance import batch_terms
    gen = torch.Generator().manual_seed(0)
    real, real_b, same = (torch.randn(256, 1, 6, 6, generator=gen, dtype=torch.float64) for _ in range(3))
    t = batch_terms(real, real_b, same, batch=16)
    assert t['batches'] == 16 and abs(t['split']) < 4 * t['split_se']
    assert t['plain'] == pytest.approx(t['reals'], rel=0.3) and t['variance'] == pytest.approx(t['plain'] - t['split'])
    wide = batch_terms(real, real_b, 2 * same, batch=16)  # population |4 I - I|^2 / |I|^2 = 9
    assert wide['split'] == pytest.approx(9, abs=4 * wide['split_se'] + 0.5) and wide['plain'] > wide['split']
    with pytest.raises(Exception, match='needs --num >= 300'):
        batch_terms(real, real_b, same, batch=300)


# ----------------------------------------------------------------------------------------------------------------------
# --fsr-moments-unbiased: the split-half estimate.

def test_unbiased_moment_loss_matches_numpy_cross_products():
    rng = np.random.RandomState(1)
    fake = rng.randn(40, 3) * [1, 2, 0.5] + 0.2
    real = rng.randn(30, 3) @ rng.randn(3, 3)
    mean_term, cov_term = pml.moment_matching_loss(torch.from_numpy(fake), torch.from_numpy(real), split_fake=16,
                                                   split_real=10)
    fa, fb, ra, rb = fake[:16], fake[16:], real[:10], real[10:]
    c_real = np.cov(real.T, bias=True)
    expected_mean = np.dot(fa.mean(0) - ra.mean(0), fb.mean(0) - rb.mean(0)) / np.trace(c_real)
    cov = lambda x: np.cov(x.T, bias=True)  # noqa: E731
    expected_cov = np.sum((cov(fa) - cov(ra)) * (cov(fb) - cov(rb))) / np.sum(c_real ** 2)
    np.testing.assert_allclose(float(mean_term), expected_mean, rtol=1e-10)
    np.testing.assert_allclose(float(cov_term), expected_cov, rtol=1e-10)
    with pytest.raises(ValueError, match='both split_fake and split_real'):
        pml.moment_matching_loss(torch.from_numpy(fake), torch.from_numpy(real), split_fake=3)
    with pytest.raises(ValueError, match='split_real=30 must leave rows on both sides of 30'):
        pml.moment_matching_loss(torch.from_numpy(fake), torch.from_numpy(real), split_fake=3, split_real=30)


def test_unbiased_moment_loss_gradcheck():
    torch.manual_seed(0)
    fake = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    real = torch.randn(8, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: sum(pml.moment_matching_loss(f, real, split_fake=4, split_real=5)),
                                    (fake,))


def varied_images(n, t, gen):
    """n white-noise images [n, 3, 6, 6] whose per-image scale is (1 + t u) / sqrt(1 + t^2), u = +-1: the patch
    covariance of the distribution is I for every t; only how much it varies from image to image depends on t."""
    u = torch.randint(0, 2, [n, 1, 1, 1], generator=gen).double() * 2 - 1
    return (1 + t * u) / (1 + t * t) ** 0.5 * torch.randn([n, 3, 6, 6], generator=gen, dtype=torch.float64)


def test_plain_moment_loss_pulls_towards_uniform_images_and_unbiased_does_not():
    """Fakes and reals from the same distribution (per-image scales vary, t = 0.5). The gradient of the plain batch
    loss in t is positive on average (it asks for images more alike than the reals); the split-half estimate's is
    zero within its standard error, and so is its value, while the plain value is the estimates' variance."""
    gen = torch.Generator().manual_seed(0)
    grads, values = {False: [], True: []}, {False: [], True: []}
    for _ in range(300):
        real = varied_images(16, 0.5, gen)
        u = torch.randint(0, 2, [16, 1, 1, 1], generator=gen).double() * 2 - 1
        e = torch.randn([16, 3, 6, 6], generator=gen, dtype=torch.float64)
        for unbiased in (False, True):
            t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
            fake = (1 + t * u) / (1 + t * t) ** 0.5 * e
            loss = pml.level_moment_losses({6: fake}, {6: real}, {6: 1.0}, unbiased=unbiased)[6][0]
            (g,) = torch.autograd.grad(loss, t)
            grads[unbiased].append(float(g))
            values[unbiased].append(float(loss.detach()))
    for unbiased in (False, True):
        g, v = np.array(grads[unbiased]), np.array(values[unbiased])
        g_se, v_se = g.std() / len(g) ** 0.5, v.std() / len(v) ** 0.5
        if unbiased:
            assert abs(g.mean()) < 3 * g_se and abs(v.mean()) < 3 * v_se, (g.mean(), g_se, v.mean(), v_se)
        else:
            assert g.mean() > 5 * g_se and v.mean() > 5 * v_se, (g.mean(), g_se, v.mean(), v_se)


def test_unbiased_estimates_the_population_gap():
    """Fakes with twice the reals' variance: the mean of the split-half covariance term over batches is the
    population |2I - I|^2 / |I|^2 = 1; the plain term's mean lies above it by the estimates' variance."""
    gen = torch.Generator().manual_seed(1)
    plain, split = [], []
    for _ in range(200):
        real = torch.randn([6, 1, 5, 5], generator=gen, dtype=torch.float64)
        fake = 2 ** 0.5 * torch.randn([6, 1, 5, 5], generator=gen, dtype=torch.float64)
        plain.append(float(pml.level_moment_losses({5: fake}, {5: real}, {5: 1.0})[5][2]))
        split.append(float(pml.level_moment_losses({5: fake}, {5: real}, {5: 1.0}, unbiased=True)[5][2]))
    split = np.array(split)
    assert abs(split.mean() - 1) < 3 * split.std() / len(split) ** 0.5 + 0.05, split.mean()
    assert np.mean(plain) > split.mean() + 0.1


def test_unbiased_levels_split_on_whole_images():
    torch.manual_seed(0)
    fake, real = torch.randn(5, 3, 8, 8).double(), torch.randn(4, 3, 8, 8).double()
    out = pml.level_moment_losses({8: fake}, {8: real}, {8: 2.0}, unbiased=True)
    rows_f, rows_r = patch_swd.patch_rows(fake, 3), patch_swd.patch_rows(real, 3)
    mean_term, cov_term = pml.moment_matching_loss(rows_f, rows_r, split_fake=2 * 36, split_real=2 * 36)
    torch.testing.assert_close(out[8][0], 2 * (mean_term + cov_term))
    # The halves are whole images: the same as the cross products of per-half moments computed image by image.
    ma, ca = pml.patch_mean_cov(patch_swd.patch_rows(fake[:2], 3))
    mb, cb = pml.patch_mean_cov(patch_swd.patch_rows(fake[2:], 3))
    ra, rca = pml.patch_mean_cov(patch_swd.patch_rows(real[:2], 3))
    rb, rcb = pml.patch_mean_cov(patch_swd.patch_rows(real[2:], 3))
    _, c_real = pml.patch_mean_cov(rows_r)
    torch.testing.assert_close(cov_term, ((ca - rca) * (cb - rcb)).sum() / c_real.square().sum())
    with pytest.raises(ValueError, match='at least 2 fake images, got 1'):
        pml.level_moment_losses({8: fake[:1]}, {8: real}, {8: 1.0}, unbiased=True)


def test_fsr_moments_unbiased_in_training_and_cli(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_moments='8:1,16:2', fsr_moments_unbiased=True),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert plugin.cfg.moments_unbiased
    calls = []
    original = pml.level_moment_losses

    def recording(*args, **kwargs):
        calls.append(kwargs.get('unbiased'))
        return original(*args, **kwargs)
    pml.level_moment_losses = recording
    try:
        os.makedirs(tmp_path / 'run')
        training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    finally:
        pml.level_moment_losses = original
    assert calls and all(calls)
    stats = [json.loads(line) for line in (tmp_path / 'run' / 'stats.jsonl').read_text().splitlines()][-1]
    assert 'FSR/moments_cov_r16' in stats and np.isfinite(stats['Loss/fsr/moments']['mean'])
    res = run_train(['--outdir', str(tmp_path), '-n'] + TINY + ['--fsr=1', '--fsr-moments=0.5',
                                                                '--fsr-moments-unbiased=1'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_moments_unbiased": true' in res.stdout
