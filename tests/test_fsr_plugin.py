"""The FSR plugin wired into the host: --fsr off is bit-identical, FSR terms train heads and pair discriminators,
the layer-wise schedule freezes lower blocks, plugin state survives a snapshot, train.py --fsr end to end."""
import glob
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, params_equal, run_train  # noqa: E402

import fsr_plugin  # noqa: E402
from fsr_plugin.options import FSRConfig  # noqa: E402
from fsr_plugin.plugin import FSRPlugin, make_plugin, make_schedule  # noqa: E402
from training import training_loop  # noqa: E402


def fsr_options(**kw):
    opts = dict(fsr=True, fsr_sparsity='l1', fsr_sparsity_weight='0.01', fsr_pair=True)
    opts.update(kw)
    return opts


def test_fsr_off_gives_no_plugin_and_identical_training(tmp_path, one_thread):
    assert make_plugin({'fsr': False}) is None
    os.makedirs(tmp_path / 'a')
    os.makedirs(tmp_path / 'b')
    a = training_loop.training_loop(**loop_kwargs(tmp_path / 'a', 0.032, network_snapshot_ticks=None))
    plugins = [p for p in [make_plugin({'fsr': False})] if p is not None]
    b = training_loop.training_loop(**loop_kwargs(tmp_path / 'b', 0.032, network_snapshot_ticks=None,
                                                  plugins=plugins))
    assert params_equal(a['G'], b['G']) and params_equal(a['D'], b['D'])


def test_fsr_training_trains_heads_and_pairs_and_snapshots_them(tmp_path, one_thread):
    plugin = make_plugin(fsr_options(), dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert isinstance(plugin, FSRPlugin) and plugin.pair_r1 == 1.0
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.064, plugins=[plugin]))
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    heads, pairs = snap['extra_modules']['fsr.heads'], snap['extra_modules']['fsr.pairs']
    assert heads.resolutions == [4, 8, 16] and pairs.levels == [8, 16]
    assert not torch.equal(heads.h16.weight, snap['extra_modules_ema']['fsr.heads'].h16.weight)
    stats = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()][-1]
    for key in ('Loss/fsr/sparsity', 'Loss/fsr/pair_G', 'Loss/fsr/pair_Dfake', 'Loss/fsr/pair_Dreal',
                'Loss/fsr/pair_r1', 'FSR/density_r8'):
        assert key in stats, key
    # The per-resolution outputs of the trained heads have the right shapes.
    G = snap['G_ema']
    plugin.heads_ema = snap['extra_modules_ema']['fsr.heads']
    with torch.no_grad():
        pyr = plugin.pyramid_fn(G, torch.randn([2, G.z_dim]), torch.zeros([2, 0]), noise_mode='const')
    assert {r: tuple(x.shape) for r, x in pyr.items()} == {4: (2, 3, 4, 4), 8: (2, 3, 8, 8), 16: (2, 3, 16, 16)}
    # generate.py --pyramid writes every level side by side.
    from click.testing import CliRunner
    import generate
    import PIL.Image
    out = tmp_path / 'pyr'
    res = CliRunner().invoke(generate.main, ['--network', str(tmp_path / 'network-snapshot-000000.pkl'),
                                             '--seeds', '0-1', '--pyramid', '--outdir', str(out)])
    assert res.exit_code == 0, res.output
    assert PIL.Image.open(out / 'pyramid0001.png').size == (3 * 16, 16)


def test_layerwise_schedule_freezes_lower_blocks(tmp_path, one_thread):
    cfg = FSRConfig.from_options(fsr_options(fsr_schedule='layerwise', fsr_start_res='8', fsr_stage_kimg='0.032',
                                             fsr_policy='frozen'))
    cfg.start_res = 8
    schedule = make_schedule(cfg, 16)
    assert schedule.growing_kwargs()['resolutions'] == [8, 16]
    plugin = FSRPlugin(cfg, r1_gamma=1.0, schedule=schedule)
    kw = loop_kwargs(tmp_path, 0.096, plugins=[plugin], growing_kwargs=schedule.growing_kwargs())
    kw['D_kwargs'] = dict(kw['D_kwargs'], architecture='skip')
    training_loop.training_loop(**kw)
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    lrs = {g['block']: g['lr'] for g in snap['resume_state']['opt_states']['G']['param_groups']}
    # Final stage (16x16) with policy 'frozen': blocks 4 and 8, their heads and the mapping are frozen.
    assert lrs['synthesis.b4'] == 0 and lrs['synthesis.b8'] == 0 and lrs['mapping'] == 0
    assert lrs['fsr.heads/h8'] == 0 and lrs['synthesis.b16'] > 0 and lrs['fsr.heads/h16'] > 0


def test_train_cli_fsr_run(tmp_path):
    res = run_train(['--outdir', str(tmp_path)] + TINY + ['--kimg=1', '--snap=1', '--fsr=1', '--fsr-relu=1',
                                                          '--fsr-sparsity-weight=0.01', '--fsr-top-wta=3',
                                                          '--fsr-head-gain=1', '--fsr-top-wta-jitter=0.5'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = glob.glob(str(tmp_path / '00000-*'))
    assert run_dir.endswith('-fsr')
    opts = json.load(open(os.path.join(run_dir, 'training_options.json')))
    assert opts['plugin_options']['fsr'] is True
    assert opts['G_kwargs']['synthesis_kwargs']['activation'] == 'relu'
    with open(os.path.join(run_dir, 'network-snapshot-000001.pkl'), 'rb') as f:
        snap = pickle.load(f)
    assert set(snap['extra_modules']) == {'fsr.heads', 'fsr.pairs'}
    assert snap['resume_state']['plugin_state'] == {'fsr': {}}
    heads = snap['extra_modules_ema']['fsr.heads']
    assert [heads.head(r).wta for r in heads.resolutions] == [0, 0, 3]  # 4, 8 and the top head 16
    assert [heads.head(r).wta_jitter for r in heads.resolutions] == [0, 0, 0.5]
    assert all(heads.head(r).log_gain is not None for r in heads.resolutions)
    assert not torch.equal(snap['extra_modules']['fsr.heads'].h4.log_gain, torch.zeros([]))  # trained
    res = run_train(['--outdir', str(tmp_path / 'even'), '-n'] + TINY + ['--fsr=1', '--fsr-top-wta=2'], tmp_path)
    assert res.returncode != 0 and '--fsr-top-wta must be 0 (off) or odd' in res.stderr
    res = run_train(['--outdir', str(tmp_path / 'jitter'), '-n'] + TINY + ['--fsr=1', '--fsr-top-wta-jitter=0.5'],
                    tmp_path)
    assert res.returncode != 0 and '--fsr-top-wta-jitter needs --fsr-top-wta >= 3' in res.stderr


def test_fsr_flags_are_registered_through_the_plugin_list():
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'train.py'),
                          '--help'], capture_output=True, text=True)
    assert '--fsr-sparsity-weight' in out.stdout and '--fsr-policy' in out.stdout
    assert hasattr(fsr_plugin, 'cli_options') and hasattr(fsr_plugin, 'make_plugin')
