"""Fine-tuning a pretrained pickle with FSR heads: train.py --resume=<pickle> --resume-as-new --fsr=1 on a pickle
whose embedded source differs from ours (as NVIDIA's does). Heads start from the pretrained weights (identity: the
top head reproduces the pretrained image exactly; torgb: the pretrained ToRGB colour map), a layer-wise schedule
starts at 8x8 on a 16x16 net with a pretrained 'resnet' D, lower blocks stay frozen, snapshots carry the heads, and
--resume=<run dir> continues."""
import copy
import glob
import json
import os
import pickle
import shutil
import sys

import numpy as np
import PIL.Image
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, run_train  # noqa: E402

import click  # noqa: E402
import dnnlib  # noqa: E402
import fsr_plugin  # noqa: E402
import legacy  # noqa: E402
from fsr_plugin.plugin import UPSAMPLING_DISCRIMINATOR, update_training_options  # noqa: E402
from fsr_plugin.upsampling_disc import UpsamplingDiscriminator, upsample_to  # noqa: E402
from torch_utils import misc  # noqa: E402
from torch_utils import persistence  # noqa: E402
from torch_utils.ops import upfirdn2d  # noqa: E402
from training import hooks as hooks_lib  # noqa: E402
from training import networks  # noqa: E402
from training import training_loop  # noqa: E402

Z_DIM = 32
ARCH = dict(channel_base=256, channel_max=16)
FINETUNE_ARGS = [a for a in TINY if not a.startswith('--tick')] + [
    '--tick=1', '--batch=32', '--aug=noaug', '--kimg=1', '--snap=1',
    '--fsr=1', '--fsr-head-init=identity', '--fsr-head-style=w_avg', '--fsr-schedule=layerwise', '--fsr-start-res=8',
    '--fsr-stage-kimg=0.5', '--fsr-policy=frozen']
FROZEN_AT_STAGE_2 = ('mapping.', 'synthesis.b4.', 'synthesis.b8.')


# ----------------------------------------------------------------------------------------------------------------------
# A pretrained-looking network pickle that carries foreign source code (as NVIDIA's pickles do).

def _pretrained_networks(seed=123):
    """G, D (resnet, as NVIDIA's), G_ema at 16x16 with every tensor moved away from its construction value (so a copy
    from the pickle is told apart from a fresh initialisation) and a non-zero mean w."""
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=Z_DIM, c_dim=0, w_dim=Z_DIM, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(ARCH))
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, epilogue_kwargs=dict(mbstd_group_size=4),
                               **ARCH)
    with torch.no_grad():
        for p in list(G.parameters()) + list(D.parameters()):
            p.add_(0.2 * torch.randn_like(p))
        G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
        G_ema = copy.deepcopy(G)
        for p in G_ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs=None)


@pytest.fixture(scope='module')
def foreign_pkl(tmp_path_factory):
    """Path of the pickle, written from modules whose class source is '# foreign copy' + ours."""
    folder = tmp_path_factory.mktemp('pretrained')
    ours = str(folder / 'ours.pkl')
    legacy.save_network_pkl(_pretrained_networks(), ours)

    def hook(meta):
        if '# foreign copy' not in meta.module_src:
            meta.module_src = '# foreign copy\n' + meta.module_src
        return meta
    persistence.import_hook(hook)
    try:
        foreign = legacy.load_network(ours)
    finally:
        persistence._import_hooks.remove(hook)
    path = str(folder / 'nvidia_like.pkl')
    legacy.save_network_pkl(foreign, path)
    return path


@pytest.fixture(scope='module')
def pretrained(foreign_pkl):
    data = legacy.load_network(foreign_pkl)
    return data


@pytest.fixture(scope='module')
def finetune_run(foreign_pkl, tmp_path_factory):
    """One train.py fine-tuning run: (run_dir, stdout)."""
    outdir = tmp_path_factory.mktemp('finetune')
    res = run_train(['--outdir', str(outdir), '--resume', foreign_pkl, '--resume-as-new'] + FINETUNE_ARGS, outdir)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = glob.glob(str(outdir / '00000-*'))
    return run_dir, res.stdout


def _load(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def _tensors(module, prefix=''):
    return {prefix + n: t.detach().clone() for n, t in misc.named_params_and_buffers(module)}


def _params(module, prefix=''):
    """Trainable tensors only (buffers such as mapping.w_avg track statistics even in frozen blocks)."""
    return {prefix + n: t.detach().clone() for n, t in module.named_parameters()}


# ----------------------------------------------------------------------------------------------------------------------
# In-process training from the run's own training_options.json (what train.py's worker does), with a probe plugin.

class StartProbe(hooks_lib.TrainingPlugin):
    """Records G and the FSR heads at the last hook before the first step, and G/heads when stage 2 starts."""
    name = 'probe'

    def __init__(self, fsr):
        self.fsr = fsr
        self.start = None
        self.stage2 = None

    def on_stage(self, stage, G, D, modules):
        if stage.index == 1:
            self.stage2 = dict(_params(G), **_params(self.fsr.heads, 'heads.'))

    def param_lr_multipliers(self, side, module, modules, stage):
        if side == 'G' and self.start is None:
            self.start = dict(G=copy.deepcopy(module), heads=copy.deepcopy(self.fsr.heads),
                              heads_ema=copy.deepcopy(self.fsr.heads_ema), D=type(self.fsr.D).__name__)
        return {}


def _loop_from_run(run_dir, out_dir, plugin_options=(), **overrides):
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        c = dnnlib.EasyDict(json.load(f))
    options = dict(c.plugin_options, **dict(plugin_options))
    fsr = fsr_plugin.make_plugin(options, c)
    probe = StartProbe(fsr)
    kw = {k: v for k, v in c.items() if k not in ('desc', 'precision', 'run_dir', 'plugin_options', 'device')}
    kw.update(dict(network_snapshot_ticks=None, image_snapshot_ticks=None, total_kimg=0.032), **overrides)
    os.makedirs(out_dir, exist_ok=True)
    result = training_loop.training_loop(run_dir=str(out_dir), device='cpu', plugins=[fsr, probe], **kw)
    return probe, result


def _features(G, ws):
    with torch.no_grad():
        return G.synthesis(ws, return_features=True, noise_mode='const', force_fp32=True)


def _torgb_map(G, r, style):
    """Independent form of head r under 'torgb': X = sum_c W[o, c] * gain * s_c * S[c] + b[o]."""
    t = getattr(G.synthesis, f'b{r}').torgb
    s = t.affine(G.mapping.w_avg[None])[0] if style == 'w_avg' else torch.ones([t.in_channels])
    w = t.weight[:, :, 0, 0] * t.weight_gain * s[None, :]
    return lambda feats: torch.einsum('oc,nchw->nohw', w, feats.float()) + t.bias[None, :, None, None]


# ----------------------------------------------------------------------------------------------------------------------

def test_pickle_carries_foreign_source(foreign_pkl, pretrained):
    assert b'# foreign copy' in open(foreign_pkl, 'rb').read()
    for key in ('G', 'D', 'G_ema'):
        assert type(pretrained[key]).__mro__[1].__module__.startswith('_imported_module_'), key


def test_cli_reports_loaded_tensors_and_stages(finetune_run, pretrained):
    run_dir, out = finetune_run
    assert 'Fine-tuning: architecture options taken from' in out
    for key in ('G', 'D', 'G_ema'):
        n = len(list(misc.named_params_and_buffers(pretrained[key])))
        assert f'  {key}: copied {n} tensors' in out, key
    assert "the 'resnet' discriminator of" in out
    assert 'FSR: output heads initialised from the generator: ToRGB (w_avg style) at [4, 8]; head 16 residual' in out
    assert out.index('Stage 1/2: 8x8') < out.index('Stage 2/2: 16x16')
    assert 'res 8' in out and 'res 16' in out
    opts = json.load(open(os.path.join(run_dir, 'training_options.json')))
    assert 'resumecustom' in run_dir and run_dir.endswith('-fsr')
    assert opts['growing_kwargs']['resolutions'] == [8, 16]
    assert opts['D_kwargs']['class_name'] == UPSAMPLING_DISCRIMINATOR
    assert opts['G_kwargs']['z_dim'] == Z_DIM  # the architecture came from the pickle, not from --cfg


def test_fakes_init_comes_from_the_pretrained_generator(finetune_run, pretrained, tmp_path):
    run_dir, _ = finetune_run
    opts = json.load(open(os.path.join(run_dir, 'training_options.json')))
    training_set = dnnlib.util.construct_class_by_name(**opts['training_set_kwargs'])
    grid_size, _, labels = training_loop.setup_snapshot_image_grid(training_set, 0, tuple(opts['max_grid_cells']))

    def grid(G):
        z = torch.randn([labels.shape[0], G.z_dim], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ws = G.mapping(z, torch.from_numpy(labels))
            img = G.synthesis(ws, noise_mode='const', force_fp32=True, max_res=8)  # stage 1 is 8x8
        training_loop.save_image_grid(img.numpy(), str(tmp_path / 'x.png'), drange=[-1, 1], grid_size=grid_size)
        return np.asarray(PIL.Image.open(tmp_path / 'x.png'), dtype=np.int32)

    written = np.asarray(PIL.Image.open(os.path.join(run_dir, 'fakes_init.png')), dtype=np.int32)
    assert written.shape == (grid_size[1] * 8, grid_size[0] * 8, 3)
    assert np.abs(written - grid(pretrained['G_ema'])).max() <= 1  # float rounding at a .5 boundary at most
    assert np.abs(written - grid(pretrained['G'])).mean() > 0.2  # G_ema, not G
    fresh = legacy.rebuild_module(pretrained['G_ema'])
    with torch.no_grad():
        torch.manual_seed(0)
        for p in fresh.parameters():
            p.copy_(torch.randn_like(p))
    assert np.abs(written - grid(fresh)).mean() > 5


@pytest.mark.parametrize('init,style', [('identity', 'w_avg'), ('torgb', 'unit')])
def test_heads_at_step_0_come_from_the_pretrained_generator(finetune_run, pretrained, tmp_path, one_thread, init,
                                                            style):
    run_dir, _ = finetune_run
    probe, _ = _loop_from_run(run_dir, tmp_path, plugin_options=dict(fsr_head_init=init, fsr_head_style=style))
    start = probe.start
    assert start['D'] == 'UpsamplingDiscriminator'
    G0 = pretrained['G']
    z = torch.randn([4, Z_DIM], generator=torch.Generator().manual_seed(7))
    c = torch.zeros([4, 0])
    with torch.no_grad():
        ws = G0.mapping(z, c)
    img0, feats0 = _features(G0, ws)
    img, feats = _features(start['G'], ws)
    torch.testing.assert_close(img, img0, rtol=0, atol=0)  # the loop's G is the pretrained G
    for heads in (start['heads'], start['heads_ema']):
        with torch.no_grad():
            pyr = heads(feats, img=img)
        assert sorted(pyr) == [4, 8, 16]
        if init == 'identity':
            # Starting images unchanged: the top head's output is the pretrained generator's image.
            torch.testing.assert_close(pyr[16], img0, rtol=0, atol=1e-6)
            lower = [4, 8]
        else:
            assert (pyr[16] - img0).abs().max() > 0.1  # torgb promises the colour map, not the image
            lower = [4, 8, 16]
        for r in lower:
            with torch.no_grad():
                expected = _torgb_map(G0, r, style)(feats0[r])
            torch.testing.assert_close(pyr[r], expected, rtol=1e-5, atol=1e-5)
    if style == 'w_avg':
        # At w = w_avg a 'w_avg' head equals the block's ToRGB output; at 4x4 that is the pretrained image itself.
        with torch.no_grad():
            ws0 = G0.mapping(z, c, truncation_psi=0)
            img4 = G0.synthesis(ws0, noise_mode='const', force_fp32=True, max_res=4)
            _, f0 = _features(start['G'], ws0)
            torch.testing.assert_close(start['heads']({4: f0[4]})[4], img4, rtol=1e-5, atol=1e-5)


def test_schedule_starts_at_8_and_frozen_policy_keeps_lower_blocks(finetune_run, pretrained, tmp_path, one_thread):
    run_dir, _ = finetune_run
    growing = dict(resolutions=[8, 16], stage_kimg=[0.064], fade_kimg=0.0)
    probe, result = _loop_from_run(run_dir, tmp_path, plugin_options=dict(fsr_stage_kimg='0.064'),
                                   growing_kwargs=growing, total_kimg=0.16)
    assert result['cur_nimg'] == 160 and probe.stage2 is not None
    pre = _params(pretrained['G'])
    at_stage2 = probe.stage2
    # Stage 1 (8x8) trained blocks 4 and 8 and left block 16 and its head untouched.
    assert not torch.equal(at_stage2['synthesis.b8.conv1.weight'], pre['synthesis.b8.conv1.weight'])
    assert all(torch.equal(at_stage2[n], pre[n]) for n in pre if n.startswith('synthesis.b16.'))
    assert torch.equal(at_stage2['heads.h16.weight'], torch.zeros_like(at_stage2['heads.h16.weight']))
    # Stage 2 (16x16), policy 'frozen': mapping, blocks 4 and 8 and their heads are bit-identical afterwards.
    end = dict(_params(result['G']), **_params(probe.fsr.heads, 'heads.'))
    frozen = [n for n in end if n.startswith(FROZEN_AT_STAGE_2) or n.startswith(('heads.h4.', 'heads.h8.'))]
    assert len(frozen) > 10
    for n in frozen:
        assert torch.equal(end[n], at_stage2[n]), n
    for n in ('synthesis.b16.conv1.weight', 'synthesis.b16.torgb.weight', 'heads.h16.weight'):
        assert not torch.equal(end[n], at_stage2[n]), n


def test_snapshot_holds_heads_and_the_pretrained_discriminator(finetune_run):
    run_dir, _ = finetune_run
    snap = legacy.load_network(os.path.join(run_dir, 'network-snapshot-000001.pkl'))
    heads = snap['extra_modules']['fsr.heads']
    assert heads.resolutions == [4, 8, 16] and heads.residual_final
    assert set(snap['extra_modules_ema']) == {'fsr.heads'} and set(snap['extra_modules']) == {'fsr.heads', 'fsr.pairs'}
    assert type(snap['D']).__name__ == 'UpsamplingDiscriminator' and snap['D'].b4.architecture == 'resnet'
    rs = snap['resume_state']
    assert rs['plugin_state'] == {'fsr': {}} and rs['cur_nimg'] >= 1000
    lrs = {g['block']: g['lr'] for g in rs['opt_states']['G']['param_groups']}
    assert lrs['synthesis.b4'] == lrs['synthesis.b8'] == lrs['mapping'] == lrs['fsr.heads/h8'] == 0
    assert lrs['synthesis.b16'] > 0 and lrs['fsr.heads/h16'] > 0


def test_resume_run_dir_continues_with_heads(finetune_run, tmp_path):
    run_dir = str(tmp_path / os.path.basename(finetune_run[0]))
    shutil.copytree(finetune_run[0], run_dir)
    res = run_train(['--outdir', str(tmp_path), '--resume', run_dir, '--kimg=2'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'Continuing' in res.stdout and 'Stage 2/2: 16x16' in res.stdout and 'Stage 1/2' not in res.stdout
    assert 'output heads initialised' not in res.stdout  # restored from the snapshot, not re-initialised
    a = _load(os.path.join(run_dir, 'network-snapshot-000001.pkl'))
    b = _load(os.path.join(run_dir, 'network-snapshot-000002.pkl'))
    assert b['resume_state']['cur_nimg'] >= 2000 > a['resume_state']['cur_nimg']
    ga, gb = _params(a['G']), _params(b['G'])
    for n in ga:
        if n.startswith(FROZEN_AT_STAGE_2):
            assert torch.equal(ga[n], gb[n]), n
    assert not torch.equal(ga['synthesis.b16.conv1.weight'], gb['synthesis.b16.conv1.weight'])
    ha, hb = a['extra_modules']['fsr.heads'], b['extra_modules']['fsr.heads']
    assert torch.equal(ha.h8.weight, hb.h8.weight) and not torch.equal(ha.h16.weight, hb.h16.weight)


def test_finetuning_our_fsr_snapshot_keeps_its_heads(finetune_run, tmp_path, one_thread):
    run_dir, _ = finetune_run
    snap_path = os.path.join(run_dir, 'network-snapshot-000001.pkl')
    snap = _load(snap_path)
    probe, _ = _loop_from_run(run_dir, tmp_path, resume_pkl=snap_path)
    # The heads from the pickle's heads, the EMA heads from its EMA heads (as G_ema from its G_ema): the two differ.
    for key, heads in (('extra_modules', probe.start['heads']), ('extra_modules_ema', probe.start['heads_ema'])):
        loaded = _tensors(snap[key]['fsr.heads'])
        got = _tensors(heads)
        assert got.keys() == loaded.keys()
        for n in loaded:
            assert torch.equal(got[n], loaded[n]), (key, n)
    assert not all(torch.equal(a, b) for a, b in zip(_tensors(probe.start['heads']).values(),
                                                     _tensors(probe.start['heads_ema']).values()))


# ----------------------------------------------------------------------------------------------------------------------
# Pieces.

def test_upsampling_discriminator_equals_host_d_on_upsampled_images():
    torch.manual_seed(1)
    kw = dict(c_dim=0, img_resolution=32, img_channels=3, channel_base=128, channel_max=16)
    D = networks.Discriminator(**kw)
    U = UpsamplingDiscriminator(**kw)
    misc.copy_params_and_buffers(D, U, require_all=True)
    assert [n for n, _ in misc.named_params_and_buffers(D)] == [n for n, _ in misc.named_params_and_buffers(U)]
    c = torch.zeros([4, 0])
    x8 = torch.randn([4, 3, 8, 8])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x32 = upfirdn2d.upsample2d(upfirdn2d.upsample2d(x8, f), f)
    with torch.no_grad():
        torch.testing.assert_close(U(x8, c), D(x32, c), rtol=0, atol=0)
        full = torch.randn([4, 3, 32, 32])
        torch.testing.assert_close(U(full, c), D(full, c), rtol=0, atol=0)
    # Nearest-neighbour style check of the filter: a constant image stays constant inside.
    up = upsample_to(torch.ones([1, 1, 4, 4]), 16)
    torch.testing.assert_close(up[..., 4:12, 4:12], torch.ones([1, 1, 8, 8]))
    with pytest.raises(ValueError, match='by doubling'):
        upsample_to(torch.ones([1, 1, 6, 6]), 16)


def _options_after_resume(G_arch=None, D_arch=None, resume=True):
    syn = dnnlib.EasyDict(channel_base=256, channel_max=16)
    if G_arch is not None:
        syn.architecture = G_arch
    D_kwargs = dnnlib.EasyDict(class_name='training.networks.Discriminator')
    if D_arch is not None:
        D_kwargs.architecture = D_arch
    return dnnlib.EasyDict(G_kwargs=dnnlib.EasyDict(synthesis_kwargs=syn), D_kwargs=D_kwargs, metrics=[], desc='x',
                           training_set_kwargs=dnnlib.EasyDict(resolution=32),
                           resume_pkl='p.pkl' if resume else None)


def test_training_options_for_layerwise_fine_tuning():
    opts = dict(fsr=True, fsr_schedule='layerwise', fsr_start_res=16, fsr_stage_kimg='1')
    c = _options_after_resume()
    update_training_options(c, opts)
    assert c.D_kwargs.class_name == UPSAMPLING_DISCRIMINATOR and 'architecture' not in c.D_kwargs
    assert c.growing_kwargs['resolutions'] == [16, 32]
    c = _options_after_resume(D_arch='skip')  # a skip D takes lower resolutions itself
    update_training_options(c, opts)
    assert c.D_kwargs.class_name == 'training.networks.Discriminator'
    c = _options_after_resume()  # a single stage at the full resolution needs nothing
    update_training_options(c, dict(opts, fsr_start_res=32))
    assert c.D_kwargs.class_name == 'training.networks.Discriminator'
    c = _options_after_resume(resume=False)  # training from scratch: fresh skip D, as before
    update_training_options(c, opts)
    assert c.D_kwargs.architecture == 'skip' and c.G_kwargs.synthesis_kwargs.architecture == 'skip'
    with pytest.raises(click.UsageError, match="architecture 'resnet', which makes no image below"):
        update_training_options(_options_after_resume(G_arch='resnet'), opts)
