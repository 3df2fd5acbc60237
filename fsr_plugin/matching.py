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

__all__ = ['match_filters', 'atom_recovery']

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


def match_filters(a, b, threshold=0.5):
    """Optimal one-to-one matching of the rows of `a` [Na, D] and `b` [Nb, D] by signed cosine similarity.

    Inputs may be numpy arrays or torch tensors; shapes [N, ...] are flattened to [N, D]. Returns a dict:
        cos:              float64 [Na, Nb] cosine matrix of the L2-normalised rows.
        rows, cols:       int64 [min(Na, Nb)] matched index pairs (a[rows[k]] <-> b[cols[k]]), rows ascending.
        matched_cos:      float64 [min(Na, Nb)] cosine of each matched pair.
        mean_matched_cos: float, mean of matched_cos.
        frac_above:       float, fraction of the min(Na, Nb) pairs whose cosine is > threshold.
    """
    a = _as_rows(a, 'match_filters: a')
    b = _as_rows(b, 'match_filters: b')
    if a.shape[1] != b.shape[1]:
        raise ValueError(f'match_filters: a and b must have the same filter size D, got {a.shape[1]} and '
                         f'{b.shape[1]}')
    cos = _normalise_rows(a) @ _normalise_rows(b).T
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


def atom_recovery(teacher_atoms, learned_atoms, threshold=0.9):
    """How many teacher atoms [K, ...] are recovered by learned atoms [M, ...] (one-to-one, signed cosine).

    With M >= K every teacher atom gets a partner; with M < K the unmatched teacher atoms count as cosine 0.
    Returns a dict:
        recovered:        int, number of teacher atoms whose matched cosine is >= threshold.
        fraction:         float, recovered / K.
        mean_matched_cos: float, mean over the K teacher atoms of their matched cosine.
        cos:              float64 [K] matched cosine per teacher atom (teacher order).
        partner:          int64 [K] index of the matched learned atom (-1 when unmatched).
    """
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
