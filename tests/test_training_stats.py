"""Tests for torch_utils.training_stats: moments vs numpy, regex, keep_previous, NaN handling, 2-process reduction."""

import json
import math
import os
import sys
import weakref

import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import training_stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # makes tests/helpers importable
from helpers import distributed_workers  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(autouse=True)
def fresh_stats(monkeypatch):
    """Each test starts with empty module-level accumulators, rank 0 and no reduction device."""
    monkeypatch.setattr(training_stats, '_counters', dict())
    monkeypatch.setattr(training_stats, '_collectors', weakref.WeakSet())
    monkeypatch.setattr(training_stats, '_rank', 0)
    monkeypatch.setattr(training_stats, '_sync_device', None)


def test_moments_match_numpy():
    rng = np.random.RandomState(1)
    pieces = [3.5, [1.0, -2.0], rng.randn(7), torch.from_numpy(rng.randn(2, 3)).float(),
              torch.tensor(5, dtype=torch.int32), np.float32(0.25)]
    collector = training_stats.Collector()
    for piece in pieces:
        assert training_stats.report('Loss/x', piece) is piece
    collector.update()
    flat = np.concatenate([np.asarray(p.numpy() if isinstance(p, torch.Tensor) else p, dtype=np.float64).ravel()
                           for p in pieces])
    # The float32 tensor is accumulated from its float32 values.
    assert collector.num('Loss/x') == flat.size == 1 + 2 + 7 + 6 + 1 + 1
    assert collector.mean('Loss/x') == pytest.approx(flat.mean(), rel=1e-6)
    assert collector.std('Loss/x') == pytest.approx(flat.std(), rel=1e-6)
    assert collector['Loss/x'] == collector.mean('Loss/x')


def test_float64_accumulation_keeps_precision():
    # (count, sum, sum of squares) loses relative precision of the variance as offset**2 / variance grows;
    # at offset 1e4 with std ~0.3 float64 still gives ~1e-7.
    values = 1e4 + np.arange(1000) * 1e-3
    collector = training_stats.Collector()
    for chunk in np.split(values, 10):
        training_stats.report('big', torch.from_numpy(chunk))
    collector.update()
    assert collector.mean('big') == pytest.approx(values.mean(), rel=1e-12)
    assert collector.std('big') == pytest.approx(values.std(), rel=1e-6)


def test_single_value_and_unknown_names():
    collector = training_stats.Collector()
    training_stats.report('one', 2.0)
    collector.update()
    assert collector.num('one') == 1 and collector.mean('one') == 2.0 and collector.std('one') == 0.0
    assert collector.num('never') == 0 and math.isnan(collector.mean('never')) and math.isnan(collector.std('never'))


def test_regex_filtering_uses_full_match():
    collector = training_stats.Collector(regex='Loss/.*')
    training_stats.report('Loss/G/loss', 1.0)
    training_stats.report('XLoss/y', 2.0)
    training_stats.report('Timing/total', 3.0)
    collector.update()
    assert collector.names() == ['Loss/G/loss']
    assert list(collector.as_dict().keys()) == ['Loss/G/loss']
    assert collector.num('XLoss/y') == 0


def test_each_update_covers_only_new_reports_and_keep_previous():
    keep = training_stats.Collector(keep_previous=True)
    drop = training_stats.Collector(keep_previous=False)
    training_stats.report('a', [1.0, 3.0])
    training_stats.report('b', 10.0)
    keep.update()
    drop.update()
    assert keep.mean('a') == drop.mean('a') == 2.0
    training_stats.report('a', 6.0)  # only 'a' gets new values in the second interval
    keep.update()
    drop.update()
    assert keep.num('a') == drop.num('a') == 1 and keep.mean('a') == 6.0
    assert keep.num('b') == 1 and keep.mean('b') == 10.0        # kept from the previous interval
    assert drop.num('b') == 0 and math.isnan(drop.mean('b'))     # dropped
    stats = drop.as_dict()
    assert type(stats) is dnnlib.EasyDict and stats.b.num == 0 and stats.a == dict(num=1, mean=6.0, std=0.0)


def test_collectors_are_independent_and_start_empty():
    training_stats.report('a', 1.0)
    early = training_stats.Collector()
    early.update()
    assert early.num('a') == 0   # reports made before the collector existed are not counted
    training_stats.report('a', 3.0)
    late = training_stats.Collector()
    early.update()
    late.update()
    assert early.num('a') == 1 and early.mean('a') == 3.0
    assert late.num('a') == 0


def test_nan_is_kept_visible_and_does_not_poison_other_names():
    collector = training_stats.Collector()
    training_stats.report('Loss/bad', [1.0, float('nan')])
    training_stats.report('Loss/good', [1.0, 2.0])
    collector.update()
    assert collector.num('Loss/bad') == 2
    assert math.isnan(collector.mean('Loss/bad')) and math.isnan(collector.std('Loss/bad'))
    assert collector.mean('Loss/good') == 1.5 and collector.std('Loss/good') == 0.5
    training_stats.report('Loss/bad', [4.0])  # the next interval is clean again
    collector.update()
    assert collector.mean('Loss/bad') == 4.0


def test_report0_and_empty_reports_register_names():
    training_stats.init_multiprocessing(rank=1, sync_device=None)
    collector = training_stats.Collector()
    value = torch.tensor([5.0])
    assert training_stats.report0('Progress/kimg', value) is value
    training_stats.report('empty', [])
    collector.update()
    assert collector.names() == ['Progress/kimg', 'empty']
    assert collector.num('Progress/kimg') == 0 and collector.num('empty') == 0
    training_stats.init_multiprocessing(rank=0, sync_device=None)
    training_stats.report0('Progress/kimg', value)
    collector.update()
    assert collector.num('Progress/kimg') == 1 and collector.mean('Progress/kimg') == 5.0


def test_bad_input():
    with pytest.raises(ValueError):
        training_stats.report('', 1.0)
    with pytest.raises(ValueError):
        training_stats.init_multiprocessing(rank=-1, sync_device=None)
    with pytest.raises(TypeError):
        training_stats.Collector().num(3)


def test_two_process_reduction(tmp_path):
    torch.multiprocessing.spawn(distributed_workers.training_stats_worker,
                                args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f'stats{rank}.json').read_text()) for rank in range(2)]
    assert results[0] == results[1]  # every rank sees the global statistics
    stats = results[0]
    assert sorted(stats.keys()) == ['Loss/a', 'Loss/only0', 'Loss/only1']  # 'Other/x' filtered by the regex
    both = np.concatenate([np.arange(5) * 1 + 0, np.arange(5) * 2 + 1]).astype(np.float64)
    assert stats['Loss/a']['num'] == 10
    assert stats['Loss/a']['mean'] == pytest.approx(both.mean())
    assert stats['Loss/a']['std'] == pytest.approx(both.std())
    assert stats['Loss/only0'] == dict(num=2, mean=3.0, std=1.0)   # rank 1's report0 values are dropped
    assert stats['Loss/only1'] == dict(num=1, mean=7.0, std=0.0)   # reported on one rank only, seen by both


def test_intervals_do_not_inherit_rounding_from_history():
    collector = training_stats.Collector()
    for step in range(5):
        training_stats.report('Timing/total_sec', 1e7 + step)  # one large value per interval
        collector.update()
        assert collector.num('Timing/total_sec') == 1
        assert collector.mean('Timing/total_sec') == 1e7 + step
        assert collector.std('Timing/total_sec') == 0.0
