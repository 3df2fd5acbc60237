"""Speed of bias_act's reference path against the naive op chain (prints figures, asserts nothing).

Shape [32, 128, 32, 32] with a bias, act lrelu (gain sqrt 2), clamp None or 256, float32 and bfloat16.
Measured: forward without grad, and forward + backward to x and b. Times are the CPU time of the calling
thread with one intra-op thread (robust on a shared machine), min and median over the timed repetitions.
With a CUDA device, the CUDA kernel is timed too (wall time, synchronised).

    python bench/bench_bias_act.py [--reps 20] [--threads 1]
"""

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_utils.ops.bias_act import bias_act  # noqa: E402


def naive(x, b, clamp):
    """The straightforward chain: add, activation, gain, clamp, each out of place."""
    y = x + b.reshape(1, -1, 1, 1)
    y = F.leaky_relu(y, 0.2) * math.sqrt(2)
    return y.clamp(-clamp, clamp) if clamp is not None else y


def ours(x, b, clamp):
    return bias_act(x, b, act='lrelu', clamp=clamp, impl='ref')


def measure(fn, reps, clock):
    fn()
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times) * 1e3, statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--reps', type=int, default=20)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f'torch {torch.__version__}, {args.threads} thread(s), clock={clock.__name__}, times in ms (min / median)')

    for dtype in (torch.float32, torch.bfloat16):
        for clamp in (None, 256.0):
            x0 = torch.randn(32, 128, 32, 32, dtype=dtype) * 50
            b0 = torch.randn(128, dtype=dtype)
            dy = torch.randn_like(x0)
            x = x0.clone().requires_grad_(True)
            b = b0.clone().requires_grad_(True)
            for name, fn in (('naive chain', naive), ('bias_act ref', ours)):
                with torch.no_grad():
                    fwd = measure(lambda: fn(x0, b0, clamp), args.reps, clock)

                def fwd_bwd():
                    x.grad = b.grad = None
                    fn(x, b, clamp).backward(dy)
                both = measure(fwd_bwd, args.reps, clock)
                print(f'{str(dtype):15s} clamp={str(clamp):5s} {name:13s} fwd(no grad) {fwd[0]:6.2f} / {fwd[1]:6.2f}'
                      f'   fwd+bwd {both[0]:6.2f} / {both[1]:6.2f}')

    if torch.cuda.is_available():
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(32, 128, 32, 32, dtype=dtype, device='cuda', requires_grad=True)
            b = torch.randn(128, dtype=dtype, device='cuda', requires_grad=True)
            dy = torch.randn_like(x)
            for impl in ('ref', 'cuda'):
                def step():
                    x.grad = b.grad = None
                    bias_act(x, b, act='lrelu', clamp=256, impl=impl).backward(dy)
                    torch.cuda.synchronize()
                t = measure(step, args.reps, time.perf_counter)
                print(f'cuda {str(dtype):15s} impl={impl:4s} fwd+bwd {t[0]:6.3f} / {t[1]:6.3f}')


if __name__ == '__main__':
    main()
