"""Loading the feature detectors used by the metrics (Inception-v3 for FID/KID/IS, VGG16 for PR/PPL).

Accepted files (a local path, a ``file://`` URL, or an http(s) URL fetched and cached by
``dnnlib.util.open_url``):

* a state dict saved with ``torch.save`` (zip or legacy format) or ``pickle``:
  - Inception in the pytorch-fid key layout (``pt_inception-2015-12-05-6726825d.pth``) -> our
    ``FastInceptionV3FID`` (batch norm folded, optionally bfloat16);
  - VGG16 in torchvision's layout, optionally merged with LPIPS heads -> our ``VGG16LPIPS``;
* a TorchScript archive (NVIDIA's ``inception-2015-12-05.pt`` / ``vgg16.pt``, or any stand-in) ->
  ``torch.jit.load``, run as-is;
* a pickled ``torch.nn.Module`` (NVIDIA's ``.pkl`` detectors, or any stand-in) -> run as-is.

All detectors take uint8 [N, C, H, W] images (0..255) and the keyword arguments of HOST_CONTRACT 8.2
(``return_features``, ``no_output_bias``, ``resize_images``, ``return_lpips``). Modules loaded as-is
run in float32, or under ``torch.autocast`` when ``dtype=torch.bfloat16`` (outputs cast to float32).

Default locations: ``inception_url()`` and ``vgg16_url()``, overridable with the environment variables
``GAN_INCEPTION_URL`` and ``GAN_VGG16_URL`` (a URL or a local path). The overrides also replace NVIDIA's
detector URLs passed explicitly (see ``resolve_detector_url``), so code that hard-codes them works offline.
"""

import io
import os
import pickle
import zipfile

import torch

from metrics import inception as _inception
from metrics import vgg16_lpips as _vgg16

INCEPTION_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
VGG16_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt'
INCEPTION_URL_ENV = 'GAN_INCEPTION_URL'
VGG16_URL_ENV = 'GAN_VGG16_URL'
KINDS = ('inception', 'vgg16')
_DTYPES = (torch.float32, torch.bfloat16)

_detector_cache = dict()  # (url, device, dtype) -> module, as HOST_CONTRACT 8.2 requires


class DetectorUnavailableError(FileNotFoundError):
    """The detector file could not be found locally nor downloaded."""


def inception_url():
    """Where the Inception detector is read from: $GAN_INCEPTION_URL, else NVIDIA's TorchScript URL."""
    return os.environ.get(INCEPTION_URL_ENV) or INCEPTION_URL


def vgg16_url():
    """Where the VGG16 detector is read from: $GAN_VGG16_URL, else NVIDIA's TorchScript URL."""
    return os.environ.get(VGG16_URL_ENV) or VGG16_URL


_NVIDIA_FILE_NAMES = {'inception-2015-12-05.pt': INCEPTION_URL_ENV, 'inception-2015-12-05.pkl': INCEPTION_URL_ENV,
                      'vgg16.pt': VGG16_URL_ENV, 'vgg16.pkl': VGG16_URL_ENV}


def resolve_detector_url(url):
    """Apply the environment overrides to a detector location.

    A remote URL of one of NVIDIA's detector files (inception-2015-12-05.pt/.pkl, vgg16.pt/.pkl, e.g. the
    URLs hard-coded in metric code) is replaced by $GAN_INCEPTION_URL / $GAN_VGG16_URL when that is set;
    anything else is returned unchanged.
    """
    url = os.fspath(url)
    if '://' in url and not url.startswith('file://'):
        env_var = _NVIDIA_FILE_NAMES.get(url.rstrip('/').split('/')[-1])
        if env_var and os.environ.get(env_var):
            return os.environ[env_var]
    return url


def get_feature_detector_name(url):
    """File name without extension, e.g. 'inception-2015-12-05' (used to name cached statistics)."""
    return os.path.splitext(str(url).replace('\\', '/').rstrip('/').split('/')[-1])[0]


def _env_var_for(name, kind):
    if kind == 'vgg16' or (kind is None and 'vgg' in name.lower()):
        return VGG16_URL_ENV
    return INCEPTION_URL_ENV


def _expected_cache_path(url):
    """Where dnnlib.util.open_url caches ``url`` (None if dnnlib does not say)."""
    import dnnlib.util
    try:
        return os.path.join(dnnlib.util.make_cache_dir_path('downloads'), dnnlib.util.url_cache_filename(url))
    except (AttributeError, TypeError, ValueError):
        return None


def _open_detector_source(path_or_url, kind=None, verbose=False):
    """Return a local file name or a seekable binary file object for a path or URL."""
    source = os.fspath(path_or_url)
    name = os.path.basename(source.rstrip('/')) or source
    env_var = _env_var_for(name, kind)
    if '://' not in source:
        if not os.path.isfile(source):
            raise DetectorUnavailableError(
                f'feature detector file not found: {source} (set {env_var} to the path of the file)')
        return source
    import dnnlib.util  # imported here: only URLs need the download cache
    try:
        result = dnnlib.util.open_url(source, verbose=verbose, return_filename=True, cache=True)
    except (OSError, ValueError) as error:
        message = str(error).rstrip('.')
        cache_path = _expected_cache_path(source) if not source.startswith('file://') else None
        if cache_path and cache_path not in message:
            message += f'; to use it offline, place the file at: {cache_path}'
        raise DetectorUnavailableError(
            f'cannot obtain the feature detector file {name!r}: {message}. Or set {env_var}=/path/to/{name} '
            f'to use a local copy.') from error
    if isinstance(result, (str, os.PathLike)):
        return os.fspath(result)
    with result as f:  # a file object: keep the bytes, so the caller can seek
        return io.BytesIO(f.read())


def _is_torchscript_archive(names):
    return any(n.split('/', 1)[-1].startswith('code/') for n in names) and \
        any(n.endswith('constants.pkl') for n in names)


def _read_detector_object(source):
    """Unpickle/deserialize the file: a ScriptModule, an nn.Module, or a state dict."""
    opened = open(source, 'rb') if isinstance(source, str) else source
    try:
        if zipfile.is_zipfile(opened):
            opened.seek(0)
            names = zipfile.ZipFile(opened).namelist()
            opened.seek(0)
            if _is_torchscript_archive(names):
                return torch.jit.load(opened, map_location='cpu')
            try:
                return torch.load(opened, map_location='cpu', weights_only=True)
            except pickle.UnpicklingError:  # a whole pickled module saved with torch.save
                opened.seek(0)
                return torch.load(opened, map_location='cpu', weights_only=False)
        opened.seek(0)
        obj = pickle.load(opened)
        if isinstance(obj, int) and obj == torch.serialization.MAGIC_NUMBER:  # legacy torch.save format
            opened.seek(0)
            return torch.load(opened, map_location='cpu', weights_only=True)
        return obj
    finally:
        if opened is not source:
            opened.close()


def _infer_kind(state_dict):
    keys = list(state_dict.keys())
    if any(k.startswith(('Conv2d_1a_3x3.', 'Mixed_')) for k in keys):
        return 'inception'
    if any(k.startswith(('features.', 'lin0.')) for k in keys):
        return 'vgg16'
    raise ValueError(f'unrecognised detector state dict (first keys: {keys[:3]}); expected the pytorch-fid '
                     f'Inception layout (Conv2d_1a_3x3.*, Mixed_*) or torchvision VGG16 (features.*)')


class AutocastDetector(torch.nn.Module):
    """Runs a detector loaded as-is under ``torch.autocast(dtype)``; returns float32 outputs."""

    def __init__(self, detector, dtype):
        super().__init__()
        self.detector = detector
        self.dtype = dtype

    def forward(self, images, **kwargs):
        with torch.inference_mode(), torch.autocast(device_type=images.device.type, dtype=self.dtype):
            out = self.detector(images, **kwargs)
        return out.float().clone()


def load_detector(path_or_url, device=torch.device('cpu'), kind=None, dtype=torch.float32, verbose=False):
    """Load a feature detector (see module doc) in eval mode with ``requires_grad=False`` on ``device``.

    ``kind``: 'inception', 'vgg16' or None (inferred from a state dict; not needed for modules).
    ``dtype``: torch.float32 or torch.bfloat16. Raises DetectorUnavailableError when the file is missing
    and cannot be downloaded (the message names the file and where to put it).
    """
    if kind not in (None,) + KINDS:
        raise ValueError(f'kind must be one of {KINDS} or None, got {kind!r}')
    if dtype not in _DTYPES:
        raise ValueError(f'dtype must be torch.float32 or torch.bfloat16, got {dtype}')
    device = torch.device(device)
    path_or_url = resolve_detector_url(path_or_url)
    obj = _read_detector_object(_open_detector_source(path_or_url, kind=kind, verbose=verbose))
    if isinstance(obj, dict):
        inferred = _infer_kind(obj)
        if kind is not None and kind != inferred:
            raise ValueError(f'{path_or_url}: state dict holds a {inferred} detector, but kind={kind!r} was requested')
        if inferred == 'inception':
            reference = _inception.InceptionV3FID()
            reference.load_state_dict(obj, strict=True)
            detector = _inception.FastInceptionV3FID(reference, dtype=dtype)
        else:
            detector = _vgg16.VGG16LPIPS.from_state_dict(obj, dtype=dtype)
    elif isinstance(obj, torch.nn.Module) or isinstance(obj, torch.jit.ScriptModule):
        detector = obj
        if dtype != torch.float32:
            detector = AutocastDetector(detector, dtype)
    else:
        raise ValueError(f'{path_or_url}: expected a state dict, a TorchScript archive or a pickled '
                         f'torch.nn.Module, got {type(obj).__name__}')
    detector = detector.eval().to(device)
    for param in detector.parameters():  # (ScriptModules do not offer requires_grad_)
        param.requires_grad_(False)
    return detector


def get_feature_detector(url, device=torch.device('cpu'), num_gpus=1, rank=0, verbose=False, dtype=torch.float32):
    """``load_detector`` cached per (url, device, dtype). With several processes (torch.distributed),
    rank 0 loads (downloads) first and the others wait at a barrier, then read the cached file."""
    device = torch.device(device)
    url = resolve_detector_url(url)
    key = (url, device, dtype)
    if key not in _detector_cache:
        distributed = num_gpus > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and rank != 0:
            torch.distributed.barrier()  # wait until rank 0 has the file
        try:
            _detector_cache[key] = load_detector(url, device=device, dtype=dtype, verbose=verbose and rank == 0)
        finally:
            if distributed and rank == 0:
                torch.distributed.barrier()  # release the other ranks (also when loading failed)
    return _detector_cache[key]
