"""training/image_source.py: a network file that names an image source (a per-resolution module among its EMA
extra modules) is scored and sampled through that module's top level, by calc_metrics.py, by the training loop's
metrics and by generate.py; G's own image otherwise or on request; clear errors for a bad file."""
import copy
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import loop_kwargs  # noqa: E402

import legacy  # noqa: E402
from metrics import metric_main  # noqa: E402
from training import hooks as hooks_lib  # noqa: E402
from training import image_source  # noqa: E402
from training import networks  # noqa: E402
from training import training_loop  # noqa: E402


class LevelMap(torch.nn.Module):
    """A stand-in per-resolution output module: a 1x1 conv and tanh per level; the top level optionally adds the
    generator image (like a residual output head)."""

    def __init__(self, channels, img_channels=3, residual_top=False):
        super().__init__()
        self.resolutions = sorted(int(r) for r in channels)
        self.maps = torch.nn.ModuleDict({str(r): torch.nn.Conv2d(c, img_channels, 1) for r, c in channels.items()})
        self.residual_top = residual_top

    def forward(self, features, img=None):
        out = {r: torch.tanh(self.maps[str(r)](s.float())) for r, s in features.items()}
        top = max(self.resolutions)
        if self.residual_top and top in out:
            out[top] = out[top] + img
        return out


def make_G(res=16):
    torch.manual_seed(0)
    return networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=64, channel_max=16)).eval().requires_grad_(False)


def feature_channels(G):
    ws = G.mapping(torch.zeros([1, G.z_dim]), torch.zeros([1, 0]))
    _, feats = G.synthesis(ws, return_features=True, noise_mode='const')
    return {r: int(s.shape[1]) for r, s in feats.items()}


def network_data(G, residual_top=False, name='src.levels'):
    torch.manual_seed(1)
    levels = LevelMap(feature_channels(G), residual_top=residual_top).eval().requires_grad_(False)
    D = networks.Discriminator(c_dim=0, img_resolution=G.img_resolution, img_channels=3, channel_base=64,
                               channel_max=16)
    return dict(G=G, D=D, G_ema=G, extra_modules={name: levels}, extra_modules_ema={name: levels},
                image_source=name)


def expected_image(G, levels, z, truncation_psi=1.0):
    """The source's top level computed directly from G's hidden features: [N, C, R, R]."""
    with torch.no_grad():
        ws = G.mapping(z, torch.zeros([len(z), 0]), truncation_psi=truncation_psi)
        img, feats = G.synthesis(ws, return_features=True, noise_mode='const', force_fp32=True)
        top = G.img_resolution
        return levels({top: feats[top]}, img=img)[top]


@pytest.mark.parametrize('residual_top', [False, True])
def test_sourced_generator_outputs_the_source_top_level(residual_top):
    G = make_G()
    data = network_data(G, residual_top=residual_top)
    S, name = image_source.network_generator(data)
    assert name == 'src.levels' and isinstance(S, image_source.SourcedGenerator)
    z = torch.randn([3, G.z_dim])
    c = torch.zeros([3, 0])
    with torch.no_grad():
        got = S(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True)
        own = G(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True)
    want = expected_image(G, data['extra_modules_ema'][name], z, truncation_psi=0.7)
    assert got.shape == own.shape == (3, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got - own).abs().max() > 0.05
    # G's attributes and mapping; synthesis(ws) is the source image; features pass through unchanged.
    assert (S.z_dim, S.c_dim, S.w_dim, S.img_resolution, S.img_channels, S.num_ws) == \
        (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels, G.num_ws)
    assert S.synthesis.block_resolutions == G.synthesis.block_resolutions and S.mapping is G.mapping
    with torch.no_grad():
        ws = G.mapping(z, c)
        want_ws = expected_image(G, data['extra_modules_ema'][name], z)
        torch.testing.assert_close(S.synthesis(ws, noise_mode='const', force_fp32=True), want_ws, rtol=0, atol=0)
        img_a, feats_a = S.synthesis(ws, return_features=True, noise_mode='const')
        img_b, feats_b = G.synthesis(ws, return_features=True, noise_mode='const')
    assert torch.equal(img_a, img_b) and all(torch.equal(feats_a[r], feats_b[r]) for r in feats_b)
    # A metric's deep copy on another device behaves the same; parameters are not duplicated.
    S2 = copy.deepcopy(S).eval().requires_grad_(False).to('cpu')
    with torch.no_grad():
        torch.testing.assert_close(S2(z, c, noise_mode='const'), S(z, c, noise_mode='const'), rtol=0, atol=0)
    n_own = sum(p.numel() for p in G.parameters())
    n_own += sum(p.numel() for p in data['extra_modules_ema'][name].parameters())
    assert sum(p.numel() for p in S.parameters()) == n_own


def test_no_source_or_own_image_gives_G_itself():
    G = make_G()
    assert image_source.network_generator(dict(G_ema=G)) == (G, None)
    assert image_source.network_generator(network_data(G), own_image=True) == (G, None)
    assert image_source.find_image_source(dict(G_ema=G)) is None


def test_bad_image_source_errors():
    G = make_G()
    data = network_data(G)
    with pytest.raises(image_source.ImageSourceError, match=r"names image_source 'src.nothing'.*\['src.levels'\]"):
        image_source.network_generator(dict(data, image_source='src.nothing'))
    with pytest.raises(image_source.ImageSourceError, match='no such per-resolution module'):
        image_source.network_generator(dict(data, extra_modules_ema={'src.levels': torch.nn.Linear(2, 2)}))
    small = LevelMap({4: 16, 8: 16})
    with pytest.raises(image_source.ImageSourceError, match=r'levels \[4, 8\] do not reach the generator resolution'):
        image_source.SourcedGenerator(G, small)


# ----------------------------------------------------------------------------------------------------------------------
# The tools follow the file's image source.

def probe_z(z_dim):
    return torch.from_numpy(np.random.RandomState(5).randn(4, z_dim)).float()


@metric_main.register_metric
def image_source_probe(opts):
    """The mean pixel of opts.G's images for 4 fixed latents (what a metric of this file would see)."""
    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    with torch.no_grad():
        img = G(probe_z(G.z_dim).to(opts.device), torch.zeros([4, G.c_dim], device=opts.device), noise_mode='const',
                force_fp32=True)
    return dict(image_source_probe=float(img.mean()))


def probe_value(G, levels=None):
    """image_source_probe computed directly: from G's own image, or from `levels`' top level."""
    z = probe_z(G.z_dim)
    with torch.no_grad():
        if levels is None:
            return float(G(z, torch.zeros([4, 0]), noise_mode='const', force_fp32=True).mean())
        return float(expected_image(G, levels, z).mean())


def test_calc_metrics_scores_the_source_image_and_g_image_scores_own(tmp_path):
    import calc_metrics
    G = make_G()
    data = network_data(G)
    path = str(tmp_path / 'net.pkl')
    legacy.save_network_pkl(data, path)
    results = {}
    for extra in ([], ['--g-image']):
        res = CliRunner().invoke(calc_metrics.calc_metrics, ['--network', path, '--metrics', 'image_source_probe',
                                                             '--device', 'cpu'] + extra)
        assert res.exit_code == 0, res.output
        assert ('the top level of src.levels' in res.output) == (not extra)
        line = [ln for ln in res.output.splitlines() if ln.startswith('{')][0]
        results[bool(extra)] = json.loads(line)['results']['image_source_probe']
    assert results[False] == pytest.approx(probe_value(G, data['extra_modules_ema']['src.levels']), abs=1e-6)
    assert results[True] == pytest.approx(probe_value(G), abs=1e-6)
    assert abs(results[False] - results[True]) > 1e-3
    legacy.save_network_pkl(dict(data, image_source='src.nothing'), path)
    res = CliRunner().invoke(calc_metrics.calc_metrics, ['--network', path, '--metrics', 'image_source_probe'])
    assert res.exit_code != 0 and "names image_source 'src.nothing'" in res.output


def test_generate_writes_the_source_image(tmp_path):
    import PIL.Image
    import generate
    G = make_G()
    data = network_data(G)
    path = str(tmp_path / 'net.pkl')
    legacy.save_network_pkl(data, path)
    for extra, name in (([], 'src'), (['--g-image'], 'own')):
        res = CliRunner().invoke(generate.main, ['--network', path, '--seeds', '3', '--outdir', str(tmp_path / name)]
                                 + extra)
        assert res.exit_code == 0, res.output
        assert ('the top level of src.levels' in res.output) == (name == 'src')
    z = torch.from_numpy(np.random.RandomState(3).randn(1, G.z_dim)).float()
    with torch.no_grad():
        own = G(z, torch.zeros([1, 0]), noise_mode='const', force_fp32=True)
    for name, x in (('src', expected_image(G, data['extra_modules_ema']['src.levels'], z)), ('own', own)):
        got = np.asarray(PIL.Image.open(tmp_path / name / 'seed0003.png')).astype(int)
        assert np.abs(got - generate.to_uint8(x)[0].astype(int)).max() <= 1, name
    legacy.save_network_pkl(dict(data, image_source='src.nothing'), path)
    res = CliRunner().invoke(generate.main, ['--network', path, '--seeds', '3', '--outdir', str(tmp_path / 'x')])
    assert res.exit_code != 0 and "names image_source 'src.nothing'" in res.output


class SourcePlugin(hooks_lib.TrainingPlugin):
    """A G-side per-resolution module named as the snapshots' image source."""
    name = 'src'

    def extra_modules(self, G, D, training_set, device):
        torch.manual_seed(3)
        return {'levels': hooks_lib.ExtraModule(LevelMap(feature_channels(G)), side='G')}

    def snapshot_extras(self):
        return {'image_source': 'src.levels'}


def test_training_loop_metrics_score_the_source_image(tmp_path, one_thread):
    training_loop.training_loop(**loop_kwargs(tmp_path, 0.016, plugins=[SourcePlugin()],
                                              metrics=['image_source_probe']))
    with open(tmp_path / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    assert snap['image_source'] == 'src.levels'
    lines = (tmp_path / 'metric-image_source_probe.jsonl').read_text().splitlines()
    recorded = json.loads(lines[-1])['results']['image_source_probe']  # the last snapshot overwrote the file
    G, levels = snap['G_ema'], snap['extra_modules_ema']['src.levels']
    assert recorded == pytest.approx(probe_value(G, levels), abs=1e-6)
    assert abs(recorded - probe_value(G)) > 1e-3
