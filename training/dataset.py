"""Training datasets: the `Dataset` base class, `ImageFolderDataset` (directory or zip of images), the built-in
procedural `ToyShapesDataset`, and the registry that lets `--data` name a built-in dataset.

Every dataset item is `(image, label)`: `image` a uint8 numpy array [C, H, W] (C = 1 or 3), `label` a float32
numpy array [label_dim] (label_dim = 0 when labels are not used). `training.dataset.ImageFolderDataset` and its
kwargs (`path`, `resolution`, `use_labels`, `max_size`, `xflip`, `random_seed`) are part of the pickle
compatibility surface: network snapshots record them in `training_set_kwargs`.
"""
import inspect
import json
import os
import zipfile

import numpy as np
import PIL.Image
import torch

import dnnlib

try:
    import pyspng  # optional fast PNG decoder
except ImportError:
    pyspng = None

__all__ = [
    'Dataset', 'ImageFolderDataset', 'ToyShapesDataset',
    'register_dataset', 'unregister_dataset', 'list_datasets', 'parse_data_arg', 'dataset_kwargs_from_data_arg',
]


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


# ---------------------------------------------------------------------------------------------------------------
# Base class.

class Dataset(torch.utils.data.Dataset):
    """Abstract image dataset with optional labels, a seeded random subset (`max_size`) and x-flip doubling.

    Subclasses implement `_load_raw_image(raw_idx)` -> uint8 numpy [C, H, W] and `_load_raw_labels()` -> None,
    int64 numpy [N] (class indices, exposed as one-hot vectors) or float32 numpy [N, ...] (label vectors). They
    may override `_describe_raw_item(raw_idx)` so that error messages name the file behind an item.

    Args:
        name:        dataset name (used in run-directory names and metric cache file names).
        raw_shape:   [N, C, H, W] of the whole underlying dataset.
        max_size:    keep at most this many raw items: a random subset chosen with `random_seed`, kept in
                     ascending raw order. None = all.
        use_labels:  expose the labels from `_load_raw_labels()`; otherwise labels have zero length.
        xflip:       double the dataset; the second copy is flipped horizontally (applied after `max_size`).
        random_seed: seed of the `max_size` subset.
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        raw_shape = [int(x) for x in raw_shape]
        if len(raw_shape) != 4 or min(raw_shape) < 1:
            raise ValueError(f'Dataset {name!r}: raw_shape must be [N, C, H, W] with positive sizes, got {raw_shape}')
        if max_size is not None and int(max_size) < 1:
            raise ValueError(f'Dataset {name!r}: max_size must be a positive integer or None, got {max_size!r}')
        self._name = name
        self._raw_shape = raw_shape
        self._use_labels = bool(use_labels)
        self._raw_labels = None
        self._label_shape = None

        # Subset: shuffle all raw indices with the seed, keep the first max_size, restore ascending order.
        self._raw_idx = np.arange(raw_shape[0], dtype=np.int64)
        if max_size is not None and raw_shape[0] > int(max_size):
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:int(max_size)])

        # X-flip doubling: the index list repeated, second copy marked as flipped.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    # -- to be provided by subclasses ----------------------------------------------------------------------------

    def _load_raw_image(self, raw_idx):  # -> uint8 numpy [C, H, W]
        raise NotImplementedError

    def _load_raw_labels(self):  # -> None, int64 numpy [N] or float32 numpy [N, ...]
        raise NotImplementedError

    def _describe_raw_item(self, raw_idx):
        """Human-readable name of a raw item for error messages (subclasses name the file)."""
        return f'item {raw_idx} of dataset {self._name!r}'

    # -- labels --------------------------------------------------------------------------------------------------

    def _get_raw_labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            num = self._raw_shape[0]
            if labels is None:
                labels = np.zeros([num, 0], dtype=np.float32)
            if not isinstance(labels, np.ndarray) or labels.shape[0] != num:
                raise ValueError(f'Dataset {self._name!r}: expected {num} labels, got '
                                 f'{getattr(labels, "shape", type(labels).__name__)}')
            if labels.dtype == np.int64:
                if labels.ndim != 1:
                    raise ValueError(f'Dataset {self._name!r}: integer labels must be one class index per image, '
                                     f'got shape {list(labels.shape)}')
                if num and labels.min() < 0:
                    raise ValueError(f'Dataset {self._name!r}: integer labels must be >= 0, got {labels.min()}')
            elif labels.dtype != np.float32:
                raise ValueError(f'Dataset {self._name!r}: labels must be int64 class indices or float32 vectors, '
                                 f'got dtype {labels.dtype}')
            self._raw_labels = labels
        return self._raw_labels

    @property
    def label_shape(self):
        """[label_dim]: one-hot size (max class + 1) for integer labels, else the label vector shape."""
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(raw_labels.max()) + 1] if raw_labels.size else [0]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        if len(self.label_shape) != 1:
            raise ValueError(f'Dataset {self._name!r}: labels are not vectors (label_shape {self.label_shape})')
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64

    def get_label(self, idx):
        """float32 numpy [label_dim]: the label of item `idx` (one-hot for integer class labels)."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    def get_details(self, idx):
        """EasyDict(raw_idx, xflip, raw_label) describing item `idx`."""
        return dnnlib.EasyDict(
            raw_idx=int(self._raw_idx[idx]),
            xflip=(int(self._xflip[idx]) != 0),
            raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy(),
        )

    # -- items ---------------------------------------------------------------------------------------------------

    def __len__(self):
        return int(self._raw_idx.size)

    def __getitem__(self, idx):
        """(uint8 numpy [C, H, W], float32 numpy [label_dim]) for item `idx`."""
        raw_idx = int(self._raw_idx[idx])
        image = self._load_raw_image(raw_idx)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError(f'{self._describe_raw_item(raw_idx)}: expected a uint8 numpy image, got '
                             f'{getattr(image, "dtype", type(image).__name__)}')
        if list(image.shape) != self.image_shape:
            raise ValueError(f'{self._describe_raw_item(raw_idx)}: image shape [C, H, W] = {list(image.shape)} '
                             f'differs from the dataset shape {self.image_shape} (set by the first image); '
                             f'all images must have the same size and channel count')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def close(self):
        """Release open files (the dataset stays usable; files are reopened on demand)."""
        pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        # Labels are reloaded on demand in the receiving process (e.g. a DataLoader worker).
        return dict(self.__dict__, _raw_labels=None)

    # -- shape properties ----------------------------------------------------------------------------------------

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        """[C, H, W] of every image."""
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        """Side length of the square, power-of-two images (ValueError otherwise)."""
        _c, h, w = self.image_shape
        if h != w:
            raise ValueError(f'Dataset {self._name!r}: images are {w}x{h} (WxH) but training needs square images; '
                             f'convert with dataset_tool.py --transform=center-crop --resolution=NxN')
        if not _is_power_of_two(w):
            raise ValueError(f'Dataset {self._name!r}: image size {w}x{h} is not a power of two; '
                             f'convert with dataset_tool.py --resolution=NxN (N a power of two)')
        return w


# ---------------------------------------------------------------------------------------------------------------
# Images from a directory tree or a zip file.

def _pil_image_extensions():
    """Lower-case file extensions (with dot) of the image formats PIL can open."""
    PIL.Image.init()
    return frozenset(ext.lower() for ext, fmt in PIL.Image.EXTENSION.items() if fmt in PIL.Image.OPEN)


def _image_to_chw(image, where):
    """PIL image -> uint8 numpy [C, H, W]; grey gives C=1, colour C=3 (C=2/4 when the file has alpha)."""
    if image.mode == '1':
        image = image.convert('L')
    elif image.mode == 'P':
        image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
    elif image.mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
        image = image.convert('RGB')
    if image.mode not in ('L', 'LA', 'RGB', 'RGBA'):
        raise ValueError(f'{where}: unsupported image mode {image.mode!r} (16-bit or float?); '
                         f'convert the images to 8-bit greyscale or RGB, e.g. with dataset_tool.py')
    array = np.asarray(image, dtype=np.uint8)
    return _hwc_to_chw(array)


def _hwc_to_chw(array):
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class ImageFolderDataset(Dataset):
    """Images (any extension PIL knows) found recursively in a directory or a .zip, sorted by relative path.

    Optional labels come from `dataset.json` at the root: `{"labels": [[relative_path, label], ...]}` with
    integer class labels (exposed one-hot) or lists of numbers (float32 vectors), or `{"labels": null}`.
    The first image fixes the dataset's [C, H, W]; an image of another shape raises ValueError when fetched.

    Args:
        path:       directory or .zip file.
        resolution: expected image side; IOError if the first image differs. None = accept the first image's.
        use_labels, max_size, xflip, random_seed: see `Dataset`.
    """

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0):
        self._path = os.fspath(path)
        self._zipfile = None
        self._zipfile_pid = None

        if os.path.isdir(self._path):
            self._type = 'dir'
            all_fnames = set()
            for root, _dirs, files in os.walk(self._path):
                for fname in files:
                    rel = os.path.relpath(os.path.join(root, fname), start=self._path)
                    all_fnames.add(rel.replace(os.sep, '/'))
        elif self._file_ext(self._path) == '.zip' and os.path.isfile(self._path):
            self._type = 'zip'
            try:
                all_fnames = set(name for name in self._get_zipfile().namelist() if not name.endswith('/'))
            except (zipfile.BadZipFile, OSError) as e:
                raise IOError(f'{self._path}: cannot read zip file: {e}') from e
        elif not os.path.exists(self._path):
            raise IOError(f'{self._path}: dataset path does not exist (must point to a directory or zip)')
        else:
            raise IOError(f'{self._path}: path must point to a directory or zip')

        self._all_fnames = all_fnames
        extensions = _pil_image_extensions()
        self._image_fnames = sorted(
            fname for fname in all_fnames
            if self._file_ext(fname) in extensions and not fname.startswith('__MACOSX/'))
        if len(self._image_fnames) == 0:
            raise IOError(f'{self._path}: no image files found (looked for extensions PIL can read, recursively)')

        name = os.path.splitext(os.path.basename(os.path.normpath(self._path)))[0]
        first_image = self._load_raw_image(0)
        raw_shape = [len(self._image_fnames)] + list(first_image.shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise IOError(f'{self._describe_raw_item(0)}: image is {raw_shape[3]}x{raw_shape[2]} (WxH) but '
                          f'resolution={resolution} was requested')
        super().__init__(name=name, raw_shape=raw_shape, max_size=max_size, use_labels=use_labels,
                         xflip=xflip, random_seed=random_seed)
        if self._use_labels:
            self._get_raw_labels()  # parse dataset.json now so that label problems show up before training
        self.close()  # do not hand an open zip handle to forked DataLoader workers

    @staticmethod
    def _file_ext(fname):
        return os.path.splitext(fname)[1].lower()

    def _get_zipfile(self):
        assert self._type == 'zip'
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            # A handle inherited through fork shares its file offset with the parent: open a fresh one.
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zipfile_pid = None

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None, _zipfile_pid=None)

    def _describe_raw_item(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        if self._type == 'dir':
            return os.path.join(self._path, fname)
        return f'{self._path}:{fname}'

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        where = self._describe_raw_item(raw_idx)
        try:
            with self._open_file(fname) as f:
                if pyspng is not None and self._file_ext(fname) == '.png':
                    return _hwc_to_chw(pyspng.load(f.read()))
                image = PIL.Image.open(f)
                image.load()
        except (OSError, ValueError, SyntaxError, zipfile.BadZipFile) as e:
            raise ValueError(f'{where}: cannot read image: {e}') from e
        return _image_to_chw(image, where)

    def _load_raw_labels(self):
        if 'dataset.json' not in self._all_fnames:
            return None
        where = (os.path.join(self._path, 'dataset.json') if self._type == 'dir'
                 else f'{self._path}:dataset.json')
        try:
            with self._open_file('dataset.json') as f:
                labels = json.load(f).get('labels')
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f'{where}: cannot parse labels: {e}') from e
        if labels is None:
            return None
        try:
            labels = {str(fname).replace('\\', '/'): value for fname, value in labels}
        except (TypeError, ValueError) as e:
            raise ValueError(f'{where}: "labels" must be a list of [relative_path, label] pairs') from e
        missing = [fname for fname in self._image_fnames if fname not in labels]
        if missing:
            raise ValueError(f'{where}: no label for {len(missing)} image(s), first {missing[0]!r}')
        values = [labels[fname] for fname in self._image_fnames]
        try:
            array = np.array(values)
        except ValueError as e:
            raise ValueError(f'{where}: labels must all be integers or all be lists of equal length') from e
        if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
            return array.astype(np.int64)
        if array.ndim >= 2 and (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            return array.astype(np.float32)
        raise ValueError(f'{where}: labels must be integer class indices or lists of numbers, '
                         f'got e.g. {values[0]!r}')


# ---------------------------------------------------------------------------------------------------------------
# Built-in procedural dataset: coloured shapes on smooth backgrounds, generated on the fly.

TOY_SHAPE_CLASSES = ('circle', 'square', 'triangle')


class ToyShapesDataset(Dataset):
    """Deterministic procedural images: one anti-aliased shape (circle, square or triangle; the class label)
    of random colour, size, position and rotation on a two-colour linear-gradient background, plus a faint
    second blob. Image `i` depends only on (`seed`, `i`), so it is generated on demand and needs no files.

    Args:
        resolution:   image side in pixels (power of two, >= 4).
        num_images:   number of raw images N.
        num_channels: 3 = RGB, 1 = greyscale (luma of the RGB image).
        seed:         content seed (distinct from `random_seed`, which picks the `max_size` subset).
        use_labels, max_size, xflip, random_seed: see `Dataset`.
    """

    def __init__(self, resolution=32, num_images=1000, num_channels=3, seed=0,
                 use_labels=False, max_size=None, xflip=False, random_seed=0):
        resolution, num_images, num_channels, seed = int(resolution), int(num_images), int(num_channels), int(seed)
        if resolution < 4 or not _is_power_of_two(resolution):
            raise ValueError(f'toy-shapes: res must be a power of two >= 4, got {resolution}')
        if num_images < 1:
            raise ValueError(f'toy-shapes: num must be >= 1, got {num_images}')
        if num_channels not in (1, 3):
            raise ValueError(f'toy-shapes: channels must be 1 or 3, got {num_channels}')
        if seed < 0:
            raise ValueError(f'toy-shapes: seed must be >= 0, got {seed}')
        self._seed = seed
        self._classes = np.random.default_rng([seed, 0]).integers(0, len(TOY_SHAPE_CLASSES), size=num_images)
        super().__init__(name='toy-shapes', raw_shape=[num_images, num_channels, resolution, resolution],
                         max_size=max_size, use_labels=use_labels, xflip=xflip, random_seed=random_seed)

    def _load_raw_labels(self):
        return self._classes.astype(np.int64)

    def _load_raw_image(self, raw_idx):
        num_channels, res = self._raw_shape[1], self._raw_shape[2]
        rng = np.random.default_rng([self._seed, 1, raw_idx])
        # Pixel centres in [-1, 1]; pixel size 2/res is the anti-aliasing width.
        coords = (np.arange(res, dtype=np.float64) + 0.5) / res * 2 - 1
        y, x = np.meshgrid(coords, coords, indexing='ij')
        pixel = 2.0 / res

        angle = rng.uniform(0, 2 * np.pi)
        c0, c1 = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
        t = np.clip((x * np.cos(angle) + y * np.sin(angle)) * 0.5 + 0.5, 0, 1)[..., None]
        image = c0 * (1 - t) + c1 * t  # [H, W, 3] in [0, 1]

        # Faint distractor blob (Gaussian), never the label.
        bx, by = rng.uniform(-0.8, 0.8, size=2)
        bsigma = rng.uniform(0.1, 0.3)
        blob = np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * bsigma ** 2))[..., None] * 0.35
        image = image * (1 - blob) + rng.uniform(0, 1, size=3) * blob

        # Main shape from its signed distance d (negative inside), coverage clip(0.5 - d / pixel).
        shape_class = int(self._classes[raw_idx])
        size = rng.uniform(0.25, 0.55)
        cx, cy = rng.uniform(-1 + size, 1 - size, size=2)
        rot = rng.uniform(0, 2 * np.pi)
        u = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
        v = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
        if shape_class == 0:
            dist = np.sqrt(u ** 2 + v ** 2) - size
        elif shape_class == 1:
            dist = np.maximum(np.abs(u), np.abs(v)) - size * 0.8
        else:
            normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
            dist = np.max([u * nx + v * ny for nx, ny in normals], axis=0) - size * 0.6
        coverage = np.clip(0.5 - dist / pixel, 0, 1)[..., None]
        color = rng.uniform(0, 1, size=3)
        # Keep the shape visible against the background: push its colour away from the local mean.
        if np.abs(color - image.mean(axis=(0, 1))).max() < 0.3:
            color = 1 - color
        image = image * (1 - coverage) + color * coverage

        if num_channels == 1:
            image = image @ np.array([0.299, 0.587, 0.114])[:, None]
        return _hwc_to_chw(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# Registry of built-in datasets, so that `--data` may name one instead of giving a path.

_REGISTRY = {}  # name -> (factory, help)


def register_dataset(name, factory, help=''):
    """Register a built-in dataset under `name` (usable as `--data=name` or `--data=name:key=value,...`).

    `factory(**options)` must return a dict of dataset kwargs including `class_name`, a dotted path that
    `dnnlib.util.construct_class_by_name` can build. Re-registering the same factory (module reload) is allowed;
    another factory under a taken name raises ValueError.
    """
    if not isinstance(name, str) or not name or any(ch in name for ch in ':,=/\\ '):
        raise ValueError(f'register_dataset: invalid dataset name {name!r} (must be non-empty, '
                         f'without ":,=/\\" or spaces)')
    if not callable(factory):
        raise ValueError(f'register_dataset: factory for {name!r} is not callable')
    if name in _REGISTRY:
        old = _REGISTRY[name][0]
        same = (getattr(old, '__module__', None), getattr(old, '__qualname__', None)) == \
               (getattr(factory, '__module__', None), getattr(factory, '__qualname__', None))
        if not same:
            raise ValueError(f'register_dataset: a different dataset is already registered as {name!r}')
    _REGISTRY[name] = (factory, str(help))


def unregister_dataset(name):
    """Remove a registered dataset (KeyError if unknown)."""
    del _REGISTRY[name]


def list_datasets():
    """{name: help} of the registered built-in datasets, sorted by name."""
    return {name: _REGISTRY[name][1] for name in sorted(_REGISTRY)}


def _parse_option_value(text):
    lowered = text.strip().lower()
    if lowered in ('true', 'yes', 'on'):
        return True
    if lowered in ('false', 'no', 'off'):
        return False
    if lowered == 'none':
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_data_arg(data):
    """'name' or 'name:key=value,key=value' -> (name, {key: value}); values become int/float/bool/None/str."""
    name, _, rest = data.partition(':')
    options = {}
    if rest.strip():
        for item in rest.split(','):
            key, eq, value = item.partition('=')
            key = key.strip()
            if not eq or not key.isidentifier():
                raise ValueError(f'--data={data!r}: expected name:key=value,key=value, got option {item!r}')
            if key in options:
                raise ValueError(f'--data={data!r}: option {key!r} given twice')
            options[key] = _parse_option_value(value)
    return name.strip(), options


def dataset_kwargs_from_data_arg(data, **common):
    """Dataset kwargs (dnnlib.EasyDict with `class_name`) for a `--data` argument.

    An existing path gives `training.dataset.ImageFolderDataset` kwargs; otherwise `data` names a registered
    dataset, optionally with options (`toy-shapes:res=32,seed=0`) passed to its factory. `common` (e.g.
    use_labels, max_size, xflip, random_seed, resolution) is applied last and overrides the factory's values,
    except that a None in `common` leaves a value the factory set untouched.
    """
    data = os.fspath(data)
    kwargs = dnnlib.EasyDict(use_labels=False, max_size=None, xflip=False, random_seed=0)
    if os.path.exists(data):
        kwargs.update(class_name='training.dataset.ImageFolderDataset', path=data)
        kwargs.update(common)
        return kwargs

    name, options = parse_data_arg(data)
    if name not in _REGISTRY:
        names = ', '.join(list_datasets()) or '(none)'
        raise ValueError(f'--data={data!r}: no such file or directory, and not a built-in dataset '
                         f'(registered: {names})')
    factory = _REGISTRY[name][0]
    params = inspect.signature(factory).parameters
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(f'--data={data!r}: dataset {name!r} has no option(s) {", ".join(unknown)} '
                             f'(options: {", ".join(params) or "none"})')
    made = factory(**options)
    if not isinstance(made, dict) or not isinstance(made.get('class_name'), str):
        raise ValueError(f'dataset {name!r}: factory must return a dict with a "class_name" string')
    kwargs.update(made)
    kwargs.update({key: value for key, value in common.items() if value is not None or key not in made})
    return kwargs


def _toy_shapes_factory(res=32, num=1000, channels=3, seed=0):
    return dict(class_name='training.dataset.ToyShapesDataset', resolution=res, num_images=num,
                num_channels=channels, seed=seed)


register_dataset('toy-shapes', _toy_shapes_factory,
                 help='procedural coloured circles/squares/triangles (labels = shape class); '
                      'options res=32, num=1000, channels=3, seed=0')
