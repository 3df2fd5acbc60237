"""What this CPU offers to reduced precision: does torch's oneDNN backend run bfloat16 in hardware?

`train.py --precision=mixed` runs the networks' upper blocks in bfloat16 on CPU. That is fast where the CPU has
native bfloat16 arithmetic (x86 AVX512-BF16 or AMX, Arm BF16) and many times slower than float32 where oneDNN has to
emulate it (e.g. AVX2-only x86 CPUs): see `bench/bench_networks.py`.
"""

import functools

import torch


@functools.lru_cache(maxsize=None)
def native_bf16():
    """True if oneDNN runs bfloat16 convolutions and matrix products natively on this CPU, False if it emulates them,
    None if this torch build cannot tell (no oneDNN, or the query is missing). Asked once per process."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def capability():
    """torch's name for the CPU's vector instruction set ('AVX2', 'AVX512', 'DEFAULT', ...; '?' if unknown)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return '?'


def mixed_precision_warning(precision, device):
    """The warning to print when `precision` ('mixed', 'fp32', ...) on `device` ('cpu', 'cuda') would emulate
    bfloat16 in software, else None."""
    if precision != 'mixed' or device != 'cpu' or native_bf16() is not False:
        return None
    return (f'Warning: --precision=mixed runs the upper blocks of G and D in bfloat16, which this CPU (torch: '
            f'{capability()}) has no native arithmetic for; oneDNN emulates it, many times slower than float32 '
            f'(bench/bench_networks.py; README, Performance). Use --precision=fp32 (the CPU default) here.')
