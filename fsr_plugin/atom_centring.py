"""A centring prior for the top head's atoms (`--fsr-atom-centre`): each atom's energy centred on its site.

On the synthetic teacher the generator finds the step-edge atoms but paints flat colour with flats moved by one
pixel (a colour square with one grey side) from a site one pixel away: the shift ambiguity of convolutional
dictionaries (docs/RESULTS.md section 15). Sparse coding resolves it by reconstruction; a GAN has no reconstruction
term. The teacher's atoms, like edge-colour features generally, are centred on the site that paints them: the
energy centroid of a flat or of a -1|0|+1 step is the middle of the window, that of a shifted flat is half a pixel
off. This prior pulls every atom's energy centroid to the middle of its k x k window.
"""
import torch

__all__ = ['energy_centroids', 'centring_penalty']


def energy_centroids(atoms):
    """atoms [A, C, k, k] -> [A, 2] (y, x) centroid of each atom's energy (squared values summed over channels), in
    pixels from the middle of the window ((k - 1) / 2). An all-zero atom has centroid 0."""
    if atoms.ndim != 4 or atoms.shape[2] != atoms.shape[3]:
        raise ValueError(f'energy_centroids: atoms must be [A, C, k, k], got {list(atoms.shape)}')
    k = atoms.shape[-1]
    energy = atoms.square().sum(dim=1)                                    # [A, k, k]
    total = energy.sum(dim=(1, 2)).clamp_min(1e-12)
    pos = torch.arange(k, dtype=atoms.dtype, device=atoms.device) - (k - 1) / 2
    y = (energy.sum(dim=2) * pos).sum(dim=1) / total
    x = (energy.sum(dim=1) * pos).sum(dim=1) / total
    return torch.stack([y, x], dim=1)


def centring_penalty(atoms):
    """atoms [A, C, k, k] -> scalar: the sum over atoms of their squared centroid offset (pixels^2). 0 for atoms
    symmetric in energy about the middle of the window; 0.25 for a 3x3 flat moved by one pixel (centroid half a
    pixel off)."""
    return energy_centroids(atoms).square().sum()
