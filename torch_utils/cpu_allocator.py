"""CPU memory-allocator tuning for training and inference processes.

Activations of GAN training at batch 32 are tensors of 1-20 MiB. glibc serves allocations above its mmap threshold
(128 KiB at start, adapting upwards) with fresh mmap()s and returns them to the kernel on free, so every such tensor is
page-faulted in again at its next use. On virtualised machines page faults are expensive: measured here on the
benchmark configuration, a G+D forward/backward took 0.4-9.8 s per iteration (erratic) before, and a steady 0.34 s
after raising the mmap threshold to its maximum (32 MiB) and the trim threshold to 1 GiB.

Call `tune_cpu_allocator()` once at the start of a process (train.py, generate.py, calc_metrics.py and the benchmarks
do). It is a no-op where glibc's mallopt is not available.
"""

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024   # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_done = None


def tune_cpu_allocator():
    """Keep freed tensors of up to 32 MiB in the process heap instead of unmapping them. Returns True if applied."""
    global _done  # pylint: disable=global-statement
    if _done is not None:
        return _done
    _done = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = (mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1) and ok
    _done = ok
    return ok
