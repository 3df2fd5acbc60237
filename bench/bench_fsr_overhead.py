"""Overhead of the FSR plugin on whole training iterations (prints figures, asserts nothing).

Target (issue): a training iteration with all FSR components on costs at most 1.15x the plain iteration at the
benchmark configuration (train.py --cfg=cpu: 32x32 RGB, channel_base 4096, channel_max 128, mapping 2 layers, batch 32,
CPU). The figure that matters is the ratio FSR / plain, measured in one process.

Every measurement is a real `training_loop` run (the host loop: data loading, G and D phases, lazy R1 every 16
iterations, EMA, ADA, stats) set up exactly as train.py does it, FSR included through the plugin's own entry points
(update_training_options, make_plugin). A run does 1 + --iters iterations; the first (start-up) is left out and img/s
is taken over the other --iters (use a multiple of 16 so the lazy R1 and pair-R1 phases are counted at their true
rate). One child process per precision runs all modes in --rounds alternating rounds (the order is reversed every
other round), so machine noise hits every mode alike; the ratio of a mode is the median over rounds of the per-round
ratio mode / plain. Two clocks: wall clock (img/s) and the CPU time of the process (img/cpu-s, all its threads; the
DataLoader worker is a separate process and identical in all modes). On a shared machine the CPU-time ratio is the
stable one; use --threads 1 there (the default): with more threads than free cores, spin-waiting makes both clocks
meaningless.

Modes (the 'heads' mode is the minimum FSR: features requested from G, heads on every resolution, no other term):

    plain            the host without plugin
    fsr_all          heads at every resolution + real pyramid + l1 sparsity (weight 0.01) + pair discriminators + R1
    fsr_all_relu     fsr_all with --fsr-relu=1 (ReLU synthesis layers)
    heads            heads only (--fsr-pair=0, sparsity weight 0)
    heads+sparsity   heads + l1 sparsity
    heads+pair       heads + real pyramid + pair discriminators, no pair R1 (--fsr-pair-r1=0)
    heads+pair+r1    heads + real pyramid + pair discriminators + their R1 (gamma = the host's)

    python bench/bench_fsr_overhead.py                                   # fp32 and mixed, all modes
    python bench/bench_fsr_overhead.py --precision fp32 --modes main --rounds 6 --iters 16
"""

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import click  # noqa: E402

from bench.bench_child import emit_result, run_child  # noqa: E402

SPARSITY_WEIGHT = '0.01'
FSR_ALL = ['--fsr=1', '--fsr-sparsity=l1', f'--fsr-sparsity-weight={SPARSITY_WEIGHT}', '--fsr-pair=1']

# train.py flags of every mode (unlisted --fsr* options keep their defaults).
MODES = {
    'plain': [],
    'fsr_all': FSR_ALL,
    'fsr_all_relu': FSR_ALL + ['--fsr-relu=1'],
    'heads': ['--fsr=1', '--fsr-sparsity-weight=0', '--fsr-pair=0'],
    'heads+sparsity': ['--fsr=1', '--fsr-sparsity=l1', f'--fsr-sparsity-weight={SPARSITY_WEIGHT}', '--fsr-pair=0'],
    'heads+pair': ['--fsr=1', '--fsr-sparsity-weight=0', '--fsr-pair=1', '--fsr-pair-r1=0'],
    'heads+pair+r1': ['--fsr=1', '--fsr-sparsity-weight=0', '--fsr-pair=1'],
    'fsr_all+swd': FSR_ALL + ['--fsr-swd=1', '--fsr-swd-pairs=1', '--fsr-head-gain=1'],
    'fsr_all+moments': FSR_ALL + ['--fsr-moments=1', '--fsr-moments-pairs=1', '--fsr-head-gain=1'],
}
MODE_SETS = {'main': ['plain', 'fsr_all'], 'swd': ['plain', 'fsr_all', 'fsr_all+swd'],
             'moments': ['plain', 'fsr_all', 'fsr_all+moments'], 'all': list(MODES)}


# ----------------------------------------------------------------------------------------------------------------------
# Child: one precision, all modes interleaved in one process.

def _training_options(precision, aug, workers, outdir, mode_flags):
    """training_loop kwargs and plugin list for train.py --cfg=cpu + mode_flags, built the way train.py builds them
    (setup_training_options, each plugin package's update_training_options and make_plugin)."""
    import train
    from bench.bench_training_loop import _opts_from_ctx
    argv = ['--outdir', outdir, '--data', 'toy-shapes:res=32,num=2000', '--cfg', 'cpu', '--precision', precision,
            '--aug', aug, '--workers', str(workers), '--metrics', 'none'] + list(mode_flags)
    opts = _opts_from_ctx(train.main.make_context('train.py', argv))
    c = train.setup_training_options(opts)
    plugin_names = train._plugin_option_names()  # pylint: disable=protected-access
    c.plugin_options = {k: v for k, v in opts.items() if k in plugin_names}
    for module in train.PLUGIN_MODULES:
        if hasattr(module, 'update_training_options'):
            module.update_training_options(c, dict(c.plugin_options))
    plugins = [p for p in (m.make_plugin(dict(c.plugin_options), c) for m in train.PLUGIN_MODULES) if p is not None]
    c.max_grid_cells = (4, 4)  # Start-up only: small initial image grids.
    c.image_snapshot_ticks = None
    c.network_snapshot_ticks = None
    c.metrics = []
    kwargs = {k: v for k, v in c.items() if k not in ('desc', 'precision', 'plugin_options', 'device', 'num_gpus')}
    return kwargs, plugins


def _measure(mode, precision, aug, workers, iters, tmp):
    """One training_loop run of 1 + iters iterations. Returns dict(wall=s, cpu=s, nimg=images) of the last `iters`
    iterations (wall clock and CPU time of this process, all its threads)."""
    from training import training_loop
    run_dir = os.path.join(tmp, mode.replace('+', '_'))
    os.makedirs(run_dir, exist_ok=True)
    kwargs, plugins = _training_options(precision, aug, workers, run_dir, MODES[mode])
    batch = kwargs['batch_size']
    # Tick 0 is the first iteration (start-up); tick 1 covers exactly `iters` iterations. The half-image margins keep
    # float rounding of kimg from adding an iteration.
    kwargs['total_kimg'] = ((iters + 1) * batch - 0.5) / 1000
    kwargs['kimg_per_tick'] = (iters * batch - 0.5) / 1000
    stats_path = os.path.join(run_dir, 'stats.jsonl')
    if os.path.exists(stats_path):
        os.remove(stats_path)  # The loop appends; keep only this run's ticks.
    marks = []  # (wall, cpu) at the end of each tick's maintenance (progress_fn), i.e. around the timed tick.

    def progress(cur_kimg, total_kimg):
        del cur_kimg, total_kimg
        marks.append((time.perf_counter(), time.process_time()))
    with contextlib.redirect_stdout(io.StringIO()):
        training_loop.training_loop(run_dir=run_dir, device='cpu', plugins=plugins, progress_fn=progress, **kwargs)
    stats = [json.loads(line) for line in open(stats_path)]
    nimg = round((stats[-1]['Progress/kimg']['mean'] - stats[0]['Progress/kimg']['mean']) * 1000)
    if len(stats) != 2 or len(marks) != 3 or nimg != iters * batch:
        raise RuntimeError(f'{mode}: expected one start-up tick and one tick of {iters * batch} images, got '
                           f'{len(stats)} ticks, {nimg} images')
    # marks: [loop start, end of tick 0, end of tick 1]; tick 1 = the timed iterations (+ its stats maintenance).
    return dict(wall=marks[2][0] - marks[1][0], cpu=marks[2][1] - marks[1][1], nimg=nimg,
                wall_tick=stats[-1]['Timing/sec_per_tick']['mean'])


def child(precision, modes, rounds, iters, aug, workers, threads):
    import torch
    from torch_utils.cpu_allocator import tune_cpu_allocator
    tune_cpu_allocator()
    if threads > 0:
        torch.set_num_threads(threads)
    per_round = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        _measure('plain', precision, aug, workers, 1, tmp)  # Warm-up: imports, allocator, first-call costs.
        for rnd in range(rounds):
            order = modes if rnd % 2 == 0 else modes[::-1]
            for mode in order:
                m = _measure(mode, precision, aug, workers, iters, tmp)
                per_round[mode].append(m)
                print(f'[{precision}] round {rnd + 1}/{rounds} {mode:15s} {m["nimg"] / m["wall"]:6.1f} img/s '
                      f'{m["nimg"] / m["cpu"]:6.1f} img/cpu-s', file=sys.stderr, flush=True)
    emit_result(dict(precision=precision, threads=torch.get_num_threads(), per_round=per_round))


# ----------------------------------------------------------------------------------------------------------------------

def _summarise(result, modes):
    """Per mode: img/s (wall) and img per CPU second over all rounds, and the cost ratio mode / plain per iteration
    (CPU time and wall time; median, min and max over the rounds, each round paired with its own plain run)."""
    plain = result['per_round']['plain']
    rows = []
    for mode in modes:
        runs = result['per_round'][mode]
        row = dict(mode=mode, img_s=sum(r['nimg'] for r in runs) / sum(r['wall'] for r in runs),
                   img_cpu_s=sum(r['nimg'] for r in runs) / sum(r['cpu'] for r in runs))
        for clock in ('cpu', 'wall'):
            ratios = [(r[clock] / r['nimg']) / (p[clock] / p['nimg']) for r, p in zip(runs, plain)]
            row[clock] = (statistics.median(ratios), min(ratios), max(ratios))
        rows.append(row)
    return rows


@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.option('--precision', help='Comma list of precisions: fp32, mixed (bf16 blocks)', default='fp32,mixed',
              show_default=True)
@click.option('--modes', 'mode_set', help='main: plain and fsr_all; swd / moments: also fsr_all with --fsr-swd / '
              '--fsr-moments; all: every component',
              type=click.Choice(sorted(MODE_SETS)), default='all', show_default=True)
@click.option('--rounds', help='Alternating rounds per precision', type=click.IntRange(min=1), default=4,
              show_default=True)
@click.option('--iters', help='Timed iterations per mode and round (multiple of 16: lazy R1 at its true rate)',
              type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--threads', help='torch threads (0 = torch default; 1 gives stable figures on a shared machine)',
              type=click.IntRange(min=0), default=1, show_default=True)
@click.option('--aug', help='Augmentation (as train.py --aug)', type=click.Choice(['ada', 'noaug']), default='ada',
              show_default=True)
@click.option('--workers', help='DataLoader workers (as train.py --workers)', type=click.IntRange(min=0), default=1,
              show_default=True)
@click.option('--child-precision', hidden=True)
def main(precision, mode_set, rounds, iters, threads, aug, workers, child_precision):
    """Img/s of plain vs FSR training iterations and their ratio, per precision (see the module docstring)."""
    modes = MODE_SETS[mode_set]
    if child_precision:
        return child(child_precision, modes, rounds, iters, aug, workers, threads)
    precisions = [p.strip() for p in precision.split(',') if p.strip()]
    for p in precisions:
        if p not in ('fp32', 'mixed'):
            raise click.BadParameter(f'unknown precision {p!r} (fp32, mixed)', param_hint='--precision')
    if iters % 16:
        click.echo(f'note: --iters={iters} is not a multiple of 16; the lazy R1 phases are over- or under-counted')
    results = []
    for p in precisions:
        cmd = [sys.executable, os.path.abspath(__file__), '--child-precision', p, '--modes', mode_set,
               '--rounds', str(rounds), '--iters', str(iters), '--threads', str(threads), '--aug', aug,
               '--workers', str(workers)]
        result = run_child(cmd, p)
        if result is not None:
            results.append(result)
    print(f'FSR overhead, --cfg=cpu (32x32 RGB, channel_base 4096, channel_max 128, batch 32, CPU), aug={aug}, '
          f'{rounds} rounds x {iters} iterations per mode')
    for result in results:
        print(f'\nprecision {result["precision"]}, {result["threads"]} thread(s); '
              f'ratio = cost of one iteration / plain, median [min, max] over rounds')
        print(f'{"mode":16s} {"img/s":>7s} {"img/cpu-s":>9s} {"ratio cpu":>20s} {"ratio wall":>20s}')
        for row in _summarise(result, modes):
            cpu, wall = row['cpu'], row['wall']
            print(f'{row["mode"]:16s} {row["img_s"]:7.1f} {row["img_cpu_s"]:9.1f} '
                  f'{cpu[0]:6.3f} [{cpu[1]:.3f}, {cpu[2]:.3f}] {wall[0]:6.3f} [{wall[1]:.3f}, {wall[2]:.3f}]')
    print('\nratio fsr_all / plain (target <= 1.15), CPU time | wall clock: ' + ', '.join(
        f'{r["precision"]} {row["cpu"][0]:.3f} | {row["wall"][0]:.3f}'
        for r in results for row in _summarise(r, modes) if row['mode'] == 'fsr_all'))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
