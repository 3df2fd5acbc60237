"""fsr_plugin.atom_anatomy and bench/fsr_used_atoms.py: what a learned atom is in terms of the teacher's atoms."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.fsr_used_atoms import atom_names, counterfactual_gap, main
from fsr_plugin import atom_anatomy as aa
from fsr_plugin.synthetic import FSRTeacher


def _orthonormal_atoms(k, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((27, k)))
    return q.T.reshape(k, 3, 3, 3)


def test_shifted_atoms_move_one_pixel_and_fill_with_zero():
    a = np.arange(1, 28, dtype=np.float64).reshape(1, 3, 3, 3)
    shifted, names = aa.shifted_atoms(a)
    assert names == [(0, 0, 1), (0, 0, -1), (0, 1, 0), (0, -1, 0)]
    right, left, down, up = shifted
    np.testing.assert_array_equal(right[:, :, 1:], a[0][:, :, :2])
    np.testing.assert_array_equal(right[:, :, 0], 0)
    np.testing.assert_array_equal(left[:, :, :2], a[0][:, :, 1:])
    np.testing.assert_array_equal(left[:, :, 2], 0)
    np.testing.assert_array_equal(down[:, 1:], a[0][:, :2])
    np.testing.assert_array_equal(down[:, 0], 0)
    np.testing.assert_array_equal(up[:, :2], a[0][:, 1:])
    # An atom that lives in one column loses nothing moving in but vanishes moving out on that side only.
    col = np.zeros((1, 3, 3, 3))
    col[0, :, :, 2] = 1
    shifted, names = aa.shifted_atoms(col)
    assert (0, 0, 1) not in names and len(names) == 3


def test_best_blend_recovers_known_non_negative_weights():
    t = _orthonormal_atoms(4)
    cos, i, j, w_i, w_j = aa.best_blend(0.6 * t[1] + 0.8 * t[3], t)
    assert (i, j) == (1, 3) and cos == pytest.approx(1.0)
    assert w_i == pytest.approx(0.6) and w_j == pytest.approx(0.8)
    # A difference of atoms is no non-negative blend: only pairs with a non-negative fit count.
    cos, i, j, _, _ = aa.best_blend(t[0] - t[1], t)
    assert (i, j) != (0, 1) and cos < 0.75


def test_explain_atoms_names_each_kind_and_orders_by_usage():
    t = _orthonormal_atoms(6, seed=1)
    shifted, names = aa.shifted_atoms(t[:1])
    rng = np.random.default_rng(3)
    learned = np.stack([t[2], shifted[2], (t[0] + t[4]) / np.sqrt(2), rng.standard_normal((3, 3, 3))])
    rows = aa.explain_atoms(learned, t, usage=[0.1, 0.4, 0.3, 0.005], min_usage=0.01)
    assert [r['index'] for r in rows] == [1, 2, 0]  # most used first, the unused one left out
    by_index = {r['index']: r for r in rows}
    assert by_index[0]['kind'] == 'atom' and by_index[0]['nearest'] == (2, pytest.approx(1.0))
    # The shifted atom is better explained by its shift than by the nearest atom (unless the shift is near it).
    assert by_index[1]['shifted'][:3] == names[2] and by_index[1]['shifted'][3] == pytest.approx(1.0)
    assert by_index[1]['kind'] == ('shifted' if by_index[1]['nearest'][1] < 0.9 else 'atom')
    assert by_index[2]['kind'] == 'blend' and by_index[2]['blend'][1:3] == (0, 4)
    assert by_index[2]['nearest'][1] == pytest.approx(np.sqrt(0.5))
    assert aa.explain_atoms(learned, t)[3]['kind'] == 'other'  # no usage: every atom, in order
    with pytest.raises(ValueError, match='differ in shape'):
        aa.explain_atoms(learned[:, :, :2], t)
    with pytest.raises(ValueError, match='usage has 2 entries for 4'):
        aa.explain_atoms(learned, t, usage=[0.5, 0.5])


def test_counterfactual_gap_is_the_teachers_own_with_its_atoms_and_grows_with_shifted_flats():
    teacher = FSRTeacher(resolution=32, seed=0)
    assert atom_names(12)[:4] == ['flat0', 'vstep0', 'hstep0', 'flat1']
    own_atoms = teacher.atoms.double().numpy()
    ratio, own = counterfactual_gap(teacher, own_atoms, num=200)
    assert ratio == pytest.approx(own)  # same codes, same atoms: the same images
    moved = own_atoms.copy()
    shifted, names = aa.shifted_atoms(own_atoms)
    for k in (0, 3, 6, 9):  # every flat atom painted one row lower (top row grey)
        s = shifted[names.index((k, 1, 0))]
        moved[k] = s / np.linalg.norm(s)
    worse, _ = counterfactual_gap(teacher, torch.from_numpy(moved), num=200)
    assert worse > own + 1  # a full floor above the teacher itself (deterministic: fixed streams)


def test_used_atoms_cli_names_a_missing_snapshot(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / 'missing.pkl')])
    assert result.exit_code == 2 and 'does not exist' in result.output


def test_used_atoms_cli_on_a_trained_snapshot(tmp_path):
    """End to end on a short fsr-synthetic run with a 3x3 top head: the atom table, both counterfactuals and the
    code statistics are printed, and the teacher's row has its designed one site per 3x3 neighbourhood at most."""
    import glob
    from test_training import run_train
    res = run_train(['--outdir', str(tmp_path), '--data=fsr-synthetic:res=16,num=64', '--cfg=cpu-tiny',
                     '--workers=0', '--tick=0.032', '--kimg=1', '--snap=100', '--fsr=1', '--fsr-head-kernel=3',
                     '--fsr-unit-atoms=1', '--fsr-top-wta=3', '--fsr-top-wta-min=0.05', '--fsr-main-d=head',
                     '--metrics=none'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (snap,) = glob.glob(str(tmp_path / '*' / 'network-snapshot-000001.pkl'))
    out = CliRunner().invoke(main, [snap, '--num=32', '--images=40'])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.startswith('teacher painted with the matched used atoms') for line in lines)
    (codes,) = [line for line in lines if line.startswith("the generator's codes painted with the teacher's atoms")]
    numbers = [float(w.strip(';')) for w in codes.split() if w.strip(';').replace('.', '', 1).isdigit()]
    assert len(numbers) == 3 and min(numbers) > 0
    teacher = [line.split() for line in lines if line.startswith('teacher ')][-1]
    assert 0.5 < float(teacher[1]) < 1.0 and float(teacher[2]) == 1.0    # sites per 3x3, isolated
    (shares,) = [line for line in lines if line.startswith('atom shares')]
    assert shares.count('/') == 13 and 0 <= float(shares.split()[-1]) <= 1    # 12 atoms and 'teacher / generator'
