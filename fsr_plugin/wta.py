"""Winner-take-all selection of hidden features: one channel per site, with optional spatial suppression.

FSR.md 4b lists it as a lever for the top level: the synthetic teacher's top-level code has one active channel per
site, the sites chosen by argmax over channels with non-maximum suppression; an L1 penalty only approximates that.
`winner_take_all(s, window)` makes the learner's top-level code sparse in the same way, exactly, before the output
head paints its atoms:

* every site keeps only its largest channel (ties keep all tied channels), if that value is positive;
* with window w > 1 a site also has to be a local maximum: its winning value must be at least the winning value of
  every site in the w x w neighbourhood around it (stride 1, same padding), so about one site per w x w window stays
  active.

The kept entries pass through unchanged; all others become 0. The selection is a constant mask in the backward
pass, so the gradient reaches the winners only (as in k-sparse autoencoders).
"""

import torch
import torch.nn.functional as F

__all__ = ['winner_take_all', 'wta_mask']


def wta_mask(s, window=1):
    """s [N, C, H, W] -> bool mask [N, C, H, W] of the entries that winner_take_all keeps (no gradient).
    window: 1 = channel selection only; odd w > 1 = also w x w spatial non-maximum suppression."""
    if s.ndim != 4:
        raise ValueError(f'winner_take_all: features must be [N, C, H, W], got {list(s.shape)}')
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f'winner_take_all: window must be an odd integer >= 1, got {window}')
    with torch.no_grad():
        best = s.amax(dim=1, keepdim=True)                                   # [N, 1, H, W]
        mask = (s == best) & (best > 0)
        if window > 1:
            local = F.max_pool2d(best, kernel_size=window, stride=1, padding=window // 2)
            mask = mask & (best >= local)
    return mask


def winner_take_all(s, window=1):
    """s [N, C, H, W] -> s with every entry outside wta_mask(s, window) set to 0 (same dtype and shape)."""
    return s * wta_mask(s, window).to(s.dtype)
