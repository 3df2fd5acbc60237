"""Tests for dnnlib.util: EasyDict, cache paths, open_url (local, file://, cached, offline), names, Logger, format_time."""

import collections
import hashlib
import io
import os
import pathlib
import pickle
import socket
import sys
import urllib.error
import urllib.request

import pytest

import dnnlib
from dnnlib import util

URL = 'https://example.invalid/models/some%20net-v1.pkl?download=1'


def _expected_cache_name(url):
    """Independent computation of '<md5 of url>_<safe file name>'."""
    md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    return md5 + '_some_net-v1.pkl'


class _FakeResponse(io.BytesIO):
    """Minimal stand-in for an http.client.HTTPResponse."""

    def __init__(self, data, content_length=None):
        super().__init__(data)
        self.headers = {} if content_length is None else {'Content-Length': str(content_length)}


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr(util.time, 'sleep', lambda seconds: None)


# ------------------------------------------------------------------------------------------------
# EasyDict


def test_easydict_attribute_access_and_pickle():
    d = dnnlib.EasyDict(a=1, b=dnnlib.EasyDict(c=2))
    d.x = 5
    assert d['x'] == 5 and d.a == 1 and d.b.c == 2
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing
    loaded = pickle.loads(pickle.dumps(d))
    assert type(loaded) is dnnlib.EasyDict and loaded == d and loaded.b.c == 2


# ------------------------------------------------------------------------------------------------
# Cache directory and is_url


def test_make_cache_dir_path_env_and_home(monkeypatch, tmp_path):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    assert util.make_cache_dir_path('downloads', 'x') == os.path.join(str(tmp_path / 'cache'), 'downloads', 'x')
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert util.make_cache_dir_path('gan-metrics') == os.path.join(str(tmp_path / 'home'), '.cache', 'dnnlib',
                                                                  'gan-metrics')


@pytest.mark.parametrize('obj, allow_file, expected', [
    ('https://host/x.pkl', False, True),
    ('http://host:8080/a/b', False, True),
    ('file:///tmp/x.pkl', False, False),
    ('file:///tmp/x.pkl', True, True),
    ('/tmp/x.pkl', True, False),
    ('C:\\x\\y.pkl', True, False),
    ('https://', False, False),
    (123, True, False),
])
def test_is_url(obj, allow_file, expected):
    assert util.is_url(obj, allow_file_urls=allow_file) is expected


# ------------------------------------------------------------------------------------------------
# open_url: local files and file:// URLs


def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'dir with space' / 'data.bin'
    path.parent.mkdir()
    path.write_bytes(b'\x00\x01hello')
    with util.open_url(str(path)) as f:
        assert f.read() == b'\x00\x01hello'
    with util.open_url(path) as f:  # os.PathLike
        assert f.read() == b'\x00\x01hello'
    uri = path.as_uri()
    assert uri.startswith('file://') and '%20' in uri
    with util.open_url(uri) as f:
        assert f.read() == b'\x00\x01hello'
    assert util.open_url(uri, return_filename=True) == str(path)
    assert util.open_url(str(path), return_filename=True) == str(path)


def test_open_url_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pkl'):
        util.open_url(str(tmp_path / 'nope.pkl'))
    with pytest.raises(FileNotFoundError, match='nope.pkl'):
        util.open_url((tmp_path / 'nope.pkl').as_uri())


# ------------------------------------------------------------------------------------------------
# open_url: remote URLs with cache


def test_cache_file_name_matches_md5_convention():
    assert util.url_cache_filename(URL) == _expected_cache_name(URL)


def test_cached_file_used_without_network(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise AssertionError('network must not be touched')
    monkeypatch.setattr(util, '_urlopen', fail)
    monkeypatch.setattr(urllib.request, 'urlopen', fail)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    cached = tmp_path / 'downloads' / _expected_cache_name(URL)
    cached.parent.mkdir()
    cached.write_bytes(b'placed by hand')
    with util.open_url(URL) as f:
        assert f.read() == b'placed by hand'
    assert util.open_url(URL, return_filename=True) == str(cached)
    # Explicit cache_dir as well.
    other = tmp_path / 'other'
    other.mkdir()
    (other / _expected_cache_name(URL)).write_bytes(b'other')
    with util.open_url(URL, cache_dir=str(other)) as f:
        assert f.read() == b'other'


def test_download_is_cached_atomically(monkeypatch, tmp_path):
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return _FakeResponse(b'x' * 3000, content_length=3000)
    monkeypatch.setattr(util, '_urlopen', fake_urlopen)
    path = util.open_url(URL, cache_dir=str(tmp_path), return_filename=True, verbose=False)
    assert path == str(tmp_path / _expected_cache_name(URL))
    assert pathlib.Path(path).read_bytes() == b'x' * 3000
    assert os.listdir(tmp_path) == [_expected_cache_name(URL)]  # no temporary files left behind
    with util.open_url(URL, cache_dir=str(tmp_path), verbose=False) as f:
        assert len(f.read()) == 3000
    assert calls == [URL]  # second open served from the cache


def test_no_cache_returns_memory_file(monkeypatch, tmp_path):
    monkeypatch.setattr(util, '_urlopen', lambda url, timeout: _FakeResponse(b'abc'))
    f = util.open_url(URL, cache_dir=str(tmp_path), cache=False, verbose=False)
    assert f.read() == b'abc'
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match='cache=True'):
        util.open_url(URL, cache_dir=str(tmp_path), cache=False, return_filename=True)


def test_offline_error_names_url_and_cache_path(monkeypatch, tmp_path, capsys):
    attempts = []

    def offline(*args, **kwargs):
        attempts.append(1)
        raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    with pytest.raises(util.DownloadError) as info:
        util.open_url(URL)
    assert isinstance(info.value, IOError)
    message = str(info.value)
    expected_path = os.path.join(str(tmp_path), 'downloads', _expected_cache_name(URL))
    assert URL in message and expected_path in message
    assert len(attempts) == 1  # an unresolvable host is not retried
    assert not os.path.exists(expected_path)
    assert 'Downloading' in capsys.readouterr().out


def test_transient_errors_are_retried(monkeypatch, tmp_path, no_sleep):
    attempts = []

    def flaky(url, timeout):
        attempts.append(1)
        if len(attempts) < 3:
            raise urllib.error.URLError('timed out')
        return _FakeResponse(b'ok')
    monkeypatch.setattr(util, '_urlopen', flaky)
    with util.open_url(URL, cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == b'ok'
    assert len(attempts) == 3


def test_retries_exhausted_and_short_reads(monkeypatch, tmp_path, no_sleep):
    attempts = []

    def short(url, timeout):
        attempts.append(1)
        return _FakeResponse(b'12345', content_length=10)  # truncated transfer
    monkeypatch.setattr(util, '_urlopen', short)
    with pytest.raises(util.DownloadError, match='incomplete download'):
        util.open_url(URL, cache_dir=str(tmp_path), num_attempts=4, verbose=False)
    assert len(attempts) == 4
    assert os.listdir(tmp_path) == []


def test_unsupported_scheme_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unsupported URL scheme 's3'"):
        util.open_url('s3://bucket/model.pkl', cache_dir=str(tmp_path))


def test_http_404_is_not_retried(monkeypatch, tmp_path, no_sleep):
    attempts = []

    def not_found(url, timeout):
        attempts.append(1)
        raise urllib.error.HTTPError(url, 404, 'Not Found', {}, None)
    monkeypatch.setattr(util, '_urlopen', not_found)
    with pytest.raises(util.DownloadError, match='404'):
        util.open_url(URL, cache_dir=str(tmp_path), verbose=False)
    assert len(attempts) == 1


# ------------------------------------------------------------------------------------------------
# Objects by name


def test_construct_and_call_by_name():
    od = dnnlib.util.construct_class_by_name([('a', 1)], class_name='collections.OrderedDict')
    assert type(od) is collections.OrderedDict and od['a'] == 1
    ed = dnnlib.construct_class_by_name(class_name='dnnlib.util.EasyDict', x=3)
    assert type(ed) is dnnlib.EasyDict and ed.x == 3
    assert util.call_func_by_name(3.0, 4.0, func_name='math.hypot') == 5.0
    assert util.get_obj_by_name('os.path.join') is os.path.join
    assert util.get_obj_by_name('dnnlib.util.EasyDict.__getattr__') is dnnlib.EasyDict.__getattr__
    import numpy as np
    assert util.get_obj_by_name('np.float32') is np.float32
    module, local = util.get_module_from_obj_name('dnnlib.util.EasyDict')
    assert module is util and local == 'EasyDict'
    with pytest.raises(ValueError):
        util.construct_class_by_name()


def test_name_resolution_errors(tmp_path, monkeypatch):
    with pytest.raises(util.ObjectNotFoundError, match="no module named 'no_such_pkg_xyz'"):
        util.get_obj_by_name('no_such_pkg_xyz.Thing')
    with pytest.raises(ImportError, match="cannot find 'NoSuchThing' in module 'dnnlib.util'"):
        util.construct_class_by_name(class_name='dnnlib.util.NoSuchThing')
    with pytest.raises(TypeError, match='not callable'):
        util.call_func_by_name(func_name='math.pi')
    # A broken import *inside* an existing module must surface, not be mistaken for a missing module.
    (tmp_path / 'broken_mod_for_dnnlib_test.py').write_text('import missing_dependency_abc\nX = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match='missing_dependency_abc'):
        util.get_obj_by_name('broken_mod_for_dnnlib_test.X')


# ------------------------------------------------------------------------------------------------
# Logger


def test_logger_tees_stdout_and_stderr(tmp_path, capsys):
    log_file = tmp_path / 'log.txt'
    original_out, original_err = sys.stdout, sys.stderr
    with dnnlib.util.Logger(str(log_file), file_mode='w') as logger:
        print('hello stdout')
        print('hello stderr', file=sys.stderr)
        logger.write('direct\n')
        assert sys.stdout is not original_out
    assert sys.stdout is original_out and sys.stderr is original_err
    captured = capsys.readouterr()
    assert captured.out == 'hello stdout\ndirect\n'
    assert captured.err == 'hello stderr\n'
    assert log_file.read_text() == 'hello stdout\nhello stderr\ndirect\n'
    # Append mode keeps the old content; close() twice is harmless.
    logger = util.Logger(str(log_file), file_mode='a')
    print('more')
    logger.close()
    logger.close()
    print('not logged')
    assert log_file.read_text().endswith('direct\nmore\n')


def test_logger_without_file(capsys):
    with util.Logger() as _:
        print('console only')
    assert capsys.readouterr().out == 'console only\n'


# ------------------------------------------------------------------------------------------------
# format_time


@pytest.mark.parametrize('seconds, expected', [
    (0, '0s'), (12, '12s'), (12.4, '12s'), (59.6, '1m 00s'), (185, '3m 05s'), (3599, '59m 59s'),
    (3600, '1h 00m 00s'), (2 * 3600 + 3 * 60 + 4, '2h 03m 04s'), (86400 + 2 * 3600 + 3 * 60 + 9, '1d 02h 03m'),
    (10 * 86400, '10d 00h 00m'),
])
def test_format_time(seconds, expected):
    assert util.format_time(seconds) == expected
    assert dnnlib.format_time(seconds) == expected


def test_format_time_matches_arithmetic():
    for seconds in [61, 3661, 90061, 12345, 987654]:
        text = util.format_time(seconds)
        units = {'d': 86400, 'h': 3600, 'm': 60, 's': 1}
        total = sum(int(part[:-1]) * units[part[-1]] for part in text.split())
        # Day-level format drops seconds, so compare at minute precision there.
        assert total == (seconds if seconds < 86400 else seconds - seconds % 60)
