"""--fsr-top-amp's pieces: the 1-D Wasserstein-2 loss against an optimal assignment, the real sites' amplitudes from
sparse codes refitted without shrinkage, the painted amplitudes and their gradient."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from fsr_plugin import amplitude_matching as am
from fsr_plugin import atom_reconstruction as ar


def test_quantile_matching_equals_optimal_assignment_for_equal_sizes():
    gen = torch.Generator().manual_seed(0)
    fake, real = torch.rand(40, generator=gen, dtype=torch.float64), 2 * torch.rand(40, generator=gen,
                                                                                      dtype=torch.float64)
    cost = (fake[:, None] - real[None, :]).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    assert float(am.quantile_matching_loss(fake, real)) == pytest.approx(cost[rows, cols].mean(), rel=1e-12)


def test_quantile_matching_with_a_repeated_real_sample():
    """Real values each repeated k times: the fake i-th smallest meets the real i-th smallest value."""
    fake = torch.tensor([0.3, 0.1, 0.9, 0.5], dtype=torch.float64)
    values = torch.tensor([0.2, 0.8, 1.0, 0.4], dtype=torch.float64)
    for k in (1, 3, 4):
        real = values.repeat_interleave(k)[torch.randperm(4 * k, generator=torch.Generator().manual_seed(k))]
        expect = np.mean((np.array([0.1, 0.3, 0.5, 0.9]) - np.array([0.2, 0.4, 0.8, 1.0])) ** 2)
        assert float(am.quantile_matching_loss(fake, real)) == pytest.approx(float(expect), rel=1e-12)
    assert float(am.quantile_matching_loss(fake, real[:0])) == 0
    assert float(am.quantile_matching_loss(fake[:0], real)) == 0
    with pytest.raises(ValueError, match='1-D samples'):
        am.quantile_matching_loss(fake[None], real)


def test_quantile_matching_gradient():
    gen = torch.Generator().manual_seed(1)
    fake = torch.rand(7, generator=gen, dtype=torch.float64, requires_grad=True)
    real = torch.rand(11, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: am.quantile_matching_loss(f, real), (fake,))
    # The gradient raises values below their real quantile: the weakest fake is pulled up to the real minimum side.
    low = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    am.quantile_matching_loss(low, torch.tensor([0.5, 1.0], dtype=torch.float64)).backward()
    assert low.grad[0] < 0 and low.grad[1] == 0


def test_site_amplitudes_on_hand_codes():
    codes = torch.zeros(1, 3, 2, 2)
    codes[0, 0, 0, 0] = 3.0
    codes[0, 1, 0, 0] = 4.0          # two codes at one site: amplitude 5
    codes[0, 2, 1, 1] = 0.2          # a weak site
    codes[0, 1, 0, 1] = 1.0
    assert sorted(am.site_amplitudes(codes).tolist()) == pytest.approx([0.2, 1.0, 5.0])
    assert sorted(am.site_amplitudes(codes, threshold=0.5).tolist()) == pytest.approx([1.0, 5.0])
    with pytest.raises(ValueError, match=r'\[N, K, H, W\]'):
        am.site_amplitudes(codes[0])


def test_site_amplitudes_add_up_copies_of_an_atom():
    """A site coded with two copies of one atom paints their summed amplitude; with an orthogonal pair, the norm."""
    gen = torch.Generator().manual_seed(2)
    a = ar.unit_atoms(torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64))
    b = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64)
    b = b - (b * a).sum() * a                                            # orthogonal to a
    weight = torch.cat([a, a, ar.unit_atoms(b)], dim=1)                  # [3, 3, 3, 3]: atom 0 twice, then b
    codes = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    codes[0, 0, 1, 1], codes[0, 1, 1, 1] = 0.3, 0.5                      # split between the copies
    codes[0, 0, 3, 4], codes[0, 2, 3, 4] = 0.6, 0.8                      # a and b at one site
    amps = sorted(am.site_amplitudes(codes, weight=weight).tolist())
    assert amps == pytest.approx([0.8, 1.0], rel=1e-8)            # unit_atoms: norm 1 up to its eps
    # Against the painted image itself: each (interior) site alone painted, its norm.
    for y, x in ((1, 1), (3, 4)):
        alone = torch.zeros_like(codes)
        alone[..., y, x] = codes[..., y, x]
        assert float(ar.paint(alone, weight, [1, 1, 1, 1]).norm()) in [pytest.approx(v, rel=1e-12) for v in amps]
    assert sorted(am.site_amplitudes(codes).tolist()) == pytest.approx([np.hypot(0.3, 0.5), 1.0])
    with pytest.raises(ValueError, match='weight must be'):
        am.site_amplitudes(codes, weight=weight[:, :2])


def test_painted_amplitudes_values_and_gradient():
    feats = torch.tensor([[[[2.0, 0.5]], [[1.0, 3.0]]]], requires_grad=True)        # [1, 2, 1, 2]
    mask = torch.tensor([[[[True, False]], [[False, True]]]])
    norms = torch.tensor([0.5, 2.0], requires_grad=True)
    amp = am.painted_amplitudes(feats, mask, norms)
    assert amp.tolist() == [1.0, 6.0]
    amp.sum().backward()
    assert feats.grad.tolist() == [[[[0.5, 0.0]], [[0.0, 2.0]]]]       # only the kept entries
    assert norms.grad.tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match='do not agree'):
        am.painted_amplitudes(feats, mask, norms[:1])


def _isolated_sites_image(seed=0, n=4, size=16, k=6):
    """Unit atoms [3, k, 3, 3] (head convention), codes with isolated sites (every 4th pixel) of amplitude in
    [0.6, 1.6], and the painted images."""
    gen = torch.Generator().manual_seed(seed)
    weight = ar.unit_atoms(torch.randn(3, k, 3, 3, generator=gen, dtype=torch.float64))
    codes = torch.zeros(n, k, size, size, dtype=torch.float64)
    for i in range(n):
        for y in range(1, size - 1, 4):
            for x in range(1, size - 1, 4):
                codes[i, int(torch.randint(k, (1,), generator=gen)), y, x] = 0.6 + torch.rand(1, generator=gen,
                                                                                               dtype=torch.float64)
    return weight, codes, ar.paint(codes, weight, [1, 1, 1, 1])


def test_refit_on_support_undoes_the_shrinkage():
    weight, codes, images = _isolated_sites_image()
    lam = 0.1
    step = ar.fista_step(weight, images.shape[-2:])
    coded = ar.sparse_codes(images, weight, [1, 1, 1, 1], lam, iters=300, step=step)
    true = np.sort(am.site_amplitudes(codes).numpy())
    shrunk = np.sort(am.site_amplitudes(coded, threshold=0.3).numpy())
    refit = am.refit_on_support(images, coded, weight, [1, 1, 1, 1], step, iters=200)
    assert bool(((refit > 0) <= (coded > 0)).all())                      # the support never grows
    amps = np.sort(am.site_amplitudes(refit, threshold=0.3).numpy())
    assert shrunk.size == true.size == amps.size
    assert np.abs(shrunk - true).mean() > 0.05                           # the L1 term shrinks every site
    assert np.abs(amps - true).max() < 1e-3                              # the refit restores them


def test_fista_step_is_the_inverse_lipschitz_bound():
    weight, _, images = _isolated_sites_image(seed=3)
    step = ar.fista_step(weight, images.shape[-2:])
    assert step.ndim == 0 and step.dtype == torch.float64
    # Power iteration on the painting's normal operator: its top eigenvalue is at most 1 / step.
    x = torch.randn(1, weight.shape[1], 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(200):
        x = ar.paint_adjoint(ar.paint(x, weight, [1, 1, 1, 1]), weight, [1, 1, 1, 1])
        x = x / x.norm()
    top = float((ar.paint(x, weight, [1, 1, 1, 1]).square().sum()))
    assert top <= 1 / float(step) * (1 + 1e-9) and top > 0.8 / float(step)
