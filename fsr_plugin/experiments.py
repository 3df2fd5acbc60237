"""The FSR experiments of FSR.md section 5, one command each, each writing <outdir>/report.md with tables and PNGs.

    python -m fsr_plugin.experiments synthetic --outdir=exp/synth --kimg=200 --seeds=0,1,2
    python -m fsr_plugin.experiments real      --outdir=exp/mnist --data=datasets/mnist32.zip --kimg=100
    python -m fsr_plugin.experiments layerwise --outdir=exp/lw --kimg=90
    python -m fsr_plugin.experiments sparsity  --outdir=exp/sp --run=runs/00003-...      (Fig. 5 analogue)
    python -m fsr_plugin.experiments moments   --outdir=exp/mo --run=runs/00003-...      (Fig. 6 analogue)
    python -m fsr_plugin.experiments featsim   --outdir=exp/fs --run=runs/00003-...      (Fig. 7 analogue)

Every experiment trains by running train.py as a subprocess, exactly the command line a user would type (printed in
the report), one run folder per arm and seed under <outdir>/runs/<arm>-seed<s>/, with `--metrics=none` (training is
not slowed by metrics). It then evaluates the snapshots in this process with the fsr_* metrics of the host's registry
(fsr_plugin.snapshot_eval; one evaluation setting for every arm), writes each result as a JSON line to
<outdir>/eval/<arm>-seed<s>/metric-<name>.jsonl, and builds the tables of the report from those files. sparsity,
moments and featsim analyse an existing run with --run (featsim and sparsity also a single pickle with --network)
instead of training one. --dry-run prints the train.py command lines and does nothing else.
"""

import copy
import json
import os
import re
import shutil
import sys
import time

import click
import numpy as np
import torch

import dnnlib
from fsr_plugin import diagnostics
from fsr_plugin import ema_calibration
from fsr_plugin import fsr_metrics
from fsr_plugin import matching
from fsr_plugin import oracle as oracle_lib
from fsr_plugin import plots
from fsr_plugin import snapshot_eval as se
from fsr_plugin.report import Report, command_line, fmt, fmt_spread
from fsr_plugin.train_runs import Run, make_job, run_jobs, train_env, train_seconds
from training import dataset as dataset_lib

DEFAULT_SYNTHETIC_DATA = 'fsr-synthetic:res=32'
DEFAULT_FSR_ARGS = '--fsr-head-kernel=3 --fsr-relu=1 --fsr-unit-atoms=1 --fsr-head-lr=10'
SYNTHETIC_ARMS = ('plain', 'joint', 'layerwise')
GRID_IMAGES = 8
SPREAD_IMAGES = 64  # images per side of the sample-spread table
CALIBRATION_IMAGES = 512  # generated and real images of the EMA recalibration (the command's default)
TEACHER_REFERENCE_DRAWS = 16  # jitter draws per z of the teacher-reference table (E[x_r given z])


# ----------------------------------------------------------------------------------------------------------------------
# Command-line values.

def parse_seeds(text):
    """'0,1,2' or '0-2' (or a mix) -> [0, 1, 2]; raises click.BadParameter."""
    try:
        seeds = dnnlib.util.parse_int_ranges(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--seeds') from None
    if not seeds:
        raise click.BadParameter('no seed given', param_hint='--seeds')
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter(f'repeated seeds in {text!r}', param_hint='--seeds')
    return seeds


def split_args(text, what):
    """Extra command-line arguments given as one string -> list (shell-like quoting)."""
    import shlex
    try:
        return shlex.split(text or '')
    except ValueError as e:
        raise click.BadParameter(f'cannot split {text!r}: {e}', param_hint=what) from None


def open_data(data):
    """(dataset kwargs, resolution, channels, dataset object) for a --data value; raises click.BadParameter with the
    dataset module's message for unknown names or unreadable files."""
    try:
        kwargs = dataset_lib.dataset_kwargs_from_data_arg(data)
        dataset = dnnlib.util.construct_class_by_name(**kwargs)
    except Exception as e:  # any failure to open the dataset is a problem with the argument
        raise click.BadParameter(f'{data!r}: {e}', param_hint='--data') from None
    return kwargs, int(dataset.resolution), int(dataset.num_channels), dataset


def stage_resolutions(resolution, start_res):
    """Resolutions of the layer-wise stages: start_res, 2 start_res, ..., resolution."""
    out, r = [], 4
    while r <= resolution:
        if r >= start_res:
            out.append(r)
        r *= 2
    if not out or out[0] != start_res:
        raise click.BadParameter(f'{start_res} is not a synthesis resolution of {resolution}x{resolution} data '
                                 f'(4, 8, ..., {resolution})', param_hint='--start-res')
    return out


def slug(text):
    """A short folder-safe name for a --data value ('toy-shapes:res=8' -> 'toy-shapes-res8', 'd/mnist32.zip' ->
    'mnist32')."""
    base = os.path.basename(os.path.normpath(text)) if os.path.exists(text) else text
    base = re.sub(r'\.(zip|tar|tgz)$', '', base).replace('=', '')
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', base).strip('-') or 'data'


def show_path(path, root):
    """path relative to root when it lies inside it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, root)
    return path if rel.startswith('..') else rel


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation helpers (results go through the jsonl files, tables are built from what was written).

def eval_metric(run, snapshot_paths, metric, sizes, device, cache=None):
    """Evaluate `metric` on the given snapshots of `run`, appending to <eval_dir>/metric-<metric>.jsonl. Returns the
    written records (in order)."""
    path = os.path.join(run.eval_dir, f'metric-{metric}.jsonl')
    records = []
    for p in snapshot_paths:
        snap = _load(p, device, cache)
        click.echo(f'  {run.name}: {metric} at {os.path.basename(p)}')
        records.append(se.append_record(path, se.evaluate(snap, metric, sizes), snap))
    return records


def moment_gap_at_seeds(run, snap, sizes, metric_seeds, name):
    """fsr_moment_gap of `snap` at each metric seed of `metric_seeds` (sizes otherwise unchanged), appended to
    <eval_dir>/metric-<name>.jsonl with the seed under 'metric_seed'. Returns the records, in seed order."""
    path = os.path.join(run.eval_dir, f'metric-{name}.jsonl')
    records = []
    for seed in metric_seeds:
        click.echo(f'  {run.name}: fsr_moment_gap at metric seed {seed} ({name})')
        result = dict(se.evaluate(snap, 'fsr_moment_gap', sizes.with_seed(seed)), metric_seed=int(seed))
        records.append(se.append_record(path, result, snap))
    return records


def calibrated_moment_gap(run, snap, sizes, mean_images=0, metric_seeds=()):
    """fsr_moment_gap of a copy of `snap` recalibrated by fsr_plugin.ema_calibration (CALIBRATION_IMAGES images,
    seed 1; with mean_images > 0 each level's mean colour moved onto the reals' as well, measured on that many
    images), appended to <eval_dir>/metric-fsr_moment_gap-calibrated.jsonl, with the gains (and shifts) in
    <eval_dir>/ema-calibration.json; the copy is also scored at every further metric seed of `metric_seeds`
    (moment_gap_at_seeds, metric-fsr_moment_gap-calibrated-seeds.jsonl). Returns (record, seed_records, None), or
    (None, [], why) when the heads cannot take a gain."""
    calibrated = copy.deepcopy(snap)
    try:
        gains = ema_calibration.calibrate_snapshot_heads(calibrated, num=CALIBRATION_IMAGES, seed=1)
        shifts = ema_calibration.shift_snapshot_head_means(calibrated, num=mean_images, seed=1) \
            if mean_images >= 1 else {}
    except ValueError as e:
        return None, [], str(e)
    record = dict(gains={str(r): g for r, g in sorted(gains.items())}, images=CALIBRATION_IMAGES, seed=1,
                  snapshot=snap.path)
    if shifts:
        record.update(mean_shifts={str(r): [float(v) for v in s] for r, s in sorted(shifts.items())},
                      mean_images=int(mean_images))
    with open(os.path.join(run.eval_dir, 'ema-calibration.json'), 'wt') as f:
        json.dump(record, f, indent=1)
    click.echo(f'  {run.name}: fsr_moment_gap after EMA recalibration (gains '
               + ' '.join(f'r{r}={g:.3f}' for r, g in sorted(gains.items()))
               + (f'; level means moved onto the reals\', {mean_images} images' if shifts else '') + ')')
    path = os.path.join(run.eval_dir, 'metric-fsr_moment_gap-calibrated.jsonl')
    record = se.append_record(path, se.evaluate(calibrated, 'fsr_moment_gap', sizes), calibrated)
    return record, moment_gap_at_seeds(run, calibrated, sizes, metric_seeds, 'fsr_moment_gap-calibrated-seeds'), None


def calibration_gains_note(calibrated):
    """'name: r4 x1.02, ...; ...' from each run's eval_dir/ema-calibration.json."""
    parts = []
    for run, _records in calibrated:
        with open(os.path.join(run.eval_dir, 'ema-calibration.json')) as f:
            gains = json.load(f)['gains']
        parts.append(f'{run.name} ' + ', '.join(f'r{r} x{float(g):.3f}' for r, g in sorted(gains.items(),
                                                                                       key=lambda kv: int(kv[0]))))
    return '; '.join(parts) if parts else 'none'


def _load(path, device, cache):
    if cache is not None and path in cache:
        return cache[path]
    snap = se.Snapshot(path, device=device)
    if cache is not None:
        cache.clear()  # keep one snapshot in memory
        cache[path] = snap
    return snap


def fresh_eval_dir(root, name):
    """<root>/eval/<name>, emptied (evaluations of an earlier invocation would otherwise be appended to)."""
    path = os.path.join(root, 'eval', name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def per_level(results, pattern):
    """{r: value} for result keys matching pattern with '{r}' standing for the resolution."""
    regex = re.compile('^' + re.escape(pattern).replace(r'\{r\}', r'(\d+)') + '$')
    out = {}
    for key, value in results.items():
        m = regex.match(key)
        if m:
            out[int(m.group(1))] = float(value)
    return out


def ratio(gap, floor):
    if floor is None or gap is None:
        return float('nan')
    if floor > 0:
        return gap / floor
    return 0.0 if gap == 0 else float('inf')


def final_results_by_label(records_by_run, label_of):
    """{label: [the FINAL record's results of each run with that label]} from [(run, records)], in run order."""
    groups = {}
    for run, records in records_by_run:
        groups.setdefault(label_of(run), []).append(records[-1]['results'])
    return groups


def ratio_cell(results, value_key, floor_key):
    """The value / floor report cell (spread over results) of one result key and its floor's key."""
    return fmt_spread([ratio(res[value_key], res[floor_key]) for res in results])


def value_floor_cells(results, value_key, floor_key):
    """[value, floor, value / floor] report cells (spread over runs) of one result key and its floor's key."""
    return [fmt_spread([res[value_key] for res in results]), fmt_spread([res[floor_key] for res in results]),
            ratio_cell(results, value_key, floor_key)]


def moment_rows(records_by_run, label_of):
    """Table rows (label, r, gap_1, floor_1, ratio_1, gap_2, floor_2, ratio_2, learned k/n) from the FINAL
    fsr_moment_gap record of each run, grouped by label (spread over runs)."""
    groups = final_results_by_label(records_by_run, label_of)
    rows = []
    for label, results in groups.items():
        levels = sorted(per_level(results[0], 'fsr_moment_gap1_res{r}'))
        for r in levels:
            learned = sum(int(res[f'fsr_moment_learned_res{r}']) for res in results)
            rows.append([label, r]
                        + value_floor_cells(results, f'fsr_moment_gap1_res{r}', f'fsr_moment_floor1_res{r}')
                        + value_floor_cells(results, f'fsr_moment_gap2_res{r}', f'fsr_moment_floor2_res{r}')
                        + [f'{learned}/{len(results)}'])
    return rows


SEED_MOMENT_HEADERS = ['arm', 'scoring', 'r', 'gap_1 / floor_1', 'gap_2 / floor_2', 'within 2x floor (evaluations)']


def seed_moment_rows(evaluations, label_of):
    """Table rows (label, scoring, r, ratio_1, ratio_2, within k/n) from [(run, scoring, [fsr_moment_gap results at
    each metric seed])]: per label and scoring, each level's gap / floor spread over runs x metric seeds and the
    evaluations that put the level within 2x its floors, then a row 'every level' counting the evaluations that put
    every level there."""
    groups = {}
    for run, scoring, results in evaluations:
        groups.setdefault((label_of(run), scoring), []).extend(results)
    rows = []
    for (label, scoring), results in groups.items():
        levels = sorted(per_level(results[0], 'fsr_moment_gap1_res{r}'))
        n = len(results)
        for r in levels:
            rows.append([label, scoring, r,
                         ratio_cell(results, f'fsr_moment_gap1_res{r}', f'fsr_moment_floor1_res{r}'),
                         ratio_cell(results, f'fsr_moment_gap2_res{r}', f'fsr_moment_floor2_res{r}'),
                         f'{sum(int(res[f"fsr_moment_learned_res{r}"]) for res in results)}/{n}'])
        every = sum(all(int(res[f'fsr_moment_learned_res{r}']) for r in levels) for res in results)
        rows.append([label, scoring, 'every level', '', '', f'{every}/{n}'])
    return rows


def consistency_rows(records_by_run, label_of):
    """Table rows (label, r, paired, unpaired) from the FINAL fsr_level_consistency record of each run, grouped by
    label (spread over runs)."""
    groups = final_results_by_label(records_by_run, label_of)
    rows = []
    for label, results in groups.items():
        for r in sorted(per_level(results[0], 'fsr_consistency_res{r}')):
            rows.append([label, r, fmt_spread([res[f'fsr_consistency_res{r}'] for res in results]),
                         fmt_spread([res[f'fsr_consistency_unpaired_res{r}'] for res in results])])
    return rows


MOMENT_HEADERS = ['arm', 'r', 'gap_1 (mean)', 'floor_1', 'gap_1 / floor_1', 'gap_2 (cov)', 'floor_2',
                  'gap_2 / floor_2', 'within 2x floor (runs)']


def swd_rows(records_by_run, label_of):
    groups = final_results_by_label(records_by_run, label_of)
    rows = []
    for label, results in groups.items():
        for r in sorted(per_level(results[0], 'fsr_swd_res{r}')):
            rows.append([label, r, fmt_spread([res[f'fsr_swd_res{r}'] for res in results])])
        rows.append([label, 'mean', fmt_spread([res['fsr_swd_mean'] for res in results])])
    return rows


POSITION_HEADERS = ['arm', 'r', 'mean pattern', 'floor', 'mean pattern / floor', 'variance unevenness', 'floor',
                    'variance unevenness / floor', 'variance scale']


def position_rows(records_by_run, label_of):
    """Table rows (label, r, mean pattern, floor, ratio, variance unevenness, floor, ratio, variance scale) from the
    FINAL fsr_position_stats record of each run, grouped by label (spread over runs)."""
    groups = final_results_by_label(records_by_run, label_of)
    rows = []
    for label, results in groups.items():
        for r in sorted(per_level(results[0], 'fsr_position_mean_res{r}')):
            rows.append([label, r]
                        + value_floor_cells(results, f'fsr_position_mean_res{r}', f'fsr_position_mean_floor_res{r}')
                        + value_floor_cells(results, f'fsr_position_var_res{r}', f'fsr_position_var_floor_res{r}')
                        + [fmt_spread([res[f'fsr_position_var_scale_res{r}'] for res in results])])
    return rows


NOISE_HEADERS = ['arm', 'r', 'variance, fresh noise', 'variance, fixed noise', 'noise share']


def noise_rows(records_by_run, label_of, teacher=None):
    """Table rows (label, r, variance over images with fresh noise, with one fixed noise image, noise share) from the
    FINAL fsr_noise_share record of each run, grouped by label (spread over runs), then a 'teacher' row per level
    from `teacher` (FSRTeacher.noise_share's {r: dict(var, var_fixed, share)}) when given."""
    rows = []
    for label, results in final_results_by_label(records_by_run, label_of).items():
        for r in sorted(per_level(results[0], 'fsr_noise_share_res{r}')):
            rows.append([label, r] + [fmt_spread([res[key.format(r=r)] for res in results])
                                      for key in ('fsr_noise_var_res{r}', 'fsr_noise_var_fixed_res{r}',
                                                  'fsr_noise_share_res{r}')])
    for r in sorted(teacher or {}):
        rows.append(['teacher', r] + [fmt_spread([teacher[r][key]]) for key in ('var', 'var_fixed', 'share')])
    return rows


def sparsity_rows(results_list, label):
    """Rows (label, r, active fraction, p05/p50/p95, Hoyer, all-zero share) from fsr_sparsity results of runs."""
    rows = []
    for r in sorted(per_level(results_list[0], 'fsr_sparsity_active_res{r}')):
        def col(key):
            return fmt_spread([res[key.format(r=r)] for res in results_list])
        rows.append([label, r, col('fsr_sparsity_active_res{r}'),
                     f'{col("fsr_sparsity_active_p05_res{r}")} / {col("fsr_sparsity_active_p50_res{r}")} / '
                     f'{col("fsr_sparsity_active_p95_res{r}")}',
                     col('fsr_sparsity_hoyer_res{r}'), col('fsr_sparsity_zero_res{r}')])
    return rows


SPARSITY_HEADERS = ['generator', 'r', 'active fraction (mean)', 'active fraction p05 / p50 / p95',
                    'Hoyer sparsity (mean)', 'all-zero positions']


def save_grid(levels, out_png, num=GRID_IMAGES):
    """plots.save_pyramid_grid, then the PNG nearest-upscaled by an integer factor so that a cell is at least 64
    pixels wide (pixel exact: every pixel becomes a factor x factor block)."""
    from PIL import Image
    plots.save_pyramid_grid(levels, out_png, max_images=num)
    factor = max(1, 64 // max(levels))
    if factor > 1:
        img = Image.open(out_png)
        img.resize((img.width * factor, img.height * factor), Image.NEAREST).save(out_png)
    return out_png


def pyramid_grid(snapshot_path, out_png, device, max_res=None, num=GRID_IMAGES):
    """Save the snapshot's per-resolution samples (heads, or downscaled G images; z from torch seed 0,
    noise_mode const) as a pyramid grid; levels above max_res are drawn mid-grey (not trained yet)."""
    snap = se.Snapshot(snapshot_path, device=device)
    levels = se.pyramid_images(snap, num, seed=0)
    if max_res is not None:
        levels = {r: (x if r <= max_res else torch.zeros_like(x)) for r, x in levels.items()}
    return save_grid(levels, out_png, num)


def reproduce_line(name, params):
    """The experiment's own command line: sys.argv under `python -m fsr_plugin.experiments`, else rebuilt from the
    parsed options."""
    if sys.argv and sys.argv[0].endswith('experiments.py') and len(sys.argv) > 1 and sys.argv[1] == name:
        return command_line(['python', '-m', 'fsr_plugin.experiments'] + sys.argv[1:])
    argv = ['python', '-m', 'fsr_plugin.experiments', name]
    for key, value in params.items():
        if key.startswith('_') or value is None or value is False:
            continue
        flag = '--' + key.replace('_', '-')
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [f'{flag}={v}' for v in value]
        else:
            argv.append(f'{flag}={value}')
    return command_line(argv)


def common_header(report, params, commands, notes=()):
    """Reproduction line, train.py commands and the option table."""
    report.heading('How this was produced')
    report.code([params['_reproduce']])
    if commands:
        report.text('Training commands (run from the repository root; one run folder per arm and seed):')
        report.code(commands)
    report.text('Options of this experiment:')
    report.options({k: (', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                    for k, v in params.items() if not k.startswith('_')})
    for note in notes:
        report.text(note)


def _draws_note(sizes):
    if sizes.moment_draws == 1:
        return ''
    return f', gaps and floors the means of {sizes.moment_draws} independent draws'


def eval_note(sizes, device):
    return (f'Evaluation (one setting for every arm): fsr_* metrics of the host registry with {sizes.images} images '
            f'per sample (moment gaps: reference, floor and generated samples{_draws_note(sizes)}; SWD: per side), '
            f'{sizes.sparsity_images} generated images for sparsity (tau {sizes.sparsity_tau:g}, patch '
            f'{sizes.sparsity_patch}), latent seed {sizes.seed}, device {device}. Spread cells: mean ± std (ddof 0) '
            f'(min–max, n) over seeds. Per-resolution outputs are the FSR heads (EMA) where the run has them, else '
            f'G\'s image box-downscaled.')


# ----------------------------------------------------------------------------------------------------------------------
# Options shared by the experiments.

def _common(data_default=DEFAULT_SYNTHETIC_DATA, seeds_default='0,1,2', kimg_default=200):
    def deco(f):
        opts = [
            click.option('--outdir', required=True, metavar='DIR', help='Folder of the report, runs and figures.'),
            click.option('--eval-images', type=click.IntRange(min=2), default=1000, show_default=True,
                         help='Images per sample of the moment gaps and per side of the SWD.'),
            click.option('--eval-draws', type=click.IntRange(min=1), default=1, show_default=True,
                         help='Independent draws (fresh fakes, disjoint reals) whose moment gaps and floors are '
                              'averaged: the gap / floor of the expected gap and floor, steadier than one draw.'),
            click.option('--sparsity-images', type=click.IntRange(min=1), default=64, show_default=True,
                         help='Generated images for the sparsity measurement.'),
            click.option('--device', type=click.Choice(['cpu', 'cuda']), default='cpu', show_default=True,
                         help='Device of the evaluation (training: see --train-args --device).'),
            click.option('--threads', type=click.IntRange(min=1), default=None,
                         help='CPU threads per training process (OMP_NUM_THREADS) and of the evaluation.'),
            click.option('--dry-run', is_flag=True, help='Print the train.py command lines and exit.'),
        ]
        opts += [
            click.option('--kimg', type=click.IntRange(min=1), default=kimg_default, show_default=True,
                         help='Training length of every run (equal budget).'),
            click.option('--seeds', default=seeds_default, show_default=True, help='Training seeds, e.g. 0,1,2.'),
            click.option('--cfg', default='cpu', show_default=True, help='train.py --cfg preset.'),
            click.option('--tick', type=float, default=None,
                         help='train.py --tick in kimg [default: kimg/10, at least 1; layerwise: the stage length].'),
            click.option('--snap', type=click.IntRange(min=1), default=1, show_default=True,
                         help='train.py --snap: snapshot every this many ticks.'),
            click.option('--fsr-args', default=DEFAULT_FSR_ARGS, show_default=True,
                         help='train.py --fsr* options of the FSR arms (after --fsr=1).'),
            click.option('--train-args', default='', help='Extra train.py options for every arm.'),
            click.option('--jobs', type=click.IntRange(min=1), default=1, show_default=True,
                         help='Training runs at the same time.'),
            click.option('--reuse', is_flag=True, help='Reuse finished runs already in <outdir>/runs.'),
        ]
        if data_default is not None:
            opts.append(click.option('--data', default=data_default, show_default=True,
                                     help='Training data (train.py --data).'))
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def _check_cfg(cfg):
    from train import CFG_NAMES
    if cfg not in CFG_NAMES:
        raise click.BadParameter(f'{cfg!r} is not a train.py preset ({", ".join(CFG_NAMES)})', param_hint='--cfg')


def _tick(tick, kimg):
    if tick is None:
        return max(1.0, kimg / 10)
    if tick <= 0:
        raise click.BadParameter('must be > 0', param_hint='--tick')
    return float(tick)


def _setup(params, name):
    """Common preparation: threads, output folder, evaluation sizes. Returns (root, EvalSizes)."""
    if params.get('threads'):
        torch.set_num_threads(params['threads'])
    root = os.path.abspath(params['outdir'])
    sizes = se.EvalSizes(images=params['eval_images'], sparsity_images=params['sparsity_images'],
                         sparsity_tau=params.get('sparsity_tau', 0.1), sparsity_patch=params.get('sparsity_patch', 1),
                         moment_draws=params.get('eval_draws', 1))
    params['_reproduce'] = reproduce_line(name, params)
    return root, sizes


def _dry_run(jobs, threads, extra_lines=()):
    for job in jobs:
        click.echo(job.display(train_env(threads)))
    for line in extra_lines:
        click.echo(line)


@click.group(context_settings=dict(help_option_names=['-h', '--help']))
def cli():
    """FSR experiments (FSR.md section 5): each trains with train.py and writes OUTDIR/report.md."""


# ----------------------------------------------------------------------------------------------------------------------
# 1. Synthetic FSR data: atom recovery, moment gaps, SWD per level; the oracle and the random floor.

def _teacher_of(data, dataset):
    teacher = getattr(dataset, 'teacher', None)
    if teacher is None:
        raise click.BadParameter(f'{data!r} is not a synthetic FSR dataset (fsr-synthetic:...): atom recovery needs '
                                 f'the teacher', param_hint='--data')
    return teacher


def teacher_reference(teacher, data_kwargs, num_images, draws=TEACHER_REFERENCE_DRAWS):
    """The teacher scored like a learner on its own real pyramid (FSRTeacher.level_references): per level r,
    dict(readout=..., given_z=...) of diagnostics.moment_gap_with_floor results against 2 disjoint samples of
    `num_images` dataset images (the reference and the floor sample), and z_share. Returns {r: dict}."""
    refs = teacher.level_references(num_images, draws=draws, seed=0)
    levels = sorted(refs['readouts'])
    # The dataset stores u = round(x * 127.5 + 128) and the loader decodes u / 127.5 - 1 (the host's convention):
    # every real pixel sits 1/255 above the teacher's float value. Without this shift the mean gap alone would be
    # several times its floor, because the patch mean of these grey-centred images is small.
    shift = 1 / 255
    refs = dict(refs, readouts={r: x + shift for r, x in refs['readouts'].items()},
                given_z={r: x + shift for r, x in refs['given_z'].items()})
    reals = se.real_pyramid_images(data_kwargs, levels, 2 * num_images, seed=2)
    out = {}
    for r in levels:
        real_a, real_b = reals[r][:num_images].double(), reals[r][num_images:].double()
        out[r] = dict(z_share=refs['z_share'][r])
        for name in ('readouts', 'given_z'):
            out[r][name] = diagnostics.moment_gap_with_floor(real_a, real_b, refs[name][r].double())
    return out


USED_SHARE = 0.01      # a head atom counts as used when its channel paints at least this share of the top level
USAGE_IMAGES = 256     # samples over which the usage is measured


def used_atom_recovery(snap, teacher_atoms, learned, threshold, seed=0, rec_all=None):
    """Atom recovery by the head atoms the generator paints with: those whose channel has at least USED_SHARE of
    the top level's usage (se.top_channel_usage over USAGE_IMAGES samples). An atom of a channel that never wins
    can match a teacher atom closely and still paint nothing. Returns dict(used_atoms, used_recovered,
    used_mean_matched_cos, used_per_atom_cos, partner_share: the usage share of each teacher atom's partner in
    the all-atom matching, rec_all: that matching's atom_recovery result when the caller has it)."""
    usage = se.top_channel_usage(snap, USAGE_IMAGES, seed=seed)
    used = (usage >= USED_SHARE).nonzero().flatten()
    if rec_all is None:
        rec_all = matching.atom_recovery(teacher_atoms, learned, threshold)
    out = dict(used_atoms=int(used.numel()),
               partner_share=[float(usage[p]) if p >= 0 else 0.0 for p in rec_all['partner'].tolist()])
    if used.numel() == 0:
        K = int(teacher_atoms.shape[0])
        return dict(out, used_recovered=0, used_mean_matched_cos=0.0, used_per_atom_cos=[0.0] * K)
    rec = matching.atom_recovery(teacher_atoms, learned[used], threshold)
    return dict(out, used_recovered=rec['recovered'], used_mean_matched_cos=rec['mean_matched_cos'],
                used_per_atom_cos=rec['cos'].tolist())


def _learned_top_atoms(snap):
    """[(source label, atoms [A, 3, 3, 3] or None, note)] for a run's top level."""
    R = snap.G.img_resolution
    if snap.heads is not None and R in snap.heads.resolutions:
        atoms = snap.head_atoms(R)
        k = atoms.shape[-1]
        if k == 3:
            return [('FSR head', atoms, '')]
        if k == 1:
            padded = torch.zeros([atoms.shape[0], atoms.shape[1], 3, 3], dtype=torch.float64)
            padded[:, :, 1, 1] = atoms[:, :, 0, 0]
            return [('FSR head (1x1, centred in 3x3)', padded, 'ceiling')]
        if k > 3:
            return [(f'FSR head ({k}x{k})', atoms, f'{k}x{k} atoms: each 3x3 teacher atom at its best placement')]
        return [(f'FSR head ({k}x{k})', None, f'head kernel {k} cannot be compared with 3x3 atoms')]
    return [('ToRGB (1x1, centred in 3x3)', se.torgb_atoms_3x3(snap.G, R), 'ceiling'),
            ('conv1∘ToRGB (3x3, linearised)', se.composed_host_atoms(snap.G, R), '')]


@cli.command()
@_common(kimg_default=200)
@click.option('--arms', default=','.join(SYNTHETIC_ARMS), show_default=True,
              help=f'Comma list of arms: {", ".join(SYNTHETIC_ARMS)}.')
@click.option('--start-res', type=int, default=8, show_default=True, help='Layer-wise arm: first stage resolution.')
@click.option('--policy', type=click.Choice(['frozen', 'finetune', 'joint']), default='frozen', show_default=True,
              help='Layer-wise arm: lower blocks at later stages.')
@click.option('--threshold', type=float, default=0.9, show_default=True, help='Atom recovery cosine threshold.')
@click.option('--oracle-steps', type=click.IntRange(min=0), default=1200, show_default=True,
              help='Sparse-coding oracle steps (0 = no oracle).')
@click.option('--oracle-images', type=click.IntRange(min=1), default=2000, show_default=True,
              help='Teacher images the oracle is fitted to.')
@click.option('--oracle-atoms', type=click.IntRange(min=1), default=20, show_default=True, help='Oracle atoms.')
@click.option('--oracle-lam', type=float, default=0.1, show_default=True, help='Oracle L1 weight.')
@click.option('--ema-calibration', type=bool, default=True, show_default=True,
              help='Also score the final snapshot of each FSR run after fsr_plugin.ema_calibration (one contrast '
                   f'gain per level of the EMA heads, {CALIBRATION_IMAGES} images).')
@click.option('--calibration-mean-images', type=click.IntRange(min=0), default=0, show_default=True,
              help='With --ema-calibration: also move each level\'s mean colour onto the reals\', measured on this '
                   'many generated and real images (0 = off; docs/RESULTS.md section 26).')
@click.option('--eval-metric-seeds', type=click.IntRange(min=1), default=1, show_default=True,
              help='Score the final snapshot\'s moment gaps (as trained and recalibrated) at this many metric seeds '
                   '(fresh samples each) and report their spread and how many evaluations put every level within '
                   '2x its floor (1 = the metric seed of the other tables only).')
def synthetic(**params):
    """Synthetic FSR teacher: plain host vs FSR joint vs FSR layer-wise at equal kimg."""
    root, sizes = _setup(params, 'synthetic')
    _check_cfg(params['cfg'])
    seeds = parse_seeds(params['seeds'])
    arms = [a.strip() for a in params['arms'].split(',') if a.strip()]
    bad = [a for a in arms if a not in SYNTHETIC_ARMS]
    if bad or not arms:
        raise click.BadParameter(f'unknown arm(s) {", ".join(bad) or "(none)"}; choose from '
                                 f'{", ".join(SYNTHETIC_ARMS)}', param_hint='--arms')
    data_kwargs, res, _channels, dataset = open_data(params['data'])
    teacher = _teacher_of(params['data'], dataset)
    kimg, tick = params['kimg'], _tick(params['tick'], params['kimg'])
    fsr_args = split_args(params['fsr_args'], '--fsr-args')
    train_args = split_args(params['train_args'], '--train-args')
    stages = stage_resolutions(res, params['start_res'])
    stage_kimg = kimg / len(stages)
    arm_args = dict(plain=[], joint=['--fsr=1'] + fsr_args,
                    layerwise=['--fsr=1'] + fsr_args + ['--fsr-schedule=layerwise',
                                                        f'--fsr-start-res={params["start_res"]}',
                                                        f'--fsr-stage-kimg={stage_kimg:g}',
                                                        f'--fsr-policy={params["policy"]}'])
    jobs = [make_job(root, arm, s, params['data'], params['cfg'], kimg, tick, params['snap'],
                     arm_args[arm] + train_args) for arm in arms for s in seeds]
    if params['dry_run']:
        _dry_run(jobs, params['threads'])
        return
    t_train = time.time()
    run_dirs = run_jobs(jobs, root, params['jobs'], params['threads'], params['reuse'])
    t_train = time.time() - t_train
    runs = [Run(job.label, job.seed, run_dirs[job.name], fresh_eval_dir(root, job.name)) for job in jobs]

    # Evaluation of every run.
    t_eval = time.time()
    moments, swds, consistencies, positions, noises, atoms, spreads, spread_reals = [], [], [], [], [], {}, {}, {}
    calibrated, calibration_notes, seed_evals = [], {}, []
    more_seeds = [sizes.seed + k for k in range(1, params['eval_metric_seeds'])]
    cache = {}
    for run in runs:
        snaps = run.snapshots()
        moments.append((run, eval_metric(run, snaps, 'fsr_moment_gap', sizes, params['device'], cache)))
        swds.append((run, eval_metric(run, snaps[-1:], 'fsr_swd_levels', sizes, params['device'], cache)))
        consistencies.append((run, eval_metric(run, snaps[-1:], 'fsr_level_consistency', sizes, params['device'],
                                               cache)))
        positions.append((run, eval_metric(run, snaps[-1:], 'fsr_position_stats', sizes, params['device'], cache)))
        noises.append((run, eval_metric(run, snaps[-1:], 'fsr_noise_share', sizes, params['device'], cache)))
        snap = _load(snaps[-1], params['device'], cache)
        if more_seeds:
            seed_evals.append((run, 'as trained', [moments[-1][1][-1]['results']] + [
                rec['results'] for rec in moment_gap_at_seeds(run, snap, sizes, more_seeds, 'fsr_moment_gap-seeds')]))
        if params['ema_calibration'] and snap.heads is not None:
            record, seed_records, note = calibrated_moment_gap(run, snap, sizes, params['calibration_mean_images'],
                                                               more_seeds)
            if record is not None:
                calibrated.append((run, [record]))
                if more_seeds:
                    seed_evals.append((run, 'recalibrated', [rec['results'] for rec in [record] + seed_records]))
            else:
                calibration_notes[run.name] = note
        entries = []
        for source, learned, note in _learned_top_atoms(snap):
            entry = dict(source=source, note=note, snapshot=snap.path, kimg=snap.kimg)
            if learned is not None:
                rec = matching.atom_recovery(teacher.atoms, learned, params['threshold'])
                floor = oracle_lib.random_floor(teacher.atoms, num_atoms=int(learned.shape[0]), seed=0,
                                                threshold=params['threshold'], atom_shape=learned.shape[1:])
                entry.update(num_atoms=int(learned.shape[0]), recovered=rec['recovered'], fraction=rec['fraction'],
                             mean_matched_cos=rec['mean_matched_cos'], per_atom_cos=rec['cos'].tolist(),
                             floor_mean_matched_cos=floor['mean_matched_cos'], floor_recovered=floor['recovered'])
                if source.startswith('FSR head') and note != 'ceiling':  # a head with atoms of its own
                    entry.update(used_atom_recovery(snap, teacher.atoms, learned, params['threshold'], sizes.seed, rec))
            entries.append(entry)
        atoms[run.name] = entries
        levels = tuple(snap.resolutions)
        if levels not in spread_reals:  # the same teacher images for every run: drawn once
            spread_reals[levels] = se.real_pyramid_images(data_kwargs, levels, SPREAD_IMAGES, seed=1)
        spreads[run.name] = se.pyramid_spread(se.pyramid_images(snap, SPREAD_IMAGES, seed=0), spread_reals[levels])
        with open(os.path.join(run.eval_dir, 'spread.json'), 'wt') as f:
            json.dump({str(r): v for r, v in spreads[run.name].items()}, f, indent=1)
        with open(os.path.join(run.eval_dir, 'atoms.json'), 'wt') as f:
            json.dump(entries, f, indent=1)
        plots.plot_moment_gaps(os.path.join(run.eval_dir, 'metric-fsr_moment_gap.jsonl'),
                               os.path.join(root, f'moments-{run.name}.png'), title=f'{run.name}')
    for arm in arms:
        first = next(r for r in runs if r.label == arm)
        pyramid_grid(first.final_snapshot(), os.path.join(root, f'pyramid-{arm}.png'), params['device'])
    real = se.real_pyramid_images(data_kwargs, sorted(set(stages) | set(teacher.resolutions)), GRID_IMAGES)
    save_grid(real, os.path.join(root, 'pyramid-real.png'))
    reference = teacher_reference(teacher, data_kwargs, sizes.images)
    with open(os.path.join(root, 'eval', 'teacher-reference.json'), 'wt') as f:
        json.dump({str(r): v for r, v in reference.items()}, f, indent=1)
    t_eval = time.time() - t_eval

    # Oracle (one per seed) and the centre-tap ceiling of 1x1 atoms.
    oracle_results, t_oracle = [], time.time()
    if params['oracle_steps'] > 0:
        for s in seeds:
            click.echo(f'oracle seed {s}: {params["oracle_steps"]} steps')
            out = oracle_lib.run_oracle(teacher, num_images=params['oracle_images'], num_atoms=params['oracle_atoms'],
                                        steps=params['oracle_steps'], lam=params['oracle_lam'], seed=s,
                                        threshold=params['threshold'])
            entry = dict(seed=s, recovered=out['recovery']['recovered'], fraction=out['recovery']['fraction'],
                         mean_matched_cos=out['recovery']['mean_matched_cos'],
                         per_atom_cos=out['recovery']['cos'].tolist(), floor=out['floor'], seconds=out['seconds'])
            oracle_results.append(entry)
            with open(os.path.join(root, 'eval', f'oracle-seed{s}.json'), 'wt') as f:
                json.dump(entry, f, indent=1)
    t_oracle = time.time() - t_oracle
    K = int(teacher.atoms.shape[0])
    ta = teacher.atoms.double().flatten(1)
    centre_share = (teacher.atoms.double()[:, :, 1, 1].norm(dim=1) / ta.norm(dim=1)).numpy()

    # Report.
    rep = Report(root, 'FSR experiment 1: synthetic teacher (atom recovery, moment gaps, SWD per level)')
    common_header(rep, params, [j.display(train_env(params['threads'])) for j in jobs], [
        eval_note(sizes, params['device']),
        f'Teacher: {params["data"]} ({res}x{res}, levels {teacher.resolutions}, {K} top-level 3x3 atoms, mutual '
        f'coherence {diagnostics_coherence(teacher):.3f}). Equal budget: {kimg} kimg per run; layer-wise arm: '
        f'stages {stages} of {stage_kimg:g} kimg each (the last runs to the end), policy {params["policy"]}.'])
    rep.heading('Atom recovery (top level)')
    rep.text(f'Teacher atoms recovered at signed cosine >= {params["threshold"]:g} (one-to-one Hungarian matching, '
             f'fsr_plugin.matching.atom_recovery) by the final snapshot of each run, beside the random floor (random '
             f'Gaussian atoms, as many as the learner has, 20 draws) and the sparse-coding oracle fitted directly to '
             f'teacher images.')
    rows = []
    for arm in arms:
        arm_entries = [atoms[r.name] for r in runs if r.label == arm]
        for i, first in enumerate(arm_entries[0]):
            vals = [e[i] for e in arm_entries]
            if 'recovered' not in first:
                rows.append([arm, first['source']] + ['n/a'] * 8 + [first['note']])
                continue
            used = 'used_recovered' in first
            rows.append([arm, first['source'], first['num_atoms'],
                         fmt_spread([v['recovered'] for v in vals]) + f' / {K}',
                         fmt_spread([v['fraction'] for v in vals]), fmt_spread([v['mean_matched_cos'] for v in vals]),
                         fmt_spread([v['used_atoms'] for v in vals]) if used else 'n/a',
                         fmt_spread([v['used_recovered'] for v in vals]) + f' / {K}' if used else 'n/a',
                         fmt_spread([v['used_mean_matched_cos'] for v in vals]) if used else 'n/a',
                         fmt_spread([v['floor_mean_matched_cos'] for v in vals]),
                         'at most the centre-tap share (below)' if first['note'] == 'ceiling' else first['note']])
    if oracle_results:
        rows.append(['oracle', f'sparse coding, {params["oracle_steps"]} steps', params['oracle_atoms'],
                     fmt_spread([o['recovered'] for o in oracle_results]) + f' / {K}',
                     fmt_spread([o['fraction'] for o in oracle_results]),
                     fmt_spread([o['mean_matched_cos'] for o in oracle_results]), 'n/a', 'n/a', 'n/a',
                     fmt_spread([o['floor']['mean_matched_cos'] for o in oracle_results]), ''])
    rep.table(['arm', 'learned atoms', 'atoms', f'recovered (cos >= {params["threshold"]:g})', 'fraction',
               'mean matched cos', 'used atoms', 'recovered by used atoms', 'used: mean matched cos',
               'random floor mean cos', 'note'], rows)
    rep.text(f'Used atoms: the head atoms whose channel paints at least {USED_SHARE:.0%} of the top level (its share '
             f'of the winning features over {USAGE_IMAGES} samples, fsr_plugin.snapshot_eval.top_channel_usage). The '
             f'all-atom matching can pair a teacher atom with the atom of a channel that never wins: that atom '
             f'paints nothing. Recovery by the used atoms is what the generator draws with.')
    rep.text(f'A 1x1 atom placed in the centre of a 3x3 patch can reach at most cosine = (norm of the teacher atom\'s '
             f'centre tap) / (its norm) with a teacher atom: {fmt(float(centre_share.mean()))} on average, '
             f'{int((centre_share >= params["threshold"]).sum())} of {K} atoms reach {params["threshold"]:g}. The '
             f'plain host\'s ToRGB row is therefore structurally limited; the conv1∘ToRGB row is its 3x3 analogue '
             f'(the patch painted by each input channel of the top block\'s last convolution, activation '
             f'linearised).')
    rep.heading('Patch-moment gaps per level (final snapshot)')
    rep.text('gap_1 = |m_real - m_fake| / |m_real|, gap_2 = |C_real - C_fake|_F / |C_real|_F over all 3x3 patches; '
             'floor = the same gap between two disjoint real samples of the same size; a level counts as learned '
             'when both gaps are within 2x their floor.')
    rep.table(MOMENT_HEADERS, moment_rows(moments, lambda r: r.label))
    if calibrated or calibration_notes:
        rep.heading('Patch-moment gaps after EMA recalibration (final snapshot)')
        rep.text(f'The same table for a copy of the final snapshot whose EMA heads got one contrast gain per level '
                 f'about the level\'s mean (fsr_plugin.ema_calibration, {CALIBRATION_IMAGES} generated and real '
                 f'images; its real sample is a separate draw, numpy seed 1, from the gap\'s, seed 0), so that each '
                 f'level paints the reals\' total patch variance: G_ema averages weights, and on the synthetic '
                 f'teacher the average paints less contrast than the iterates it averages (docs/RESULTS.md section '
                 f'18). Gains per run: {calibration_gains_note(calibrated)}.'
                 + (f' Each level\'s mean colour was then moved onto the reals\' (one shift per channel, measured '
                    f'on {params["calibration_mean_images"]} generated and real images, docs/RESULTS.md section 26).'
                    if params['calibration_mean_images'] else ''))
        if calibrated:
            rep.table(MOMENT_HEADERS, moment_rows(calibrated, lambda r: r.label))
        for name, note in sorted(calibration_notes.items()):
            rep.text(f'{name}: not recalibrated ({note}).')
    if seed_evals:
        rep.heading('Patch-moment gaps over metric seeds (final snapshot)')
        rep.text(f'How steady the verdict of the moment tables above is: the final snapshot scored again at metric '
                 f'seeds {sizes.seed}-{more_seeds[-1]} (each a fresh generated sample and another real sample of '
                 f'{sizes.images} images{_draws_note(sizes)}; seed {sizes.seed} is the tables\' own evaluation; '
                 f'`--eval-metric-seeds`). Ratios: mean ± std (min–max, n) over runs x metric seeds; within 2x: the '
                 f'evaluations that put the level (both gaps) within 2x its floors; every level: the evaluations that '
                 f'put all levels there at once, the target\'s reading. Recalibrated rows score the recalibrated copy '
                 f'(section above).')
        evals = [e for scoring in ('as trained', 'recalibrated') for e in seed_evals if e[1] == scoring]
        rep.table(SEED_MOMENT_HEADERS, seed_moment_rows(evals, lambda r: r.label))
    rep.heading('Per-position statistics per level (final snapshot)')
    rep.text('What the pooled patch moments average away (fsr_position_stats, on the samples and draws of the gaps '
             'above). Mean pattern: the rms over positions of the fake minus the real mean image, less its average '
             'per channel, over the reals\' pixel std: a fixed spatial pattern painted too strongly, too weakly or '
             'in the wrong place (the teacher\'s own mean image is not flat). Variance unevenness: the rms of the '
             'centred log ratio of the fake and real per-pixel variance images: contrast put in the wrong places. '
             'Floor: the same between two disjoint real samples; variance scale: the ratio of the overall '
             'variances. The uncalibrated final snapshot.')
    rep.table(POSITION_HEADERS, position_rows(positions, lambda r: r.label))
    rep.heading('Where each level\'s variation comes from (final snapshot)')
    rep.text(f'fsr_noise_share on {sizes.images} generated images: the variance over images of each level (averaged '
             f'over channels and positions) with fresh noise inputs per image, and with the same latents and one '
             f'fixed noise image for all; noise share = 1 - fixed / fresh, the part of the level\'s variation that '
             f'the synthesis noise inputs make rather than the latent. The teacher row is the same measurement of '
             f'the teacher, its top-level jitter in the noise inputs\' place ({sizes.images} images of its real '
             f'pyramid, FSRTeacher.noise_share). A collapsed generator reads near 1 at every level. Only the '
             f'synthesis noise images are fixed: with --fsr-top-wta-jitter the top head\'s jitter stays fresh per '
             f'image, so at the top level the generator\'s share leaves it out and the teacher\'s counts it. The '
             f'uncalibrated final snapshot.')
    rep.table(NOISE_HEADERS, noise_rows(noises, lambda r: r.label, teacher.noise_share(sizes.images, seed=sizes.seed)))
    rep.heading('Sliced Wasserstein distance per level (final snapshot, x 1e3)')
    rep.table(['arm', 'r', 'SWD'], swd_rows(swds, lambda r: r.label))
    rep.heading('Sample spread per level (final snapshot)')
    rep.text(f'Mean pairwise L2 distance of {SPREAD_IMAGES} generated images (G_ema, constant noise) divided by that '
             f'of {SPREAD_IMAGES} teacher images, per level (fsr_plugin.snapshot_eval.pyramid_spread). 1 = as varied '
             f'as the teacher; values near 0 mean the generator draws nearly the same image every time (mode '
             f'collapse), which keeps the covariance gap near 1 whatever else is learned. A generator with noise '
             f'inputs may draw part of its variety from them, as the teacher draws most of each level\'s variety from '
             f'its top-level jitter (teacher reference below): a teacher-like model held to fixed noise would score '
             f'about the square root of the z share there, not 1.')
    levels = sorted({r for v in spreads.values() for r in v})
    rep.table(['arm'] + [str(r) for r in levels],
              [[arm] + [fmt_spread([spreads[run.name].get(r) for run in runs if run.label == arm
                                    and r in spreads[run.name]]) for r in levels] for arm in arms])
    rep.heading('Pyramid consistency of the generated levels (final snapshot)')
    rep.text(f'|down(x_r) - x_(r/2)|^2 of one sample over the real level r/2\'s pixel variance ({sizes.images} '
             f'images; fsr_level_consistency). Every real pyramid scores 0 (its levels are box-downscales of one '
             f'image); unpaired: the same with x_(r/2) of another sample, the value of unrelated levels (about 2). A '
             f'paired value near the unpaired one means the levels of one sample are not a pyramid of one image, '
             f'whatever their statistics (`--fsr-consistency` is the generator loss on this quantity); the plain '
             f'host\'s levels are its image downscaled and score 0 by construction.')
    rep.table(['arm', 'r', 'paired', 'unpaired'], consistency_rows(consistencies, lambda r: r.label))
    rep.heading('Teacher reference per level')
    rep.text(f'The teacher scored like a learner, with the gaps and floors above ({sizes.images} images per sample; '
             f'its own reference and floor samples, so its floors differ a little from the table above). readout: the '
             f'teacher\'s own level outputs Deconv_out,r(S_r) (linear read-outs fitted at construction; the image '
             f'itself at the top). E[x_r given z]: each level averaged over {TEACHER_REFERENCE_DRAWS} draws of the '
             f'top-level site jitter with the same z, the least-squares best any function of z can give. z share: '
             f'the part of the level\'s pixel variance set by z; the rest comes from the jitter that places the '
             f'top-level sites, which the real pyramid\'s lower levels (box-downscales of the top image) carry but '
             f'no level below the top sees. A learner level beyond these numbers has learned more than a copy of the '
             f'teacher\'s own lower levels would show.')
    rep.table(['r', 'readout gap_1 / floor_1', 'readout gap_2 / floor_2', 'E[x_r given z] gap_1 / floor_1',
               'E[x_r given z] gap_2 / floor_2', 'z share of pixel variance'],
              [[r, fmt(v['readouts']['ratio_1']), fmt(v['readouts']['ratio_2']), fmt(v['given_z']['ratio_1']),
                fmt(v['given_z']['ratio_2']), fmt(v['z_share'])] for r, v in sorted(reference.items())])
    rep.heading('Per run')
    per_run = []
    for run, recs in moments:
        primary = atoms[run.name][-1] if run.label == 'plain' else atoms[run.name][0]
        per_run.append([run.name, os.path.relpath(run.run_dir, root), fmt(recs[-1].get('kimg')),
                        primary.get('recovered', 'n/a'), fmt(primary.get('mean_matched_cos')),
                        primary.get('used_recovered', 'n/a'),
                        fmt(recs[-1]['results']['fsr_moment_learned_levels']),
                        fmt(next(s for r2, s in swds if r2 is run)[-1]['results']['fsr_swd_mean']),
                        fmt(train_seconds(run.run_dir))])
    rep.table(['run', 'folder', 'final kimg', 'recovered (head / conv1∘ToRGB)', 'mean matched cos',
               'recovered by used atoms', 'levels within 2x floor', 'SWD mean', 'training loop s'], per_run)
    if oracle_results:
        rep.table(['oracle seed', 'recovered', 'mean matched cos', 'random floor mean cos', 'seconds'],
                  [[o['seed'], o['recovered'], fmt(o['mean_matched_cos']), fmt(o['floor']['mean_matched_cos']),
                    fmt(o['seconds'])] for o in oracle_results])
    rep.heading('Figures')
    rep.image(os.path.join(root, 'pyramid-real.png'), 'teacher images at every level (rows: resolutions, box pyramid)')
    for arm in arms:
        rep.image(os.path.join(root, f'pyramid-{arm}.png'),
                  f'{arm}: samples per level, final snapshot of seed {seeds[0]}')
    for run in runs:
        rep.image(os.path.join(root, f'moments-{run.name}.png'), f'{run.name}: patch-moment gaps over training '
                  f'(dashed: noise floor)')
    rep.text(f'Wall time in this invocation: training {t_train:.0f} s, evaluation {t_eval:.0f} s, oracle '
             f'{t_oracle:.0f} s.')
    path = rep.write()
    click.echo(f'wrote {path}')


def diagnostics_coherence(teacher):
    from fsr_plugin.synthetic import atom_coherence
    return atom_coherence(teacher.atoms)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Real data: baseline vs --fsr at equal kimg.

@cli.command()
@_common(kimg_default=100, data_default=None, seeds_default='0')
@click.option('--data', multiple=True, required=True,
              help='Dataset zip/folder (dataset_tool.py) or built-in name; repeat for several.')
def real(**params):
    """Baseline vs --fsr at equal kimg on one or more datasets: SWD and sparsity per level, pyramid grids."""
    root, sizes = _setup(params, 'real')
    _check_cfg(params['cfg'])
    seeds = parse_seeds(params['seeds'])
    kimg, tick = params['kimg'], _tick(params['tick'], params['kimg'])
    fsr_args = split_args(params['fsr_args'], '--fsr-args')
    train_args = split_args(params['train_args'], '--train-args')
    datas = []
    for data in params['data']:
        kwargs, res, _c, _ds = open_data(data)
        datas.append((data, slug(data), kwargs, res))
    if len({d[1] for d in datas}) != len(datas):
        raise click.BadParameter('two --data values give the same folder name', param_hint='--data')
    jobs = []
    for data, name, _kw, _res in datas:
        for arm, extra in (('baseline', []), ('fsr', ['--fsr=1'] + fsr_args)):
            for s in seeds:
                jobs.append(make_job(root, f'{name}-{arm}', s, data, params['cfg'], kimg, tick, params['snap'],
                                     extra + train_args))
    if params['dry_run']:
        _dry_run(jobs, params['threads'])
        return
    run_dirs = run_jobs(jobs, root, params['jobs'], params['threads'], params['reuse'])
    rep = Report(root, 'FSR experiment 2: real data, baseline vs --fsr at equal kimg')
    common_header(rep, params, [j.display(train_env(params['threads'])) for j in jobs],
                  [eval_note(sizes, params['device'])])
    cache = {}
    for data, name, kwargs, res in datas:
        rep.heading(f'{data}')
        swds, sparsity = [], {}
        for job in [j for j in jobs if j.label.startswith(name + '-')]:
            arm = job.label[len(name) + 1:]
            run = Run(arm, job.seed, run_dirs[job.name], fresh_eval_dir(root, job.name))
            final = run.snapshots()[-1:]
            swds.append((run, eval_metric(run, final, 'fsr_swd_levels', sizes, params['device'], cache)))
            rec = eval_metric(run, final, 'fsr_sparsity', sizes, params['device'], cache)
            sparsity.setdefault(arm, []).append(rec[-1]['results'])
            if job.seed == seeds[0]:
                pyramid_grid(final[0], os.path.join(root, f'pyramid-{job.label}.png'), params['device'])
        resolutions = se.Snapshot(swds[0][0].final_snapshot()).resolutions
        save_grid(se.real_pyramid_images(kwargs, resolutions, GRID_IMAGES),
                  os.path.join(root, f'pyramid-{name}-real.png'))
        rep.heading('Sliced Wasserstein distance per level (final snapshot, x 1e3)', 3)
        rep.table(['arm', 'r', 'SWD'], swd_rows(swds, lambda r: r.label))
        rep.heading('Sparsity of the hidden layers (final snapshot)', 3)
        rows = []
        for arm, results in sparsity.items():
            rows += sparsity_rows(results, arm)
        rep.table(SPARSITY_HEADERS, rows)
        rep.text('Activity: a > 0.1 x rms of the layer, or exact non-zeros for ReLU layers (the fsr arm uses ReLU when '
                 '--fsr-relu=1 is in its options).')
        rep.heading('Per run', 3)
        rep.table(['run', 'folder', 'final kimg', 'SWD mean', 'training loop s'],
                  [[f'{r.label}-seed{r.seed}', os.path.relpath(r.run_dir, root), fmt(recs[-1].get('kimg')),
                    fmt(recs[-1]['results']['fsr_swd_mean']), fmt(train_seconds(r.run_dir))] for r, recs in swds])
        rep.image(os.path.join(root, f'pyramid-{name}-real.png'), f'{data}: real images per level (box pyramid)')
        for arm in ('baseline', 'fsr'):
            rep.image(os.path.join(root, f'pyramid-{name}-{arm}.png'),
                      f'{arm}: samples per level, seed {seeds[0]} (baseline: G\'s image box-downscaled; fsr: heads)')
    path = rep.write()
    click.echo(f'wrote {path}')


# ----------------------------------------------------------------------------------------------------------------------
# 3. Layer-wise training with freezing (Fig. 10 analogue).

def stage_snapshots(run_dir):
    """[(stage index, stage resolution, boundary nimg, snapshot path, snapshot nimg)] for a layer-wise run: for
    every stage but the last the first snapshot at or after its end, for the last stage the final snapshot. Stages
    whose end no snapshot survived get path None."""
    opts = se.read_training_options(run_dir)
    grow = opts.get('growing_kwargs')
    if not grow:
        raise click.ClickException(f'{run_dir}: not a layer-wise / progressive run (no growing_kwargs)')
    resolutions = list(grow['resolutions'])
    ends = list(np.cumsum([float(k) * 1000 for k in grow['stage_kimg']]))
    snaps = [(p, se.Snapshot(p).cur_nimg) for p in se.list_snapshots(run_dir)]
    out = []
    for i, r in enumerate(resolutions):
        if i < len(ends):
            after = [(p, n) for p, n in snaps if n is not None and n >= ends[i]]
            p, n = after[0] if after else (None, None)
            if p is not None and i + 1 < len(ends) and n >= ends[i + 1]:
                p, n = None, None  # the next stage ended too before any snapshot
            out.append((i, r, ends[i], p, n))
        else:
            out.append((i, r, opts['total_kimg'] * 1000, snaps[-1][0], snaps[-1][1]))
    return out


@cli.command()
@_common(kimg_default=90, seeds_default='0')
@click.option('--start-res', type=int, default=8, show_default=True, help='First stage resolution.')
@click.option('--stage-kimg', type=float, default=None,
              help='Length of every stage but the last [default: kimg / number of stages].')
@click.option('--policy', type=click.Choice(['frozen', 'finetune', 'joint']), default='frozen', show_default=True)
def layerwise(**params):
    """Layer-wise FSR training (stages r_1..r_L, lower blocks frozen): pyramid grids after every stage."""
    root, sizes = _setup(params, 'layerwise')
    _check_cfg(params['cfg'])
    seeds = parse_seeds(params['seeds'])
    _kw, res, _c, _ds = open_data(params['data'])
    stages = stage_resolutions(res, params['start_res'])
    if len(stages) < 2:
        raise click.BadParameter(f'one stage only ({stages}); choose a lower --start-res', param_hint='--start-res')
    kimg = params['kimg']
    stage_kimg = params['stage_kimg'] if params['stage_kimg'] is not None else kimg / len(stages)
    if stage_kimg <= 0 or stage_kimg * (len(stages) - 1) >= kimg:
        raise click.BadParameter(f'{stage_kimg:g} x {len(stages) - 1} stages leaves nothing of --kimg={kimg} for the '
                                 f'last stage', param_hint='--stage-kimg')
    tick = params['tick'] if params['tick'] is not None else stage_kimg
    fsr_args = split_args(params['fsr_args'], '--fsr-args')
    extra = ['--fsr=1'] + fsr_args + ['--fsr-schedule=layerwise', f'--fsr-start-res={params["start_res"]}',
                                      f'--fsr-stage-kimg={stage_kimg:g}', f'--fsr-policy={params["policy"]}']
    jobs = [make_job(root, 'layerwise', s, params['data'], params['cfg'], kimg, tick, params['snap'],
                     extra + split_args(params['train_args'], '--train-args')) for s in seeds]
    if params['dry_run']:
        _dry_run(jobs, params['threads'])
        return
    run_dirs = run_jobs(jobs, root, params['jobs'], params['threads'], params['reuse'])
    rep = Report(root, 'FSR experiment 3: layer-wise training with freezing (Fig. 10 analogue)')
    notes = [eval_note(sizes, params['device']),
             f'Stages {stages}, {stage_kimg:g} kimg each but the last (until {kimg} kimg), policy {params["policy"]}; '
             f'train.py --tick={tick:g} so that a snapshot is written right after every stage ends. The host writes '
             f'snapshots at the end of a tick, so a stage snapshot may include a few images of the next stage (column '
             f'"images into next stage"); snapshot files are named by whole kimg, so stages shorter than 1 kimg can '
             f'overwrite each other\'s snapshots.']
    common_header(rep, params, [j.display(train_env(params['threads'])) for j in jobs], notes)
    cache = {}
    for job in jobs:
        run = Run('layerwise', job.seed, run_dirs[job.name], fresh_eval_dir(root, job.name))
        rep.heading(f'Seed {job.seed}: {show_path(run.run_dir, root)}')
        rep.text(f'Training loop: {fmt(train_seconds(run.run_dir))} s (stats.jsonl).')
        found = stage_snapshots(run.run_dir)
        rows, moment_rows_ = [], []
        for i, r, end, path, nimg in found:
            if path is None:
                rows.append([i + 1, r, fmt(end / 1000), 'none survived', 'n/a', 'n/a'])
                continue
            png = os.path.join(root, f'stage{i + 1}-res{r}-seed{job.seed}.png')
            pyramid_grid(path, png, params['device'], max_res=r)
            rec = eval_metric(run, [path], 'fsr_moment_gap', sizes, params['device'], cache)[-1]
            into_next = nimg - end if i + 1 < len(found) else 0
            rows.append([i + 1, r, fmt(end / 1000), os.path.basename(path), fmt(nimg / 1000), into_next])
            gaps = rec['results']
            for lvl in sorted(per_level(gaps, 'fsr_moment_gap1_res{r}')):
                if lvl <= r:
                    moment_rows_.append([i + 1, lvl, fmt(ratio(gaps[f'fsr_moment_gap1_res{lvl}'],
                                                               gaps[f'fsr_moment_floor1_res{lvl}'])),
                                         fmt(ratio(gaps[f'fsr_moment_gap2_res{lvl}'],
                                                   gaps[f'fsr_moment_floor2_res{lvl}'])),
                                         'yes' if gaps[f'fsr_moment_learned_res{lvl}'] else 'no'])
        rep.table(['stage', 'resolution', 'stage end kimg', 'snapshot', 'snapshot kimg', 'images into next stage'],
                  rows)
        rep.table(['stage', 'level r', 'gap_1 / floor_1', 'gap_2 / floor_2', 'within 2x floor'], moment_rows_,
                  caption='patch-moment gaps of the trained levels at each stage snapshot')
        for i, r, _end, path, _n in found:
            if path is not None:
                rep.image(os.path.join(root, f'stage{i + 1}-res{r}-seed{job.seed}.png'),
                          f'after stage {i + 1} ({r}x{r}): rows x_1..x_L (levels not trained yet are grey)')
    path = rep.write()
    click.echo(f'wrote {path}')


# ----------------------------------------------------------------------------------------------------------------------
# Experiments 4-6 analyse one generator per run: --network (one pickle), --run (a run folder) or training.

def _analysis_source(params, root, name, with_network):
    """Runs to analyse: [Run]; trains (one FSR run per seed) unless --run / --network is given. Also returns the
    train.py command lines (possibly empty). On --dry-run prints and returns (None, lines)."""
    run_dir, network = params.get('run'), params.get('network') if with_network else None
    if run_dir is not None and network is not None:
        raise click.UsageError('give --run or --network, not both')
    if run_dir is not None:
        if not os.path.isdir(run_dir):
            raise click.BadParameter(f'run directory {run_dir!r} does not exist', param_hint='--run')
        try:
            opts = se.read_training_options(run_dir)
            se.list_snapshots(run_dir)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint='--run') from None
        if params['dry_run']:
            click.echo(f'would analyse {run_dir}')
            return None, []
        return [Run('run', opts.get('random_seed'), os.path.abspath(run_dir), fresh_eval_dir(root, 'run'))], []
    if network is not None:
        if not os.path.isfile(network):
            raise click.BadParameter(f'network file {network!r} does not exist', param_hint='--network')
        if params['dry_run']:
            click.echo(f'would analyse {network}')
            return None, []
        return [Run('network', None, None, fresh_eval_dir(root, 'network'), network=os.path.abspath(network))], []
    _check_cfg(params['cfg'])
    seeds = parse_seeds(params['seeds'])
    open_data(params['data'])
    kimg, tick = params['kimg'], _tick(params['tick'], params['kimg'])
    extra = ['--fsr=1'] + split_args(params['fsr_args'], '--fsr-args') + split_args(params['train_args'],
                                                                                       '--train-args')
    jobs = [make_job(root, 'fsr', s, params['data'], params['cfg'], kimg, tick, params['snap'], extra)
            for s in seeds]
    lines = [j.display(train_env(params['threads'])) for j in jobs]
    if params['dry_run']:
        _dry_run(jobs, params['threads'])
        return None, lines
    run_dirs = run_jobs(jobs, root, params['jobs'], params['threads'], params['reuse'])
    return [Run('fsr', j.seed, run_dirs[j.name], fresh_eval_dir(root, j.name)) for j in jobs], lines


def analysis_notes(params, sizes):
    notes = [eval_note(sizes, params['device'])]
    if params.get('run') or params.get('network'):
        notes.append('An existing run / pickle was analysed: the training options (--kimg, --seeds, --cfg, --data, '
                     '--tick, --snap, --fsr-args, --train-args, --jobs, --reuse) were not used.')
    return notes


def _analysis_options(f):
    f = click.option('--run', 'run', metavar='DIR', default=None,
                     help='Analyse this train.py run folder instead of training.')(f)
    return _common(kimg_default=50, seeds_default='0')(f)


class FeatureRecorder:
    """features_fn for FSRMetricContext that keeps every hidden activation it produces ({r: [tensors]}), so a plot
    can show exactly the activations the metric measured."""

    def __init__(self):
        self.features = {}

    def __call__(self, G, z, c, **G_kwargs):
        mapping_kwargs = {k: G_kwargs.pop(k) for k in ('truncation_psi', 'truncation_cutoff') if k in G_kwargs}
        ws = G.mapping(z, c, **mapping_kwargs)
        _img, feats = G.synthesis(ws, return_features=True, **G_kwargs)
        for r, f in feats.items():
            self.features.setdefault(int(r), []).append(f.detach().to('cpu', torch.float32))
        return feats

    def layer_sparsity(self, tau, patch, relu):
        return {r: diagnostics.layer_sparsity(torch.cat(v), tau=tau, patch=min(patch, r), relu_layer=relu)
                for r, v in sorted(self.features.items())}


@cli.command()
@_analysis_options
@click.option('--network', metavar='PKL', default=None, help='Analyse this network pickle instead of training.')
@click.option('--sparsity-tau', type=float, default=0.1, show_default=True, help='Activity threshold x rms.')
@click.option('--sparsity-patch', type=click.IntRange(min=1), default=1, show_default=True, help='Patch size q.')
@click.option('--init-seed', type=int, default=0, show_default=True, help='Seed of the randomly initialised G.')
def sparsity(**params):
    """Sparsity per hidden layer of a trained generator vs a randomly initialised one (Fig. 5 analogue)."""
    root, sizes = _setup(params, 'sparsity')
    runs, lines = _analysis_source(params, root, 'sparsity', with_network=True)
    if runs is None:
        return
    rep = Report(root, 'FSR experiment 4: sparsity of the hidden layers, trained vs random init (Fig. 5 analogue)')
    common_header(rep, params, lines, analysis_notes(params, sizes))
    trained, random_init = [], []
    for run in runs:
        snap = se.Snapshot(run.final_snapshot(), device=params['device'])
        G0 = se.random_generator_like(snap.G, seed=params['init_seed'], device=params['device'])
        for which, G, out in (('trained', None, trained), ('random-init', G0, random_init)):
            recorder = FeatureRecorder()
            result = se.evaluate(snap, 'fsr_sparsity', sizes, G=G, features_fn=recorder)
            rec = se.append_record(os.path.join(run.eval_dir, f'metric-fsr_sparsity-{which}.jsonl'), result, snap)
            out.append(rec['results'])
            plots.plot_sparsity(recorder.layer_sparsity(sizes.sparsity_tau, sizes.sparsity_patch, snap.relu),
                                os.path.join(root, f'sparsity-{run.name}-{which}.png'),
                                title=f'{run.name}: {which} G')
        run.relu = snap.relu
        run.snapshot_path = snap.path
    rep.heading('Active channel fraction and Hoyer sparsity per layer')
    rep.text('Per position (patch q): fraction of channels with a > tau x rms(a) (exact non-zeros for ReLU '
             'layers); Hoyer sparsity (sqrt(C) - |a|_1/|a|_2)/(sqrt(C) - 1) of the per-position vector; '
             '"all-zero positions" have no active channel. Random init: the same architecture, freshly initialised '
             f'with torch seed {params["init_seed"]}.')
    rep.table(SPARSITY_HEADERS, sparsity_rows(trained, 'trained') + sparsity_rows(random_init, 'random init'))
    rep.table(['run', 'snapshot', 'ReLU layers'],
              [[r.name, r.snapshot_path, 'yes' if r.relu else 'no'] for r in runs])
    for run in runs:
        for which in ('trained', 'random-init'):
            rep.image(os.path.join(root, f'sparsity-{run.name}-{which}.png'), f'{run.name}: {which} generator')
    path = rep.write()
    click.echo(f'wrote {path}')


@cli.command()
@_analysis_options
@click.option('--every', type=click.IntRange(min=1), default=1, show_default=True,
              help='Evaluate every this-many-th snapshot (the last one always).')
@click.option('--use-run-jsonl', is_flag=True,
              help='Use the run\'s own metric-fsr_moment_gap.jsonl (train.py --fsr-diagnostics=1) instead of '
                   'evaluating its snapshots.')
def moments(**params):
    """Patch-moment gaps per level over training, with noise floors (Fig. 6 analogue)."""
    root, sizes = _setup(params, 'moments')
    runs, lines = _analysis_source(params, root, 'moments', with_network=False)
    if runs is None:
        return
    rep = Report(root, 'FSR experiment 5: patch-moment gaps per level over training (Fig. 6 analogue)')
    common_header(rep, params, lines, analysis_notes(params, sizes))
    cache, finals = {}, []
    for run in runs:
        own = os.path.join(run.run_dir, 'metric-fsr_moment_gap.jsonl')
        if params['use_run_jsonl']:
            if not os.path.isfile(own):
                raise click.ClickException(f'{run.run_dir} has no metric-fsr_moment_gap.jsonl (train with '
                                           f'--fsr-diagnostics=1, or drop --use-run-jsonl)')
            jsonl, records = own, se.read_records(own)
            source = f'{own} (written by the training run)'
        else:
            snaps = run.snapshots()
            chosen = snaps[::params['every']]
            if chosen[-1] != snaps[-1]:
                chosen.append(snaps[-1])
            records = eval_metric(run, chosen, 'fsr_moment_gap', sizes, params['device'], cache)
            jsonl = os.path.join(run.eval_dir, 'metric-fsr_moment_gap.jsonl')
            source = os.path.relpath(jsonl, root)
        if not records:
            raise click.ClickException(f'{jsonl}: no records')
        finals.append((run, records))
        png = os.path.join(root, f'moments-{run.name}.png')
        plots.plot_moment_gaps(jsonl, png, title=run.name)
        rep.heading(f'{run.name}: {show_path(run.run_dir, root)}')
        rep.text(f'Records: {source}.')
        rows = []
        for rec in records:
            res = rec['results']
            kimg = rec.get('kimg', se.snapshot_kimg(str(rec.get('snapshot_pkl') or '')))
            for r in sorted(per_level(res, 'fsr_moment_gap1_res{r}')):
                g1, f1 = res[f'fsr_moment_gap1_res{r}'], res[f'fsr_moment_floor1_res{r}']
                g2, f2 = res[f'fsr_moment_gap2_res{r}'], res[f'fsr_moment_floor2_res{r}']
                rows.append([fmt(kimg), r, fmt(g1), fmt(f1), fmt(ratio(g1, f1)), fmt(g2), fmt(f2), fmt(ratio(g2, f2)),
                             'yes' if res[f'fsr_moment_learned_res{r}'] else 'no'])
        rep.table(['kimg', 'r', 'gap_1', 'floor_1', 'gap_1 / floor_1', 'gap_2', 'floor_2', 'gap_2 / floor_2',
                   'within 2x floor'], rows)
        rep.image(png, f'{run.name}: gap per level over training (dashed: noise floor)')
    if len(finals) > 1:
        rep.heading('Final snapshot, spread over runs')
        rep.table(MOMENT_HEADERS, moment_rows(finals, lambda r: r.label))
    path = rep.write()
    click.echo(f'wrote {path}')


@cli.command()
@_analysis_options
@click.option('--network', metavar='PKL', default=None, help='Analyse this network pickle instead of training.')
def featsim(**params):
    """D first-layer filters vs G output atoms, Hungarian-matched, vs random init (Fig. 7 analogue)."""
    root, sizes = _setup(params, 'featsim')
    runs, lines = _analysis_source(params, root, 'featsim', with_network=True)
    if runs is None:
        return
    rep = Report(root, 'FSR experiment 6: D first-layer vs G output-head feature similarity (Fig. 7 analogue)')
    common_header(rep, params, lines, analysis_notes(params, sizes))
    all_results, figures = [], []
    for run in runs:
        snap = se.Snapshot(run.final_snapshot(), device=params['device'])
        if snap.D is None:
            raise click.ClickException(f'{snap.path} has no discriminator')
        result = se.evaluate(snap, 'fsr_feature_sim', sizes)
        rec = se.append_record(os.path.join(run.eval_dir, 'metric-fsr_feature_sim.jsonl'), result, snap)
        all_results.append(rec['results'])
        for r in sorted(per_level(rec['results'], 'fsr_feature_sim_cos_res{r}')):
            atoms = snap.head_atoms(r) if snap.heads is not None else diagnostics.torgb_atoms(snap.G, r)
            mode = fsr_metrics.d_mode_for_kernel(snap.D, r, int(atoms.shape[-1]))
            filters = diagnostics.effective_filters_d_first_layer(snap.D, r, mode=mode)
            png = os.path.join(root, f'matched-{run.name}-res{r}.png')
            plots.plot_matched_filters(filters, atoms, png)
            figures.append((png, f'{run.name}, {r}x{r}: matched G atoms (left) and D filters (right, mode {mode}), '
                                 f'sorted by cosine'))
        run.snapshot_path = snap.path
        run.atom_source = 'FSR heads (EMA)' if snap.heads is not None else 'ToRGB (no heads)'
    rep.heading('Matched cosine similarity')
    rep.text('Effective patch filters of D\'s first layer(s) at each resolution (FromRGB, or FromRGB composed with '
             'the next 3x3 convolution when that matches the atom size) vs G\'s output atoms at the same resolution, '
             'flattened, L2-normalised, signed cosine, one-to-one Hungarian matching; "random" = the same numbers '
             'for freshly initialised D filters and random Gaussian atoms (mean of 5 draws). Resolutions where D has '
             'no first layer of the atoms\' size are left out.')
    rows = []
    levels = sorted(per_level(all_results[0], 'fsr_feature_sim_cos_res{r}'))
    for r in levels:
        def col(key):
            return fmt_spread([res[key.format(r=r)] for res in all_results if key.format(r=r) in res])
        rows.append([r, col('fsr_feature_sim_cos_res{r}'), col('fsr_feature_sim_frac_res{r}'),
                     col('fsr_feature_sim_random_cos_res{r}'), col('fsr_feature_sim_random_frac_res{r}')])
    if not rows:
        rep.text('No resolution had comparable D filters and G atoms.')
    else:
        rep.table(['r', 'mean matched cos', 'fraction > 0.5', 'random: mean matched cos', 'random: fraction > 0.5'],
                  rows)
    rep.table(['run', 'snapshot', 'G atoms'], [[r.name, r.snapshot_path, r.atom_source] for r in runs])
    for png, caption in figures:
        rep.image(png, caption)
    path = rep.write()
    click.echo(f'wrote {path}')


if __name__ == '__main__':
    cli()  # pylint: disable=no-value-for-parameter
