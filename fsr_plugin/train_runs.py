"""Training runs of the FSR experiments: train.py started as a subprocess with exactly the command line a user would
type, one run folder per arm and seed (<root>/runs/<arm>-seed<s>/NNNNN-desc/), at most N at a time, each logging to
<root>/logs/<arm>-seed<s>.log; and the finished runs (`Run`) the experiments evaluate.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

import click

from fsr_plugin import snapshot_eval as se
from fsr_plugin.report import command_line
from torch_utils import cpu_features

__all__ = ['REPO_ROOT', 'TRAIN_PY', 'TrainJob', 'make_job', 'Run', 'find_run_dir', 'train_env', 'run_jobs',
           'train_seconds']

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(REPO_ROOT, 'train.py')


@dataclasses.dataclass
class TrainJob:
    """One train.py run: arm label, seed and the full argument list (after `python train.py`)."""
    label: str
    seed: int
    args: list
    outdir: str
    kimg: int

    @property
    def name(self):
        return f'{self.label}-seed{self.seed}'

    def argv(self):
        return [sys.executable, TRAIN_PY] + self.args

    def display(self, env=None):
        return command_line(['python', 'train.py'] + self.args, env)


def make_job(root, label, seed, data, cfg, kimg, tick, snap, extra):
    outdir = os.path.join(root, 'runs', f'{label}-seed{seed}')
    args = [f'--outdir={outdir}', f'--data={data}', f'--cfg={cfg}', f'--kimg={kimg}', f'--seed={seed}',
            f'--tick={tick:g}', f'--snap={snap}', '--metrics=none'] + list(extra)
    return TrainJob(label=label, seed=seed, args=args, outdir=outdir, kimg=int(kimg))


@dataclasses.dataclass
class Run:
    """A finished train.py run (or a run / pickle given on the command line) and the folder of its evaluations."""
    label: str
    seed: object
    run_dir: object        # None for a single pickle
    eval_dir: str
    network: object = None  # a single pickle instead of a run

    @property
    def name(self):
        return self.label if self.seed is None else f'{self.label}-seed{self.seed}'

    def snapshots(self):
        return [self.network] if self.network is not None else se.list_snapshots(self.run_dir)

    def final_snapshot(self):
        return self.snapshots()[-1]


def find_run_dir(outdir):
    """The single train.py run folder under outdir (None if there is none); raises if there are several."""
    if not os.path.isdir(outdir):
        return None
    found = [os.path.join(outdir, d) for d in sorted(os.listdir(outdir))
             if os.path.isfile(os.path.join(outdir, d, 'training_options.json'))]
    if len(found) > 1:
        raise click.ClickException(f'{outdir} holds several runs ({", ".join(found)}); use a new --outdir')
    return found[0] if found else None


def _option_value(args, name):
    """The last value of train.py option `name` (e.g. '--precision') in an argument list, or None."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(name + '='):
            value = arg.split('=', 1)[1]
        elif arg == name and i + 1 < len(args):
            value = args[i + 1]
    return value


def precision_warning(jobs):
    """train.py's warning for jobs that ask for --precision=mixed on a CPU that would emulate bfloat16, or None."""
    for job in jobs:
        device = _option_value(job.args, '--device') or 'cpu'
        message = cpu_features.mixed_precision_warning(_option_value(job.args, '--precision'), device)
        if message:
            return message
    return None


def _finished(run_dir, kimg):
    try:
        last = se.list_snapshots(run_dir)[-1]
    except ValueError:
        return False
    return se.snapshot_kimg(last) >= kimg


def train_env(threads):
    return {'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)} if threads else {}


def run_jobs(jobs, root, parallel=1, threads=None, reuse=False):
    """Run the train.py jobs (at most `parallel` at a time), each logging to <root>/logs/<name>.log. With reuse, a
    job whose folder already holds a finished run (final snapshot at >= kimg) is not run again. Returns
    {job name: run folder}. Raises click.ClickException with the log's last lines when a run fails."""
    results, todo = {}, []
    for job in jobs:
        existing = find_run_dir(job.outdir)
        if existing is not None:
            if reuse and _finished(existing, job.kimg):
                click.echo(f'reusing {existing}')
                results[job.name] = existing
                continue
            if reuse:
                raise click.ClickException(f'{existing} is not finished (no snapshot at {job.kimg} kimg); continue it '
                                           f'with `python train.py --outdir={job.outdir} --resume={existing} '
                                           f'--kimg={job.kimg}` or delete it')
            raise click.ClickException(f'{job.outdir} already holds a run ({existing}); pass --reuse to reuse '
                                       f'finished runs, or choose a new --outdir')
        todo.append(job)
    warning = precision_warning(todo)
    if warning:
        click.echo(warning, err=True)
    log_dir = os.path.join(root, 'logs')
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ, **train_env(threads))
    running = []

    def start(job):
        os.makedirs(job.outdir, exist_ok=True)
        log_path = os.path.join(log_dir, f'{job.name}.log')
        log = open(log_path, 'wt')
        click.echo(f'[{time.strftime("%H:%M:%S")}] start {job.name}: {job.display(train_env(threads))}')
        proc = subprocess.Popen(job.argv(), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return job, proc, log, log_path, time.time()

    try:
        while todo or running:
            while todo and len(running) < max(1, int(parallel)):
                running.append(start(todo.pop(0)))
            time.sleep(0.5)
            for item in list(running):
                job, proc, log, log_path, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                if proc.returncode != 0:
                    with open(log_path, 'rt', errors='replace') as f:
                        tail = ''.join(f.readlines()[-15:])
                    raise click.ClickException(f'training run {job.name} failed (exit code {proc.returncode}); '
                                               f'last lines of {log_path}:\n{tail}')
                run_dir = find_run_dir(job.outdir)
                if run_dir is None:
                    raise click.ClickException(f'training run {job.name} wrote no run folder under {job.outdir}')
                click.echo(f'[{time.strftime("%H:%M:%S")}] done  {job.name} in {time.time() - t0:.0f} s: {run_dir}')
                results[job.name] = run_dir
    finally:
        for job, proc, log, _, _ in running:
            proc.terminate()
            proc.wait()
            log.close()
    return results


def train_seconds(run_dir):
    """Wall-clock seconds of a run's training loop from its stats.jsonl (Timing/total_sec of the last tick), or
    None."""
    path = os.path.join(run_dir, 'stats.jsonl')
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    last = json.loads(line)
                except json.JSONDecodeError:
                    continue
    value = (last or {}).get('Timing/total_sec')
    if isinstance(value, dict):
        value = value.get('mean')
    return float(value) if value is not None else None
