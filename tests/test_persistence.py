"""Tests for torch_utils.persistence: meta protocol, round trips, foreign sources, hooks, deepcopy, arg checks."""

import copy
import io
import os
import pickle
import re
import sys
import uuid

import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import persistence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # makes tests/helpers importable
from helpers import persistent_nets  # noqa: E402  pylint: disable=wrong-import-position


class _LoggingUnpickler(pickle.Unpickler):
    """Records every global the pickle asks for."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.globals_seen = []

    def find_class(self, module, name):
        self.globals_seen.append(f'{module}.{name}')
        return super().find_class(module, name)


def _foreign_source(gain_line='GAIN = 2.0'):
    """Source of a module that exists only as a string (unique per call, so no cache hits between tests)."""
    return (
        f'# foreign module {uuid.uuid4().hex}\n'
        'import sys\n'
        'import torch\n'
        'from torch_utils import persistence\n'
        '\n'
        f'{gain_line}\n'
        'REGISTERED_BEFORE_EXEC = __name__ in sys.modules\n'
        '\n'
        '@persistence.persistent_class\n'
        'class Scaler(torch.nn.Module):\n'
        '    def __init__(self, n):\n'
        '        super().__init__()\n'
        '        self.weight = torch.nn.Parameter(torch.ones(n))\n'
        '\n'
        '    def forward(self, x):\n'
        '        return x * self.weight * GAIN\n'
    )


def _foreign_meta(src, weight=(1.0, 2.0, 3.0), class_name='Scaler', drop_hook_dicts=False):
    """Meta dict as a foreign pickle would carry it, built without ever executing src."""
    proto = torch.nn.Module()
    proto.weight = torch.nn.Parameter(torch.tensor(weight))
    state = proto.__getstate__()
    if drop_hook_dicts:  # as written by old torch versions
        for key in ['_forward_hooks_with_kwargs', '_forward_pre_hooks_with_kwargs', '_backward_pre_hooks',
                    '_state_dict_pre_hooks', '_load_state_dict_post_hooks', '_forward_hooks_always_called']:
            state.pop(key, None)
    state['_init_args'] = ()
    state['_init_kwargs'] = {'n': len(weight)}
    return dict(type='class', version=6, module_src=src, class_name=class_name, state=state)


class _ForeignPickle:
    """Pickles exactly like a persistent object written by another code base."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return persistence._reconstruct_persistent_obj, (self.meta,)  # pylint: disable=protected-access


@pytest.fixture
def clean_hooks(monkeypatch):
    monkeypatch.setattr(persistence, '_import_hooks', [])


# ------------------------------------------------------------------------------------------------
# Writing


def test_meta_protocol_matches_contract():
    net = persistent_nets.TinyNet(3, 2)
    func, args, state = net.__reduce__()
    assert func is persistence._reconstruct_persistent_obj  # pylint: disable=protected-access
    assert state is None and len(args) == 1
    meta = args[0]
    assert type(meta) is dict
    assert set(meta.keys()) == {'type', 'version', 'module_src', 'class_name', 'state'}
    assert meta['type'] == 'class' and meta['version'] == 6 == persistence._version  # pylint: disable=protected-access
    with open(persistent_nets.__file__, encoding='utf-8') as f:
        assert meta['module_src'] == f.read()
    assert meta['class_name'] == 'TinyNet'
    assert {'_parameters', '_modules', '_buffers', '_init_args', '_init_kwargs', 'training'} <= set(meta['state'])


def test_wrapper_class_identity():
    cls = persistent_nets.TinyNet
    assert cls.__name__ == 'TinyNet' and cls.__module__ == 'torch_utils.persistence'
    assert persistence.is_persistent(cls) and persistence.is_persistent(cls(3, 2))
    assert not persistence.is_persistent(torch.nn.Linear(2, 2)) and not persistence.is_persistent(torch.nn.Linear)
    assert not persistence.is_persistent({})  # unhashable objects are fine
    assert persistence.persistent_class(cls) is cls  # idempotent
    assert cls.__bases__[0].__module__ == 'helpers.persistent_nets'
    assert cls in persistence._decorators  # pylint: disable=protected-access
    with pytest.raises(TypeError, match='expected a class'):
        persistence.persistent_class(lambda: None)


def test_init_args_and_kwargs_are_deep_copies():
    block_kwargs = dict(gain=2.0)
    net = persistent_nets.TinyNet(3, 2, hidden=5, block_kwargs=block_kwargs)
    block_kwargs['gain'] = 99.0  # later mutation of the caller's dict must not leak in
    assert net.init_args == (3, 2)
    kwargs = net.init_kwargs
    assert type(kwargs) is dnnlib.EasyDict and kwargs == {'hidden': 5, 'block_kwargs': {'gain': 2.0}}
    kwargs.block_kwargs['gain'] = -1.0
    assert net.init_kwargs.block_kwargs['gain'] == 2.0
    rebuilt = type(net)(*net.init_args, **net.init_kwargs)  # the idiom third-party tools use
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in net.parameters()]


# ------------------------------------------------------------------------------------------------
# Round trips


def test_pickle_round_trip_module():
    net = persistent_nets.TinyNet(4, 3, block_kwargs=dict(gain=1.5))
    x = torch.randn(6, 4)
    data = pickle.dumps(net)
    unpickler = _LoggingUnpickler(data)
    loaded = unpickler.load()
    assert 'torch_utils.persistence._reconstruct_persistent_obj' in unpickler.globals_seen
    assert not any('persistent_nets' in name for name in unpickler.globals_seen)
    assert type(loaded).__name__ == 'TinyNet'
    assert torch.equal(loaded(x), net(x))
    assert loaded.init_kwargs == net.init_kwargs
    assert persistence.is_persistent(loaded.blocks[0]) and type(loaded.blocks[0]).__name__ == 'TinyBlock'
    assert isinstance(loaded.scale, np.float32)
    # Same source text in this process -> the cached (real) module is reused, so the class is identical.
    assert type(loaded) is persistent_nets.TinyNet


def test_pickle_round_trip_plain_class():
    holder = persistent_nets.Holder(value=[1, 2.5, 'x'], tag=np.arange(3))
    loaded = pickle.loads(pickle.dumps(holder))
    assert type(loaded).__name__ == 'Holder' and loaded.value == [1, 2.5, 'x']
    assert np.array_equal(loaded.extra['tag'], np.arange(3))
    assert np.array_equal(loaded.init_kwargs.tag, np.arange(3))


def test_nested_source_stored_once():
    net = persistent_nets.TinyNet(3, 2, num_blocks=4)
    data = pickle.dumps(net)
    marker = b'Linear layer + leaky ReLU with a constant buffer'
    assert data.count(marker) == 1  # 5 persistent objects, one copy of the source
    unpickler = _LoggingUnpickler(data)
    unpickler.load()
    assert unpickler.globals_seen.count('torch_utils.persistence._reconstruct_persistent_obj') == 1  # memoised global


def test_deepcopy_goes_through_reduce():
    net = persistent_nets.TinyNet(3, 2)
    clone = copy.deepcopy(net)
    x = torch.randn(5, 3)
    assert type(clone) is type(net) and torch.equal(clone(x), net(x))
    assert clone.init_kwargs == net.init_kwargs
    with torch.no_grad():
        clone.blocks[0].fc.weight.add_(1.0)
    assert not torch.equal(clone(x), net(x))  # no shared storage
    assert clone.blocks[0].fc.weight.requires_grad


# ------------------------------------------------------------------------------------------------
# Loading sources that never existed as files


def test_load_foreign_source(clean_hooks):
    src = _foreign_source()
    meta = _foreign_meta(src, weight=(1.0, 2.0, 3.0))
    data = pickle.dumps(_ForeignPickle(meta))
    loaded = pickle.loads(data)
    assert type(loaded).__name__ == 'Scaler'
    module_name = type(loaded).__bases__[0].__module__
    assert re.fullmatch(r'_imported_module_[0-9a-f]{32}', module_name)
    module = sys.modules[module_name]
    assert module.REGISTERED_BEFORE_EXEC is True
    assert persistence._module_to_src_dict[module] == src  # pylint: disable=protected-access
    assert persistence._src_to_module_dict[src] is module  # pylint: disable=protected-access
    x = torch.tensor([1.0, 1.0, 1.0])
    assert torch.equal(loaded(x), torch.tensor([2.0, 4.0, 6.0]))
    assert loaded.init_kwargs == {'n': 3}
    # Re-pickling embeds the same foreign source again (the wrapper remembers it).
    again = loaded.__reduce__()[1][0]
    assert again['module_src'] == src and again['class_name'] == 'Scaler'
    assert torch.equal(pickle.loads(pickle.dumps(loaded))(x), loaded(x))


def test_source_cache_reuses_module(clean_hooks):
    src = _foreign_source()
    first = pickle.loads(pickle.dumps(_ForeignPickle(_foreign_meta(src, weight=(1.0,)))))
    second = pickle.loads(pickle.dumps(_ForeignPickle(_foreign_meta(src, weight=(5.0,)))))
    assert type(first) is type(second)
    other = pickle.loads(pickle.dumps(_ForeignPickle(_foreign_meta(_foreign_source(), weight=(1.0,)))))
    assert type(other) is not type(first) and type(other).__name__ == type(first).__name__
    assert float(second.weight.detach()) == 5.0


def test_old_torch_state_without_hook_dicts(clean_hooks):
    meta = _foreign_meta(_foreign_source(), weight=(3.0,), drop_hook_dicts=True)
    loaded = pickle.loads(pickle.dumps(_ForeignPickle(meta)))
    assert torch.equal(loaded(torch.tensor([1.0])), torch.tensor([6.0]))


def test_import_hook_rewrites_source(clean_hooks):
    seen = []

    @persistence.import_hook
    def patch_gain(meta):
        seen.append((type(meta), type(meta.state), meta.class_name))
        meta.module_src = meta.module_src.replace('GAIN = 2.0', 'GAIN = 10.0')
        return meta
    assert persistence._import_hooks == [patch_gain]  # pylint: disable=protected-access
    loaded = pickle.loads(pickle.dumps(_ForeignPickle(_foreign_meta(_foreign_source(), weight=(1.0,)))))
    assert seen == [(dnnlib.EasyDict, dnnlib.EasyDict, 'Scaler')]
    assert torch.equal(loaded(torch.tensor([1.0])), torch.tensor([10.0]))


def test_import_hook_must_return_meta(clean_hooks):
    persistence.import_hook(lambda meta: None)
    with pytest.raises(persistence.PersistenceError, match='returned None'):
        persistence._reconstruct_persistent_obj(_foreign_meta(_foreign_source()))  # pylint: disable=protected-access
    with pytest.raises(TypeError):
        persistence.import_hook('not callable')


@pytest.mark.parametrize('key, value, pattern', [
    ('version', 5, 'version 5'),
    ('type', 'function', "object type 'function'"),
    ('class_name', 'Missing', "does not define class 'Missing'"),
])
def test_bad_meta_is_reported(clean_hooks, key, value, pattern):
    meta = _foreign_meta(_foreign_source())
    meta[key] = value
    with pytest.raises(persistence.PersistenceError, match=pattern):
        pickle.loads(pickle.dumps(_ForeignPickle(meta)))


def test_failing_source_is_reported_and_not_cached(clean_hooks):
    src = _foreign_source().replace('from torch_utils import persistence',
                                    'from torch_utils.persistence import symbol_we_do_not_have')
    modules_before = set(sys.modules)
    with pytest.raises(persistence.PersistenceError, match='symbol_we_do_not_have'):
        pickle.loads(pickle.dumps(_ForeignPickle(_foreign_meta(src))))
    assert src not in persistence._src_to_module_dict  # pylint: disable=protected-access
    assert not any(name.startswith('_imported_module_') for name in set(sys.modules) - modules_before)


# ------------------------------------------------------------------------------------------------
# Constructor-argument check


def test_pickleable_constructor_arguments_accepted():
    inner = persistent_nets.Holder(1)
    holder = persistent_nets.Holder(
        value=[np.zeros(2), torch.ones(2), {1, 2}, (None, True, 1j), {'k': inner}, np.float32(1), torch.float16],
        kw=dnnlib.EasyDict(a=torch.nn.Parameter(torch.ones(1))))
    assert persistence.is_persistent(pickle.loads(pickle.dumps(holder)).value[4]['k'])


@pytest.mark.parametrize('args, kwargs, pattern', [
    ((), dict(value=lambda x: x), r"Holder\(\) argument 'value' cannot be stored.*function"),
    ((), dict(value={'a': [1, object()]}), r"argument 'value'\['a'\]\[1\].*builtins\.object"),
    ((object(),), {}, r'positional argument 0'),
    ((), dict(value=torch.nn.Linear(1, 1)), r'torch\.nn\.modules\.linear\.Linear'),
])
def test_unpicklable_constructor_argument(args, kwargs, pattern):
    with pytest.raises(persistence.PersistenceError, match=pattern):
        persistent_nets.Holder(*args, **kwargs)
