"""Small utilities shared by the whole code base (EasyDict, URL/file opening with cache, class-by-name, logging)."""

import glob
import hashlib
import importlib
import io
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


# ------------------------------------------------------------------------------------------------
# EasyDict


class EasyDict(dict):
    """A dict whose items are also readable and writable as attributes (``d.key``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


# ------------------------------------------------------------------------------------------------
# Time formatting


def format_time(seconds):
    """Format a duration in seconds as '12s', '3m 05s', '2h 03m 04s' or '1d 02h 03m' (rounded to whole seconds)."""
    s = int(round(float(seconds)))
    if s < 0:
        return '-' + format_time(-s)
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


# ------------------------------------------------------------------------------------------------
# Command-line lists


def parse_int_ranges(text):
    """'0,5,10-12' -> [0, 5, 10, 11, 12]: non-negative integers and inclusive a-b ranges, in the given order.

    Raises ValueError naming the offending part; empty parts are skipped (the result may be empty).
    """
    values = []
    for part in str(text).split(','):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r'(\d+)-(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f'range {part!r} is empty (end before start)')
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            values.append(int(part))
        else:
            raise ValueError(f'{part!r} is not a non-negative integer or an a-b range')
    return values


# ------------------------------------------------------------------------------------------------
# Tee logger: everything printed to stdout/stderr also goes to a file.


class _TeeStream:
    """Stream stand-in that writes to the original stream and to the Logger's file."""

    def __init__(self, logger, original):
        self._logger = logger
        self._original = original

    def write(self, text):
        return self._logger._write(text, self._original)

    def flush(self):
        self._logger._flush(self._original)

    def __getattr__(self, name):  # isatty(), fileno(), encoding, ... come from the real stream
        return getattr(self._original, name)


class Logger:
    """Duplicate everything written to sys.stdout and sys.stderr into a text file.

    Use as a context manager or call close(). While active, sys.stdout / sys.stderr are replaced by tee
    streams; close() restores the originals (if nobody replaced them in the meantime) and closes the file.
    file_name=None keeps only the console output (useful for uniform code paths on non-zero ranks).
    """

    def __init__(self, file_name=None, file_mode='w', should_flush=True):
        self.file = None
        if file_name is not None:
            self.file = open(file_name, file_mode, encoding='utf-8')
        self.should_flush = should_flush
        self._lock = threading.Lock()
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._stdout_tee = _TeeStream(self, self.stdout)
        self._stderr_tee = _TeeStream(self, self.stderr)
        sys.stdout = self._stdout_tee
        sys.stderr = self._stderr_tee

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()

    def _write(self, text, original):
        if isinstance(text, bytes):
            text = text.decode('utf-8', errors='replace')
        if len(text) == 0:
            return 0
        with self._lock:
            if self.file is not None:
                self.file.write(text)
            if original is not None:
                original.write(text)
            if self.should_flush:
                self._flush_unlocked(original)
        return len(text)

    def _flush_unlocked(self, original):
        if self.file is not None:
            self.file.flush()
        if original is not None:
            original.flush()

    def _flush(self, original):
        with self._lock:
            self._flush_unlocked(original)

    def write(self, text):
        """Write text to the original stdout and to the file."""
        return self._write(text, self.stdout)

    def flush(self):
        """Flush the file and the original stdout."""
        self._flush(self.stdout)

    def close(self):
        """Flush, restore sys.stdout/sys.stderr and close the file. Safe to call twice."""
        self.flush()
        if sys.stdout is self._stdout_tee:
            sys.stdout = self.stdout
        if sys.stderr is self._stderr_tee:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None


# ------------------------------------------------------------------------------------------------
# Objects by dotted name


class ObjectNotFoundError(ImportError):
    """A dotted name such as 'training.dataset.ImageFolderDataset' could not be resolved."""


_MODULE_ALIASES = {'np': 'numpy'}


def get_module_from_obj_name(obj_name):
    """Split a dotted name into (imported module, remaining attribute path), using the longest importable prefix.

    'training.dataset.ImageFolderDataset' -> (<module training.dataset>, 'ImageFolderDataset').
    Raises ObjectNotFoundError naming the module or attribute that could not be found.
    """
    if not isinstance(obj_name, str) or len(obj_name) == 0:
        raise ObjectNotFoundError(f'expected a dotted object name, got {obj_name!r}')
    parts = obj_name.split('.')
    if parts[0] in _MODULE_ALIASES:
        parts = _MODULE_ALIASES[parts[0]].split('.') + parts[1:]
    last_missing = None
    for split in range(len(parts), 0, -1):  # longest module prefix first
        module_name = '.'.join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # Only "this prefix does not exist" lets us try a shorter prefix; a missing import *inside* an
            # existing module is a real error of that module and must surface unchanged.
            if err.name is None or not (module_name == err.name or module_name.startswith(err.name + '.')):
                raise
            last_missing = module_name
            continue
        local_name = '.'.join(parts[split:])
        try:
            get_obj_from_module(module, local_name)
        except AttributeError:
            # The deepest importable module does not hold it; keep the precise message.
            raise ObjectNotFoundError(
                f"cannot find '{local_name}' in module '{module_name}' (while resolving '{obj_name}')") from None
        return module, local_name
    raise ObjectNotFoundError(f"cannot resolve '{obj_name}': no module named '{last_missing or parts[0]}'")


def get_obj_from_module(module, obj_name):
    """Follow a dotted attribute path inside a module ('' returns the module itself)."""
    obj = module
    if obj_name == '':
        return obj
    for part in obj_name.split('.'):
        obj = getattr(obj, part)
    return obj


def get_obj_by_name(name):
    """Return the Python object named by a dotted path, e.g. 'numpy.float32' or 'training.loss.StyleGAN2Loss'."""
    module, local_name = get_module_from_obj_name(name)
    return get_obj_from_module(module, local_name)


def call_func_by_name(*args, func_name=None, **kwargs):
    """Resolve func_name with get_obj_by_name and call it with the given arguments."""
    if func_name is None:
        raise ValueError('call_func_by_name: func_name is required')
    func_obj = get_obj_by_name(func_name)
    if not callable(func_obj):
        raise TypeError(f"'{func_name}' is not callable (it is a {type(func_obj).__name__})")
    return func_obj(*args, **kwargs)


def construct_class_by_name(*args, class_name=None, **kwargs):
    """Instantiate the class named by the dotted path class_name with the given arguments."""
    if class_name is None:
        raise ValueError('construct_class_by_name: class_name is required')
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def get_top_level_function_name(obj):
    """Return the dotted name ('module.function') by which a module-level function can be looked up again."""
    module = obj.__module__
    if module == '__main__':
        module = os.path.splitext(os.path.basename(sys.modules[module].__file__))[0]
    return module + '.' + obj.__name__


# ------------------------------------------------------------------------------------------------
# Cache directory and URL opening


def make_cache_dir_path(*paths):
    """Path inside the dnnlib cache: $DNNLIB_CACHE_DIR if set, else ~/.cache/dnnlib, joined with *paths."""
    root = os.environ.get('DNNLIB_CACHE_DIR')
    if not root:
        root = os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib')
    return os.path.join(root, *paths)


def is_url(obj, allow_file_urls=False):
    """True if obj is a string of the form 'scheme://netloc/...'; file:// URLs count only if allow_file_urls."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if obj.startswith('file://'):
        return allow_file_urls
    try:
        parsed = urllib.parse.urlparse(obj)
    except ValueError:
        return False
    return bool(parsed.scheme) and bool(parsed.netloc) and bool(parsed.hostname)


class DownloadError(IOError):
    """A URL could not be fetched (offline, unreachable, HTTP error); the message says where to put the file."""


def url_cache_filename(url):
    """File name under which a URL is cached: '<md5 of url>_<sanitised last path component>'."""
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    base = os.path.basename(urllib.parse.urlparse(url).path)
    safe = re.sub(r'[^0-9a-zA-Z._-]', '_', urllib.parse.unquote(base)) or 'download'
    return f'{url_md5}_{safe}'


def _urlopen(url, timeout):
    """Network opener used by open_url (a separate function so tests can replace it)."""
    request = urllib.request.Request(url, headers={'User-Agent': 'dnnlib-open-url'})
    return urllib.request.urlopen(request, timeout=timeout)


_DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20


def _is_permanent_failure(err):
    """Errors that retrying cannot fix: HTTP 4xx, or a host name that does not resolve (offline machine)."""
    if isinstance(err, urllib.error.HTTPError):
        return 400 <= err.code < 500 and err.code not in (408, 429)
    reason = getattr(err, 'reason', err)
    return isinstance(reason, socket.gaierror)


def _download(url):
    """Fetch a URL into memory; raise on short reads."""
    with _urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        expected = response.headers.get('Content-Length') if getattr(response, 'headers', None) else None
        chunks = []
        while True:
            chunk = response.read(_CHUNK_BYTES)
            if not chunk:
                break
            chunks.append(chunk)
    data = b''.join(chunks)
    if expected is not None and expected.isdigit() and int(expected) != len(data):
        raise IOError(f'incomplete download: got {len(data)} of {int(expected)} bytes')
    return data


def open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
    """Open a local path, a file:// URL or an http(s) URL for binary reading.

    http(s) downloads are cached as <cache_dir>/<md5(url)>_<name> (cache_dir defaults to
    make_cache_dir_path('downloads')); a cached file is used without touching the network. Downloads are
    retried up to num_attempts times and written atomically (temporary file + rename). If the URL cannot be
    fetched, DownloadError (an IOError) names the URL and the exact path where the file can be put by hand.
    Returns an open binary file object, or the file's path when return_filename=True.
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f'open_url: expected a path or URL string, got {type(url).__name__}')
    if num_attempts < 1:
        raise ValueError(f'open_url: num_attempts must be >= 1, got {num_attempts}')

    # Local file path.
    if not is_url(url, allow_file_urls=True):
        if not os.path.isfile(url):
            raise FileNotFoundError(f'open_url: no such file: {url}')
        return url if return_filename else open(url, 'rb')

    # file:// URL.
    if url.startswith('file://'):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ('', 'localhost'):
            raise ValueError(f'open_url: file URL with a remote host is not supported: {url}')
        filename = urllib.request.url2pathname(parsed.path)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'open_url: no such file: {filename} (from {url})')
        return filename if return_filename else open(filename, 'rb')

    # Remote URL: look in the cache first.
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ('http', 'https', 'ftp'):
        raise ValueError(f"open_url: unsupported URL scheme '{scheme}' in {url}")
    if return_filename and not cache:
        raise ValueError('open_url: return_filename=True needs cache=True for remote URLs')
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    cache_file = os.path.join(cache_dir, url_cache_filename(url))
    if cache:
        url_md5 = os.path.basename(cache_file).split('_', 1)[0]
        hits = sorted(glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + '_*')))
        if os.path.isfile(cache_file):
            hits = [cache_file]
        if len(hits) > 0:
            return hits[0] if return_filename else open(hits[0], 'rb')

    # Download with retries.
    data = None
    last_error = None
    for attempt in range(num_attempts):
        if verbose:
            print(f'Downloading {url} ...', end='', flush=True)
        try:
            data = _download(url)
            if verbose:
                print(' done', flush=True)
            break
        except (OSError, urllib.error.URLError, ValueError) as err:
            last_error = err
            if verbose:
                print(' failed', flush=True)
            if _is_permanent_failure(err) or attempt == num_attempts - 1:
                break
            time.sleep(min(0.5 * (attempt + 1), 5.0))
    if data is None:
        raise DownloadError(
            f'Could not download {url} ({type(last_error).__name__}: {last_error}). '
            f'If this machine is offline, download the file elsewhere and place it at: {cache_file}')

    if not cache:
        return io.BytesIO(data)
    os.makedirs(cache_dir, exist_ok=True)
    fd, temp_file = tempfile.mkstemp(prefix=f'.tmp-{uuid.uuid4().hex}-', dir=cache_dir)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(temp_file, cache_file)
    finally:
        if os.path.exists(temp_file):
            os.remove(temp_file)
    return cache_file if return_filename else open(cache_file, 'rb')
