"""One-to-one matching of two sets of filters by cosine similarity (FSR.md section 4, Fig. 7 analogue).

Rows are flattened filters (e.g. 3x3 RGB atoms -> 27 numbers). Rows are L2-normalised, the cosine matrix is
formed and the one-to-one matching that maximises the total cosine is found with the Hungarian method
(scipy.optimize.linear_sum_assignment).

The cosine is SIGNED. The atoms of the FSR model are signed colour patterns combined with non-negative
coefficients (x = A y, y >= 0 after a ReLU), so an atom and its negation paint different pictures (a red-to-blue
edge is not a blue-to-red edge) and must not count as a match. A learned filter that is the negation of a
teacher atom scores cosine -1.
"""
import numpy as np
import scipy.optimize

__all__ = ['cosine_matrix', 'match_filters', 'placed_atom_cosines', 'atom_recovery']

_EPS = 1e-12


def _as_rows(x, what):
    """numpy float64 [N, D] from a numpy array or torch tensor of shape [N, ...] (trailing dims flattened)."""
    if hasattr(x, 'detach'):  # torch tensor without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f'{what}: expected [N, D] (or [N, ...] filters), got shape {list(x.shape)}')
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f'{what}: needs at least one non-empty row, got shape {list(x.shape)}')
    if not np.all(np.isfinite(x)):
        raise ValueError(f'{what}: contains NaN or Inf')
    return x


def _normalise_rows(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPS)  # an all-zero row stays zero (cosine 0 with everything)


def cosine_matrix(a, b, what='cosine_matrix'):
    """float64 [Na, Nb] signed cosine similarity of the rows of `a` [Na, ...] and `b` [Nb, ...] (numpy arrays or
    torch tensors, flattened to rows; an all-zero row has cosine 0 with everything). Errors name `what`."""
    a = _as_rows(a, f'{what}: a')
    b = _as_rows(b, f'{what}: b')
    if a.shape[1] != b.shape[1]:
        raise ValueError(f'{what}: a and b must have the same filter size D, got {a.shape[1]} and '
                         f'{b.shape[1]}')
    return _normalise_rows(a) @ _normalise_rows(b).T


def match_filters(a, b, threshold=0.5):
    """Optimal one-to-one matching of the rows of `a` [Na, D] and `b` [Nb, D] by signed cosine similarity.

    Inputs may be numpy arrays or torch tensors; shapes [N, ...] are flattened to [N, D]. Returns a dict:
        cos:              float64 [Na, Nb] cosine matrix of the L2-normalised rows.
        rows, cols:       int64 [min(Na, Nb)] matched index pairs (a[rows[k]] <-> b[cols[k]]), rows ascending.
        matched_cos:      float64 [min(Na, Nb)] cosine of each matched pair.
        mean_matched_cos: float, mean of matched_cos.
        frac_above:       float, fraction of the min(Na, Nb) pairs whose cosine is > threshold.
    """
    cos = cosine_matrix(a, b, 'match_filters')
    rows, cols = scipy.optimize.linear_sum_assignment(cos, maximize=True)
    matched = cos[rows, cols]
    return dict(
        cos=cos,
        rows=rows.astype(np.int64),
        cols=cols.astype(np.int64),
        matched_cos=matched,
        mean_matched_cos=float(matched.mean()),
        frac_above=float(np.mean(matched > threshold)),
    )


def as_atom_array(x, what):
    """numpy float64 [N, C, k, k] from a numpy array or torch tensor of atoms (ValueError naming `what` otherwise)."""
    if hasattr(x, 'detach'):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f'{what}: expected atoms [N, C, k, k], got shape {list(x.shape)}')
    return x


def placed_atom_cosines(teacher_atoms, learned_atoms):
    """Signed cosines [K, M] between teacher atoms [K, C, k, k] and larger learned atoms [M, C, k', k'] (k' >= k):
    the teacher atom is zero-padded to k' x k' at every placement and the best placement counts. A learned atom
    that is a teacher atom placed anywhere in its window scores 1; energy outside the teacher atom's placement
    lowers the cosine as any other difference does. This is how a k' x k' head (e.g. `--fsr-head-kernel=4`) paints
    a k x k atom: the site it paints from may sit anywhere relative to the atom."""
    t = as_atom_array(teacher_atoms, 'placed_atom_cosines: teacher_atoms')
    a = as_atom_array(learned_atoms, 'placed_atom_cosines: learned_atoms')
    (kh, kw), (lh, lw) = t.shape[2:], a.shape[2:]
    if t.shape[1] != a.shape[1] or lh < kh or lw < kw:
        raise ValueError(f'placed_atom_cosines: learned atoms {list(a.shape[1:])} must have the teacher atoms\' '
                         f'channels and be at least as large as {list(t.shape[1:])}')
    t_rows = _normalise_rows(t.reshape(len(t), -1)).reshape(t.shape)
    a_unit = _normalise_rows(a.reshape(len(a), -1)).reshape(a.shape)
    best = np.full((len(t), len(a)), -np.inf)
    for dy in range(lh - kh + 1):
        for dx in range(lw - kw + 1):
            window = a_unit[:, :, dy:dy + kh, dx:dx + kw].reshape(len(a), -1)  # only the placed part meets t
            best = np.maximum(best, t_rows.reshape(len(t), -1) @ window.T)
    return best


def _larger_atoms(teacher_atoms, learned_atoms):
    t, a = np.shape(teacher_atoms), np.shape(learned_atoms)
    return len(t) == 4 and len(a) == 4 and tuple(a[2:]) != tuple(t[2:])


def atom_recovery(teacher_atoms, learned_atoms, threshold=0.9):
    """How many teacher atoms [K, ...] are recovered by learned atoms [M, ...] (one-to-one, signed cosine).
    Learned atoms [M, C, k', k'] larger than the teacher's [K, C, k, k] are compared at their best placement
    (`placed_atom_cosines`).

    With M >= K every teacher atom gets a partner; with M < K the unmatched teacher atoms count as cosine 0.
    Returns a dict:
        recovered:        int, number of teacher atoms whose matched cosine is >= threshold.
        fraction:         float, recovered / K.
        mean_matched_cos: float, mean over the K teacher atoms of their matched cosine.
        cos:              float64 [K] matched cosine per teacher atom (teacher order).
        partner:          int64 [K] index of the matched learned atom (-1 when unmatched).
    """
    if _larger_atoms(teacher_atoms, learned_atoms):
        cos = placed_atom_cosines(teacher_atoms, learned_atoms)
        rows, cols = scipy.optimize.linear_sum_assignment(cos, maximize=True)
        result = dict(cos=cos, rows=rows, cols=cols, matched_cos=cos[rows, cols])
    else:
        result = match_filters(teacher_atoms, learned_atoms)
    num_teacher = result['cos'].shape[0]
    per_atom = np.zeros(num_teacher, dtype=np.float64)
    partner = np.full(num_teacher, -1, dtype=np.int64)
    per_atom[result['rows']] = result['matched_cos']
    partner[result['rows']] = result['cols']
    recovered = int(np.sum(per_atom >= threshold))
    return dict(
        recovered=recovered,
        fraction=recovered / num_teacher,
        mean_matched_cos=float(per_atom.mean()),
        cos=per_atom,
        partner=partner,
    )
