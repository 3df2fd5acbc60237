"""Statistics reported from anywhere in the code and collected centrally, summed across processes.

Any code calls ``report('Loss/G/loss', tensor)``; the training loop owns a ``Collector`` and calls
``update()`` once per tick, then reads ``num/mean/std`` or ``as_dict()``. Values are accumulated as
(count, sum, sum of squares) in float64 on the device they come from (no host sync per report) and, when
``torch.distributed`` is initialised, summed across ranks by an all-reduce during ``Collector.update()``.

Each Collector sees the values reported after its creation, split into intervals by its update() calls;
several collectors (e.g. the tick statistics and the ADA heuristic) read the same reports independently.
Interval moments are summed directly (never as differences of running totals), so precision does not decay
over a long run.

Non-finite values are kept, not dropped: a NaN reported under a name makes that name's mean and std NaN
for that interval (an inf makes the mean +-inf and the std NaN), so a diverged loss is visible in the logs
and can be detected by the training loop. Other names and later intervals are unaffected.

Multi-process use: call ``init_multiprocessing(rank, sync_device)`` in every process before the first
Collector is built; building a Collector and calling ``update()`` are collective calls, made by every rank
in the same order. Names reported on only some ranks are handled (the name sets are exchanged first).
"""

import re
import weakref

import numpy as np
import torch

import dnnlib

_num_moments = 3                 # [count, sum, sum of squares]
_counter_dtype = torch.float64   # accumulation and reduction precision

_rank = 0                # rank of this process
_sync_device = None      # device used for the cross-process all-reduce; None = no reduction
_counters = dict()       # name -> {device: tensor[_num_moments]} reported but not yet collected
_collectors = weakref.WeakSet()  # live Collectors; collected deltas are handed to each matching one


def init_multiprocessing(rank, sync_device):
    """Set this process's rank and the device for cross-process reduction (None for single-process use).

    With torch.distributed initialised, sync_device must suit the backend (the rank's CUDA device for NCCL,
    CPU for gloo).
    """
    global _rank, _sync_device  # pylint: disable=global-statement
    if not (isinstance(rank, int) and rank >= 0):
        raise ValueError(f'init_multiprocessing: rank must be a non-negative int, got {rank!r}')
    _rank = rank
    _sync_device = None if sync_device is None else torch.device(sync_device)


def report(name, value):
    """Accumulate value (a Python number, sequence, numpy array or tensor of any shape) under name.

    Every element counts once. Empty values only register the name. Returns value unchanged.
    """
    if not isinstance(name, str) or len(name) == 0 or '\n' in name:
        raise ValueError(f'report: name must be a non-empty single-line string, got {name!r}')
    per_device = _counters.setdefault(name, dict())
    if isinstance(value, torch.Tensor):
        elems = value.detach()
    else:
        elems = torch.as_tensor(np.asarray(value, dtype=np.float64))
    elems = elems.flatten().to(_counter_dtype)
    if elems.numel() == 0:
        return value
    moments = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])
    device = moments.device
    if device not in per_device:
        per_device[device] = torch.zeros_like(moments)
    per_device[device].add_(moments)
    return value


def report0(name, value):
    """Like report(), but only rank 0 contributes values (other ranks only register the name)."""
    report(name, value if _rank == 0 else [])
    return value


def _distributed():
    return _sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized()


def _union_of_names_across_ranks(names):
    """Sorted union of the name lists of all ranks, exchanged as byte tensors on the sync device."""
    world_size = torch.distributed.get_world_size()
    payload = '\n'.join(sorted(names)).encode('utf-8')
    length = torch.tensor([len(payload)], dtype=torch.int64, device=_sync_device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    torch.distributed.all_gather(lengths, length)
    max_length = max(int(value) for value in lengths)
    buffer = torch.zeros([max(max_length, 1)], dtype=torch.uint8, device=_sync_device)
    if len(payload) > 0:
        buffer[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(_sync_device)
    buffers = [torch.zeros_like(buffer) for _ in range(world_size)]
    torch.distributed.all_gather(buffers, buffer)
    union = set()
    for rank_length, rank_buffer in zip(lengths, buffers):
        text = bytes(rank_buffer[:int(rank_length)].cpu().tolist()).decode('utf-8')
        union.update(name for name in text.split('\n') if name)
    return sorted(union)


def _sync(names):
    """Collect pending counters of names (plus names any other rank has for the same call), sum them across
    ranks, and hand the per-name deltas to every live Collector whose regex matches."""
    if _distributed() and torch.distributed.get_world_size() > 1:
        all_names = _union_of_names_across_ranks(names)
    else:
        all_names = sorted(names)
    if len(all_names) == 0:
        return

    device = _sync_device if _distributed() else torch.device('cpu')
    deltas = []
    for name in all_names:
        delta = torch.zeros([_num_moments], dtype=_counter_dtype, device=device)
        for counter in _counters.setdefault(name, dict()).values():
            delta.add_(counter.to(device))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)
    if _distributed():
        torch.distributed.all_reduce(deltas)
    deltas = deltas.cpu()
    for collector in list(_collectors):
        for idx, name in enumerate(all_names):
            collector._receive(name, deltas[idx])  # pylint: disable=protected-access


class Collector:
    """Reads the statistics reported since its previous update(), for names fully matching regex.

    keep_previous=True: a name with no new reports keeps the values of the last interval that had some;
    False: such a name reads num=0, mean=std=nan.
    """

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._pending = dict()      # name -> (count, sum, sumsq) received since the last update()
        self._moments = dict()      # name -> (count, sum, sumsq) of the current interval
        _sync(self.names())         # reports made before this collector existed are not its business
        _collectors.add(self)

    def names(self):
        """Names reported so far (by this process) that match the regex, in order of first report."""
        return [name for name in _counters if self._regex.fullmatch(name)]

    def _receive(self, name, delta):
        if self._regex.fullmatch(name):
            if name in self._pending:
                self._pending[name] = self._pending[name] + delta
            else:
                self._pending[name] = delta.clone()

    def update(self):
        """Take in everything reported since the last update (a collective call when distributed)."""
        _sync(self.names())
        if not self._keep_previous:
            self._moments.clear()
        for name, delta in self._pending.items():
            if float(delta[0]) != 0:
                self._moments[name] = delta
        self._pending.clear()

    def _get_delta(self, name):
        if not isinstance(name, str):
            raise TypeError(f'statistic name must be a str, got {type(name).__name__}')
        return self._moments.get(name, None)

    def num(self, name):
        """Number of scalars reported under name in the interval (0 if none)."""
        delta = self._get_delta(name)
        return 0 if delta is None else int(delta[0])

    def mean(self, name):
        """Mean of the scalars reported under name in the interval (nan if none)."""
        delta = self._get_delta(name)
        if delta is None or float(delta[0]) == 0:
            return float('nan')
        return float(delta[1] / delta[0])

    def std(self, name):
        """Population standard deviation (ddof=0) of the scalars reported under name (nan if none)."""
        delta = self._get_delta(name)
        if delta is None or float(delta[0]) == 0:
            return float('nan')
        mean = float(delta[1] / delta[0])
        if not np.isfinite(mean):
            return float('nan')
        raw_var = float(delta[2] / delta[0])
        return float(np.sqrt(max(raw_var - mean * mean, 0.0)))

    def as_dict(self):
        """{name: EasyDict(num, mean, std)} for every name returned by names()."""
        stats = dnnlib.EasyDict()
        for name in self.names():
            stats[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    def __getitem__(self, name):
        """Shorthand for mean(name)."""
        return self.mean(name)
