"""Matching the strength of the top level's painted sites to the real images' (`--fsr-top-amp`).

With `--fsr-atom-recon` the generator paints with the teacher's twelve atoms at the teacher's density of sites, yet
its 32x32 covariance gap stays at 6-8x the floor: its sites have a long weak tail (10% quantile of the amplitude
0.26-0.50 where the teacher's is 0.72; docs/RESULTS.md section 16), and given the teacher's amplitudes in rank order
the same codes score about half the gap. A dead zone (`--fsr-top-wta-min`) removed the weak sites instead of
strengthening them and lost the arrangement they filled. This module strengthens them:

* the real amplitudes come from the same sparse codes the reconstruction term computes on each G step's real
  images (`fsr_plugin.atom_reconstruction.sparse_codes`, unit-norm atoms), refitted without the L1 shrinkage on
  their support (`refit_on_support`), one amplitude per coded site (the norm of what its codes paint together, as
  the head holds several copies of an atom), sites weaker than a threshold dropped (FISTA's residue);
* the fake amplitudes are the generator's winning top-level features times their atom's norm: the norm of what each
  site paints (`painted_amplitudes`, differentiable);
* the loss is the squared 1-D Wasserstein-2 distance between the two (`quantile_matching_loss`): the sorted fake
  amplitudes against the real amplitudes' quantiles at the same ranks, so the gradient raises the weak tail towards
  the real one without changing where the sites are or which atom they paint.
"""
import torch

from fsr_plugin.atom_reconstruction import paint, paint_adjoint
from fsr_plugin.oracle import nonneg_fista

__all__ = ['refit_on_support', 'site_amplitudes', 'painted_amplitudes', 'quantile_matching_loss']


def refit_on_support(images, codes, weight, padding, step, iters=10):
    """Least squares on the codes' support, keeping them non-negative: images [N, C, H, W], codes [N, K, H, W] >= 0
    (e.g. `sparse_codes`), weight [C, K, k, k] (the atoms the codes paint), step 1 / (Lipschitz constant of the
    painting's normal operator) -> codes of the same support that minimise 0.5 |images - paint(codes)|^2 by
    `iters` projected FISTA steps from the given codes: the L1 term's shrinkage undone. No gradient."""
    with torch.no_grad():
        support = (codes > 0).to(codes.dtype)

        def grad(point):
            return paint_adjoint(paint(point, weight, padding) - images, weight, padding) * support
        return nonneg_fista(grad, codes, step, 0.0, iters) * support


def site_amplitudes(codes, threshold=0.0, weight=None):
    """codes [N, K, H, W], weight [C, K, k, k] or None -> float [M]: at every site, the norm of what its codes paint
    there, |sum_k codes_k weight[:, k]| = sqrt(y^T G y) with G the atoms' Gram matrix (None: orthonormal atoms, the
    code norm over channels), kept where it exceeds threshold. A head holds several copies of an atom, and the codes
    split a site's amplitude among them (6-8 non-zero codes per coded site on a trained synthetic run): the painted
    norm adds them up again, the code norm would not."""
    if codes.ndim != 4:
        raise ValueError(f'site_amplitudes: codes must be [N, K, H, W], got {list(codes.shape)}')
    if weight is None:
        amp = codes.square().sum(dim=1).sqrt()
    else:
        if weight.ndim != 4 or weight.shape[1] != codes.shape[1]:
            raise ValueError(f'site_amplitudes: weight must be [C, {codes.shape[1]}, k, k], got {list(weight.shape)}')
        flat = weight.detach().to(codes.dtype).transpose(0, 1).flatten(1)              # [K, C k k]
        gram = flat @ flat.T
        amp = torch.einsum('nkhw,kl,nlhw->nhw', codes, gram, codes).clamp_min(0).sqrt()
    return amp[amp > float(threshold)]


def painted_amplitudes(features, mask, atom_norms):
    """features [N, C, H, W] (with gradient), mask bool [N, C, H, W] (the winners a head keeps: `fsr_plugin.wta`),
    atom_norms [C] (each channel's atom norm, with gradient) -> [M]: feature x atom norm at every kept entry, the
    amplitude each winning site paints."""
    if features.shape != mask.shape or atom_norms.numel() != features.shape[1]:
        raise ValueError(f'painted_amplitudes: features {list(features.shape)}, mask {list(mask.shape)} and '
                         f'{atom_norms.numel()} atom norms do not agree')
    scaled = features * atom_norms.reshape(1, -1, 1, 1)
    return scaled[mask]


def quantile_matching_loss(fake, real):
    """fake [M] (with gradient), real [M'] -> scalar: mean over i of (fake_(i) - Q_real((i + 0.5) / M))^2, fake_(i)
    the i-th smallest fake value (i = 0 .. M-1) and Q_real(u) = real_(floor(u M')) the real sample's empirical
    quantile function: the squared 1-D Wasserstein-2 distance between the two empirical distributions by the
    midpoint rule over u (exact when M' = M). Zero when either sample is empty."""
    if fake.ndim != 1 or real.ndim != 1:
        raise ValueError(f'quantile_matching_loss: 1-D samples expected, got {list(fake.shape)} and {list(real.shape)}')
    if fake.numel() == 0 or real.numel() == 0:
        return fake.sum() * 0
    m, m_real = fake.numel(), real.numel()
    index = ((2 * torch.arange(m, device=real.device) + 1) * m_real) // (2 * m)    # floor((i + 0.5) / m * m_real)
    target = torch.sort(real.detach()).values[index].to(device=fake.device, dtype=fake.dtype)
    return (torch.sort(fake).values - target).square().mean()
