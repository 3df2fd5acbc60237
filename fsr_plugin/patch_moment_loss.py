"""Patch-moment matching per pyramid level: a generator loss (`--fsr-moments`).

FSR.md section 2.1: the output layers are pinned down by matching low-order moments of patches, and a discriminator
that is a low-degree polynomial of a patch can only ask for that. This term is the best response to such a
discriminator written out: at every level r, the mean and covariance of the q x q patches of the fake head images are
pulled to those of the real pyramid level in the same step. It is the statistic of the `fsr_moment_gap` diagnostic
(FSR.md section 4), made differentiable and measured on one batch.

Why beside `--fsr-swd`: sliced Wasserstein distances along random directions see a covariance that has the reals'
trace but the wrong shape only weakly (along a random unit direction u, u^T C u averages trace(C) / D whatever the
shape; only its spread over directions carries the shape). A generator painted smooth blobs where the teacher's
16x16 patches are nearly white, scoring 0.08 on `--fsr-swd` (1 = collapse to the reals' mean) with a covariance gap
of 1.1-1.3 (docs/RESULTS.md section 11).

The real moments come from the step's real batch, with no running state: the loss is quadratic in them, so its
gradient is unbiased for the real distribution, and a resumed run needs nothing restored.

The plain loss is not unbiased in the fakes: on one batch, E|C_fake - C_real|^2 = |E C_fake - C_real|^2 + the
variance of the batch estimate C_fake (and of C_real), and the variance part has a gradient too: it asks for images
whose patch statistics vary less from batch to batch, i.e. for more uniform images than the reals. At 32x32 with 32
images it is about as large as the gap itself (docs/RESULTS.md section 13). `unbiased=True` (`--fsr-moments-unbiased`)
splits both batches into two halves of whole images and uses the cross products <A_fake - A_real, B_fake - B_real>,
whose expectation, and that of its gradient, is exactly the population term |E stat_fake - stat_real|^2.
"""

import torch

from .patch_swd import level_patch_rows

__all__ = ['patch_mean_cov', 'moment_matching_loss', 'level_moment_losses', 'contrast_matching_loss',
           'level_contrast_losses', 'level_image_mean_losses', 'patch_total_variance', 'mean_image_loss',
           'level_mean_image_losses']


def patch_mean_cov(rows):
    """rows [P, D] -> (mean [D], population covariance [D, D] = E[(x - mean)(x - mean)^T]); P >= 1."""
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f'patch_mean_cov: expected rows [P, D] with P >= 1, got {list(rows.shape)}')
    mean = rows.mean(dim=0)
    centred = rows - mean
    return mean, centred.T @ centred / rows.shape[0]


def moment_matching_loss(fake, real, eps=1e-12, split_fake=None, split_real=None):
    """Unitless moment mismatch of point sets fake [N, D] and real [M, D]:
    mean term |m_fake - m_real|^2 / trace(C_real) (a mean shift in units of the reals' spread) and
    covariance term |C_fake - C_real|_F^2 / |C_real|_F^2 (the squared `fsr_moment_gap` gap_2).
    The normalisers carry no gradient; fake that is one point at the reals' mean scores (0, 1).
    split_fake, split_real (row indices, both or neither): the unbiased split-half form. With halves A = rows[:split]
    and B = rows[split:] of each set (independent samples, e.g. whole images), the terms are the cross products
    <m_Af - m_Ar, m_Bf - m_Br> / trace(C_real) and <C_Af - C_Ar, C_Bf - C_Br>_F / |C_real|_F^2, whose expectations
    are the population mismatches without the estimates' variance (they can be negative on one batch).
    Differentiable in fake (and in real if it requires grad). Returns (mean term, covariance term), scalars."""
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(f'moment_matching_loss: expected fake [N, D] and real [M, D], got {list(fake.shape)} and '
                         f'{list(real.shape)}')
    m_real, c_real = patch_mean_cov(real)
    spread = torch.diagonal(c_real).sum().detach().clamp_min(eps)
    size = c_real.detach().square().sum().clamp_min(eps)
    if (split_fake is None) != (split_real is None):
        raise ValueError('moment_matching_loss: give both split_fake and split_real, or neither')
    if split_fake is None:
        m_fake, c_fake = patch_mean_cov(fake)
        return (m_fake - m_real).square().sum() / spread, (c_fake - c_real).square().sum() / size
    for name, rows, split in (('fake', fake, split_fake), ('real', real, split_real)):
        if not 0 < int(split) < rows.shape[0]:
            raise ValueError(f'moment_matching_loss: split_{name}={split} must leave rows on both sides of '
                             f'{rows.shape[0]}')
    ma_f, ca_f = patch_mean_cov(fake[:split_fake])
    mb_f, cb_f = patch_mean_cov(fake[split_fake:])
    ma_r, ca_r = patch_mean_cov(real[:split_real])
    mb_r, cb_r = patch_mean_cov(real[split_real:])
    mean_term = ((ma_f - ma_r) * (mb_f - mb_r)).sum() / spread
    cov_term = ((ca_f - ca_r) * (cb_f - cb_r)).sum() / size
    return mean_term, cov_term


def _half_image_splits(fake_images, real_images, rows_fake, rows_real, what):
    """{'split_fake', 'split_real'}: the row index where the second half of each batch's images starts (rows are
    image-major, as `patch_rows` gives them); both batches need at least 2 images."""
    splits = {}
    for name, images, rows in (('fake', fake_images, rows_fake), ('real', real_images, rows_real)):
        n = int(images.shape[0])
        if n < 2:
            raise ValueError(f'{what}: unbiased=True needs at least 2 {name} images, got {n}')
        splits[f'split_{name}'] = (n // 2) * (rows.shape[0] // n)
    return splits


def level_moment_losses(fake_pyramid, real_pyramid, weights, patch_size=3, pairs=False, unbiased=False):
    """Per level r with weight > 0 and present in both pyramids ({r: [N, C, r, r]}): weights[r] * (mean term +
    covariance term) of `moment_matching_loss` between the q x q patches (stride 1) of fake and real level r.
    pairs=True: a patch of level r also holds the patch of level r/2 (upsampled) under it (`patch_swd.pair_images`),
    so the cross-moments of a patch and its low-resolution context, the super-resolution step, are matched too.
    The reals carry no gradient. Levels smaller than the patch are skipped. unbiased=True: the split-half form of
    `moment_matching_loss`, halves of whole images (both batches need at least 2 images).
    Returns {r: (weighted loss, unweighted mean term, unweighted covariance term)}."""
    if int(patch_size) < 1:
        raise ValueError(f'level_moment_losses: patch_size must be >= 1, got {patch_size}')
    out = {}
    for r, w, rows_fake, rows_real in level_patch_rows(fake_pyramid, real_pyramid, weights, patch_size, pairs):
        splits = _half_image_splits(fake_pyramid[r], real_pyramid[r], rows_fake, rows_real,
                                    'level_moment_losses') if unbiased else {}
        mean_term, cov_term = moment_matching_loss(rows_fake, rows_real, **splits)
        out[r] = (w * (mean_term + cov_term), mean_term.detach(), cov_term.detach())
    return out


def patch_total_variance(rows):
    """rows [P, D] -> trace of their population covariance (the summed per-entry variance), a scalar."""
    return (rows - rows.mean(dim=0)).square().sum() / rows.shape[0]


def contrast_matching_loss(fake, real, eps=1e-12, split_fake=None, split_real=None):
    """Squared relative contrast mismatch of point sets fake [N, D] and real [M, D]: (t_fake - t_real)^2 / t_real^2
    with t = trace of the population covariance (the patches' total variance). A fake set whose deviations from its
    mean are the reals' times g scores (g^2 - 1)^2. The normaliser carries no gradient.
    split_fake, split_real (row indices, both or neither): the unbiased split-half form
    (t_Af - t_Ar)(t_Bf - t_Br) / t_real^2 over halves A = rows[:split], B = rows[split:] of each set (independent
    samples, e.g. whole images), whose expectation is the population mismatch without the estimates' variance (it
    can be negative on one batch). Differentiable in fake. Returns a scalar.

    Why a term of its own beside `moment_matching_loss`: the covariance term sees a contrast deficit only as a
    small part of |C_fake - C_real|^2 (a trace ratio of 0.9 costs 0.01), so its weight has to be raised for the
    whole covariance to restore the contrast, which docs/RESULTS.md section 13 found costs the atoms; this term
    weighs that one direction alone."""
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1] or fake.shape[0] == 0 or \
            real.shape[0] == 0:
        raise ValueError(f'contrast_matching_loss: expected fake [N, D] and real [M, D] with N, M >= 1, got '
                         f'{list(fake.shape)} and {list(real.shape)}')
    if (split_fake is None) != (split_real is None):
        raise ValueError('contrast_matching_loss: give both split_fake and split_real, or neither')
    t_real = patch_total_variance(real.detach())
    norm = t_real.square().clamp_min(eps)
    if split_fake is None:
        return (patch_total_variance(fake) - t_real).square() / norm
    for name, rows, split in (('fake', fake, split_fake), ('real', real, split_real)):
        if not 0 < int(split) < rows.shape[0]:
            raise ValueError(f'contrast_matching_loss: split_{name}={split} must leave rows on both sides of '
                             f'{rows.shape[0]}')
    real = real.detach()
    diff_a = patch_total_variance(fake[:split_fake]) - patch_total_variance(real[:split_real])
    diff_b = patch_total_variance(fake[split_fake:]) - patch_total_variance(real[split_real:])
    return diff_a * diff_b / norm


def level_contrast_losses(fake_pyramid, real_pyramid, weights, patch_size=3, unbiased=False):
    """Per level r with weight > 0 and present in both pyramids ({r: [N, C, r, r]}): weights[r] *
    `contrast_matching_loss` between the q x q patches (stride 1) of fake and real level r, i.e. between their total
    patch variances (the trace of the `fsr_moment_gap` covariance). unbiased=True: the split-half form over halves of
    whole images (both batches need at least 2 images). Returns {r: (weighted loss, unweighted loss,
    fake / real trace ratio of the batch (detached))}."""
    if int(patch_size) < 1:
        raise ValueError(f'level_contrast_losses: patch_size must be >= 1, got {patch_size}')
    out = {}
    for r, w, rows_fake, rows_real in level_patch_rows(fake_pyramid, real_pyramid, weights, patch_size):
        splits = _half_image_splits(fake_pyramid[r], real_pyramid[r], rows_fake, rows_real,
                                    'level_contrast_losses') if unbiased else {}
        value = contrast_matching_loss(rows_fake, rows_real, **splits)
        ratio = patch_total_variance(rows_fake.detach()) / patch_total_variance(rows_real).clamp_min(1e-12)
        out[r] = (w * value, value.detach(), ratio)
    return out


def level_image_mean_losses(fake_pyramid, real_pyramid, weights, unbiased=False):
    """Per level r with weight > 0 and present in both pyramids ({r: [N, C, r, r]}): weights[r] * (mean term +
    covariance term) of `moment_matching_loss` between the images' mean colours (one row [C] per image): their mean
    and their between-image covariance. The patch moments see an image-wide colour shift only as a small part of
    every patch's statistics; a style-modulated generator paints one easily (on the synthetic teacher the 16x16 and
    32x32 levels' per-image mean colours varied 5-6x more than the teacher's, docs/RESULTS.md section 18).
    unbiased=True: the split-half form, halves of the images (both batches need at least 2 images).
    Returns {r: (weighted loss, unweighted mean term, unweighted covariance term)}."""
    out = {}
    for r, x_fake in fake_pyramid.items():
        w = float(weights.get(r, 0.0))
        if w <= 0 or r not in real_pyramid:
            continue
        rows_fake = x_fake.mean(dim=[2, 3])
        rows_real = real_pyramid[r].detach().to(x_fake.dtype).mean(dim=[2, 3])
        splits = _half_image_splits(rows_fake, rows_real, rows_fake, rows_real,
                                    'level_image_mean_losses') if unbiased else {}
        mean_term, cov_term = moment_matching_loss(rows_fake, rows_real, **splits)
        out[r] = (w * (mean_term + cov_term), mean_term.detach(), cov_term.detach())
    return out


def mean_image_loss(fake, real, eps=1e-12, unbiased=False):
    """Mismatch of the per-position first moment of images fake [N, C, H, W] and real [M, C, H, W]: the mean over
    positions p of |m_fake(p) - m_real(p)|^2 (m(p) [C]: the batch's average colour at p), over the reals' total pixel
    variance (the sum over channels of the variance over images and positions; it carries no gradient). A constant
    shift of every pixel by one real pixel standard deviation scores 1. The patch moments pool positions, so they
    see a fixed pattern (a line the generator paints in every image at the same place) only at the image borders.
    unbiased=True: the split-half cross product <mA_fake - mA_real, mB_fake - mB_real> over halves of the images,
    whose expectation is the population mismatch without the batch means' variance (both batches need at least 2
    images). Differentiable in fake. Returns a scalar."""
    if fake.ndim != 4 or real.ndim != 4 or fake.shape[1:] != real.shape[1:]:
        raise ValueError(f'mean_image_loss: expected fake [N, C, H, W] and real [M, C, H, W] of one size, got '
                         f'{list(fake.shape)} and {list(real.shape)}')
    real = real.detach().to(fake.dtype)
    spread = real.var(dim=[0, 2, 3], unbiased=False).sum().clamp_min(eps)
    positions = fake.shape[2] * fake.shape[3]
    if not unbiased:
        return (fake.mean(dim=0) - real.mean(dim=0)).square().sum() / (positions * spread)
    for name, x in (('fake', fake), ('real', real)):
        if x.shape[0] < 2:
            raise ValueError(f'mean_image_loss: unbiased=True needs at least 2 {name} images, got {x.shape[0]}')
    nf, nr = fake.shape[0] // 2, real.shape[0] // 2
    da = fake[:nf].mean(dim=0) - real[:nr].mean(dim=0)
    db = fake[nf:].mean(dim=0) - real[nr:].mean(dim=0)
    return (da * db).sum() / (positions * spread)


def level_mean_image_losses(fake_pyramid, real_pyramid, weights, unbiased=False):
    """Per level r with weight > 0 and present in both pyramids ({r: [N, C, r, r]}): weights[r] * `mean_image_loss`.
    Returns {r: (weighted loss, unweighted value)}."""
    out = {}
    for r, x_fake in fake_pyramid.items():
        w = float(weights.get(r, 0.0))
        if w <= 0 or r not in real_pyramid:
            continue
        value = mean_image_loss(x_fake, real_pyramid[r], unbiased=unbiased)
        out[r] = (w * value, value.detach())
    return out
