"""CPU timings of the resampling ops against their naive composition, in one process.

For StyleGAN2-sized tensors (default x [32, 128, 16, 16], 4x4 [1,3,3,1] filter) it times
upsample2d / downsample2d / conv2d_resample (synthesis conv0, discriminator conv1 and skip) in float32
and bfloat16, NCHW and channels_last, forward and forward+backward, and prints ms/call plus a
"GB/s" figure = (bytes of x + bytes of the output) / time. The naive composition is the literal
definition: zero insertion, padding, depthwise conv2d with the flipped filter, subsampling by slicing.
Prints only; asserts nothing.

Usage: python bench/bench_resample_ops.py [--threads N] [--repeats R] [--shape 32 128 16 16] [--no-backward]

Note: on some virtual machines large (>= 16 MiB) allocations are returned to the OS after every op and
page-faulted back in, which dominates these timings; compare with
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296 .
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch_utils.ops import conv2d_resample as c2r  # noqa: E402
from torch_utils.ops import upfirdn2d  # noqa: E402

#----------------------------------------------------------------------------
# Naive composition (the definition, step by step).

def naive_upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0):
    n, c, h, w = x.shape
    f2 = (f if f.ndim == 2 else torch.outer(f, f)) * gain
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, list(padding))
    kernel = f2.flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, kernel, groups=c)
    return x[:, :, ::down, ::down]


def naive_upsample2d(x, f, up=2):
    fw = f.shape[-1]
    p = (fw + up - 1) // 2, (fw - up) // 2
    return naive_upfirdn2d(x, f, up=up, padding=(p[0], p[1], p[0], p[1]), gain=up * up)


def naive_downsample2d(x, f, down=2):
    fw = f.shape[-1]
    p = (fw - down + 1) // 2, (fw - down) // 2
    return naive_upfirdn2d(x, f, down=down, padding=(p[0], p[1], p[0], p[1]))


def naive_conv2d_resample(x, w, f, up=1, down=1, padding=0, flip_weight=True):
    fw = f.shape[-1]
    p0 = p1 = padding
    if up > 1:
        p0, p1 = p0 + (fw + up - 1) // 2, p1 + (fw - up) // 2
    if down > 1:
        p0, p1 = p0 + (fw - down + 1) // 2, p1 + (fw - down) // 2
    x = naive_upfirdn2d(x, f if up > 1 else torch.ones(1, 1), up=up, padding=(p0, p1, p0, p1), gain=up * up)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]))
    if down > 1:
        x = naive_upfirdn2d(x, f, down=down)
    return x

#----------------------------------------------------------------------------

def time_call(fn, repeats):
    fn()  # warm-up (allocations, oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def run_case(name, fast, naive, x, repeats, backward):
    y = fast(x)
    y_naive = naive(x)
    diff = (y.float() - y_naive.float()).abs().max().item()
    nbytes = x.numel() * x.element_size() + y.numel() * y.element_size()
    rows = []
    for label, fn in (('fast', fast), ('naive', naive)):
        med, best = time_call(lambda: fn(x), repeats)
        rows.append((label, 'fwd', med, best))
        if backward:
            xg = x.detach().requires_grad_(True)
            dy = torch.randn_like(y)
            med, best = time_call(lambda: torch.autograd.grad(fn(xg), xg, dy), repeats)
            rows.append((label, 'fwd+bwd', med, best))
    for label, kind, med, best in rows:
        gbs = nbytes / best / 1e9 if kind == 'fwd' else float('nan')
        print(f'{name:<34} {label:<6} {kind:<8} {med * 1e3:9.2f} {best * 1e3:9.2f} {gbs:8.2f}', flush=True)
    print(f'{"":<34} max |fast - naive| = {diff:.3g}', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--shape', type=int, nargs=4, default=[32, 128, 16, 16], metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--no-backward', action='store_true')
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, shape {args.shape}, '
          f'GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "")!r}')
    print(f'{"case":<34} {"impl":<6} {"pass":<8} {"med ms":>9} {"min ms":>9} {"GB/s":>8}')

    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    n, c, h, w = args.shape
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(n, c, h, w, generator=gen).to(dtype).contiguous(memory_format=memory_format)
            w3 = (torch.randn(c, c, 3, 3, generator=gen) / (3 * c ** 0.5)).to(dtype)
            w1 = (torch.randn(c, c, 1, 1, generator=gen) / c ** 0.5).to(dtype)
            tag = f'{str(dtype).replace("torch.", "")}/{"cl" if memory_format == torch.channels_last else "nchw"}'
            cases = [
                ('upsample2d', lambda t: upfirdn2d.upsample2d(t, f), lambda t: naive_upsample2d(t, f)),
                ('downsample2d', lambda t: upfirdn2d.downsample2d(t, f), lambda t: naive_downsample2d(t, f)),
                ('c2r up2 3x3 (G conv0)',
                 lambda t: c2r.conv2d_resample(t, w3, f=f, up=2, padding=1, flip_weight=False),
                 lambda t: naive_conv2d_resample(t, w3, f, up=2, padding=1, flip_weight=False)),
                ('c2r down2 3x3 (D conv1)',
                 lambda t: c2r.conv2d_resample(t, w3, f=f, down=2, padding=1),
                 lambda t: naive_conv2d_resample(t, w3, f, down=2, padding=1)),
                ('c2r down2 1x1 (D skip)',
                 lambda t: c2r.conv2d_resample(t, w1, f=f, down=2),
                 lambda t: naive_conv2d_resample(t, w1, f, down=2)),
            ]
            for name, fast, naive in cases:
                run_case(f'{name} {tag}', fast, naive, x, args.repeats, not args.no_backward)


if __name__ == '__main__':
    main()
