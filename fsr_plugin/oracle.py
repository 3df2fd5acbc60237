"""The sparse-coding oracle of the synthetic FSR experiment (FSR.md section 4b).

Convolutional dictionary learning fitted directly to teacher images (no GAN): images are modelled as
X ~ sum_k d_k (*) y_k with 3x3 RGB atoms d_k (unit norm) and non-negative sparse code maps y_k at the image
resolution, (*) the "painting" transposed convolution (conv_transpose2d, padding 1), i.e. the same convention as
the teacher's output layer. Alternating minimisation of

    0.5 * |X - sum_k d_k (*) y_k|^2 + lam * sum_k |y_k|_1,    y >= 0,  |d_k| = 1

over random crops: codes by FISTA (projected, non-negative soft threshold, step 1/L with L the exact Lipschitz
constant of the convolutional synthesis operator from the atoms' Fourier transforms), then one preconditioned
gradient step on the atoms (per-atom step 1 / running code energy) followed by projection onto the unit sphere.
Every `restart_every` steps unused atoms (tiny running code energy) and duplicates (|cos| > 0.95 with a more used
atom) are restarted from the 3x3 residual patches of largest energy.

The recovered atoms are compared with the teacher's with `fsr_plugin.matching.atom_recovery` (signed cosine).
"""
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from fsr_plugin.matching import atom_recovery

__all__ = ['fit_dictionary', 'sparse_codes', 'nonneg_fista', 'lipschitz_constant', 'random_floor', 'run_oracle']


def _check_images(images):
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'oracle: images must be [N, 3, H, W], got shape {list(images.shape)}')
    if images.shape[2] < 3 or images.shape[3] < 3:
        raise ValueError(f'oracle: images must be at least 3x3, got {list(images.shape[2:])}')
    if not torch.isfinite(images).all():
        raise ValueError('oracle: images contain NaN or Inf')
    return images.float()


def lipschitz_constant(atoms, size=32, as_tensor=False):
    """Largest eigenvalue of A^T A for the synthesis Y -> conv_transpose2d(Y, atoms, padding=1), atoms [K, C, 3, 3]:
    max over the `size` x `size` frequency grid of the squared largest singular value of the [C, K] matrix of the
    atoms' Fourier transforms (exact for circular boundaries, an upper bound for zero padding). A float, or with
    as_tensor a float64 scalar tensor on the atoms' device (no synchronisation with an accelerator)."""
    spec = torch.fft.fft2(atoms.double(), s=(size, size))           # [K, C, size, size]
    mats = spec.permute(2, 3, 1, 0).reshape(size * size, atoms.shape[1], atoms.shape[0])
    value = torch.linalg.matrix_norm(mats, ord=2).max() ** 2
    return value if as_tensor else float(value)


def sparse_codes(images, atoms, lam, iters=50, lipschitz=None):
    """Non-negative convolutional sparse codes by FISTA.

    images [N, C, H, W], atoms [K, C, 3, 3] -> codes [N, K, H, W] >= 0 (approximately) minimising
    0.5 |images - conv_transpose2d(codes, atoms, padding=1)|^2 + lam * sum(codes)."""
    if lipschitz is None:
        lipschitz = lipschitz_constant(atoms, size=max(images.shape[-1], 8))
    n, _, h, w = images.shape
    codes = torch.zeros(n, atoms.shape[0], h, w, dtype=images.dtype, device=images.device)

    def grad(point):
        return F.conv2d(F.conv_transpose2d(point, atoms, padding=1) - images, atoms, padding=1)
    return nonneg_fista(grad, codes, 1.0 / lipschitz, lam, iters)


def nonneg_fista(grad, codes, step, lam, iters):
    """FISTA for min_{Y >= 0} q(Y) + lam * sum(Y) with q smooth: grad(Y) -> the gradient of q at Y, codes the start
    (also fixes the shape), step 1 / (Lipschitz constant of grad). Returns the codes after `iters` iterations."""
    point, t = codes, 1.0
    for _ in range(int(iters)):
        new_codes = F.relu(point - step * grad(point) - step * lam)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        point = new_codes + ((t - 1) / t_next) * (new_codes - codes)
        codes, t = new_codes, t_next
    return codes


def _random_crops(images, batch, crop, gen):
    n, _, h, w = images.shape
    idx = torch.randint(n, (batch,), generator=gen)
    if crop >= h and crop >= w:
        return images[idx]
    ys = torch.randint(h - crop + 1, (batch,), generator=gen)
    xs = torch.randint(w - crop + 1, (batch,), generator=gen)
    return torch.stack([images[i, :, y:y + crop, x:x + crop] for i, y, x in zip(idx.tolist(), ys.tolist(),
                                                                                 xs.tolist())])


def _normalise(atoms):
    return atoms / atoms.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]


def _residual_patches(residual, count, gen):
    """count unit-norm 3x3 patches [count, C, 3, 3] drawn from the largest-energy patches of residual [N, C, H, W]."""
    n, c, h, w = residual.shape
    patches = torch.stack([residual[:, :, i:i + h - 2, j:j + w - 2] for i in range(3) for j in range(3)], dim=2)
    patches = patches.permute(0, 3, 4, 1, 2).reshape(-1, c * 9)          # all valid 3x3 patches, (c, i, j) order
    energy = patches.square().sum(1)
    pool = min(patches.shape[0], max(count * 8, 64))
    top = torch.topk(energy, pool).indices
    pick = top[torch.randperm(pool, generator=gen)[:count]]
    return _normalise(patches[pick].reshape(count, c, 3, 3))


def fit_dictionary(images, num_atoms=20, steps=1200, lam=0.1, seed=0, device='cpu', batch=32, crop=16,
                   fista_iters=40, lr=0.5, restart_every=50, restart_after=None, min_usage=0.25, max_cos=0.6,
                   init_atoms=None, callback=None, log_every=100):
    """Learn `num_atoms` unit-norm 3x3 atoms from images [N, 3, H, W] (float, about [-1, 1]) by convolutional
    dictionary learning with non-negative FISTA codes (see the module docstring).

    Args:
        lam:            L1 weight of the codes (in image units; teacher images have site amplitudes ~0.6-1.8).
        batch, crop:    each step codes `batch` random crop x crop windows.
        fista_iters:    FISTA iterations per step.
        lr:             atom step = lr * gradient / running code energy of that atom; after `restart_after`
                        steps it decays linearly to lr / 10 at the last step.
        restart_every:  steps between restarts of unused / duplicate atoms (0 = never); restarts stop after
                        `restart_after` steps (default 3/4 of `steps`).
        min_usage, max_cos: an atom is restarted when its running code energy is below min_usage x the median,
                        or when |cos| with a more used atom exceeds max_cos (0.6 also catches atoms shifted by
                        one pixel: a flat 3x3 atom and its shift have cosine 2/3).
        init_atoms:     optional [num_atoms, 3, 3, 3] start (default: random Gaussian, unit norm, from `seed`).
        callback:       optional f(step, atoms) called every `log_every` steps (e.g. to track recovery).

    Returns dict(atoms float32 [K, 3, 3, 3] (unit norm, cpu), usage float [K] (running mean code energy),
    history list of dict(step, loss, l1, objective, active_fraction, restarts) every `log_every` steps,
    restarts (total), seconds).
    """
    images = _check_images(images).to(device)
    num_atoms, steps = int(num_atoms), int(steps)
    if num_atoms < 1 or steps < 1:
        raise ValueError(f'fit_dictionary: num_atoms and steps must be >= 1, got {num_atoms}, {steps}')
    if lam < 0:
        raise ValueError(f'fit_dictionary: lam must be >= 0, got {lam}')
    if restart_after is None:
        restart_after = (3 * steps) // 4
    gen = torch.Generator().manual_seed(int(seed))
    if init_atoms is None:
        atoms = _normalise(torch.randn(num_atoms, images.shape[1], 3, 3, generator=gen))
    else:
        atoms = _normalise(torch.as_tensor(init_atoms, dtype=torch.float32).clone())
        if list(atoms.shape) != [num_atoms, images.shape[1], 3, 3]:
            raise ValueError(f'fit_dictionary: init_atoms must be [{num_atoms}, {images.shape[1]}, 3, 3], got '
                             f'{list(atoms.shape)}')
    atoms = atoms.to(device)
    crop = min(int(crop), images.shape[2], images.shape[3])
    energy = torch.ones(num_atoms, device=device)   # running mean of sum_p y_k(p)^2 per crop
    history, total_restarts = [], 0
    start = time.time()
    for step in range(1, steps + 1):
        x = _random_crops(images, batch, crop, gen).to(device)
        lipschitz = lipschitz_constant(atoms.cpu(), size=max(crop, 8))
        codes = sparse_codes(x, atoms, lam, iters=fista_iters, lipschitz=lipschitz)
        # Atom gradient of 0.5 |x - A(codes)|^2 (per crop), preconditioned by each atom's code energy.
        atoms_var = atoms.clone().requires_grad_(True)
        residual = F.conv_transpose2d(codes, atoms_var, padding=1) - x
        loss = 0.5 * residual.square().sum() / batch
        (grad,) = torch.autograd.grad(loss, atoms_var)
        loss = loss.detach()
        code_energy = codes.square().sum(dim=(0, 2, 3)) / batch
        energy = 0.9 * energy + 0.1 * code_energy
        # Constant step while restarts happen, then a linear decay to lr / 10 (settles the atoms).
        frac = max(0.0, (step - restart_after) / max(steps - restart_after, 1))
        step_lr = lr * (1 - 0.9 * frac)
        atoms = _normalise(atoms - step_lr * grad / (energy + 1e-3)[:, None, None, None])

        restarted = 0
        if restart_every and step % restart_every == 0 and step <= restart_after:
            restarted = _restart_atoms(atoms, energy, residual.detach(), gen, min_usage=min_usage, max_cos=max_cos)
            total_restarts += restarted
        if step % log_every == 0 or step == steps:
            l1 = float(codes.sum() / batch)
            loss = float(loss)
            record = dict(step=step, loss=loss, l1=l1, objective=loss + lam * l1,
                          active_fraction=float((codes > 0).float().mean()), restarts=total_restarts)
            history.append(record)
            if callback is not None:
                callback(step, atoms.detach().cpu().clone())
    return dict(atoms=atoms.detach().cpu().float(), usage=energy.cpu().numpy(), history=history,
                restarts=total_restarts, seconds=time.time() - start)


def _restart_atoms(atoms, energy, residual, gen, min_usage=0.25, max_cos=0.6):
    """In place: replace unused atoms (energy < min_usage * median) and the less used atom of every pair with
    |cos| > max_cos by high-energy residual patches. Returns the number restarted."""
    flat = atoms.flatten(1)
    cos = (flat @ flat.T).abs()
    cos.fill_diagonal_(0)
    replace = energy < min_usage * energy.median()
    order = torch.argsort(energy, descending=True)
    for rank, i in enumerate(order.tolist()):
        if replace[i]:
            continue
        for j in order[rank + 1:].tolist():
            if not replace[j] and cos[i, j] > max_cos:
                replace[j] = True
    idx = torch.nonzero(replace).flatten()
    if idx.numel() == 0:
        return 0
    atoms[idx] = _residual_patches(residual, idx.numel(), gen).to(atoms.device)
    energy[idx] = energy.median()
    return int(idx.numel())


def random_floor(teacher_atoms, num_atoms=20, trials=20, seed=0, threshold=0.9, atom_shape=None):
    """Recovery of randomly initialised atoms (the floor): dict(mean_matched_cos, recovered) averaged over
    `trials` draws of `num_atoms` Gaussian unit-norm atoms shaped like teacher_atoms [K, C, 3, 3] (or [C, k, k] =
    atom_shape, for a learner with larger atoms, compared at their best placement)."""
    gen = torch.Generator().manual_seed(int(seed))
    shape = list(torch.as_tensor(teacher_atoms).shape[1:]) if atom_shape is None else [int(v) for v in atom_shape]
    results = [atom_recovery(teacher_atoms, torch.randn([num_atoms] + shape, generator=gen), threshold)
               for _ in range(int(trials))]
    return dict(mean_matched_cos=float(np.mean([r['mean_matched_cos'] for r in results])),
                recovered=float(np.mean([r['recovered'] for r in results])))


def run_oracle(teacher, num_images=2000, num_atoms=20, steps=1200, lam=0.1, seed=0, image_seed=1000,
               threshold=0.9, device='cpu', track_every=0, **fit_kwargs):
    """Fit the oracle to `num_images` images of `teacher` (an `FSRTeacher`, image stream `image_seed`) and compare
    its atoms with the teacher's.

    Returns dict(recovery=atom_recovery(teacher.atoms, atoms, threshold), atoms, floor=random_floor(...),
    history, restarts, seconds, track (list of (step, recovered, mean_matched_cos) when track_every > 0)).
    """
    images = teacher.sample(int(num_images), seed=int(image_seed), details=False)['image']
    teacher_atoms = teacher.atoms
    track = []

    def _track(step, atoms):
        rec = atom_recovery(teacher_atoms, atoms, threshold)
        track.append((step, rec['recovered'], rec['mean_matched_cos']))

    fit = fit_dictionary(images, num_atoms=num_atoms, steps=steps, lam=lam, seed=seed, device=device,
                         callback=_track if track_every else None, log_every=track_every or 100, **fit_kwargs)
    return dict(recovery=atom_recovery(teacher_atoms, fit['atoms'], threshold), atoms=fit['atoms'],
                floor=random_floor(teacher_atoms, num_atoms=num_atoms, seed=seed, threshold=threshold),
                history=fit['history'], restarts=fit['restarts'], seconds=fit['seconds'], track=track)
