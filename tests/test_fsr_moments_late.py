"""--fsr-moments-late / --fsr-moments-late-kimg: the patch-moment weights that replace --fsr-moments part-way
through a run, their switch in the training loop, the CLI and its refusals."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_fsr_components import tiny_G  # noqa: E402
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin.plugin import make_plugin  # noqa: E402
from training import training_loop  # noqa: E402


def _plugin(**opts):
    return make_plugin(dict(fsr=True, fsr_pair=False, **opts),
                       dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))


def test_moment_weights_switch_at_the_late_kimg(tmp_path, one_thread):
    # Early weights at level 8 only, late weights at level 16 only, switching after 16 images (2 of 4 steps of 8).
    plugin = _plugin(fsr_moments='8:1', fsr_moments_late='16:2', fsr_moments_late_kimg=0.016)
    assert plugin.cfg.moments_late_weight == {16: 2.0} and plugin.cfg.moments_late_kimg == 0.016
    os.makedirs(tmp_path / 'run')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    assert plugin.moment_weights_at(0) == {8: 1.0} and plugin.moment_weights_at(15) == {8: 1.0}
    assert plugin.moment_weights_at(16) == {16: 2.0} and plugin.moment_weights_at(10 ** 9) == {16: 2.0}
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'stats.jsonl').read_text().splitlines()]

    def steps(key):
        return sum(row[key]['num'] for row in rows if key in row)

    assert steps('FSR/moments_mean_r8') == 2 and steps('FSR/moments_mean_r16') == 2
    assert steps('Loss/fsr/moments') == 4
    # Without the late option the early weights hold for the whole run; a single number covers every level >= q.
    plain = _plugin(fsr_moments='8:1')
    plain.extra_modules(tiny_G(), None, None, 'cpu')
    assert plain.moment_weights_at(10 ** 9) == {8: 1.0}
    every = _plugin(fsr_moments='0', fsr_moments_late='3', fsr_moments_late_kimg=5)
    every.extra_modules(tiny_G(), None, None, 'cpu')
    assert every.moment_weights_at(4999) == {} and every.moment_weights_at(5000) == {4: 3.0, 8: 3.0, 16: 3.0}


def test_moments_late_cli_and_refusals(tmp_path):
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + [
        '--fsr=1', '--fsr-moments=8:1', '--fsr-moments-late=8:1,16:3', '--fsr-moments-late-kimg=104'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_moments_late": "8:1,16:3"' in res.stdout and '"fsr_moments_late_kimg": 104.0' in res.stdout
    for extra, message in (
            (['--fsr-moments-late=16:3'], 'give --fsr-moments-late-kimg'),
            (['--fsr-moments-late-kimg=10'], 'give the weights that start then'),
            (['--fsr-moments-late=16:-1', '--fsr-moments-late-kimg=10'], 'weights must be >= 0'),
            (['--fsr-moments-late=64:1', '--fsr-moments-late-kimg=10'], '64 is not a synthesis resolution')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1'] + extra, tmp_path)
        assert res.returncode != 0 and message in res.stderr, (extra, res.stderr[-2000:])
        assert '--fsr-moments-late' in res.stderr
