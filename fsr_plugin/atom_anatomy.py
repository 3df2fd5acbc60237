"""What a learned atom is, in terms of the teacher's atoms: the nearest atom, the nearest one-pixel shift of an atom,
and the nearest non-negative blend of two atoms.

The atom-recovery figure (fsr_plugin.matching) says only whether a learned atom is within cosine 0.9 of a teacher
atom. A learner that misses an atom can miss it in different ways, and they call for different levers:

* a **shifted** atom: the teacher's atom moved by one pixel (the row or column that leaves the 3x3 window is dropped,
  the one that enters is 0). Painted one pixel over, it draws most of the same picture; this is the shift ambiguity
  of convolutional dictionaries (FSR.md 4b);
* a **blend**: a non-negative combination of two teacher atoms (e.g. a flat colour plus a step edge of the same
  colour, which is a flat colour with one grey row); it paints both at once at one site;
* neither: something else.

All cosines are signed, on flattened atoms [C * k * k], as in fsr_plugin.matching.
"""
import itertools

import numpy as np

from .matching import as_atom_array

__all__ = ['shifted_atoms', 'best_blend', 'explain_atoms']

_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx): right, left, down, up


def _rows(x):
    return as_atom_array(x, 'atom_anatomy: atoms')


def _unit(v):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def shifted_atoms(atoms):
    """atoms [K, C, k, k] -> (shifted [4K, C, k, k] float64, names [(atom index, dy, dx)]): every atom moved by one
    pixel right, left, down and up; the part moved out of the window is dropped and the part moved in is 0. Not
    renormalised; an atom that becomes all zero is left out."""
    a = _rows(atoms)
    out, names = [], []
    k_h, k_w = a.shape[2], a.shape[3]
    for i in range(a.shape[0]):
        for dy, dx in _SHIFTS:
            s = np.zeros_like(a[i])
            s[:, max(dy, 0):k_h + min(dy, 0), max(dx, 0):k_w + min(dx, 0)] = \
                a[i][:, max(-dy, 0):k_h + min(-dy, 0), max(-dx, 0):k_w + min(-dx, 0)]
            if np.any(s != 0):
                out.append(s)
                names.append((i, dy, dx))
    return np.stack(out), names


def best_blend(atom, teacher):
    """atom [C, k, k], teacher [K, C, k, k] -> (cosine, i, j, w_i, w_j): the least-squares fit of the atom by two
    teacher atoms i < j with non-negative weights that has the largest cosine with the atom (pairs whose unconstrained
    fit has a negative weight are skipped: their best non-negative fit uses one atom, which the nearest-atom figure
    already covers). (0, -1, -1, 0, 0) when no pair qualifies."""
    a = _rows(atom[None])[0].reshape(-1)
    t = _rows(teacher).reshape(len(teacher), -1)
    best = (0.0, -1, -1, 0.0, 0.0)
    for i, j in itertools.combinations(range(len(t)), 2):
        m = np.stack([t[i], t[j]], axis=1)
        w, *_ = np.linalg.lstsq(m, a, rcond=None)
        if np.any(w < 0):
            continue
        fit = m @ w
        cos = float(fit @ a / max(np.linalg.norm(fit) * np.linalg.norm(a), 1e-12))
        if cos > best[0]:
            best = (cos, i, j, float(w[0]), float(w[1]))
    return best


def explain_atoms(learned, teacher, usage=None, min_usage=0.0):
    """learned [A, C, k, k], teacher [K, C, k, k] (and optionally usage [A], each learned atom's share of what the
    top level paints) -> one dict per learned atom with usage >= min_usage (all when usage is None), most used first:
    index, usage, nearest (teacher index, cosine), shifted (teacher index, dy, dx, cosine) over `shifted_atoms`,
    blend (cosine, i, j, w_i, w_j) from `best_blend` on the unit-norm learned atom, and kind: 'atom' when the
    nearest cosine is >= 0.9, else 'shifted' or 'blend' when that explanation reaches 0.9 (the higher one wins),
    else 'other'."""
    a = _rows(learned)
    t = _rows(teacher)
    if a.shape[1:] != t.shape[1:]:
        raise ValueError(f'learned atoms {list(a.shape[1:])} and teacher atoms {list(t.shape[1:])} differ in shape')
    if usage is not None:
        usage = np.asarray(usage, dtype=np.float64).reshape(-1)
        if usage.shape[0] != a.shape[0]:
            raise ValueError(f'usage has {usage.shape[0]} entries for {a.shape[0]} learned atoms')
    a_rows = _unit(a.reshape(len(a), -1))
    t_rows = _unit(t.reshape(len(t), -1))
    s_atoms, s_names = shifted_atoms(t)
    s_rows = _unit(s_atoms.reshape(len(s_atoms), -1))
    order = np.argsort(-usage, kind='stable') if usage is not None else np.arange(len(a))
    out = []
    for idx in order:
        if usage is not None and usage[idx] < min_usage:
            continue
        cos_t = t_rows @ a_rows[idx]
        cos_s = s_rows @ a_rows[idx]
        k, s = int(np.argmax(cos_t)), int(np.argmax(cos_s))
        blend = best_blend(a_rows[idx].reshape(a.shape[1:]), t)  # unit atom: weights in teacher-atom units
        if cos_t[k] >= 0.9:
            kind = 'atom'
        elif max(cos_s[s], blend[0]) >= 0.9:
            kind = 'shifted' if cos_s[s] >= blend[0] else 'blend'
        else:
            kind = 'other'
        out.append(dict(index=int(idx), usage=None if usage is None else float(usage[idx]),
                        nearest=(k, float(cos_t[k])), shifted=(*s_names[s], float(cos_s[s])), blend=blend, kind=kind))
    return out
