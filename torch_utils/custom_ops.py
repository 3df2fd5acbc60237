"""Run-time build of the CUDA/C++ plugins used by torch_utils.ops (JIT compilation with ninja).

Public API (other modules call these by name):

* ``verbosity``: 'none' | 'brief' | 'full' -- how much the builder prints.
* ``get_plugin(module_name, sources, ...)``: build (or reuse) and import an extension; raises on failure.
* ``get_plugin_once(module_name, sources, ...)``: like get_plugin, but tries at most once per process and
  returns None (after a single warning) when the build fails, so callers can fall back to reference code.
* ``reference_ops_forced()``: True when env var TORCH_UTILS_REF_OPS asks for the reference paths.
* ``nvcc_compile_check(sources, ...)``: compile-only check of plugin sources (no GPU, no linking).

Build layout: the sources and headers are copied into
``<TORCH_EXTENSIONS_DIR or torch's default build root>/<module_name>/<md5 of contents>-<GPU name>`` so that
ninja sees stable paths and each source revision / GPU model gets its own build.

Environment: TORCH_UTILS_REF_OPS=1 forces reference paths; TORCH_UTILS_BUILD_LOCK_TIMEOUT (seconds, default
300) bounds the wait on a build lock file before StaleLockError names it; TORCH_CUDA_ARCH_LIST, when set,
is left to torch (unset or empty: compile for the current GPU only).
"""

import glob
import hashlib
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import time
import traceback
import types
import warnings

import torch
import torch.utils.cpp_extension
import torch.utils.file_baton

#----------------------------------------------------------------------------

verbosity = 'brief'  # 'none' | 'brief' | 'full'

REF_OPS_ENV = 'TORCH_UTILS_REF_OPS'               # '1' / 'true' forces the pure-PyTorch reference paths.
LOCK_TIMEOUT_ENV = 'TORCH_UTILS_BUILD_LOCK_TIMEOUT'  # seconds a build lock may exist before we give up.
DEFAULT_LOCK_TIMEOUT = 300.0

_NVCC_FLAGS = ['--use_fast_math', '--allow-unsupported-compiler']

_plugins: dict[str, types.ModuleType] = {}               # module_name -> built module (get_plugin)
_once_results: dict[str, types.ModuleType | None] = {}   # module_name -> module or None (get_plugin_once)
_build_lock = threading.RLock()                          # serialises builds within this process

#----------------------------------------------------------------------------

def reference_ops_forced() -> bool:
    """True if env var TORCH_UTILS_REF_OPS is '1' or 'true' (any case): ops must use their reference paths."""
    return os.environ.get(REF_OPS_ENV, '').strip().lower() in ('1', 'true')


def lock_timeout() -> float:
    """Seconds a build lock file may exist before the build is abandoned (env TORCH_UTILS_BUILD_LOCK_TIMEOUT)."""
    value = os.environ.get(LOCK_TIMEOUT_ENV, '').strip()
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        return float(value)
    except ValueError:
        raise ValueError(f'{LOCK_TIMEOUT_ENV} must be a number of seconds, got {value!r}') from None


class StaleLockError(RuntimeError):
    """A build lock file outlived the timeout (typically left behind by an interrupted build)."""

#----------------------------------------------------------------------------

def _resolve_files(files, source_dir, kind):
    """Absolute paths for `files` (relative to `source_dir` when given); raise if any is missing."""
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = []
    for f in files:
        path = os.path.abspath(os.path.join(source_dir, f) if source_dir is not None else f)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'plugin {kind} file not found: {path}')
        paths.append(path)
    return paths


def _check_unique_basenames(paths):
    names = [os.path.basename(p) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'plugin files must have distinct file names, duplicated: {", ".join(dupes)}')


def _contents_digest(paths):
    """md5 hex digest over the file names and contents of `paths`, in order."""
    md5 = hashlib.md5()
    for path in paths:
        md5.update(os.path.basename(path).encode('utf-8') + b'\0')
        with open(path, 'rb') as f:
            md5.update(f.read())
        md5.update(b'\0')
    return md5.hexdigest()


def _device_tag():
    """File-name-safe name of the current GPU ('cpu' when there is none)."""
    if not torch.cuda.is_available():
        return 'cpu'
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', torch.cuda.get_device_name()).strip('-') or 'gpu'


def _build_root():
    return os.environ.get('TORCH_EXTENSIONS_DIR') or torch.utils.cpp_extension.get_default_build_root()


def _make_cached_build_dir(paths, module_name):
    """Copy `paths` into <root>/<module_name>/<md5>-<gpu>, atomically; reuse the folder if it exists."""
    digest = _contents_digest(paths)
    parent = os.path.join(_build_root(), module_name)
    build_dir = os.path.join(parent, f'{digest}-{_device_tag()}')
    if not os.path.isdir(build_dir):
        os.makedirs(parent, exist_ok=True)
        tmp_dir = tempfile.mkdtemp(prefix=f'.tmp-{digest}-', dir=parent)
        try:
            for path in paths:
                shutil.copyfile(path, os.path.join(tmp_dir, os.path.basename(path)))
            try:
                os.replace(tmp_dir, build_dir)
            except OSError:
                if not os.path.isdir(build_dir):  # not a lost race with another process: a real error
                    raise
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return build_dir


def _cuda_arch_flags():
    """nvcc flags targeting the current GPU when TORCH_CUDA_ARCH_LIST is unset or empty, else []."""
    if os.environ.get('TORCH_CUDA_ARCH_LIST', '').strip() or not torch.cuda.is_available():
        return []
    major, minor = torch.cuda.get_device_capability()
    cc = major * 10 + minor
    supported = [int(a.split('_')[1].rstrip('af')) for a in torch.cuda.get_arch_list() if a.startswith('sm_')]
    if supported and cc > max(supported):  # GPU newer than this torch build: compile the newest arch + PTX
        cc = max(supported)
        return [f'-gencode=arch=compute_{cc},code=sm_{cc}', f'-gencode=arch=compute_{cc},code=compute_{cc}']
    return [f'-gencode=arch=compute_{cc},code=sm_{cc}']


def _ensure_msvc_on_path():
    """Windows only: put the newest Visual Studio cl.exe on PATH if none is there."""
    if os.name != 'nt' or shutil.which('cl.exe') is not None:
        return
    patterns = [
        'C:/Program Files*/Microsoft Visual Studio/*/*/VC/Tools/MSVC/*/bin/Hostx64/x64',
        'C:/Program Files*/Microsoft Visual Studio */vc/bin',
    ]
    found = sorted(p for pattern in patterns for p in glob.glob(pattern) if os.path.isfile(os.path.join(p, 'cl.exe')))
    if not found:
        raise RuntimeError('Could not find MSVC/GCC/CLANG installation on this computer. '
                           'Install Visual Studio (C++ workload) or put cl.exe on PATH.')
    os.environ['PATH'] = os.environ.get('PATH', '') + os.pathsep + found[-1]

#----------------------------------------------------------------------------
# Lock handling: torch.utils.cpp_extension guards each build folder with a file "lock" and waits for it
# forever. A build killed with Ctrl-C leaves that file behind, so we bound the wait.

def _stale_lock_message(lock_path, age, timeout):
    return (f'Build lock file "{lock_path}" has existed for {age:.0f} s (timeout {timeout:.0f} s); '
            f'a previous build was probably interrupted. Delete the stale lock file "{lock_path}" and retry '
            f'(or raise {LOCK_TIMEOUT_ENV} if another build is genuinely still running).')


def wait_for_lock(lock_path, timeout=None, poll_seconds=0.2):
    """Wait until `lock_path` disappears; raise StaleLockError once it is older than `timeout` seconds."""
    timeout = lock_timeout() if timeout is None else float(timeout)
    start = time.time()
    while True:
        try:
            created = os.path.getmtime(lock_path)
        except FileNotFoundError:
            return
        age = time.time() - min(created, start)
        if age > timeout:
            raise StaleLockError(_stale_lock_message(lock_path, age, timeout))
        time.sleep(poll_seconds)


class _TimeoutFileBaton(torch.utils.file_baton.FileBaton):
    """torch's FileBaton whose wait() gives up on a stale lock instead of spinning forever."""

    def wait(self):
        wait_for_lock(self.lock_file_path, poll_seconds=self.wait_seconds)


def _load_with_lock_timeout(**load_kwargs):
    """torch.utils.cpp_extension.load with a bounded wait on the build folder's lock file."""
    wait_for_lock(os.path.join(load_kwargs['build_directory'], 'lock'))
    original = getattr(torch.utils.cpp_extension, 'FileBaton', None)
    if original is not None:
        torch.utils.cpp_extension.FileBaton = _TimeoutFileBaton
    try:
        return torch.utils.cpp_extension.load(**load_kwargs)
    finally:
        if original is not None:
            torch.utils.cpp_extension.FileBaton = original

#----------------------------------------------------------------------------

def _build_plugin(module_name, source_paths, header_paths, build_kwargs):
    _ensure_msvc_on_path()
    all_paths = source_paths + header_paths
    _check_unique_basenames(all_paths)
    build_dir = _make_cached_build_dir(all_paths, module_name)
    cached_sources = [os.path.join(build_dir, os.path.basename(p)) for p in source_paths]

    build_kwargs = dict(build_kwargs)
    extra_cuda_cflags = list(_NVCC_FLAGS) + _cuda_arch_flags() + list(build_kwargs.pop('extra_cuda_cflags', None) or [])
    module = _load_with_lock_timeout(name=module_name, build_directory=build_dir, sources=cached_sources,
                                     extra_cuda_cflags=extra_cuda_cflags, verbose=(verbosity == 'full'),
                                     **build_kwargs)
    if not isinstance(module, types.ModuleType):  # older torch: load() registered it in sys.modules
        module = importlib.import_module(module_name)
    return module


def get_plugin(module_name, sources, headers=None, source_dir=None, **build_kwargs):
    """Build (if needed) and import the extension `module_name` from `sources` (+ `headers`).

    sources/headers: file paths, relative to `source_dir` when given. build_kwargs go to
    torch.utils.cpp_extension.load (e.g. extra_cflags, extra_cuda_cflags, extra_ldflags).
    Returns the imported module; cached per process by module_name. Raises on any failure.
    """
    if not isinstance(module_name, str) or not module_name.isidentifier():
        raise ValueError(f'plugin module_name must be a Python identifier, got {module_name!r}')
    if verbosity not in ('none', 'brief', 'full'):
        raise ValueError(f"custom_ops.verbosity must be 'none', 'brief' or 'full', got {verbosity!r}")
    with _build_lock:
        if module_name in _plugins:
            return _plugins[module_name]
        source_paths = _resolve_files(sources, source_dir, 'source')
        if not source_paths:
            raise ValueError(f'plugin "{module_name}" needs at least one source file')
        header_paths = _resolve_files(headers, source_dir, 'header')

        if verbosity == 'full':
            print(f'Setting up PyTorch plugin "{module_name}"...', flush=True)
        elif verbosity == 'brief':
            print(f'Setting up PyTorch plugin "{module_name}"... ', end='', flush=True)
        try:
            module = _build_plugin(module_name, source_paths, header_paths, build_kwargs)
        except BaseException:
            if verbosity == 'full':
                print(f'Setting up PyTorch plugin "{module_name}"... Failed!', flush=True)
            elif verbosity == 'brief':
                print('Failed!', flush=True)
            raise
        if verbosity == 'full':
            print(f'Setting up PyTorch plugin "{module_name}"... Done.', flush=True)
        elif verbosity == 'brief':
            print('Done.', flush=True)
        _plugins[module_name] = module
        return module


def _describe_exception(exc):
    """Text of `exc` and of its causes (torch puts the compiler output into the message), no traceback."""
    parts = []
    while exc is not None and len(parts) < 5:
        parts.append(''.join(traceback.format_exception_only(type(exc), exc)).rstrip())
        exc = exc.__cause__ or exc.__context__
    return '\nCaused by: '.join(parts)


def get_plugin_once(module_name, sources, headers=None, source_dir=None, **build_kwargs):
    """Like get_plugin, but at most one build attempt per process and module_name.

    Returns the module, or None if the build failed; the failure is reported by a single warning that
    contains the error text (compiler output included) and later calls return None immediately.
    """
    with _build_lock:
        if module_name in _once_results:
            return _once_results[module_name]
        try:
            module = get_plugin(module_name, sources, headers=headers, source_dir=source_dir, **build_kwargs)
        except Exception as exc:  # noqa: BLE001 -- any build failure means "use the reference path"
            module = None
            warnings.warn(f'Failed to build the CUDA plugin "{module_name}"; the slow reference implementation '
                          f'will be used for the rest of this process. Error:\n{_describe_exception(exc)}',
                          RuntimeWarning, stacklevel=2)
        _once_results[module_name] = module
        return module

#----------------------------------------------------------------------------
# Compile-only check (CI without GPU): the same compilers, include paths and main flags as a real build.

def _cuda_include_dir():
    """The CUDA toolkit's include folder (holding cuda_runtime_api.h), or None."""
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'), torch.utils.cpp_extension.CUDA_HOME]
    nvcc = shutil.which('nvcc')
    if nvcc is not None:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append('/usr/local/cuda')
    candidates += sorted(glob.glob('/usr/local/cuda-*'), reverse=True)
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, 'include', 'cuda_runtime_api.h')):
            return os.path.join(root, 'include')
    return None


def _torch_cxx_standard():
    """The -std flag torch.utils.cpp_extension itself uses (c++20 on recent torch, c++17 before)."""
    try:
        source = inspect.getsource(torch.utils.cpp_extension)
    except (OSError, TypeError):
        return '-std=c++17'
    return '-std=c++20' if "'-std=c++20'" in source else '-std=c++17'


def _compile_check_flags(extension_name, include_dirs, extra_flags):
    flags = [f'-DTORCH_EXTENSION_NAME={extension_name}', '-DTORCH_API_INCLUDE_EXTENSION_H']
    torch_include = torch.utils.cpp_extension.include_paths()[0]
    if not os.path.isfile(os.path.join(torch_include, 'c10', 'cuda', 'impl', 'cuda_cmake_macros.h')):
        flags.append('-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE')  # CPU wheels lack this generated header
    for inc in include_dirs:
        flags += ['-isystem', inc]
    if not any(f.startswith('-std=') for f in extra_flags):
        flags.append(_torch_cxx_standard())
    return flags + list(extra_flags)


def nvcc_compile_check(sources, headers=None, source_dir=None, extra_flags=()):
    """Compile (no link, no GPU) each .cu with nvcc and each .cpp with the host C++ compiler.

    Files are copied into a temporary folder first (like a real build), so a header missing from `headers`
    is an error. extra_flags go to every compiler call (use flags both understand: -D, -I, -U, -O).
    Returns (ok, output): ok is True iff every file compiled; output holds each command and its messages.
    """
    try:
        source_paths = _resolve_files(sources, source_dir, 'source')
        header_paths = _resolve_files(headers, source_dir, 'header')
        _check_unique_basenames(source_paths + header_paths)
    except (FileNotFoundError, ValueError) as exc:
        return False, str(exc)
    if not source_paths:
        return False, 'nvcc_compile_check: no source files given'
    extra_flags = [str(f) for f in extra_flags]

    include_dirs = list(torch.utils.cpp_extension.include_paths())
    cuda_include = _cuda_include_dir()
    if cuda_include is not None:
        include_dirs.append(cuda_include)
    python_include = sysconfig.get_paths().get('include')
    if python_include:
        include_dirs.append(python_include)
    extension_name = 'compile_check_' + re.sub(r'\W', '_', os.path.splitext(os.path.basename(source_paths[0]))[0])
    common = _compile_check_flags(extension_name, include_dirs, extra_flags)

    nvcc = shutil.which('nvcc')
    cxx = os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++') or 'c++'
    ok = True
    log = []
    with tempfile.TemporaryDirectory(prefix='nvcc_compile_check_') as tmp:
        for path in source_paths + header_paths:
            shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
        for path in source_paths:
            name = os.path.basename(path)
            obj = os.path.join(tmp, name + '.o')
            if name.endswith('.cu'):
                if nvcc is None:
                    ok = False
                    log.append(f'{name}: nvcc not found on PATH')
                    continue
                torch_nvcc_flags = getattr(torch.utils.cpp_extension, 'COMMON_NVCC_FLAGS', [])
                cmd = [nvcc, '-c', name, '-o', obj, *torch_nvcc_flags, *_NVCC_FLAGS, '--compiler-options', '-fPIC',
                       *common]
            elif name.endswith(('.cpp', '.cc', '.cxx')):
                cmd = [cxx, '-c', name, '-o', obj, '-fPIC', *common]
            else:
                ok = False
                log.append(f'{name}: unknown source type (expected .cu or .cpp)')
                continue
            try:
                proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, errors='replace')
            except OSError as exc:
                ok = False
                log.append(f'$ {" ".join(cmd)}\n{exc}')
                continue
            log.append(f'$ {" ".join(cmd)}\n{proc.stdout}{proc.stderr}'.rstrip())
            if proc.returncode != 0:
                ok = False
                log.append(f'{name}: compilation failed (exit code {proc.returncode})')
    return ok, '\n'.join(log)

#----------------------------------------------------------------------------
