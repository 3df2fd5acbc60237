"""Training loop, train.py, resume (exact and after SIGKILL), plugins through the hook interface, multi-process."""
import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import legacy
from training import growing
from training import hooks as hooks_lib
from training import loss as loss_lib
from training import networks
from training import training_loop
from training.dataset import dataset_kwargs_from_data_arg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loop_kwargs(run_dir, total_kimg, res=16, **extra):
    ds = dataset_kwargs_from_data_arg(f'toy-shapes:res={res},num=64')
    kw = dict(run_dir=str(run_dir), training_set_kwargs=ds, data_loader_kwargs=dict(num_workers=0),
              G_kwargs=dict(class_name='training.networks.Generator', z_dim=16, w_dim=16,
                            mapping_kwargs=dict(num_layers=2),
                            synthesis_kwargs=dict(channel_base=128, channel_max=16)),
              D_kwargs=dict(class_name='training.networks.Discriminator', channel_base=128, channel_max=16,
                            epilogue_kwargs=dict(mbstd_group_size=4)),
              G_opt_kwargs=dict(class_name='torch.optim.Adam', lr=0.002, betas=[0.0, 0.99], eps=1e-8),
              D_opt_kwargs=dict(class_name='torch.optim.Adam', lr=0.002, betas=[0.0, 0.99], eps=1e-8),
              augment_kwargs=dict(class_name='training.augment.AugmentPipe', xflip=1, rotate90=1, xint=1,
                                  brightness=1),
              loss_kwargs=dict(class_name='training.loss.StyleGAN2Loss', r1_gamma=1, pl_weight=2,
                               style_mixing_prob=0.5),
              G_reg_interval=4, D_reg_interval=4, ada_target=0.2, ada_interval=2, ada_kimg=1,
              batch_size=8, batch_gpu=8, total_kimg=total_kimg, kimg_per_tick=0.032, image_snapshot_ticks=None,
              network_snapshot_ticks=1, max_grid_cells=(4, 4), device='cpu')
    kw.update(extra)
    return kw


def params_equal(a, b):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    return all(torch.equal(pa[n], pb[n]) for n in pa)


# ----------------------------------------------------------------------------------------------------------------------
# The loop.

def test_exact_resume_matches_uninterrupted_run(tmp_path, one_thread):
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir(), b.mkdir()
    ra = training_loop.training_loop(**loop_kwargs(a, 0.096, ada_target=-1.0))
    training_loop.training_loop(**loop_kwargs(b, 0.048, ada_target=-1.0))
    snap = str(b / 'network-snapshot-000000.pkl')
    with open(snap, 'rb') as f:
        state = pickle.load(f)['resume_state']
    assert state['cur_nimg'] == 48 and set(state['opt_states']) == {'G', 'D'}
    rb = training_loop.training_loop(**loop_kwargs(b, 0.096, resume_snapshot=snap, ada_target=-1.0))
    assert rb['cur_nimg'] == ra['cur_nimg'] == 96
    for key in ('G', 'D', 'G_ema'):
        assert params_equal(ra[key], rb[key]), key
    assert float(ra['augment_pipe'].p) == float(rb['augment_pipe'].p)
    assert float(ra['augment_pipe'].p) > 0  # ADA moved p (6 updates of +0.016) in both runs
    # The continued run appended to the same stats.jsonl.
    lines = (b / 'stats.jsonl').read_text().splitlines()
    kimgs = [json.loads(line)['Progress/kimg']['mean'] for line in lines]
    assert kimgs == sorted(kimgs) and kimgs[-1] == pytest.approx(0.096)


def test_loop_writes_outputs_and_snapshot_is_nvidia_style(tmp_path, one_thread):
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.032, image_snapshot_ticks=1))
    names = set(os.listdir(tmp_path))
    assert {'reals.png', 'fakes_init.png', 'fakes000000.png', 'network-snapshot-000000.pkl', 'stats.jsonl'} <= names
    data = legacy.load_network(str(tmp_path / 'network-snapshot-000000.pkl'))
    assert {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} <= set(data)
    assert data['training_set_kwargs']['class_name'] == 'training.dataset.ToyShapesDataset'
    assert not any(p.requires_grad for p in data['G'].parameters())
    assert all(p.device.type == 'cpu' for p in data['G_ema'].parameters())
    stats = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    for key in ('Loss/G/loss', 'Loss/D/loss', 'Loss/r1_penalty', 'Loss/pl_penalty', 'Timing/sec_per_kimg',
                'Progress/augment', 'timestamp'):
        assert key in stats[-1], key
    assert not any(name.endswith('.tmp') or '.tmp' in name for name in os.listdir(tmp_path))


def test_loop_is_deterministic_for_a_seed(tmp_path, one_thread):
    r1 = training_loop.training_loop(**loop_kwargs_mkdir(tmp_path / 'x', 0.032, random_seed=3))
    r2 = training_loop.training_loop(**loop_kwargs_mkdir(tmp_path / 'y', 0.032, random_seed=3))
    r3 = training_loop.training_loop(**loop_kwargs_mkdir(tmp_path / 'z', 0.032, random_seed=4))
    assert params_equal(r1['G'], r2['G'])
    assert not params_equal(r1['G'], r3['G'])


def test_metrics_do_not_change_the_training_run(tmp_path, one_thread):
    """A metric draws random numbers (a different amount on each call, as a metric does whose dataset statistics
    are computed once and then cached); the run must still equal one without metrics."""
    import random

    from metrics import metric_main
    calls = []

    @metric_main.register_metric
    def rng_eater(opts):
        del opts
        calls.append(1)
        torch.randn(17 * len(calls)), np.random.rand(3 * len(calls)), random.random()
        return dict(rng_eater=float(len(calls)))
    try:
        os.makedirs(tmp_path / 'a'), os.makedirs(tmp_path / 'b')
        a = training_loop.training_loop(**loop_kwargs(tmp_path / 'a', 0.096, network_snapshot_ticks=1,
                                                      metrics=['rng_eater']))
        b = training_loop.training_loop(**loop_kwargs(tmp_path / 'b', 0.096, network_snapshot_ticks=1))
    finally:
        metric_main.unregister_metric('rng_eater')
    assert len(calls) >= 3
    assert params_equal(a['G'], b['G']) and params_equal(a['D'], b['D'])


def loop_kwargs_mkdir(path, total_kimg, **extra):
    os.makedirs(path, exist_ok=True)
    return loop_kwargs(path, total_kimg, network_snapshot_ticks=None, **extra)


# ----------------------------------------------------------------------------------------------------------------------
# Plugins through the hook interface (a tiny fake plugin).

class CountingPlugin(hooks_lib.TrainingPlugin):
    """Adds a G-side module trained by an extra loss term on G's 8x8 features, and counts hook calls."""
    name = 'fake'

    def __init__(self, nan_after=None):
        self.calls = dict(stage=0, tick=0)
        self.nan_after = nan_after
        self.head = None
        self.steps = 0

    def extra_modules(self, G, D, training_set, device):
        self.head = torch.nn.Conv2d(G.synthesis.b8.conv1.out_channels, 1, 1)
        return {'head': hooks_lib.ExtraModule(self.head, side='G')}

    def set_ema_modules(self, ema_modules):
        self.head_ema = ema_modules['head']

    def wants_generator_features(self):
        return True

    def loss_terms(self, where, ctx):
        if where != 'G':
            return {}
        self.steps += 1
        value = self.head(ctx['gen_features'][8].float()).square().mean([1, 2, 3])
        if self.nan_after is not None and self.steps > self.nan_after:
            value = value * float('nan')
        return {'head_energy': value}

    def on_stage(self, stage, G, D, modules):
        self.calls['stage'] += 1

    def on_tick(self, tick_info):
        self.calls['tick'] += 1
        return {'steps': self.steps}

    def state_dict(self):
        return {'steps': self.steps}

    def load_state_dict(self, state):
        self.steps = state['steps']


def test_plugin_module_is_trained_ema_averaged_snapshotted_and_resumed(tmp_path, one_thread):
    plugin = CountingPlugin()
    before = None
    kw = loop_kwargs(tmp_path, 0.064, plugins=[plugin])
    res = training_loop.training_loop(**kw)
    assert plugin.calls['tick'] >= 2 and plugin.steps > 0
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    assert set(snap['extra_modules']) == {'fake.head'} and set(snap['extra_modules_ema']) == {'fake.head'}
    assert snap['resume_state']['plugin_state'] == {'fake': {'steps': plugin.steps}}
    w = snap['extra_modules']['fake.head'].weight
    w_ema = snap['extra_modules_ema']['fake.head'].weight
    assert not torch.equal(w, w_ema)  # trained and averaged separately
    stats = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    assert 'Loss/fake/head_energy' in stats[-1] and 'Plugin/fake/steps' in stats[-1]
    # Resume restores plugin state and the module.
    plugin2 = CountingPlugin()
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.096, plugins=[plugin2],
                                              resume_snapshot=str(tmp_path / 'network-snapshot-000000.pkl')))
    assert plugin2.steps > plugin.steps
    del before, res


class StepEditingPlugin(CountingPlugin):
    """After every step: records what after_step receives, and sets the bias of its head (and the EMA head) to the
    step count, so the test can see the edit survive into the snapshot."""
    name = 'editor'

    def __init__(self):
        super().__init__()
        self.seen = []

    def after_step(self, step):
        self.seen.append(dict(cur_nimg=step['cur_nimg'], batch_idx=step['batch_idx'],
                              modules=set(step['modules']), ema_modules=set(step['ema_modules']),
                              head_in_G_opt=any(p is self.head.bias for g in step['optimizers']['G'].param_groups
                                                for p in g['params']),
                              head_in_D_opt=any(p is self.head.bias for g in step['optimizers']['D'].param_groups
                                                for p in g['params']),
                              G_ok=step['G'] is not step['G_ema'] and hasattr(step['D'], 'b4')))
        with torch.no_grad():
            for head in (step['modules']['head'], step['ema_modules']['head']):
                head.bias.fill_(float(step['batch_idx']))


def test_after_step_hook_sees_every_iteration_with_modules_and_optimisers(tmp_path, one_thread):
    plugin = StepEditingPlugin()
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.064, plugins=[plugin]))
    assert [s['cur_nimg'] for s in plugin.seen] == [8 * (i + 1) for i in range(len(plugin.seen))]
    assert [s['batch_idx'] for s in plugin.seen] == list(range(1, len(plugin.seen) + 1))
    assert len(plugin.seen) == 8  # 64 images in batches of 8
    for s in plugin.seen:
        assert s['modules'] == {'head'} and s['ema_modules'] == {'head'}  # this plugin's names, no prefix
        assert s['head_in_G_opt'] and not s['head_in_D_opt'] and s['G_ok']
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    assert torch.all(snap['extra_modules']['editor.head'].bias == 8)
    assert torch.all(snap['extra_modules_ema']['editor.head'].bias == 8)


def test_no_plugin_equals_empty_plugin_list_bitwise(tmp_path, one_thread):
    class Silent(hooks_lib.TrainingPlugin):
        name = 'silent'
    a = training_loop.training_loop(**loop_kwargs_mkdir(tmp_path / 'a', 0.032))
    b = training_loop.training_loop(**loop_kwargs_mkdir(tmp_path / 'b', 0.032, plugins=[Silent()]))
    assert params_equal(a['G'], b['G']) and params_equal(a['D'], b['D'])


def test_nan_loss_stops_the_run_naming_last_snapshot(tmp_path, one_thread):
    plugin = CountingPlugin(nan_after=2)
    with pytest.raises(training_loop.TrainingDivergedError, match=r'non-finite Loss/.*Last good snapshot: .*'
                                                                  r'network-snapshot-000000\.pkl'):
        training_loop.training_loop(**loop_kwargs(tmp_path, 0.2, plugins=[plugin]))
    # The snapshot that exists is the last good one and it loads.
    legacy.load_network(str(tmp_path / 'network-snapshot-000000.pkl'))


# ----------------------------------------------------------------------------------------------------------------------
# Progressive growing.

def test_growing_schedule_stages_and_fade():
    s = growing.GrowingSchedule.from_range(8, 32, stage_kimg=[10, 20], fade_kimg=5)
    assert [s.at(k * 1000).resolution for k in (0, 9.9, 10, 29.9, 30, 100)] == [8, 8, 16, 16, 32, 32]
    assert s.at(12500).alpha == pytest.approx(0.5) and s.at(15000).alpha == 1 and s.at(0).alpha == 1
    with pytest.raises(ValueError, match='double'):
        growing.GrowingSchedule([8, 32], 10)
    with pytest.raises(ValueError, match='stage lengths'):
        growing.GrowingSchedule([8, 16, 32], [10])


def test_progressive_growing_runs_at_stage_resolution(tmp_path, one_thread):
    plugin = CountingPlugin()
    kw = loop_kwargs(tmp_path, 0.096, plugins=[plugin], image_snapshot_ticks=1,
                     growing_kwargs=dict(resolutions=[8, 16], stage_kimg=[0.048], fade_kimg=0.016))
    kw['D_kwargs'] = dict(kw['D_kwargs'], architecture='skip')
    training_loop.training_loop(**kw)
    import PIL.Image
    first = PIL.Image.open(tmp_path / 'fakes_init.png')
    last = PIL.Image.open(tmp_path / 'fakes000000.png')
    assert first.size == (4 * 8, 4 * 8) and last.size == (4 * 16, 4 * 16)
    assert plugin.calls['stage'] == 2
    stats = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    assert [s['Progress/resolution']['mean'] for s in stats][0] == 8
    assert stats[-1]['Progress/resolution']['mean'] == 16


def test_fade_in_blends_the_previous_stage_image_of_the_same_pass():
    # The fade reuses the skip path's image below the newest block instead of a second synthesis pass; compare it
    # with the two-pass definition (no noise, so both passes see the same inputs).
    # A wrong blend weight or a wrong level (e.g. the image two blocks down) moves values by far more than 1e-6.
    from torch_utils.ops import upfirdn2d
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=64, channel_max=8, use_noise=False))
    loss = loss_lib.StyleGAN2Loss('cpu', G, ConstD(torch.tensor(0.5)), r1_gamma=0)
    loss.resolution, loss.fade_alpha = 8, 0.25
    z = torch.randn([3, 8])
    c = torch.zeros([3, 0])
    img, ws, _ = loss.run_G(z, c)
    low = upfirdn2d.upsample2d(G.synthesis(ws, max_res=4, force_fp32=True), G.synthesis.b4.resample_filter)
    expected = 0.75 * low + 0.25 * G.synthesis(ws, max_res=8, force_fp32=True)
    assert img.shape == (3, 3, 8, 8)
    torch.testing.assert_close(img, expected, rtol=1e-6, atol=1e-6)
    img_f, _, feats = loss.run_G(z, c, return_features=True)
    torch.testing.assert_close(img_f, expected, rtol=1e-6, atol=1e-6)
    assert sorted(feats) == [4, 8]
    _, prev = G.synthesis(ws, max_res=8, return_prev_img=True)
    assert prev.shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match='return_prev_img'):
        G.synthesis(ws, max_res=4, return_prev_img=True)


class FeatureImagePlugin(hooks_lib.TrainingPlugin):
    """Replaces the image D judges with the channel mean of the top features (3 copies), and records fade_alpha."""
    name = 'featimg'

    def __init__(self, give=True):
        self.give = give
        self.alphas = []

    def replaces_generator_image(self):
        return True

    def generator_image(self, img, features, fade_alpha, ema=False):
        self.alphas.append(fade_alpha)
        self.ema_calls = getattr(self, 'ema_calls', 0) + int(ema)
        if not self.give:
            return None
        x = features[img.shape[-1]].float().mean(1, keepdim=True)
        return x.expand(-1, img.shape[1], -1, -1)


class RecordingD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []
        self.scale = torch.nn.Parameter(torch.ones([]))

    def forward(self, img, c):
        self.seen.append(img.detach().clone())
        return self.scale * img.mean([1, 2, 3]).unsqueeze(1)


def test_plugin_generator_image_is_what_d_judges_in_every_phase():
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=64, channel_max=8, use_noise=False))
    D = RecordingD()
    plugin = FeatureImagePlugin()
    loss = loss_lib.StyleGAN2Loss('cpu', G, D, r1_gamma=0, hooks=hooks_lib.HookManager([plugin]))
    z, c = torch.randn([4, 8]), torch.zeros([4, 0])
    img, ws, feats = loss.run_G(z, c)
    assert feats is None  # features are fetched for the hook, but returned only when asked for
    _, expected_feats = G.synthesis(ws, return_features=True)
    expected = expected_feats[16].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    torch.testing.assert_close(img, expected)
    # G main phase: D judges the replacement; G's ToRGB layers, which do not feed it, get no gradient.
    loss.accumulate_gradients('Gmain', torch.randn([4, 3, 16, 16]), c, z, c, gain=1, cur_nimg=0)
    torch.testing.assert_close(D.seen[-1], expected)
    assert G.synthesis.b16.torgb.weight.grad is None and G.synthesis.b16.conv1.weight.grad is not None
    # D main phase judges it too, and a growing stage passes its fade-in to the plugin.
    loss.resolution, loss.fade_alpha = 8, 0.25
    loss.accumulate_gradients('Dmain', torch.randn([4, 3, 8, 8]), c, z, c, gain=1, cur_nimg=0)
    assert D.seen[-2].shape == (4, 3, 8, 8) and plugin.alphas[-1] == 0.25
    # A plugin that gives None leaves the host image (faded in as usual).
    loss_none = loss_lib.StyleGAN2Loss('cpu', G, D, r1_gamma=0, hooks=hooks_lib.HookManager([FeatureImagePlugin(
        give=False)]))
    torch.testing.assert_close(loss_none.run_G(z, c)[0], G.synthesis(ws))
    plain = loss_lib.StyleGAN2Loss('cpu', G, D, r1_gamma=0)
    for lo in (loss_none, plain):
        lo.resolution, lo.fade_alpha = 8, 0.25
    torch.testing.assert_close(loss_none.run_G(z, c)[0], plain.run_G(z, c)[0])
    assert loss_none.run_G(z, c)[0].shape == (4, 3, 8, 8)


def test_plugin_generator_image_in_a_training_run_and_its_grids(tmp_path, one_thread):
    import PIL.Image
    plugin = FeatureImagePlugin()
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.032, plugins=[plugin], image_snapshot_ticks=1))
    # fakes_init.png and the image snapshots (fakes000000.png, written at tick 0 and again at the end), each in 2
    # chunks of batch_gpu = 8 images.
    assert plugin.ema_calls == 6
    # The grid shows the plugin's image: its 3 channels are equal copies, so the PNG is grey.
    grid = np.asarray(PIL.Image.open(tmp_path / 'fakes000000.png')).astype(int)
    assert grid.shape == (4 * 16, 4 * 16, 3) and (grid[..., 0] == grid[..., 2]).all() and grid.std() > 0


def test_generator_image_hook_refuses_two_replacements_and_wrong_shapes():
    class Two(FeatureImagePlugin):
        name = 'two'

    class Wrong(FeatureImagePlugin):
        name = 'wrong'

        def generator_image(self, img, features, fade_alpha, ema=False):
            return img[:, :1]

    img, feats = torch.zeros([2, 3, 4, 4]), {4: torch.ones([2, 5, 4, 4])}
    with pytest.raises(RuntimeError, match='another plugin already replaced'):
        hooks_lib.HookManager([FeatureImagePlugin(), Two()]).generator_image(img, feats, 1.0)
    with pytest.raises(ValueError, match=r'must have shape \[2, 3, 4, 4\]'):
        hooks_lib.HookManager([Wrong()]).generator_image(img, feats, 1.0)
    assert not hooks_lib.HookManager([CountingPlugin()]).replaces_generator_image()
    assert hooks_lib.HookManager([CountingPlugin()]).generator_image(img, feats, 1.0) is img


def test_discriminator_accepts_lower_resolution_only_with_skip():
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, architecture='skip', channel_base=128,
                               channel_max=16)
    assert D(torch.randn([4, 3, 8, 8]), None).shape == (4, 1)
    D2 = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
    with pytest.raises(ValueError, match='skip'):
        D2(torch.randn([4, 3, 8, 8]), None)


# ----------------------------------------------------------------------------------------------------------------------
# Losses.

class ConstD(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.scale = torch.nn.Parameter(torch.ones([]))

    def forward(self, img, c):
        return self.scale * self.value + 0 * img.sum()


@pytest.mark.parametrize('loss_type, g_expected, d_fake_expected, d_real_expected', [
    ('nonsaturating', np.log1p(np.exp(-0.5)), np.log1p(np.exp(0.5)), np.log1p(np.exp(-0.5))),
    ('hinge', -0.5, 1.5, 0.5),
    ('wgan', -0.5, 0.5, -0.5 + 1e-3 * 0.25),
])
def test_loss_families_values(loss_type, g_expected, d_fake_expected, d_real_expected):
    from torch_utils import training_stats
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=4, img_channels=1,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=32, channel_max=4))
    D = ConstD(torch.tensor(0.5))
    loss = loss_lib.StyleGAN2Loss('cpu', G, D, r1_gamma=0, loss_type=loss_type)
    collector = training_stats.Collector(regex='Loss/(G|D)/loss')
    z = torch.randn([2, 4])
    c = torch.zeros([2, 0])
    real = torch.zeros([2, 1, 4, 4])
    loss.accumulate_gradients('Gmain', real, c, z, c, gain=1, cur_nimg=0)
    collector.update()
    assert collector.mean('Loss/G/loss') == pytest.approx(g_expected, rel=1e-5)
    loss.accumulate_gradients('Dmain', real, c, z, c, gain=1, cur_nimg=0)
    collector.update()
    assert collector.mean('Loss/D/loss') == pytest.approx(d_fake_expected + d_real_expected, rel=1e-5, abs=1e-6)


def test_wgan_gp_penalty_value():
    from torch_utils import training_stats

    class LinearD(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full([1, 1, 4, 4], 0.75))  # |grad| = 0.75 * 4 = 3

        def forward(self, img, c):
            return (img * self.w).sum([1, 2, 3]).unsqueeze(1)

    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=4, img_channels=1,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=32, channel_max=4))
    loss = loss_lib.StyleGAN2Loss('cpu', G, LinearD(), r1_gamma=0, gp_weight=10, loss_type='wgan')
    collector = training_stats.Collector(regex='Loss/gp_penalty')
    c = torch.zeros([2, 0])
    loss.accumulate_gradients('Dreg', torch.zeros([2, 1, 4, 4]), c, torch.randn([2, 4]), c, gain=1, cur_nimg=0)
    collector.update()
    assert collector.mean('Loss/gp_penalty') == pytest.approx((3 - 1) ** 2, rel=1e-6)


def test_diversity_loss_value_against_direct_computation():
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=4, img_channels=1,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=32, channel_max=4))
    loss = loss_lib.StyleGAN2Loss('cpu', G, ConstD(0.0), r1_gamma=0, div_weight=2.0, div_res=2)
    torch.manual_seed(1)
    real = torch.randn([6, 1, 8, 8], dtype=torch.float64)
    base = torch.randn([1, 1, 8, 8], dtype=torch.float64)
    fake = base + 0.5 * torch.randn([4, 1, 8, 8], dtype=torch.float64)

    def cos_dist(x, n):  # independent computation with numpy: 4x4 block means, then 1 - Pearson correlation
        b = x.numpy().reshape(len(x), 2, 4, 2, 4).mean(axis=(2, 4)).reshape(len(x), -1)
        return np.mean([1 - np.corrcoef(b[i], b[i + n])[0, 1] for i in range(n)])

    ratio = cos_dist(fake, 2) / cos_dist(real, 3)
    assert 0 < ratio < 1
    torch.testing.assert_close(loss.diversity_loss(fake, real).item(), 2.0 * (1 - ratio))
    # As varied as the reals (here: the reals themselves): no penalty, no gradient.
    wide = real.clone().requires_grad_(True)
    out = loss.diversity_loss(wide, real)
    assert out.item() == 0
    out.backward()
    assert wide.grad.abs().max() == 0
    # Brightness, contrast and pixel speckle that averages out below div_res are not variety.
    speckle = torch.tensor([[1., -1.], [-1., 1.]], dtype=torch.float64).repeat(4, 4)
    same = torch.cat([base, 3 * base + 1, base + speckle, 0.5 * base - 2])
    assert loss.diversity_loss(same, real).item() == pytest.approx(2.0)
    # Flat images all look alike (distance 0), not maximally different.
    assert loss.diversity_loss(torch.zeros([4, 1, 8, 8]), real).item() == pytest.approx(2.0)


def test_diversity_loss_pushes_identical_fakes_apart():
    # Identical samples: the gradient of the term must move the pair apart (d_fake grows after a small step).
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=4, img_channels=1,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=32, channel_max=4))
    loss = loss_lib.StyleGAN2Loss('cpu', G, ConstD(0.0), r1_gamma=0, div_weight=1.0, div_res=4)
    torch.manual_seed(0)
    real = torch.randn([2, 1, 4, 4])
    fake = torch.randn([1, 1, 4, 4]).repeat(2, 1, 1, 1) + 1e-3 * torch.randn([2, 1, 4, 4])
    fake.requires_grad_(True)
    before = loss.diversity_loss(fake, real)
    before.backward()
    stepped = fake.detach() - 0.1 * fake.grad
    assert loss.diversity_loss(stepped, real) < before
    assert (stepped[0] - stepped[1]).abs().mean() > (fake[0] - fake[1]).abs().mean()
    with pytest.raises(ValueError, match='div_res'):
        loss_lib.StyleGAN2Loss('cpu', G, ConstD(0.0), div_weight=1.0, div_res=3).diversity_loss(fake, real)
    with pytest.raises(ValueError, match='div_weight'):
        loss_lib.StyleGAN2Loss('cpu', G, ConstD(0.0), div_weight=-1.0)


def test_diversity_loss_enters_gmain_and_is_reported():
    from torch_utils import training_stats
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=4, img_channels=1,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=32, channel_max=4))
    collector = training_stats.Collector(regex='Loss/G/div.*')
    z = torch.randn([4, 4])
    c = torch.zeros([4, 0])
    real = 5 * torch.randn([4, 1, 4, 4])  # far more varied than an untrained G: the hinge is active
    grads = {}
    for w in (0.0, 1.0):
        G.zero_grad(set_to_none=True)
        loss = loss_lib.StyleGAN2Loss('cpu', G, ConstD(torch.tensor(0.5)), r1_gamma=0, div_weight=w, div_res=2)
        torch.manual_seed(3)
        loss.accumulate_gradients('Gmain', real, c, z, c, gain=1, cur_nimg=0)
        grads[w] = torch.cat([p.grad.flatten() for p in G.synthesis.parameters() if p.grad is not None])
    collector.update()
    assert 0 < collector.mean('Loss/G/div_ratio') < 1
    assert collector.mean('Loss/G/div') > 0
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_diversity_pass_uses_constant_noise():
    # Repeated latents with strong noise inputs: with constant noise the pairs are identical (ratio exactly 0);
    # random noise would make them differ and let G pass noise speckle off as variety.
    from torch_utils import training_stats
    torch.manual_seed(0)
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=1,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(1.0)
    loss = loss_lib.StyleGAN2Loss('cpu', G, ConstD(torch.tensor(0.5)), r1_gamma=0, div_weight=1.0, div_res=8,
                                  div_batch=4)
    z = torch.randn([2, 4]).repeat(3, 1)  # 6 latents, z[i] == z[i + 2]; the diversity pass takes the first 4
    c = torch.zeros([6, 0])
    collector = training_stats.Collector(regex='Loss/G/div.*')
    loss.accumulate_gradients('Gmain', torch.randn([6, 1, 8, 8]), c, z, c, gain=1, cur_nimg=0)
    collector.update()
    assert collector.mean('Loss/G/div_ratio') == 0
    assert collector.mean('Loss/G/div') == pytest.approx(1.0)
    img_a, _, _ = loss.run_G(z[:2], c[:2])
    img_b, _, _ = loss.run_G(z[:2], c[:2])
    assert not torch.equal(img_a, img_b)  # the noise inputs are strong enough to matter
    with pytest.raises(ValueError, match='div_batch'):
        loss_lib.StyleGAN2Loss('cpu', G, ConstD(0.0), div_weight=1.0, div_batch=1)


def test_unknown_loss_type():
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=4, img_channels=1,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=32, channel_max=4))
    with pytest.raises(ValueError, match='loss_type'):
        loss_lib.StyleGAN2Loss('cpu', G, ConstD(0.0), loss_type='least-squares')


# ----------------------------------------------------------------------------------------------------------------------
# train.py end to end.

def run_train(args, cwd, timeout=600, env=None, in_process=None):
    """Run train.py with `args` in `cwd`; returns an object with returncode, stdout and stderr.

    Dry runs (-n) and calls marked in_process=True (refusals) run train.main in this process (about 2 s less each
    than a new interpreter importing torch); one that would start training fails the test. Everything else, and any
    call with `env`, runs as a subprocess exactly as a user runs it."""
    if in_process is None:
        in_process = env is None and ('-n' in args or '--dry-run' in args)
    if in_process:
        return _run_train_in_process(args, cwd)
    cmd = [sys.executable, os.path.join(REPO, 'train.py')] + args
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def _run_train_in_process(args, cwd):
    import types
    from click.testing import CliRunner
    import train

    def no_training(*_args, **_kwargs):
        raise AssertionError(f'run_train(in_process=True) would start training: {args}')
    saved_launch, saved_cwd = train.launch_training, os.getcwd()
    train.launch_training = no_training
    try:
        os.chdir(cwd)
        result = CliRunner().invoke(train.main, [str(a) for a in args], catch_exceptions=False)
    finally:
        train.launch_training = saved_launch
        os.chdir(saved_cwd)
    return types.SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


TINY = ['--data=toy-shapes:res=16,num=64', '--cfg=cpu-tiny', '--workers=0', '--tick=0.032']


@pytest.fixture(scope='module')
def tiny_cli_run(tmp_path_factory):
    """One 1-kimg train.py run shared by the tests that only read its outputs."""
    outdir = tmp_path_factory.mktemp('cli')
    res = run_train(['--outdir', str(outdir)] + TINY + ['--kimg=1', '--snap=1'], outdir)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = glob.glob(str(outdir / '00000-*'))
    return run_dir


def test_train_cli_short_run_writes_everything(tiny_cli_run):
    run_dir = tiny_cli_run
    names = set(os.listdir(run_dir))
    assert {'training_options.json', 'log.txt', 'stats.jsonl', 'reals.png', 'fakes_init.png', 'fakes000001.png',
            'network-snapshot-000001.pkl'} <= names
    opts = json.load(open(os.path.join(run_dir, 'training_options.json')))
    assert opts['total_kimg'] == 1 and opts['G_kwargs']['mapping_kwargs']['num_layers'] == 2
    log = open(os.path.join(run_dir, 'log.txt')).read()
    assert 'tick 0' in log and 'eta' in log and 'Exiting...' in log


def test_train_cli_dry_run_and_errors(tmp_path):
    res = run_train(['--outdir', str(tmp_path), '-n'] + TINY, tmp_path)
    assert res.returncode == 0 and 'Dry run' in res.stdout and not os.listdir(tmp_path)
    res = run_train(['--outdir', str(tmp_path), '--data', str(tmp_path / 'missing.zip')], tmp_path, in_process=True)
    assert res.returncode == 1 and 'missing.zip' in res.stderr and 'not a built-in dataset' in res.stderr
    res = run_train(['--outdir', str(tmp_path), '--batch=6', '--gpus=4'] + TINY, tmp_path, in_process=True)
    assert res.returncode == 1 and '--batch' in res.stderr
    res = run_train(['--outdir', str(tmp_path), '--metrics=fid_bogus'] + TINY, tmp_path, in_process=True)
    assert res.returncode == 1 and 'fid_bogus' in res.stderr
    res = run_train(['--outdir', str(tmp_path), '-n', '--div=0.5', '--div-res=4', '--div-batch=8'] + TINY, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert (opts['loss_kwargs']['div_weight'], opts['loss_kwargs']['div_res'], opts['loss_kwargs']['div_batch']) == \
        (0.5, 4, 8)
    assert 'use_noise' not in opts['G_kwargs']['synthesis_kwargs']  # default: G as NVIDIA's, noise on
    res = run_train(['--outdir', str(tmp_path), '-n', '--g-noise=0'] + TINY, tmp_path)
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert res.returncode == 0 and opts['G_kwargs']['synthesis_kwargs']['use_noise'] is False
    assert 'architecture' not in opts['G_kwargs']['synthesis_kwargs']  # default: the networks' own (skip)
    res = run_train(['--outdir', str(tmp_path), '-n', '--g-arch=orig'] + TINY, tmp_path)
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert res.returncode == 0 and opts['G_kwargs']['synthesis_kwargs']['architecture'] == 'orig'
    res = run_train(['--outdir', str(tmp_path), '-n', '--g-channels=16:6,8:12'] + TINY, tmp_path)
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert res.returncode == 0 and opts['G_kwargs']['synthesis_kwargs']['channel_overrides'] == {'16': 6, '8': 12}
    assert 'channel_overrides' not in opts['D_kwargs']
    res = run_train(['--outdir', str(tmp_path), '--g-channels=32:6'] + TINY, tmp_path, in_process=True)
    assert res.returncode == 1 and 'above the data resolution 16' in res.stderr
    res = run_train(['--outdir', str(tmp_path), '--g-channels=16'] + TINY, tmp_path, in_process=True)
    assert res.returncode == 2 and 'res:channels' in res.stderr
    res = run_train(['--outdir', str(tmp_path), '-n', '--g-noise-res=8,4'] + TINY, tmp_path)
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert res.returncode == 0 and opts['G_kwargs']['synthesis_kwargs']['noise_resolutions'] == [4, 8]
    res = run_train(['--outdir', str(tmp_path), '-n', '--g-input-noise=8'] + TINY, tmp_path)
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert res.returncode == 0 and opts['G_kwargs']['synthesis_kwargs']['input_noise_channels'] == 8
    res = run_train(['--outdir', str(tmp_path), '-n', '--g-input-noise=-1'] + TINY, tmp_path)
    assert res.returncode == 2 and '--g-input-noise' in res.stderr
    for bad, code, msg in (('--g-noise-res=32', 1, 'above the data resolution 16'),
                           ('--g-noise-res=6', 2, 'powers of two >= 4'),
                           ('--g-noise-res=x', 2, 'expected resolutions'),
                           ('--g-noise-res=4 --g-noise=0', 1, 'it needs --g-noise=1')):
        res = run_train(['--outdir', str(tmp_path)] + bad.split() + TINY, tmp_path, in_process=True)
        assert res.returncode == code and msg in res.stderr, (bad, res.stderr[-2000:])
    res = run_train(['--outdir', str(tmp_path), '--div=1', '--div-res=3'] + TINY, tmp_path, in_process=True)
    assert res.returncode == 1 and '--div-res (3) must divide the training resolution (16)' in res.stderr
    res = run_train(['--outdir', str(tmp_path), '--div=1', '--div-batch=1'] + TINY, tmp_path, in_process=True)
    assert res.returncode == 1 and '--div-batch must be at least 2' in res.stderr
    assert not os.listdir(tmp_path)


def test_train_cli_ema_options(tmp_path):
    def dry(*extra):
        res = run_train(['--outdir', str(tmp_path), '-n'] + TINY + list(extra), tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    opts = dry()
    assert opts['ema_rampup'] == 0.05  # the preset's ramp
    opts = dry('--ema-kimg=4', '--ema-rampup=0.25')
    assert (opts['ema_kimg'], opts['ema_rampup']) == (4.0, 0.25)
    assert dry('--ema-rampup=None')['ema_rampup'] is None
    for bad in ('0', '-0.1', 'fast'):
        res = run_train(['--outdir', str(tmp_path), f'--ema-rampup={bad}'] + TINY, tmp_path, in_process=True)
        assert res.returncode == 1 and 'expected a positive number or "none"' in res.stderr, res.stderr[-2000:]
    assert not os.listdir(tmp_path)


def test_sigkill_then_resume_continues_counters(tmp_path):
    args = ['--outdir', str(tmp_path)] + TINY + ['--kimg=2', '--snap=1', '--tick=0.4']
    cmd = [sys.executable, os.path.join(REPO, 'train.py')] + args
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline:
        snaps = glob.glob(str(tmp_path / '00000-*' / 'network-snapshot-00000[1-9].pkl'))
        if snaps:
            run_dir = os.path.dirname(snaps[0])
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, 'no snapshot appeared'
    snaps = sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))
    last = legacy.load_network(snaps[-1])  # no corrupt file: written atomically
    kimg_before = last['resume_state']['cur_nimg']
    assert not glob.glob(os.path.join(run_dir, '*.tmp*'))
    res = run_train(['--outdir', str(tmp_path), '--resume', run_dir], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f'Continuing {run_dir}' in res.stdout
    final = legacy.load_network(sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))[-1])
    assert final['resume_state']['cur_nimg'] >= 2000 > kimg_before
    stats = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]
    kimgs = [s['Progress/kimg']['mean'] for s in stats]
    assert kimgs[-1] >= 2.0
    # Changing an option of a continued run is refused.
    res = run_train(['--outdir', str(tmp_path), '--resume', run_dir, '--gamma=5'], tmp_path)
    assert res.returncode == 1 and 'cannot change --gamma' in res.stderr


def test_two_process_cpu_training(tmp_path):
    res = run_train(['--outdir', str(tmp_path), '--gpus=2'] + TINY + ['--kimg=1', '--snap=1', '--batch=8'],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = glob.glob(str(tmp_path / '00000-*'))
    assert 'gpus2' in run_dir
    data = legacy.load_network(os.path.join(run_dir, 'network-snapshot-000001.pkl'))
    assert data['resume_state']['num_gpus'] == 2 and len(data['resume_state']['rng_states']) == 2
    assert 'Distributing across 2 processes' in open(os.path.join(run_dir, 'log.txt')).read()


def test_finetune_from_pickle_reports_copy(tmp_path, tiny_cli_run):
    snap = os.path.join(tiny_cli_run, 'network-snapshot-000001.pkl')
    res = run_train(['--outdir', str(tmp_path / 'b'), '--resume', snap, '--resume-as-new'] + TINY +
                    ['--kimg=1', '--snap=1'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'G: copied' in res.stdout and 'Fine-tuning: architecture options taken from' in res.stdout
    (run_dir,) = glob.glob(str(tmp_path / 'b' / '00000-*'))
    assert 'resumecustom' in run_dir


class FreezingPlugin(hooks_lib.TrainingPlugin):
    """Freezes G's 4x4 block and mapping network, halves the lr of D's 4x4 epilogue."""
    name = 'freeze'

    def __init__(self, bad=False):
        self.bad = bad
        self.initial = None

    def extra_modules(self, G, D, training_set, device):
        self.initial = {n: p.detach().clone() for n, p in G.named_parameters()}
        return {}

    def param_lr_multipliers(self, side, module, modules, stage):
        if side == 'G':
            params = list(module.synthesis.b4.parameters()) + list(module.mapping.parameters())
            if self.bad:
                params = params[:1]  # only part of a block: refused
            return {p: 0.0 for p in params}
        return {p: 0.5 for p in module.b4.parameters()}

    def loss_terms(self, where, ctx):
        if where == 'G':
            self.G = ctx['loss'].G
        return {}


def test_frozen_blocks_get_no_gradient_and_do_not_change(tmp_path, one_thread):
    torch.manual_seed(0)
    plugin = FreezingPlugin()
    kw = loop_kwargs(tmp_path, 0.064, plugins=[plugin], network_snapshot_ticks=1)
    res = training_loop.training_loop(**kw)
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    G = res['G']
    for name, p in G.named_parameters():
        frozen = name.startswith('synthesis.b4.') or name.startswith('mapping.')
        assert torch.equal(p, plugin.initial[name]) == frozen, name
    opt_state = snap['resume_state']['opt_states']['G']
    lrs = {g['block']: g['lr'] for g in opt_state['param_groups']}
    assert lrs['synthesis.b4'] == 0 and lrs['mapping'] == 0 and lrs['synthesis.b16'] > 0
    # Adam never saw the frozen parameters.
    frozen_ids = [i for g in opt_state['param_groups'] if g['lr'] == 0 for i in g['params']]
    assert frozen_ids and not any(i in opt_state['state'] for i in frozen_ids)
    d_lrs = {g['block']: (g['lr'], g['base_lr']) for g in snap['resume_state']['opt_states']['D']['param_groups']}
    assert d_lrs['b4'][0] == pytest.approx(0.5 * d_lrs['b4'][1])


def test_multiplier_must_be_uniform_within_a_block(tmp_path, one_thread):
    with pytest.raises(ValueError, match="differ within block 'synthesis.b4'"):
        training_loop.training_loop(**loop_kwargs(tmp_path, 0.032, plugins=[FreezingPlugin(bad=True)]))


# ----------------------------------------------------------------------------------------------------------------------
# Learning-rate steps (--lr-steps).

def test_lr_step_factor_is_the_last_step_reached():
    steps = [(0.1, 0.3), (0.05, 0.5), (0.2, 0.1)]  # any order; factors absolute, not cumulative
    assert [training_loop.lr_step_factor(steps, n) for n in (0, 49, 50, 99, 100, 199, 200, 10**6)] == \
        [1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.1, 0.1]
    assert training_loop.lr_step_factor(None, 500) == training_loop.lr_step_factor([], 0) == 1.0


def test_lr_step_from_the_start_equals_a_smaller_learning_rate_bitwise(tmp_path, one_thread, capsys):
    # x0.25 is exact in binary, so base lr 0.002 with a step to 0.25 at kimg 0 is lr 0.0005 to the last bit.
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir(), b.mkdir()
    small = dict(class_name='torch.optim.Adam', lr=0.0005, betas=[0.0, 0.99], eps=1e-8)
    ra = training_loop.training_loop(**loop_kwargs(a, 0.064, G_opt_kwargs=small, D_opt_kwargs=dict(small)))
    rb = training_loop.training_loop(**loop_kwargs(b, 0.064, lr_steps=[[0, 0.25]]))
    for key in ('G', 'D', 'G_ema'):
        assert params_equal(ra[key], rb[key]), key
    assert 'Learning rates x 0.25 from kimg 0.0' in capsys.readouterr().out


def test_lr_step_mid_run_changes_training_and_resumes_exactly(tmp_path, one_thread):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    for d in (a, b, c):
        d.mkdir()
    steps = [[0.064, 0.1]]
    ra = training_loop.training_loop(**loop_kwargs(a, 0.096, lr_steps=steps, ada_target=-1.0))
    rc = training_loop.training_loop(**loop_kwargs(c, 0.096, ada_target=-1.0))
    assert not params_equal(ra['G'], rc['G'])  # the step took effect
    # Stopped before the step, continued across it: the same run to the last bit.
    training_loop.training_loop(**loop_kwargs(b, 0.048, lr_steps=steps, ada_target=-1.0))
    snap = str(b / 'network-snapshot-000000.pkl')
    rb = training_loop.training_loop(**loop_kwargs(b, 0.096, resume_snapshot=snap, lr_steps=steps, ada_target=-1.0))
    for key in ('G', 'D', 'G_ema'):
        assert params_equal(ra[key], rb[key]), key
    with open(b / 'network-snapshot-000000.pkl', 'rb') as f:
        groups = pickle.load(f)['resume_state']['opt_states']['G']['param_groups']
    assert all(g['lr'] == pytest.approx(0.1 * g['base_lr']) for g in groups)
    # Resuming that snapshot without the steps goes back to the base rates (the loaded lr is not kept).
    d = tmp_path / 'd'
    d.mkdir()
    rd = training_loop.training_loop(**loop_kwargs(d, 0.128, resume_snapshot=snap, ada_target=-1.0))
    assert rd['cur_nimg'] == 128
    with open(d / 'network-snapshot-000000.pkl', 'rb') as f:
        groups = pickle.load(f)['resume_state']['opt_states']['G']['param_groups']
    assert all(g['lr'] == g['base_lr'] for g in groups)


def test_train_cli_lr_steps(tmp_path):
    res = run_train(['--outdir', str(tmp_path), '-n'] + TINY + ['--lr-steps=120:0.1, 100:0.3'], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert opts['lr_steps'] == [[100.0, 0.3], [120.0, 0.1]]
    res = run_train(['--outdir', str(tmp_path), '-n'] + TINY, tmp_path)
    opts = json.loads(res.stdout.split('Training options:')[1].split('Output directory:')[0])
    assert 'lr_steps' not in opts  # not given: not recorded, the run as before
    for bad, msg in (('100:0', "'100:0' is not kimg:factor"), ('-1:0.5', "'-1:0.5' is not kimg:factor"),
                     ('100', "'100' is not kimg:factor"), ('1:0.5,1:0.2', 'kimg 1 is given twice'),
                     (',', 'expected kimg:factor pairs')):
        res = run_train(['--outdir', str(tmp_path), f'--lr-steps={bad}'] + TINY, tmp_path)
        assert res.returncode == 1 and msg in res.stderr, (bad, res.stderr[-2000:])
    assert not os.listdir(tmp_path)
