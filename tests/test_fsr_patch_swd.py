"""--fsr-swd: patch extraction, the sliced Wasserstein loss against an independent numpy computation, its gradient,
its per-level wiring into the plugin's generator phase, and the real-pyramid cache it shares with the pair
discriminators."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin import patch_swd  # noqa: E402
from fsr_plugin import pyramid as pyramid_lib  # noqa: E402
from fsr_plugin.plugin import FSRPlugin, make_plugin  # noqa: E402
from training import training_loop  # noqa: E402


def test_patch_rows_matches_explicit_loops():
    x = torch.randn(2, 3, 5, 4)
    rows = []
    for n in range(2):
        for i in range(5 - 3 + 1):
            for j in range(4 - 3 + 1):
                rows.append(x[n, :, i:i + 3, j:j + 3].reshape(-1))
    assert torch.equal(patch_swd.patch_rows(x, 3), torch.stack(rows))
    with pytest.raises(ValueError, match='does not fit'):
        patch_swd.patch_rows(x, 5)
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'):
        patch_swd.patch_rows(x[0], 3)


def test_sliced_wasserstein_loss_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 6)), rng.normal(1.0, 2.0, size=(50, 6))
    dirs = patch_swd.random_directions(6, 7, seed=3, dtype=torch.float64)
    assert torch.allclose(dirs.norm(dim=0), torch.ones(7, dtype=torch.float64))
    d = dirs.numpy()
    expected = np.mean([np.mean((np.sort(a @ d[:, k]) - np.sort(b @ d[:, k])) ** 2) for k in range(7)])
    got = patch_swd.sliced_wasserstein_loss(torch.from_numpy(a), torch.from_numpy(b), dirs)
    assert abs(float(got) - expected) < 1e-12
    # Order of the points does not matter; a shift by c along every direction costs (c . d)^2.
    perm = torch.from_numpy(rng.permutation(50))
    assert float(patch_swd.sliced_wasserstein_loss(torch.from_numpy(a)[perm], torch.from_numpy(a), dirs)) == 0
    one = torch.ones(1, 1, dtype=torch.float64)
    shifted = patch_swd.sliced_wasserstein_loss(torch.from_numpy(a[:, :1]) + 0.5, torch.from_numpy(a[:, :1]), one)
    assert abs(float(shifted) - 0.25) < 1e-12
    # relative=True: in units of the reals' projected variance; the reals' mean as a single point scores 1.
    real = torch.from_numpy(b)
    point = real.mean(dim=0, keepdim=True).expand(50, 6)
    assert abs(float(patch_swd.sliced_wasserstein_loss(point, real, dirs, relative=True)) - 1) < 1e-9
    expected_var = np.mean([np.var(b @ d[:, k]) for k in range(7)])
    assert abs(float(patch_swd.sliced_wasserstein_loss(torch.from_numpy(a), real, dirs, relative=True))
               - expected / expected_var) < 1e-9
    # Unequal sizes: the larger set is subsampled to the smaller one's size.
    assert torch.isfinite(patch_swd.sliced_wasserstein_loss(torch.from_numpy(a), torch.from_numpy(b[:20]), dirs))
    with pytest.raises(ValueError, match='expected fake'):
        patch_swd.sliced_wasserstein_loss(torch.from_numpy(a), torch.from_numpy(b[:, :5]), dirs)


def test_sliced_wasserstein_loss_gradcheck():
    torch.manual_seed(0)
    fake = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    real = torch.randn(9, 4, dtype=torch.float64)
    dirs = patch_swd.random_directions(4, 5, seed=1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: patch_swd.sliced_wasserstein_loss(f, real, dirs), (fake,))


def test_swd_gradient_spreads_a_collapsed_sample():
    """Identical fakes against varied reals: gradient descent on the loss moves the fakes apart."""
    torch.manual_seed(0)
    real = torch.randn(256, 4)
    fake = torch.zeros(256, 4).add(0.01 * torch.randn(256, 4)).requires_grad_(True)
    dirs = patch_swd.random_directions(4, 32, seed=0)
    opt = torch.optim.SGD([fake], lr=100.0)
    before = float(patch_swd.sliced_wasserstein_loss(fake.detach(), real, dirs))
    for _ in range(50):
        opt.zero_grad()
        patch_swd.sliced_wasserstein_loss(fake, real, dirs).backward()
        opt.step()
    after = float(patch_swd.sliced_wasserstein_loss(fake.detach(), real, dirs))
    assert after < 0.1 * before
    assert fake.detach().std(dim=0).min() > 0.5  # from 0.01 towards the reals' 1


def test_level_swd_losses_weights_levels_and_skips_small_ones():
    torch.manual_seed(0)
    fake = {r: torch.randn(2, 3, r, r) for r in (2, 4, 8)}
    real = {r: torch.randn(2, 3, r, r) for r in (2, 4, 8)}
    out = patch_swd.level_swd_losses(fake, real, {2: 1.0, 4: 2.0, 8: 0.0}, patch_size=3, num_dirs=8, seed=5)
    assert set(out) == {4}  # 2 is smaller than the patch, 8 has weight 0
    dirs = patch_swd.random_directions(27, 8, seed=5 * 1009 + 4)
    expected = patch_swd.sliced_wasserstein_loss(patch_swd.patch_rows(fake[4], 3), patch_swd.patch_rows(real[4], 3),
                                                 dirs, relative=True)
    assert torch.allclose(out[4][1], expected) and torch.allclose(out[4][0], 2 * expected)
    again = patch_swd.level_swd_losses(fake, real, {4: 1.0}, patch_size=3, num_dirs=8, seed=5)
    assert torch.equal(again[4][1], out[4][1])  # same seed, same directions


def test_real_pyramid_cache_matches_the_batch_object_not_its_address():
    plugin = make_plugin(dict(fsr=True, fsr_pair=True), dict(loss_kwargs=dict(r1_gamma=1.0),
                                                             training_set_kwargs=dict(resolution=8)))
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    pa = plugin._real_pyramid(a, [4, 8])
    assert plugin._real_pyramid(a, [4, 8]) is pa  # built once per batch
    pb = plugin._real_pyramid(b, [4, 8])
    assert torch.equal(pb[4], pyramid_lib.build_pyramid(b, [4, 8])[4])
    # A new batch at the cached batch's address (here a view of it, after new values were written) is rebuilt.
    b.mul_(2)
    view = b.view(b.shape)
    assert view.data_ptr() == b.data_ptr() and view is not b
    assert torch.equal(plugin._real_pyramid(view, [4, 8])[4], pyramid_lib.build_pyramid(view, [4, 8])[4])


@pytest.mark.parametrize('unbiased', [False, True])
def test_fsr_swd_trains_and_reports_per_level(tmp_path, one_thread, unbiased):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_swd='8:1,16:2', fsr_swd_dirs=16, fsr_swd_pairs=True,
                              fsr_swd_image='4:0.5', fsr_swd_unbiased=unbiased),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert isinstance(plugin, FSRPlugin) and plugin.cfg.swd_unbiased is unbiased
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.064, plugins=[plugin]))
    assert plugin.swd_weights == {8: 1.0, 16: 2.0} and plugin.swd_image_weights == {4: 0.5}
    stats = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()][-1]
    for key in ('Loss/fsr/swd', 'FSR/swd_r8', 'FSR/swd_r16', 'Loss/fsr/swd_image', 'FSR/swd_image_r4'):
        # The split-half form can be negative on a batch, but not at the start of training (fakes far from reals).
        assert key in stats and stats[key]['mean'] > 0, key
    assert 'FSR/swd_r4' not in stats and 'FSR/swd_image_r8' not in stats


def test_train_cli_fsr_swd_options(tmp_path):
    res = run_train(['--outdir', str(tmp_path), '-n'] + TINY + ['--fsr=1', '--fsr-swd=0.5', '--fsr-swd-dirs=8'],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for bad, message in (('--fsr-swd=-1', 'weights must be >= 0'), ('--fsr-swd=12:1', '12 is not a synthesis'),
                         ('--fsr-swd=64:1', '64 is not a synthesis'), ('--fsr-swd-image=-2', 'weights must be')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', bad], tmp_path)
        assert res.returncode != 0 and message in res.stderr, (bad, res.stderr[-2000:])
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-swd=4:1',
                                                                        '--fsr-swd-patch=5'], tmp_path)
    assert res.returncode != 0 and 'smaller than the patch' in res.stderr


def test_pair_patches_see_a_broken_super_resolution_step():
    """Fake level 8 equal to the reals' and fake level 4 equal to the reals' but from other images: each level's
    patches match exactly, so the plain loss is 0; with pairs the low-resolution context does not fit and it is not."""
    torch.manual_seed(0)
    x8 = torch.randn(6, 3, 8, 8)
    real = {8: x8, 4: pyramid_lib.build_pyramid(x8, [4, 8])[4]}
    fake = {8: x8.clone(), 4: real[4][torch.tensor([1, 2, 3, 4, 5, 0])]}
    both = patch_swd.pair_images(real, 8)
    assert both.shape == (6, 6, 8, 8)
    assert torch.equal(both[:, :3, ::2, ::2], real[4]) and torch.equal(both[:, :3, 1::2, 1::2], real[4])
    assert torch.equal(both[:, 3:], x8)
    assert torch.equal(patch_swd.pair_images({8: x8}, 8), x8)
    plain = patch_swd.level_swd_losses(fake, real, {8: 1.0}, num_dirs=16, seed=1)
    pairs = patch_swd.level_swd_losses(fake, real, {8: 1.0}, num_dirs=16, seed=1, pairs=True)
    assert float(plain[8][1]) == 0 and float(pairs[8][1]) > 0.01
    dirs = patch_swd.random_directions(54, 16, seed=1 * 1009 + 8)
    expected = patch_swd.sliced_wasserstein_loss(patch_swd.patch_rows(patch_swd.pair_images(fake, 8), 3),
                                                 patch_swd.patch_rows(both, 3), dirs, relative=True)
    torch.testing.assert_close(pairs[8][1], expected)


def test_whole_image_swd_sees_a_collapse_that_patches_miss():
    """Reals: every image a random shuffle of one set of pixel values. A fake set of one real image repeated has the
    reals' pixel (1x1 patch) distribution up to sampling, but not their distribution of whole images."""
    torch.manual_seed(0)
    base = torch.randn(3 * 8 * 8)
    real = {8: torch.stack([base[torch.randperm(base.numel())].reshape(3, 8, 8) for _ in range(64)])}
    fake = {8: real[8][:1].expand(64, 3, 8, 8)}
    patches = patch_swd.level_swd_losses(fake, real, {8: 1.0}, patch_size=1, num_dirs=32, seed=0)
    images = patch_swd.level_swd_losses(fake, real, {8: 1.0}, patch_size=0, num_dirs=32, seed=0)
    assert float(patches[8][1]) < 0.05 and float(images[8][1]) > 0.5
    dirs = patch_swd.random_directions(3 * 8 * 8, 32, seed=8)
    expected = patch_swd.sliced_wasserstein_loss(fake[8].reshape(64, -1), real[8].reshape(64, -1), dirs,
                                                 relative=True)
    torch.testing.assert_close(images[8][1], expected)


def _scaled_swd(gain, unbiased, draws=400, n=32, dim=6):
    """Mean over draws of the (plain or split-half) SWD between gain x N(0, I) and N(0, I), n points each."""
    gen = torch.Generator().manual_seed(0)
    dirs = patch_swd.random_directions(dim, 16, seed=2, dtype=torch.float64)
    loss = patch_swd.debiased_sliced_wasserstein_loss if unbiased else patch_swd.sliced_wasserstein_loss
    total = 0.0
    for _ in range(draws):
        fake = gain * torch.randn(n, dim, generator=gen, dtype=torch.float64)
        real = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        total += float(loss(fake, real, dirs))
    return total / draws


def test_split_half_swd_has_no_pull_towards_a_narrower_sample():
    """Samples of 32: the plain loss scores a fake sample scaled by 0.92 lower than one from the reals' own
    distribution; the split-half form scores the reals' distribution lowest, and its mean is about rho (g - 1)^2."""
    plain = {g: _scaled_swd(g, False) for g in (0.92, 1.0)}
    split = {g: _scaled_swd(g, True) for g in (0.8, 0.92, 1.0, 1.2)}
    assert plain[0.92] < plain[1.0]
    assert split[1.0] < split[0.92] and split[1.0] < split[1.2] and abs(split[1.0]) < 0.01
    # Gaussian scale family: the expectation is rho (g - 1)^2 with one rho for every gain (0.5 < rho < 1, halves of 16).
    rho = [split[g] / (g - 1) ** 2 for g in (0.8, 1.2)]
    assert 0.5 < rho[0] < 1 and 0.5 < rho[1] < 1 and abs(rho[0] - rho[1]) < 0.15


def test_split_half_swd_formula_gradient_and_errors():
    gen = torch.Generator().manual_seed(3)
    fake = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    real = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    dirs = patch_swd.random_directions(4, 5, seed=1, dtype=torch.float64)
    sw = patch_swd.sliced_wasserstein_loss
    expect = 0.5 * (sw(fake[:3], real[:4], dirs, 0) + sw(fake[3:], real[4:], dirs, 1)) \
        - 0.5 * sw(fake[:3], fake[3:], dirs, 2) - 0.5 * sw(real[:4], real[4:], dirs, 3)
    torch.testing.assert_close(patch_swd.debiased_sliced_wasserstein_loss(fake, real, dirs), expect)
    assert torch.autograd.gradcheck(lambda f: patch_swd.debiased_sliced_wasserstein_loss(f, real, dirs), (fake,))
    with pytest.raises(ValueError, match='even number'):
        patch_swd.debiased_sliced_wasserstein_loss(fake[:5], real, dirs)
    # Per level: halves of whole images; an odd batch is refused.
    pyr_f = {8: torch.randn(4, 3, 8, 8, generator=gen)}
    pyr_r = {8: torch.randn(4, 3, 8, 8, generator=gen)}
    out = patch_swd.level_swd_losses(pyr_f, pyr_r, {8: 1.0}, num_dirs=8, seed=4, unbiased=True)
    d = patch_swd.random_directions(27, 8, seed=4 * 1009 + 8)
    rows_f, rows_r = patch_swd.patch_rows(pyr_f[8], 3), patch_swd.patch_rows(pyr_r[8], 3)
    torch.testing.assert_close(out[8][1], patch_swd.debiased_sliced_wasserstein_loss(rows_f, rows_r, d, seed=4,
                                                                                      relative=True))
    with pytest.raises(ValueError, match='even batches'):
        patch_swd.level_swd_losses({8: pyr_f[8][:3]}, pyr_r, {8: 1.0}, num_dirs=8, unbiased=True)


def test_swd_bias_bench_prints_every_form():
    from click.testing import CliRunner
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
    import fsr_swd_bias
    res = CliRunner().invoke(fsr_swd_bias.main, ['--res=16', '--batch=4', '--batches=1'])
    assert res.exit_code == 0, res.output
    heads = [line for line in res.output.splitlines() if 'gain with the lowest loss' in line]
    assert len(heads) == 4 and all('r=4:' in h and 'r=16:' in h for h in heads)
    assert sum('split-half' in h for h in heads) == 2 and res.output.count('  gain ') == 24
