"""Tests for training/dataset.py: ImageFolderDataset over folders and zips, labels, subsets, x-flips, pickling,
error messages, the built-in toy-shapes dataset and the --data registry."""
import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from dnnlib.util import construct_class_by_name
from training import dataset as ds_mod
from training.dataset import Dataset, ImageFolderDataset, ToyShapesDataset


# ---------------------------------------------------------------------------------------------------------------
# Helpers: write small image collections whose pixels the test knows.

def _png_bytes(array):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format='png')
    return buffer.getvalue()


def _random_images(rel_paths, shape, seed=0):
    rng = np.random.default_rng(seed)
    return {rel: rng.integers(0, 256, size=shape, dtype=np.uint8) for rel in rel_paths}


def _write_folder(root, images, extra_files=None):
    for rel, array in images.items():
        path = os.path.join(root, *rel.split('/'))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(_png_bytes(array))
    for rel, data in (extra_files or {}).items():
        with open(os.path.join(root, rel), 'wb') as f:
            f.write(data)
    return str(root)


def _write_zip(path, images, extra_files=None):
    with zipfile.ZipFile(path, 'w') as zf:
        for rel, array in images.items():
            zf.writestr(rel, _png_bytes(array))
        for rel, data in (extra_files or {}).items():
            zf.writestr(rel, data)
    return str(path)


def _hwc_to_chw(array):
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


REL_PATHS = ['b/img2.png', 'a/img1.png', 'a/sub/img0.png', 'c.png', 'b/img10.png', 'a/img3.png']


@pytest.fixture(params=['dir', 'zip'])
def rgb_source(request, tmp_path):
    images = _random_images(REL_PATHS, (8, 8, 3))
    if request.param == 'dir':
        path = _write_folder(tmp_path / 'rgbset', images, {'notes.txt': b'not an image'})
    else:
        path = _write_zip(tmp_path / 'rgbset.zip', images, {'notes.txt': b'not an image'})
    return path, images


# ---------------------------------------------------------------------------------------------------------------
# ImageFolderDataset basics.

def test_folder_and_zip_items_match_files_in_sorted_order(rgb_source):
    path, images = rgb_source
    ds = ImageFolderDataset(path)
    order = sorted(images)  # recursive, sorted by relative path with '/' separators
    assert ds.name == 'rgbset'
    assert len(ds) == len(images)
    assert ds.image_shape == [3, 8, 8] and ds.num_channels == 3 and ds.resolution == 8
    assert ds.label_shape == [0] and ds.label_dim == 0 and not ds.has_labels
    for idx, rel in enumerate(order):
        image, label = ds[idx]
        assert image.dtype == np.uint8 and image.flags['C_CONTIGUOUS']
        np.testing.assert_array_equal(image, _hwc_to_chw(images[rel]))
        assert label.dtype == np.float32 and label.shape == (0,)
    ds.close()


def test_greyscale_images_have_one_channel(tmp_path):
    images = _random_images(['x.png', 'y.png'], (4, 4))
    ds = ImageFolderDataset(_write_folder(tmp_path / 'grey', images))
    assert ds.image_shape == [1, 4, 4]
    np.testing.assert_array_equal(ds[1][0][0], images['y.png'])


def test_palette_image_is_decoded_to_rgb_colours(tmp_path):
    indices = np.array([[0, 1], [1, 2]], dtype=np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    image = PIL.Image.fromarray(indices, 'P')
    image.putpalette(palette)
    os.makedirs(tmp_path / 'pal')
    image.save(tmp_path / 'pal' / 'p.png')
    ds = ImageFolderDataset(str(tmp_path / 'pal'))
    expected = np.array(palette[:9], dtype=np.uint8).reshape(3, 3)[indices]  # [H, W, 3] looked up by hand
    np.testing.assert_array_equal(ds[0][0], expected.transpose(2, 0, 1))


def test_resolution_argument_accepts_matching_images(rgb_source):
    path, _ = rgb_source
    assert ImageFolderDataset(path, resolution=8).resolution == 8


# ---------------------------------------------------------------------------------------------------------------
# Labels.

def test_integer_labels_become_one_hot(tmp_path):
    images = _random_images(REL_PATHS, (4, 4, 3))
    classes = {rel: i % 4 for i, rel in enumerate(REL_PATHS)}
    meta = json.dumps({'labels': [[rel, c] for rel, c in classes.items()]}).encode()
    path = _write_zip(tmp_path / 'lab.zip', images, {'dataset.json': meta})
    ds = ImageFolderDataset(path, use_labels=True)
    assert ds.has_labels and ds.has_onehot_labels
    assert ds.label_shape == [4] and ds.label_dim == 4
    for idx, rel in enumerate(sorted(images)):
        expected = np.zeros(4, dtype=np.float32)
        expected[classes[rel]] = 1
        _, label = ds[idx]
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, expected)
        np.testing.assert_array_equal(ds.get_label(idx), expected)
        assert int(ds.get_details(idx).raw_label) == classes[rel]
    # Without use_labels the labels are empty even though dataset.json exists.
    ds_nolabels = ImageFolderDataset(path, use_labels=False)
    assert ds_nolabels.label_shape == [0] and not ds_nolabels.has_labels


def test_vector_labels_stay_float_vectors(tmp_path):
    images = _random_images(['a.png', 'b.png', 'c.png'], (4, 4, 3))
    vectors = {'a.png': [0.5, -1.0], 'b.png': [2, 3], 'c.png': [0.0, 0.25]}
    meta = json.dumps({'labels': [[rel, v] for rel, v in vectors.items()]}).encode()
    ds = ImageFolderDataset(_write_folder(tmp_path / 'vec', images, {'dataset.json': meta}), use_labels=True)
    assert not ds.has_onehot_labels and ds.label_shape == [2]
    for idx, rel in enumerate(['a.png', 'b.png', 'c.png']):
        np.testing.assert_array_equal(ds[idx][1], np.array(vectors[rel], dtype=np.float32))


def test_null_labels_and_missing_json_give_empty_labels(tmp_path):
    images = _random_images(['a.png', 'b.png'], (4, 4, 3))
    ds = ImageFolderDataset(_write_folder(tmp_path / 'n1', images, {'dataset.json': b'{"labels": null}'}),
                            use_labels=True)
    assert ds.label_shape == [0] and not ds.has_labels
    ds = ImageFolderDataset(_write_folder(tmp_path / 'n2', images), use_labels=True)
    assert ds.label_shape == [0] and not ds.has_labels


def test_missing_label_entry_names_the_image(tmp_path):
    images = _random_images(['a.png', 'b.png'], (4, 4, 3))
    meta = json.dumps({'labels': [['a.png', 0]]}).encode()
    path = _write_folder(tmp_path / 'miss', images, {'dataset.json': meta})
    with pytest.raises(ValueError, match=r"dataset\.json.*no label for 1 image.*'b\.png'"):
        ImageFolderDataset(path, use_labels=True)


# ---------------------------------------------------------------------------------------------------------------
# Subsets and x-flips.

def test_max_size_subset_is_seeded_sorted_and_nvidia_compatible(tmp_path):
    rels = [f'{i:03d}.png' for i in range(20)]
    images = _random_images(rels, (4, 4, 3))
    path = _write_folder(tmp_path / 'sub', images)
    for seed in (0, 7):
        ds = ImageFolderDataset(path, max_size=5, random_seed=seed)
        # Reference: shuffle all indices with RandomState(seed), keep the first 5, sort.
        order = np.arange(20)
        np.random.RandomState(seed).shuffle(order)
        expected = np.sort(order[:5])
        got = [ds.get_details(i).raw_idx for i in range(len(ds))]
        assert got == expected.tolist()
        for i, raw in enumerate(expected):
            np.testing.assert_array_equal(ds[i][0], _hwc_to_chw(images[rels[raw]]))
    subset0 = [ImageFolderDataset(path, max_size=5, random_seed=0).get_details(i).raw_idx for i in range(5)]
    subset7 = [ImageFolderDataset(path, max_size=5, random_seed=7).get_details(i).raw_idx for i in range(5)]
    assert subset0 != subset7
    assert len(ImageFolderDataset(path, max_size=50)) == 20


def test_xflip_doubles_and_mirrors_after_subset(tmp_path):
    rels = [f'{i:03d}.png' for i in range(10)]
    images = _random_images(rels, (4, 6, 3))
    path = _write_folder(tmp_path / 'flip', images)
    ds = ImageFolderDataset(path, xflip=True, max_size=4, random_seed=1)
    assert len(ds) == 8
    for i in range(4):
        original, flipped = ds[i][0], ds[i + 4][0]
        assert not ds.get_details(i).xflip and ds.get_details(i + 4).xflip
        assert ds.get_details(i).raw_idx == ds.get_details(i + 4).raw_idx
        raw = _hwc_to_chw(images[rels[ds.get_details(i).raw_idx]])
        np.testing.assert_array_equal(original, raw)
        np.testing.assert_array_equal(flipped, raw[:, :, [5, 4, 3, 2, 1, 0]])


# ---------------------------------------------------------------------------------------------------------------
# Pickling and DataLoader workers.

def test_pickle_drops_handles_and_items_survive(rgb_source):
    path, images = rgb_source
    ds = ImageFolderDataset(path, use_labels=True)
    first = ds[0][0]
    state = ds.__getstate__()
    assert state.get('_zipfile') is None and state.get('_raw_labels') is None
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[0][0], first)
    np.testing.assert_array_equal(clone[len(clone) - 1][0], _hwc_to_chw(images[sorted(images)[-1]]))


def test_dataloader_with_worker_processes_reads_zip_correctly(tmp_path):
    rels = [f'{i:03d}.png' for i in range(24)]
    images = _random_images(rels, (8, 8, 3))
    ds = ImageFolderDataset(_write_zip(tmp_path / 'workers.zip', images))
    ds[0]  # the parent has touched the zip before the workers start
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = torch.cat([images_batch for images_batch, _labels in loader])
    expected = np.stack([_hwc_to_chw(images[rel]) for rel in rels])
    np.testing.assert_array_equal(batches.numpy(), expected)


# ---------------------------------------------------------------------------------------------------------------
# Errors.

def test_path_errors_are_ioerrors_naming_the_path(tmp_path):
    not_zip = tmp_path / 'file.txt'
    not_zip.write_text('hello')
    with pytest.raises(IOError, match='directory or zip'):
        ImageFolderDataset(str(not_zip))
    with pytest.raises(IOError, match='does not exist'):
        ImageFolderDataset(str(tmp_path / 'absent'))
    os.makedirs(tmp_path / 'empty')
    (tmp_path / 'empty' / 'readme.txt').write_text('no images here')
    with pytest.raises(IOError, match='no image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    bad_zip = tmp_path / 'broken.zip'
    bad_zip.write_bytes(b'this is not a zip archive')
    with pytest.raises(IOError, match='broken.zip'):
        ImageFolderDataset(str(bad_zip))


def test_resolution_mismatch_is_ioerror_naming_first_file(rgb_source):
    path, _ = rgb_source
    with pytest.raises(IOError, match=r'a/img1\.png.*8x8.*resolution=16'):
        ImageFolderDataset(path, resolution=16)


def test_mismatched_image_shape_raises_value_error_at_fetch(tmp_path):
    images = _random_images(['a.png', 'b.png'], (8, 8, 3))
    images['c.png'] = np.zeros((4, 4, 3), dtype=np.uint8)
    images['d.png'] = np.zeros((8, 8), dtype=np.uint8)  # greyscale among RGB
    ds = ImageFolderDataset(_write_folder(tmp_path / 'mixed', images))
    assert len(ds) == 4
    ds[1]  # fine
    with pytest.raises(ValueError, match=r'c\.png.*\[3, 4, 4\].*\[3, 8, 8\]'):
        ds[2]
    with pytest.raises(ValueError, match=r'd\.png.*\[1, 8, 8\].*\[3, 8, 8\]'):
        ds[3]


def test_corrupt_and_sixteen_bit_images_name_the_file(tmp_path):
    images = _random_images(['a.png'], (4, 4, 3))
    path = _write_folder(tmp_path / 'bad', images, {'z.png': b'\x89PNG garbage'})
    ds = ImageFolderDataset(path)
    with pytest.raises(ValueError, match=r'z\.png: cannot read image'):
        ds[1]
    os.makedirs(tmp_path / 'deep')
    PIL.Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(tmp_path / 'deep' / 'a.png')
    with pytest.raises(ValueError, match=r'a\.png: unsupported image mode'):
        ImageFolderDataset(str(tmp_path / 'deep'))


def test_resolution_property_rejects_non_square_and_non_power_of_two(tmp_path):
    rect = ImageFolderDataset(_write_folder(tmp_path / 'rect', _random_images(['a.png'], (4, 8, 3))))
    assert rect.image_shape == [3, 4, 8]
    with pytest.raises(ValueError, match='8x4.*square'):
        rect.resolution
    odd = ImageFolderDataset(_write_folder(tmp_path / 'odd', _random_images(['a.png'], (6, 6, 3))))
    with pytest.raises(ValueError, match='6x6 is not a power of two'):
        odd.resolution


# ---------------------------------------------------------------------------------------------------------------
# In-memory subclasses of the base class.

class _ArrayDataset(Dataset):
    def __init__(self, images, labels=None, **kwargs):
        self._images, self._labels = images, labels
        super().__init__(name='arrays', raw_shape=images.shape, **kwargs)

    def _load_raw_image(self, raw_idx):
        return self._images[raw_idx]

    def _load_raw_labels(self):
        return self._labels


def test_in_memory_subclass_gets_labels_subset_and_flip():
    images = np.arange(5 * 1 * 2 * 2, dtype=np.uint8).reshape(5, 1, 2, 2)
    labels = np.array([[1.0, 2.0], [3, 4], [5, 6], [7, 8], [9, 10]], dtype=np.float32)
    ds = _ArrayDataset(images, labels, use_labels=True, xflip=True)
    assert len(ds) == 10 and ds.label_shape == [2] and ds.resolution == 2
    np.testing.assert_array_equal(ds[7][0], images[2][:, :, ::-1])
    np.testing.assert_array_equal(ds[7][1], labels[2])
    with pytest.raises(ValueError, match='int64 class indices or float32'):
        _ArrayDataset(images, labels.astype(np.float64), use_labels=True).label_shape


def test_in_memory_subclass_with_wrong_dtype_is_reported():
    class Bad(_ArrayDataset):
        def _load_raw_image(self, raw_idx):
            return self._images[raw_idx].astype(np.float32)
    ds = Bad(np.zeros((2, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match='item 1 of dataset .arrays.: expected a uint8'):
        ds[1]


# ---------------------------------------------------------------------------------------------------------------
# Built-in toy-shapes dataset.

def test_toy_shapes_is_deterministic_structured_and_labelled():
    ds = ToyShapesDataset(resolution=32, num_images=60, num_channels=3, seed=5, use_labels=True)
    again = ToyShapesDataset(resolution=32, num_images=60, num_channels=3, seed=5, use_labels=True)
    other = ToyShapesDataset(resolution=32, num_images=60, num_channels=3, seed=6, use_labels=True)
    assert ds.name == 'toy-shapes' and ds.image_shape == [3, 32, 32] and ds.resolution == 32
    assert ds.label_shape == [3] and ds.has_onehot_labels
    classes = [int(ds.get_details(i).raw_label) for i in range(60)]
    assert set(classes) == {0, 1, 2}
    for i in (0, 17, 59):
        image, label = ds[i]
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, again[i][0])
        assert not np.array_equal(image, other[i][0])
        assert label.argmax() == classes[i] and label.sum() == 1
        # Real images, not noise: smooth almost everywhere (noise would give ~85), yet not flat.
        step = np.abs(np.diff(image.astype(np.int32), axis=2)).mean()
        assert step < 12, step
        assert image.astype(np.float32).std() > 10


def test_toy_shapes_greyscale_is_luma_of_colour_version():
    colour = ToyShapesDataset(resolution=16, num_images=4, num_channels=3, seed=1)
    grey = ToyShapesDataset(resolution=16, num_images=4, num_channels=1, seed=1)
    for i in range(4):
        rgb = colour[i][0].astype(np.float64)
        luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        assert grey[i][0].shape == (1, 16, 16)
        assert np.abs(grey[i][0][0] - luma).max() <= 1.0


def test_toy_shapes_rejects_bad_options():
    with pytest.raises(ValueError, match='power of two'):
        ToyShapesDataset(resolution=24)
    with pytest.raises(ValueError, match='channels must be 1 or 3'):
        ToyShapesDataset(num_channels=2)


# ---------------------------------------------------------------------------------------------------------------
# Registry and --data parsing.

def test_data_arg_with_existing_path_gives_image_folder_kwargs(rgb_source):
    path, images = rgb_source
    kwargs = ds_mod.dataset_kwargs_from_data_arg(path, use_labels=False, max_size=3, xflip=True)
    assert isinstance(kwargs, dnnlib.EasyDict)
    assert kwargs == dict(class_name='training.dataset.ImageFolderDataset', path=path, use_labels=False,
                          max_size=3, xflip=True, random_seed=0)
    ds = construct_class_by_name(**kwargs)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 6


def test_data_arg_names_toy_shapes_with_options():
    assert 'toy-shapes' in ds_mod.list_datasets()
    kwargs = ds_mod.dataset_kwargs_from_data_arg('toy-shapes:res=16,num=10,channels=1,seed=2', use_labels=True)
    assert kwargs.class_name == 'training.dataset.ToyShapesDataset'
    assert (kwargs.resolution, kwargs.num_images, kwargs.num_channels, kwargs.seed) == (16, 10, 1, 2)
    ds = construct_class_by_name(**kwargs)
    assert len(ds) == 10 and ds.image_shape == [1, 16, 16] and ds.label_dim == 3
    # A plain name uses the factory defaults; None in common does not clobber the factory's resolution.
    kwargs = ds_mod.dataset_kwargs_from_data_arg('toy-shapes', resolution=None, max_size=None)
    assert kwargs.resolution == 32 and kwargs.num_images == 1000 and kwargs.max_size is None


@pytest.fixture
def capture_factory():
    calls = []

    def factory(**options):
        calls.append(options)
        return dict(class_name='training.dataset.ToyShapesDataset', num_images=4)

    ds_mod.register_dataset('test-capture', factory, help='records its options')
    yield calls
    ds_mod.unregister_dataset('test-capture')


def test_option_values_are_parsed_to_python_types(capture_factory):
    kwargs = ds_mod.dataset_kwargs_from_data_arg('test-capture:i=3,f=1.5,neg=-2,t=true,n=none,s=abc,e=1e-3',
                                                 xflip=True)
    assert capture_factory[-1] == dict(i=3, f=1.5, neg=-2, t=True, n=None, s='abc', e=1e-3)
    assert type(capture_factory[-1]['i']) is int and type(capture_factory[-1]['t']) is bool
    assert kwargs.xflip is True and kwargs.num_images == 4
    assert ds_mod.list_datasets()['test-capture'] == 'records its options'


def test_unknown_dataset_error_lists_registered_names(capture_factory):
    with pytest.raises(ValueError, match=r"no such file or directory.*registered: .*test-capture.*toy-shapes"):
        ds_mod.dataset_kwargs_from_data_arg('/no/such/dataset.zip')
    with pytest.raises(ValueError, match=r'has no option\(s\) colour'):
        ds_mod.dataset_kwargs_from_data_arg('toy-shapes:colour=red')
    with pytest.raises(ValueError, match=r"got option 'res'"):
        ds_mod.dataset_kwargs_from_data_arg('toy-shapes:res')
    with pytest.raises(ValueError, match='given twice'):
        ds_mod.dataset_kwargs_from_data_arg('toy-shapes:res=8,res=16')


def test_registration_rules(capture_factory):
    def other(**options):
        return {}
    with pytest.raises(ValueError, match='already registered'):
        ds_mod.register_dataset('test-capture', other)
    with pytest.raises(ValueError, match='invalid dataset name'):
        ds_mod.register_dataset('bad:name', other)
    # Re-registering the very same factory (a module imported twice) is accepted.
    ds_mod.register_dataset('toy-shapes', ds_mod._toy_shapes_factory, help=ds_mod.list_datasets()['toy-shapes'])
    ds_mod.register_dataset('test-broken', other)
    try:
        with pytest.raises(ValueError, match='class_name'):
            ds_mod.dataset_kwargs_from_data_arg('test-broken')
    finally:
        ds_mod.unregister_dataset('test-broken')
