"""Sliced Wasserstein matching of patch distributions, per pyramid level: a generator loss (`--fsr-swd`).

FSR.md section 2 says the output layers are learned by matching low-order moments of patches, with the
discriminator as the detector of a mismatch. This term asks for the match directly: at every level r, the q x q
patches of the fake head images X_r and of the real pyramid level x_r are projected on random unit directions,
and the sorted projections are compared (the squared sliced Wasserstein-2 distance between the two patch sets).
A generator whose samples look alike gives a narrower patch distribution than the reals' and is pushed apart;
first and second patch moments along every direction are part of what is matched.

The directions are redrawn every step from a generator seeded by the step's image counter, so the term does not
touch the global random stream and a resumed run draws the same directions.
"""

import torch
import torch.nn.functional as F

from .pair_disc import upsample2x

__all__ = ['patch_rows', 'sliced_wasserstein_loss', 'debiased_sliced_wasserstein_loss', 'random_directions',
           'pair_images', 'level_patch_rows', 'level_swd_losses']


def patch_rows(x, q):
    """x [N, C, H, W] -> [N * (H - q + 1) * (W - q + 1), C * q * q]: every q x q patch (stride 1, no padding) as a
    row, ordered (channel, dy, dx) like F.unfold."""
    if x.ndim != 4:
        raise ValueError(f'patch_rows: images must be [N, C, H, W], got {list(x.shape)}')
    if q < 1 or q > min(x.shape[2], x.shape[3]):
        raise ValueError(f'patch_rows: patch size {q} does not fit images of {x.shape[2]}x{x.shape[3]}')
    n, c = x.shape[:2]
    return F.unfold(x, q).transpose(1, 2).reshape(-1, c * q * q)


def random_directions(dim, num_dirs, seed, device=None, dtype=torch.float32):
    """[dim, num_dirs] unit-norm columns, drawn from a CPU generator seeded with `seed` (reproducible anywhere)."""
    gen = torch.Generator().manual_seed(int(seed))
    dirs = torch.randn([dim, num_dirs], generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return dirs.to(device=device, dtype=dtype)


def sliced_wasserstein_loss(fake, real, dirs, seed=0, relative=False):
    """Squared sliced Wasserstein-2 distance between point sets fake [N, D] and real [M, D], along the unit columns
    of dirs [D, K]: mean over directions and quantiles of (sorted(fake . d) - sorted(real . d))^2. When N != M the
    larger set is replaced by a random subset (seeded by `seed`) of the smaller size. Differentiable in fake (and
    in real if it requires grad); returns a scalar in the squared units of the inputs. relative=True divides it by
    the reals' projected variance (mean over directions, no gradient), a unitless figure: a fake set that is one
    point at the reals' mean scores 1."""
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1] or dirs.shape[0] != fake.shape[1]:
        raise ValueError(f'sliced_wasserstein_loss: expected fake [N, D], real [M, D] and dirs [D, K], got '
                         f'{list(fake.shape)}, {list(real.shape)} and {list(dirs.shape)}')
    n = min(fake.shape[0], real.shape[0])
    if n == 0:
        raise ValueError('sliced_wasserstein_loss: empty point set')
    if fake.shape[0] != real.shape[0]:
        gen = torch.Generator().manual_seed(int(seed))
        if fake.shape[0] > n:
            fake = fake[torch.randperm(fake.shape[0], generator=gen)[:n].to(fake.device)]
        if real.shape[0] > n:
            real = real[torch.randperm(real.shape[0], generator=gen)[:n].to(real.device)]
    proj_fake = (fake @ dirs.to(fake.dtype)).sort(dim=0).values
    proj_real = (real @ dirs.to(real.dtype)).sort(dim=0).values
    value = (proj_fake - proj_real).square().mean()
    if relative:
        value = value / proj_real.detach().var(dim=0, unbiased=False).mean().clamp_min(1e-12)
    return value


def debiased_sliced_wasserstein_loss(fake, real, dirs, seed=0, relative=False):
    """The split-half (debiased) form of `sliced_wasserstein_loss`: fake [N, D] and real [M, D] (N, M even) are each
    cut into their first and second halves of rows, f1, f2 and r1, r2, and

        0.5 (SW(f1, r1) + SW(f2, r2)) - 0.5 SW(f1, f2) - 0.5 SW(r1, r2),    SW = sliced_wasserstein_loss.

    The plain loss between two finite samples is smallest for a fake sample narrower than the reals (sorted
    independent samples differ even when drawn from one distribution): for whole images in batches of 32, a real
    batch scaled by about 0.92 scores lower than the real batch itself. Subtracting the within-sample terms removes
    that pull: for samples of N(0, s_f^2) and N(0, s_r^2) the expectation is rho (s_f - s_r)^2, with rho < 1 a
    constant of the sample size, smallest at s_f = s_r (the correction of the Sinkhorn divergence and the energy
    distance). It can be negative on one batch. Rows of one image must not straddle the cut (`patch_rows` of an
    even number of images: the cut falls between two images). relative=True divides by the reals' projected
    variance, as sliced_wasserstein_loss does."""
    if fake.shape[0] % 2 or real.shape[0] % 2 or fake.shape[0] < 2 or real.shape[0] < 2:
        raise ValueError(f'debiased_sliced_wasserstein_loss: both samples need an even number >= 2 of rows, got '
                         f'{fake.shape[0]} and {real.shape[0]}')
    f1, f2 = fake.chunk(2)
    r1, r2 = real.chunk(2)
    value = 0.5 * (sliced_wasserstein_loss(f1, r1, dirs, seed) + sliced_wasserstein_loss(f2, r2, dirs, seed + 1)) \
        - 0.5 * sliced_wasserstein_loss(f1, f2, dirs, seed + 2) - 0.5 * sliced_wasserstein_loss(r1, r2, dirs, seed + 3)
    if relative:
        scale = (real.detach() @ dirs.to(real.dtype)).var(dim=0, unbiased=False).mean().clamp_min(1e-12)
        value = value / scale
    return value


def pair_images(pyramid, r):
    """{r: [N, C, r, r]} -> [N, 2C, r, r]: level r/2 upsampled (nearest) next to level r, as the pair
    discriminators see them; level r alone when r/2 is not in the pyramid."""
    if r // 2 not in pyramid:
        return pyramid[r]
    lo = pyramid[r // 2].to(pyramid[r].dtype)
    return torch.cat([upsample2x(lo, 'nearest'), pyramid[r]], dim=1)


def level_patch_rows(fake_pyramid, real_pyramid, weights, patch_size=3, pairs=False):
    """Yield (r, weight, fake rows [P, D], real rows [Q, D]) for every level r of fake_pyramid with weights[r] > 0
    that real_pyramid also has and that holds a patch: the q x q patches (`patch_rows`; q = patch_size, or r for
    patch_size=0, one patch per image) of level r, or with pairs=True of `pair_images` (level r/2 upsampled beside
    level r) where both pyramids have r/2. The real rows are detached and cast to the fakes' dtype."""
    for r, x_fake in fake_pyramid.items():
        w = float(weights.get(r, 0.0))
        q = patch_size if patch_size > 0 else r
        if w <= 0 or r not in real_pyramid or r < q:
            continue
        x_real = real_pyramid[r]
        if pairs and r // 2 in fake_pyramid and r // 2 in real_pyramid:
            x_fake, x_real = pair_images(fake_pyramid, r), pair_images(real_pyramid, r)
        x_real = x_real.detach().to(x_fake.dtype)
        yield r, w, patch_rows(x_fake, q), patch_rows(x_real, q)


def level_swd_losses(fake_pyramid, real_pyramid, weights, patch_size=3, num_dirs=64, seed=0, relative=True,
                     pairs=False, unbiased=False):
    """Per level r with weight > 0 and present in both pyramids ({r: [N, C, r, r]}): the weighted patch loss
    weights[r] * sliced_wasserstein_loss(patches of fake r, patches of real r, relative=relative), so that with
    relative=True (the default) every level counts in units of its own real spread. pairs=True: a patch of level r
    also holds the patch of level r/2 (upsampled) under it (`pair_images`), so what is matched is the joint
    distribution of a patch and its low-resolution context, the super-resolution step, as the pair
    discriminators judge it. patch_size=0: one patch per image, the whole level (what is matched is then the
    distribution of whole images, which a generator that draws one image cannot meet at any level; patches of a few
    pixels can be matched by one varied image). Levels smaller than the patch are skipped. Returns {r: (weighted
    loss, unweighted loss)}; the directions depend on (seed, r) only. unbiased=True: the split-half form
    (`debiased_sliced_wasserstein_loss`, halves of each batch's images), without the plain form's pull towards
    a narrower fake distribution; it needs an even number of images in both batches."""
    out = {}
    for r, w, rows_fake, rows_real in level_patch_rows(fake_pyramid, real_pyramid, weights, patch_size, pairs):
        dirs = random_directions(rows_fake.shape[1], num_dirs, seed=seed * 1009 + r, device=rows_fake.device)
        if unbiased:
            n_fake, n_real = fake_pyramid[r].shape[0], real_pyramid[r].shape[0]
            if n_fake % 2 or n_real % 2:
                raise ValueError(f'level_swd_losses: the split-half form needs even batches, got {n_fake} fake and '
                                 f'{n_real} real images')
            value = debiased_sliced_wasserstein_loss(rows_fake, rows_real, dirs, seed=seed, relative=relative)
        else:
            value = sliced_wasserstein_loss(rows_fake, rows_real, dirs, seed=seed, relative=relative)
        out[r] = (w * value, value.detach())
    return out
