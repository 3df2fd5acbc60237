"""StyleGAN2 networks: shapes, names, maths of each layer against independent computations, pickling."""
import copy
import io
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import networks


def small_G(res=16, c_dim=0, channels=3, arch='skip', **synthesis):
    synthesis = dict(dict(channel_base=256, channel_max=32, architecture=arch), **synthesis)
    return networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=res, img_channels=channels,
                              mapping_kwargs=dict(num_layers=2), synthesis_kwargs=synthesis)


def small_D(res=16, c_dim=0, channels=3, arch='resnet', **kwargs):
    return networks.Discriminator(c_dim=c_dim, img_resolution=res, img_channels=channels, architecture=arch,
                                  channel_base=256, channel_max=32, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Shapes and names.

@pytest.mark.parametrize('arch', ['orig', 'skip', 'resnet'])
@pytest.mark.parametrize('channels', [1, 3])
def test_generator_and_discriminator_shapes(arch, channels):
    G = small_G(channels=channels, arch=arch)
    D = small_D(channels=channels, arch=arch)
    z = torch.randn([4, G.z_dim])
    c = torch.zeros([4, 0])
    img = G(z, c)
    assert img.shape == (4, channels, 16, 16) and img.dtype == torch.float32
    score = D(img, c)
    assert score.shape == (4, 1)
    assert torch.isfinite(img).all() and torch.isfinite(score).all()
    # num_ws: one per conv plus the last ToRGB. 16 px: b4 (1 conv), b8 (2), b16 (2) + torgb = 6.
    assert G.num_ws == 6 and G.mapping.num_ws == 6


def test_conditional_networks():
    G = small_G(c_dim=5)
    D = small_D(c_dim=5)
    z = torch.randn([4, G.z_dim])
    c = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    img = G(z, c)
    assert D(img, c).shape == (4, 1)
    names = dict(G.named_parameters())
    assert 'mapping.embed.weight' in names and names['mapping.embed.weight'].shape == (16, 5)
    assert 'mapping.embed.weight' in dict(D.named_parameters())


def test_parameter_and_buffer_names_follow_the_contract():
    G = small_G(res=16, arch='skip')
    names = {n: tuple(t.shape) for n, t in list(G.named_parameters()) + list(G.named_buffers())}
    expected = {
        'mapping.fc0.weight': (16, 16), 'mapping.fc0.bias': (16,), 'mapping.fc1.weight': (16, 16),
        'mapping.fc1.bias': (16,), 'mapping.w_avg': (16,),
        'synthesis.b4.const': (32, 4, 4), 'synthesis.b4.resample_filter': (4, 4),
        'synthesis.b4.conv1.weight': (32, 32, 3, 3), 'synthesis.b4.conv1.bias': (32,),
        'synthesis.b4.conv1.affine.weight': (32, 16), 'synthesis.b4.conv1.affine.bias': (32,),
        'synthesis.b4.conv1.noise_strength': (), 'synthesis.b4.conv1.noise_const': (4, 4),
        'synthesis.b4.conv1.resample_filter': (4, 4),
        'synthesis.b4.torgb.weight': (3, 32, 1, 1), 'synthesis.b4.torgb.bias': (3,),
        'synthesis.b4.torgb.affine.weight': (32, 16), 'synthesis.b4.torgb.affine.bias': (32,),
        'synthesis.b8.conv0.weight': (32, 32, 3, 3), 'synthesis.b8.conv0.noise_const': (8, 8),
        'synthesis.b16.conv1.noise_const': (16, 16), 'synthesis.b16.torgb.weight': (3, 16, 1, 1),
    }
    for name, shape in expected.items():
        assert names.get(name) == shape, name
    pattern = re.compile(r'^(mapping\.(fc\d+|embed)\.(weight|bias)|mapping\.w_avg|synthesis\.b\d+\.(const|resample_filter'
                         r'|(conv0|conv1|torgb)\.(weight|bias|affine\.weight|affine\.bias|noise_strength|noise_const'
                         r'|resample_filter)|skip\.(weight|resample_filter)))$')
    assert all(pattern.match(n) for n in names), [n for n in names if not pattern.match(n)]

    D = small_D(res=16, arch='resnet')
    dnames = {n: tuple(t.shape) for n, t in list(D.named_parameters()) + list(D.named_buffers())}
    for name in ['b16.fromrgb.weight', 'b16.fromrgb.bias', 'b16.conv0.weight', 'b16.conv1.weight', 'b16.skip.weight',
                 'b8.conv0.weight', 'b4.conv.weight', 'b4.fc.weight', 'b4.out.weight', 'b4.out.bias',
                 'b16.resample_filter', 'b16.conv1.resample_filter']:
        assert name in dnames, name
    assert 'b16.skip.bias' not in dnames and 'b8.fromrgb.weight' not in dnames
    assert dnames['b4.conv.weight'] == (32, 33, 3, 3)  # +1 minibatch-std channel.
    assert dnames['b4.fc.weight'] == (32, 32 * 16)


def test_freeze_d_layers_become_buffers_with_same_names():
    D = small_D(block_kwargs=dict(freeze_layers=2))
    params = dict(D.named_parameters())
    buffers = dict(D.named_buffers())
    assert 'b16.fromrgb.weight' in buffers and 'b16.conv0.weight' in buffers  # layers 0 and 1
    assert 'b16.conv1.weight' in params


# ----------------------------------------------------------------------------------------------------------------------
# Layer maths against independent computations.

def naive_modconv(x, weight, styles, demodulate, noise=None):
    """Per-sample explicit modulated convolution (correlation, same padding), float64."""
    out = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / torch.sqrt((w ** 2).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        out.append(F.conv2d(x[n:n + 1], w, padding=weight.shape[-1] // 2))
    out = torch.cat(out)
    if noise is not None:
        out = out + noise
    return out


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize('demodulate', [False, True])
def test_modulated_conv2d_matches_explicit_per_sample_convolution(fused, demodulate):
    x = torch.randn([3, 5, 6, 6], dtype=torch.float64)
    weight = torch.randn([4, 5, 3, 3], dtype=torch.float64)
    styles = torch.randn([3, 5], dtype=torch.float64)
    noise = torch.randn([3, 1, 6, 6], dtype=torch.float64)
    got = networks.modulated_conv2d(x, weight, styles, noise=noise if demodulate else None, padding=1,
                                    demodulate=demodulate, fused_modconv=fused)
    ref = naive_modconv(x, weight, styles, demodulate, noise if demodulate else None)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_modulated_conv2d_upsampling_fused_equals_unfused():
    from torch_utils.ops import upfirdn2d
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 4, 5, 5], dtype=torch.float64)
    weight = torch.randn([3, 4, 3, 3], dtype=torch.float64)
    styles = torch.randn([2, 4], dtype=torch.float64)
    a = networks.modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=f, flip_weight=False,
                                  fused_modconv=True)
    b = networks.modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=f, flip_weight=False,
                                  fused_modconv=False)
    assert a.shape == (2, 3, 10, 10)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_modulated_conv2d_gradcheck():
    x = torch.randn([2, 2, 3, 3], dtype=torch.float64, requires_grad=True)
    weight = torch.randn([2, 2, 3, 3], dtype=torch.float64, requires_grad=True)
    styles = torch.randn([2, 2], dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, s: networks.modulated_conv2d(x, w, s, padding=1, fused_modconv=False)
    assert torch.autograd.gradcheck(fn, (x, weight, styles))
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles))


def test_fully_connected_layer_equalised_lr():
    layer = networks.FullyConnectedLayer(8, 4, activation='linear', lr_multiplier=0.5, bias_init=0.3)
    x = torch.randn([5, 8])
    w = layer.weight.detach() * 0.5 / np.sqrt(8)
    b = layer.bias.detach() * 0.5
    torch.testing.assert_close(layer(x), x @ w.t() + b)
    torch.testing.assert_close(layer.bias.detach(), torch.full([4], 0.3))
    lrelu = networks.FullyConnectedLayer(8, 4, activation='lrelu')
    y = x @ (lrelu.weight.detach() / np.sqrt(8)).t()
    torch.testing.assert_close(lrelu(x), F.leaky_relu(y, 0.2) * np.sqrt(2))


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match='Unknown activation'):
        networks.FullyConnectedLayer(4, 4, activation='gelu_magic')


def test_minibatch_std_matches_numpy():
    layer = networks.MinibatchStdLayer(group_size=2, num_channels=1)
    x = torch.randn([4, 3, 2, 2], dtype=torch.float64)
    y = layer(x)
    xn = x.numpy()
    expected = np.zeros([4])
    for n in range(4):
        group = [n % 2, n % 2 + 2]  # strided groups: sample n is in group n % (N/G)
        std = np.sqrt(xn[group].var(axis=0) + 1e-8)
        expected[n] = std.mean()
    assert y.shape == (4, 4, 2, 2)
    np.testing.assert_allclose(y[:, 3].numpy(), np.broadcast_to(expected[:, None, None], (4, 2, 2)), rtol=1e-10)
    torch.testing.assert_close(y[:, :3], x)
    with pytest.raises(ValueError, match='not divisible'):
        networks.MinibatchStdLayer(group_size=4)(torch.randn([6, 3, 2, 2]))


def test_mapping_normalisation_truncation_and_w_avg():
    M = networks.MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=3, num_layers=2, w_avg_beta=0.5)
    z = torch.randn([6, 8])
    ws = M(z, None)
    assert ws.shape == (6, 3, 8)
    torch.testing.assert_close(ws[:, 0], ws[:, 2])
    # Scaling z does not change w (2nd-moment normalisation).
    torch.testing.assert_close(M(z * 7.0, None), ws, rtol=1e-5, atol=1e-5)
    # w_avg is only updated with update_emas=True: new = lerp(mean, old, beta).
    assert torch.all(M.w_avg == 0)
    M(z, None)
    assert torch.all(M.w_avg == 0)
    M(z, None, update_emas=True)
    torch.testing.assert_close(M.w_avg, ws[:, 0].mean(0) * 0.5)
    # Truncation: psi=0 gives w_avg everywhere; cutoff truncates only the first layers.
    torch.testing.assert_close(M(z, None, truncation_psi=0), M.w_avg.expand(6, 3, 8))
    t = M(z, None, truncation_psi=0.5, truncation_cutoff=1)
    torch.testing.assert_close(t[:, 0], M.w_avg + 0.5 * (ws[:, 0] - M.w_avg))
    torch.testing.assert_close(t[:, 1:], ws[:, 1:])


def test_noise_modes_and_const_noise_determinism():
    G = small_G().eval()
    z = torch.randn([2, G.z_dim])
    c = torch.zeros([2, 0])
    with torch.no_grad():
        for p in G.parameters():
            if p.ndim == 0:
                p.fill_(0.5)  # noise_strength
        a = G(z, c, noise_mode='const')
        b = G(z, c, noise_mode='const')
        r = G(z, c, noise_mode='random')
        n = G(z, c, noise_mode='none')
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, r) and not torch.allclose(a, n)
    with pytest.raises(ValueError, match='noise_mode'):
        G(z, c, noise_mode='bogus')


def test_generator_without_noise_inputs_depends_on_z_only():
    """train.py --g-noise=0: synthesis_kwargs use_noise=False gives no noise buffers or strengths, and every noise
    mode draws the same image."""
    G = small_G(use_noise=False).eval()
    assert not any('noise' in name for name, _ in G.named_parameters())
    assert not any('noise' in name for name, _ in G.named_buffers())
    z = torch.randn([2, G.z_dim])
    with torch.no_grad():
        imgs = [G(z, torch.zeros([2, 0]), noise_mode=m) for m in ('random', 'const', 'none')]
    assert torch.equal(imgs[0], imgs[1]) and torch.equal(imgs[0], imgs[2])
    assert len(list(G.parameters())) < len(list(small_G().parameters()))


def test_noise_resolutions_keep_noise_only_in_the_named_blocks():
    """train.py --g-noise-res: synthesis_kwargs noise_resolutions gives noise inputs to the named blocks only; the
    other blocks' outputs then change with fresh noise only through the blocks below."""
    G = small_G(res=16, noise_resolutions=[8]).eval()
    strengths = {name for name, _ in G.named_parameters() if 'noise_strength' in name}
    assert strengths == {'synthesis.b8.conv0.noise_strength', 'synthesis.b8.conv1.noise_strength'}
    assert {name for name, _ in G.named_buffers() if 'noise_const' in name} == \
        {'synthesis.b8.conv0.noise_const', 'synthesis.b8.conv1.noise_const'}
    z = torch.randn([2, G.z_dim])
    ws = G.mapping(z, None)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if 'noise_strength' in name:
                p.fill_(0.5)
        _, f1 = G.synthesis(ws, return_features=True)
        _, f2 = G.synthesis(ws, return_features=True)
        G.synthesis.b8.conv0.noise_strength.zero_()
        G.synthesis.b8.conv1.noise_strength.zero_()
        _, f3 = G.synthesis(ws, return_features=True)
        _, f4 = G.synthesis(ws, return_features=True)
    assert torch.equal(f1[4], f2[4]) and not torch.allclose(f1[8], f2[8]) and not torch.allclose(f1[16], f2[16])
    for r in (4, 8, 16):  # with the named block's strengths at 0 nothing draws noise any more
        assert torch.equal(f3[r], f4[r])
    full = small_G(res=16)
    assert len(list(G.parameters())) == len(list(full.parameters())) - 3  # b4.conv1, b16.conv0, b16.conv1
    assert pickle.loads(pickle.dumps(G)).synthesis.noise_resolutions == [8]
    with pytest.raises(ValueError, match=r'noise_resolutions: \[32\] name no block resolution'):
        small_G(res=16, noise_resolutions=[4, 32])
    with pytest.raises(ValueError, match='needs use_noise=True'):
        small_G(res=16, noise_resolutions=[4], use_noise=False)


def test_input_noise_adds_a_projected_random_map_to_the_constant():
    """train.py --g-input-noise=K: the first block's input is const + A @ m, m a unit-Gaussian [K, 4, 4] map per image
    (fresh, the fixed buffer, or left out, as noise_mode says) and A a learned [C, K] matrix, zero at the start."""
    G = small_G(res=16, input_noise_channels=3).eval()
    b4 = G.synthesis.b4
    assert b4.input_noise_weight.shape == (32, 3) and b4.input_noise_const.shape == (3, 4, 4)
    assert not b4.input_noise_weight.any()
    plain = small_G(res=16).eval()
    assert {n for n, _ in G.named_parameters()} - {n for n, _ in plain.named_parameters()} == \
        {'synthesis.b4.input_noise_weight'}
    plain.load_state_dict(G.state_dict(), strict=False)
    ws = G.mapping(torch.randn([2, G.z_dim]), None)
    with torch.no_grad():
        for mode in ('random', 'const', 'none'):  # zero projection: the plain network's images
            torch.testing.assert_close(G.synthesis(ws, noise_mode=mode), plain.synthesis(ws, noise_mode=mode))
        b4.input_noise_weight.normal_()
        # The block's input against a direct computation, through the 4x4 features (conv1 of b4 sees const + A m).
        captured = {}
        hook = b4.conv1.register_forward_pre_hook(lambda mod, args: captured.__setitem__('x', args[0]))
        G.synthesis(ws, noise_mode='const')
        expect = b4.const + torch.einsum('ck,khw->chw', b4.input_noise_weight, b4.input_noise_const)
        torch.testing.assert_close(captured['x'], expect.expand(2, -1, -1, -1))
        G.synthesis(ws, noise_mode='none')
        torch.testing.assert_close(captured['x'], b4.const.expand(2, -1, -1, -1))
        torch.manual_seed(5)
        G.synthesis(ws, noise_mode='random')
        torch.manual_seed(5)
        maps = torch.randn([2, 3, 4, 4])
        torch.testing.assert_close(captured['x'], b4.const + torch.einsum('ck,nkhw->nchw', b4.input_noise_weight,
                                                                          maps))
        hook.remove()
        a, b = G.synthesis(ws, noise_mode='random'), G.synthesis(ws, noise_mode='random')
        assert not torch.allclose(a, b)  # the layers' noise strengths are 0: only the map varies
    G.synthesis(ws, noise_mode='random').square().mean().backward()
    assert b4.input_noise_weight.grad.abs().sum() > 0
    assert pickle.loads(pickle.dumps(G)).synthesis.b4.input_noise_channels == 3
    with pytest.raises(ValueError, match='only given to the first block'):
        networks.SynthesisBlock(8, 8, w_dim=4, resolution=8, img_channels=3, is_last=False, input_noise_channels=2)
    with pytest.raises(ValueError, match='must be >= 0'):
        small_G(res=16, input_noise_channels=-1)


def test_channel_overrides_set_chosen_block_widths():
    """train.py --g-channels: synthesis_kwargs channel_overrides replaces the base/max width of the named blocks
    only; the next block's input follows; the network runs, trains and pickles."""
    G = small_G(res=16, channel_overrides={16: 5, 4: 7})
    widths = {r: getattr(G.synthesis, f'b{r}').conv1.out_channels for r in G.synthesis.block_resolutions}
    assert widths == {4: 7, 8: 32, 16: 5}
    assert G.synthesis.b8.conv0.in_channels == 7 and G.synthesis.b16.conv0.in_channels == 32
    ws = G.mapping(torch.randn([2, G.z_dim]), None)
    img, feats = G.synthesis(ws, return_features=True)
    assert img.shape == (2, 3, 16, 16) and feats[16].shape == (2, 5, 16, 16) and feats[4].shape == (2, 7, 4, 4)
    img.square().mean().backward()
    assert G.synthesis.b16.conv0.weight.grad.shape == (5, 32, 3, 3)
    assert G.synthesis.b16.conv1.weight.grad.shape == (5, 5, 3, 3)
    G2 = pickle.loads(pickle.dumps(G))
    assert G2.synthesis.b16.conv1.out_channels == 5
    with pytest.raises(ValueError, match='channel_overrides: 32: 8 must name a block resolution'):
        small_G(res=16, channel_overrides={32: 8})
    with pytest.raises(ValueError, match='width >= 1'):
        small_G(res=16, channel_overrides={8: 0})


def test_return_features_and_max_res():
    G = small_G(res=16)
    ws = G.mapping(torch.randn([2, G.z_dim]), None)
    img, feats = G.synthesis(ws, return_features=True)
    assert sorted(feats) == [4, 8, 16]
    assert feats[4].shape == (2, 32, 4, 4) and feats[16].shape == (2, 16, 16, 16)
    low = G.synthesis(ws, max_res=8, noise_mode='const')
    assert low.shape == (2, 3, 8, 8)
    full, feats2 = G.synthesis(ws, return_features=True, noise_mode='const')
    # Image at 16 = upsampled image at 8 + ToRGB(features at 16): check via the block itself.
    block = G.synthesis.b16
    torgb = block.torgb(feats2[16], ws[:, -1])
    from torch_utils.ops import upfirdn2d
    torch.testing.assert_close(full, upfirdn2d.upsample2d(low, block.resample_filter) + torgb, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='max_res'):
        G.synthesis(ws, max_res=5)


def test_resnet_synthesis_block_has_skip_and_no_intermediate_torgb():
    G = small_G(arch='resnet')
    names = dict(G.named_parameters())
    assert 'synthesis.b8.skip.weight' in names
    assert 'synthesis.b8.torgb.weight' not in names and 'synthesis.b16.torgb.weight' in names


def test_bf16_blocks_close_to_fp32():
    torch.manual_seed(1)
    G = small_G(num_fp16_res=2, conv_clamp=256).eval()
    D = small_D(num_fp16_res=2, conv_clamp=256).eval()
    z = torch.randn([4, G.z_dim])
    c = torch.zeros([4, 0])
    with torch.no_grad():
        lo = G(z, c, noise_mode='const')
        hi = G(z, c, noise_mode='const', force_fp32=True)
        d_lo = D(hi, c)
        d_hi = D(hi, c, force_fp32=True)
    assert lo.dtype == torch.float32
    assert (lo - hi).abs().max() / hi.abs().max() < 0.05
    assert (d_lo - d_hi).abs().max() / d_hi.abs().max() < 0.05
    assert not torch.equal(lo, hi)  # reduced precision really ran


def test_training_backward_reaches_all_parameters():
    G = small_G().train()
    D = small_D().train()
    z = torch.randn([4, G.z_dim])
    c = torch.zeros([4, 0])
    D(G(z, c), c).sum().backward()
    missing = [n for n, p in list(G.named_parameters()) + list(D.named_parameters()) if p.grad is None]
    # noise_strength gets gradient only through random noise, which is on by default.
    assert missing == []


def test_r1_double_backward_through_discriminator():
    D = small_D()
    x = torch.randn([4, 3, 16, 16], requires_grad=True)
    (g,) = torch.autograd.grad(D(x, torch.zeros([4, 0])).sum(), x, create_graph=True)
    g.square().sum().backward()
    # Every parameter except the output bias (which cannot influence a gradient w.r.t. the input) gets a gradient.
    assert [n for n, p in D.named_parameters() if p.grad is None] == ['b4.out.bias']


def test_bad_resolution_and_architecture_messages():
    with pytest.raises(ValueError, match='power of two'):
        small_G(res=24)
    with pytest.raises(ValueError, match='architecture'):
        small_G(arch='fancy')


# ----------------------------------------------------------------------------------------------------------------------
# Persistence.

def test_pickle_round_trip_and_deepcopy_keep_outputs():
    G = small_G().eval()
    z = torch.randn([2, G.z_dim])
    c = torch.zeros([2, 0])
    with torch.no_grad():
        ref = G(z, c, noise_mode='const')
        G2 = pickle.loads(pickle.dumps(G))
        G3 = copy.deepcopy(G)
        torch.testing.assert_close(G2(z, c, noise_mode='const'), ref, rtol=0, atol=0)
        torch.testing.assert_close(G3(z, c, noise_mode='const'), ref, rtol=0, atol=0)
    assert type(G2).__name__ == 'Generator'
    assert G2.init_kwargs['synthesis_kwargs']['channel_base'] == 256
    rebuilt = type(G)(**G.init_kwargs)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in G.parameters())


def test_network_source_imports_only_the_contract_api():
    """Our pickles embed training/networks.py; keeping its imports to numpy, torch and the contract's torch_utils API
    (HOST_CONTRACT 1.7) lets NVIDIA's own torch_utils execute it too."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(networks))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f'{node.module}.{a.name}' for a in node.names}
    allowed = {'numpy', 'torch', 'torch_utils.misc', 'torch_utils.persistence', 'torch_utils.ops.bias_act',
               'torch_utils.ops.conv2d_resample', 'torch_utils.ops.fma', 'torch_utils.ops.upfirdn2d'}
    assert imported <= allowed, imported - allowed
    used_misc = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and
                 isinstance(n.value, ast.Name) and n.value.id == 'misc'}
    assert used_misc <= {'assert_shape', 'profiled_function', 'suppress_tracer_warnings', 'constant'}, used_misc


def test_spectral_norm_normalises_largest_singular_value():
    layer = networks.Conv2dLayer(4, 6, kernel_size=3, spectral_norm=True).train()
    x = torch.randn([2, 4, 5, 5])
    for _ in range(30):  # power iterations converge in training mode
        layer(x)
    w = networks.spectral_normalize(layer.weight, layer.sn_u, update=False).reshape(6, -1)
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=1e-3)
    u_before = layer.sn_u.clone()
    layer.eval()(x)
    assert torch.equal(u_before, layer.sn_u)  # no update in eval mode
    layer.train()
    layer(x).sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    fc = networks.FullyConnectedLayer(8, 3, spectral_norm=True).train()
    for _ in range(30):
        fc(torch.randn([2, 8]))
    w = networks.spectral_normalize(fc.weight, fc.sn_u, update=False)
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=1e-3)


def test_spectral_norm_discriminator_is_opt_in_and_trains():
    D = small_D(spectral_norm=True)
    assert 'b4.fc.sn_u' in dict(D.named_buffers())
    assert not any('sn_u' in n for n, _ in small_D().named_buffers())  # default names unchanged
    x = torch.randn([4, 3, 16, 16], requires_grad=True)
    (g,) = torch.autograd.grad(D(x, None).sum(), x, create_graph=True)
    g.square().sum().backward()  # R1 works through spectral normalisation
    assert D.b16.conv0.weight.grad is not None
