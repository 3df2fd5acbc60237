"""Convert an image collection into a training dataset (a stored zip or a folder of PNGs plus dataset.json).

Output layout: `NNNNN/imgNNNNNNNN.png` (the 8-digit image index; its first 5 digits name the folder), PNG
compression level 0, and `dataset.json` = `{"labels": [["00000/img00000000.png", label], ...]}` or
`{"labels": null}`. `training.dataset.ImageFolderDataset` reads the result.

Example:
    python dataset_tool.py --source=../shared/assets/mnist/train-images-idx3-ubyte.gz --dest=~/datasets/mnist32.zip
"""
import contextlib
import gzip
import importlib
import io
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile

import click
import numpy as np
import PIL.Image


class DatasetToolError(Exception):
    """A conversion problem, reported to the user as one line."""


# ---------------------------------------------------------------------------------------------------------------
# Progress bar on stderr.

class ProgressBar:
    """Minimal progress display: a redrawn bar on a terminal, an occasional line otherwise."""

    def __init__(self, total, stream=None, width=30):
        self.total = max(int(total), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.is_tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.start = time.time()
        self.last_draw = self.start  # first redraw after one interval

    def _line(self, done):
        frac = min(done / self.total, 1.0)
        filled = int(round(frac * self.width))
        elapsed = time.time() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        return (f'[{"#" * filled}{"." * (self.width - filled)}] {done}/{self.total} {frac * 100:5.1f}% '
                f'{elapsed:6.1f}s elapsed, {eta:6.1f}s left')

    def update(self, done):
        now = time.time()
        if now - self.last_draw < (0.1 if self.is_tty else 10.0):
            return
        self.last_draw = now
        if self.is_tty:
            self.stream.write('\r' + self._line(done))
        else:
            self.stream.write(self._line(done) + '\n')
        self.stream.flush()

    def finish(self, done):
        self.stream.write(('\r' if self.is_tty else '') + self._line(done) + '\n')
        self.stream.flush()


# ---------------------------------------------------------------------------------------------------------------
# Sources. Each yields SourceItem(where, load, label, rel_path): `load()` returns a PIL image.

class SourceItem:
    __slots__ = ('where', 'load', 'label', 'rel_path')

    def __init__(self, where, load, label=None, rel_path=None):
        self.where, self.load, self.label, self.rel_path = where, load, label, rel_path


class Source:
    """What a source provides: the number of items, an iterator over them, and extra dataset.json fields."""

    def __init__(self, num_items, items, has_labels, extra_json=None, notes=()):
        self.num_items = num_items
        self.items = items
        self.has_labels = has_labels
        self.extra_json = dict(extra_json or {})
        self.notes = list(notes)


def readable_image_extensions():
    """Lower-case extensions (with dot) of the image formats PIL can open."""
    PIL.Image.init()
    return frozenset(ext.lower() for ext, fmt in PIL.Image.EXTENSION.items() if fmt in PIL.Image.OPEN)


def _open_pil(data_or_file, where):
    try:
        image = PIL.Image.open(data_or_file)
        image.load()
        return image
    except Exception as e:  # any decoder failure means the same thing to the user
        raise DatasetToolError(f'{where}: cannot read image ({type(e).__name__}: {e})') from e


def open_folder_source(source, stack, subdir=None, labels_from_dirs=False):
    """Images in a directory tree or a zip archive, sorted by relative path ('/' separators)."""
    if os.path.isdir(source):
        names = []
        for root, _dirs, files in os.walk(source):
            for fname in files:
                names.append(os.path.relpath(os.path.join(root, fname), start=source).replace(os.sep, '/'))

        def read_bytes(name):
            with open(os.path.join(source, *name.split('/')), 'rb') as f:
                return f.read()

        def where_of(name):
            return os.path.join(source, *name.split('/'))
    else:
        try:
            archive = stack.enter_context(zipfile.ZipFile(source))
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetToolError(f'{source}: cannot read zip file ({e})') from e
        names = [name for name in archive.namelist() if not name.endswith('/')]

        def read_bytes(name):
            return archive.read(name)

        def where_of(name):
            return f'{source}:{name}'

    extensions = readable_image_extensions()
    images = sorted(name for name in names
                    if os.path.splitext(name)[1].lower() in extensions and not name.startswith('__MACOSX/'))
    if subdir:
        prefix = subdir.strip('/').replace(os.sep, '/') + '/'
        images = [name for name in images if name.startswith(prefix)]
        if not images:
            raise DatasetToolError(f'{source}: no images under --subdir={subdir!r}')
    if not images:
        raise DatasetToolError(f'{source}: no image files found (recursive search for extensions PIL can read)')

    notes = []
    extra_json = {}
    labels = None
    if labels_from_dirs:
        for name in images:
            if '/' not in name:
                raise DatasetToolError(f'{where_of(name)}: --labels-from-dirs needs every image inside a class '
                                       f'folder, but this one is at the top level')
        class_names = sorted(set(name.split('/')[-2] for name in images))
        class_index = {class_name: i for i, class_name in enumerate(class_names)}
        labels = {name: class_index[name.split('/')[-2]] for name in images}
        extra_json['class_names'] = class_names
        if 'dataset.json' in names:
            notes.append('--labels-from-dirs: ignoring the labels in the source dataset.json')
    elif 'dataset.json' in names:
        where = where_of('dataset.json')
        try:
            parsed = json.loads(read_bytes('dataset.json')).get('labels')
            labels = None if parsed is None else {str(k).replace('\\', '/'): v for k, v in parsed}
        except (ValueError, TypeError, AttributeError) as e:
            raise DatasetToolError(f'{where}: cannot parse "labels" (expected a list of [path, label] pairs or '
                                   f'null): {e}') from e

    def items():
        for name in images:
            yield SourceItem(where=where_of(name),
                             load=lambda name=name: _open_pil(io.BytesIO(read_bytes(name)), where_of(name)),
                             label=None if labels is None else labels.get(name),
                             rel_path=name)

    return Source(len(images), items(), has_labels=labels is not None, extra_json=extra_json, notes=notes)


def read_idx_file(path):
    """Read an idx file (MNIST format, optionally gzipped) holding unsigned bytes -> uint8 numpy array."""
    opener = gzip.open if path.lower().endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetToolError(f'{path}: cannot read idx file ({e})') from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetToolError(f'{path}: not an idx file (bad magic number)')
    if data[2] != 0x08:
        raise DatasetToolError(f'{path}: idx element type 0x{data[2]:02x} is not supported (only unsigned bytes)')
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetToolError(f'{path}: truncated idx header')
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header != count:
        raise DatasetToolError(f'{path}: idx header says {dims} = {count} bytes of data, file holds '
                               f'{len(data) - header}')
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def is_idx_images_file(path):
    base = os.path.basename(path).lower()
    return any(base == f'{split}-images-idx3-ubyte{gz}' for split in ('train', 't10k') for gz in ('', '.gz'))


def open_idx_source(path, pad=True):
    """MNIST-style idx image file (e.g. MNIST, Fashion-MNIST) with labels from the sibling labels file."""
    images = read_idx_file(path)
    if images.ndim != 3:
        raise DatasetToolError(f'{path}: expected a 3-D idx array [N, H, W], got shape {list(images.shape)}')
    notes = []
    labels = None
    folder, base = os.path.split(path)
    label_base = base.lower().replace('images-idx3', 'labels-idx1')
    candidates = [label_base, label_base[:-3] if label_base.endswith('.gz') else label_base + '.gz']
    siblings = {name.lower(): name for name in os.listdir(folder or '.')}
    for candidate in candidates:
        if candidate in siblings:
            label_path = os.path.join(folder, siblings[candidate])
            labels = read_idx_file(label_path)
            if labels.shape != (images.shape[0],):
                raise DatasetToolError(f'{label_path}: expected {images.shape[0]} labels, got shape '
                                       f'{list(labels.shape)}')
            break
    else:
        notes.append(f'no labels file {candidates[0]} next to {base}; writing "labels": null')

    def items():
        for i in range(images.shape[0]):
            image = images[i]
            if pad:
                image = np.pad(image, [[2, 2], [2, 2]], mode='constant', constant_values=0)
            yield SourceItem(where=f'{path}[{i}]', load=lambda image=image: PIL.Image.fromarray(image, 'L'),
                             label=None if labels is None else int(labels[i]))

    return Source(images.shape[0], items(), has_labels=labels is not None, notes=notes)


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals numpy uses to rebuild arrays (CIFAR batches need nothing else)."""

    _ALLOWED = {
        ('multiarray', '_reconstruct'), ('multiarray', 'scalar'), ('numeric', '_frombuffer'),
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
    }

    def find_class(self, module, name):
        short = module.rsplit('.', 1)[-1]
        if module.split('.')[0] != 'numpy' or (short, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f'refusing to load global {module}.{name} (not a numpy array)')
        if module.startswith('numpy.core') and hasattr(np, '_core'):
            module = 'numpy._core' + module[len('numpy.core'):]
        return getattr(importlib.import_module(module), name)


def open_cifar10_source(path):
    """The 50,000 training images of the CIFAR-10 python tarball (data_batch_1..5) with their class labels."""
    images, labels = [], []
    try:
        with tarfile.open(path, 'r:gz') as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            for batch in range(1, 6):
                member_name = f'data_batch_{batch}'
                if member_name not in members:
                    raise DatasetToolError(f'{path}: member {member_name} not found (not a cifar-10-python archive?)')
                where = f'{path}:{members[member_name].name}'
                try:
                    entry = _NumpyArrayUnpickler(tar.extractfile(members[member_name]), encoding='latin1').load()
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
                    raise DatasetToolError(f'{where}: cannot unpickle CIFAR batch ({e})') from e
                entry = {(k.decode('latin1') if isinstance(k, bytes) else k): v for k, v in entry.items()}
                if 'data' not in entry or 'labels' not in entry:
                    raise DatasetToolError(f'{where}: expected a dict with "data" and "labels"')
                data = np.asarray(entry['data'], dtype=np.uint8)
                if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(entry['labels']):
                    raise DatasetToolError(f'{where}: expected data [N, 3072] with N labels, got data '
                                           f'{list(data.shape)} and {len(entry["labels"])} labels')
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.extend(int(x) for x in entry['labels'])
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetToolError(f'{path}: cannot read tarball ({e})') from e
    images = np.concatenate(images)

    def items():
        for i in range(images.shape[0]):
            yield SourceItem(where=f'{path}[{i}]', load=lambda i=i: PIL.Image.fromarray(images[i], 'RGB'),
                             label=labels[i])

    return Source(images.shape[0], items(), has_labels=True)


def open_source(source, stack, subdir=None, labels_from_dirs=False, pad_mnist=True):
    """Detect the kind of `source` and open it (see the --source help)."""
    if not os.path.exists(source):
        raise DatasetToolError(f'{source}: source does not exist')
    base = os.path.basename(os.path.normpath(source)).lower()
    if os.path.isdir(source) or (base.endswith('.zip') and os.path.isfile(source)):
        return open_folder_source(source, stack, subdir=subdir, labels_from_dirs=labels_from_dirs)
    if labels_from_dirs or subdir:
        raise DatasetToolError(f'{source}: --labels-from-dirs and --subdir only apply to a folder or zip source')
    if is_idx_images_file(source):
        return open_idx_source(source, pad=pad_mnist)
    if base == 'cifar-10-python.tar.gz':
        return open_cifar10_source(source)
    raise DatasetToolError(f'{source}: unsupported source (expected a directory, a .zip, an MNIST-style '
                           f'train-images-idx3-ubyte[.gz] / t10k-images-idx3-ubyte[.gz], or cifar-10-python.tar.gz)')


# ---------------------------------------------------------------------------------------------------------------
# Per-image processing.

_HIGH_DEPTH_MODES = ('I', 'F', 'I;16', 'I;16L', 'I;16B', 'I;16N')


def to_grey_or_rgb(image, where, channels=None):
    """PIL image -> (PIL image in mode 'L' or 'RGB', had_transparency).

    Transparent pixels are composited onto black (alpha drops the colour towards 0); fully opaque alpha
    channels are simply dropped. `channels` (1 or 3) forces greyscale or RGB output.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        raise DatasetToolError(f'{where}: {mode!r} (16-bit or float) images are not supported; '
                               f'convert them to 8 bits per channel first')
    had_transparency = False
    has_alpha = mode in ('LA', 'La', 'RGBA', 'RGBa', 'PA') or (mode == 'P' and 'transparency' in image.info)
    if has_alpha:
        base = 'L' if mode in ('LA', 'La') else 'RGB'
        array = np.asarray(image.convert(base + 'A'))
        alpha = array[..., -1:].astype(np.uint32)
        colour = array[..., :-1]
        if (alpha < 255).any():
            had_transparency = True
            colour = ((colour.astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)
        image = PIL.Image.fromarray(np.ascontiguousarray(colour[..., 0] if base == 'L' else colour), base)
    elif mode in ('1', 'L'):
        image = image.convert('L')
    else:
        image = image.convert('RGB')
    if channels == 1 and image.mode != 'L':
        image = image.convert('L')
    elif channels == 3 and image.mode != 'RGB':
        image = image.convert('RGB')
    return image, had_transparency


_RESIZE_FILTERS = {
    'box': PIL.Image.Resampling.BOX,
    'lanczos': PIL.Image.Resampling.LANCZOS,
    'bilinear': PIL.Image.Resampling.BILINEAR,
}


def _resize(image, size, resample):
    return image if image.size == tuple(size) else image.resize(tuple(size), resample=resample)


def apply_transform(image, transform, resolution, resample):
    """Crop/resize a PIL image. Returns None when `center-crop-wide` finds the image too small.

    * no transform: resize to `resolution` (W, H) when given, else unchanged.
    * center-crop: the largest centred square, then resized to `resolution` when given.
    * center-crop-wide: the largest centred W:H box (at least W x H pixels, else dropped), resized to W x H
      and centred on a black max(W, H)-sided square canvas.
    """
    width, height = image.size
    if transform is None:
        return image if resolution is None else _resize(image, resolution, resample)
    if transform == 'center-crop':
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        return image if resolution is None else _resize(image, resolution, resample)
    if transform == 'center-crop-wide':
        out_w, out_h = resolution
        if width * out_h > height * out_w:  # source is wider than the target aspect: crop the sides
            crop_w, crop_h = int(round(height * out_w / out_h)), height
        else:
            crop_w, crop_h = width, int(round(width * out_h / out_w))
        if crop_w < out_w or crop_h < out_h:
            return None
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = _resize(image.crop((left, top, left + crop_w, top + crop_h)), (out_w, out_h), resample)
        side = max(out_w, out_h)
        canvas = PIL.Image.new(image.mode, (side, side), 0)
        canvas.paste(image, ((side - out_w) // 2, (side - out_h) // 2))
        return canvas
    raise DatasetToolError(f'unknown --transform {transform!r}')


def _is_power_of_two(n):
    return n >= 1 and (n & (n - 1)) == 0


def archive_name(index):
    """Output path of image `index`: 'NNNNN/imgNNNNNNNN.png'."""
    digits = f'{index:08d}'
    return f'{digits[:5]}/img{digits}.png'


# ---------------------------------------------------------------------------------------------------------------
# Destination: written under a temporary name, renamed into place only when everything succeeded.

class DestinationWriter:
    """Stored (uncompressed) .zip or a directory, built under a temporary sibling name."""

    def __init__(self, dest):
        self.dest = os.path.abspath(os.path.expanduser(dest))
        self.is_zip = self.dest.lower().endswith('.zip')
        if self.is_zip and os.path.exists(self.dest):
            raise DatasetToolError(f'{dest}: destination already exists; remove it or choose another --dest')
        if not self.is_zip and os.path.exists(self.dest):
            if not os.path.isdir(self.dest):
                raise DatasetToolError(f'{dest}: destination exists and is not a directory (use a .zip name for '
                                       f'a zip destination)')
            if os.listdir(self.dest):
                raise DatasetToolError(f'{dest}: destination directory is not empty')
        parent = os.path.dirname(self.dest)
        self.created_dirs = []
        probe = parent
        while not os.path.exists(probe):
            self.created_dirs.append(probe)
            probe = os.path.dirname(probe)
        os.makedirs(parent, exist_ok=True)
        prefix = '.' + os.path.basename(self.dest) + '.'
        if self.is_zip:
            fd, self.tmp = tempfile.mkstemp(dir=parent, prefix=prefix, suffix='.partial')
            os.close(fd)
            self.zip = zipfile.ZipFile(self.tmp, 'w', compression=zipfile.ZIP_STORED)
        else:
            self.tmp = tempfile.mkdtemp(dir=parent, prefix=prefix, suffix='.partial')
            self.zip = None

    def add(self, name, data):
        if self.zip is not None:
            self.zip.writestr(name, data)
        else:
            path = os.path.join(self.tmp, *name.split('/'))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)

    def commit(self):
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp/mkdtemp create private (0600/0700) entries: give the result the usual permissions.
        os.chmod(self.tmp, (0o666 if self.zip is not None else 0o777) & ~umask)
        if self.zip is not None:
            self.zip.close()
            self.zip = None
            os.replace(self.tmp, self.dest)
        else:
            if os.path.isdir(self.dest):
                os.rmdir(self.dest)  # empty (checked at start)
            os.rename(self.tmp, self.dest)
        self.tmp = None

    def abort(self):
        if self.zip is not None:
            with contextlib.suppress(Exception):
                self.zip.close()
            self.zip = None
        if self.tmp is not None:
            if os.path.isdir(self.tmp):
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(self.tmp)
            self.tmp = None
        for folder in self.created_dirs:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(folder)


# ---------------------------------------------------------------------------------------------------------------
# The conversion.

def convert_dataset(source, dest, max_images=None, transform=None, resolution=None, resize_filter='lanczos',
                    labels_from_dirs=False, subdir=None, channels=None, allow_non_square=False, pad_mnist=True,
                    log=None, progress=True):
    """Convert `source` into `dest`; returns a summary dict. Raises DatasetToolError (nothing left at `dest`).

    `resolution` is (width, height) or None; `channels` 1, 3 or None (keep: all images must agree).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if transform == 'center-crop-wide' and resolution is None:
        raise DatasetToolError('--transform=center-crop-wide needs --resolution=WxH')
    if resize_filter not in _RESIZE_FILTERS:
        raise DatasetToolError(f'unknown --resize-filter {resize_filter!r}')
    resample = _RESIZE_FILTERS[resize_filter]

    start = time.time()
    with contextlib.ExitStack() as stack:
        src = open_source(source, stack, subdir=subdir, labels_from_dirs=labels_from_dirs, pad_mnist=pad_mnist)
        for note in src.notes:
            log(f'note: {note}')
        total = src.num_items if max_images is None else min(src.num_items, max_images)
        writer = DestinationWriter(dest)
        try:
            bar = ProgressBar(total) if progress else None
            expected = None  # (width, height, mode) of the first kept image
            labels = []
            missing_label = None
            num_transparent = num_dropped = 0
            for item in src.items:
                if len(labels) >= total:
                    break
                image, transparent = to_grey_or_rgb(item.load(), item.where, channels=channels)
                num_transparent += transparent
                image = apply_transform(image, transform, resolution, resample)
                if image is None:
                    num_dropped += 1
                    continue
                shape = (image.size[0], image.size[1], image.mode)
                if expected is None:
                    width, height = image.size
                    if width != height and not allow_non_square:
                        raise DatasetToolError(
                            f'{item.where}: output image is {width}x{height} (WxH), not square; use '
                            f'--transform=center-crop, --resolution=NxN or --allow-non-square')
                    if not (_is_power_of_two(width) and _is_power_of_two(height)):
                        raise DatasetToolError(
                            f'{item.where}: output image is {width}x{height} (WxH); sides must be powers of two '
                            f'(use --resolution, e.g. --resolution={_next_power_of_two(max(width, height))}x'
                            f'{_next_power_of_two(max(width, height))})')
                    expected = shape
                elif shape != expected:
                    hint = (' (mixed greyscale/colour: use --channels=3 or --channels=1)'
                            if shape[2] != expected[2] else ' (use --resolution or --transform to unify sizes)')
                    raise DatasetToolError(
                        f'{item.where}: output image is {shape[0]}x{shape[1]} {_mode_words(shape[2])} but the '
                        f'first image was {expected[0]}x{expected[1]} {_mode_words(expected[2])}{hint}')

                name = archive_name(len(labels))
                buffer = io.BytesIO()
                image.save(buffer, format='png', compress_level=0, optimize=False)
                writer.add(name, buffer.getvalue())
                if item.label is None and missing_label is None:
                    missing_label = item.where
                labels.append([name, item.label])
                if bar is not None:
                    bar.update(len(labels))

            if not labels:
                raise DatasetToolError(f'{source}: no images left to write'
                                       + (f' ({num_dropped} were smaller than the --resolution crop)'
                                          if num_dropped else ''))
            if src.has_labels and missing_label is not None:
                log(f'note: {missing_label} has no label in dataset.json; writing "labels": null')
            metadata = {'labels': labels if (src.has_labels and missing_label is None) else None}
            metadata.update(src.extra_json)
            writer.add('dataset.json', json.dumps(metadata).encode('utf-8'))
            writer.commit()
            if bar is not None:
                bar.finish(len(labels))
        except BaseException:
            writer.abort()
            raise

    if num_transparent:
        log(f'note: {num_transparent} image(s) had transparent pixels; composited onto black')
    if num_dropped:
        log(f'note: {num_dropped} image(s) smaller than the center-crop-wide box were skipped')
    return dict(num_images=len(labels), width=expected[0], height=expected[1],
                channels=1 if expected[2] == 'L' else 3, has_labels=metadata['labels'] is not None,
                seconds=time.time() - start, dest=writer.dest)


def _mode_words(mode):
    return 'greyscale' if mode == 'L' else 'RGB'


def _next_power_of_two(n):
    return 1 << max(int(n) - 1, 0).bit_length()


def parse_resolution(text):
    """'WxH', 'W,H' or 'N' -> (W, H)."""
    if text is None:
        return None
    parts = text.lower().replace(',', 'x').split('x')
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise DatasetToolError(f'--resolution={text!r}: expected WxH, W,H or N') from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise DatasetToolError(f'--resolution={text!r}: expected WxH, W,H or N with positive integers')
    return tuple(values)


# ---------------------------------------------------------------------------------------------------------------
# Command line.

@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.option('--source', required=True, metavar='PATH',
              help='Input: a directory or .zip of images (searched recursively; optional root dataset.json with '
                   'labels), an MNIST-style train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] file '
                   '(labels from the sibling *-labels-idx1-ubyte file; MNIST, Fashion-MNIST), or '
                   'cifar-10-python.tar.gz (the 50k training images).')
@click.option('--dest', required=True, metavar='PATH',
              help='Output: a .zip (stored, uncompressed; must not exist) or a directory (must be empty or absent).')
@click.option('--max-images', type=click.IntRange(min=1), metavar='N', help='Convert at most N images (the first N).')
@click.option('--transform', type=click.Choice(['center-crop', 'center-crop-wide']),
              help='center-crop: largest centred square (then --resolution if given). center-crop-wide: largest '
                   'centred WxH-shaped box resized to WxH and letterboxed on a black square (needs --resolution; '
                   'smaller images are skipped).')
@click.option('--resolution', metavar='WxH', help='Output size, "WxH", "W,H" or "N" (without --transform: a plain '
                                                  'resize).')
@click.option('--width', type=click.IntRange(min=1), help='Output width (alternative to --resolution).')
@click.option('--height', type=click.IntRange(min=1), help='Output height (alternative to --resolution).')
@click.option('--resize-filter', type=click.Choice(sorted(_RESIZE_FILTERS)), default='lanczos', show_default=True,
              help='Resampling filter for resizing.')
@click.option('--labels-from-dirs', is_flag=True,
              help='Integer labels from the name of each image\'s parent folder (class names sorted; the names are '
                   'written to dataset.json as "class_names"). Folder/zip sources only.')
@click.option('--subdir', metavar='DIR', help='Only convert images under this folder of a folder/zip source '
                                              '(e.g. "train").')
@click.option('--channels', type=click.Choice(['1', '3']),
              help='Force greyscale (1) or RGB (3). Without it, all images must agree on greyscale vs colour.')
@click.option('--allow-non-square', is_flag=True, help='Accept WxH outputs with W != H (sides must still be powers '
                                                       'of two; training needs square images).')
@click.option('--pad-mnist/--no-pad-mnist', default=True, show_default=True,
              help='Pad 28x28 idx (MNIST) images with black to 32x32.')
def main(source, dest, max_images, transform, resolution, width, height, resize_filter, labels_from_dirs, subdir,
         channels, allow_non_square, pad_mnist):
    """Convert images into a dataset for training (NNNNN/imgNNNNNNNN.png + dataset.json, in a zip or a folder).

    Output images must be square (unless --allow-non-square) with power-of-two sides, and all alike: greyscale
    (1 channel) or RGB (3). Alpha channels are removed: transparent pixels are composited onto black (a notice
    gives the count). 16-bit images are refused. On any error nothing is left at --dest.
    """
    try:
        size = parse_resolution(resolution)
        if width is not None or height is not None:
            if width is None or height is None or size is not None:
                raise DatasetToolError('give both --width and --height, or --resolution, not a mix')
            size = (width, height)
        summary = convert_dataset(source, dest, max_images=max_images, transform=transform, resolution=size,
                                  resize_filter=resize_filter, labels_from_dirs=labels_from_dirs, subdir=subdir,
                                  channels=None if channels is None else int(channels),
                                  allow_non_square=allow_non_square, pad_mnist=pad_mnist)
    except DatasetToolError as e:
        raise click.ClickException(str(e)) from None
    kind = 'greyscale' if summary['channels'] == 1 else 'RGB'
    click.echo(f'Wrote {summary["num_images"]} {summary["width"]}x{summary["height"]} {kind} images '
               f'({"with" if summary["has_labels"] else "without"} labels) to {summary["dest"]} '
               f'in {summary["seconds"]:.1f}s', err=True)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
