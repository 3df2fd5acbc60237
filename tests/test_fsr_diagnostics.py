"""FSR diagnostics (fsr_plugin.diagnostics), their metrics (fsr_plugin.fsr_metrics) and plots (fsr_plugin.plots):
values against hand-computed or independently computed references on constructed inputs."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsr_plugin import diagnostics as dg
from fsr_plugin import fsr_metrics
from fsr_plugin import plots
from metrics import metric_main
from metrics import sliced_wasserstein
from training import networks


# ----------------------------------------------------------------------------------------------------------------------
# Helpers.


def _k_active(n, c, h, w, k, seed, noise=0.0):
    """Activations with exactly k of c channels set to values in [1, 2] at every position (chosen at random), the
    others zero plus uniform noise in [-noise, noise]."""
    gen = torch.Generator().manual_seed(seed)
    a = (torch.rand([n, c, h, w], generator=gen, dtype=torch.float64) * 2 - 1) * noise
    order = torch.rand([n, c, h, w], generator=gen).argsort(dim=1)
    mask = order < k
    a[mask] = 1 + torch.rand(int(mask.sum()), generator=gen, dtype=torch.float64)
    return a


def _patches_numpy(x, q):
    """All q x q patches of x [N, C, H, W] by explicit loops -> [num, C * q * q] (channel, dy, dx order)."""
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    rows = []
    for i in range(n):
        for y in range(h - q + 1):
            for xx in range(w - q + 1):
                rows.append(x[i, :, y:y + q, xx:xx + q].reshape(-1))
    return np.stack(rows)


def _tiny_G(img_resolution=16, architecture='skip'):
    return networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=img_resolution, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=128, channel_max=16, architecture=architecture))


def _tiny_D(img_resolution=16, architecture='resnet', **block_kwargs):
    return networks.Discriminator(c_dim=0, img_resolution=img_resolution, img_channels=3, architecture=architecture,
                                  channel_base=128, channel_max=16, block_kwargs=block_kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Sparsity.


def test_k_of_c_active_channels_gives_fraction_k_over_c():
    a = _k_active(3, 16, 6, 6, k=4, seed=1, noise=0.01)  # rms ~ 0.8: noise 0.01 < 0.1 * rms, actives >= 1
    s = dg.layer_sparsity(a, tau=0.1)
    assert s['num_patches'] == 3 * 6 * 6 and s['dim'] == 16
    assert s['mean_active_fraction'] == pytest.approx(4 / 16, abs=1e-12)
    np.testing.assert_allclose(s['active_fraction'], 0.25)
    assert all(v == pytest.approx(0.25) for v in s['active_fraction_quantiles'].values())
    counts, edges = s['active_fraction_hist']
    assert counts.sum() == 3 * 36 and counts[np.searchsorted(edges, 0.25, side='right') - 1] == 3 * 36
    assert s['threshold'] == pytest.approx(0.1 * float(a.square().mean().sqrt()))
    # ReLU layers count exact non-zeros: with the noise every entry is non-zero, without it 4 of 16.
    assert dg.layer_sparsity(a, relu_layer=True)['mean_active_fraction'] == pytest.approx(1.0)
    clean = _k_active(3, 16, 6, 6, k=4, seed=1)
    assert dg.layer_sparsity(clean, relu_layer=True)['mean_active_fraction'] == pytest.approx(0.25)
    assert dg.layer_sparsity(clean, relu_layer=True)['threshold'] == 0.0


def test_threshold_uses_rms_of_whole_tensor():
    a = torch.zeros([2, 4, 3, 3], dtype=torch.float64)
    a[0, 0] = 10.0      # image 0: one loud channel
    a[1, :] = 0.5       # image 1: every channel at 0.5 < 0.1 * rms (rms = sqrt((9*100 + 36*0.25) / 72) = 3.55)
    s = dg.layer_sparsity(a, tau=0.2)
    per_image = s['active_fraction'].reshape(2, 9)
    np.testing.assert_allclose(per_image[0], 0.25)
    np.testing.assert_allclose(per_image[1], 0.0)      # 0.5 < 0.2 * 3.55
    assert dg.layer_sparsity(a, tau=0.1)['active_fraction'].reshape(2, 9)[1] == pytest.approx(np.ones(9))


def test_hoyer_one_hot_is_one_and_uniform_is_zero():
    onehot = _k_active(2, 9, 4, 4, k=1, seed=2)
    s = dg.layer_sparsity(onehot)
    np.testing.assert_allclose(s['hoyer'], 1.0, atol=1e-12)
    assert s['mean_hoyer'] == pytest.approx(1.0)
    signs = torch.randint(0, 2, [2, 9, 4, 4], generator=torch.Generator().manual_seed(3)).double() * 2 - 1
    s = dg.layer_sparsity(signs * 0.7)
    np.testing.assert_allclose(s['hoyer'], 0.0, atol=1e-12)
    # k of n equal magnitudes: (sqrt(n) - sqrt(k)) / (sqrt(n) - 1).
    s = dg.layer_sparsity(torch.cat([torch.ones([1, 3, 2, 2]), torch.zeros([1, 5, 2, 2])], dim=1))
    assert s['mean_hoyer'] == pytest.approx((math.sqrt(8) - math.sqrt(3)) / (math.sqrt(8) - 1))
    # The standalone helper and the zero vector.
    assert float(dg.hoyer_sparsity(torch.tensor([0.0, 0, 3, 0]))) == pytest.approx(1.0)
    assert float(dg.hoyer_sparsity(torch.tensor([-2.0, 2, 2, -2]))) == pytest.approx(0.0)
    assert math.isnan(float(dg.hoyer_sparsity(torch.zeros(4))))
    zero = dg.layer_sparsity(torch.zeros([1, 4, 2, 2]))
    assert zero['zero_fraction'] == 1.0 and math.isnan(zero['mean_hoyer']) and zero['mean_active_fraction'] == 0.0


@pytest.mark.parametrize('q, relu', [(1, False), (2, False), (3, True)])
def test_patch_sparsity_matches_explicit_loops(q, relu):
    gen = torch.Generator().manual_seed(10 + q)
    a = torch.randn([2, 5, 6, 7], generator=gen, dtype=torch.float64)
    if relu:
        a = a.relu()
    tau = 0.3
    s = dg.layer_sparsity(a, tau=tau, patch=q, relu_layer=relu)
    x = a.numpy()
    rms = np.sqrt(np.mean(x ** 2))
    active, union, hoyer = [], [], []
    for i in range(2):
        for y in range(6 - q + 1):
            for xx in range(7 - q + 1):
                v = x[i, :, y:y + q, xx:xx + q]
                act = (v != 0) if relu else (v > tau * rms)
                active.append(act.mean())
                union.append(act.any(axis=(1, 2)).mean())
                n = v.size
                hoyer.append((np.sqrt(n) - np.abs(v).sum() / np.sqrt((v ** 2).sum())) / (np.sqrt(n) - 1))
    np.testing.assert_allclose(s['active_fraction'], active, atol=1e-12)
    np.testing.assert_allclose(s['union_fraction'], union, atol=1e-12)
    np.testing.assert_allclose(s['hoyer'], hoyer, atol=1e-10)
    assert s['mean_active_fraction'] == pytest.approx(np.mean(active))
    assert s['hoyer_quantiles'][0.5] == pytest.approx(np.quantile(hoyer, 0.5))
    assert s['dim'] == 5 * q * q


def test_sparsity_bad_input():
    with pytest.raises(ValueError, match='4-D'):
        dg.layer_sparsity(torch.zeros([4, 3, 3]))
    with pytest.raises(ValueError, match='patch'):
        dg.layer_sparsity(torch.zeros([1, 4, 3, 3]), patch=4)
    with pytest.raises(ValueError, match='at least 2'):
        dg.layer_sparsity(torch.zeros([1, 1, 3, 3]))
    with pytest.raises(ValueError, match='NaN'):
        dg.layer_sparsity(torch.full([1, 2, 3, 3], float('nan')))
    with pytest.raises(ValueError, match='tau'):
        dg.layer_sparsity(torch.zeros([1, 2, 3, 3]), tau=-1)


# ----------------------------------------------------------------------------------------------------------------------
# Patch moments.


def test_patch_moments_match_explicit_patches_and_stream():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn([5, 2, 6, 5], generator=gen, dtype=torch.float64) * 0.5 + 0.3
    rows = _patches_numpy(x, 3)
    m = dg.PatchMoments(3).update(x[:2]).update(x[2:])   # streamed in two batches
    mean, cov = m.mean_cov()
    assert m.count == rows.shape[0] == 5 * 4 * 3 and m.dim == 18
    np.testing.assert_allclose(mean, rows.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(rows, rowvar=False, bias=True), atol=1e-12)
    with pytest.raises(ValueError, match='differ'):
        m.update(torch.zeros([1, 2, 6, 6]))
    with pytest.raises(ValueError, match='smaller'):
        dg.PatchMoments(3).update(torch.zeros([1, 1, 2, 2]))


def test_moment_gap_identical_shifted_and_scaled_sets():
    gen = torch.Generator().manual_seed(5)
    real = torch.rand([6, 3, 7, 7], generator=gen, dtype=torch.float64)
    g = dg.patch_moment_gap(real, real.clone(), q=3)
    assert g['gap_1'] == 0 and g['gap_2'] == pytest.approx(0, abs=1e-14)
    assert g['num_patches_real'] == g['num_patches_fake'] == 6 * 25 and g['dim'] == 27

    delta = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)
    g = dg.patch_moment_gap(real, real + delta.view(1, 3, 1, 1), q=3)
    mean_real = _patches_numpy(real, 3).mean(0)
    shift = np.repeat(delta.numpy(), 9)                  # (channel, dy, dx) order
    assert g['gap_1'] == pytest.approx(np.linalg.norm(shift) / np.linalg.norm(mean_real), rel=1e-10)
    assert g['gap_2'] == pytest.approx(0, abs=1e-10)     # a shift leaves the covariance unchanged

    s = 1.5
    g = dg.patch_moment_gap(real, real * s, q=2)
    assert g['gap_1'] == pytest.approx(abs(s - 1), rel=1e-10)
    assert g['gap_2'] == pytest.approx(abs(s * s - 1), rel=1e-10)


def test_moment_gap_with_floor_and_learned_flag():
    gen = torch.Generator().manual_seed(6)
    real_a = torch.rand([20, 3, 6, 6], generator=gen, dtype=torch.float64)
    real_b = torch.rand([20, 3, 6, 6], generator=gen, dtype=torch.float64)
    same = dg.moment_gap_with_floor(real_a, real_b, real_b.clone())
    assert same['gap_1'] == same['floor_1'] > 0 and same['gap_2'] == same['floor_2'] > 0
    assert same['ratio_1'] == pytest.approx(1) and same['learned'] is True
    shifted = dg.moment_gap_with_floor(real_a, real_b, real_b + 0.5)
    assert shifted['learned_1'] is False and shifted['ratio_1'] > 2 and shifted['learned'] is False
    direct = dg.patch_moment_gap(real_a, real_b + 0.5)
    assert shifted['gap_1'] == pytest.approx(direct['gap_1']) and shifted['floor_1'] == same['floor_1']
    with pytest.raises(ValueError, match='as large as fake'):
        dg.moment_gap_with_floor(real_a, real_b[:10], real_b)
    with pytest.raises(ValueError, match='q=2'):
        dg.moment_gap_with_floor(dg.PatchMoments(2).update(real_a), real_b, real_b)


# ----------------------------------------------------------------------------------------------------------------------
# Effective filters and feature similarity.


def test_d_first_layer_filters_fromrgb_and_composed_match_the_network():
    D = _tiny_D(16, activation='linear')  # linear layers: the composition is exact, biases start at zero
    block = D.b16
    w1 = dg.effective_filters_d_first_layer(D, 16, mode='fromrgb')
    torch.testing.assert_close(w1, block.fromrgb.weight.detach().double() * block.fromrgb.weight_gain)
    comp = dg.effective_filters_d_first_layer(D, 16)                  # auto: 1x1 FromRGB -> composed 3x3
    assert comp.shape == (block.conv0.out_channels, 3, 3, 3)
    img = torch.randn([2, 3, 16, 16], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = block.conv0(block.fromrgb(img)).double()
    torch.testing.assert_close(F.conv2d(img.double(), comp, padding=1), expected, rtol=1e-5, atol=1e-5)


def test_composed_filters_of_general_kernels_and_epilogue():
    gen = torch.Generator().manual_seed(8)
    w1 = torch.randn([4, 2, 3, 3], generator=gen, dtype=torch.float64)
    w2 = torch.randn([5, 6, 2, 2], generator=gen, dtype=torch.float64)   # 6 >= 4 inputs: extra ones ignored
    e = dg.compose_filters(w1, w2)
    x = torch.randn([1, 2, 9, 9], generator=gen, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, e), F.conv2d(F.conv2d(x, w1), w2[:, :4]))
    with pytest.raises(ValueError, match='reads'):
        dg.compose_filters(w1, w2[:, :3])
    # The 4x4 epilogue of a skip D: its conv also reads the minibatch-std channel, which is dropped.
    D = _tiny_D(16, architecture='skip')
    f4 = dg.effective_filters_d_first_layer(D, 4)
    assert f4.shape == (D.b4.conv.out_channels, 3, 3, 3)
    expected = dg.compose_filters(D.b4.fromrgb.weight.detach().double() * D.b4.fromrgb.weight_gain,
                                  D.b4.conv.weight.detach().double() * D.b4.conv.weight_gain)
    torch.testing.assert_close(f4, expected)


def test_d_first_layer_errors_and_random_filters():
    D = _tiny_D(16)
    with pytest.raises(ValueError, match='no FromRGB'):
        dg.effective_filters_d_first_layer(D, 8)          # resnet D reads the image only at 16
    with pytest.raises(ValueError, match='no block at resolution 32'):
        dg.effective_filters_d_first_layer(D, 32)
    with pytest.raises(ValueError, match='mode'):
        dg.effective_filters_d_first_layer(D, 16, mode='sideways')
    gen = torch.Generator().manual_seed(9)
    r1 = dg.random_d_first_layer_filters(D, 16, generator=gen)
    r2 = dg.random_d_first_layer_filters(D, 16, generator=gen)
    assert r1.shape == dg.effective_filters_d_first_layer(D, 16).shape and not torch.equal(r1, r2)


def test_torgb_atoms_paint_what_the_layer_paints():
    G = _tiny_G(16)
    torgb = G.synthesis.b8.torgb
    w = torch.randn([1, G.w_dim], generator=torch.Generator().manual_seed(10))
    atoms = dg.torgb_atoms(G, 8, w=w[0])
    assert atoms.shape == (torgb.in_channels, 3, 1, 1)
    x = torch.eye(torgb.in_channels).view(torgb.in_channels, torgb.in_channels, 1, 1)   # one-hot per sample
    with torch.no_grad():
        painted = torgb(x, w.repeat(torgb.in_channels, 1), fused_modconv=False) - torgb.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(atoms.float(), painted, rtol=1e-5, atol=1e-6)
    assert dg.torgb_atoms(_tiny_G(16, architecture='resnet'), 8) is None       # no ToRGB below the last block


def test_feature_similarity_identical_permuted_random_and_negated():
    gen = torch.Generator().manual_seed(11)
    atoms = torch.randn([12, 3, 3, 3], generator=gen, dtype=torch.float64)
    s = dg.feature_similarity(atoms, atoms)
    assert s['mean_matched_cos'] == pytest.approx(1.0) and s['frac_above'] == 1.0 and s['num_pairs'] == 12
    perm = torch.randperm(12, generator=gen)
    extra = torch.randn([20, 3, 3, 3], generator=gen, dtype=torch.float64)
    d = torch.cat([atoms[perm] * 3.0, extra])             # permuted, rescaled, plus 20 unrelated filters
    s = dg.feature_similarity(d, atoms)
    assert s['mean_matched_cos'] == pytest.approx(1.0) and s['frac_above'] == 1.0
    np.testing.assert_array_equal(perm[s['cols']].numpy(), s['rows'])       # each atom found its own filter
    rand = dg.feature_similarity(torch.randn([12, 3, 3, 3], generator=gen), atoms)
    assert rand['mean_matched_cos'] < 0.6 and rand['frac_above'] < 0.5
    # Signed cosine: a negated filter is the worst partner, not a match.
    assert dg.feature_similarity(-atoms[:1], atoms[:1])['mean_matched_cos'] == pytest.approx(-1.0)
    assert dg.feature_similarity(-atoms, atoms)['mean_matched_cos'] < 0.6
    draws = [torch.randn([12, 3, 3, 3], generator=gen) for _ in range(3)]
    base = dg.feature_similarity(atoms, atoms, random_baseline=(draws, [torch.randn([12, 3, 3, 3]) for _ in range(3)]))
    assert base['mean_matched_cos'] == pytest.approx(1.0) and base['random_mean_matched_cos'] < 0.6
    assert math.isnan(s['random_mean_matched_cos'])
    with pytest.raises(ValueError, match='different'):
        dg.feature_similarity(torch.randn([4, 3, 1, 1]), atoms)
    with pytest.raises(ValueError, match='random baseline shapes'):
        dg.feature_similarity(atoms, atoms, random_baseline=(torch.randn([3, 3, 3, 3]), atoms))


# ----------------------------------------------------------------------------------------------------------------------
# Per-level SWD.


def test_per_level_swd_zero_for_identical_and_equal_to_host_per_level():
    gen = torch.Generator().manual_seed(12)
    real = {r: torch.rand([16, 3, r, r], generator=gen) * 2 - 1 for r in (4, 8, 32)}
    same = dg.per_level_swd(real, {r: v.clone() for r, v in real.items()}, patches_per_image=4)
    assert all(v['swd'] == 0 for v in same.values())
    assert sorted(same[32]['bands']) == [16, 32]          # 32x32 images have two Laplacian bands
    fake = {r: (v * 0.5 + 0.2) for r, v in real.items()}
    got = dg.per_level_swd(real, fake, patches_per_image=4, seed=3)
    for r in real:
        to_u8 = lambda x: (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        bands, mean = sliced_wasserstein.swd_images(to_u8(real[r]), to_u8(fake[r]), patches_per_image=4, seed=3)
        assert got[r]['swd'] == pytest.approx(mean) and got[r]['swd'] > 0
        assert got[r]['bands'] == pytest.approx(bands)
    with pytest.raises(ValueError, match='resolutions differ'):
        dg.per_level_swd(real, {4: fake[4]})


# ----------------------------------------------------------------------------------------------------------------------
# Metrics through the host registry.


@pytest.fixture(scope='module')
def tiny_dataset(tmp_path_factory):
    """24 RGB 16x16 images: coloured squares on grey."""
    folder = tmp_path_factory.mktemp('fsr_data')
    rng = np.random.RandomState(0)
    for i in range(24):
        img = np.full([16, 16, 3], 128, dtype=np.uint8)
        y, x = rng.randint(0, 12, size=2)
        img[y:y + 4, x:x + 4] = rng.randint(0, 256, size=3)
        Image.fromarray(img).save(folder / f'{i:03d}.png')
    return dict(class_name='training.dataset.ImageFolderDataset', path=str(folder))


def _calc(name, G, dataset_kwargs, context):
    fns = fsr_metrics.make_fsr_metrics(context)
    metric_main.register_metric(fns[name])
    try:
        return metric_main.calc_metric(name, G=G, dataset_kwargs=dataset_kwargs, device='cpu', cache=False).results
    finally:
        metric_main.unregister_metric(name)


def test_register_fsr_metrics_with_any_register_function():
    seen = {}
    names = fsr_metrics.register_fsr_metrics(lambda fn: seen.setdefault(fn.__name__, fn))
    assert names == list(fsr_metrics.METRIC_NAMES) == list(seen)
    with pytest.raises(ValueError, match='sparsity_images'):
        fsr_metrics.FSRMetricContext(sparsity_images=0)
    with pytest.raises(ValueError, match='get_D'):
        fsr_metrics.FSRMetricContext(get_D=3)


def test_sparsity_metric_matches_direct_diagnostic(tiny_dataset):
    G = _tiny_G(16)
    ctx = fsr_metrics.FSRMetricContext(sparsity_images=3, relu_resolutions=(8,), sparsity_patch=2)
    res = _calc('fsr_sparsity', G, tiny_dataset, ctx)
    # Recompute with the same latents (seeded) through the public network API.
    z = torch.randn([3, G.z_dim], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, feats = G.synthesis(G.mapping(z, None), return_features=True, force_fp32=True)
    for r in (4, 8, 16):
        s = dg.layer_sparsity(feats[r], patch=2, relu_layer=(r == 8))
        assert res[f'fsr_sparsity_active_res{r}'] == pytest.approx(s['mean_active_fraction'], rel=1e-5)
        assert res[f'fsr_sparsity_hoyer_res{r}'] == pytest.approx(s['mean_hoyer'], rel=1e-5)
        assert res[f'fsr_sparsity_union_res{r}'] == pytest.approx(s['mean_union_fraction'], rel=1e-5)
    assert res['fsr_sparsity_active_res8'] == pytest.approx(1.0)   # leaky ReLU output: no exact zeros


def test_moment_gap_metric_equals_floor_for_a_generator_replaying_real_b(tiny_dataset):
    import dnnlib
    dataset = dnnlib.util.construct_class_by_name(**tiny_dataset)
    n = 6
    real_b = np.stack([dataset[int(i)][0] for i in np.random.RandomState(0).permutation(len(dataset))[:n]])
    real_b = torch.from_numpy(real_b).float() / 127.5 - 1
    served = []

    def replay(G, z, c, **kwargs):  # "generator" whose samples are the floor sample itself
        start = sum(served)
        served.append(z.shape[0])
        x = real_b[start:start + z.shape[0]]
        return {16: x, 8: F.avg_pool2d(x, 2), 4: F.avg_pool2d(x, 4)}

    ctx = fsr_metrics.FSRMetricContext(pyramid_fn=replay, moment_images=n, resolutions=(4, 8, 16))
    res = _calc('fsr_moment_gap', _tiny_G(16), tiny_dataset, ctx)
    for r in (4, 8, 16):
        assert res[f'fsr_moment_gap1_res{r}'] == pytest.approx(res[f'fsr_moment_floor1_res{r}'], rel=1e-6)
        assert res[f'fsr_moment_gap2_res{r}'] == pytest.approx(res[f'fsr_moment_floor2_res{r}'], rel=1e-6)
        assert res[f'fsr_moment_floor1_res{r}'] > 0 and res[f'fsr_moment_learned_res{r}'] == 1.0
    assert res['fsr_moment_learned_levels'] == 3.0
    # An untrained generator (fallback pyramid: its image box-downscaled) is far from the data.
    res = _calc('fsr_moment_gap', _tiny_G(16), tiny_dataset, fsr_metrics.FSRMetricContext(moment_images=n))
    assert res['fsr_moment_gap2_res16'] > 2 * res['fsr_moment_floor2_res16']
    assert sorted(k for k in res if k.startswith('fsr_moment_gap1')) == ['fsr_moment_gap1_res16',
                                                                         'fsr_moment_gap1_res4', 'fsr_moment_gap1_res8']


def latent_stream_metric(name, dataset_kwargs, n, draws):
    """Run metric `name` with moment_images=n, moment_draws=draws at levels 8 and 16 on a "generator" whose images
    are a function of its latent (tanh(z[:3] + 0.5 * dataset image i) for the i-th latent of each batch).
    Returns (results, the dataset's images in [-1, 1], the first n * draws generated 16x16 images, the metric's
    permutation of the dataset (seed 0))."""
    import dnnlib
    dataset = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    pool = torch.from_numpy(np.stack([dataset[i][0] for i in range(len(dataset))])).float() / 127.5 - 1
    served = []

    def fake_levels(G, z, c, **kwargs):
        x = torch.tanh(z[:, :3, None, None] + pool[:z.shape[0]] * 0.5)
        served.append(x)
        return {16: x, 8: F.avg_pool2d(x, 2)}

    ctx = fsr_metrics.FSRMetricContext(pyramid_fn=fake_levels, moment_images=n, moment_draws=draws,
                                       resolutions=(8, 16))
    res = _calc(name, _tiny_G(16), dataset_kwargs, ctx)
    return res, pool, torch.cat(served)[:n * draws], np.random.RandomState(0).permutation(len(dataset))


def test_moment_gap_metric_averages_independent_draws(tiny_dataset):
    """moment_draws=K: draw k compares fake images kn..(k+1)n of one latent stream with the real images 2kn+n..2kn+2n
    (reference) and 2kn..2kn+n (floor) of the seeded permutation; gaps and floors are the means over draws. n = 5
    does not divide the generator's batches of 16, so batches straddle draws."""
    n, draws = 5, 2
    res, pool, fakes, perm = latent_stream_metric('fsr_moment_gap', tiny_dataset, n, draws)
    for r in (8, 16):
        per_draw = []
        for k in range(draws):
            def level(x):
                return x if r == 16 else F.avg_pool2d(x, 2)
            real_a = level(pool[perm[2 * k * n + n:2 * k * n + 2 * n]])
            real_b = level(pool[perm[2 * k * n:2 * k * n + n]])
            per_draw.append(dg.moment_gap_with_floor(real_a, real_b, level(fakes[k * n:(k + 1) * n])))
        for key in ('gap_1', 'gap_2', 'floor_1', 'floor_2'):
            expected = np.mean([g[key] for g in per_draw])
            assert res[f'fsr_moment_{key.replace("_", "")}_res{r}'] == pytest.approx(expected, rel=1e-6), (r, key)
        assert per_draw[0]['floor_2'] != pytest.approx(per_draw[1]['floor_2'], rel=1e-3)  # the draws differ
    # Too few images for the draws: a clear error.
    with pytest.raises(ValueError, match='needs at least 26 dataset images for 13 draw'):
        _calc('fsr_moment_gap', _tiny_G(16), tiny_dataset, fsr_metrics.FSRMetricContext(moment_draws=13))
    with pytest.raises(ValueError, match='moment_draws'):
        fsr_metrics.FSRMetricContext(moment_draws=0)


def test_moment_gap_reuses_the_real_moments_for_later_snapshots(tiny_dataset, monkeypatch):
    """The real side depends only on data, sample and pyramid: computed once, then served from memory with the
    same values; another sample size is computed afresh."""
    from training import dataset as dataset_module
    monkeypatch.setattr(fsr_metrics, '_REAL_MOMENTS_CACHE', type(fsr_metrics._REAL_MOMENTS_CACHE)())
    reads = []
    original = dataset_module.Dataset.__getitem__
    monkeypatch.setattr(dataset_module.Dataset, '__getitem__', lambda self, i: reads.append(i) or original(self, i))
    ctx = fsr_metrics.FSRMetricContext(moment_images=6)

    def seeded_G(seed):
        torch.manual_seed(seed)
        return _tiny_G(16)
    first = _calc('fsr_moment_gap', seeded_G(0), tiny_dataset, ctx)
    assert len(reads) == 12
    again = _calc('fsr_moment_gap', seeded_G(0), tiny_dataset, ctx)
    assert len(reads) == 12 and again == first
    other_G = _calc('fsr_moment_gap', seeded_G(5), tiny_dataset, ctx)
    assert len(reads) == 12 and other_G['fsr_moment_floor2_res16'] == first['fsr_moment_floor2_res16']
    assert other_G['fsr_moment_gap2_res16'] != first['fsr_moment_gap2_res16']
    _calc('fsr_moment_gap', seeded_G(0), tiny_dataset, fsr_metrics.FSRMetricContext(moment_images=5))
    assert len(reads) == 22


def test_feature_sim_metric_with_and_without_discriminator(tiny_dataset, capsys):
    G = _tiny_G(16)
    res = _calc('fsr_feature_sim', G, tiny_dataset, None)
    assert res == {'fsr_feature_sim_available': 0.0}
    assert 'no discriminator' in capsys.readouterr().out
    D = _tiny_D(16, architecture='skip')
    res = _calc('fsr_feature_sim', G, tiny_dataset, fsr_metrics.FSRMetricContext(get_D=lambda: D, random_draws=2))
    assert res['fsr_feature_sim_available'] == 1.0
    # ToRGB atoms are 1x1, so they are compared with FromRGB's 1x1 filters at every resolution.
    for r in (8, 16):
        direct = dg.feature_similarity(dg.effective_filters_d_first_layer(D, r, mode='fromrgb'), dg.torgb_atoms(G, r))
        assert res[f'fsr_feature_sim_cos_res{r}'] == pytest.approx(direct['mean_matched_cos'])
        assert -1 <= res[f'fsr_feature_sim_random_cos_res{r}'] <= 1
    # 3x3 atoms from a head function: compared with the composed FromRGB -> conv0 filters; a head that copies D's
    # filters is matched perfectly.
    heads = lambda G_, r: dg.effective_filters_d_first_layer(D, r, mode='composed')[:4]
    res = _calc('fsr_feature_sim', G, tiny_dataset,
                fsr_metrics.FSRMetricContext(get_D=lambda: D, head_atoms_fn=heads, random_draws=2, resolutions=(16,)))
    assert res['fsr_feature_sim_cos_res16'] == pytest.approx(1.0) and res['fsr_feature_sim_frac_res16'] == 1.0
    assert res['fsr_feature_sim_random_cos_res16'] < 0.9


def test_swd_levels_metric_keys_and_values(tiny_dataset):
    ctx = fsr_metrics.FSRMetricContext(swd_images=8, swd_patches_per_image=4)
    res = _calc('fsr_swd_levels', _tiny_G(16), tiny_dataset, ctx)
    assert {'fsr_swd_res4', 'fsr_swd_res8', 'fsr_swd_res16', 'fsr_swd_res16_lvl16', 'fsr_swd_mean'} <= set(res)
    assert all(math.isfinite(v) and v > 0 for v in res.values())
    assert res['fsr_swd_mean'] == pytest.approx(np.mean([res[f'fsr_swd_res{r}'] for r in (4, 8, 16)]))


def test_level_consistency_metric_values(tiny_dataset):
    import dnnlib
    dataset = dnnlib.util.construct_class_by_name(**tiny_dataset)
    n = 6
    real = np.stack([dataset[int(i)][0] for i in np.random.RandomState(0).permutation(len(dataset))[:n]])
    real = torch.from_numpy(real).double() / 127.5 - 1
    scale8 = sum(float(F.avg_pool2d(real, 2)[:, k].var(unbiased=False)) for k in range(3))
    scale4 = sum(float(F.avg_pool2d(real, 4)[:, k].var(unbiased=False)) for k in range(3))
    gen = torch.Generator().manual_seed(4)
    levels = {r: torch.randn([n, 3, r, r], generator=gen, dtype=torch.float64) * 0.3 for r in (4, 8, 16)}
    served = []

    def fixed(G, z, c, **kwargs):  # a "generator" serving fixed levels, in order
        start = sum(served)
        served.append(z.shape[0])
        return {r: x[start:start + z.shape[0]].float() for r, x in levels.items()}

    ctx = fsr_metrics.FSRMetricContext(pyramid_fn=fixed, moment_images=n, resolutions=(4, 8, 16))
    res = _calc('fsr_level_consistency', _tiny_G(16), tiny_dataset, ctx)
    batches = np.cumsum([0] + served)
    for lo, hi, scale in ((8, 16, scale8), (4, 8, scale4)):
        down = F.avg_pool2d(levels[hi], 2)
        expected = float((down - levels[lo]).square().sum(dim=1).mean()) / scale
        assert res[f'fsr_consistency_res{hi}'] == pytest.approx(expected, rel=1e-5)
        # Unpaired: each batch's lower levels rolled by one image.
        rolled = torch.cat([torch.roll(levels[lo][a:b], 1, dims=0) for a, b in zip(batches[:-1], batches[1:])])
        expected = float((down - rolled).square().sum(dim=1).mean()) / scale
        assert res[f'fsr_consistency_unpaired_res{hi}'] == pytest.approx(expected, rel=1e-5)
    assert res['fsr_consistency_mean'] == pytest.approx((res['fsr_consistency_res8'] + res['fsr_consistency_res16']) / 2)
    # Without heads the pyramid is G's image downscaled: consistent by construction, whatever G paints.
    res = _calc('fsr_level_consistency', _tiny_G(16), tiny_dataset, fsr_metrics.FSRMetricContext(moment_images=n))
    assert max(res[f'fsr_consistency_res{r}'] for r in (8, 16)) < 1e-10
    assert min(res[f'fsr_consistency_unpaired_res{r}'] for r in (8, 16)) > 1e-6


@pytest.mark.cuda
def test_metrics_on_cuda_match_cpu(tiny_dataset):
    G = _tiny_G(16)
    ctx = fsr_metrics.FSRMetricContext(sparsity_images=3, moment_images=6)
    for name in ('fsr_sparsity', 'fsr_moment_gap'):
        fn = fsr_metrics.make_fsr_metrics(ctx)[name]
        metric_main.register_metric(fn)
        try:
            cpu = metric_main.calc_metric(name, G=G, dataset_kwargs=tiny_dataset, device='cpu', cache=False).results
            gpu = metric_main.calc_metric(name, G=G, dataset_kwargs=tiny_dataset, device='cuda', cache=False).results
        finally:
            metric_main.unregister_metric(name)
        assert set(cpu) == set(gpu)
        for key in cpu:
            assert gpu[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-4), key


# ----------------------------------------------------------------------------------------------------------------------
# Plots.


def _assert_png(path, size=None):
    assert os.path.getsize(path) > 100
    with Image.open(path) as im:
        assert im.format == 'PNG'
        if size is not None:
            assert im.size == size
        return np.asarray(im.convert('RGB'))


def test_pyramid_grid_rows_are_nearest_upscaled(tmp_path):
    gen = torch.Generator().manual_seed(13)
    levels = {r: torch.rand([3, 3, r, r], generator=gen) * 2 - 1 for r in (4, 8, 16)}
    levels[8] = (levels[8][:, :1] * 127.5 + 128).clamp(0, 255).to(torch.uint8)   # uint8 grey also accepted
    path = plots.save_pyramid_grid(levels, str(tmp_path / 'grid.png'), max_images=2, gap=2)
    pix = _assert_png(path, size=(2 * 16 + 2, 3 * 16 + 4))
    u8 = lambda x: (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(pix[0:16, 18:34], u8(levels[4][1]).repeat(4, 0).repeat(4, 1))   # row 4, sample 1
    np.testing.assert_array_equal(pix[18:34, 0:16, 0], levels[8][0, 0].numpy().repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(pix[36:52, 0:16], u8(levels[16][0]))
    assert (pix[16:18] == 255).all()                                                              # gap rows
    with pytest.raises(ValueError, match='expected 8x8'):
        plots.save_pyramid_grid({8: torch.zeros([1, 3, 4, 4])}, str(tmp_path / 'bad.png'))


def test_plots_write_pngs(tmp_path):
    gen = torch.Generator().manual_seed(14)
    sparsity = {r: dg.layer_sparsity(_k_active(2, 8, r, r, k=r // 4, seed=r, noise=0.01) *
                                     (torch.rand([2, 8, r, r], generator=gen) < 0.9)) for r in (4, 8, 16)}
    _assert_png(plots.plot_sparsity(sparsity, str(tmp_path / 'sparsity.png')))

    run = tmp_path / 'run'
    run.mkdir()
    with open(run / 'metric-fsr_moment_gap.jsonl', 'wt') as f:
        for kimg in (0, 40, 80):
            results = {}
            for r in (4, 8):
                results.update({f'fsr_moment_gap1_res{r}': 1.0 / (kimg + r), f'fsr_moment_gap2_res{r}': 2.0 / (kimg + 1),
                                f'fsr_moment_floor1_res{r}': 0.01, f'fsr_moment_floor2_res{r}': 0.02})
            f.write(json.dumps(dict(results=results, metric='fsr_moment_gap',
                                    snapshot_pkl=f'network-snapshot-{kimg:06d}.pkl')) + '\n')
    kimg, series = plots.read_moment_gaps(str(run / 'metric-fsr_moment_gap.jsonl'))
    np.testing.assert_array_equal(kimg, [0, 40, 80])
    np.testing.assert_allclose(series[('gap', 1, 8)], [1 / 8, 1 / 48, 1 / 88])
    _assert_png(plots.plot_moment_gaps(str(run / 'metric-fsr_moment_gap.jsonl'), str(tmp_path / 'gaps.png')))

    atoms = torch.randn([10, 3, 3, 3], generator=gen)
    d = torch.cat([atoms[:6] + 0.3 * torch.randn([6, 3, 3, 3], generator=gen), torch.randn([6, 3, 3, 3], generator=gen)])
    _assert_png(plots.plot_matched_filters(d, atoms, str(tmp_path / 'filters.png')))

    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"results": {"other": 1}}\n')
    with pytest.raises(ValueError, match='no fsr_moment_gap results'):
        plots.read_moment_gaps(str(bad))
