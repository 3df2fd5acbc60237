"""Pairwise-resolution discriminator blocks D_l(x_{l-1}, x_l) (FSR.md section 2, step 3).

For a level of resolution r (r >= 2 * r_1), D_l sees the pair (x_lo [N, C, r/2, r/2], x_hi [N, C, r, r]):

    h = concat(upsample(x_lo, 2), x_hi)                       [N, 2C, r, r]
    h = lrelu-conv_k(h) repeated `depth` times               [N, channels, r, r]  (zero padding k // 2)
        (optional minibatch-std channels appended after the first conv; to the input when depth = 0)
    score_map = conv_1x1(h)                                   [N, 1, r, r]   (linear)
    score = mean over positions of score_map                  [N, 1]

so a score-map value only depends on a (2 * depth * (k // 2) + 1)-pixel window of the pair (plus the upsampling
footprint of x_lo): the block judges the local super-resolution x_lo -> x_hi. Such a score is linear in the pooled
local features, so it cannot weigh an image-wide statistic against its spread over the batch (how much the images'
mean colours vary, say) except through the curvature of its local features. With `global_channels` = H > 0 the
block adds an image-level term (`--fsr-pair-global`):

    g = concat(mean_p h_p, mean colour of x_lo, mean colour of x_hi)       [N, channels (+ mbstd) + 2C]
    score += fc_1(lrelu-fc_H(g))                                          [N, 1]

a two-layer perceptron on the image's pooled features, which sees the whole image at once as the main
discriminator's last layers do. The layers are the host's training.networks.Conv2dLayer (equalised learning rate,
bias, lrelu with gain sqrt(2)), FullyConnectedLayer and MinibatchStdLayer.

`pair_r1_penalty(scores, inputs)` is R1 for real pairs: per-sample squared gradient norm with respect to both images.
"""

import torch

from torch_utils import persistence
from torch_utils.ops import upfirdn2d
from training.networks import Conv2dLayer
from training.networks import FullyConnectedLayer
from training.networks import MinibatchStdLayer

# This module imports only host code: its source travels inside snapshots and must load without fsr_plugin.
UPSAMPLE_MODES = ('nearest', 'fir')


def upsample2x(x, mode='nearest'):
    """x [N, C, H, W] -> [N, C, 2H, 2W]: 'nearest' (pixel replication) or 'fir' (upfirdn2d.upsample2d with the host's
    [1, 3, 3, 1] filter); the same as fsr_plugin.pyramid.upsample(x, 2, mode)."""
    if mode == 'nearest':  # Pixel replication as one broadcast copy (same values as repeat_interleave, faster).
        N, C, H, W = x.shape
        return x[:, :, :, None, :, None].expand(N, C, H, 2, W, 2).reshape(N, C, 2 * H, 2 * W)
    if mode == 'fir':
        return upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device))
    raise ValueError(f'upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}')


@persistence.persistent_class
class PairDiscriminator(torch.nn.Module):
    """D_l(x_lo, x_hi) -> score [N, 1] for the pair at `resolution` (of x_hi).

    img_channels: C. channels: width of the conv stack. depth: number of k x k conv layers (0 = linear 1x1 head on the
    pair). kernel_size: k (odd). activation: of the stack (host activation name). mbstd_group_size: 0 = no
    minibatch-std, else the group size (N must be divisible by min(group, N)). mbstd_num_channels: its channels.
    upsample: 'nearest' or 'fir' (how x_lo is brought to r). conv_clamp: host clamp of the conv outputs (None = off).
    global_channels: 0 = local scores only; H > 0 = add the image-level perceptron of the module docstring (hidden
    width H).
    """

    def __init__(self, resolution, img_channels, channels=64, depth=2, kernel_size=3, activation='lrelu',
                 mbstd_group_size=0, mbstd_num_channels=1, upsample='nearest', conv_clamp=None, global_channels=0):
        super().__init__()
        if not isinstance(resolution, int) or resolution < 2 or resolution % 2:
            raise ValueError(f'PairDiscriminator: resolution must be an even int >= 2, got {resolution!r}')
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f'PairDiscriminator: depth must be an int >= 0, got {depth!r}')
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'PairDiscriminator: kernel_size must be an odd int >= 1, got {kernel_size!r}')
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f'PairDiscriminator: upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}')
        if mbstd_group_size < 0 or mbstd_num_channels < 1:
            raise ValueError('PairDiscriminator: mbstd_group_size must be >= 0 and mbstd_num_channels >= 1')
        if not isinstance(global_channels, int) or isinstance(global_channels, bool) or global_channels < 0:
            raise ValueError(f'PairDiscriminator: global_channels must be an int >= 0, got {global_channels!r}')
        self.resolution = resolution
        self.img_channels = int(img_channels)
        self.channels = int(channels)
        self.depth = depth
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.mbstd_group_size = int(mbstd_group_size)
        mbstd_ch = int(mbstd_num_channels) if self.mbstd_group_size > 0 else 0
        self.mbstd = MinibatchStdLayer(self.mbstd_group_size, int(mbstd_num_channels)) if mbstd_ch else None
        in_ch = 2 * self.img_channels
        for i in range(depth):
            layer_in = in_ch + (mbstd_ch if i == 1 else 0)
            setattr(self, f'conv{i}', Conv2dLayer(layer_in, self.channels, kernel_size=kernel_size,
                                                  activation=activation, conv_clamp=conv_clamp))
            in_ch = self.channels
        feature_ch = in_ch + (mbstd_ch if depth <= 1 else 0)
        self.out = Conv2dLayer(feature_ch, 1, kernel_size=1)
        self.global_channels = global_channels
        if global_channels:
            self.global_fc = FullyConnectedLayer(feature_ch + 2 * self.img_channels, global_channels,
                                                 activation=activation)
            self.global_out = FullyConnectedLayer(global_channels, 1)

    def score_map(self, x_lo, x_hi):
        """Per-position scores [N, 1, r, r] (float32): the local part of the score (without the image-level term of
        `global_channels`)."""
        return self.out(self._features(x_lo, x_hi))

    def _features(self, x_lo, x_hi):
        """Input of the final 1x1 layer: [N, channels (+ mbstd), r, r] float32 (checks the pair's shapes)."""
        r = self.resolution
        C = self.img_channels
        if x_hi.ndim != 4 or tuple(x_hi.shape[1:]) != (C, r, r):
            raise ValueError(f'PairDiscriminator({r}): x_hi must be [N, {C}, {r}, {r}], got {list(x_hi.shape)}')
        if x_lo.ndim != 4 or tuple(x_lo.shape[1:]) != (C, r // 2, r // 2) or x_lo.shape[0] != x_hi.shape[0]:
            raise ValueError(f'PairDiscriminator({r}): x_lo must be [{x_hi.shape[0]}, {C}, {r // 2}, {r // 2}], '
                             f'got {list(x_lo.shape)}')
        h = torch.cat([upsample2x(x_lo.to(torch.float32), self.upsample), x_hi.to(torch.float32)], dim=1)
        if self.mbstd is not None and self.depth == 0:
            h = self.mbstd(h)
        for i in range(self.depth):
            h = getattr(self, f'conv{i}')(h)
            if i == 0 and self.mbstd is not None:
                h = self.mbstd(h)
        return h

    def forward(self, x_lo, x_hi):
        """x_lo [N, C, r/2, r/2], x_hi [N, C, r, r] -> scores [N, 1] (mean of the score map).

        The final layer is a linear 1x1 convolution, so the mean over positions is taken first and the layer is
        applied to the pooled features: mean_p(w . h_p + b) = w . mean_p(h_p) + b, the same value as
        score_map(...).mean(dim=[2, 3]) (up to float rounding) at a fraction of the cost. With global_channels > 0
        the image-level term is added.
        """
        h = self._features(x_lo, x_hi)
        pooled = h.mean(dim=[2, 3])  # [N, C]
        out = self.out
        if out.activation != 'linear' or out.conv_clamp is not None or out.spectral_norm or out.up != 1 or \
                out.down != 1 or out.weight.shape[2:] != (1, 1):
            score = out(h).mean(dim=[2, 3])  # Not a plain linear 1x1 layer (never built here): the direct form.
        else:
            w = (out.weight * out.weight_gain).reshape(out.out_channels, -1).to(pooled.dtype)
            b = out.bias.to(pooled.dtype) if out.bias is not None else None
            score = torch.nn.functional.linear(pooled, w, b) * out.act_gain
        if self.global_channels:
            g = torch.cat([pooled, x_lo.to(pooled.dtype).mean(dim=[2, 3]), x_hi.to(pooled.dtype).mean(dim=[2, 3])],
                          dim=1)
            score = score + self.global_out(self.global_fc(g))
        return score

    def extra_repr(self):
        return (f'resolution={self.resolution}, channels={self.channels}, depth={self.depth}, '
                f'kernel_size={self.kernel_size}, upsample={self.upsample}, mbstd_group_size={self.mbstd_group_size}, '
                f'global_channels={self.global_channels}')


@persistence.persistent_class
class PairDiscriminators(torch.nn.Module):
    """One PairDiscriminator per consecutive pair of `resolutions` (ascending, doubling); children d<r> for every r
    but the first. channels: int or {r: int}. Other keyword arguments go to every PairDiscriminator."""

    def __init__(self, resolutions, img_channels, channels=64, **block_kwargs):
        super().__init__()
        resolutions = [int(r) for r in resolutions]
        if len(resolutions) < 2:
            raise ValueError(f'PairDiscriminators: need at least two resolutions, got {resolutions}')
        for lo, hi in zip(resolutions, resolutions[1:]):
            if hi != 2 * lo:
                raise ValueError(f'PairDiscriminators: resolutions must double at every level, got {resolutions}')
        self.resolutions = resolutions
        self.levels = resolutions[1:]
        for r in self.levels:
            ch = channels[r] if isinstance(channels, dict) else channels
            setattr(self, f'd{r}', PairDiscriminator(r, int(img_channels), channels=int(ch), **block_kwargs))

    def block(self, r):
        """The PairDiscriminator of level r (the resolution of x_hi)."""
        if r not in self.levels:
            raise KeyError(f'no pair discriminator for resolution {r}; levels: {self.levels}')
        return getattr(self, f'd{r}')

    def forward(self, pyramid, levels=None):
        """pyramid: {r: images [N, C, r, r]}. Returns {r: scores [N, 1]} for every level r (of `levels`, default all)
        whose pair (r/2, r) is in the pyramid."""
        levels = self.levels if levels is None else [int(r) for r in levels]
        out = {}
        for r in levels:
            block = self.block(r)
            if r in pyramid and r // 2 in pyramid:
                out[r] = block(pyramid[r // 2], pyramid[r])
        return out


def pair_r1_penalty(scores, inputs):
    """R1 for pairs: ||d sum(scores) / d x_lo||^2 + ||d sum(scores) / d x_hi||^2 per sample.

    scores: [N, 1] (or [N]) from a discriminator applied to `inputs`. inputs: sequence of tensors [N, ...] that
    require grad (e.g. (x_lo, x_hi) of real pairs, detached from the data and marked requires_grad_(True)).
    Returns [N] float32, differentiable (create_graph=True) w.r.t. the discriminator parameters. An input that does
    not influence the scores contributes 0.
    """
    inputs = list(inputs)
    if not inputs:
        raise ValueError('pair_r1_penalty: need at least one input tensor')
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            raise ValueError(f'pair_r1_penalty: input {i} does not require grad (call requires_grad_(True) first)')
        if x.shape[0] != scores.shape[0]:
            raise ValueError(f'pair_r1_penalty: input {i} has batch {x.shape[0]}, scores have {scores.shape[0]}')
    grads = torch.autograd.grad(outputs=[scores.sum()], inputs=inputs, create_graph=True, allow_unused=True)
    total = torch.zeros([scores.shape[0]], dtype=torch.float32, device=scores.device)
    for g in grads:
        if g is not None:
            total = total + g.square().flatten(1).sum(dim=1).to(torch.float32)
    return total
