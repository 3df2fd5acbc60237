"""Winner-take-all selection of hidden features: one channel per site, with optional spatial suppression.

FSR.md 4b lists it as a lever for the top level: the synthetic teacher's top-level code has one active channel per
site, the sites chosen by argmax over channels with non-maximum suppression; an L1 penalty only approximates that.
`winner_take_all(s, window)` makes the learner's top-level code sparse in the same way, exactly, before the output
head paints its atoms:

* every site keeps only its largest channel (ties keep all tied channels), if that value is positive;
* with window w > 1 a site also has to be a local maximum: its winning value must be at least the winning value of
  every site in the w x w neighbourhood around it (stride 1, same padding), so about one site per w x w window stays
  active.

The teacher jitters its scores before the suppression; a smooth feature map has few local maxima (a learner's top
level kept 0.05-0.36 sites per 3x3 neighbourhood where the teacher has 0.90), so `jitter` adds the same kind of
noise to the learner's winning values for the suppression only.

The kept entries pass through unchanged; all others become 0. The selection is a constant mask in the backward
pass, so the gradient reaches the winners only (as in k-sparse autoencoders). A channel that stops winning then
gets no gradient and cannot win again, whatever its atom (a dead channel). `straight_through=b` passes b times the
gradient to the losers as well (the forward value is unchanged): a loser's feature then moves as if it painted its
atom there, up where adding that atom would lower the loss, so a channel whose atom the data needs can win again.
"""

import torch
import torch.nn.functional as F

__all__ = ['painted_mass', 'winner_take_all', 'wta_mask']


def wta_mask(s, window=1, jitter=0.0, generator=None, min_value=0.0):
    """s [N, C, H, W] -> bool mask [N, C, H, W] of the entries that winner_take_all keeps (no gradient).
    window: 1 = channel selection only; odd w > 1 = also w x w spatial non-maximum suppression.
    jitter >= 0 (window > 1): the suppression compares the winning values plus jitter x (their standard deviation in
    the image) x N(0, 1) noise drawn per site from `generator` (None: the global generator of s's device), as the
    synthetic teacher jitters its top-level scores; the kept values themselves are not jittered.
    min_value >= 0: a winner is kept only when its value exceeds it (after the suppression, as the teacher drops its
    weak sites: a weak local maximum suppresses its neighbours and paints nothing)."""
    if s.ndim != 4:
        raise ValueError(f'winner_take_all: features must be [N, C, H, W], got {list(s.shape)}')
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f'winner_take_all: window must be an odd integer >= 1, got {window}')
    jitter = float(jitter)
    if jitter < 0 or (jitter > 0 and window == 1):
        raise ValueError(f'winner_take_all: jitter must be >= 0 and needs a window > 1, got jitter={jitter} with '
                         f'window={window}')
    if float(min_value) < 0:
        raise ValueError(f'winner_take_all: min_value must be >= 0, got {min_value!r}')
    with torch.no_grad():
        best = s.amax(dim=1, keepdim=True)                                   # [N, 1, H, W]
        mask = (s == best) & (best > float(min_value))
        if window > 1:
            score = best
            if jitter > 0:
                spread = best.flatten(1).std(dim=1).reshape(-1, 1, 1, 1)
                noise = torch.randn(best.shape, generator=generator, device=best.device, dtype=best.dtype)
                score = best + jitter * spread * noise
            local = F.max_pool2d(score, kernel_size=window, stride=1, padding=window // 2)
            mask = mask & (score >= local)
    return mask


def winner_take_all(s, window=1, jitter=0.0, generator=None, straight_through=0.0, min_value=0.0):
    """s [N, C, H, W] -> s with every entry outside wta_mask(s, window, jitter, generator, min_value) set to 0 (same
    dtype and shape). straight_through b >= 0: in the backward pass the entries set to 0 get b times their incoming
    gradient (the kept ones get all of it); b = 0 is the plain selection."""
    b = float(straight_through)
    if b < 0:
        raise ValueError(f'winner_take_all: straight_through must be >= 0, got {straight_through!r}')
    keep = wta_mask(s, window, jitter, generator, min_value).to(s.dtype)
    out = s * keep
    if b > 0:
        out = out + b * (s - s.detach()) * (1 - keep)
    return out


def painted_mass(s, window=0, jitter=0.0, generator=None, min_value=0.0):
    """s [N, C, H, W] -> float64 [C] on the CPU: each channel's summed values at the entries that a head with this
    winner-take-all window keeps (wta_mask with jitter, generator and min_value); window 0 = no selection, absolute
    values."""
    s = s.detach().float()
    s = s * wta_mask(s, window, jitter, generator, min_value).to(s.dtype) if window else s.abs()
    return s.double().sum(dim=(0, 2, 3)).cpu()
