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
from test_training import TINY, RecordingD, loop_kwargs, params_equal, run_train  # noqa: E402

import fsr_plugin  # noqa: E402
from fsr_plugin.options import FSRConfig  # noqa: E402
from fsr_plugin.plugin import FSRPlugin, make_plugin, make_schedule  # noqa: E402
from training import hooks as hooks_lib  # noqa: E402
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


def test_train_cli_atom_recon(tmp_path):
    """--fsr-atom-recon: recorded, the term and its statistics logged every tick; refused with a residual top head."""
    res = run_train(['--outdir', str(tmp_path)] + TINY + ['--kimg=1', '--snap=1', '--fsr=1', '--fsr-head-kernel=3',
                                                          '--fsr-unit-atoms=1', '--fsr-atom-recon=2',
                                                          '--fsr-atom-recon-images=4', '--fsr-atom-recon-lam=0.05',
                                                          '--fsr-atom-recon-iters=10', '--fsr-atom-recon-used=0.05'],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = glob.glob(str(tmp_path / '00000-*'))
    opts = json.load(open(os.path.join(run_dir, 'training_options.json')))['plugin_options']
    assert (opts['fsr_atom_recon'], opts['fsr_atom_recon_images'], opts['fsr_atom_recon_lam'],
            opts['fsr_atom_recon_iters'], opts['fsr_atom_recon_used']) == (2, 4, 0.05, 10, 0.05)
    stats = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]
    assert len(stats) > 10 and all('Loss/fsr/atom_recon' in s for s in stats)
    for s in stats:
        mse, density = s['FSR/atom_recon_mse']['mean'], s['FSR/atom_recon_density']['mean']
        explained = s['FSR/atom_recon_explained']['mean']
        assert mse > 0 and 0 < density < 1 and 0 < explained < 1
        # Channels with >= 5% of the painted top level: at least one, at most 20 of the head's 32.
        assert 1 <= s['FSR/atom_recon_atoms']['mean'] <= 20
        # The logged term is the weight times half the squared residual per image (16 x 16 x 3 pixels).
        assert s['Loss/fsr/atom_recon']['mean'] == pytest.approx(2 * 0.5 * mse * 768, rel=1e-3)
    res = run_train(['--outdir', str(tmp_path / 'res'), '-n'] + TINY + ['--fsr=1', '--fsr-head-init=identity',
                                                                        '--fsr-atom-recon=1'], tmp_path)
    assert res.returncode != 0 and '--fsr-head-init=identity makes the top head a residual' in res.stderr


def test_train_cli_top_amp(tmp_path):
    """--fsr-top-amp: recorded, the term and the two samples' quantiles logged; refused without the codes of
    --fsr-atom-recon."""
    res = run_train(['--outdir', str(tmp_path)] + TINY + ['--kimg=1', '--snap=1', '--fsr=1', '--fsr-head-kernel=3',
                                                          '--fsr-unit-atoms=1', '--fsr-relu=1', '--fsr-top-wta=3',
                                                          '--fsr-top-wta-jitter=1', '--fsr-atom-recon=1',
                                                          '--fsr-atom-recon-images=4', '--fsr-atom-recon-iters=10',
                                                          '--fsr-top-amp=3', '--fsr-top-amp-min=0.05',
                                                          '--fsr-top-amp-refit=5'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = glob.glob(str(tmp_path / '00000-*'))
    opts = json.load(open(os.path.join(run_dir, 'training_options.json')))['plugin_options']
    assert (opts['fsr_top_amp'], opts['fsr_top_amp_min'], opts['fsr_top_amp_refit']) == (3, 0.05, 5)
    stats = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]
    assert len(stats) > 5
    for s in stats:
        assert s['Loss/fsr/top_amp']['mean'] == pytest.approx(3 * s['FSR/top_amp']['mean'], rel=1e-4)
        assert s['FSR/top_amp']['mean'] > 0
        assert 0.05 < s['FSR/top_amp_real_p10']['mean'] <= s['FSR/top_amp_real_p50']['mean']
        assert 0 < s['FSR/top_amp_fake_p10']['mean'] <= s['FSR/top_amp_fake_p50']['mean']
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-top-wta=3',
                                                                        '--fsr-top-amp=1'], tmp_path)
    assert res.returncode != 0 and '--fsr-top-amp matches the top level' in res.stderr


def test_train_cli_fsr_run(tmp_path):
    res = run_train(['--outdir', str(tmp_path)] + TINY + ['--kimg=1', '--snap=1', '--fsr=1', '--fsr-relu=1',
                                                          '--fsr-sparsity-weight=0.01', '--fsr-top-wta=3',
                                                          '--fsr-head-gain=1', '--fsr-top-wta-jitter=0.5',
                                                          '--fsr-top-wta-st=0.1', '--fsr-head-kernel=3',
                                                          '--fsr-atom-centre=1', '--fsr-top-wta-min=0.05'], tmp_path)
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
    assert [heads.head(r).wta_straight_through for r in heads.resolutions] == [0, 0, 0.1]
    assert [heads.head(r).wta_min for r in heads.resolutions] == [0, 0, 0.05]
    assert opts['plugin_options']['fsr_top_wta_st'] == 0.1 and opts['plugin_options']['fsr_atom_centre'] == 1
    stats = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]
    centre = [s['FSR/atom_centre']['mean'] for s in stats if 'FSR/atom_centre' in s]
    assert centre and all(v >= 0 for v in centre) and 'Loss/fsr/atom_centre' in stats[-1]
    assert all(heads.head(r).log_gain is not None for r in heads.resolutions)
    assert not torch.equal(snap['extra_modules']['fsr.heads'].h4.log_gain, torch.zeros([]))  # trained
    res = run_train(['--outdir', str(tmp_path / 'even'), '-n'] + TINY + ['--fsr=1', '--fsr-top-wta=2'], tmp_path)
    assert res.returncode != 0 and '--fsr-top-wta must be 0 (off) or odd' in res.stderr
    res = run_train(['--outdir', str(tmp_path / 'min'), '-n'] + TINY + ['--fsr=1', '--fsr-top-wta-min=0.5'], tmp_path)
    assert res.returncode != 0 and '--fsr-top-wta-min needs --fsr-top-wta >= 1' in res.stderr
    res = run_train(['--outdir', str(tmp_path / 'jitter'), '-n'] + TINY + ['--fsr=1', '--fsr-top-wta-jitter=0.5'],
                    tmp_path)
    assert res.returncode != 0 and '--fsr-top-wta-jitter needs --fsr-top-wta >= 3' in res.stderr
    res = run_train(['--outdir', str(tmp_path / 'st'), '-n'] + TINY + ['--fsr=1', '--fsr-top-wta-st=0.1'], tmp_path)
    assert res.returncode != 0 and '--fsr-top-wta-st needs --fsr-top-wta >= 1' in res.stderr
    res = run_train(['--outdir', str(tmp_path / 'centre'), '-n'] + TINY + ['--fsr=1', '--fsr-atom-centre=1'],
                    tmp_path)
    assert res.returncode != 0 and '--fsr-atom-centre needs atoms with a window' in res.stderr


def test_fsr_flags_are_registered_through_the_plugin_list():
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'train.py'),
                          '--help'], capture_output=True, text=True)
    assert '--fsr-sparsity-weight' in out.stdout and '--fsr-policy' in out.stdout
    assert hasattr(fsr_plugin, 'cli_options') and hasattr(fsr_plugin, 'make_plugin')


# ----------------------------------------------------------------------------------------------------------------------
# --fsr-main-d=head: the main discriminator judges the top head's image.

def _head_mode_setup(**cfg_kw):
    from training import loss as loss_lib
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=64, channel_max=8, use_noise=False))
    D = RecordingD()
    cfg = FSRConfig.from_options(fsr_options(fsr_main_d='head', fsr_head_kernel=3, **cfg_kw))
    plugin = FSRPlugin(cfg, r1_gamma=1.0)
    plugin.extra_modules(G, D, None, 'cpu')
    loss = loss_lib.StyleGAN2Loss('cpu', G, D, r1_gamma=1.0, hooks=hooks_lib.HookManager([plugin]),
                                  div_weight=1 if cfg.head_init == 'identity' else 0, div_batch=2)
    return G, D, plugin, loss


def test_main_d_head_judges_the_top_head_image_and_trains_g_through_the_heads():
    G, D, plugin, loss = _head_mode_setup()
    assert plugin.replaces_generator_image()
    z, c = torch.randn([4, 8]), torch.zeros([4, 0])
    loss.accumulate_gradients('Gmain', torch.rand([4, 3, 16, 16]) * 2 - 1, c, z, c, gain=1, cur_nimg=0)
    ws = G.mapping(z, c)
    _, feats = G.synthesis(ws, return_features=True)
    expected = plugin.heads({r: f.float() for r, f in feats.items()})[16]
    torch.testing.assert_close(D.seen[-1], expected.detach())
    # G learns through its heads: the head of the top level, the hidden layers, not the unused ToRGB.
    assert plugin.heads.h16.weight.grad is not None and G.synthesis.b16.conv1.weight.grad is not None
    assert G.synthesis.b16.torgb.weight.grad is None
    # The D phase judges it too and the pair terms see the same pass (no error, finite loss).
    loss.accumulate_gradients('Dmain', torch.rand([4, 3, 16, 16]) * 2 - 1, c, z, c, gain=1, cur_nimg=0)
    assert D.seen[-2].shape == (4, 3, 16, 16) and torch.isfinite(D.scale.grad)
    # While growing, the image fades in from the head below, as the host fades its own images.
    from torch_utils.ops import upfirdn2d
    pyr = plugin.heads({r: f.float() for r, f in feats.items() if r <= 8})
    faded = plugin.generator_image(torch.zeros([4, 3, 8, 8]), {r: f for r, f in feats.items() if r <= 8}, 0.25)
    low = upfirdn2d.upsample2d(pyr[4], G.synthesis.b4.resample_filter)
    torch.testing.assert_close(faded, 0.75 * low + 0.25 * pyr[8])


def test_main_d_head_with_residual_top_head_starts_at_the_generator_image():
    # identity init: X_16 = G's image + conv (conv starts at 0), so D first sees G's own image. The G phase with the
    # host's diversity term runs a second pass before the loss terms; the kept pyramid of the first pass serves them
    # (recomputing it from the replaced image would add the image twice).
    G, D, plugin, loss = _head_mode_setup(fsr_head_init='identity')
    plugin._finish_head_init(G)
    z, c = torch.randn([4, 8]), torch.zeros([4, 0])
    img, ws, _ = loss.run_G(z, c)
    torch.testing.assert_close(img, G.synthesis(ws))
    loss.accumulate_gradients('Gmain', torch.rand([4, 3, 16, 16]) * 2 - 1, c, z, c, gain=1, cur_nimg=0)
    assert plugin._fake_cache == [] or all(f is not None for f, _ in plugin._fake_cache)
    with pytest.raises(RuntimeError, match='no head pyramid was kept'):
        plugin._fake_pyramid({}, dict(gen_features={}, gen_img=img))


def test_main_d_head_training_run_and_cli(tmp_path, one_thread):
    class Recording(FSRPlugin):
        def extra_modules(self, G, D, training_set, device):
            self.G_init = {n: p.detach().clone() for n, p in G.named_parameters()}
            return super().extra_modules(G, D, training_set, device)

    cfg = FSRConfig.from_options(fsr_options(fsr_main_d='head'))
    plugin = Recording(cfg, r1_gamma=1.0)
    out = training_loop.training_loop(**loop_kwargs(tmp_path, 0.064, plugins=[plugin]))
    trained = dict(out['G'].named_parameters())
    # The ToRGB layers were never stepped (they feed nothing D or the FSR terms see); every hidden layer was.
    torgb = [n for n in trained if '.torgb.' in n]
    assert torgb and all(torch.equal(trained[n], plugin.G_init[n]) for n in torgb)
    assert not torch.equal(trained['synthesis.b16.conv1.weight'], plugin.G_init['synthesis.b16.conv1.weight'])
    # The snapshot names the EMA heads as its image source; generate.py writes their top level by default.
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    assert snap['image_source'] == 'fsr.heads'
    import numpy as np
    import PIL.Image
    from click.testing import CliRunner
    import generate
    for extra, name in (([], 'heads'), (['--g-image'], 'own')):
        res = CliRunner().invoke(generate.main, ['--network', str(tmp_path / 'network-snapshot-000000.pkl'),
                                                 '--seeds', '3', '--outdir', str(tmp_path / name)] + extra)
        assert res.exit_code == 0, res.output
    G, heads = snap['G_ema'], snap['extra_modules_ema']['fsr.heads']
    z = torch.from_numpy(np.random.RandomState(3).randn(1, G.z_dim))
    with torch.no_grad():
        img, feats = G.synthesis(G.mapping(z, torch.zeros([1, 0])), return_features=True, noise_mode='const')
        expected = {'heads': heads({16: feats[16].float()})[16], 'own': img}
    for name, x in expected.items():
        want = (x[0].permute(1, 2, 0) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
        got = np.asarray(PIL.Image.open(tmp_path / name / 'seed0003.png'))
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name
    assert not np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'heads' / 'seed0003.png')),
                              np.asarray(PIL.Image.open(tmp_path / 'own' / 'seed0003.png')))
    from training import image_source
    with pytest.raises(image_source.ImageSourceError, match="names image_source 'fsr.nothing'"):
        image_source.find_image_source(dict(snap, image_source='fsr.nothing'))
    # The host metrics score the same image: the snapshot's generator for metrics is the heads' top level.
    G_metric, name = image_source.network_generator(snap)
    with torch.no_grad():
        got = G_metric(z, torch.zeros([1, 0]), noise_mode='const')
    assert name == 'fsr.heads'
    torch.testing.assert_close(got, expected['heads'], rtol=0, atol=1e-6)
    assert 'the top level of fsr.heads' in CliRunner().invoke(generate.main, [
        '--network', str(tmp_path / 'network-snapshot-000000.pkl'), '--seeds', '3', '--outdir',
        str(tmp_path / 'again')]).output
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + ['--fsr=1', '--fsr-main-d=head'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'the main discriminator judges the top head' in res.stdout
    assert '"fsr_main_d": "head"' in res.stdout
