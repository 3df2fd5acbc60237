"""Metric formulas against closed forms and independent brute-force computations: FID, KID, precision/recall, IS,
SWD (and its Laplacian pyramid / patch descriptors), PPL distances."""

import itertools

import numpy as np
import pytest
import torch

from metrics import frechet_inception_distance as fid_mod
from metrics import inception_score as is_mod
from metrics import kernel_inception_distance as kid_mod
from metrics import perceptual_path_length as ppl_mod
from metrics import precision_recall as pr_mod
from metrics import sliced_wasserstein as swd_mod
from test_metrics_fakes import FakeDetector, TinyGenerator

# ---------------------------------------------------------------------------------------------------------------
# FID


@pytest.mark.parametrize('method', ['eigh', 'sqrtm'])
def test_fid_commuting_covariances_closed_form(method):
    # Covariances sharing eigenvectors: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.RandomState(0)
    d = 12
    q, _ = np.linalg.qr(rng.randn(d, d))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.randn(d), rng.randn(d)
    for rot in (np.eye(d), q):
        s1, s2 = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
        expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
        assert fid_mod.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('method', ['eigh', 'sqrtm'])
def test_fid_2x2_general_closed_form(method):
    # For 2x2 M = S1 S2 with positive eigenvalues: Tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.2], [-0.2, 1.5]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    expected = 0.25 + 4.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid_mod.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-10)
    # Symmetric in its arguments.
    assert fid_mod.frechet_distance(mu2, s2, mu1, s1, method=method) == pytest.approx(expected, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero_even_rank_deficient():
    rng = np.random.RandomState(1)
    for n, d in [(500, 32), (20, 64)]:  # the second has fewer samples than features
        x = rng.randn(n, d) * rng.uniform(0.5, 2, d) + rng.randn(d)
        mu, cov = x.mean(0), np.cov(x, rowvar=False, bias=True)
        assert abs(fid_mod.frechet_distance(mu, cov, mu, cov)) < 1e-8 * np.trace(cov)


def test_fid_eigh_and_sqrtm_agree_on_random_covariances():
    rng = np.random.RandomState(2)
    x, y = rng.randn(300, 20), rng.randn(300, 20) @ rng.randn(20, 20) * 0.3 + 1
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fid_mod.frechet_distance(*args, method='eigh') == pytest.approx(
        fid_mod.frechet_distance(*args, method='sqrtm'), rel=1e-8)


def test_fid_rejects_bad_shapes_and_method():
    with pytest.raises(ValueError, match='covariance'):
        fid_mod.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match='dimensions differ'):
        fid_mod.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match='method'):
        fid_mod.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method='nope')


# ---------------------------------------------------------------------------------------------------------------
# KID


def _mmd2_unbiased_loop(x, y):
    """Direct O(m^2) unbiased MMD^2 with k(u, v) = (u.v / n + 1)^3 (x, y of equal size m)."""
    m, n = x.shape
    k = lambda u, v: (float(np.dot(u, v)) / n + 1) ** 3
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return sxx / (m * (m - 1)) + syy / (m * (m - 1)) - 2 * sxy / (m * m)


def test_kid_matches_direct_loop_on_whole_sets():
    rng = np.random.RandomState(3)
    real, gen = rng.randn(20, 5), rng.randn(20, 5) * 1.3 + 0.4
    # Equal sizes and m = size: every subset is a permutation of the whole set, so the estimate is exact.
    assert kid_mod.kernel_mmd2(real, gen, num_subsets=3, max_subset_size=1000, seed=0) == pytest.approx(
        _mmd2_unbiased_loop(gen, real), rel=1e-10)


def test_kid_subsets_match_direct_loop():
    rng = np.random.RandomState(4)
    real, gen = rng.randn(30, 4), rng.randn(25, 4) + 0.5
    num_subsets, m = 4, 10
    draws = np.random.RandomState(7)
    expected = np.mean([_mmd2_unbiased_loop(gen[draws.choice(25, m, replace=False)],
                                            real[draws.choice(30, m, replace=False)]) for _ in range(num_subsets)])
    assert kid_mod.kernel_mmd2(real, gen, num_subsets=num_subsets, max_subset_size=m, seed=7) == pytest.approx(
        expected, rel=1e-10)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.RandomState(5)
    real = rng.randn(400, 8)
    same = rng.randn(400, 8)
    shifted = rng.randn(400, 8) + 1.0
    kid_same = kid_mod.kernel_mmd2(real, same, num_subsets=10, max_subset_size=200, seed=0)
    kid_shift = kid_mod.kernel_mmd2(real, shifted, num_subsets=10, max_subset_size=200, seed=0)
    assert abs(kid_same) < 0.05 * kid_shift
    assert kid_shift > 0.1


def test_kid_rejects_bad_input():
    with pytest.raises(ValueError, match='equal n'):
        kid_mod.kernel_mmd2(np.zeros([5, 3]), np.zeros([5, 4]))
    with pytest.raises(ValueError, match='at least 2'):
        kid_mod.kernel_mmd2(np.zeros([1, 3]), np.zeros([5, 3]))


# ---------------------------------------------------------------------------------------------------------------
# Precision / recall


def _pr_bruteforce(real, gen, k):
    def coverage(manifold, probes):
        d_mm = np.linalg.norm(manifold[:, None] - manifold[None], axis=2)
        radii = np.sort(d_mm, axis=1)[:, k]  # column 0 is the point itself
        d_pm = np.linalg.norm(probes[:, None] - manifold[None], axis=2)
        return float(np.mean((d_pm <= radii[None]).any(axis=1)))
    return coverage(real, gen), coverage(gen, real)


def test_precision_recall_constructed_clouds():
    rng = np.random.RandomState(6)
    cluster_a = rng.randn(100, 8)
    cluster_b = rng.randn(70, 8) * 0.5 + 1000 * np.eye(8)[0]   # far away, tight
    cluster_c = rng.randn(50, 8) * 0.5 + 1000 * np.eye(8)[1]
    # Fakes = copies of all reals + 70 far points: every real is covered, 100/170 fakes are real-like.
    p, r = pr_mod.precision_recall(torch.tensor(cluster_a), torch.tensor(np.concatenate([cluster_a, cluster_b])))
    assert p == pytest.approx(100 / 170) and r == 1.0
    # Reals = A + C, fakes = copies of A: precision 1, recall 100/150.
    p, r = pr_mod.precision_recall(torch.tensor(np.concatenate([cluster_a, cluster_c])), torch.tensor(cluster_a))
    assert p == 1.0 and r == pytest.approx(100 / 150)


@pytest.mark.parametrize('k', [1, 3])
def test_precision_recall_matches_bruteforce_with_small_batches(k):
    rng = np.random.RandomState(8)
    real = rng.randn(60, 5)
    gen = rng.randn(45, 5) * 1.5 + 0.7
    expected = _pr_bruteforce(real, gen, k)
    got = pr_mod.precision_recall(torch.tensor(real, dtype=torch.float32), torch.tensor(gen, dtype=torch.float32),
                                  nhood_size=k, row_batch_size=17, col_batch_size=13)
    assert got == pytest.approx(expected)
    assert 0 < got[0] < 1 and 0 < got[1] < 1


@pytest.mark.cuda
def test_precision_recall_on_cuda_matches_cpu():
    rng = np.random.RandomState(16)
    real, gen = torch.tensor(rng.randn(300, 64)), torch.tensor(rng.randn(250, 64) * 1.2 + 0.2)
    cpu = pr_mod.precision_recall(real, gen, row_batch_size=100, col_batch_size=70)
    gpu = pr_mod.precision_recall(real.cuda(), gen.cuda(), row_batch_size=100, col_batch_size=70)
    assert gpu == pytest.approx(cpu, abs=2 / 250)  # float32 on CUDA: at most a near-tie or two may flip


def test_compute_distances_batches_match_numpy():
    rng = np.random.RandomState(9)
    rows, cols = rng.randn(7, 3), rng.randn(23, 3)
    d = pr_mod.compute_distances(torch.tensor(rows), torch.tensor(cols), col_batch_size=5)
    assert d.dtype == torch.float64 and d.shape == (7, 23)
    np.testing.assert_allclose(d.numpy(), np.linalg.norm(rows[:, None] - cols[None], axis=2), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Inception score


def test_inception_score_uniform_is_one():
    mean, std = is_mod.inception_score(np.full([100, 7], 1 / 7), num_splits=10)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_one_hot_distinct_classes_is_num_classes():
    k = 6
    probs = np.eye(k)[np.arange(10 * k * 3) % k]  # each split holds every class 3 times
    mean, std = is_mod.inception_score(probs, num_splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-9)
    # Only one class everywhere: no diversity, score 1.
    assert is_mod.inception_score(np.eye(k)[np.zeros(40, dtype=int)], num_splits=4)[0] == pytest.approx(1.0)


def test_inception_score_random_matches_direct_formula():
    rng = np.random.RandomState(10)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=53)
    scores = []
    for i in range(4):
        part = probs[i * 53 // 4:(i + 1) * 53 // 4]
        py = part.mean(0)
        scores.append(np.exp(np.mean([sum(p[j] * np.log(p[j] / py[j]) for j in range(5)) for p in part])))
    assert is_mod.inception_score(probs, num_splits=4) == pytest.approx((np.mean(scores), np.std(scores)))


def test_inception_score_rejects_bad_input():
    with pytest.raises(ValueError, match='num_splits'):
        is_mod.inception_score(np.full([5, 3], 1 / 3), num_splits=10)


# ---------------------------------------------------------------------------------------------------------------
# Sliced Wasserstein


def test_swd_one_dimensional_shift_is_exact():
    rng = np.random.RandomState(11)
    a = rng.randn(1000, 1)
    # In 1-D every direction is +-1 and W1 between a and a + 0.3 is 0.3.
    assert swd_mod.sliced_wasserstein_distance(a, a + 0.3, dir_repeats=2, dirs_per_repeat=8) == pytest.approx(0.3)
    # Order does not matter (sorted projections).
    assert swd_mod.sliced_wasserstein_distance(a, rng.permutation(a)) == pytest.approx(0.0, abs=1e-15)


def test_swd_gaussian_scale_matches_projected_w1():
    # Projections of N(0, I) and N(0, s^2 I) on unit directions: W1 = |s - 1| E|Z| = |s - 1| sqrt(2 / pi).
    rng = np.random.RandomState(12)
    a, b = rng.randn(20000, 6), rng.randn(20000, 6) * 2.0
    got = swd_mod.sliced_wasserstein_distance(a, b, dir_repeats=2, dirs_per_repeat=64)
    assert got == pytest.approx(np.sqrt(2 / np.pi), rel=0.03)


def test_laplacian_pyramid_reconstructs_and_has_expected_levels():
    x = torch.rand([2, 3, 64, 64], dtype=torch.float64) * 255
    levels = swd_mod.laplacian_pyramid(x, min_res=16)
    assert [lvl.shape[2] for lvl in levels] == [64, 32, 16]
    rec = levels[-1]
    for band in reversed(levels[:-1]):
        rec = band + swd_mod.pyr_up(rec)
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-9)
    # Small images: a single level, the image itself.
    small = torch.rand([1, 1, 8, 8])
    assert len(swd_mod.laplacian_pyramid(small)) == 1 and torch.equal(swd_mod.laplacian_pyramid(small)[0], small)
    # Band-pass levels of a constant image are zero.
    const = torch.full([1, 1, 32, 32], 100.0, dtype=torch.float64)
    assert swd_mod.laplacian_pyramid(const, 16)[0].abs().max() < 1e-9


def test_patch_descriptors_are_image_patches():
    images = torch.randint(0, 256, [3, 2, 12, 12], dtype=torch.uint8)  # <= min_res: one level = the image
    desc = swd_mod.LaplacianPatchDescriptor(patches_per_image=5, nhood_size=7, min_res=16, seed=0)
    feats = desc(images)
    (level,) = desc.split_levels(feats, resolution=12, channels=2)
    assert feats.shape == (3, 5 * 7 * 7 * 2) and level.shape == (15, 98)
    for i in range(15):
        img = images[i // 5].to(torch.float32).permute(1, 2, 0)  # [H, W, C], channel-last like the descriptors
        patch = level[i].reshape(7, 7, 2)
        assert any(torch.equal(img[y:y + 7, x:x + 7], patch) for y, x in itertools.product(range(6), range(6)))
    with pytest.raises(ValueError, match='expected'):
        desc.split_levels(feats, resolution=32, channels=2)  # 32 px images would give two levels


def test_normalize_descriptors_uses_real_statistics():
    rng = np.random.RandomState(13)
    real = rng.randn(500, 4 * 3) * np.tile([1.0, 5.0, 0.2], 4) + np.tile([10.0, -3.0, 0.0], 4)
    fake = real + np.tile([2.0, 0.0, 0.0], 4)
    r, f = swd_mod.normalize_descriptors(real, fake, channels=3)
    per_channel = r.reshape(-1, 3)
    torch.testing.assert_close(per_channel.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(per_channel.std(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-9)
    # The fake shift survives normalisation (it would vanish with per-set normalisation).
    assert float((f - r).reshape(-1, 3)[:, 0].mean()) > 0.5


def _blocky_images(n, res, seed):
    rng = np.random.RandomState(seed)
    grid = rng.randint(60, 190, size=[n, 3, 8, 8])
    img = np.kron(grid, np.ones([1, 1, res // 8, res // 8], dtype=np.int64))
    img = img + rng.randint(-10, 11, size=img.shape)
    return torch.tensor(np.clip(img, 0, 255).astype(np.uint8))


def test_swd_images_zero_for_identical_and_monotone_in_shift():
    real = _blocky_images(32, 32, seed=0)
    kw = dict(patches_per_image=8, dir_repeats=2, dirs_per_repeat=32)
    per_level, mean = swd_mod.swd_images(real, real.clone(), **kw)
    assert set(per_level) == {32, 16} and mean == 0.0
    values = []
    for shift in [2, 5, 10, 20, 40]:
        fake = (real.to(torch.int32) + shift).clamp(0, 255).to(torch.uint8)
        values.append(swd_mod.swd_images(real, fake, **kw)[1])
    assert all(v1 < v2 for v1, v2 in zip(values, values[1:])), values
    assert values[0] > 0


def test_swd_level_layout():
    assert swd_mod.level_layout(64, 3, 4) == [(64, 7, 147), (32, 7, 147), (16, 7, 147)]
    assert swd_mod.level_layout(4, 1, 4) == [(4, 4, 16)]


# ---------------------------------------------------------------------------------------------------------------
# PPL


def _slerp_sin(a, b, t):
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(np.dot(a, b), -1, 1))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def test_slerp_matches_sine_formula():
    rng = np.random.RandomState(14)
    a, b = rng.randn(4, 6), rng.randn(4, 6)
    t = np.array([0.0, 0.3, 0.75, 1.0])
    got = ppl_mod.slerp(torch.tensor(a), torch.tensor(b), torch.tensor(t)[:, None]).numpy()
    for i in range(4):
        np.testing.assert_allclose(got[i], _slerp_sin(a[i], b[i], t[i]), atol=1e-10)


@pytest.mark.parametrize('space,crop', [('w', False), ('w', True), ('z', False)])
def test_ppl_distances_match_independent_computation(space, crop):
    torch.manual_seed(0)
    G = TinyGenerator(z_dim=6, w_dim=5, img_resolution=16, img_channels=3, use_tanh=False).double()
    eps = 1e-2
    sampler = ppl_mod.PPLSampler(G, {}, epsilon=eps, space=space, sampling='full', crop=crop, vgg16=FakeDetector())
    z0, z1, t = torch.randn([3, 6], dtype=torch.float64), torch.randn([3, 6], dtype=torch.float64), torch.rand(3)
    got = sampler.distances(z0, z1, t, torch.zeros([3, 0])).numpy()

    A = G.mapping.weight.detach().double().numpy()
    B = G.synthesis.weight.detach().double().numpy()
    for i in range(3):
        if space == 'w':
            w0, w1 = z0[i].numpy() @ A, z1[i].numpy() @ A
            wa, wb = w0 + t[i].item() * (w1 - w0), w0 + (t[i].item() + eps) * (w1 - w0)
        else:
            wa = _slerp_sin(z0[i].numpy(), z1[i].numpy(), t[i].item()) @ A
            wb = _slerp_sin(z0[i].numpy(), z1[i].numpy(), t[i].item() + eps) @ A
        ia, ib = (wa @ B).reshape(3, 16, 16), (wb @ B).reshape(3, 16, 16)
        if crop:  # rows 6..13, columns 4..11 of a 16-pixel image
            ia, ib = ia[:, 6:14, 4:12], ib[:, 6:14, 4:12]
        fa, fb = (ia + 1) * 127.5 / 255, (ib + 1) * 127.5 / 255  # the stand-in LPIPS stack is pixels / 255
        assert got[i] == pytest.approx(np.sum((fa - fb) ** 2) / eps ** 2, rel=1e-4)
    # Synthesis ran with const noise in fp32 mode, as PPL requires.
    assert G.synthesis.calls == [] and sampler.G.synthesis.calls[-1] == dict(noise_mode='const', force_fp32=True)


def test_ppl_end_sampling_uses_t_zero():
    G = TinyGenerator(z_dim=6, w_dim=5, use_tanh=False)
    sampler = ppl_mod.PPLSampler(G, {}, epsilon=1e-4, space='w', sampling='end', crop=False, vgg16=FakeDetector())
    torch.manual_seed(5)
    d_call = sampler(torch.zeros([4, 0]))
    torch.manual_seed(5)
    torch.rand([4])  # the sampler draws t first (then multiplies by 0), then z
    z0, z1 = torch.randn([8, 6]).chunk(2)
    d_direct = sampler.distances(z0, z1, torch.zeros(4), torch.zeros([4, 0]))
    torch.testing.assert_close(d_call, d_direct)


def test_ppl_percentile_filter():
    rng = np.random.RandomState(15)
    dist = np.concatenate([rng.exponential(size=990), rng.uniform(1e5, 1e6, size=5), -rng.uniform(1e5, 1e6, size=5)])
    rng.shuffle(dist)
    n = dist.size
    s = np.sort(dist)
    lo, hi = s[int(np.floor(0.01 * (n - 1)))], s[int(np.ceil(0.99 * (n - 1)))]  # 'lower' / 'higher' percentiles
    expected = dist[(dist >= lo) & (dist <= hi)].mean()
    assert ppl_mod.ppl_from_distances(dist) == pytest.approx(expected, rel=1e-12)
    # The outliers are gone: the result is close to the exponential's mean of 1.
    assert 0.7 < ppl_mod.ppl_from_distances(dist) < 1.1


def test_ppl_rejects_bad_options():
    G = TinyGenerator()
    with pytest.raises(ValueError, match='space'):
        ppl_mod.PPLSampler(G, {}, 1e-4, 'x', 'end', False, FakeDetector())
    with pytest.raises(ValueError, match='sampling'):
        ppl_mod.PPLSampler(G, {}, 1e-4, 'w', 'middle', False, FakeDetector())
