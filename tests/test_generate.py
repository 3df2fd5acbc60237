"""generate.py: seed parsing, seed -> image mapping, grids, greyscale output, pickles and weights files, errors."""
import os

import click
import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
import legacy
from training import networks


def make_G(channels=3, c_dim=0):
    torch.manual_seed(0)
    return networks.Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=8, img_channels=channels,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=64, channel_max=16)).eval()


def save(tmp_path, G):
    D = networks.Discriminator(c_dim=G.c_dim, img_resolution=8, img_channels=G.img_channels, channel_base=64,
                               channel_max=16)
    path = str(tmp_path / 'net.pkl')
    legacy.save_network_pkl(dict(G=G, D=D, G_ema=G), path)
    return path


def test_parse_range_and_grid():
    assert generate.parse_range('0,5,10-12') == [0, 5, 10, 11, 12]
    assert generate.parse_range('3') == [3]
    with pytest.raises(click.BadParameter, match='empty'):
        generate.parse_range('5-2')
    with pytest.raises(click.BadParameter, match='not a non-negative integer'):
        generate.parse_range('a-b')
    assert generate.parse_grid('8x4') == (8, 4)
    with pytest.raises(click.BadParameter):
        generate.parse_grid('8')


def test_seed_maps_to_numpy_randomstate_latent():
    G = make_G()
    imgs = generate.generate_images(G, [7, 3], torch.device('cpu'))
    z = torch.from_numpy(np.random.RandomState(3).randn(1, G.z_dim))
    with torch.no_grad():
        ref = G(z, torch.zeros([1, 0]), noise_mode='const', force_fp32=True)
    np.testing.assert_array_equal(imgs[1], generate.to_uint8(ref)[0])
    assert imgs.shape == (2, 8, 8, 3) and imgs.dtype == np.uint8
    # Batching does not change the result.
    one = generate.generate_images(G, [3], torch.device('cpu'), batch_size=1)
    np.testing.assert_array_equal(one[0], imgs[1])


def test_to_uint8_convention():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(generate.to_uint8(x).reshape(-1), [0, 128, 255, 255])  # x*127.5+128, clamped


def test_cli_pickle_and_weights_file_give_same_images(tmp_path):
    pkl = save(tmp_path, make_G())
    weights = str(tmp_path / 'net.pt')
    legacy.save_weights(legacy.load_network(pkl), weights)
    runner = CliRunner()
    for net, out in [(pkl, 'a'), (weights, 'b')]:
        res = runner.invoke(generate.main, ['--network', net, '--seeds', '0-2', '--outdir', str(tmp_path / out)])
        assert res.exit_code == 0, res.output
    for seed in range(3):
        a = np.array(PIL.Image.open(tmp_path / 'a' / f'seed{seed:04d}.png'))
        b = np.array(PIL.Image.open(tmp_path / 'b' / f'seed{seed:04d}.png'))
        np.testing.assert_array_equal(a, b)
        assert a.shape == (8, 8, 3)


def test_cli_grid_and_greyscale(tmp_path):
    pkl = save(tmp_path, make_G(channels=1))
    res = CliRunner().invoke(generate.main, ['--network', pkl, '--seeds', '0-5', '--grid', '3x2',
                                             '--outdir', str(tmp_path / 'g')])
    assert res.exit_code == 0, res.output
    img = PIL.Image.open(tmp_path / 'g' / 'grid.png')
    assert img.mode == 'L' and img.size == (24, 16)


def test_cli_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(generate.main, ['--outdir', str(tmp_path)])
    assert res.exit_code != 0 and 'exactly one of --network and --random-init' in res.output
    pkl = save(tmp_path, make_G(c_dim=3))
    res = runner.invoke(generate.main, ['--network', pkl, '--outdir', str(tmp_path / 'c')])
    assert res.exit_code != 0 and 'conditional' in res.output
    res = runner.invoke(generate.main, ['--network', pkl, '--class', '1', '--outdir', str(tmp_path / 'c')])
    assert res.exit_code == 0, res.output
    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(b'nope')
    res = runner.invoke(generate.main, ['--network', str(bad), '--outdir', str(tmp_path / 'd')])
    assert res.exit_code != 0 and 'bad.pkl: not a network pickle' in res.output


def test_random_init_runs(tmp_path):
    res = CliRunner().invoke(generate.main, ['--random-init', '--seeds', '0-3', '--grid', '2x2',
                                             '--outdir', str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert PIL.Image.open(os.path.join(tmp_path, 'grid.png')).size == (64, 64)


def test_pyramid_needs_a_per_resolution_module(tmp_path):
    pkl = save(tmp_path, make_G())
    res = CliRunner().invoke(generate.main, ['--network', pkl, '--pyramid', '--outdir', str(tmp_path / 'p')])
    assert res.exit_code != 0 and 'no per-resolution output module' in res.output


def test_parse_int_ranges_is_shared_and_reports_the_bad_part():
    import dnnlib
    assert dnnlib.util.parse_int_ranges('3-5, 1,,') == [3, 4, 5, 1]
    assert dnnlib.util.parse_int_ranges('') == []
    with pytest.raises(ValueError, match="'x' is not"):
        dnnlib.util.parse_int_ranges('1,x')
    with pytest.raises(ValueError, match='empty'):
        dnnlib.util.parse_int_ranges('4-3')
