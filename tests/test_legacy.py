"""legacy.py: loading pickles (ours and foreign-source), rebuilding as our classes, weights files, errors, CLI."""
import io
import os
import pickle
import pickletools

import pytest
import torch
from click.testing import CliRunner

import legacy
from torch_utils import persistence
from training import networks


def tiny_nets(seed=0):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=64, channel_max=16))
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=16)
    with torch.no_grad():
        for p in G.parameters():
            if p.ndim == 0:
                p.fill_(0.3)  # non-zero noise strength so const noise matters
    return dict(G=G, D=D, G_ema=G, augment_pipe=None,
                training_set_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path='x.zip'))


def outputs(data, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn([2, 8], generator=g)
    c = torch.zeros([2, 0])
    with torch.no_grad():
        img = data['G_ema'](z, c, noise_mode='const', force_fp32=True)
        score = data['D'](img, c, force_fp32=True)
    return img, score


def write_pkl(tmp_path, data, name='net.pkl'):
    path = tmp_path / name
    legacy.save_network_pkl(data, str(path))
    return str(path)


def test_pickle_round_trip(tmp_path):
    data = tiny_nets()
    path = write_pkl(tmp_path, data)
    with open(path, 'rb') as f:
        loaded = legacy.load_network_pkl(f)
    for a, b in zip(outputs(data), outputs(loaded)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded['training_set_kwargs']['path'] == 'x.zip'
    assert not any(p.requires_grad for p in loaded['G'].parameters())


def test_missing_keys_are_filled(tmp_path):
    data = tiny_nets()
    del data['augment_pipe'], data['training_set_kwargs']
    path = write_pkl(tmp_path, data)
    loaded = legacy.load_network(path)
    assert loaded['augment_pipe'] is None and loaded['training_set_kwargs'] is None


@pytest.fixture
def foreign_source_hook():
    """Make every loaded module's source differ from ours (as if the pickle came from another code base)."""
    def hook(meta):
        if '# foreign copy' not in meta.module_src:
            meta.module_src = '# foreign copy\n' + meta.module_src
        return meta
    persistence.import_hook(hook)
    yield
    persistence._import_hooks.remove(hook)


def test_rebuild_foreign_generator_and_discriminator(tmp_path, foreign_source_hook):
    data = tiny_nets()
    path = write_pkl(tmp_path, data)
    loaded = legacy.load_network(path)
    G_foreign = loaded['G_ema']
    assert type(G_foreign).__mro__[1].__module__.startswith('_imported_module_')
    G_ours = legacy.rebuild_module(G_foreign, path)
    D_ours = legacy.rebuild_module(loaded['D'], path)
    assert isinstance(G_ours, networks.Generator) and isinstance(D_ours, networks.Discriminator)
    for a, b in zip(outputs(data), outputs(dict(G_ema=G_ours, D=D_ours))):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_rebuild_refuses_shape_mismatch_naming_tensors():
    src = tiny_nets()['G']
    dst = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                             mapping_kwargs=dict(num_layers=3),
                             synthesis_kwargs=dict(channel_base=128, channel_max=32))
    with pytest.raises(legacy.NetworkFileError) as e:
        legacy.copy_all_tensors(src, dst, 'a.pkl', 'Generator')
    msg = str(e.value)
    assert msg.startswith('a.pkl: ')
    assert 'mapping.fc2.weight' in msg and 'shape mismatch' in msg and 'synthesis.b4.const' in msg


def test_rebuild_refuses_unknown_options():
    G = tiny_nets()['G']
    G._init_kwargs['synthesis_kwargs']['magic_option'] = 3
    with pytest.raises(legacy.NetworkFileError, match=r"unsupported option\(s\) \['magic_option'\]"):
        legacy.rebuild_module(G, 'x.pkl')


def test_force_fp16_rebuilds_with_reduced_precision(tmp_path):
    path = write_pkl(tmp_path, tiny_nets())
    with open(path, 'rb') as f:
        data = legacy.load_network_pkl(f, force_fp16=True)
    assert data['G'].init_kwargs.synthesis_kwargs.num_fp16_res == 4
    assert data['G'].init_kwargs.synthesis_kwargs.conv_clamp == 256
    assert data['D'].init_kwargs.num_fp16_res == 4
    assert data['G'].synthesis.b8.use_fp16


def test_weights_file_round_trip_without_code(tmp_path, foreign_source_hook):
    data = tiny_nets()
    pkl = write_pkl(tmp_path, data)
    weights = str(tmp_path / 'net.pt')
    legacy.save_weights(legacy.load_network(pkl), weights, pkl)  # foreign code -> rebuilt as ours
    raw = torch.load(weights, weights_only=True)  # loads without executing code
    assert raw['format'] == legacy.WEIGHTS_FORMAT
    assert raw['modules']['G']['class_name'] == 'training.networks.Generator'
    loaded = legacy.load_network(weights)
    for a, b in zip(outputs(data), outputs(loaded)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert loaded['training_set_kwargs']['path'] == 'x.zip'


def test_weights_file_refuses_foreign_class_names(tmp_path):
    weights = str(tmp_path / 'net.pt')
    legacy.save_weights(tiny_nets(), weights)
    raw = torch.load(weights, weights_only=True)
    raw['modules']['G']['class_name'] = 'os.system'
    torch.save(raw, weights)
    with pytest.raises(legacy.NetworkFileError, match="not one of this project's classes"):
        legacy.load_network(weights)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input.

def test_garbage_and_truncated_files(tmp_path):
    bad = tmp_path / 'garbage.pkl'
    bad.write_bytes(b'this is not a pickle at all')
    with pytest.raises(legacy.NetworkFileError, match=r'garbage\.pkl: not a network pickle'):
        legacy.load_network(str(bad))
    good = write_pkl(tmp_path, tiny_nets())
    raw = open(good, 'rb').read()
    trunc = tmp_path / 'trunc.pkl'
    trunc.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(legacy.NetworkFileError, match=r'trunc\.pkl: .*truncated'):
        legacy.load_network(str(trunc))


def test_pickle_that_is_not_a_network(tmp_path):
    path = tmp_path / 'list.pkl'
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(legacy.NetworkFileError, match=r'list\.pkl: not a network pickle \(it holds a list'):
        legacy.load_network(str(path))
    path2 = tmp_path / 'dict.pkl'
    path2.write_bytes(pickle.dumps({'G': 1}))
    with pytest.raises(legacy.NetworkFileError, match='missing D, G_ema'):
        legacy.load_network(str(path2))


def _pickle_with_global(module, name):
    # protocol-2 stream: GLOBAL 'module name', EMPTY_TUPLE, REDUCE, STOP
    return b'\x80\x02c' + module.encode() + b'\n' + name.encode() + b'\n)R.'


def test_missing_symbol_is_named(tmp_path):
    path = tmp_path / 'needs.pkl'
    path.write_bytes(_pickle_with_global('torch_utils.ops.warp_drive', 'engage'))
    pickletools.dis(open(path, 'rb').read(), out=io.StringIO())  # well-formed
    with pytest.raises(legacy.NetworkFileError, match=r'needs\.pkl: the pickle needs the symbol '
                                                      r'torch_utils\.ops\.warp_drive\.engage'):
        legacy.load_network(str(path))


def test_tensorflow_pickle_is_refused(tmp_path):
    path = tmp_path / 'tf.pkl'
    path.write_bytes(_pickle_with_global('dnnlib.tflib.network', 'Network'))
    with pytest.raises(legacy.NetworkFileError, match='TensorFlow-era'):
        legacy.load_network(str(path))


def test_embedded_source_with_missing_import_is_reported(tmp_path):
    def hook(meta):
        meta.module_src = 'from torch_utils.ops import warp_drive\n' + meta.module_src
        return meta
    path = write_pkl(tmp_path, tiny_nets())
    persistence.import_hook(hook)
    try:
        with pytest.raises(legacy.NetworkFileError, match='network code inside the pickle failed to load.*warp_drive'):
            legacy.load_network(path)
    finally:
        persistence._import_hooks.remove(hook)


# ----------------------------------------------------------------------------------------------------------------------
# CLI.

def test_cli_convert_export_import(tmp_path):
    data = tiny_nets()
    pkl = write_pkl(tmp_path, data)
    runner = CliRunner()
    out_pkl = str(tmp_path / 'conv.pkl')
    res = runner.invoke(legacy.cli, ['convert', '--source', pkl, '--dest', out_pkl, '--rebuild'])
    assert res.exit_code == 0, res.output
    weights = str(tmp_path / 'w.pt')
    res = runner.invoke(legacy.cli, ['export-weights', '--source', out_pkl, '--dest', weights])
    assert res.exit_code == 0, res.output
    back = str(tmp_path / 'back.pkl')
    res = runner.invoke(legacy.cli, ['import-weights', '--source', weights, '--dest', back])
    assert res.exit_code == 0, res.output
    for a, b in zip(outputs(data), outputs(legacy.load_network(back))):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(b'xx')
    res = runner.invoke(legacy.cli, ['convert', '--source', str(bad), '--dest', str(tmp_path / 'o.pkl')])
    assert res.exit_code == 1 and 'bad.pkl: not a network pickle' in res.output
    assert not os.path.exists(tmp_path / 'o.pkl')


# ----------------------------------------------------------------------------------------------------------------------
# Opt-in: real NVIDIA pickles supplied by the user (never committed): NVIDIA_NETWORK_PKLS=/path/a.pkl,/path/b.pkl

NVIDIA_PKLS = [p for p in os.environ.get('NVIDIA_NETWORK_PKLS', '').split(',') if p]


@pytest.mark.skipif(not NVIDIA_PKLS, reason='set NVIDIA_NETWORK_PKLS to StyleGAN2-ADA/StyleGAN3 pickles to run')
@pytest.mark.parametrize('path', NVIDIA_PKLS)
def test_user_supplied_nvidia_pickle(path):
    data = legacy.load_network(path)
    G = data['G_ema']
    z = torch.randn([2, G.z_dim])
    c = torch.zeros([2, G.c_dim])
    with torch.no_grad():
        img = G(z, c, noise_mode='const', force_fp32=True)
    assert img.shape == (2, G.img_channels, G.img_resolution, G.img_resolution)
    if 'input' in dict(G.synthesis.named_children()):
        return  # StyleGAN3 architecture: runs as loaded, not rebuilt.
    ours = legacy.rebuild_module(G, path)
    with torch.no_grad():
        torch.testing.assert_close(ours(z, c, noise_mode='const', force_fp32=True), img, rtol=1e-4, atol=1e-4)


def test_our_generator_options_survive_the_rebuild_for_fine_tuning():
    """train.py --resume=<our pickle> rebuilds G from its init_kwargs: --g-channels, --g-noise-res and
    --g-input-noise must carry over (they were refused as unsupported options before)."""
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=64, channel_max=8, channel_overrides={16: 4},
                                                 noise_resolutions=[4, 8], input_noise_channels=2))
    kwargs = legacy.generator_kwargs_from_module(G, 'ours.pkl')
    assert kwargs['synthesis_kwargs']['channel_overrides'] == {16: 4}
    assert kwargs['synthesis_kwargs']['noise_resolutions'] == [4, 8]
    assert kwargs['synthesis_kwargs']['input_noise_channels'] == 2
    rebuilt = networks.Generator(**kwargs)
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in G.named_parameters()]
    assert [n for n, _ in rebuilt.named_buffers()] == [n for n, _ in G.named_buffers()]
    # Fine-tuning a pickle without the input map into a G with one is refused by name (its tensors are missing).
    kwargs['synthesis_kwargs'].pop('input_noise_channels')
    with pytest.raises(legacy.NetworkFileError, match='missing in source: synthesis.b4.input_noise_weight'):
        legacy.copy_all_tensors(networks.Generator(**kwargs), G, 'plain.pkl', 'G')
