"""diagnostics.position_gaps / PositionMoments and the fsr_position_stats metric: the fixed pattern of the mean
image and the unevenness of the variance image against hand computations, streaming equals one batch, the floor
sample, the metric's draws, and bad input."""
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_fsr_diagnostics import _calc, _tiny_G, latent_stream_metric, tiny_dataset  # noqa: E402,F401

from fsr_plugin import diagnostics as dg  # noqa: E402
from fsr_plugin import fsr_metrics  # noqa: E402


def test_position_moments_stream_equals_direct():
    torch.manual_seed(0)
    x = torch.randn([37, 3, 5, 6]).double() * 0.3 + 2.0
    mom = dg.PositionMoments()
    for part in x.split(10):
        mom.update(part)
    m, v = mom.mean_var()
    np.testing.assert_allclose(m, x.mean(0).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(v, x.var(0, unbiased=False).numpy(), rtol=0, atol=1e-12)
    assert mom.count == 37 and mom.shape == [3, 5, 6]
    with pytest.raises(ValueError, match='differ from the earlier'):
        mom.update(torch.zeros([2, 3, 5, 5]))
    with pytest.raises(ValueError, match='no images added'):
        dg.PositionMoments().mean_var()


def test_position_gaps_against_hand_computation():
    """Constructed so that the per-position statistics are exact: every sample is the same set of images up to
    a fixed pattern (mean) or a per-position factor (variance)."""
    torch.manual_seed(1)
    base = torch.randn([64, 3, 8, 8]).double() * 0.2
    base = base - base.mean(0, keepdim=True)          # zero mean image: every position's mean exactly 0
    base = base / base.std(0, unbiased=False, keepdim=True) * 0.2   # every position's variance exactly 0.04
    # A pattern 0.1 on the top row in every channel, plus a colour shift (removed as the overall colour).
    pattern = torch.zeros([3, 8, 8]).double()
    pattern[:, 0] = 0.1
    fake = base + pattern + torch.tensor([0.05, -0.02, 0.0]).double()[:, None, None]
    res = dg.position_gaps(base, base, fake)
    d = pattern.numpy() - pattern.numpy().mean(axis=(1, 2), keepdims=True)
    assert res['mean_gap'] == pytest.approx(np.sqrt(np.mean(d ** 2)) / 0.2, rel=1e-9)
    assert res['mean_floor'] == 0.0 and res['var_floor'] == pytest.approx(0.0, abs=1e-9)
    assert res['var_gap'] == pytest.approx(0.0, abs=1e-9) and res['var_scale'] == pytest.approx(1.0, rel=1e-9)
    # Twice the standard deviation on the left half: l(p) = log 4 there, 0 elsewhere.
    gain = torch.ones([1, 1, 8, 8]).double()
    gain[..., :4] = 2.0
    res = dg.position_gaps(base, base, base * gain)
    assert res['var_gap'] == pytest.approx(np.log(4) / 2, rel=1e-9)
    assert res['var_scale'] == pytest.approx(2.0, rel=1e-9)     # exp(mean l) = exp(log(4) / 2)
    assert res['mean_gap'] == pytest.approx(0.0, abs=1e-12)
    # Two independent samples of a stationary process: both about the floor.
    a, b, c = (torch.randn([2000, 3, 8, 8]) * 0.2 for _ in range(3))
    res = dg.position_gaps(a, b, c)
    assert 0.5 < res['mean_gap'] / res['mean_floor'] < 2 and 0.5 < res['var_gap'] / res['var_floor'] < 2
    with pytest.raises(ValueError, match='differ'):
        dg.position_gaps(a, b, torch.zeros([4, 3, 4, 4]))


def test_position_stats_metric_matches_the_diagnostic_on_its_samples(tiny_dataset):
    """The metric's samples are fsr_moment_gap's: draw k compares fakes kn..(k+1)n of one latent stream with reals
    2kn+n..2kn+2n (reference) and 2kn..2kn+n (floor) of the seeded permutation; values are means over draws."""
    n, draws = 5, 2
    res, pool, fakes, perm = latent_stream_metric('fsr_position_stats', tiny_dataset, n, draws)
    for r in (8, 16):
        def level(x):
            return x if r == 16 else F.avg_pool2d(x, 2)
        per_draw = [dg.position_gaps(level(pool[perm[2 * k * n + n:2 * k * n + 2 * n]]),
                                     level(pool[perm[2 * k * n:2 * k * n + n]]),
                                     level(fakes[k * n:(k + 1) * n])) for k in range(draws)]
        for key, name in (('mean_gap', 'mean'), ('mean_floor', 'mean_floor'), ('var_gap', 'var'),
                          ('var_floor', 'var_floor'), ('var_scale', 'var_scale')):
            expected = np.mean([g[key] for g in per_draw])
            assert res[f'fsr_position_{name}_res{r}'] == pytest.approx(expected, rel=1e-6), (r, key)
    assert 'fsr_position_stats' in fsr_metrics.METRIC_NAMES
    with pytest.raises(ValueError, match='needs at least 52 dataset images for 13 draw'):
        _calc('fsr_position_stats', _tiny_G(16), tiny_dataset, fsr_metrics.FSRMetricContext(moment_draws=13))
