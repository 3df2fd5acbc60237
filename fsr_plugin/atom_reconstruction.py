"""A reconstruction signal for the top head's atoms (`--fsr-atom-recon`): convolutional sparse coding of real images.

On the synthetic teacher the generator paints flat colour with flats moved by one pixel, or with blends of a flat and
a step (docs/RESULTS.md section 15): the shift ambiguity of convolutional dictionaries. The sparse-coding oracle
(`fsr_plugin.oracle`) resolves it by reconstruction and recovers the teacher's atoms; the GAN has no reconstruction
term. This module gives the top head one, computed on the real images of each G step:

1. codes: non-negative sparse codes Y >= 0 of the real top-level images X (minus the head's bias) in the head's own
   atoms, normalised to unit norm, by FISTA on 0.5 |X - b - paint(Y, A)|^2 + lam |Y|_1 (no gradient);
2. loss: 0.5 |X - b - paint(Y, A)|^2 per image (summed over pixels and channels, averaged over images),
   differentiated with respect to the atoms only. Through the unit normalisation the gradient turns each atom's
   direction, never its scale (the generator's features and the head's gain set the scale).

This is one step of the oracle's alternating minimisation per G step, on the head's atoms, using the real images the
discriminator sees anyway. `paint` is the head's convolution exactly (`fsr_plugin.heads.OutputHead`: a true
convolution with the head's padding, i.e. each code paints its atom around its site).
"""
import torch
import torch.nn.functional as F

from fsr_plugin.oracle import lipschitz_constant, nonneg_fista

__all__ = ['paint', 'paint_adjoint', 'unit_atoms', 'fista_step', 'sparse_codes', 'reconstruction_error',
           'reconstruction_loss']


def paint(codes, weight, padding):
    """codes [N, K, H, W], weight [C, K, k, k] (a head's effective weight; atom i = weight[:, i]), padding
    [x0, x1, y0, y1] (the head's) -> image [N, C, H, W]: the true convolution the head applies, without its bias."""
    x0, x1, y0, y1 = padding
    return F.conv2d(F.pad(codes, [x0, x1, y0, y1]), weight.flip([2, 3]))


def paint_adjoint(images, weight, padding):
    """The adjoint of `paint`: images [N, C, H, W], weight [C, K, k, k] -> [N, K, H, W], so that
    <paint(codes), images> = <codes, paint_adjoint(images)> (the codes' gradient of a loss on the painted image)."""
    x0, _, y0, _ = padding
    h, w = images.shape[-2:]
    return F.conv_transpose2d(images, weight.flip([2, 3]))[:, :, y0:y0 + h, x0:x0 + w]


def unit_atoms(weight, eps=1e-8):
    """weight [C, K, k, k] -> the same with every atom (weight[:, i]) scaled to unit L2 norm."""
    return weight / (weight.square().sum(dim=[0, 2, 3], keepdim=True) + eps).sqrt()


def fista_step(weight, size):
    """weight [C, K, k, k], size (H, W) of the images -> 1 / L as a scalar tensor on the weight's device and dtype,
    L the largest eigenvalue of the painting operator's normal matrix (from the atoms' Fourier transforms on a grid
    of at least the image size; an upper bound with zero padding)."""
    grid = max(int(size[0]), int(size[1]), weight.shape[-1], 8)
    bound = lipschitz_constant(weight.detach().transpose(0, 1), size=grid, as_tensor=True)
    return (1.0 / bound.clamp_min(1e-12)).to(weight.dtype)


def sparse_codes(images, weight, padding, lam, iters=30, step=None):
    """Non-negative convolutional sparse codes by FISTA: images [N, C, H, W], weight [C, K, k, k] -> codes
    [N, K, H, W] >= 0 approximately minimising 0.5 |images - paint(codes, weight)|^2 + lam * sum(codes). The step is
    `step`, or by default `fista_step(weight, (H, W))`. No gradient flows through the codes."""
    if images.ndim != 4 or weight.ndim != 4 or images.shape[1] != weight.shape[0]:
        raise ValueError(f'sparse_codes: images [N, C, H, W] and weight [C, K, k, k] must agree on C, got '
                         f'{list(images.shape)} and {list(weight.shape)}')
    if lam < 0 or iters < 1:
        raise ValueError(f'sparse_codes: lam must be >= 0 and iters >= 1, got {lam}, {iters}')
    with torch.no_grad():
        weight = weight.detach()
        step = fista_step(weight, images.shape[-2:]) if step is None else step

        def grad(point):  # gradient of the quadratic part at `point`
            return paint_adjoint(paint(point, weight, padding) - images, weight, padding)
        n, _, h, w = images.shape
        return nonneg_fista(grad, images.new_zeros(n, weight.shape[1], h, w), step, lam, iters)


def reconstruction_error(images, codes, weight, padding):
    """0.5 * the squared residual |images - paint(codes, weight)|^2 summed over each image's pixels and channels,
    averaged over images (the oracle's objective per image): images [N, C, H, W], codes [N, K, H, W] -> scalar.
    Differentiable in all three tensors."""
    residual = images - paint(codes, weight, padding)
    return 0.5 * residual.square().sum() / images.shape[0]


def reconstruction_loss(images, weight, bias, padding, lam, iters=30, atoms=None, return_codes=False):
    """The `--fsr-atom-recon` term: images [N, C, H, W] (real, at the head's resolution), weight [C, K, k, k] (the
    head's effective weight, with gradient), bias [C] or None (detached: the background the codes do not paint),
    atoms: None (every atom) or a bool [K] / index tensor of the atoms the codes may use (the others get no gradient).

    Returns (loss, stats): loss = reconstruction_error of the images minus the bias, with codes from
    `sparse_codes` on the unit-normalised atoms (fixed), as a function of the unit-normalised atoms; stats = dict of
    float tensors: 'mse' (the residual's mean square), 'density' (fraction of codes > 0), 'explained' (1 - residual
    energy / image energy). With return_codes also a dict: 'codes' [N, K', H, W], 'target' (the images minus the
    bias), 'unit' (the unit atoms coded with, detached) and 'step' (the FISTA step), for more work on the same codes."""
    target = images.float()
    if bias is not None:
        target = target - bias.detach().float().reshape(1, -1, 1, 1)
    if atoms is not None:
        weight = weight[:, atoms]
        if weight.shape[1] == 0:
            raise ValueError('reconstruction_loss: no atom selected')
    unit = unit_atoms(weight.float())
    step = fista_step(unit, target.shape[-2:])
    codes = sparse_codes(target, unit, padding, lam, iters=iters, step=step)
    loss = reconstruction_error(target, codes, unit, padding)
    with torch.no_grad():
        mse = 2 * loss.detach() / target[0].numel()
        stats = dict(mse=mse, density=(codes > 0).float().mean(),
                     explained=1 - mse / target.square().mean().clamp_min(1e-12))
    if return_codes:
        return loss, stats, dict(codes=codes, target=target, unit=unit.detach(), step=step)
    return loss, stats
