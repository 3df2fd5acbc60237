"""Pickles that carry their own source code.

A class decorated with ``@persistent_class`` pickles its instances together with the complete source text of
the module that defined it. Unpickling rebuilds that module from the embedded text (no import of the original
file), so a network pickle keeps working after the code base changes, and pickles written by NVIDIA's
StyleGAN2-ADA / StyleGAN3 code load here (HOST_CONTRACT.md sections 1.3-1.5).

Each instance reduces to ``(_reconstruct_persistent_obj, (meta,), None)`` with
``meta = dict(type='class', version=6, module_src=<module text>, class_name=<name>, state=<instance __dict__>)``.
"""

import copy
import inspect
import linecache
import sys
import types
import uuid

import numpy as np
import torch

import dnnlib

# ------------------------------------------------------------------------------------------------
# Module-level registries (names are part of the public surface that third-party code touches).

_version = 6                 # meta['version'] written and required on load
_decorators = set()          # every persistent wrapper class created by persistent_class()
_import_hooks = []           # callables meta -> meta, applied in order on load
_module_to_src_dict = dict() # module object -> its source text
_src_to_module_dict = dict() # source text -> module object (exact-string cache)


class PersistenceError(ValueError):
    """A persistent pickle could not be written or rebuilt (bad meta, bad constructor argument, bad source)."""


# ------------------------------------------------------------------------------------------------
# The decorator.


def persistent_class(orig_class):
    """Class decorator: make instances of orig_class pickle together with the source of its module.

    Returns a subclass with the same __name__ (or orig_class itself if it is already persistent). The
    subclass records deep copies of the constructor arguments (properties init_args / init_kwargs), checks
    that they can be pickled by value, and reduces to the meta dict described in the module docstring.
    """
    if not isinstance(orig_class, type):
        raise TypeError(f'persistent_class: expected a class, got {type(orig_class).__name__}')
    if is_persistent(orig_class):
        return orig_class
    module = sys.modules.get(orig_class.__module__)
    if module is None:
        raise PersistenceError(
            f"persistent_class: module '{orig_class.__module__}' of class '{orig_class.__name__}' is not in sys.modules")
    orig_module_src = _module_to_src(module)
    orig_class_name = orig_class.__name__

    class PersistentWrapper(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class_name

        def __init__(self, *args, **kwargs):
            for idx, value in enumerate(args):
                _check_pickleable(value, f'{orig_class_name}() positional argument {idx}')
            for key, value in kwargs.items():
                _check_pickleable(value, f'{orig_class_name}() argument {key!r}')
            init_args = copy.deepcopy(args)
            init_kwargs = copy.deepcopy(kwargs)
            super().__init__(*args, **kwargs)
            self._init_args = init_args
            self._init_kwargs = init_kwargs
            if orig_class_name not in module.__dict__:
                raise PersistenceError(
                    f"persistent_class: '{orig_class_name}' must be defined at the top level of module "
                    f"'{module.__name__}' so that it can be found again when the pickle is loaded")

        @property
        def init_args(self):
            """Deep copy of the positional constructor arguments (tuple)."""
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            """Deep copy of the keyword constructor arguments (dnnlib.EasyDict)."""
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            state = self.__getstate__()
            meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                        class_name=self._orig_class_name, state=state)
            return _reconstruct_persistent_obj, (meta,), None

    PersistentWrapper.__name__ = orig_class.__name__
    PersistentWrapper.__qualname__ = orig_class.__qualname__
    PersistentWrapper.__doc__ = orig_class.__doc__
    _decorators.add(PersistentWrapper)
    return PersistentWrapper


def is_persistent(obj):
    """True if obj is a persistent wrapper class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:  # unhashable instance
        pass
    return type(obj) in _decorators


def import_hook(hook):
    """Register hook(meta) -> meta, run on every persistent object before its source is executed.

    The meta is a dnnlib.EasyDict with keys type, version, module_src, class_name, state; a hook may
    rewrite any of them (e.g. patch an import in module_src) and must return the meta. Returns hook, so
    this can be used as a decorator.
    """
    if not callable(hook):
        raise TypeError(f'import_hook: expected a callable, got {type(hook).__name__}')
    _import_hooks.append(hook)
    return hook


# ------------------------------------------------------------------------------------------------
# Loading.


def _reconstruct_persistent_obj(meta):
    """Rebuild a persistent object from its meta dict (the reduce function stored in every pickle)."""
    meta = dnnlib.EasyDict(meta)
    if meta.get('state') is not None:
        meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        if meta is None:
            raise PersistenceError(f'persistence import hook {getattr(hook, "__name__", hook)!r} returned None')

    missing = [key for key in ('type', 'version', 'module_src', 'class_name') if key not in meta]
    if missing:
        raise PersistenceError(f'persistent pickle meta lacks keys {missing}')
    if meta.version != _version:
        raise PersistenceError(
            f'persistent pickle has format version {meta.version!r}, this code reads version {_version}')
    if meta.type != 'class':
        raise PersistenceError(f"persistent pickle has object type {meta.type!r}, only 'class' is supported")

    try:
        module = _src_to_module(meta.module_src)
    except Exception as err:
        raise PersistenceError(
            f"cannot rebuild persistent class '{meta.class_name}': executing its embedded source failed with "
            f'{type(err).__name__}: {err}') from err
    if meta.class_name not in module.__dict__:
        raise PersistenceError(
            f"the source embedded in the pickle does not define class '{meta.class_name}'")
    cls = persistent_class(module.__dict__[meta.class_name])
    obj = cls.__new__(cls)
    setstate = getattr(obj, '__setstate__', None)
    if meta.state is None:
        pass
    elif callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


def _module_to_src(module):
    """Source text of a module: cached for modules built from pickles, inspect.getsource for real files."""
    src = _module_to_src_dict.get(module, None)
    if src is None:
        try:
            src = inspect.getsource(module)
        except (OSError, TypeError) as err:
            raise PersistenceError(
                f"cannot read the source of module '{module.__name__}' ({err}); persistent classes must be "
                'defined in a Python file') from err
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src


def _src_to_module(src):
    """Module built by executing src, reused for an identical source string.

    A fresh module is named '_imported_module_<32 hex>' and registered in sys.modules and in both caches
    before its source runs, because the persistent_class decorators inside the source look it up.
    """
    module = _src_to_module_dict.get(src, None)
    if module is not None:
        return module
    if not isinstance(src, str):
        raise PersistenceError(f'module source must be a str, got {type(src).__name__}')
    module_name = '_imported_module_' + uuid.uuid4().hex
    module = types.ModuleType(module_name)
    filename = f'<persistent source {module_name}>'
    sys.modules[module_name] = module
    _module_to_src_dict[module] = src
    _src_to_module_dict[src] = module
    # Register the text with linecache so tracebacks and inspect.getsource(function) work for this module.
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    try:
        exec(compile(src, filename, 'exec'), module.__dict__)  # pylint: disable=exec-used
    except BaseException:
        del sys.modules[module_name]
        del _module_to_src_dict[module]
        del _src_to_module_dict[src]
        linecache.cache.pop(filename, None)
        raise
    return module


# ------------------------------------------------------------------------------------------------
# Constructor-argument check.

_PRIMITIVE_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray,
                    np.generic, np.ndarray, np.dtype, torch.Tensor, torch.dtype, torch.device)


def _check_pickleable(obj, name='value'):
    """Raise PersistenceError unless obj is made only of values that pickle by value.

    Allowed: None, bool, int, float, complex, str, bytes, numpy arrays/scalars/dtypes, tensors, parameters,
    torch dtypes/devices, persistent objects, and list/tuple/set/dict (incl. EasyDict) of these.
    name describes obj in the error message (e.g. "Generator() argument 'mapping_kwargs'").
    """
    def recurse(value, path):
        if isinstance(value, _PRIMITIVE_TYPES) or is_persistent(value):
            return
        if isinstance(value, (list, tuple, set, frozenset)):
            for idx, item in enumerate(value):
                recurse(item, f'{path}[{idx}]')
            return
        if isinstance(value, dict):
            for key, item in value.items():
                recurse(key, f'{path} key {key!r}')
                recurse(item, f'{path}[{key!r}]')
            return
        raise PersistenceError(
            f'{path} cannot be stored in a persistent pickle: values of type {type(value).__module__}.'
            f'{type(value).__qualname__} are not allowed (use primitives, containers, numpy arrays, tensors '
            'or persistent objects)')

    recurse(obj, name)
