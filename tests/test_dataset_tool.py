"""Tests for dataset_tool.py: conversions from folders, zips, idx (MNIST) and CIFAR-10 tarballs; transforms; labels;
error cases (one-line message naming the file, non-zero exit, nothing left at --dest); round trip through
training.dataset.ImageFolderDataset."""
import gzip
import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from training.dataset import ImageFolderDataset


# ---------------------------------------------------------------------------------------------------------------
# Helpers.

def _save_png(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(array, mode).save(path)


def _png_bytes(array):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format='png')
    return buffer.getvalue()


def _run(*args):
    """Run the CLI in-process; returns click's Result (exit_code, output = stdout + stderr)."""
    return CliRunner().invoke(dataset_tool.main, [str(a) for a in args], catch_exceptions=False)


def _read_output(dest):
    """{name: array} of the written images and the parsed dataset.json, for a zip or a directory."""
    if str(dest).endswith('.zip'):
        with zipfile.ZipFile(dest) as zf:
            infos = zf.infolist()
            assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
            files = {info.filename: zf.read(info.filename) for info in infos}
    else:
        files = {}
        for root, _dirs, names in os.walk(dest):
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), dest).replace(os.sep, '/')
                with open(os.path.join(root, name), 'rb') as f:
                    files[rel] = f.read()
    meta = json.loads(files.pop('dataset.json'))
    images = {name: np.asarray(PIL.Image.open(io.BytesIO(data))) for name, data in files.items()}
    return images, meta


def _expected_names(count):
    return [f'{i // 1000:05d}/img{i:08d}.png' for i in range(count)]


def _assert_nothing_left(parent, before):
    """`parent` holds exactly the entries it held before (no dest, no temporary)."""
    assert sorted(os.listdir(parent)) == sorted(before)


def _block_mean(array, factor):
    """Independent box downsampling: mean over factor x factor blocks of an [H, W, C] array."""
    h, w = array.shape[:2]
    blocks = array.astype(np.float64).reshape(h // factor, factor, w // factor, factor, -1)
    return blocks.mean(axis=(1, 3))


# ---------------------------------------------------------------------------------------------------------------
# Folder and zip sources.

def test_folder_to_zip_keeps_pixels_order_and_dataset_json_labels(tmp_path):
    rng = np.random.default_rng(0)
    rels = ['b/x.png', 'a/y.png', 'a/sub/z.png', 'top.png']
    arrays = {rel: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for rel in rels}
    for rel, array in arrays.items():
        _save_png(tmp_path / 'src' / rel, array)
    labels = {rel: i for i, rel in enumerate(rels)}
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [[k, v] for k, v in labels.items()]}))
    (tmp_path / 'src' / 'readme.txt').write_text('ignored')

    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip')
    assert result.exit_code == 0, result.output
    assert 'Wrote 4 8x8 RGB images (with labels)' in result.output
    images, meta = _read_output(tmp_path / 'out.zip')
    order = sorted(rels)
    assert sorted(images) == _expected_names(4)
    for i, rel in enumerate(order):
        np.testing.assert_array_equal(images[_expected_names(4)[i]], arrays[rel])
    assert meta['labels'] == [[name, labels[rel]] for name, rel in zip(_expected_names(4), order)]

    # Round trip through the training dataset.
    ds = ImageFolderDataset(str(tmp_path / 'out.zip'), use_labels=True)
    assert len(ds) == 4 and ds.image_shape == [3, 8, 8] and ds.label_dim == 4
    for i, rel in enumerate(order):
        image, label = ds[i]
        np.testing.assert_array_equal(image, arrays[rel].transpose(2, 0, 1))
        assert label.argmax() == labels[rel]


def test_zip_to_directory_with_labels_from_dirs_and_subdir(tmp_path):
    rng = np.random.default_rng(1)
    # The label is the image's parent folder name ('ant' sits one level deeper but is still a class).
    layout = ['train/dog/1.png', 'train/cat/2.png', 'train/cat/1.png', 'train/emu/9.png', 'train/more/ant/3.png',
              'test/dog/5.png']
    arrays = {rel: rng.integers(0, 256, (4, 4), dtype=np.uint8) for rel in layout}
    with zipfile.ZipFile(tmp_path / 'src.zip', 'w') as zf:
        for rel, array in arrays.items():
            zf.writestr(rel, _png_bytes(array))
    os.makedirs(tmp_path / 'out')  # an existing empty directory is an acceptable destination
    result = _run('--source', tmp_path / 'src.zip', '--dest', tmp_path / 'out', '--labels-from-dirs',
                  '--subdir', 'train')
    assert result.exit_code == 0, result.output
    images, meta = _read_output(tmp_path / 'out')
    kept = sorted(rel for rel in layout if rel.startswith('train/'))
    assert meta['class_names'] == ['ant', 'cat', 'dog', 'emu']
    class_of = {'ant': 0, 'cat': 1, 'dog': 2, 'emu': 3}
    names = _expected_names(len(kept))
    assert meta['labels'] == [[name, class_of[rel.split('/')[-2]]] for name, rel in zip(names, kept)]
    for name, rel in zip(names, kept):
        np.testing.assert_array_equal(images[name], arrays[rel])
    ds = ImageFolderDataset(str(tmp_path / 'out'), use_labels=True)
    assert ds.image_shape == [1, 4, 4] and ds.label_shape == [4]


def test_labels_from_dirs_rejects_images_outside_class_folders(tmp_path):
    _save_png(tmp_path / 'src' / 'cat' / 'a.png', np.zeros((4, 4), np.uint8))
    _save_png(tmp_path / 'src' / 'loose.png', np.zeros((4, 4), np.uint8))
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip', '--labels-from-dirs')
    assert result.exit_code != 0
    assert 'loose.png' in result.output and 'class folder' in result.output
    assert not os.path.exists(tmp_path / 'out.zip')


def test_incomplete_dataset_json_gives_null_labels_with_a_note(tmp_path):
    for name in ('a.png', 'b.png'):
        _save_png(tmp_path / 'src' / name, np.zeros((4, 4, 3), np.uint8))
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [['a.png', 1]]}))
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip')
    assert result.exit_code == 0, result.output
    assert 'b.png has no label' in result.output
    _, meta = _read_output(tmp_path / 'out.zip')
    assert meta['labels'] is None


def test_max_images_takes_the_first_n(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {f'{i:02d}.png': rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for i in range(7)}
    for rel, array in arrays.items():
        _save_png(tmp_path / 'src' / rel, array)
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip', '--max-images', 3)
    assert result.exit_code == 0, result.output
    images, meta = _read_output(tmp_path / 'out.zip')
    assert sorted(images) == _expected_names(3) and meta['labels'] is None
    for i in range(3):
        np.testing.assert_array_equal(images[_expected_names(3)[i]], arrays[f'{i:02d}.png'])


# ---------------------------------------------------------------------------------------------------------------
# MNIST idx and CIFAR-10 sources.

def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path, 'wb') if compress else open(path, 'wb')) as f:
        f.write(data)


@pytest.mark.parametrize('compress', [True, False])
def test_mnist_idx_is_padded_to_32_with_labels(tmp_path, compress):
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    classes = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    gz = '.gz' if compress else ''
    _write_idx(tmp_path / f'train-images-idx3-ubyte{gz}', digits, compress)
    _write_idx(tmp_path / f'train-labels-idx1-ubyte{gz}', classes, compress)
    result = _run('--source', tmp_path / f'train-images-idx3-ubyte{gz}', '--dest', tmp_path / 'mnist.zip',
                  '--max-images', 4)
    assert result.exit_code == 0, result.output
    images, meta = _read_output(tmp_path / 'mnist.zip')
    names = _expected_names(4)
    for i, name in enumerate(names):
        padded = np.zeros((32, 32), np.uint8)
        padded[2:30, 2:30] = digits[i]
        np.testing.assert_array_equal(images[name], padded)
    assert meta['labels'] == [[name, int(c)] for name, c in zip(names, classes[:4])]


def test_mnist_without_padding_is_refused_as_non_power_of_two(tmp_path):
    _write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', np.zeros((2, 28, 28), np.uint8), True)
    before = os.listdir(tmp_path)
    result = _run('--source', tmp_path / 't10k-images-idx3-ubyte.gz', '--dest', tmp_path / 'out.zip',
                  '--no-pad-mnist')
    assert result.exit_code != 0
    assert 't10k-images-idx3-ubyte.gz[0]' in result.output and '28x28' in result.output
    assert 'no labels file' in result.output  # the labels file is absent: a note, then labels null
    _assert_nothing_left(tmp_path, before)


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / 'train-images-idx3-ubyte'
    path.write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2 + b'\0' * 100)
    result = _run('--source', path, '--dest', tmp_path / 'out.zip')
    assert result.exit_code != 0 and 'train-images-idx3-ubyte' in result.output and 'header says' in result.output


def _write_fake_cifar(path, batches, extra_member=None):
    with tarfile.open(path, 'w:gz') as tar:
        for i, (data, labels) in enumerate(batches, start=1):
            payload = pickle.dumps({b'batch_label': b'training batch', b'labels': list(labels), b'data': data})
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{i}')
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if extra_member is not None:
            info = tarfile.TarInfo('cifar-10-batches-py/batches.meta')
            info.size = len(extra_member)
            tar.addfile(info, io.BytesIO(extra_member))


def test_cifar10_tarball_pixels_and_labels(tmp_path):
    rng = np.random.default_rng(4)
    batches = [(rng.integers(0, 256, (2, 3072), dtype=np.uint8), rng.integers(0, 10, 2)) for _ in range(5)]
    _write_fake_cifar(tmp_path / 'cifar-10-python.tar.gz', batches)
    result = _run('--source', tmp_path / 'cifar-10-python.tar.gz', '--dest', tmp_path / 'cifar.zip')
    assert result.exit_code == 0, result.output
    images, meta = _read_output(tmp_path / 'cifar.zip')
    names = _expected_names(10)
    all_data = np.concatenate([data for data, _ in batches])
    all_labels = np.concatenate([labels for _, labels in batches])
    for i, name in enumerate(names):
        # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
        expected = np.stack([all_data[i, c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)], axis=-1)
        np.testing.assert_array_equal(images[name], expected)
    assert meta['labels'] == [[name, int(label)] for name, label in zip(names, all_labels)]


class _Exploit:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_cifar_batches_with_foreign_globals_are_refused(tmp_path):
    path = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        payload = pickle.dumps({b'data': _Exploit(), b'labels': []})
        for i in range(1, 6):
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{i}')
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    result = _run('--source', path, '--dest', tmp_path / 'out.zip')
    assert result.exit_code != 0
    assert 'data_batch_1' in result.output and 'refusing to load global' in result.output


# ---------------------------------------------------------------------------------------------------------------
# Transforms and resizing.

def test_plain_resize_with_box_filter_averages_blocks(tmp_path):
    rng = np.random.default_rng(5)
    array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    _save_png(tmp_path / 'src' / 'a.png', array)
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip', '--resolution', '4x4',
                  '--resize-filter', 'box')
    assert result.exit_code == 0, result.output
    images, _ = _read_output(tmp_path / 'out.zip')
    out = images['00000/img00000000.png']
    assert out.shape == (4, 4, 3)
    assert np.abs(out - _block_mean(array, 4)).max() <= 1.0


def test_center_crop_without_resolution_cuts_the_middle_square(tmp_path):
    rng = np.random.default_rng(6)
    wide = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)   # H=8, W=12
    tall = rng.integers(0, 256, (14, 8, 3), dtype=np.uint8)   # H=14, W=8
    _save_png(tmp_path / 'src' / 'a.png', wide)
    _save_png(tmp_path / 'src' / 'b.png', tall)
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip', '--transform', 'center-crop')
    assert result.exit_code == 0, result.output
    images, _ = _read_output(tmp_path / 'out.zip')
    np.testing.assert_array_equal(images['00000/img00000000.png'], wide[:, 2:10])
    np.testing.assert_array_equal(images['00000/img00000001.png'], tall[3:11, :])


def test_center_crop_wide_letterboxes_and_skips_small_images(tmp_path):
    rng = np.random.default_rng(7)
    source = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # H=12, W=16
    _save_png(tmp_path / 'src' / 'a.png', source)
    _save_png(tmp_path / 'src' / 'b.png', rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))  # smaller than 8x4 box
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip', '--transform', 'center-crop-wide',
                  '--resolution', '8x4', '--resize-filter', 'box')
    assert result.exit_code == 0, result.output
    assert '1 image(s) smaller than the center-crop-wide box were skipped' in result.output
    images, _ = _read_output(tmp_path / 'out.zip')
    assert sorted(images) == ['00000/img00000000.png']
    out = images['00000/img00000000.png']
    assert out.shape == (8, 8, 3)
    # The 2:1 box of a 16x12 image is 16x8 starting at row 2; box-resized to 8x4 and centred vertically.
    assert not out[:2].any() and not out[6:].any()
    assert np.abs(out[2:6] - _block_mean(source[2:10], 2)).max() <= 1.0


def test_width_height_flags_and_bad_resolution_text(tmp_path):
    _save_png(tmp_path / 'src' / 'a.png', np.full((8, 8, 3), 100, np.uint8))
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'o1.zip', '--width', 4, '--height', 4)
    assert result.exit_code == 0, result.output
    assert _read_output(tmp_path / 'o1.zip')[0]['00000/img00000000.png'].shape == (4, 4, 3)
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'o2.zip', '--resolution', 'big')
    assert result.exit_code != 0 and "--resolution='big'" in result.output
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'o3.zip', '--resolution', '16,16')
    assert result.exit_code == 0 and _read_output(tmp_path / 'o3.zip')[0]['00000/img00000000.png'].shape[0] == 16


# ---------------------------------------------------------------------------------------------------------------
# Modes: greyscale/colour mixing, alpha.

def test_mixed_channel_counts_fail_naming_the_file_and_leave_nothing(tmp_path):
    _save_png(tmp_path / 'src' / 'a.png', np.zeros((4, 4, 3), np.uint8))
    _save_png(tmp_path / 'src' / 'b.png', np.zeros((4, 4, 3), np.uint8))
    _save_png(tmp_path / 'src' / 'c.png', np.full((4, 4), 77, np.uint8))
    os.makedirs(tmp_path / 'dests')
    for dest in ('out.zip', 'outdir'):
        result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'dests' / dest)
        assert result.exit_code != 0
        message = result.output.strip().splitlines()[-1]
        assert 'c.png' in message and 'greyscale' in message and '--channels' in message
        _assert_nothing_left(tmp_path / 'dests', [])
    # --channels=3 converts the greyscale image by replication.
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'dests' / 'ok.zip', '--channels', 3)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_read_output(tmp_path / 'dests' / 'ok.zip')[0]['00000/img00000002.png'],
                                  np.full((4, 4, 3), 77, np.uint8))


def test_rgba_is_composited_onto_black_with_a_note(tmp_path):
    rng = np.random.default_rng(8)
    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    opaque = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    opaque[..., 3] = 255
    _save_png(tmp_path / 'src' / 'a.png', rgba, 'RGBA')
    _save_png(tmp_path / 'src' / 'b.png', opaque, 'RGBA')
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip')
    assert result.exit_code == 0, result.output
    assert '1 image(s) had transparent pixels; composited onto black' in result.output
    images, _ = _read_output(tmp_path / 'out.zip')
    expected = np.rint(rgba[..., :3].astype(np.float64) * rgba[..., 3:] / 255)
    np.testing.assert_array_equal(images['00000/img00000000.png'], expected.astype(np.uint8))
    np.testing.assert_array_equal(images['00000/img00000001.png'], opaque[..., :3])


# ---------------------------------------------------------------------------------------------------------------
# Error cases: one line naming the file, non-zero exit, nothing left behind.

@pytest.mark.parametrize('case', ['corrupt', 'non_square', 'non_power_of_two', 'size_mismatch', 'sixteen_bit'])
def test_bad_images_fail_cleanly(tmp_path, case):
    src = tmp_path / 'src'
    _save_png(src / 'a.png', np.zeros((8, 8, 3), np.uint8))
    _save_png(src / 'b.png', np.zeros((8, 8, 3), np.uint8))
    if case == 'corrupt':
        (src / 'c.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
        expect = ['c.png', 'cannot read image']
    elif case == 'non_square':
        os.remove(src / 'a.png')
        _save_png(src / 'a.png', np.zeros((8, 16, 3), np.uint8))
        expect = ['a.png', '16x8', 'not square', '--allow-non-square']
    elif case == 'non_power_of_two':
        os.remove(src / 'a.png')
        _save_png(src / 'a.png', np.zeros((12, 12, 3), np.uint8))
        expect = ['a.png', '12x12', 'powers of two', '--resolution=16x16']
    elif case == 'size_mismatch':
        _save_png(src / 'c.png', np.zeros((16, 16, 3), np.uint8))
        expect = ['c.png', '16x16', 'first image was 8x8']
    else:
        PIL.Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(src / 'c.png')
        expect = ['c.png', '16-bit']
    os.makedirs(tmp_path / 'dests')
    result = _run('--source', src, '--dest', tmp_path / 'dests' / 'nested' / 'out.zip')
    assert result.exit_code != 0
    last_line = result.output.strip().splitlines()[-1]
    assert last_line.startswith('Error: ')
    for text in expect:
        assert text in last_line, (text, last_line)
    _assert_nothing_left(tmp_path / 'dests', [])  # not even the created 'nested' folder


def test_allow_non_square_accepts_power_of_two_rectangles(tmp_path):
    array = np.random.default_rng(9).integers(0, 256, (4, 8, 3), dtype=np.uint8)
    _save_png(tmp_path / 'src' / 'a.png', array)
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip', '--allow-non-square')
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_read_output(tmp_path / 'out.zip')[0]['00000/img00000000.png'], array)


def test_destination_rules(tmp_path):
    _save_png(tmp_path / 'src' / 'a.png', np.zeros((4, 4, 3), np.uint8))
    os.makedirs(tmp_path / 'full')
    (tmp_path / 'full' / 'keep.txt').write_text('precious')
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'full')
    assert result.exit_code != 0 and 'full' in result.output and 'not empty' in result.output
    assert os.listdir(tmp_path / 'full') == ['keep.txt']
    (tmp_path / 'exists.zip').write_bytes(b'old')
    result = _run('--source', tmp_path / 'src', '--dest', tmp_path / 'exists.zip')
    assert result.exit_code != 0 and 'already exists' in result.output
    assert (tmp_path / 'exists.zip').read_bytes() == b'old'


def test_bad_sources_are_reported(tmp_path):
    result = _run('--source', tmp_path / 'nothing', '--dest', tmp_path / 'out.zip')
    assert result.exit_code != 0 and 'nothing: source does not exist' in result.output
    (tmp_path / 'notes.txt').write_text('x')
    result = _run('--source', tmp_path / 'notes.txt', '--dest', tmp_path / 'out.zip')
    assert result.exit_code != 0 and 'notes.txt: unsupported source' in result.output
    os.makedirs(tmp_path / 'empty')
    result = _run('--source', tmp_path / 'empty', '--dest', tmp_path / 'out.zip')
    assert result.exit_code != 0 and 'no image files found' in result.output
    assert not os.path.exists(tmp_path / 'out.zip')


def test_unexpected_failure_midway_removes_the_temporary(tmp_path, monkeypatch):
    for i in range(4):
        _save_png(tmp_path / 'src' / f'{i}.png', np.zeros((4, 4, 3), np.uint8))
    os.makedirs(tmp_path / 'dests')
    original = dataset_tool.to_grey_or_rgb
    calls = []

    def failing(image, where, channels=None):
        calls.append(where)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(image, where, channels)

    monkeypatch.setattr(dataset_tool, 'to_grey_or_rgb', failing)
    for dest in ('out.zip', 'outdir'):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            dataset_tool.convert_dataset(str(tmp_path / 'src'), str(tmp_path / 'dests' / dest), progress=False,
                                         log=lambda msg: None)
        _assert_nothing_left(tmp_path / 'dests', [])


def test_progress_bar_reports_counts():
    stream = io.StringIO()
    bar = dataset_tool.ProgressBar(8, stream=stream)
    bar.update(3)
    bar.finish(8)
    assert '8/8 100.0%' in stream.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Real data (../shared/assets).

@pytest.mark.assets
def test_real_mnist_first_200_images(tmp_path, assets_dir):
    source = os.path.join(assets_dir, 'mnist', 'train-images-idx3-ubyte.gz')
    result = _run('--source', source, '--dest', tmp_path / 'mnist.zip', '--max-images', 200)
    assert result.exit_code == 0, result.output
    images, meta = _read_output(tmp_path / 'mnist.zip')
    with gzip.open(source, 'rb') as f:
        digits = np.frombuffer(f.read(16 + 200 * 784), np.uint8, offset=16).reshape(200, 28, 28)
    with gzip.open(os.path.join(assets_dir, 'mnist', 'train-labels-idx1-ubyte.gz'), 'rb') as f:
        classes = np.frombuffer(f.read(8 + 200), np.uint8, offset=8)
    names = _expected_names(200)
    assert sorted(images) == names
    for i in (0, 1, 199):
        assert images[names[i]].shape == (32, 32)
        np.testing.assert_array_equal(images[names[i]][2:30, 2:30], digits[i])
    assert [label for _, label in meta['labels']] == classes.tolist()
    assert classes[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST training labels
    ds = ImageFolderDataset(str(tmp_path / 'mnist.zip'), use_labels=True)
    assert len(ds) == 200 and ds.resolution == 32 and ds.num_channels == 1 and ds.label_dim == 10
