"""--fsr-pair-global: the pair discriminators' image-level perceptron against a direct computation, its gradient, that
it separates batches a local score cannot (images that differ only in how much their mean colours spread), and its
wiring into training, snapshots and the CLI."""
import copy
import json
import math
import os
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin import pair_disc  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from training import training_loop  # noqa: E402


def _perturbed(D, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in D.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-zero biases too
    return D


def test_global_score_matches_a_direct_computation():
    torch.manual_seed(1)
    D = _perturbed(pair_disc.PairDiscriminator(8, img_channels=3, channels=5, depth=2, mbstd_group_size=2,
                                               global_channels=7))
    lo, hi = torch.randn([4, 3, 4, 4]), torch.randn([4, 3, 8, 8])
    with torch.no_grad():
        local = D.score_map(lo, hi).mean(dim=[2, 3])  # [4, 1]
        h = D._features(lo, hi).mean(dim=[2, 3])  # [4, 5] (depth 2: the mbstd channel feeds conv1)
        g = torch.cat([h, lo.mean(dim=[2, 3]), hi.mean(dim=[2, 3])], dim=1)
        assert g.shape == (4, 5 + 6)
        w1 = D.global_fc.weight / math.sqrt(g.shape[1])
        hidden = F.leaky_relu(g @ w1.t() + D.global_fc.bias, 0.2) * math.sqrt(2)
        w2 = D.global_out.weight / math.sqrt(7)
        expected = local + hidden @ w2.t() + D.global_out.bias
        got = D(lo, hi)
    assert got.shape == (4, 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The perceptron is what differs from the local score.
    assert (got - local).abs().max() > 1e-3


def test_global_perceptron_gradcheck():
    D = _perturbed(pair_disc.PairDiscriminator(8, img_channels=3, channels=5, depth=2, global_channels=4))
    fc, out = copy.deepcopy(D.global_fc).double(), copy.deepcopy(D.global_out).double()
    g = torch.randn([3, 5 + 6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: out(fc(t)), (g,), eps=1e-6, atol=1e-5)
    # And gradients reach the images and every parameter through the whole block.
    lo = torch.randn([2, 3, 4, 4], requires_grad=True)
    hi = torch.randn([2, 3, 8, 8], requires_grad=True)
    D(lo, hi).sum().backward()
    assert lo.grad.abs().sum() > 0 and hi.grad.abs().sum() > 0
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_off_by_default_and_bad_widths_refused():
    D = pair_disc.PairDiscriminator(8, img_channels=3, channels=5, depth=2)
    assert D.global_channels == 0 and not any('global' in name for name, _ in D.named_parameters())
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match='global_channels must be an int >= 0'):
            pair_disc.PairDiscriminator(8, img_channels=3, global_channels=bad)
    Ds = pair_disc.PairDiscriminators([4, 8, 16], img_channels=3, channels=4, global_channels=6)
    assert [Ds.block(r).global_channels for r in Ds.levels] == [6, 6]
    clone = pickle.loads(pickle.dumps(Ds))
    x = {4: torch.randn([2, 3, 4, 4]), 8: torch.randn([2, 3, 8, 8]), 16: torch.randn([2, 3, 16, 16])}
    with torch.no_grad():
        for r, s in Ds(x).items():
            torch.testing.assert_close(clone(x)[r], s, rtol=0, atol=0)


def _spread_batches(n, spread, generator):
    """Pairs (lo [n, 3, 4, 4], hi [n, 3, 8, 8]) of noise images whose mean colours vary with std `spread` per image;
    lo is the 2x2 box downscale of hi (a consistent pair)."""
    hi = torch.randn([n, 3, 8, 8], generator=generator) + spread * torch.randn([n, 3, 1, 1], generator=generator)
    return F.avg_pool2d(hi, 2), hi


def _trained_loss(global_channels, steps=300):
    """Logistic discriminator loss after training a linear local block (depth 0) with or without the perceptron to
    tell images with mean-colour spread 0.25 (real) from 1.0 (fake): same distribution of every pixel's mean."""
    torch.manual_seed(0)
    D = pair_disc.PairDiscriminator(8, img_channels=3, depth=0, global_channels=global_channels)
    opt = torch.optim.Adam(D.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        real, fake = _spread_batches(64, 0.25, gen), _spread_batches(64, 1.0, gen)
        loss = F.softplus(-D(*real)).mean() + F.softplus(D(*fake)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return sum(losses[-50:]) / 50


def test_the_perceptron_sees_the_spread_of_the_images_mean_colours():
    local_only = _trained_loss(0)
    with_global = _trained_loss(16)
    # A local linear score is linear in the images, so it cannot tell two batches with equal means apart: chance is
    # 2 log 2 = 1.386 for the summed loss. The perceptron separates them well.
    assert local_only > 1.3, local_only
    assert with_global < 0.9, with_global


def test_fsr_pair_global_trains_snapshots_and_cli(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair_global=8),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert plugin.cfg.pair_global == 8
    os.makedirs(tmp_path / 'run')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    block = plugin.pairs.block(16)
    assert block.global_channels == 8
    # The D optimiser trained the perceptron (its weights moved from where they started).
    assert block.global_out.bias.abs().item() > 0
    snaps = sorted(p for p in os.listdir(tmp_path / 'run') if p.startswith('network-snapshot-'))
    with open(tmp_path / 'run' / snaps[-1], 'rb') as f:
        pairs = pickle.load(f)['extra_modules']['fsr.pairs']
    assert pairs.block(8).global_channels == 8
    torch.testing.assert_close(pairs.block(16).global_fc.weight, block.global_fc.weight, rtol=0, atol=0)
    # Off by default.
    assert make_plugin(dict(fsr=True), dict(training_set_kwargs=dict(resolution=16))).cfg.pair_global == 0
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + ['--fsr=1', '--fsr-pair-global=16'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_pair_global": 16' in res.stdout
    res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', '--fsr-pair-global=-1'], tmp_path)
    assert res.returncode != 0 and '--fsr-pair-global' in res.stderr, res.stderr[-2000:]
