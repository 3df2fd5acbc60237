"""custom_ops: hashed build folders, once-only failure handling, stale lock detection, env forcing, nvcc check."""
import os
import re
import threading
import time
import types
import warnings

import pytest
import torch
import torch.utils.cpp_extension

from torch_utils import custom_ops

OPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'torch_utils', 'ops')


@pytest.fixture
def builder(monkeypatch, tmp_path):
    """Fresh custom_ops caches, TORCH_EXTENSIONS_DIR in tmp_path, and a recording fake of cpp_extension.load."""
    monkeypatch.setattr(custom_ops, '_plugins', {})
    monkeypatch.setattr(custom_ops, '_once_results', {})
    monkeypatch.setattr(custom_ops, 'verbosity', 'brief')
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'ext'))
    monkeypatch.delenv(custom_ops.LOCK_TIMEOUT_ENV, raising=False)
    calls = []
    state = types.SimpleNamespace(calls=calls, error=None, root=tmp_path / 'ext', on_load=None)

    def fake_load(**kwargs):
        calls.append(kwargs)
        if state.on_load is not None:
            state.on_load(kwargs)
        if state.error is not None:
            raise state.error
        return types.ModuleType(kwargs['name'])

    monkeypatch.setattr(torch.utils.cpp_extension, 'load', fake_load)
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'fake.cpp').write_text('#include "fake.h"\nint f() { return kValue; }\n')
    (src / 'fake.h').write_text('constexpr int kValue = 1;\n')
    state.src = src
    return state


def test_build_dir_is_hashed_copy(builder, capsys):
    module = custom_ops.get_plugin('fake_plugin', ['fake.cpp'], headers=['fake.h'], source_dir=str(builder.src))
    assert module.__name__ == 'fake_plugin'
    assert capsys.readouterr().out == 'Setting up PyTorch plugin "fake_plugin"... Done.\n'
    (kwargs,) = builder.calls
    build_dir = kwargs['build_directory']
    assert os.path.dirname(build_dir) == str(builder.root / 'fake_plugin')
    assert re.fullmatch(r'[0-9a-f]{32}-cpu', os.path.basename(build_dir))
    assert kwargs['name'] == 'fake_plugin'
    assert kwargs['sources'] == [os.path.join(build_dir, 'fake.cpp')]
    assert '--use_fast_math' in kwargs['extra_cuda_cflags']
    assert kwargs['verbose'] is False
    for name in ('fake.cpp', 'fake.h'):  # copies with identical content
        assert (builder.src / name).read_bytes() == open(os.path.join(build_dir, name), 'rb').read()
    assert [p for p in os.listdir(builder.root / 'fake_plugin') if p.startswith('.tmp')] == []

    # Cached per module name: no second load.
    assert custom_ops.get_plugin('fake_plugin', ['fake.cpp'], headers=['fake.h'], source_dir=str(builder.src)) is module
    assert len(builder.calls) == 1


def test_build_dir_depends_on_content(builder):
    custom_ops.get_plugin('fake_plugin', ['fake.cpp'], headers=['fake.h'], source_dir=str(builder.src))
    custom_ops._plugins.clear()
    custom_ops.get_plugin('fake_plugin', ['fake.cpp'], headers=['fake.h'], source_dir=str(builder.src))
    (builder.src / 'fake.h').write_text('constexpr int kValue = 2;\n')  # header change -> new folder
    custom_ops._plugins.clear()
    custom_ops.get_plugin('fake_plugin', ['fake.cpp'], headers=['fake.h'], source_dir=str(builder.src))
    dirs = [c['build_directory'] for c in builder.calls]
    assert dirs[0] == dirs[1] != dirs[2]
    assert open(os.path.join(dirs[2], 'fake.h')).read() == 'constexpr int kValue = 2;\n'


def test_gpu_name_and_arch_flags(builder, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'NVIDIA GeForce RTX 3090 (24GB)')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a: (8, 6))
    monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: ['sm_80', 'sm_86', 'sm_90'])
    monkeypatch.delenv('TORCH_CUDA_ARCH_LIST', raising=False)
    custom_ops.get_plugin('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    kwargs = builder.calls[-1]
    assert kwargs['build_directory'].endswith('-NVIDIA-GeForce-RTX-3090-24GB')
    assert '-gencode=arch=compute_86,code=sm_86' in kwargs['extra_cuda_cflags']

    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '8.0')  # an explicit list is left to torch
    custom_ops._plugins.clear()
    custom_ops.get_plugin('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    assert not any('arch=' in f for f in builder.calls[-1]['extra_cuda_cflags'])


def test_missing_source_raises(builder):
    with pytest.raises(FileNotFoundError, match='nope.cu'):
        custom_ops.get_plugin('fake_plugin', ['nope.cu'], source_dir=str(builder.src))


def test_get_plugin_failure_raises_and_prints_failed(builder, capsys):
    builder.error = RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'):
        custom_ops.get_plugin('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    assert capsys.readouterr().out == 'Setting up PyTorch plugin "fake_plugin"... Failed!\n'


def test_get_plugin_once_warns_once_with_compiler_output(builder):
    compiler_message = "fake.cu(3): error: expected a ';'"
    builder.error = RuntimeError(f"Error building extension 'fake_plugin': {compiler_message}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert custom_ops.get_plugin_once('fake_plugin', ['fake.cpp'], source_dir=str(builder.src)) is None
        assert custom_ops.get_plugin_once('fake_plugin', ['fake.cpp'], source_dir=str(builder.src)) is None
        assert custom_ops.get_plugin_once('fake_plugin', ['fake.cpp'], source_dir=str(builder.src)) is None
    assert len(builder.calls) == 1  # tried once only
    assert len(caught) == 1
    text = str(caught[0].message)
    assert compiler_message in text and 'reference implementation' in text and 'fake_plugin' in text


def test_get_plugin_once_success_is_cached(builder):
    first = custom_ops.get_plugin_once('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    assert first is not None
    assert custom_ops.get_plugin_once('fake_plugin', ['fake.cpp'], source_dir=str(builder.src)) is first
    assert len(builder.calls) == 1

#----------------------------------------------------------------------------
# Lock handling.

def _build_dir_of(builder):
    custom_ops.get_plugin('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    custom_ops._plugins.clear()
    return builder.calls[-1]['build_directory']


def test_stale_lock_raises_naming_the_lock(builder, monkeypatch):
    lock = os.path.join(_build_dir_of(builder), 'lock')
    open(lock, 'w').close()
    monkeypatch.setenv(custom_ops.LOCK_TIMEOUT_ENV, '0.3')
    start = time.time()
    with pytest.raises(custom_ops.StaleLockError) as info:
        custom_ops.get_plugin('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    assert time.time() - start < 10
    assert lock in str(info.value) and 'Delete' in str(info.value)
    assert len(builder.calls) == 1  # load was not entered while the lock existed


def test_old_lock_raises_immediately(builder, monkeypatch):
    lock = os.path.join(_build_dir_of(builder), 'lock')
    open(lock, 'w').close()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    monkeypatch.setenv(custom_ops.LOCK_TIMEOUT_ENV, '60')
    start = time.time()
    with pytest.raises(custom_ops.StaleLockError, match=re.escape(lock)):
        custom_ops.get_plugin('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    assert time.time() - start < 5


def test_lock_released_in_time_is_waited_for(tmp_path):
    lock = tmp_path / 'lock'
    lock.write_text('')
    remover = threading.Timer(0.3, lambda: os.remove(lock))
    remover.start()
    custom_ops.wait_for_lock(str(lock), timeout=30, poll_seconds=0.05)
    remover.join()
    assert not lock.exists()


def test_torch_baton_inside_load_is_bounded(builder, monkeypatch):
    # A lock that appears after our pre-check is caught by the FileBaton that torch uses inside load().
    monkeypatch.setenv(custom_ops.LOCK_TIMEOUT_ENV, '0.3')
    original_baton = torch.utils.cpp_extension.FileBaton

    def on_load(kwargs):
        lock = os.path.join(kwargs['build_directory'], 'lock')
        open(lock, 'w').close()
        baton = torch.utils.cpp_extension.FileBaton(lock)
        assert not baton.try_acquire()
        baton.wait()

    builder.on_load = on_load
    with pytest.raises(custom_ops.StaleLockError, match='lock'):
        custom_ops.get_plugin('fake_plugin', ['fake.cpp'], source_dir=str(builder.src))
    assert torch.utils.cpp_extension.FileBaton is original_baton  # restored afterwards


def test_lock_timeout_env_validation(monkeypatch):
    monkeypatch.setenv(custom_ops.LOCK_TIMEOUT_ENV, 'soon')
    with pytest.raises(ValueError, match=custom_ops.LOCK_TIMEOUT_ENV):
        custom_ops.lock_timeout()
    monkeypatch.setenv(custom_ops.LOCK_TIMEOUT_ENV, '12.5')
    assert custom_ops.lock_timeout() == 12.5
    monkeypatch.delenv(custom_ops.LOCK_TIMEOUT_ENV)
    assert custom_ops.lock_timeout() == custom_ops.DEFAULT_LOCK_TIMEOUT

#----------------------------------------------------------------------------

@pytest.mark.parametrize('value,expected', [('1', True), ('true', True), ('TRUE', True), ('0', False),
                                            ('false', False), ('', False), (None, False)])
def test_reference_ops_forced(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(custom_ops.REF_OPS_ENV, raising=False)
    else:
        monkeypatch.setenv(custom_ops.REF_OPS_ENV, value)
    assert custom_ops.reference_ops_forced() is expected


def test_no_pkg_resources_in_torch_utils():
    # setuptools releases from 2026 no longer ship pkg_resources; importing it would break torch_utils.
    root = os.path.dirname(os.path.abspath(custom_ops.__file__))
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                with open(os.path.join(folder, name), encoding='utf-8') as f:
                    if re.search(r'^\s*(import|from)\s+pkg_resources', f.read(), re.MULTILINE):
                        offenders.append(os.path.join(folder, name))
    assert offenders == []

#----------------------------------------------------------------------------

def test_compile_check_reports_missing_file(tmp_path):
    ok, output = custom_ops.nvcc_compile_check(['absent.cu'], source_dir=str(tmp_path))
    assert not ok and 'absent.cu' in output


@pytest.mark.nvcc
def test_nvcc_compile_check_accepts_bias_act_kernel():
    ok, output = custom_ops.nvcc_compile_check(['bias_act.cu'], headers=['bias_act.h'], source_dir=OPS_DIR)
    assert ok, output


@pytest.mark.nvcc
def test_nvcc_compile_check_reports_compiler_error(tmp_path):
    (tmp_path / 'broken.cu').write_text('__global__ void k(float* p)\n{\n    p[0] = undefined_symbol;\n}\n')
    ok, output = custom_ops.nvcc_compile_check(['broken.cu'], source_dir=str(tmp_path))
    assert not ok
    assert 'broken.cu' in output and 'undefined_symbol' in output and 'error' in output


@pytest.mark.nvcc
def test_nvcc_compile_check_needs_listed_headers(tmp_path):
    (tmp_path / 'k.h').write_text('constexpr float kScale = 2.0f;\n')
    (tmp_path / 'k.cu').write_text('#include "k.h"\n__global__ void k(float* p) { p[0] *= kScale; }\n')
    ok, output = custom_ops.nvcc_compile_check(['k.cu'], source_dir=str(tmp_path))
    assert not ok and 'k.h' in output  # header not listed -> not copied -> not found
    ok, output = custom_ops.nvcc_compile_check(['k.cu'], headers=['k.h'], source_dir=str(tmp_path))
    assert ok, output
