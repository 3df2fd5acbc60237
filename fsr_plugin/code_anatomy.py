"""What the generator's top-level codes are, against the synthetic teacher's: where, how strong, and with which atom.

With `--fsr-atom-recon` the top head holds every teacher atom and the generator paints with all twelve for a while,
yet the top level's covariance gap stays at about 8x its floor (docs/RESULTS.md section 16). The atoms are not the
gap then; the codes are. This module reads a snapshot's top-level codes (the top features that the head's
winner-take-all keeps, times the norm of each channel's atom: the amplitude each site paints) and

* summarises them as the teacher's codes are summarised: painted sites per 3x3 neighbourhood, the amplitude's
  quantiles, each teacher atom's share of the painted mass (`code_statistics`);
* rewrites them as teacher codes (each channel mapped to the teacher atom it is nearest to; `as_teacher_codes`) so
  that they can be painted with the teacher's own atoms: the part of the gap that the codes alone cause;
* swaps the amplitude distributions of two code sets, site by site in rank order (`with_amplitudes`), to split that
  part into the amplitudes and the rest (where the sites are, and with which atoms).
"""
import numpy as np
import torch

from fsr_plugin.wta import wta_mask

__all__ = ['painted_codes', 'code_statistics', 'as_teacher_codes', 'with_amplitudes']


def painted_codes(features, atoms, window=0, jitter=0.0, generator=None, min_value=0.0):
    """features [N, C, R, R] (the top block's features), atoms [C, 3, k, k] (the head's effective atoms) ->
    float64 [N, C, R, R]: the features that a head with this winner-take-all window (and min_value) keeps (window 0:
    all of them), each times the L2 norm of its channel's atom, i.e. the norm of what the site paints (a feature that
    paints a negative multiple of its atom keeps its sign)."""
    s = features.detach().double()
    if window:
        s = s * wta_mask(s.float(), window, jitter, generator, min_value).to(s.dtype)
    norms = torch.as_tensor(atoms, dtype=torch.float64).flatten(1).norm(dim=1)
    if norms.numel() != s.shape[1]:
        raise ValueError(f'painted_codes: {s.shape[1]} feature channels but {norms.numel()} atoms')
    return s * norms.reshape(1, -1, 1, 1)


def code_statistics(codes, num_atoms=None):
    """codes [N, K, R, R] (teacher codes, or painted codes mapped to teacher atoms) -> dict:
    sites_per_3x3 (painted sites, i.e. positions with any non-zero code, per 3x3 neighbourhood = 9 x their share of
    positions), codes_per_site (non-zero channels per painted site), amplitude quantiles p10, p50, p90 and mean of
    the painted sites' code norm (over channels), share (float64 [K]: each channel's share of the summed absolute
    code mass), isolated (share of painted sites with no other painted site in their 3x3 neighbourhood)."""
    c = torch.as_tensor(codes, dtype=torch.float64)
    if c.ndim != 4:
        raise ValueError(f'code_statistics: codes must be [N, K, R, R], got {list(c.shape)}')
    active = c != 0
    site = active.any(dim=1)                                              # [N, R, R]
    amp = c.square().sum(dim=1).sqrt()[site]
    mass = c.abs().sum(dim=(0, 2, 3))
    share = mass / mass.sum() if float(mass.sum()) > 0 else mass
    counts = torch.nn.functional.avg_pool2d(site[:, None].double(), 3, stride=1, padding=1,
                                            count_include_pad=True)[:, 0] * 9
    isolated = float(((counts <= 1) & site).sum()) / max(int(site.sum()), 1)
    q = (np.quantile(amp.numpy(), [0.1, 0.5, 0.9]) if amp.numel() else np.zeros(3))
    if num_atoms is not None and share.numel() != num_atoms:
        raise ValueError(f'code_statistics: {share.numel()} channels, expected {num_atoms}')
    return dict(sites_per_3x3=9 * float(site.double().mean()),
                codes_per_site=float(active.sum()) / max(int(site.sum()), 1),
                amp_p10=float(q[0]), amp_p50=float(q[1]), amp_p90=float(q[2]),
                amp_mean=float(amp.mean()) if amp.numel() else 0.0, share=share, isolated=isolated)


def as_teacher_codes(codes, partner, num_atoms):
    """codes [N, C, R, R] (painted codes of the learner's C channels), partner: int array [C] (teacher atom of each
    channel, -1 = dropped) -> [N, num_atoms, R, R]: each channel's codes added to its teacher atom's."""
    c = torch.as_tensor(codes, dtype=torch.float64)
    partner = torch.as_tensor(np.asarray(partner), dtype=torch.long)
    if partner.numel() != c.shape[1]:
        raise ValueError(f'as_teacher_codes: {c.shape[1]} channels but {partner.numel()} partners')
    if int(partner.max()) >= num_atoms:
        raise ValueError(f'as_teacher_codes: partner index {int(partner.max())} >= num_atoms {num_atoms}')
    out = c.new_zeros(c.shape[0], int(num_atoms), c.shape[2], c.shape[3])
    keep = partner >= 0
    out.index_add_(1, partner[keep], c[:, keep])
    return out


def with_amplitudes(codes, source):
    """codes [N, K, R, R], source [M, K', R', R'] -> codes with every painted site's amplitude (its code norm over
    channels) replaced by the source's amplitude of the same rank (the quantile of the source's painted sites at the
    site's rank among codes' painted sites); placement, atoms and the mix of channels at a site are kept."""
    c = torch.as_tensor(codes, dtype=torch.float64)
    src = torch.as_tensor(source, dtype=torch.float64)
    amp = c.square().sum(dim=1).sqrt()
    site = amp > 0
    target = src.square().sum(dim=1).sqrt()
    target = np.sort(target[target > 0].numpy())
    if not bool(site.any()) or target.size == 0:
        raise ValueError('with_amplitudes: both code sets need painted sites')
    values = amp[site].numpy()
    ranks = np.argsort(np.argsort(values, kind='stable'), kind='stable') / max(values.size - 1, 1)
    scale = torch.zeros_like(amp)
    scale[site] = torch.from_numpy(np.quantile(target, ranks)) / amp[site]
    return c * scale[:, None]
