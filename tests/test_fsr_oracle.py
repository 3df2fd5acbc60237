"""Tests of fsr_plugin.matching (filter matching, atom recovery) and fsr_plugin.oracle (convolutional sparse
coding fitted to teacher images)."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsr_plugin.matching import atom_recovery, match_filters, placed_atom_cosines
from fsr_plugin.oracle import fit_dictionary, lipschitz_constant, random_floor, run_oracle, sparse_codes
from fsr_plugin.synthetic import FSRTeacher, structured_atoms



pytestmark = pytest.mark.usefixtures('single_torch_thread')

# -- matching --------------------------------------------------------------------------------------------------------

def test_identical_filters_match_with_cosine_one():
    a = np.random.RandomState(0).randn(5, 27)
    result = match_filters(a, 3.0 * a)                       # scale does not matter
    np.testing.assert_array_equal(result['rows'], np.arange(5))
    np.testing.assert_array_equal(result['cols'], np.arange(5))
    np.testing.assert_allclose(result['matched_cos'], 1.0, atol=1e-12)
    assert result['mean_matched_cos'] == pytest.approx(1.0) and result['frac_above'] == 1.0
    assert result['cos'].shape == (5, 5)


def test_permuted_filters_are_matched_back():
    a = np.random.RandomState(1).randn(6, 12)
    perm = np.array([3, 0, 5, 1, 4, 2])
    result = match_filters(a, a[perm])                       # b[j] = a[perm[j]]
    np.testing.assert_array_equal(perm[result['cols']], result['rows'])
    np.testing.assert_allclose(result['matched_cos'], 1.0, atol=1e-12)


def test_orthogonal_filters_have_cosine_zero_and_negation_minus_one():
    eye = np.eye(4)
    result = match_filters(eye[:2], eye[2:])
    np.testing.assert_allclose(result['cos'], 0.0)
    assert result['mean_matched_cos'] == 0.0 and result['frac_above'] == 0.0
    signed = match_filters(eye[:1], -eye[:1])                # signed cosine: a negated atom is not a match
    assert signed['mean_matched_cos'] == pytest.approx(-1.0)


def test_matching_is_optimal_against_brute_force():
    rng = np.random.RandomState(2)
    a, b = rng.randn(4, 6), rng.randn(6, 6)
    result = match_filters(torch.from_numpy(a), torch.from_numpy(b))   # torch input accepted
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = an @ bn.T
    np.testing.assert_allclose(result['cos'], cos, atol=1e-12)
    best = max(sum(cos[i, j] for i, j in enumerate(cols)) for cols in itertools.permutations(range(6), 4))
    assert result['matched_cos'].sum() == pytest.approx(best, abs=1e-12)
    assert len(set(result['cols'].tolist())) == 4
    assert result['frac_above'] == pytest.approx(np.mean(result['matched_cos'] > 0.5))


def test_matching_flattens_filters_and_checks_shapes():
    atoms = structured_atoms(12).numpy()
    result = match_filters(atoms, atoms[::-1].copy())
    np.testing.assert_allclose(result['matched_cos'], 1.0, atol=1e-12)
    with pytest.raises(ValueError, match='same filter size'):
        match_filters(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r'\[N, D\]'):
        match_filters(np.ones(3), np.ones((2, 3)))
    with pytest.raises(ValueError, match='NaN'):
        match_filters(np.array([[np.nan, 1.0]]), np.ones((1, 2)))


def test_atom_recovery_counts_teacher_atoms():
    teacher = np.eye(4)
    learned = np.stack([
        teacher[2],                                           # exact
        teacher[0] + 0.1 * teacher[1],                        # cos 0.995
        teacher[1] + teacher[3],                              # cos 0.707 with 1 and with 3
        np.ones(4),                                           # cos 0.5 with everything
        -teacher[3],                                          # negation: cos -1
    ])
    rec = atom_recovery(teacher, learned, threshold=0.9)
    # Optimal assignment: 0 <- learned 1, 2 <- learned 0, then {1, 3} share learned 2 (0.707) and 3 (0.5).
    expected = np.array([1 / math.sqrt(1.01), 1 / math.sqrt(2), 1.0, 0.5])
    order = np.sort(rec['cos'][[1, 3]])
    np.testing.assert_allclose(np.sort(rec['cos'][[0, 2]]), np.sort(expected[[0, 2]]), atol=1e-12)
    np.testing.assert_allclose(order, [0.5, 1 / math.sqrt(2)], atol=1e-12)
    assert rec['recovered'] == 2 and rec['fraction'] == 0.5
    assert rec['mean_matched_cos'] == pytest.approx(expected.mean())
    assert rec['partner'][2] == 0 and rec['partner'][0] == 1


def test_atom_recovery_with_fewer_learned_atoms_counts_unmatched_as_zero():
    teacher = np.eye(3)
    rec = atom_recovery(teacher, teacher[:1], threshold=0.9)
    assert rec['recovered'] == 1 and rec['fraction'] == pytest.approx(1 / 3)
    np.testing.assert_allclose(rec['cos'], [1, 0, 0])
    np.testing.assert_array_equal(rec['partner'], [0, -1, -1])


# -- oracle building blocks -----------------------------------------------------------------------------------------

def test_larger_learned_atoms_are_compared_at_the_best_placement():
    gen = torch.Generator().manual_seed(4)
    teacher = torch.randn([3, 3, 3, 3], generator=gen, dtype=torch.float64)
    learned = torch.zeros([4, 3, 5, 5], dtype=torch.float64)
    learned[0, :, 2:5, 0:3] = 2 * teacher[1]                 # teacher atom 1 in the bottom-left corner, scaled
    learned[1, :, 1:4, 1:4] = teacher[0]                     # atom 0 centred, plus energy outside its placement
    learned[1, :, 0, 0] = 0.5
    learned[2, :, 0:3, 2:5] = -teacher[2]                    # the negation of atom 2: signed, so cosine -1
    learned[3] = torch.randn([3, 5, 5], generator=gen, dtype=torch.float64)
    cos = placed_atom_cosines(teacher, learned)
    assert cos.shape == (3, 4)
    assert cos[1, 0] == pytest.approx(1.0)
    extra = 3 * 0.25  # the three channels' outside taps
    assert cos[0, 1] == pytest.approx(teacher[0].norm().item() / math.sqrt(teacher[0].square().sum().item() + extra))
    assert cos[2, 2] < 0.9  # a negated atom is no match at any placement
    # A brute-force check of one entry: every placement of the padded teacher atom.
    best = max(float(F.pad(teacher[0], (dx, 2 - dx, dy, 2 - dy)).flatten() @ learned[3].flatten()
                     / (teacher[0].norm() * learned[3].norm())) for dy in range(3) for dx in range(3))
    assert cos[0, 3] == pytest.approx(best)
    rec = atom_recovery(teacher, learned, threshold=0.9)
    assert rec['recovered'] == 2 and list(rec['partner'][:2]) == [1, 0]
    # Same-size atoms: one placement, the plain cosine.
    np.testing.assert_allclose(placed_atom_cosines(teacher, teacher), match_filters(teacher, teacher)['cos'])
    with pytest.raises(ValueError, match='at least as large'):
        placed_atom_cosines(learned, teacher)
    floor = random_floor(teacher, num_atoms=8, atom_shape=[3, 5, 5], trials=5)
    assert 0 < floor['mean_matched_cos'] < 0.9 and floor['recovered'] == 0


def test_lipschitz_constant_bounds_the_operator_norm():
    atoms = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lip = lipschitz_constant(atoms, size=32)
    # Independent estimate: power iteration on A^T A with A = conv_transpose2d(., atoms, padding=1) on 32x32.
    y = torch.randn(1, 5, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for _ in range(200):
        y = F.conv2d(F.conv_transpose2d(y, atoms, padding=1), atoms, padding=1)
        y = y / y.norm()
    estimate = float(F.conv_transpose2d(y, atoms, padding=1).square().sum())
    assert estimate <= lip * (1 + 1e-9)
    assert estimate >= 0.9 * lip
    # A single atom: the largest |Fourier coefficient|^2, at most |atom|_1^2.
    one = atoms[:1, :1]
    assert lipschitz_constant(one) <= float(one.abs().sum()) ** 2 + 1e-9


def test_sparse_codes_satisfy_optimality_conditions():
    gen = torch.Generator().manual_seed(3)
    atoms = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    atoms = atoms / atoms.flatten(1).norm(dim=1)[:, None, None, None]
    truth = F.relu(torch.randn(2, 4, 10, 10, generator=gen, dtype=torch.float64) - 1.5)
    images = F.conv_transpose2d(truth, atoms, padding=1)
    lam = 0.05
    codes = sparse_codes(images, atoms, lam, iters=3000)
    assert (codes >= 0).all()
    # KKT of min 0.5|x - A y|^2 + lam sum(y), y >= 0: g = A^T (A y - x); g = -lam where y > 0, g >= -lam where y = 0.
    g = F.conv2d(F.conv_transpose2d(codes, atoms, padding=1) - images, atoms, padding=1)
    active = codes > 1e-8
    assert active.any()
    assert (g[active] + lam).abs().max() < 1e-4
    assert (g[~active] + lam).min() > -1e-4

    def objective(y):
        return 0.5 * (F.conv_transpose2d(y, atoms, padding=1) - images).square().sum() + lam * y.sum()

    assert objective(codes) < objective(truth) and objective(codes) < objective(torch.zeros_like(codes))


def test_sparse_code_of_an_isolated_atom():
    atoms = structured_atoms(12).float()
    codes = torch.zeros(1, 12, 9, 9)
    codes[0, 7, 4, 4] = 1.2
    image = F.conv_transpose2d(codes, atoms, padding=1)
    found = sparse_codes(image, atoms, lam=0.01, iters=500)
    assert found[0, :, 4, 4].argmax() == 7
    assert float(found[0, 7, 4, 4]) == pytest.approx(1.2 - 0.01 * 1.0, abs=0.02)
    assert float(found.sum()) == pytest.approx(float(found[0, 7, 4, 4]), rel=0.05)


def test_random_floor_is_low():
    floor = random_floor(structured_atoms(12), num_atoms=20, trials=10)
    assert 0.2 < floor['mean_matched_cos'] < 0.5 and floor['recovered'] == 0


def test_fit_dictionary_checks_input():
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        fit_dictionary(torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match='lam'):
        fit_dictionary(torch.zeros(4, 3, 8, 8), lam=-1)
    with pytest.raises(ValueError, match='init_atoms'):
        fit_dictionary(torch.zeros(4, 3, 8, 8), num_atoms=5, init_atoms=torch.randn(4, 3, 3, 3))


def test_fit_dictionary_keeps_true_atoms_fixed():
    """Started at the teacher's atoms, dictionary learning stays there (they are a fixed point)."""
    teacher = FSRTeacher(resolution=16, seed=1, calib_images=256)
    images = teacher.sample(200, seed=5, details=False)['image']
    fit = fit_dictionary(images, num_atoms=12, steps=40, init_atoms=teacher.atoms, restart_every=0, seed=0)
    rec = atom_recovery(teacher.atoms, fit['atoms'])
    assert rec['recovered'] == 12 and rec['mean_matched_cos'] > 0.99
    np.testing.assert_allclose(fit['atoms'].flatten(1).norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert fit['history'][-1]['step'] == 40


# -- the oracle on the teacher (reduced setting; the full check is bench/fsr_oracle_study.py) ------------------------

def test_oracle_recovers_teacher_atoms_from_random_init():
    teacher = FSRTeacher(resolution=16, seed=0)
    result = run_oracle(teacher, num_images=500, num_atoms=20, steps=200, seed=0)
    rec, floor = result['recovery'], result['floor']
    assert rec['recovered'] >= 10, rec['cos']
    assert rec['mean_matched_cos'] > 0.9
    assert floor['recovered'] == 0 and floor['mean_matched_cos'] < 0.5
    assert result['atoms'].shape == (20, 3, 3, 3)
    assert result['restarts'] > 0
