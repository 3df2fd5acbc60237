"""FSR heads in network pickles load in any process: the embedded source imports absolutely, snapshots of older
versions (a relative import in the embedded source) load through the plugin's import hook, and legacy.py imports
the configured plugins before it unpickles."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

import legacy
from fsr_plugin import pickle_compat
from fsr_plugin.heads import OutputHead
from torch_utils import persistence
from training import hooks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSOLUTE = 'from fsr_plugin.wta import winner_take_all'
RELATIVE = 'from .wta import winner_take_all'


def _head_and_input():
    torch.manual_seed(0)
    head = OutputHead(6, 3, kernel_size=3, unit_norm_atoms=True, wta=3, gain=True)
    return head, torch.rand(2, 6, 8, 8)


def _old_version_meta(head):
    """The reduce meta of `head` as a version with the relative import would have written it."""
    fn, args = head.__reduce__()[:2]
    assert fn is persistence._reconstruct_persistent_obj
    meta = dict(args[0])
    assert ABSOLUTE in meta['module_src']
    # A distinct source string, so that the loader cannot reuse the live module and has to execute it.
    meta['module_src'] = meta['module_src'].replace(ABSOLUTE, RELATIVE) + '\n# older version\n'
    return meta


def test_old_snapshot_source_loads_through_the_import_hook(monkeypatch):
    head, s = _head_and_input()
    rebuilt = persistence._reconstruct_persistent_obj(_old_version_meta(head))
    assert type(rebuilt).__bases__[0].__module__.startswith('_imported_module_')  # built from the old source
    torch.testing.assert_close(rebuilt(s), head(s))
    # Without the hook the same source fails, which is what the hook is for.
    monkeypatch.setattr(persistence, '_import_hooks', [h for h in persistence._import_hooks
                                                       if h is not pickle_compat.absolute_plugin_imports])
    meta = _old_version_meta(head)
    meta['module_src'] += '# not cached\n'
    with pytest.raises(persistence.PersistenceError, match='relative import'):
        persistence._reconstruct_persistent_obj(meta)


def test_import_hook_leaves_other_sources_alone():
    meta = {'module_src': 'import torch\nfrom . import x\n', 'class_name': 'A'}
    assert pickle_compat.absolute_plugin_imports(dict(meta)) == meta


def test_new_pickle_loads_in_a_fresh_process_without_the_plugin(tmp_path):
    head, s = _head_and_input()
    path = tmp_path / 'head.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(head=head, s=s, out=head(s).detach()), f)
    code = ('import pickle, sys, torch\n'
            'from torch_utils import persistence\n'
            f'd = pickle.load(open({str(path)!r}, "rb"))\n'
            'torch.testing.assert_close(d["head"](d["s"]), d["out"])\n'
            'print(type(d["head"]).__bases__[0].__module__)\n')
    res = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, GAN_PLUGINS=''))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().startswith('_imported_module_')  # rebuilt from the embedded source, not the file


def test_register_configured_plugins_reads_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / 'plugins.txt'
    path.write_text('# comment\nplugin_a   # first\n\nplugin_b\n')
    monkeypatch.setenv('GAN_PLUGINS', 'plugin_c, ,plugin_d')
    monkeypatch.setattr(hooks, '_PLUGIN_PACKAGES', [])
    assert hooks.register_configured_plugins(str(path)) == ['plugin_a', 'plugin_b', 'plugin_c', 'plugin_d']
    assert hooks._PLUGIN_PACKAGES == ['plugin_a', 'plugin_b', 'plugin_c', 'plugin_d']
    assert hooks.register_configured_plugins(str(tmp_path / 'missing.txt')) == ['plugin_c', 'plugin_d']
    assert hooks._PLUGIN_PACKAGES == ['plugin_a', 'plugin_b', 'plugin_c', 'plugin_d']  # no duplicates


def test_legacy_loader_imports_the_configured_plugins(monkeypatch):
    seen = []
    monkeypatch.setattr(hooks, 'plugin_packages', lambda: seen.append('imported') or [])
    with pytest.raises(legacy.NetworkFileError):
        legacy.load_network_pkl(__import__('io').BytesIO(b'not a pickle'))
    assert seen == ['imported']
