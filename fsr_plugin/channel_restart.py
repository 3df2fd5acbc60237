"""Restarting dead channels of the generator's top level (--fsr-top-restart).

With a winner-take-all top head (--fsr-top-wta) most top-level channels stop winning early in training and never
paint again (RESULTS section 13: 13-22 of 128 channels paint at least 1% of the top level), while the channels that do
paint often mix several of the synthetic teacher's atoms. Dictionary learning and vector quantisation meet the same
failure and restart unused atoms (the sparse-coding oracle's note in FSR.md 4b expects restarts to lift it from 11 to
12 of 12 atoms). This module is that lever for the learner's top level:

* `ChannelUsage` sums, over the training batches of the generator phase, each top-level channel's share of what the
  top head paints: the channel's values at the sites that win the head's winner-take-all selection (without the
  selection's random jitter). This is `snapshot_eval.top_channel_usage` measured on the training batches.
* `restart_channels` re-initialises each dead channel i (share below a threshold) from a donor channel j among the
  most used ones ("splitting" j): the row i of the top block's last convolution (its weight and bias) becomes the
  row of j plus a small relative perturbation, so channel i starts winning at about half of j's sites; its head
  atom becomes j's atom plus the same perturbation ('split') or a patch of a real image at the top resolution
  ('data'). The Adam state of row i is copied from row j (so the first steps are scaled like j's), and the EMA
  copies of the generator and the heads get the new rows too.
* 'missing' (`missing_patch_pairs`) is the restart of dictionary learning: the new atoms are the real patches that
  the used atoms represent worst (lowest cosine with any used atom), and each one's donor is the used channel whose
  atom is nearest to it, so the new channel fires where an atom like it is painted now.

Everything random here comes from a generator seeded by the step, so runs resume exactly.
"""

import torch

from fsr_plugin.wta import painted_mass

__all__ = ['ATOM_MODES', 'SPLIT_NOISE', 'ChannelUsage', 'choose_restarts', 'missing_patch_pairs', 'restart_channels',
           'real_patches']

ATOM_MODES = ('split', 'data')   # what restart_channels writes into an atom ('missing' is 'data' with chosen pairs)
DISTINCT_COS = 0.9               # 'missing': patches picked in one event differ by less than this cosine
SPLIT_NOISE = 0.1  # relative perturbation of a split channel's weights: this many times the donor row's RMS


class ChannelUsage:
    """Accumulates each channel's painted mass at the top level. window: the top head's winner-take-all window
    (0 = no selection: absolute values count)."""

    def __init__(self, channels, window=0, min_value=0.0):
        self.mass = torch.zeros([int(channels)], dtype=torch.float64)
        self.window = int(window)
        self.min_value = float(min_value)

    @torch.no_grad()
    def update(self, s):
        """s: top-level features [N, C, H, W] of one generator pass."""
        if s.ndim != 4 or s.shape[1] != self.mass.numel():
            raise ValueError(f'ChannelUsage: features must be [N, {self.mass.numel()}, H, W], got {list(s.shape)}')
        self.mass += painted_mass(s, self.window, min_value=self.min_value)

    def shares(self):
        """float64 [C]: each channel's share of the total (all 0 when nothing was painted)."""
        total = float(self.mass.sum())
        return self.mass / total if total > 0 else self.mass.clone()

    def reset(self):
        self.mass.zero_()

    def state_dict(self):
        return {'mass': self.mass.clone(), 'window': self.window}

    def load_state_dict(self, state):
        mass = torch.as_tensor(state['mass'], dtype=torch.float64)
        if mass.shape != self.mass.shape:
            raise ValueError(f'ChannelUsage: saved state has {mass.numel()} channels, this one {self.mass.numel()}')
        self.mass.copy_(mass)


def choose_restarts(shares, threshold, max_restarts):
    """shares [C] -> list of (dead, donor) channel pairs: the channels below `threshold` with the smallest shares
    (ties by index) paired with the most used channels (largest first), at most `max_restarts` pairs and never more
    than there are used channels. No pairs when nothing was painted."""
    shares = torch.as_tensor(shares, dtype=torch.float64)
    if float(shares.sum()) <= 0:
        return []
    values = shares.tolist()
    dead = sorted((i for i, v in enumerate(values) if v < threshold), key=lambda i: (values[i], i))
    used = sorted((i for i, v in enumerate(values) if v >= threshold), key=lambda i: (-values[i], i))
    n = min(int(max_restarts), len(dead), len(used))
    return list(zip(dead[:n], used[:n]))


def real_patches(images, kernel_size, bias, num, generator):
    """images [N, C, R, R] (real images at the top resolution) -> [num, C, k, k] patches minus the head's bias [C]
    (the image's background), drawn at random positions among the half of all k x k windows with the largest norm
    (patches where something is painted)."""
    k = int(kernel_size)
    x = images.detach().float() - bias.detach().float().reshape(1, -1, 1, 1)
    windows = x.unfold(2, k, 1).unfold(3, k, 1)                    # [N, C, R-k+1, R-k+1, k, k]
    windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1], k, k)
    norms = windows.flatten(1).norm(dim=1)
    strong = torch.nonzero(norms >= norms.median()).flatten()
    pick = strong[torch.randint(strong.numel(), [int(num)], generator=generator)]
    return windows[pick].clone()


def missing_patch_pairs(shares, threshold, max_restarts, atoms, candidates):
    """Restarts of mode 'missing'. shares [C]: channel usage; atoms [C, img_C, k, k]: the top head's effective
    atoms; candidates [M, img_C, k, k]: real patches (real_patches). Returns (pairs, patches): up to max_restarts
    (dead, donor) pairs and their patches [n, img_C, k, k]. The patches are the candidates with the lowest best
    signed cosine against the used atoms (share >= threshold), taken in that order and skipping any within cosine
    DISTINCT_COS of one already taken; the dead channels are the least used (choose_restarts' order); each donor is
    the used channel whose atom has the largest cosine with its patch."""
    shares = torch.as_tensor(shares, dtype=torch.float64)
    dead = [d for d, _ in choose_restarts(shares, threshold, shares.numel())]
    used = [i for i in range(shares.numel()) if float(shares[i]) >= threshold]
    if not dead or not used:
        return [], candidates[:0]
    unit = lambda x: x.flatten(1).double() / x.flatten(1).double().norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa
    cand, used_atoms = unit(candidates), unit(atoms[used])
    cos = cand @ used_atoms.T                                                     # [M, used]
    best, nearest = cos.max(dim=1)
    taken = []
    for m in torch.argsort(best).tolist():
        if len(taken) == min(int(max_restarts), len(dead)):
            break
        if all(abs(float(cand[m] @ cand[t])) < DISTINCT_COS for t in taken):
            taken.append(m)
    pairs = [(dead[n], used[int(nearest[m])]) for n, m in enumerate(taken)]
    return pairs, candidates[taken]


def _perturbed(row, generator):
    """row + SPLIT_NOISE * RMS(row) * N(0, 1) noise of row's shape."""
    rms = row.float().square().mean().sqrt()
    noise = torch.randn(row.shape, generator=generator, dtype=torch.float32).to(row.device)
    return row + (SPLIT_NOISE * rms * noise).to(row.dtype)


def _copy_adam_rows(opt, param, dst, src, dim):
    """Copy the optimiser state (every tensor of param's shape, e.g. Adam's exp_avg and exp_avg_sq) of index src
    into index dst along dim."""
    state = opt.state.get(param, {}) if opt is not None else {}
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.index_copy_(dim, torch.tensor([dst], device=value.device), value.index_select(dim, torch.tensor(
                [src], device=value.device)))


@torch.no_grad()
def restart_channels(pairs, conv, head, optimizer=None, conv_ema=None, head_ema=None, mode='split', patches=None,
                     generator=None):
    """Re-initialise the dead channel of every (dead, donor) pair, see the module docstring.

    conv: the top block's last convolution (weight [C, C_in, k, k], bias [C]); head: the top OutputHead (weight
    [img_C, C, k, k], atom i = weight[:, i]); optimizer: the optimiser holding both (its per-parameter state rows are
    copied from the donor); conv_ema / head_ema: their EMA copies (get the new rows); mode: 'split' (atom = donor atom
    perturbed) or 'data' (atom = patches[n] for the n-th pair, scaled to the donor atom's stored norm); generator: a
    torch.Generator for the perturbations."""
    if mode not in ATOM_MODES:
        raise ValueError(f'restart mode must be one of {ATOM_MODES}, got {mode!r}')
    if mode == 'data' and (patches is None or len(patches) < len(pairs)):
        raise ValueError(f"restart mode 'data' needs a patch per restarted channel ({len(pairs)}), got "
                         f"{0 if patches is None else len(patches)}")
    for n, (dead, donor) in enumerate(pairs):
        conv.weight[dead] = _perturbed(conv.weight[donor], generator)
        if conv.bias is not None:
            conv.bias[dead] = conv.bias[donor]
        if mode == 'split':
            head.weight[:, dead] = _perturbed(head.weight[:, donor], generator)
        else:
            patch = patches[n].to(head.weight.device, torch.float32)
            scale = head.weight[:, donor].float().norm() / patch.norm().clamp_min(1e-12)
            head.weight[:, dead] = (patch * scale).to(head.weight.dtype)
        params = [(conv.weight, 0), (head.weight, 1)] + ([(conv.bias, 0)] if conv.bias is not None else [])
        for param, dim in params:
            _copy_adam_rows(optimizer, param, dead, donor, dim)
        if conv_ema is not None:
            conv_ema.weight[dead] = conv.weight[dead]
            if conv.bias is not None:
                conv_ema.bias[dead] = conv.bias[dead]
        if head_ema is not None:
            head_ema.weight[:, dead] = head.weight[:, dead]


def restart_generator(seed, cur_nimg):
    """The torch.Generator of the restart at cur_nimg (a function of the run's seed and the step only)."""
    return torch.Generator().manual_seed((int(seed) * 1000003 + int(cur_nimg)) % 2 ** 32)
