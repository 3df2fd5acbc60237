"""Whole-network gradients against central finite differences in float64.

The op tests check every op's gradient on its own; these check the composition: every parameter of a small
Generator and Discriminator (all synthesis/discriminator architectures), and the gradient of the R1 penalty (a
second derivative) with respect to D's weights, which is what lets R1 regularise D at all.

The networks compute in float32 by design (they cast latents and images to float32), which makes finite differences
too noisy to judge. For these tests the networks module sees a `torch` whose `float32` is float64, so every layer runs
in float64 with unchanged code paths.
"""

import pytest
import torch

import training.networks as networks

pytestmark = pytest.mark.usefixtures('single_torch_thread')


class _Float64Torch:
    """Stand-in for the torch module inside training.networks: torch.float32 reads as torch.float64."""
    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def float64_networks(monkeypatch):
    monkeypatch.setattr(networks, 'torch', _Float64Torch())
    yield


def _to_float64(net):
    net = net.double()
    for module in net.modules():  # FIR filters stay float32 (the resampling ops require it).
        if isinstance(getattr(module, 'resample_filter', None), torch.Tensor):
            module.resample_filter = module.resample_filter.float()
    return net


def _loss_at(param, index, delta, loss_fn):
    """loss_fn() with param.view(-1)[index] shifted by delta (restored afterwards); autograd stays on for R1."""
    with torch.no_grad():
        param.view(-1)[index] += delta
    try:
        return loss_fn().item()
    finally:
        with torch.no_grad():
            param.view(-1)[index] -= delta


def _check_all_parameters(net, loss_fn, per_param=3, eps=1e-6, tol=1e-5):
    """Compare autograd with central differences on `per_param` random entries of every parameter."""
    net.zero_grad()
    loss_fn().backward()
    checked = 0
    gen = torch.Generator().manual_seed(1)
    for name, param in net.named_parameters():
        # None = the loss does not depend on this parameter (e.g. D's output bias under R1): the FD must be 0.
        grad = param.grad.flatten().clone() if param.grad is not None else torch.zeros_like(param).flatten()
        for i in torch.randperm(param.numel(), generator=gen)[:per_param].tolist():
            plus = _loss_at(param, i, eps, loss_fn)
            minus = _loss_at(param, i, -eps, loss_fn)
            fd = (plus - minus) / (2 * eps)
            assert abs(fd - grad[i].item()) <= tol * (1 + abs(fd)), \
                f'{name}[{i}]: autograd {grad[i].item():.8g} vs finite difference {fd:.8g}'
            checked += 1
    return checked


@pytest.mark.parametrize('arch', ['orig', 'skip', 'resnet'])
def test_generator_gradients_match_finite_differences(float64_networks, arch):
    G = _to_float64(networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=1,
                                       mapping_kwargs=dict(num_layers=2),
                                       synthesis_kwargs=dict(channel_base=64, channel_max=4, architecture=arch)))
    z = torch.randn([2, 8], dtype=torch.float64)
    proj = torch.randn([2, 1, 16, 16], dtype=torch.float64)
    img = G(z, None, noise_mode='const')
    assert img.dtype == torch.float64
    checked = _check_all_parameters(G, lambda: (G(z, None, noise_mode='const') * proj).sum())
    assert checked >= 3 * 20  # mapping, affines, weights, biases, noise strengths, const, ToRGB


@pytest.mark.parametrize('arch', ['orig', 'skip', 'resnet'])
def test_discriminator_gradients_match_finite_differences(float64_networks, arch):
    D = _to_float64(networks.Discriminator(c_dim=0, img_resolution=16, img_channels=1, architecture=arch,
                                           channel_base=64, channel_max=4))
    x = torch.randn([4, 1, 16, 16], dtype=torch.float64)
    weights = torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    _check_all_parameters(D, lambda: (D(x, None) * weights).sum())


def test_r1_penalty_gradient_reaches_discriminator_weights(float64_networks):
    D = _to_float64(networks.Discriminator(c_dim=0, img_resolution=16, img_channels=1, channel_base=64,
                                           channel_max=4))
    x = torch.randn([4, 1, 16, 16], dtype=torch.float64)

    def r1():
        xr = x.detach().requires_grad_(True)
        grads, = torch.autograd.grad(D(xr, None).sum(), [xr], create_graph=True)
        return grads.square().sum()

    _check_all_parameters(D, r1, per_param=2)
