"""Throughput of the real training loop (data loading, phases, EMA, ADA, stats included) on the benchmark
configuration: 32x32 RGB, channel_base 4096, channel_max 128, mapping 2 layers, batch 32 (train.py --cfg=cpu).

Each mode runs `training_loop` in its own subprocess on the built-in toy-shapes data (32x32 RGB) for --kimg kimg with
ticks of --tick kimg; img/s is measured over all ticks after the first (tick 0 is the very first iteration and
includes start-up). Prints a table; asserts nothing.

    python bench/bench_training_loop.py                         # fp32 and mixed (bf16 blocks), with ADA
    python bench/bench_training_loop.py --modes fp32 --aug noaug --kimg 2
    python bench/bench_training_loop.py --modes fp32,fp32+div --kimg 1  # cost of --div=1 (default --div-batch 16)

A mode is fp32 or mixed, optionally followed by +div (the diversity term against mode collapse, train.py --div=1).
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_child import emit_result, run_child  # noqa: E402


def child(args):
    import contextlib
    import io

    import torch

    import train
    from torch_utils.cpu_allocator import tune_cpu_allocator
    from training import training_loop
    tune_cpu_allocator()
    argv = ['--outdir', args.outdir, '--data', 'toy-shapes:res=32,num=2000', '--cfg', 'cpu',
            '--precision', args.mode.split('+')[0],
            '--aug', args.aug, '--workers', str(args.workers)]
    if args.mode.endswith('+div'):
        argv.append('--div=1')
    ctx = train.main.make_context('train.py', argv)
    c = train.setup_training_options(_opts_from_ctx(ctx))
    c.total_kimg = args.kimg
    c.kimg_per_tick = args.tick
    c.image_snapshot_ticks = None
    c.network_snapshot_ticks = None
    c.metrics = []
    ticks = []

    def progress(cur_kimg, total):
        del total
        ticks.append(cur_kimg)
    kwargs = {k: v for k, v in c.items() if k not in ('desc', 'precision', 'plugin_options', 'device', 'num_gpus')}
    os.makedirs(args.outdir, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        training_loop.training_loop(run_dir=args.outdir, device='cpu', progress_fn=progress, **kwargs)
    stats = [json.loads(line) for line in open(os.path.join(args.outdir, 'stats.jsonl'))]
    later = stats[1:]
    sec = sum(s['Timing/sec_per_tick']['mean'] for s in later)
    nimg = (later[-1]['Progress/kimg']['mean'] - stats[0]['Progress/kimg']['mean']) * 1000
    out = dict(mode=args.mode, aug=args.aug, img_s=nimg / sec, sec_per_kimg=sec / nimg * 1000,
               threads=torch.get_num_threads(), ticks=len(later))
    emit_result(out)


def _opts_from_ctx(ctx):
    import dnnlib
    params = dict(ctx.params)
    params.pop('outdir', None)
    params.pop('dry_run', None)
    return dnnlib.EasyDict(params)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--modes', default='fp32,mixed')
    parser.add_argument('--aug', default='ada', choices=['ada', 'noaug'])
    parser.add_argument('--kimg', type=float, default=3)
    parser.add_argument('--tick', type=float, default=0.5)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--mode', help=argparse.SUPPRESS)
    parser.add_argument('--outdir', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return child(args)
    results = []
    modes = args.modes.split(',')
    bad = [m for m in modes if m.split('+')[0] not in ('fp32', 'mixed') or m.count('+') > 1
           or ('+' in m and not m.endswith('+div'))]
    if bad:
        parser.error(f'unknown mode(s) {bad}: use fp32 or mixed, optionally with +div')
    for mode in modes:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, '--mode', mode, '--aug', args.aug, '--kimg', str(args.kimg),
                   '--tick', str(args.tick), '--workers', str(args.workers), '--outdir', os.path.join(tmp, 'run')]
            result = run_child(cmd, mode)
        if result is not None:
            results.append(result)
    base = next((r for r in results if r['mode'] == 'fp32'), None)
    print(f'Training loop, --cfg=cpu (32x32, channel_base 4096, channel_max 128, batch 32), aug={args.aug}, '
          f'{args.kimg} kimg')
    print(f'{"mode":10s} {"img/s":>8s} {"sec/kimg":>9s} {"vs fp32":>8s}')
    for r in results:
        ratio = r['img_s'] / base['img_s'] if base else float('nan')
        print(f'{r["mode"]:10s} {r["img_s"]:8.1f} {r["sec_per_kimg"]:9.1f} {ratio:8.2f}')


if __name__ == '__main__':
    main()
