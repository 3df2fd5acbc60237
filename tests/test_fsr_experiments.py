"""End-to-end tests of `python -m fsr_plugin.experiments` (FSR.md section 5) at tiny size, plus the report helpers.

The three training experiments (synthetic, real, layerwise) are started once per module as background processes,
exactly as a user runs them (each one trains with train.py subprocesses), so their runs overlap; sparsity, moments and
featsim then analyse the synthetic experiment's FSR joint run with --run. Every experiment's report is checked against
an independent recomputation of at least one of its numbers, from the snapshot (numpy) or from the jsonl it wrote.
"""
import glob
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import click
import pytest
import scipy.optimize
import torch
from click.testing import CliRunner
from PIL import Image

from fsr_plugin import experiments
from fsr_plugin import snapshot_eval
from fsr_plugin.report import first_number, fmt, fmt_spread, markdown_table, spread
from fsr_plugin.synthetic import FSRTeacher

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN_DATA = 'fsr-synthetic:res=16,num=400'
REAL_DATA = 'toy-shapes:res=8,num=100'
TINY = ['--cfg=cpu-tiny', '--kimg=1', '--tick=1', '--threads=1', '--eval-images=48', '--train-args=--batch=32']
TIMEOUT = 600

pytestmark = pytest.mark.usefixtures('single_torch_thread')


# ----------------------------------------------------------------------------------------------------------------------
# Helpers.

def _start(args, log_path):
    log = open(log_path, 'wt')
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, '-m', 'fsr_plugin.experiments'] + args, cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return dict(proc=proc, log=log, log_path=log_path)


def _wait(item):
    try:
        item['proc'].wait(timeout=TIMEOUT)
    finally:
        item['log'].close()
    if item['proc'].returncode != 0:
        with open(item['log_path']) as f:
            pytest.fail(f'experiment failed (exit {item["proc"].returncode}):\n' + ''.join(f.readlines()[-30:]))


def _tables(markdown):
    """[(headers, rows)] of every markdown table; rows are lists of cell strings."""
    out, lines = [], markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith('| ') and i + 1 < len(lines) and lines[i + 1].startswith('| ---'):
            headers = [c.strip() for c in lines[i].strip('|').split(' | ')]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith('| '):
                rows.append([c.strip() for c in lines[i].strip().strip('|').split(' | ')])
                i += 1
            out.append((headers, rows))
        else:
            i += 1
    return out


def _table(markdown, first_header, contains=None):
    for headers, rows in _tables(markdown):
        if headers[0] == first_header and (contains is None or contains in headers):
            return headers, rows
    raise AssertionError(f'no table starting with {first_header!r} (containing {contains!r})')


def _cell(headers, row, name):
    return row[headers.index(name)]


def _read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def _last_record(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()][-1]


def _final_snapshot(run_root):
    paths = glob.glob(os.path.join(run_root, '*', 'network-snapshot-*.pkl'))
    assert paths, f'no snapshot under {run_root}'
    return max(paths)


def _load_pickle(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def _heads(data):
    found = [m for m in data['extra_modules_ema'].values() if hasattr(m, 'resolutions')]
    assert len(found) == 1
    return found[0]


def _hungarian_mean_cos(a, b):
    """Mean cosine of the optimal one-to-one matching of the rows of a [Na, D] and b [Nb, D] (numpy only)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = scipy.optimize.linear_sum_assignment(-cos)
    return cos[rows, cols].mean(), cos[rows, cols]


def _close(cell, value, rel=2e-3):
    """A 4-significant-digit report cell agrees with value."""
    got = first_number(cell)
    assert got is not None, f'cell {cell!r} holds no number'
    assert got == pytest.approx(value, rel=rel, abs=1e-6), f'report {cell!r} vs recomputed {value}'


# ----------------------------------------------------------------------------------------------------------------------
# The experiments (started together once per module).

@pytest.fixture(scope='module')
def launched(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('fsr_experiments'))
    items = {
        'synthetic': _start(['synthetic', f'--outdir={root}/synthetic', f'--data={SYN_DATA}', '--seeds=0',
                             '--jobs=2', '--oracle-steps=10', '--oracle-images=32', '--eval-draws=2',
                             '--calibration-mean-images=40', '--eval-metric-seeds=2',
                             '--fsr-args=--fsr-head-kernel=3 --fsr-relu=1 --fsr-unit-atoms=1 --fsr-head-lr=10 '
                             '--fsr-head-gain=1'] + TINY,
                            os.path.join(root, 'synthetic.log')),
        'real': _start(['real', f'--outdir={root}/real', f'--data={REAL_DATA}', '--seeds=0', '--jobs=2'] + TINY,
                       os.path.join(root, 'real.log')),
        'layerwise': _start(['layerwise', f'--outdir={root}/layerwise', f'--data={SYN_DATA}', '--seeds=0',
                             '--cfg=cpu-tiny', '--kimg=1', '--stage-kimg=0.5', '--threads=1', '--eval-images=48',
                             '--train-args=--batch=32'],
                            os.path.join(root, 'layerwise.log')),
    }
    done = {}

    def finished(name):
        if name not in done:
            _wait(items[name])
            done[name] = os.path.join(root, name)
        return done[name]
    yield root, finished
    for item in items.values():
        if item['proc'].poll() is None:
            item['proc'].kill()
            item['proc'].wait()
        item['log'].close()


@pytest.fixture(scope='module')
def synthetic_dir(launched):
    return launched[1]('synthetic')


@pytest.fixture(scope='module')
def joint_run(synthetic_dir):
    runs = glob.glob(os.path.join(synthetic_dir, 'runs', 'joint-seed0', '*', 'training_options.json'))
    assert len(runs) == 1
    return os.path.dirname(runs[0])


def _analyse(name, outdir, run_dir, *extra):
    result = CliRunner().invoke(experiments.cli, [name, f'--outdir={outdir}', f'--run={run_dir}',
                                                  '--eval-images=48', '--threads=1', *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return _read(os.path.join(outdir, 'report.md'))


# ----------------------------------------------------------------------------------------------------------------------
# 1. synthetic

def test_synthetic_report_matches_independent_atom_recovery(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    # Every train.py command line is in the report, with its arm's flags.
    assert report.count('python train.py --outdir=') == 3
    assert '--fsr-schedule=layerwise --fsr-start-res=8 --fsr-stage-kimg=0.5' in report
    headers, rows = _table(report, 'arm', 'mean matched cos')
    joint = [r for r in rows if r[0] == 'joint']
    assert len(joint) == 1 and _cell(headers, joint[0], 'learned atoms') == 'FSR head'
    assert {r[0] for r in rows} == {'plain', 'joint', 'layerwise', 'oracle'}

    # Independent recomputation: teacher atoms vs the saved EMA head's atoms of the final joint snapshot.
    teacher = FSRTeacher(resolution=16, seed=0).atoms.double().numpy().reshape(12, -1)
    data = _load_pickle(_final_snapshot(os.path.join(synthetic_dir, 'runs', 'joint-seed0')))
    head = _heads(data).h16
    learned = head.effective_weight().detach().double().transpose(0, 1).reshape(head.in_channels, -1).numpy()
    mean_cos, matched = _hungarian_mean_cos(teacher, learned)
    _close(_cell(headers, joint[0], 'mean matched cos'), mean_cos)
    assert first_number(_cell(headers, joint[0], 'recovered (cos >= 0.9)')) == int((matched >= 0.9).sum())

    # Recovery by the used atoms: the channels with >= 1% of the top features' absolute mass (this head has no
    # winner-take-all) over 256 samples, z and noise from seed 0.
    from metrics.metric_utils import isolated_rng
    G = data['G_ema']
    assert not head.wta
    z = torch.randn([experiments.USAGE_IMAGES, G.z_dim], generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), isolated_rng(0):
        _, feats = G.synthesis(G.mapping(z, torch.zeros([len(z), 0])), return_features=True, noise_mode='random',
                               force_fp32=True)
    mass = feats[16].double().abs().sum(dim=(0, 2, 3)).numpy()
    used = np.flatnonzero(mass / mass.sum() >= experiments.USED_SHARE)
    assert _cell(headers, joint[0], 'used atoms') == str(len(used))
    used_cos, used_matched = _hungarian_mean_cos(teacher, learned[used])
    used_cos = used_matched.sum() / 12  # teacher atoms left without a partner count as 0
    _close(_cell(headers, joint[0], 'used: mean matched cos'), used_cos)
    assert first_number(_cell(headers, joint[0], 'recovered by used atoms')) == int((used_matched >= 0.9).sum())

    # The oracle row agrees with the oracle's json.
    with open(os.path.join(synthetic_dir, 'eval', 'oracle-seed0.json')) as f:
        oracle = json.load(f)
    row = [r for r in rows if r[0] == 'oracle'][0]
    _close(_cell(headers, row, 'mean matched cos'), oracle['mean_matched_cos'])


def test_synthetic_moment_and_swd_tables_match_the_jsonl(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    headers, rows = _table(report, 'arm', 'gap_1 / floor_1')
    rec = _last_record(os.path.join(synthetic_dir, 'eval', 'plain-seed0', 'metric-fsr_moment_gap.jsonl'))['results']
    row = [r for r in rows if r[0] == 'plain' and r[1] == '16'][0]
    _close(_cell(headers, row, 'gap_2 (cov)'), rec['fsr_moment_gap2_res16'])
    _close(_cell(headers, row, 'gap_1 / floor_1'), rec['fsr_moment_gap1_res16'] / rec['fsr_moment_floor1_res16'])
    learned = int(rec['fsr_moment_gap1_res16'] <= 2 * rec['fsr_moment_floor1_res16'] and
                  rec['fsr_moment_gap2_res16'] <= 2 * rec['fsr_moment_floor2_res16'])
    assert _cell(headers, row, 'within 2x floor (runs)') == f'{learned}/1'
    assert 'gaps and floors the means of 2 independent draws' in report  # --eval-draws=2
    headers, rows = _table(report, 'arm', 'SWD')
    swd = _last_record(os.path.join(synthetic_dir, 'eval', 'layerwise-seed0', 'metric-fsr_swd_levels.jsonl'))
    row = [r for r in rows if r[0] == 'layerwise' and r[1] == '8'][0]
    _close(row[2], swd['results']['fsr_swd_res8'])
    # One moment-gap record per snapshot (2 for a 1-kimg run with --tick=1), and the figures exist.
    with open(os.path.join(synthetic_dir, 'eval', 'joint-seed0', 'metric-fsr_moment_gap.jsonl')) as f:
        assert len([line for line in f if line.strip()]) == 2
    for name in ('pyramid-real', 'pyramid-plain', 'pyramid-joint', 'pyramid-layerwise', 'moments-joint-seed0'):
        assert Image.open(os.path.join(synthetic_dir, f'{name}.png')).size[0] > 0
        assert f'({name}.png)' in report


def test_synthetic_consistency_table_matches_the_jsonl(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    headers, rows = _table(report, 'arm', 'unpaired')
    assert {r[0] for r in rows} == {'plain', 'joint', 'layerwise'}
    rec = _last_record(os.path.join(synthetic_dir, 'eval', 'joint-seed0', 'metric-fsr_level_consistency.jsonl'))
    row = [r for r in rows if r[0] == 'joint' and r[1] == '16'][0]
    _close(_cell(headers, row, 'paired'), rec['results']['fsr_consistency_res16'])
    _close(_cell(headers, row, 'unpaired'), rec['results']['fsr_consistency_unpaired_res16'])
    # The plain host's levels are its image downscaled: a pyramid by construction.
    for row in [r for r in rows if r[0] == 'plain']:
        assert float(_cell(headers, row, 'paired')) < 1e-6 < float(_cell(headers, row, 'unpaired'))


def test_synthetic_noise_share_table_matches_the_jsonl_and_the_teacher(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    section = report.split("## Where each level's variation comes from")[1].split('\n## ')[0]
    headers, rows = _table(section, 'arm', 'noise share')
    assert {r[0] for r in rows} == {'plain', 'joint', 'layerwise', 'teacher'}
    for arm in ('plain', 'joint'):
        path = os.path.join(synthetic_dir, 'eval', f'{arm}-seed0', 'metric-fsr_noise_share.jsonl')
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        assert len(records) == 1  # the final snapshot only
        res = records[0]['results']
        assert sorted(int(r[1]) for r in rows if r[0] == arm) == [4, 8, 16]
        row = [r for r in rows if r[0] == arm and r[1] == '16'][0]
        _close(_cell(headers, row, 'variance, fresh noise'), res['fsr_noise_var_res16'])
        _close(_cell(headers, row, 'variance, fixed noise'), res['fsr_noise_var_fixed_res16'])
        _close(_cell(headers, row, 'noise share'), 1 - res['fsr_noise_var_fixed_res16'] / res['fsr_noise_var_res16'])
    # The teacher row: its own fixed-against-fresh jitter measurement on the report's sample size and seed.
    _, _, _, dataset = experiments.open_data(SYN_DATA)
    teacher = experiments._teacher_of(SYN_DATA, dataset)
    expected = teacher.noise_share(48, seed=0)
    for r in (4, 8, 16):
        row = [x for x in rows if x[0] == 'teacher' and x[1] == str(r)][0]
        _close(_cell(headers, row, 'noise share'), expected[r]['share'])
        _close(_cell(headers, row, 'variance, fresh noise'), expected[r]['var'])


def test_synthetic_position_table_matches_the_jsonl(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    section = report.split('## Per-position statistics per level')[1].split('\n## ')[0]
    headers, rows = _table(section, 'arm', 'variance unevenness / floor')
    assert {r[0] for r in rows} == {'plain', 'joint', 'layerwise'}
    for arm in ('plain', 'joint'):
        path = os.path.join(synthetic_dir, 'eval', f'{arm}-seed0', 'metric-fsr_position_stats.jsonl')
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        assert len(records) == 1  # the final snapshot only
        assert os.path.samefile(records[0]['snapshot_pkl'],
                                _final_snapshot(os.path.join(synthetic_dir, 'runs', f'{arm}-seed0')))
        res = records[0]['results']
        assert sorted(int(r[1]) for r in rows if r[0] == arm) == [4, 8, 16]
        row = [r for r in rows if r[0] == arm and r[1] == '16'][0]
        _close(_cell(headers, row, 'mean pattern'), res['fsr_position_mean_res16'])
        _close(_cell(headers, row, 'mean pattern / floor'),
               res['fsr_position_mean_res16'] / res['fsr_position_mean_floor_res16'])
        _close(_cell(headers, row, 'variance unevenness / floor'),
               res['fsr_position_var_res16'] / res['fsr_position_var_floor_res16'])
        _close(_cell(headers, row, 'variance scale'), res['fsr_position_var_scale_res16'])
        assert all(np.isfinite(v) and v > 0 for v in res.values()), res


def test_synthetic_recalibrated_moment_table(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    section = report.split('## Patch-moment gaps after EMA recalibration')[1].split('\n## ')[0]
    headers, rows = _table(section, 'arm', 'gap_1 / floor_1')
    assert {r[0] for r in rows} == {'joint', 'layerwise'}  # the plain host has no heads to recalibrate
    for arm in ('joint', 'layerwise'):
        eval_dir = os.path.join(synthetic_dir, 'eval', f'{arm}-seed0')
        rec = _last_record(os.path.join(eval_dir, 'metric-fsr_moment_gap-calibrated.jsonl'))['results']
        raw = _last_record(os.path.join(eval_dir, 'metric-fsr_moment_gap.jsonl'))['results']
        row = [r for r in rows if r[0] == arm and r[1] == '16'][0]
        _close(_cell(headers, row, 'gap_2 (cov)'), rec['fsr_moment_gap2_res16'])
        assert rec['fsr_moment_floor2_res16'] == pytest.approx(raw['fsr_moment_floor2_res16'])  # same real samples
        assert rec['fsr_moment_gap2_res16'] != raw['fsr_moment_gap2_res16']
        with open(os.path.join(eval_dir, 'ema-calibration.json')) as f:
            saved = json.load(f)
        gains = saved['gains']
        assert sorted(int(r) for r in gains) == [4, 8, 16] and all(float(g) > 0 for g in gains.values())
        assert f'{arm}-seed0 r4 x{float(gains["4"]):.3f}' in section
        # --calibration-mean-images=40: one shift per level and channel, recorded, and said in the report.
        assert saved['mean_images'] == 40 and sorted(int(r) for r in saved['mean_shifts']) == [4, 8, 16]
        assert all(len(v) == 3 and any(x != 0 for x in v) for v in saved['mean_shifts'].values())
    assert 'mean colour was then moved onto the reals\' (one shift per channel, measured on 40 generated' in section


def test_synthetic_metric_seed_table(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    section = report.split('## Patch-moment gaps over metric seeds')[1].split('\n## ')[0]
    headers, rows = _table(section, 'arm', 'scoring')
    assert {(r[0], r[1]) for r in rows} == {('plain', 'as trained'), ('joint', 'as trained'),
                                           ('layerwise', 'as trained'), ('joint', 'recalibrated'),
                                           ('layerwise', 'recalibrated')}
    for arm, scoring, name in (('plain', 'as trained', 'fsr_moment_gap'),
                               ('joint', 'recalibrated', 'fsr_moment_gap-calibrated')):
        eval_dir = os.path.join(synthetic_dir, 'eval', f'{arm}-seed0')
        first = _last_record(os.path.join(eval_dir, f'metric-{name}.jsonl'))['results']
        with open(os.path.join(eval_dir, f'metric-{name}-seeds.jsonl')) as f:
            more = [json.loads(line) for line in f if line.strip()]
        assert [rec['metric_seed'] for rec in more] == [1]  # --eval-metric-seeds=2: seed 0 (the tables') and 1
        second = more[0]['results']
        assert second['fsr_moment_floor1_res16'] != pytest.approx(first['fsr_moment_floor1_res16'])  # other reals
        both = (first, second)
        ours = [r for r in rows if r[0] == arm and r[1] == scoring]
        assert [r[2] for r in ours] == ['4', '8', '16', 'every level']
        row = ours[2]
        _close(_cell(headers, row, 'gap_2 / floor_2'),
               np.mean([res['fsr_moment_gap2_res16'] / res['fsr_moment_floor2_res16'] for res in both]))
        _close(_cell(headers, row, 'gap_1 / floor_1'),
               np.mean([res['fsr_moment_gap1_res16'] / res['fsr_moment_floor1_res16'] for res in both]))
        within = [res['fsr_moment_gap1_res16'] <= 2 * res['fsr_moment_floor1_res16'] and
                  res['fsr_moment_gap2_res16'] <= 2 * res['fsr_moment_floor2_res16'] for res in both]
        assert _cell(headers, row, 'within 2x floor (evaluations)') == f'{sum(within)}/2'
        every = sum(all(res[f'fsr_moment_gap{m}_res{r}'] <= 2 * res[f'fsr_moment_floor{m}_res{r}']
                        for m in (1, 2) for r in (4, 8, 16)) for res in both)
        assert _cell(headers, ours[3], 'within 2x floor (evaluations)') == f'{every}/2'
    # The plain arm's metric-seed-1 record is the registry's fsr_moment_gap of its final snapshot at seed 1.
    snap = snapshot_eval.Snapshot(_final_snapshot(os.path.join(synthetic_dir, 'runs', 'plain-seed0')))
    sizes = snapshot_eval.EvalSizes(images=48, moment_draws=2, seed=1)
    direct = snapshot_eval.evaluate(snap, 'fsr_moment_gap', sizes)['results']
    with open(os.path.join(synthetic_dir, 'eval', 'plain-seed0', 'metric-fsr_moment_gap-seeds.jsonl')) as f:
        saved = json.loads(f.readline())['results']
    assert saved['fsr_moment_gap2_res8'] == pytest.approx(direct['fsr_moment_gap2_res8'], rel=1e-6)
    assert saved['fsr_moment_floor1_res16'] == pytest.approx(direct['fsr_moment_floor1_res16'], rel=1e-6)


def test_synthetic_teacher_reference_table(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    headers, rows = _table(report, 'r', 'z share of pixel variance')
    with open(os.path.join(synthetic_dir, 'eval', 'teacher-reference.json')) as f:
        saved = json.load(f)
    assert [int(r[0]) for r in rows] == [4, 8, 16]
    for row in rows:
        ref = saved[row[0]]
        _close(_cell(headers, row, 'readout gap_2 / floor_2'), ref['readouts']['ratio_2'])
        _close(_cell(headers, row, 'E[x_r given z] gap_1 / floor_1'), ref['given_z']['ratio_1'])
        _close(_cell(headers, row, 'z share of pixel variance'), ref['z_share'])
        assert 0 < ref['z_share'] < 1
    # The top readout is the teacher's own image: a sample of the reals, within 2x of the floor; its E[x | z] is the
    # jitter-averaged image, whose covariance is far smaller than the reals'.
    assert saved['16']['readouts']['ratio_2'] < 2 and saved['16']['given_z']['ratio_2'] > 2


def test_synthetic_spread_table_matches_an_independent_computation(synthetic_dir):
    report = _read(os.path.join(synthetic_dir, 'report.md'))
    headers, rows = _table(report, 'arm', '16')
    assert {r[0] for r in rows} == {'plain', 'joint', 'layerwise'}
    with open(os.path.join(synthetic_dir, 'eval', 'joint-seed0', 'spread.json')) as f:
        saved = json.load(f)
    _close(_cell(headers, [r for r in rows if r[0] == 'joint'][0], '8'), saved['8'])
    # Plain run: G_ema's 16x16 images with the same z (torch generator seed 0) and constant noise, box-downscaled
    # to 8x8 by hand; the reals' distance comes from the same 64 teacher images the report used (numpy seed 1).
    data = _load_pickle(_final_snapshot(os.path.join(synthetic_dir, 'runs', 'plain-seed0')))
    G = data['G_ema'].eval()
    z = torch.randn([64, G.z_dim], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = G(z, torch.zeros([64, G.c_dim]), noise_mode='const', force_fp32=True).double()
    fake8 = img.reshape(64, img.shape[1], 8, 2, 8, 2).mean([3, 5]).flatten(1)
    opts = snapshot_eval.read_training_options(os.path.dirname(_final_snapshot(os.path.join(synthetic_dir, 'runs',
                                                                                            'plain-seed0'))))
    real8 = snapshot_eval.real_pyramid_images(opts['training_set_kwargs'], [8, 16], 64, seed=1)[8].double().flatten(1)
    expected = torch.pdist(fake8).mean() / torch.pdist(real8).mean()
    _close(_cell(headers, [r for r in rows if r[0] == 'plain'][0], '8'), float(expected))


def test_pyramid_spread_on_constructed_levels():
    torch.manual_seed(0)
    reals = {4: torch.randn([10, 3, 4, 4]), 8: torch.randn([10, 3, 8, 8])}
    same = {4: reals[4][:1].repeat(10, 1, 1, 1), 8: 2 * reals[8] + 5}
    out = snapshot_eval.pyramid_spread(same, reals)
    assert out[4] == 0  # one image drawn ten times
    assert out[8] == pytest.approx(2.0, rel=1e-6)  # distances scale with the images; a shift changes nothing
    assert snapshot_eval.pyramid_spread({4: reals[4]}, reals) == {4: pytest.approx(1.0)}
    with pytest.raises(ValueError, match='at least 2'):
        snapshot_eval.pyramid_spread({4: reals[4][:1]}, reals)


# ----------------------------------------------------------------------------------------------------------------------
# 2. real

def test_real_report_matches_the_jsonl(launched):
    outdir = launched[1]('real')
    report = _read(os.path.join(outdir, 'report.md'))
    assert report.count('python train.py --outdir=') == 2
    headers, rows = _table(report, 'arm', 'SWD')
    for arm in ('baseline', 'fsr'):
        rec = _last_record(os.path.join(outdir, 'eval', f'toy-shapes-res8-num100-{arm}-seed0',
                                        'metric-fsr_swd_levels.jsonl'))['results']
        for r in (4, 8):
            row = [x for x in rows if x[0] == arm and x[1] == str(r)][0]
            _close(row[2], rec[f'fsr_swd_res{r}'])
    headers, rows = _table(report, 'generator', 'Hoyer sparsity (mean)')
    rec = _last_record(os.path.join(outdir, 'eval', 'toy-shapes-res8-num100-fsr-seed0',
                                    'metric-fsr_sparsity.jsonl'))['results']
    row = [x for x in rows if x[0] == 'fsr' and x[1] == '8'][0]
    _close(_cell(headers, row, 'Hoyer sparsity (mean)'), rec['fsr_sparsity_hoyer_res8'])
    for name in ('real', 'baseline', 'fsr'):
        assert os.path.isfile(os.path.join(outdir, f'pyramid-toy-shapes-res8-num100-{name}.png'))


# ----------------------------------------------------------------------------------------------------------------------
# 3. layerwise

def test_layerwise_stage_table_and_grids(launched):
    outdir = launched[1]('layerwise')
    report = _read(os.path.join(outdir, 'report.md'))
    headers, rows = _table(report, 'stage', 'images into next stage')
    assert [r[1] for r in rows] == ['8', '16']
    run_dir = os.path.dirname(glob.glob(os.path.join(outdir, 'runs', 'layerwise-seed0', '*',
                                                     'training_options.json'))[0])
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        grow = json.load(f)['growing_kwargs']
    assert grow['resolutions'] == [8, 16] and grow['stage_kimg'] == [0.5]
    snap = os.path.join(run_dir, _cell(headers, rows[0], 'snapshot'))
    nimg = _load_pickle(snap)['resume_state']['cur_nimg']
    assert nimg >= 500                      # the first snapshot at or after the end of stage 1
    _close(_cell(headers, rows[0], 'snapshot kimg'), nimg / 1000)
    assert int(_cell(headers, rows[0], 'images into next stage')) == nimg - 500
    # Stage-1 grid: levels 4 and 8 drawn, level 16 (not trained yet) mid-grey. Rows of 16 px + 2 px gap, x4.
    grid = np.asarray(Image.open(os.path.join(outdir, 'stage1-res8-seed0.png')).convert('RGB'))
    factor = 4
    row16 = grid[2 * 18 * factor:(2 * 18 + 16) * factor, :16 * factor]
    row8 = grid[18 * factor:(18 + 16) * factor, :16 * factor]
    assert (row16 == 128).all() and not (row8 == 128).all()
    assert grid.shape[0] == (3 * 18 - 2) * factor


# ----------------------------------------------------------------------------------------------------------------------
# 4-6 on the synthetic joint run

def test_sparsity_random_init_row_matches_explicit_count(joint_run, tmp_path):
    report = _analyse('sparsity', str(tmp_path / 'sp'), joint_run, '--sparsity-images=32')
    headers, rows = _table(report, 'generator', 'active fraction (mean)')
    data = _load_pickle(_final_snapshot(os.path.dirname(joint_run)))
    from training.networks import Generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        G0 = Generator(**data['G_ema'].init_kwargs).eval()
    gen = torch.Generator().manual_seed(0)
    feats = {}
    with torch.no_grad():
        for _ in range(2):                         # the metric draws its latents 16 at a time
            z = torch.randn([16, G0.z_dim], generator=gen)
            _img, f = G0.synthesis(G0.mapping(z, torch.zeros([16, 0])), return_features=True, force_fp32=True)
            for r, v in f.items():
                feats.setdefault(r, []).append(v)
    for r in (4, 8, 16):
        active = (torch.cat(feats[r]) != 0).double().numpy()      # ReLU layers: exact non-zeros
        row = [x for x in rows if x[0] == 'random init' and x[1] == str(r)][0]
        _close(_cell(headers, row, 'active fraction (mean)'), active.mean(axis=1).mean())
    assert os.path.isfile(tmp_path / 'sp' / 'sparsity-run-seed0-trained.png')


def test_moments_table_matches_the_jsonl(joint_run, tmp_path):
    report = _analyse('moments', str(tmp_path / 'mo'), joint_run)
    headers, rows = _table(report, 'kimg', 'gap_1 / floor_1')
    with open(tmp_path / 'mo' / 'eval' / 'run' / 'metric-fsr_moment_gap.jsonl') as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert len(records) == 2 and len(rows) == 2 * 3       # 2 snapshots x levels 4, 8, 16
    last = records[-1]
    row = [x for x in rows if x[1] == '16'][-1]
    _close(row[0], last['cur_nimg'] / 1000)
    g, fl = last['results']['fsr_moment_gap1_res16'], last['results']['fsr_moment_floor1_res16']
    _close(_cell(headers, row, 'gap_1'), g)
    _close(_cell(headers, row, 'gap_1 / floor_1'), g / fl)
    assert os.path.isfile(tmp_path / 'mo' / 'moments-run-seed0.png')


def test_featsim_matches_numpy_hungarian_on_the_snapshot(joint_run, tmp_path):
    report = _analyse('featsim', str(tmp_path / 'fs'), joint_run)
    headers, rows = _table(report, 'r', 'mean matched cos')
    data = _load_pickle(_final_snapshot(os.path.dirname(joint_run)))
    block = data['D'].b16
    w1 = (block.fromrgb.weight.detach().double() * block.fromrgb.weight_gain).numpy()[:, :, 0, 0]   # [T, C]
    w2 = (block.conv0.weight.detach().double() * block.conv0.weight_gain).numpy()                   # [O, T, 3, 3]
    d_filters = np.einsum('otyx,tc->ocyx', w2, w1).reshape(w2.shape[0], -1)
    head = _heads(data).h16
    atoms = head.effective_weight().detach().double().transpose(0, 1).reshape(head.in_channels, -1).numpy()
    mean_cos, matched = _hungarian_mean_cos(atoms, d_filters)
    row = [x for x in rows if x[0] == '16'][0]
    _close(_cell(headers, row, 'mean matched cos'), mean_cos)
    _close(_cell(headers, row, 'fraction > 0.5'), float((matched > 0.5).mean()))
    assert os.path.isfile(tmp_path / 'fs' / 'matched-run-seed0-res16.png')


# ----------------------------------------------------------------------------------------------------------------------
# Bad input and dry runs (in-process, fast).

def _invoke(*args):
    return CliRunner().invoke(experiments.cli, list(args))


def test_unknown_data_is_a_clear_error(tmp_path):
    result = _invoke('synthetic', f'--outdir={tmp_path}', '--data=no-such-dataset')
    assert result.exit_code == 2
    assert 'Invalid value for --data' in result.output and 'no-such-dataset' in result.output
    result = _invoke('real', f'--outdir={tmp_path}', f'--data={tmp_path / "missing.zip"}')
    assert result.exit_code == 2 and 'missing.zip' in result.output
    result = _invoke('synthetic', f'--outdir={tmp_path}', f'--data={REAL_DATA}')
    assert result.exit_code == 2 and 'not a synthetic FSR dataset' in result.output
    assert not os.path.exists(tmp_path / 'runs')


def test_missing_or_bad_run_dir_is_a_clear_error(tmp_path):
    for name in ('sparsity', 'moments', 'featsim'):
        result = _invoke(name, f'--outdir={tmp_path / "o"}', f'--run={tmp_path / "nope"}')
        assert result.exit_code == 2
        assert 'Invalid value for --run' in result.output and 'does not exist' in result.output
    (tmp_path / 'empty').mkdir()
    result = _invoke('moments', f'--outdir={tmp_path / "o"}', f'--run={tmp_path / "empty"}')
    assert result.exit_code == 2 and 'no training_options.json' in result.output
    result = _invoke('sparsity', f'--outdir={tmp_path / "o"}', f'--network={tmp_path / "x.pkl"}')
    assert result.exit_code == 2 and 'does not exist' in result.output


def test_bad_options_are_clear_errors(tmp_path):
    result = _invoke('synthetic', f'--outdir={tmp_path}', f'--data={SYN_DATA}', '--seeds=0,x')
    assert result.exit_code == 2 and "--seeds: 'x' is not a non-negative integer" in result.output
    result = _invoke('synthetic', f'--outdir={tmp_path}', f'--data={SYN_DATA}', '--arms=plain,gan')
    assert result.exit_code == 2 and 'unknown arm(s) gan' in result.output
    result = _invoke('layerwise', f'--outdir={tmp_path}', f'--data={SYN_DATA}', '--start-res=12')
    assert result.exit_code == 2 and 'not a synthesis resolution' in result.output
    result = _invoke('layerwise', f'--outdir={tmp_path}', f'--data={SYN_DATA}', '--kimg=2', '--stage-kimg=2')
    assert result.exit_code == 2 and 'nothing of --kimg=2' in result.output
    result = _invoke('real', f'--outdir={tmp_path}', f'--data={REAL_DATA}', '--cfg=huge')
    assert result.exit_code == 2 and 'not a train.py preset' in result.output


def test_dry_run_prints_the_train_commands(tmp_path):
    result = _invoke('synthetic', f'--outdir={tmp_path}', f'--data={SYN_DATA}', '--kimg=30', '--seeds=0-1',
                     '--dry-run')
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if 'train.py' in line]
    assert len(lines) == 6                      # 3 arms x 2 seeds
    assert sum('--fsr=1' in line for line in lines) == 4
    assert sum('--fsr-stage-kimg=15' in line for line in lines) == 2      # 30 kimg over stages 8, 16
    assert all('--kimg=30' in line and '--metrics=none' in line for line in lines)
    assert not os.path.exists(tmp_path / 'runs')
    result = _invoke('featsim', f'--outdir={tmp_path}', f'--data={SYN_DATA}', '--dry-run', '--seeds=3')
    assert result.exit_code == 0 and result.output.count('train.py') == 1 and '--seed=3' in result.output


# ----------------------------------------------------------------------------------------------------------------------
# Helpers of the report and the evaluation.

def test_spread_and_formatting():
    assert fmt(0.123456) == '0.1235' and fmt(2.0) == '2' and fmt(float('nan')) == 'n/a' and fmt(None) == 'n/a'
    s = spread([1.0, 2.0, 4.0])
    assert s['mean'] == pytest.approx(7 / 3) and s['std'] == pytest.approx(np.std([1, 2, 4])) and s['n'] == 3
    cell = fmt_spread([1.0, 2.0, 4.0])
    assert cell == f'{fmt(7 / 3)} ± {fmt(np.std([1, 2, 4]))} (1–4, n=3)'
    assert first_number(cell) == pytest.approx(7 / 3, rel=1e-3) and first_number('n/a') is None
    assert fmt_spread([0.5]) == '0.5' and fmt_spread([float('nan')]) == 'n/a'
    table = markdown_table(['a', 'b'], [[1, 'x|y']])
    assert table.splitlines() == ['| a | b |', '| --- | --- |', '| 1 | x\\|y |']
    with pytest.raises(ValueError, match='row 0 has 1 cells'):
        markdown_table(['a', 'b'], [[1]])
    assert experiments.parse_seeds('0,3-5') == [0, 3, 4, 5]
    for bad, msg in [('', 'no seed'), ('1,1', 'repeated'), ('2-1', 'empty'), ('a', "'a' is not")]:
        with pytest.raises(click.BadParameter, match=msg):
            experiments.parse_seeds(bad)
    assert experiments.slug('toy-shapes:res=8,num=100') == 'toy-shapes-res8-num100'


def test_composed_host_atoms_are_what_conv1_and_torgb_paint():
    """A unit impulse in conv1's input channel i, through the host's own modulated convolutions, paints exactly atom
    i (orientation included)."""
    from training.networks import Generator, modulated_conv2d
    torch.manual_seed(1)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=1),
                  synthesis_kwargs=dict(channel_base=64, channel_max=8)).eval()
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn([8]))
        for p in G.synthesis.b8.conv1.affine.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    atoms = snapshot_eval.composed_host_atoms(G, 8)
    block, w = G.synthesis.b8, G.mapping.w_avg.reshape(1, -1)
    for i in (0, 5):
        x = torch.zeros([1, block.conv1.in_channels, 7, 7])
        x[0, i, 3, 3] = 1
        with torch.no_grad():
            y = modulated_conv2d(x=x, weight=block.conv1.weight, styles=block.conv1.affine(w), padding=1)
            rgb = modulated_conv2d(x=y, weight=block.torgb.weight,
                                   styles=block.torgb.affine(w) * block.torgb.weight_gain, demodulate=False)
        np.testing.assert_allclose(rgb[0, :, 2:5, 2:5].double().numpy(), atoms[i].numpy(), atol=1e-6)
        assert float(rgb.abs().sum() - rgb[0, :, 2:5, 2:5].abs().sum()) == pytest.approx(0, abs=1e-6)


class _StubG:
    """A generator stand-in whose top features (4x4, 3 channels) are constructed: channel 0 is 2 at (1, 1) and 0
    elsewhere, channel 1 is 1 everywhere, channel 2 is -1 everywhere."""
    img_resolution, z_dim, c_dim = 4, 2, 0

    def mapping(self, z, c):
        return z

    def synthesis(self, ws, return_features=True, **kwargs):
        n = ws.shape[0]
        s = torch.zeros([n, 3, 4, 4])
        s[:, 0, 1, 1] = 2
        s[:, 1] = 1
        s[:, 2] = -1
        return None, {4: s}


class _StubHeads:
    resolutions = [4]

    def __init__(self, wta):
        self.top = torch.nn.Module()
        self.top.wta, self.top.wta_jitter = wta, 0.0

    def head(self, r):
        return self.top


class _StubSnapshot:
    def __init__(self, wta):
        self.G, self.heads, self.device = _StubG(), _StubHeads(wta), torch.device('cpu')


def test_top_channel_usage_counts_what_the_head_paints():
    # Winner-take-all (one channel per site): channel 0 wins 1 site with 2, channel 1 the other 15 with 1 each.
    usage = snapshot_eval.top_channel_usage(_StubSnapshot(wta=1), num=5)
    np.testing.assert_allclose(usage.numpy(), [2 / 17, 15 / 17, 0], rtol=1e-12)
    # Without winner-take-all every channel paints with its absolute value: 2, 16 and 16 per image.
    usage = snapshot_eval.top_channel_usage(_StubSnapshot(wta=0), num=5)
    np.testing.assert_allclose(usage.numpy(), [2 / 34, 16 / 34, 16 / 34], rtol=1e-12)
    snap = _StubSnapshot(wta=1)
    snap.heads.resolutions = [2]
    assert snapshot_eval.top_channel_usage(snap, num=5) is None


def test_used_atom_recovery_ignores_atoms_that_paint_nothing():
    """The teacher's atom 0 sits on channel 2, which never wins: the all-atom matching recovers it, the used
    atoms do not; atom 1 on channel 1 (used) is recovered both ways."""
    teacher = FSRTeacher(resolution=16, seed=0).atoms.double()
    gen = torch.Generator().manual_seed(0)
    learned = torch.randn([3] + list(teacher.shape[1:]), generator=gen, dtype=torch.float64)
    learned[2], learned[1] = teacher[0], teacher[1]
    out = experiments.used_atom_recovery(_StubSnapshot(wta=1), teacher, learned, 0.9)
    full = experiments.matching.atom_recovery(teacher, learned, 0.9)
    assert full['recovered'] == 2 and out['used_atoms'] == 2 and out['used_recovered'] == 1
    assert out['used_per_atom_cos'][1] == pytest.approx(1) and out['used_per_atom_cos'][0] < 0.9
    assert out['partner_share'][0] == 0 and out['partner_share'][1] == pytest.approx(15 / 17)
    # Unmatched teacher atoms count as cosine 0 in the mean.
    assert out['used_mean_matched_cos'] == pytest.approx(np.mean(out['used_per_atom_cos']))


def test_learned_top_atoms_compares_larger_head_atoms_at_their_best_placement():
    class _Heads:
        resolutions = [16, 32]

    class _Snap:
        G = type('G', (), {'img_resolution': 32})()
        heads = _Heads()

        def __init__(self, k):
            self.atoms = torch.zeros([5, 3, k, k], dtype=torch.float64)

        def head_atoms(self, r):
            return self.atoms

    (source, atoms, note), = experiments._learned_top_atoms(_Snap(5))
    assert source == 'FSR head (5x5)' and atoms.shape == (5, 3, 5, 5) and 'best placement' in note
    (source, atoms, note), = experiments._learned_top_atoms(_Snap(3))
    assert source == 'FSR head' and note == ''
    (source, atoms, note), = experiments._learned_top_atoms(_Snap(2))
    assert atoms is None and 'cannot be compared' in note
