"""Output "deconvolution" heads: one linear map per synthesis resolution from hidden features to an image.

FSR.md section 1: x_l = Deconv_out,l(S_l). Head r maps the block's hidden features S_r [N, C_r, r, r] to
X_r [N, img_channels, r, r] by a stride-1 transposed convolution with k x k atoms:

    X_r[:, p] = bias + sum_i sum_q S_r[:, i, q] * atom_i[p - q + c],   c = k // 2,

i.e. a hidden unit i active at position q paints its atom (a small [img_channels, k, k] colour patch) with its
top-left corner at q - c (centred for odd k; for even k the extra row/column is on the far side). The atoms are the
columns of A in x = A y. Implemented with conv2d_resample as a true convolution (flip_weight=False) with padding
[(k-1)//2, k//2] per axis, so the output stays r x r; the bias goes through bias_act.

Effective atoms:
* default: weight * weight_gain with weight_gain = 1 / sqrt(C_r * k * k) (equalised learning rate, like the host's
  Conv2dLayer / ToRGBLayer; stored weights start N(0, 1));
* unit_norm_atoms=True: each atom weight[:, i] (over img_channels x k x k, i.e. per hidden channel) is scaled to unit
  L2 norm in every forward pass (weight normalisation), so the scale of a feature lives in the hidden code.
* gain=True: all atoms of the head are also multiplied by one learned scalar exp(log_gain). The host's demodulated
  convolutions keep hidden features at about unit scale, so unit-norm atoms alone paint images of a fixed contrast;
  the gain lets a head paint the low-contrast images of a downscaled pyramid level while its atom directions, and
  their relative scales in the code, stay as they are. It starts at 1, except on a unit-norm head without
  winner-take-all: there it starts at the equalised-lr scale 1 / sqrt(C * k * k) of a plain head, because a dense
  code sums many unit atoms at every pixel (at 1 such a head starts 20-100x above the contrast of the synthetic
  teacher's 4-16 px levels).
* offset_gain=g > 0 (`--fsr-head-offset`): the head also adds a learned per-position colour offset g * offset
  [img_channels, r, r], the same for every image (starts at 0, so the head starts painting what it painted without
  it). The atoms paint stationary images; with zero padding a k x k atom at the border paints only part of itself,
  so a level's mean image can carry a fixed frame that the hidden features can undo only through the weak position
  cue of the generator's own padding (docs/RESULTS.md section 24). The offset paints such a fixed pattern directly.
  g scales its learning rate as the equalised learning rate does: Adam moves the stored offset by about the head's
  learning rate per step, the painted one by g times that.
  While `offset_held` is True (`--fsr-head-offset-kimg`: until that many kimg) the head paints the offset as it is
  without a gradient to it, so the optimiser leaves it (and its Adam state) untouched; a held zero offset paints
  exactly what a head without one paints.

Initialisation (`init_from_generator`):
* 'torgb': the 1x1 map of G.synthesis.b<r>.torgb with its style modulation removed, i.e. effective weight
  torgb.weight * torgb.weight_gain (style 1 for every input channel, `style='unit'`) or
  torgb.weight * torgb.weight_gain * affine(w_avg) (the style at the mapping network's running mean w, `style='w_avg'`),
  and bias torgb.bias. For k > 1 (odd) the 1x1 weight is placed in the centre tap, the other taps are 0. With
  unit_norm_atoms only the atom directions are copied (their norms move out of the head). Blocks without a ToRGB
  ('orig'/'resnet' architectures below the last block) keep their random initialisation.
* 'identity': for fine-tuning. The head of the final resolution becomes residual (`residual_final=True` at
  construction): X_R = img + conv(S_R) with conv weight and bias initialised to 0, where img is the generator's own
  output passed to forward; so at the start X_R equals G's image exactly, and training moves the head away from it.
  The other heads get the 'torgb' initialisation (odd k only; with even k they stay random).
"""

import numpy as np
import torch

from torch_utils import persistence
from torch_utils.ops import bias_act
from torch_utils.ops import conv2d_resample

# Absolute, not relative: this file's source is embedded in network pickles and executed as a top-level module when
# they are loaded (torch_utils.persistence), where a relative import has no package. pickle_compat rewrites the
# relative import that pickles of older versions hold.
from fsr_plugin.wta import winner_take_all

HEAD_INITS = ('random', 'torgb', 'identity')
TORGB_STYLES = ('unit', 'w_avg')


def _head_padding(kernel_size):
    """[x0, x1, y0, y1] padding that keeps the output size for a true convolution with a k x k kernel."""
    lo, hi = (kernel_size - 1) // 2, kernel_size // 2
    return [lo, hi, lo, hi]


@persistence.persistent_class
class OutputHead(torch.nn.Module):
    """One resolution's head: S [N, in_channels, r, r] -> X [N, img_channels, r, r] (float32)."""

    def __init__(self, in_channels, img_channels, kernel_size=1, unit_norm_atoms=False, bias=True, residual=False,
                 eps=1e-8, wta=0, gain=False, wta_jitter=0.0, wta_straight_through=0.0, wta_min=0.0,
                 resolution=None, offset_gain=0.0):
        super().__init__()
        for name, value in (('in_channels', in_channels), ('img_channels', img_channels),
                            ('kernel_size', kernel_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'OutputHead: {name} must be an int >= 1, got {value!r}')
        self.in_channels = in_channels
        self.img_channels = img_channels
        self.kernel_size = kernel_size
        self.unit_norm_atoms = bool(unit_norm_atoms)
        self.residual = bool(residual)
        self.eps = float(eps)
        if not isinstance(wta, int) or isinstance(wta, bool) or wta < 0 or (wta > 0 and wta % 2 == 0):
            raise ValueError(f'OutputHead: wta must be 0 (off) or an odd int >= 1, got {wta!r}')
        self.wta = wta
        if float(wta_jitter) < 0 or (float(wta_jitter) > 0 and wta < 3):
            raise ValueError(f'OutputHead: wta_jitter must be >= 0 and needs wta >= 3, got {wta_jitter!r} with '
                             f'wta={wta!r}')
        self.wta_jitter = float(wta_jitter)
        if float(wta_straight_through) < 0 or (float(wta_straight_through) > 0 and wta < 1):
            raise ValueError(f'OutputHead: wta_straight_through must be >= 0 and needs wta >= 1, got '
                             f'{wta_straight_through!r} with wta={wta!r}')
        self.wta_straight_through = float(wta_straight_through)
        if float(wta_min) < 0 or (float(wta_min) > 0 and wta < 1):
            raise ValueError(f'OutputHead: wta_min must be >= 0 and needs wta >= 1, got {wta_min!r} with wta={wta!r}')
        self.wta_min = float(wta_min)
        self.padding = _head_padding(kernel_size)
        self.weight_gain = float(1 / np.sqrt(in_channels * kernel_size ** 2))
        self.weight = torch.nn.Parameter(torch.randn([img_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([img_channels])) if bias else None
        start = np.log(self.weight_gain) if (self.unit_norm_atoms and not wta) else 0.0
        self.log_gain = torch.nn.Parameter(torch.full([], float(start))) if gain else None
        if not float(offset_gain) >= 0:
            raise ValueError(f'OutputHead: offset_gain must be >= 0, got {offset_gain!r}')
        self.offset_gain = float(offset_gain)
        self.offset = None
        if self.offset_gain > 0:
            if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
                raise ValueError(f'OutputHead: a per-position offset needs the resolution (an int >= 1), got '
                                 f'{resolution!r}')
            self.offset = torch.nn.Parameter(torch.zeros([img_channels, resolution, resolution]))
        self.offset_held = False

    def effective_offset(self):
        """The per-position offset the head adds: [img_channels, r, r] float32, or None without one."""
        offset = getattr(self, 'offset', None)
        return None if offset is None else offset * self.offset_gain

    def effective_weight(self):
        """Convolution weight actually applied: [img_channels, in_channels, k, k] (float32)."""
        w = self.weight
        if self.unit_norm_atoms:
            norm = (w.square().sum(dim=[0, 2, 3], keepdim=True) + self.eps).sqrt()
            w = w / norm
        else:
            w = w * self.weight_gain
        if self.log_gain is not None:
            w = w * self.log_gain.exp()
        return w

    def set_effective_weight(self, w, bias=None):
        """Store parameters so that effective_weight() == w (up to normalisation when unit_norm_atoms; a learned
        gain is reset to 1)."""
        w = torch.as_tensor(w, dtype=torch.float32)
        if w.shape != self.weight.shape:
            raise ValueError(f'OutputHead: weight must have shape {list(self.weight.shape)}, got {list(w.shape)}')
        with torch.no_grad():
            if self.log_gain is not None:
                self.log_gain.zero_()
            self.weight.copy_(w if self.unit_norm_atoms else w / self.weight_gain)
            if bias is not None:
                if self.bias is None:
                    raise ValueError('OutputHead: this head has no bias')
                self.bias.copy_(torch.as_tensor(bias, dtype=torch.float32).reshape(self.bias.shape))

    def forward(self, s, img=None):
        if s.ndim != 4 or s.shape[1] != self.in_channels:
            raise ValueError(f'OutputHead: features must be [N, {self.in_channels}, r, r], got {list(s.shape)}')
        s = s.to(torch.float32)
        if self.wta:
            s = winner_take_all(s, self.wta, jitter=self.wta_jitter,
                                straight_through=getattr(self, 'wta_straight_through', 0.0),
                                min_value=getattr(self, 'wta_min', 0.0))
        x = conv2d_resample.conv2d_resample(x=s, w=self.effective_weight().to(s.dtype), padding=self.padding,
                                            flip_weight=False)
        x = bias_act.bias_act(x, self.bias)
        offset = self.effective_offset()
        if offset is not None:
            if offset.shape[-2:] != x.shape[-2:]:
                raise ValueError(f'OutputHead: features are {list(s.shape[-2:])}, the per-position offset is '
                                 f'{list(offset.shape[-2:])}')
            if getattr(self, 'offset_held', False):
                offset = offset.detach()
            x = x + offset.to(x.dtype)
        if self.residual:
            if img is None:
                raise ValueError('OutputHead: a residual head needs the generator image (img=...)')
            if img.shape != x.shape:
                raise ValueError(f'OutputHead: residual image must have shape {list(x.shape)}, got {list(img.shape)}')
            x = x + img.to(torch.float32)
        return x

    def extra_repr(self):
        return (f'in_channels={self.in_channels}, img_channels={self.img_channels}, kernel_size={self.kernel_size}, '
                f'unit_norm_atoms={self.unit_norm_atoms}, residual={self.residual}, wta={self.wta}, '
                f'gain={self.log_gain is not None}, wta_min={getattr(self, "wta_min", 0.0)}, '
                f'offset_gain={getattr(self, "offset_gain", 0.0)}')


@persistence.persistent_class
class OutputHeads(torch.nn.Module):
    """Heads for several resolutions. Children are named h<r> (parameters h<r>.weight, h<r>.bias).

    channels: {resolution: hidden channels C_r} (ints). img_channels: image channels. kernel_size: k of every head.
    unit_norm_atoms: normalise every atom to unit norm. bias: learn a per-image-channel bias. residual_final: the
    head of the largest resolution adds the generator image passed to forward (see module docstring, 'identity').
    top_wta: 0 = off; w >= 1 (odd) = the head of the largest resolution paints only the winner-take-all selection of
    its features (fsr_plugin.wta: one channel per site, w x w spatial suppression), like the synthetic teacher's top
    level. head_gain: every head learns one scalar gain of its atoms (OutputHead gain=True). top_wta_jitter: the
    top head's suppression compares jittered winning values (fsr_plugin.wta; a random draw on every call).
    top_wta_straight_through: the top head's losers get this share of their gradient (fsr_plugin.wta).
    top_wta_min: the top head keeps only winners whose feature value exceeds this (fsr_plugin.wta).
    offset_gains: {resolution: g > 0} of the heads that add a learned per-position offset (OutputHead offset_gain).
    """

    def __init__(self, channels, img_channels, kernel_size=1, unit_norm_atoms=False, bias=True,
                 residual_final=False, top_wta=0, head_gain=False, top_wta_jitter=0.0, top_wta_straight_through=0.0,
                 top_wta_min=0.0, offset_gains=None):
        super().__init__()
        if not isinstance(channels, dict) or not channels:
            raise ValueError(f'OutputHeads: channels must be a non-empty dict {{resolution: channels}}, '
                             f'got {channels!r}')
        for r in channels:
            if not isinstance(r, int) or isinstance(r, bool) or r < 1:
                raise ValueError(f'OutputHeads: resolutions must be ints >= 1, got {r!r}')
        self.resolutions = sorted(channels)
        self.img_channels = int(img_channels)
        self.kernel_size = int(kernel_size)
        self.residual_final = bool(residual_final)
        self.top_wta = int(top_wta)
        offset_gains = dict(offset_gains or {})
        for r in offset_gains:
            if r not in channels:
                raise ValueError(f'OutputHeads: offset gain for resolution {r!r}, which has no head; heads: '
                                 f'{self.resolutions}')
        for r in self.resolutions:
            top = r == self.resolutions[-1]
            head = OutputHead(int(channels[r]), self.img_channels, kernel_size=self.kernel_size,
                              unit_norm_atoms=unit_norm_atoms, bias=bias, residual=self.residual_final and top,
                              wta=self.top_wta if top else 0, gain=head_gain,
                              wta_jitter=float(top_wta_jitter) if top else 0.0,
                              wta_straight_through=float(top_wta_straight_through) if top else 0.0,
                              wta_min=float(top_wta_min) if top else 0.0,
                              resolution=r, offset_gain=float(offset_gains.get(r, 0.0)))
            setattr(self, f'h{r}', head)

    @classmethod
    def for_generator(cls, G, kernel_size=1, unit_norm_atoms=False, bias=True, init='random', style='unit',
                      resolutions=None, top_wta=0, head_gain=False, top_wta_jitter=0.0, top_wta_straight_through=0.0,
                      top_wta_min=0.0, offset_gains=None):
        """Heads matching G's synthesis blocks (all of them, or the given `resolutions`), initialised with `init`
        ('random', 'torgb' or 'identity'; 'identity' makes the final head residual)."""
        if init not in HEAD_INITS:
            raise ValueError(f'head init must be one of {HEAD_INITS}, got {init!r}')
        synthesis = G.synthesis
        resolutions = list(synthesis.block_resolutions) if resolutions is None else [int(r) for r in resolutions]
        for r in resolutions:
            if r not in synthesis.block_resolutions:
                raise ValueError(f'OutputHeads: G has no block at resolution {r}; '
                                 f'blocks: {synthesis.block_resolutions}')
        channels = {r: int(getattr(synthesis, f'b{r}').conv1.out_channels) for r in resolutions}
        heads = cls(channels, int(synthesis.img_channels), kernel_size=kernel_size, unit_norm_atoms=unit_norm_atoms,
                    bias=bias, residual_final=(init == 'identity'), top_wta=top_wta, head_gain=head_gain,
                    top_wta_jitter=top_wta_jitter, top_wta_straight_through=top_wta_straight_through,
                    top_wta_min=top_wta_min, offset_gains=offset_gains)
        if init != 'random':
            heads.init_from_generator(G, mode=init, style=style)
        return heads

    def hold_offsets(self, held):
        """Hold (True) or release (False) the per-position offsets of every head that has one: a held offset is
        painted as it is but gets no gradient (OutputHead.offset_held)."""
        for r in self.resolutions:
            head = self.head(r)
            if getattr(head, 'offset', None) is not None:
                head.offset_held = bool(held)

    def head(self, r):
        """The OutputHead module of resolution r."""
        if r not in self.resolutions:
            raise KeyError(f'no output head for resolution {r}; heads: {self.resolutions}')
        return getattr(self, f'h{r}')

    @torch.no_grad()
    def init_from_generator(self, G, mode='torgb', style='unit'):
        """Copy G's ToRGB layers into the heads ('torgb') or set up the residual identity start ('identity');
        see the module docstring for exactly what is copied. Returns the list of resolutions initialised from ToRGB."""
        if mode not in ('torgb', 'identity'):
            raise ValueError(f"init mode must be 'torgb' or 'identity', got {mode!r}")
        if style not in TORGB_STYLES:
            raise ValueError(f'ToRGB style must be one of {TORGB_STYLES}, got {style!r}')
        if mode == 'identity':
            if not self.residual_final:
                raise ValueError("init mode 'identity' needs heads built with residual_final=True")
            if self.head(self.resolutions[-1]).unit_norm_atoms:
                raise ValueError("init mode 'identity' cannot be combined with unit_norm_atoms (a zero atom has no "
                                 'direction)')
        if self.kernel_size % 2 == 0 and mode == 'torgb':
            raise ValueError(f'ToRGB initialisation needs an odd kernel_size (centre tap), got {self.kernel_size}')
        copied = []
        for r in self.resolutions:
            head = self.head(r)
            if head.residual:
                head.weight.zero_()
                if head.bias is not None:
                    head.bias.zero_()
                continue
            block = getattr(G.synthesis, f'b{r}', None)
            torgb = getattr(block, 'torgb', None)
            if torgb is None:
                continue
            if self.kernel_size % 2 == 0:
                continue  # 'identity' with an even kernel: no centre tap, the lower heads stay random.
            w1 = torgb.weight.detach().to(torch.float32) * torgb.weight_gain  # [img_C, C, 1, 1]
            if style == 'w_avg':
                w_avg = G.mapping.w_avg.detach().to(torch.float32).reshape(1, -1)
                w1 = w1 * torgb.affine(w_avg).reshape(1, -1, 1, 1)
            if w1.shape[:2] != head.weight.shape[:2]:
                raise ValueError(f'ToRGB of block {r} has shape {list(w1.shape)}, head expects '
                                 f'{list(head.weight.shape[:2])}')
            w = torch.zeros_like(head.weight)
            c = self.kernel_size // 2
            w[:, :, c, c] = w1[:, :, 0, 0]
            head.set_effective_weight(w, torgb.bias.detach() if head.bias is not None else None)
            copied.append(r)
        return copied

    def forward(self, features, img=None):
        """features: {r: S_r [N, C_r, r, r]} (any subset of the heads' resolutions). img: the generator image
        [N, img_channels, R, R], needed only when residual_final and the final resolution R is in features.
        Returns {r: X_r [N, img_channels, r, r] float32} for every r in features."""
        out = {}
        for r, s in features.items():
            head = self.head(int(r))
            if s.shape[-1] != r or s.shape[-2] != r:
                raise ValueError(f'features at resolution {r} must be [N, C, {r}, {r}], got {list(s.shape)}')
            out[r] = head(s, img=img if head.residual else None)
        return out

    def atoms(self, r):
        """Effective atoms of head r: [num_atoms = C_r, img_channels, k, k] (atom i = weight[:, i]), float32."""
        return self.head(r).effective_weight().transpose(0, 1)

    def extra_repr(self):
        return (f'resolutions={self.resolutions}, img_channels={self.img_channels}, kernel_size={self.kernel_size}, '
                f'residual_final={self.residual_final}, top_wta={self.top_wta}')
