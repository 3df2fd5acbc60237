"""Tests of fsr_plugin.synthetic: the identifiable FSR teacher and the `fsr-synthetic` dataset."""
import itertools
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dnnlib
from fsr_plugin import synthetic
from fsr_plugin.synthetic import FSRSyntheticDataset, FSRTeacher, atom_coherence, images_to_uint8, \
    structured_atoms
from training import dataset as host_dataset


@pytest.fixture(scope='module')
def teacher32():
    return FSRTeacher(resolution=32, seed=0)


@pytest.fixture(scope='module')
def teacher16():
    return FSRTeacher(resolution=16, seed=3, calib_images=256)


def _paint_numpy(codes, filters):
    """Explicit loops: out[n, :, y+i-1, x+j-1] += codes[n, k, y, x] * filters[k, :, i, j] (zero outside)."""
    n, k_count, h, w = codes.shape
    out = np.zeros((n, filters.shape[1], h, w))
    for b, k, y, x in zip(*np.nonzero(codes)):
        for i, j in itertools.product(range(3), range(3)):
            yy, xx = y + i - 1, x + j - 1
            if 0 <= yy < h and 0 <= xx < w:
                out[b, :, yy, xx] += codes[b, k, y, x] * filters[k, :, i, j]
    return out



pytestmark = pytest.mark.usefixtures('single_torch_thread')

# -- atoms ---------------------------------------------------------------------------------------------------------

def test_structured_atoms_are_unit_norm_with_coherence_one_third():
    atoms = structured_atoms(12).numpy()
    assert atoms.shape == (12, 3, 3, 3)
    flat = atoms.reshape(12, -1)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), 1.0, atol=1e-12)
    # Independent pairwise loop: same pattern -> cosine -1/3 (tetrahedron colours), different pattern -> 0.
    for a, b in itertools.combinations(range(12), 2):
        expected = -1 / 3 if a % 3 == b % 3 else 0.0
        assert abs(float(flat[a] @ flat[b]) - expected) < 1e-12, (a, b)
    assert atom_coherence(atoms) == pytest.approx(1 / 3, abs=1e-12)


def test_structured_atom_patterns():
    atoms = structured_atoms(3).numpy()
    flat, vertical, horizontal = atoms
    assert np.allclose(flat, flat[:, :1, :1])                      # constant over space
    assert np.allclose(vertical[:, :, 1], 0) and np.allclose(vertical[:, :, 0], -vertical[:, :, 2])
    assert np.allclose(vertical, vertical[:, :1, :])                # constant along a column: a vertical edge
    assert np.allclose(horizontal, vertical.transpose(0, 2, 1))


def test_teacher_atoms_keep_coherence_under_colour_rotation(teacher32):
    atoms = teacher32.atoms
    assert atoms.shape == (12, 3, 3, 3) and atoms.dtype == torch.float32
    assert atom_coherence(atoms) <= 0.35
    assert not torch.allclose(atoms, structured_atoms(12).float())  # colours rotated per seed


def test_structured_atoms_reject_too_many():
    with pytest.raises(ValueError, match='1..12'):
        structured_atoms(13)


# -- teacher ---------------------------------------------------------------------------------------------------------

def test_teacher_is_deterministic_per_seed(teacher16):
    again = FSRTeacher(resolution=16, seed=3, calib_images=256)
    torch.testing.assert_close(again.atoms, teacher16.atoms, rtol=0, atol=0)
    a, b = teacher16.sample(6, seed=5), again.sample(6, seed=5)
    torch.testing.assert_close(a['image'], b['image'], rtol=0, atol=0)
    other = FSRTeacher(resolution=16, seed=4, calib_images=256)
    assert not torch.allclose(other.atoms, teacher16.atoms)
    assert not torch.allclose(teacher16.sample(6, seed=6)['image'], a['image'])


def test_sample_image_j_is_stream_item_start_plus_j(teacher16):
    whole = teacher16.sample(5, seed=7)['image']
    tail = teacher16.sample(2, seed=7, start=3)['image']
    torch.testing.assert_close(tail, whole[3:], rtol=0, atol=1e-6)
    g1 = teacher16.sample(3, generator=torch.Generator().manual_seed(1))['image']
    g2 = teacher16.sample(3, generator=torch.Generator().manual_seed(1))['image']
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    with pytest.raises(ValueError, match='not both'):
        teacher16.sample(2, seed=1, generator=torch.Generator())


def test_sample_shapes(teacher32):
    out = teacher32.sample(4, seed=1)
    assert teacher32.resolutions == [4, 8, 16, 32]
    assert out['image'].shape == (4, 3, 32, 32)
    for r in teacher32.resolutions:
        assert out['levels'][r].shape == (4, 3, r, r)
        assert out['readouts'][r].shape == (4, 3, r, r)
        assert out['hidden'][r].shape == (4, teacher32.widths[r], r, r)
        assert teacher32.out_filters[r].shape == (teacher32.widths[r], 3, 3, 3)
    assert [teacher32.widths[r] for r in teacher32.resolutions] == [8, 16, 16, 12]
    assert out['top_codes'].shape == (4, 12, 32, 32)
    torch.testing.assert_close(out['hidden'][32], out['top_codes'])


def test_levels_are_box_downscales(teacher16):
    out = teacher16.sample(3, seed=2)
    image = out['image'].double().numpy()
    for r in teacher16.resolutions:
        f = 16 // r
        expected = image.reshape(3, 3, r, f, r, f).mean(axis=(3, 5))
        np.testing.assert_allclose(out['levels'][r].numpy(), expected, atol=1e-6)


def test_image_is_the_painting_of_top_codes_by_atoms(teacher16):
    out = teacher16.sample(3, seed=4)
    expected = _paint_numpy(out['top_codes'].double().numpy(), teacher16.atoms.double().numpy())
    np.testing.assert_allclose(out['image'].numpy(), expected * teacher16.image_gain, atol=1e-5)
    for r in teacher16.resolutions[:-1]:  # lower-level read-outs use the same painting convention
        expected = _paint_numpy(out['hidden'][r].double().numpy(), teacher16.out_filters[r].double().numpy())
        np.testing.assert_allclose(out['readouts'][r].numpy(), expected, atol=1e-4)
        assert 0 <= teacher16.level_fit_r2[r] <= 1


def test_top_level_one_channel_per_site_isolated_sites(teacher32):
    codes = teacher32.sample(8, seed=3)['top_codes'].numpy()
    active = codes > 0
    assert active.sum(axis=1).max() == 1                          # at most one channel per position
    amps = codes[active]
    assert amps.min() >= 0.5 - 1e-6 and amps.max() <= 1.5 + 1e-6
    sites = active.any(axis=1)
    for b, y, x in zip(*np.nonzero(sites)):                         # non-maximum suppression: no adjacent sites
        window = sites[b, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
        assert window.sum() == 1, (b, y, x)


def test_first_level_is_relu_of_transposed_conv_of_z(teacher16):
    """S_1 = ReLU(Deconv_1(z) - b) * g with a stride-2 4x4 transposed conv (padding 1), checked with loops."""
    z, _ = teacher16.noise_for_indices([0, 1], 9)
    hidden = teacher16.sample(2, seed=9)['hidden'][4].double().numpy()
    w = teacher16._deconv[0].numpy()                               # [C_in, C_out, 4, 4]
    zn = z.numpy()
    pre = np.zeros((2, w.shape[1], 6, 6))                          # full output, then crop the padding 1
    for b, c, y, x in itertools.product(range(2), range(zn.shape[1]), range(2), range(2)):
        pre[b, :, 2 * y:2 * y + 4, 2 * x:2 * x + 4] += zn[b, c, y, x] * w[c]
    pre = pre[:, :, 1:5, 1:5]
    bias = teacher16._bias[0].numpy()[None, :, None, None]
    gain = teacher16._gain[0].numpy()[None, :, None, None]
    np.testing.assert_allclose(hidden, np.maximum(pre - bias, 0) * gain, atol=1e-5)


def test_measured_density_close_to_target(teacher32):
    dens = teacher32.measured_density(num_images=128, seed=777)    # fresh images, not the calibration batch
    assert dens[32]['sites_per_3x3'] == pytest.approx(0.9, abs=0.1)
    assert dens[32]['active_per_position'] == pytest.approx(0.1, abs=0.012)
    assert dens[4]['active_per_position'] == pytest.approx(2.0, abs=0.3)    # about 2 of 8
    assert dens[8]['active_per_position'] == pytest.approx(3.0, abs=0.4)    # about 3 of 16
    assert dens[16]['active_per_position'] == pytest.approx(3.0, abs=0.4)
    # Independent count on the returned hidden layers.
    hidden = teacher32.sample(64, seed=778)['hidden'][8].numpy()
    assert np.mean(hidden > 0) == pytest.approx(3 / 16, abs=0.03)


def test_images_in_range_and_not_constant(teacher32):
    image = teacher32.sample(32, seed=11)['image']
    assert torch.isfinite(image).all()
    assert image.abs().max() < 3
    assert (image.abs() > 1).float().mean() < 0.01
    assert image.std(dim=(1, 2, 3)).min() > 0.05
    assert image.mean().abs() < 0.2


def test_teacher_rejects_bad_arguments():
    with pytest.raises(ValueError, match='power of two'):
        FSRTeacher(resolution=24)
    with pytest.raises(ValueError, match='num_levels'):
        FSRTeacher(resolution=16, num_levels=4)
    with pytest.raises(ValueError, match='widths'):
        FSRTeacher(resolution=16, widths=[8])
    with pytest.raises(ValueError, match='jitter'):
        FSRTeacher(resolution=16, jitter=0)


# -- dataset -------------------------------------------------------------------------------------------------------

def test_uint8_conversion():
    x = torch.tensor([-2.0, -1.0, -0.004, 0.0, 0.5, 1.0, 3.0])
    expected = np.clip(np.round(x.numpy().astype(np.float64) * 127.5 + 128), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(images_to_uint8(x), expected)


def test_dataset_items_are_teacher_images():
    ds = FSRSyntheticDataset(resolution=16, num_images=100, seed=3)
    assert len(ds) == 100 and ds.image_shape == [3, 16, 16] and ds.resolution == 16 and not ds.has_labels
    image, label = ds[70]
    assert image.dtype == np.uint8 and image.shape == (3, 16, 16) and label.shape == (0,)
    expected = images_to_uint8(ds.teacher.sample(1, seed=3, start=70)['image'])[0]
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    assert np.mean(image == expected) > 0.999
    # Chunking does not change the images.
    single = FSRSyntheticDataset(resolution=16, num_images=100, seed=3, chunk_size=1)
    for i in (0, 63, 64, 99):
        np.testing.assert_array_equal(single[i][0], ds[i][0])
    assert not np.array_equal(ds[0][0], ds[1][0])


def test_dataset_cache_is_bounded():
    ds = FSRSyntheticDataset(resolution=16, num_images=50, seed=1, chunk_size=4, cache_images=8)
    first = ds[0][0]
    for i in range(0, 50, 4):
        ds[i]
    assert len(ds._cache) == 2
    np.testing.assert_array_equal(ds[0][0], first)                 # regenerated identically


def test_dataset_xflip_and_max_size_from_base_class():
    ds = FSRSyntheticDataset(resolution=16, num_images=20, seed=2, xflip=True, max_size=10)
    assert len(ds) == 20
    np.testing.assert_array_equal(ds[10][0], ds[0][0][:, :, ::-1])


def test_infinite_dataset():
    ds = FSRSyntheticDataset(resolution=16, num_images=0, seed=0)
    assert len(ds) == synthetic.INFINITE_NUM_IMAGES
    image = ds[len(ds) - 1][0]
    assert image.shape == (3, 16, 16) and image.std() > 0
    with pytest.raises(ValueError, match='num must be >= 0'):
        FSRSyntheticDataset(resolution=16, num_images=-1)


def test_dataset_pickles_and_works_in_dataloader_workers():
    ds = FSRSyntheticDataset(resolution=16, num_images=16, seed=5)
    first = ds[3][0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._cache == {}
    np.testing.assert_array_equal(clone[3][0], first)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1)
    batch = next(iter(loader))[0]
    np.testing.assert_array_equal(batch[3].numpy(), first)


def test_registry_round_trip():
    assert 'fsr-synthetic' in host_dataset.list_datasets()
    kwargs = host_dataset.dataset_kwargs_from_data_arg('fsr-synthetic:res=16,num=40,seed=3', xflip=False)
    assert kwargs.class_name == 'fsr_plugin.synthetic.FSRSyntheticDataset'
    assert (kwargs.resolution, kwargs.num_images, kwargs.seed) == (16, 40, 3)
    ds = dnnlib.util.construct_class_by_name(**kwargs)
    assert isinstance(ds, FSRSyntheticDataset) and len(ds) == 40 and ds.resolution == 16
    direct = FSRSyntheticDataset(resolution=16, num_images=40, seed=3)
    np.testing.assert_array_equal(ds[39][0], direct[39][0])
    with pytest.raises(ValueError, match='no option'):
        host_dataset.dataset_kwargs_from_data_arg('fsr-synthetic:colour=1')


def test_level_references_share_of_variance_set_by_z(teacher16):
    many = teacher16.level_references(200, draws=24, seed=3)
    few = teacher16.level_references(200, draws=2, seed=3)
    for r in teacher16.resolutions:
        assert many['readouts'][r].shape == many['given_z'][r].shape == (200, 3, r, r)
        # The finite-draws correction makes 2 draws agree with 24; without it 2 draws would say far more.
        assert few['z_share'][r] == pytest.approx(many['z_share'][r], abs=0.06)
        # On this design about a third of every level's variance is set by z: the top-level jitter sets the rest.
        assert 0.15 < many['z_share'][r] < 0.7
    image = few['readouts'][16].double()  # the top readout is the image itself (of the first jitter draw)
    first_draw = teacher16.sample(200, generator=torch.Generator().manual_seed(3))['image']
    torch.testing.assert_close(image.float(), first_draw)
    naive = float(few['given_z'][16].double().var(dim=0).sum() / image.var(dim=0).sum())
    assert naive > few['z_share'][16] + 0.2  # what the correction removes: half the jitter variance
    # Twice the jitter (1.0 instead of 0.5) leaves z less of every level. (Far less jitter cannot make the
    # teacher's 0.9 sites per 3x3: construction refuses it.)
    loud = FSRTeacher(resolution=16, seed=3, calib_images=256, jitter=1.0).level_references(200, draws=24, seed=3)
    assert all(loud['z_share'][r] < many['z_share'][r] - 0.1 for r in teacher16.resolutions)
    with pytest.raises(ValueError, match='draws must be >= 2'):
        teacher16.level_references(10, draws=1)


def test_teacher_noise_share_fixed_against_fresh_jitter(teacher16):
    share = teacher16.noise_share(200, seed=3)
    drawn = teacher16.sample(200, generator=torch.Generator().manual_seed(3))['image'].double()  # fresh jitter
    for r in teacher16.resolutions:
        level = F.avg_pool2d(drawn, 16 // r)
        assert share[r]['var'] == pytest.approx(float(level.var(dim=0).mean()), rel=1e-5)
        assert share[r]['share'] == pytest.approx(1 - share[r]['var_fixed'] / share[r]['var'], rel=1e-12)
        # Some of every level's variation is the jitter's, most of it z's (its sites follow the latent grid).
        assert 0.01 < share[r]['share'] < 0.5
    # Twice the jitter makes more of every level's variation.
    loud = FSRTeacher(resolution=16, seed=3, calib_images=256, jitter=1.0).noise_share(200, seed=3)
    assert all(loud[r]['share'] > share[r]['share'] + 0.02 for r in teacher16.resolutions)
    with pytest.raises(ValueError, match='n must be >= 2'):
        teacher16.noise_share(1)
