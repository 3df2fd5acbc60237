"""Miscellaneous torch helpers: cached constants, shape assertions, samplers, weight copying, DDP helpers.

The first four functions (constant, assert_shape, profiled_function, suppress_tracer_warnings) are called by
network source embedded in NVIDIA pickles; their names and signatures are fixed (HOST_CONTRACT.md 1.7).
"""

import contextlib
import functools
import re
import warnings

import numpy as np
import torch

import dnnlib

# ------------------------------------------------------------------------------------------------
# Cached constants.

_constant_cache = dict()


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """Tensor holding a numpy-convertible value, broadcast to shape if given; cached, so do not modify it.

    dtype defaults to torch.get_default_dtype(), device to CPU, memory_format to torch.contiguous_format.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    device = torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape, dtype=dtype, device=device))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


# ------------------------------------------------------------------------------------------------
# nan_to_num (kept for source compatibility; torch has it natively).


def nan_to_num(input, nan=0.0, posinf=None, neginf=None, *, out=None):  # pylint: disable=redefined-builtin
    """Replace NaN by nan, +inf by posinf, -inf by neginf (None: largest / lowest finite value of the dtype)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f'nan_to_num: expected a tensor, got {type(input).__name__}')
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)


# ------------------------------------------------------------------------------------------------
# Tracing-friendly shape checks.


class suppress_tracer_warnings(warnings.catch_warnings):  # pylint: disable=invalid-name
    """Context manager that ignores torch.jit.TracerWarning inside its body."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        return result


def _symbolic_equal(size, ref_size, message):
    """Compare sizes where at least one is a traced tensor: record an assert in the graph instead of raising."""
    with suppress_tracer_warnings():
        size = torch.as_tensor(size)
        ref_size = torch.as_tensor(ref_size)
        torch._assert(torch.equal(size, ref_size), message)  # pylint: disable=protected-access


def _shape_list(tensor):
    """tensor.shape as a list of Python ints (also while tracing, where sizes are tensors)."""
    with suppress_tracer_warnings():
        return [int(size) for size in tensor.shape]


def assert_shape(tensor, ref_shape):
    """Raise AssertionError unless tensor.shape matches ref_shape (a list of ints, None = any size).

    While tracing (torch.jit.trace), sizes that are tensors are compared with torch._assert without
    tracer warnings.
    """
    ref_shape = list(ref_shape)
    if tensor.ndim != len(ref_shape):
        raise AssertionError(
            f'Wrong number of dimensions: got shape {_shape_list(tensor)} ({tensor.ndim} dims), '
            f'expected {ref_shape} ({len(ref_shape)} dims)')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(size, torch.Tensor) or isinstance(ref_size, torch.Tensor):
            message = f'Wrong size for dimension {idx}: got shape {_shape_list(tensor)}, expected {ref_shape}'
            _symbolic_equal(size, ref_size, message)
        elif size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size} '
                                 f'(shape {_shape_list(tensor)} vs expected {ref_shape})')


def profiled_function(fn):
    """Decorator: run fn inside torch.autograd.profiler.record_function(fn.__name__)."""
    @functools.wraps(fn)
    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    return decorator


# ------------------------------------------------------------------------------------------------
# Endless sampler.


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices, shuffled with a sliding swap window, strided across replicas.

    The stream is one global sequence: a seeded permutation of range(len(dataset)) that is walked cyclically;
    after visiting position i, the item there is swapped with position (i - r) mod len, r uniform in
    [0, window_size*len), so the order keeps changing from pass to pass (near the start of the first pass the
    wrap-around can pull an item forward, so it may repeat early). Replica `rank` takes every num_replicas-th
    element of the global sequence starting at rank. The same seed gives the same stream on every machine.
    start_index skips that many items of this rank's stream (for exact resume: iterating with start_index=N
    gives the tail of the unskipped stream after its first N items); skipping costs well under 1 us per global
    item (N * num_replicas of them).
    """

    _RANDOM_BLOCK = 4096  # offsets are drawn in fixed blocks, so the stream is independent of how it is consumed

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5, start_index=0):
        super().__init__()
        num_items = len(dataset)
        if num_items <= 0:
            raise ValueError('InfiniteSampler: dataset is empty')
        if not (isinstance(num_replicas, (int, np.integer)) and num_replicas >= 1):
            raise ValueError(f'InfiniteSampler: num_replicas must be a positive int, got {num_replicas!r}')
        if not (isinstance(rank, (int, np.integer)) and 0 <= rank < num_replicas):
            raise ValueError(f'InfiniteSampler: rank must be in [0, {num_replicas}), got {rank!r}')
        if not 0 <= window_size <= 1:
            raise ValueError(f'InfiniteSampler: window_size must be in [0, 1], got {window_size!r}')
        if not (isinstance(start_index, (int, np.integer)) and start_index >= 0):
            raise ValueError(f'InfiniteSampler: start_index must be a non-negative int, got {start_index!r}')
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f'InfiniteSampler: seed must be in [0, 2**32), got {seed!r}')
        self.dataset = dataset
        self.num_items = num_items
        self.rank = int(rank)
        self.num_replicas = int(num_replicas)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.window_size = window_size
        self.start_index = int(start_index)

    def __iter__(self):
        rnd = np.random.RandomState(self.seed)
        n = self.num_items
        if self.shuffle:
            order = rnd.permutation(n).tolist()
            window = int(np.rint(n * self.window_size))
        else:
            order = list(range(n))
            window = 0
        rank = self.rank
        replicas = self.num_replicas
        to_skip = self.start_index
        i = 0       # position in `order`
        phase = 0   # global index modulo num_replicas
        while True:
            offsets = rnd.randint(window, size=self._RANDOM_BLOCK).tolist() if window >= 2 else None
            for b in range(self._RANDOM_BLOCK):
                if phase == rank:
                    if to_skip > 0:
                        to_skip -= 1
                    else:
                        yield order[i]
                if offsets is not None:
                    j = i - offsets[b]
                    if j < 0:
                        j += n
                    order[i], order[j] = order[j], order[i]
                i += 1
                if i == n:
                    i = 0
                phase += 1
                if phase == replicas:
                    phase = 0


# ------------------------------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module):
    """List of all parameters followed by all buffers of module."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'expected a torch.nn.Module, got {type(module).__name__}')
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module):
    """List of (name, tensor) for all parameters followed by all buffers of module."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'expected a torch.nn.Module, got {type(module).__name__}')
    return list(module.named_parameters()) + list(module.named_buffers())


def match_params_and_buffers(src_module, dst_module):
    """Compare the tensors of two modules by name.

    Returns EasyDict(matched=[names with equal shapes], missing=[dst names absent in src],
    unused=[src names absent in dst], shape_mismatch=[(name, src_shape, dst_shape)]); names in dst order
    (unused in src order), shapes as tuples.
    """
    src_tensors = dict(named_params_and_buffers(src_module))
    dst_tensors = dict(named_params_and_buffers(dst_module))
    report = dnnlib.EasyDict(matched=[], missing=[], unused=[], shape_mismatch=[])
    for name, tensor in dst_tensors.items():
        if name not in src_tensors:
            report.missing.append(name)
        elif src_tensors[name].shape != tensor.shape:
            report.shape_mismatch.append((name, tuple(src_tensors[name].shape), tuple(tensor.shape)))
        else:
            report.matched.append(name)
    report.unused = [name for name in src_tensors if name not in dst_tensors]
    return report


def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy every dst parameter/buffer that has a same-named tensor in src, in place, without autograd.

    dtype/device are converted; shapes must be broadcast-compatible (else ValueError naming the tensor).
    dst names missing in src are skipped unless require_all=True (then AssertionError listing them); extra
    src tensors are ignored. requires_grad flags of dst are kept. Returns the match_params_and_buffers report.
    """
    report = match_params_and_buffers(src_module, dst_module)
    if require_all and report.missing:
        raise AssertionError(f'copy_params_and_buffers: {len(report.missing)} tensor(s) of the destination are '
                             f'missing in the source: {", ".join(report.missing)}')
    src_tensors = dict(named_params_and_buffers(src_module))
    with torch.no_grad():
        for name, tensor in named_params_and_buffers(dst_module):
            if name not in src_tensors:
                continue
            src = src_tensors[name].detach()
            try:
                tensor.copy_(src)
            except RuntimeError as err:
                raise ValueError(f"copy_params_and_buffers: cannot copy '{name}': source shape {tuple(src.shape)}, "
                                 f'destination shape {tuple(tensor.shape)} ({err})') from err
    return report


# ------------------------------------------------------------------------------------------------
# DistributedDataParallel helpers.


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Context manager: inside, gradients of a DDP-wrapped module are all-reduced only if sync is True."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'ddp_sync: expected a torch.nn.Module, got {type(module).__name__}')
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module, ignore_regex=None):
    """Assert that all parameters and buffers are identical on every rank (no-op without torch.distributed).

    Tensor names are prefixed with the module's class name ('Generator.mapping.w_avg'); names fully matching
    ignore_regex are skipped. NaNs compare equal. Every rank raises the same AssertionError on a mismatch.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'check_ddp_consistency: expected a torch.nn.Module, got {type(module).__name__}')
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    mismatched = []
    for name, tensor in named_params_and_buffers(module):
        full_name = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, full_name):
            continue
        local = tensor.detach()
        if local.is_floating_point():
            local = torch.nan_to_num(local)
        reference = local.clone()
        torch.distributed.broadcast(tensor=reference, src=0)
        differs = torch.as_tensor([0.0 if torch.equal(local, reference) else 1.0], device=local.device)
        torch.distributed.all_reduce(differs)
        if float(differs.item()) > 0:
            mismatched.append(full_name)
    if mismatched:
        raise AssertionError(f'tensors differ across ranks: {", ".join(mismatched)}')


# ------------------------------------------------------------------------------------------------
# Module summary table.


def _flatten_tensors(obj):
    """All tensors inside nested tuples/lists/dicts (in order)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _flatten_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _flatten_tensors(item)]
    return []


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run module(*inputs) once (no autograd) and print a table of its submodules; return the outputs.

    Columns: submodule name, parameter count, buffer count, output shape(s), output dtype(s). Each tensor
    is counted once, in the first (innermost) row that owns it; submodules deeper than max_nesting are
    folded into their ancestors. skip_redundant drops rows with no new tensors and no tensor output.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'print_module_summary: expected a torch.nn.Module, got {type(module).__name__}')
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(f'print_module_summary: inputs must be a tensor or a list/tuple, got {type(inputs).__name__}')

    entries = []
    depth = [0]

    def pre_hook(_mod, _inputs):
        depth[0] += 1

    def post_hook(mod, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            entries.append(dnnlib.EasyDict(mod=mod, outputs=_flatten_tensors(outputs)))

    handles = []
    for mod in module.modules():
        handles.append(mod.register_forward_pre_hook(pre_hook))
        handles.append(mod.register_forward_hook(post_hook))
    try:
        with torch.no_grad():
            outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    # Attribute each tensor to the first row (innermost first, because hooks fire in post-order).
    seen = set()
    for entry in entries:
        entry.params = [t for t in entry.mod.parameters() if id(t) not in seen]
        seen.update(id(t) for t in entry.params)
        entry.buffers = [t for t in entry.mod.buffers() if id(t) not in seen]
        seen.update(id(t) for t in entry.buffers)
    if skip_redundant:
        entries = [e for e in entries if len(e.params) or len(e.buffers) or len(e.outputs)]

    names = {mod: name for name, mod in module.named_modules()}
    header = ['Module', 'Parameters', 'Buffers', 'Output shape', 'Datatype']
    rows = [header, ['---'] * len(header)]
    total_params = total_buffers = 0
    for entry in entries:
        name = '<top-level>' if entry.mod is module else names.get(entry.mod, type(entry.mod).__name__)
        num_params = sum(t.numel() for t in entry.params)
        num_buffers = sum(t.numel() for t in entry.buffers)
        shapes = [str(list(t.shape)) for t in entry.outputs] or ['-']
        dtypes = [str(t.dtype).split('.')[-1] for t in entry.outputs] or ['-']
        for idx in range(len(shapes)):
            rows.append([name + (f':{idx}' if len(shapes) > 1 else ''),
                         str(num_params) if num_params and idx == 0 else '-',
                         str(num_buffers) if num_buffers and idx == 0 else '-',
                         shapes[idx], dtypes[idx]])
        total_params += num_params
        total_buffers += num_buffers
    rows += [['---'] * len(header), ['Total', str(total_params), str(total_buffers), '', '']]

    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    print()
    for row in rows:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(row, widths)).rstrip())
    print()
    return outputs
