"""Tests for torch_utils.misc: constants, shape checks, sampler, weight copying, DDP helpers, module summary."""

import itertools
import json
import os
import re
import sys
import warnings

import numpy as np
import pytest
import torch

from torch_utils import misc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # makes tests/helpers importable
from helpers import distributed_workers, persistent_nets  # noqa: E402  pylint: disable=wrong-import-position


# ------------------------------------------------------------------------------------------------
# constant


def test_constant_values_shape_and_cache():
    c = misc.constant([1, 2, 3])
    assert c.dtype == torch.get_default_dtype() and c.device.type == 'cpu'
    assert torch.equal(c, torch.tensor([1.0, 2.0, 3.0]))
    assert misc.constant([1, 2, 3]) is c                      # cached
    assert misc.constant(np.array([1, 2, 3])) is c            # same bytes/shape/dtype of the numpy value
    assert misc.constant([1, 2, 3], dtype=torch.float64) is not c
    b = misc.constant(0.5, shape=[2, 3])
    assert b.shape == (2, 3) and torch.all(b == 0.5)
    row = misc.constant([1, 2, 3], shape=[4, 3], dtype=torch.int64)
    assert torch.equal(row, torch.tensor([[1, 2, 3]] * 4))
    nhwc = misc.constant(np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5), memory_format=torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc, torch.arange(120, dtype=torch.float32).reshape(2, 3, 4, 5))


# ------------------------------------------------------------------------------------------------
# nan_to_num


@pytest.mark.parametrize('kwargs', [dict(), dict(nan=-1.0, posinf=7.0, neginf=-7.0), dict(nan=0.5)])
def test_nan_to_num_matches_numpy(kwargs):
    x = np.array([1.0, np.nan, np.inf, -np.inf, -2.5], dtype=np.float32)
    expected = np.nan_to_num(x, **kwargs)
    assert np.array_equal(misc.nan_to_num(torch.from_numpy(x), **kwargs).numpy(), expected)
    out = torch.empty(5)
    result = misc.nan_to_num(torch.from_numpy(x), out=out, **kwargs)
    assert result is out and np.array_equal(out.numpy(), expected)
    in_place = torch.from_numpy(x.copy())
    assert misc.nan_to_num(in_place, out=in_place, **kwargs) is in_place  # the training loop's gradient clean-up
    assert np.array_equal(in_place.numpy(), expected)
    with pytest.raises(TypeError):
        misc.nan_to_num(x)


# ------------------------------------------------------------------------------------------------
# assert_shape, profiled_function, suppress_tracer_warnings


def test_assert_shape():
    x = torch.zeros(2, 3, 4)
    misc.assert_shape(x, [2, 3, 4])
    misc.assert_shape(x, [None, 3, None])
    with pytest.raises(AssertionError, match=r'Wrong number of dimensions: got shape \[2, 3, 4\].*expected \[2, 3\]'):
        misc.assert_shape(x, [2, 3])
    with pytest.raises(AssertionError, match=r'dimension 2: got 4, expected 5'):
        misc.assert_shape(x, [2, None, 5])


def test_assert_shape_under_tracing():
    def fn(x):
        misc.assert_shape(x, [None, 3])
        return x * 2
    with warnings.catch_warnings():
        warnings.simplefilter('error', torch.jit.TracerWarning)  # the check itself must not warn
        warnings.simplefilter('ignore', DeprecationWarning)
        traced = torch.jit.trace(fn, torch.ones(2, 3))
    assert torch.equal(traced(torch.ones(4, 3)), torch.full([4, 3], 2.0))

    def bad(x):
        misc.assert_shape(x, [None, 4])
        return x
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        with pytest.raises(AssertionError, match=r'got shape \[2, 3\], expected \[None, 4\]'):
            torch.jit.trace(bad, torch.ones(2, 3))


def test_profiled_function_records_its_name():
    @misc.profiled_function
    def my_profiled_op(x, scale=1.0):
        """Doc kept."""
        return x * scale
    assert my_profiled_op.__name__ == 'my_profiled_op' and my_profiled_op.__doc__ == 'Doc kept.'
    with torch.autograd.profiler.profile() as prof:
        y = my_profiled_op(torch.ones(3), scale=2.0)
    assert torch.equal(y, torch.full([3], 2.0))
    assert 'my_profiled_op' in [event.name for event in prof.function_events]


def test_suppress_tracer_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with misc.suppress_tracer_warnings():
            warnings.warn('inside', torch.jit.TracerWarning)
            warnings.warn('other', UserWarning)
        warnings.warn('outside', torch.jit.TracerWarning)
    messages = [str(w.message) for w in caught]
    assert messages == ['other', 'outside']


# ------------------------------------------------------------------------------------------------
# InfiniteSampler


def _reference_stream(n, count, seed=0, window_size=0.5, shuffle=True, block=4096):
    """Direct transcription of the documented algorithm (numpy array, modulo arithmetic)."""
    rnd = np.random.RandomState(seed)
    order = rnd.permutation(n) if shuffle else np.arange(n)
    window = int(np.rint(n * window_size)) if shuffle else 0
    out = []
    idx = 0
    while len(out) < count:
        offsets = rnd.randint(window, size=block) if window >= 2 else np.zeros(block, dtype=np.int64)
        for b in range(block):
            if len(out) == count:
                break
            i = idx % n
            out.append(int(order[i]))
            if window >= 2:
                j = (i - offsets[b]) % n
                order[i], order[j] = order[j], order[i]
            idx += 1
    return out


def _take(sampler, count):
    return [int(i) for i in itertools.islice(iter(sampler), count)]


def test_sampler_matches_reference_and_is_deterministic():
    stream = _take(misc.InfiniteSampler(range(37), seed=3), 5000)
    assert stream == _reference_stream(37, 5000, seed=3)
    assert stream == _take(misc.InfiniteSampler(range(37), seed=3), 5000)
    assert stream != _take(misc.InfiniteSampler(range(37), seed=4), 5000)
    assert set(stream) == set(range(37))
    counts = np.bincount(stream, minlength=37)
    assert counts.min() > 0.5 * 5000 / 37 and counts.max() < 1.5 * 5000 / 37


def test_sampler_first_pass_is_a_permutation_when_unshuffled_window():
    n = 20
    no_window = _take(misc.InfiniteSampler(range(n), seed=1, window_size=0), 3 * n)
    assert sorted(no_window[:n]) == list(range(n))
    assert no_window[:n] == no_window[n:2 * n] == no_window[2 * n:]   # no window: the same permutation each pass
    shuffled = _take(misc.InfiniteSampler(range(n), seed=1), 3 * n)
    assert shuffled[n:2 * n] != shuffled[2 * n:]                       # the window keeps changing the order
    assert _take(misc.InfiniteSampler(range(5), shuffle=False), 12) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize('num_replicas', [2, 3])
def test_sampler_strides_across_replicas(num_replicas):
    global_stream = _take(misc.InfiniteSampler(range(23), seed=7), 300 * num_replicas)
    for rank in range(num_replicas):
        rank_stream = _take(misc.InfiniteSampler(range(23), rank=rank, num_replicas=num_replicas, seed=7), 300)
        assert rank_stream == global_stream[rank::num_replicas]


@pytest.mark.parametrize('rank, num_replicas, skip', [(0, 1, 0), (0, 1, 13), (0, 1, 5000), (1, 2, 2100), (2, 3, 7)])
def test_sampler_start_index_resumes_exactly(rank, num_replicas, skip):
    kwargs = dict(rank=rank, num_replicas=num_replicas, seed=11)
    full = _take(misc.InfiniteSampler(range(29), **kwargs), skip + 200)
    resumed = _take(misc.InfiniteSampler(range(29), start_index=skip, **kwargs), 200)
    assert resumed == full[skip:]


def test_sampler_with_dataloader():
    data = torch.arange(10, dtype=torch.float32) * 10
    dataset = torch.utils.data.TensorDataset(data)
    sampler = misc.InfiniteSampler(dataset, seed=2)
    loader = iter(torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=4))
    batch = next(loader)[0]
    assert torch.equal(batch, data[_take(misc.InfiniteSampler(dataset, seed=2), 4)])


@pytest.mark.parametrize('kwargs, pattern', [
    (dict(rank=2, num_replicas=2), 'rank'), (dict(num_replicas=0), 'num_replicas'),
    (dict(window_size=1.5), 'window_size'), (dict(start_index=-1), 'start_index'), (dict(seed=-1), 'seed'),
])
def test_sampler_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        misc.InfiniteSampler(range(4), **kwargs)
    with pytest.raises(ValueError, match='empty'):
        misc.InfiniteSampler([])


# ------------------------------------------------------------------------------------------------
# Parameters and buffers


class _Net(torch.nn.Module):
    def __init__(self, hidden=4, extra=False):
        super().__init__()
        self.fc = torch.nn.Linear(3, hidden)
        self.out = torch.nn.Linear(hidden, 2)
        self.register_buffer('w_avg', torch.zeros(hidden))
        if extra:
            self.extra = torch.nn.Parameter(torch.ones(5))


def test_params_and_buffers_lists():
    net = _Net(extra=True)
    names = [name for name, _ in misc.named_params_and_buffers(net)]
    assert names == ['extra', 'fc.weight', 'fc.bias', 'out.weight', 'out.bias', 'w_avg']  # own params first
    tensors = misc.params_and_buffers(net)
    assert [t.shape for t in tensors] == [t.shape for _, t in misc.named_params_and_buffers(net)]
    assert tensors[-1] is net.w_avg
    with pytest.raises(TypeError):
        misc.params_and_buffers('not a module')


def test_copy_params_and_buffers_copies_values_and_keeps_flags():
    src, dst = _Net(), _Net(extra=True)
    src.w_avg.fill_(3.0)
    src.double()  # dtype is converted on copy
    dst.out.weight.requires_grad_(False)
    extra_before = dst.extra.detach().clone()
    report = misc.copy_params_and_buffers(src, dst)
    for name, tensor in misc.named_params_and_buffers(dst):
        if name == 'extra':
            assert torch.equal(tensor, extra_before)   # absent in src: left untouched
        else:
            expected = dict(misc.named_params_and_buffers(src))[name].float()
            assert tensor.dtype == torch.float32 and torch.equal(tensor, expected)
    assert dst.fc.weight.requires_grad and not dst.out.weight.requires_grad
    assert dst.fc.weight.grad_fn is None and dst.fc.weight.is_leaf
    assert report.missing == ['extra'] and report.unused == [] and report.shape_mismatch == []
    with pytest.raises(AssertionError, match='extra'):
        misc.copy_params_and_buffers(src, dst, require_all=True)


def test_copy_params_and_buffers_shape_errors():
    with pytest.raises(ValueError, match=r"cannot copy 'fc.weight': source shape \(4, 3\), destination shape \(6, 3\)"):
        misc.copy_params_and_buffers(_Net(hidden=4), _Net(hidden=6))
    src, dst = torch.nn.Module(), torch.nn.Module()
    src.register_buffer('p', torch.tensor([0.25]))
    dst.register_buffer('p', torch.zeros(3))
    report = misc.copy_params_and_buffers(src, dst)  # broadcast-compatible shapes are copied, and reported
    assert torch.equal(dst.p, torch.full([3], 0.25))
    assert report.shape_mismatch == [('p', (1,), (3,))]


def test_match_params_and_buffers_report():
    src = _Net(hidden=4, extra=True)
    dst = torch.nn.Module()
    dst.fc = torch.nn.Linear(3, 4)
    dst.out = torch.nn.Linear(5, 2)
    dst.new = torch.nn.Linear(1, 1)
    report = misc.match_params_and_buffers(src, dst)
    assert report.matched == ['fc.weight', 'fc.bias', 'out.bias']
    assert report.missing == ['new.weight', 'new.bias']
    assert report.unused == ['extra', 'w_avg']
    assert report.shape_mismatch == [('out.weight', (2, 4), (2, 5))]


# ------------------------------------------------------------------------------------------------
# DDP helpers


def test_ddp_sync_plain_module_and_single_process_consistency():
    net = _Net()
    with misc.ddp_sync(net, sync=False):
        net.fc(torch.ones(1, 3)).sum().backward()
    assert net.fc.weight.grad is not None
    with pytest.raises(TypeError):
        with misc.ddp_sync('x', sync=True):
            pass
    assert not torch.distributed.is_initialized()
    misc.check_ddp_consistency(net)  # no process group: nothing to compare, must not raise


def test_check_ddp_consistency_two_processes(tmp_path):
    torch.multiprocessing.spawn(distributed_workers.ddp_consistency_worker,
                                args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        outcome = json.loads((tmp_path / f'ddp{rank}.json').read_text())
        assert outcome['ignored'] == 'ok'   # 'bad' differs but is ignored; NaN buffers compare equal
        assert re.fullmatch(r'error: tensors differ across ranks: Linear\.bad', outcome['checked'])


# ------------------------------------------------------------------------------------------------
# Module summary


class _TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        h = self.trunk(x)
        return h, self.head(h).double()


def _table_rows(text):
    return [line.split() for line in text.splitlines() if line.strip()]


def test_print_module_summary_table(capsys):
    net = persistent_nets.TinyNet(3, 2, num_blocks=3)
    x = torch.randn(4, 3)
    out = misc.print_module_summary(net, [x])
    assert torch.equal(out, net(x))
    rows = _table_rows(capsys.readouterr().out)
    assert rows[0] == ['Module', 'Parameters', 'Buffers', 'Output', 'shape', 'Datatype']
    by_name = {row[0]: row for row in rows}
    assert by_name['blocks.1.fc'][1] == str(8 * 8 + 8) and by_name['blocks.1.fc'][-1] == 'float32'
    assert by_name['blocks.1'][2] == '8'  # the block's own buffer
    assert by_name['<top-level>'][-3:-1] == ['[4,', '2]']
    total = by_name['Total']
    assert int(total[1]) == sum(p.numel() for p in net.parameters())
    assert int(total[2]) == sum(b.numel() for b in net.buffers())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())  # hooks removed


def test_print_module_summary_nesting_and_tuple_outputs(capsys):
    net = _TwoHeads()
    h, y = misc.print_module_summary(net, torch.ones(2, 3), max_nesting=1)
    assert h.shape == (2, 4) and y.dtype == torch.float64
    rows = _table_rows(capsys.readouterr().out)
    names = [row[0] for row in rows]
    assert 'trunk.0' not in names and 'trunk' in names      # depth 2 folded into its parent
    assert '<top-level>:0' in names and '<top-level>:1' in names
    assert rows[names.index('<top-level>:1')][-1] == 'float64'
    assert rows[names.index('trunk')][1] == str(3 * 4 + 4)
    capsys.readouterr()
    misc.print_module_summary(net, [torch.ones(2, 3)], max_nesting=0)
    rows = _table_rows(capsys.readouterr().out)
    names = [row[0] for row in rows]
    assert 'trunk' not in names and rows[names.index('<top-level>:0')][1] == str(16 + 10)
