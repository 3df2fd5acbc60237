"""Adaptive discriminator augmentation (ADA) pipeline.

Our own implementation of the augmentation pipeline described in Karras et al. 2020, "Training
Generative Adversarial Networks with Limited Data" (appendix B). Every image that the discriminator
sees (real or generated) goes through `AugmentPipe`; each of the 18 transformations below is applied
to each sample independently with probability `p` (times the transformation's strength flag):

* blit   -- xflip (mirror x, half the time), rotate90 (k * 90 degrees, k uniform in 0..3), xint
            (integer translation, uniform in +-xint_max of the image size, rounded to whole pixels).
* geom   -- scale (isotropic, log2-normal with std scale_std), rotate (uniform in +-rotate_max * pi,
            applied twice, before and after the anisotropic scaling, each with probability
            1 - sqrt(1 - p) so that "some rotation" happens with probability p), aniso (scale x by s
            and y by 1/s, log2-normal with std aniso_std), xfrac (translation, normal with std
            xfrac_std of the image size).
* color  -- brightness (add normal(0, brightness_std)), contrast (multiply by log2-normal with std
            contrast_std), lumaflip (mirror the luma component, half the time), hue (rotate around
            the luma axis by uniform +-hue_max * pi), saturation (scale the chroma components by a
            log2-normal with std saturation_std).
* filter -- imgfilter: the spectrum is split into 4 octave bands ([0, pi/8], [pi/8, pi/4],
            [pi/4, pi/2], [pi/2, pi] radians per pixel); each band's amplitude is multiplied by a
            log2-normal gain (std imgfilter_std) with probability p * imgfilter * imgfilter_bands[i],
            then all gains are rescaled so the expected image power is unchanged.
* noise  -- additive Gaussian noise per pixel and channel, its std drawn as |normal(0, noise_std)|.
* cutout -- a square of side cutout_size * image size, centred uniformly at random, is set to 0.

Implementation choices:
* All geometric transformations of a sample are composed into one 3x3 matrix (pixel units, origin at
  the image centre). That matrix is factored into an exact part -- the nearest quarter turn / flip
  (only flips for non-square images) and the whole-pixel part of the translation, applied as a pixel
  permutation -- and a residual (rotation within +-45 degrees, scaling, sub-pixel translation). The
  residual, when not the identity, is applied once: upsample 2x with the 12-tap least-asymmetric
  Daubechies low-pass `Hz_geom` (the symlet with 6 vanishing moments, computed here by spectral
  factorisation), bilinear `grid_sample`, downsample 2x with the same filter reversed. For an identity
  residual that chain reproduces the input (orthonormal wavelet, up to float rounding). Factoring out
  flips matters: the symlet is not linear-phase, and only without a flip do the phase responses of
  the two filters cancel. Consequences: flips, quarter turns and whole-pixel translations are exact,
  also when composed with the general transformations.
* Borders are filled by mirroring about the edge pixels without repeating them (like torch's
  'reflect' mode), as far out as needed: the permutation mirrors indices, the resampling mirrors a
  fixed margin and then mirrors sample coordinates that fall outside it back into the image.
* Colour transformations of a sample are composed into one homogeneous (C+1)x(C+1) matrix acting on
  the channel vector. For 3-channel images the luma axis is (1, 1, 1) / sqrt(3). For 1-channel
  (greyscale) images the luma axis is the channel itself: brightness and contrast act as usual,
  lumaflip negates the image (x -> -x, i.e. inverts intensities of [-1, 1] images), and hue and
  saturation are the identity (their random numbers are still drawn, so the random stream does not
  depend on the channel count). Colour transformations need 1 or 3 channels; the other groups work
  with any channel count.
* The filter bank `Hz_fbank` (4 x 43 taps) consists of zero-phase band-pass filters built from the
  4-tap Daubechies low-pass with the undecimated (a trous) wavelet scheme; the 4 bands sum to a unit
  impulse. The per-sample filter is applied separably along x and y. Gains are normalised against a
  prior of equal power per octave, with band 0 (which also holds the mean) weighted as 4 octaves.
* Random numbers come from torch's global generator of the images' device (seeded by the training
  loop), drawn with vectorised calls in a fixed order, so equal seeds give equal outputs.
* With p = 0 (and no debug_percentile) the output equals the input exactly: a group whose
  transformations are all identity for the whole batch is skipped.
* Differentiable w.r.t. the images to any order needed by R1 (gradient and double gradient).
* float16/bfloat16 images are processed in float32 and cast back; float64 stays float64.
"""

import functools
import math

import numpy as np
import torch

from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import conv2d_gradfix
from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops import upfirdn2d

# ------------------------------------------------------------------------------------------------
# Presets (train.py --augpipe): strength flags set to 1.

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

augpipe_specs = {
    'blit':   dict(_BLIT),
    'geom':   dict(_GEOM),
    'color':  dict(_COLOR),
    'filter': dict(imgfilter=1),
    'noise':  dict(noise=1),
    'cutout': dict(cutout=1),
    'bg':     dict(**_BLIT, **_GEOM),
    'bgc':    dict(**_BLIT, **_GEOM, **_COLOR),
    'bgcf':   dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1),
    'bgcfn':  dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1),
    'bgcfnc': dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1, cutout=1),
}

# Relative expected power of the 4 filter-bank bands (equal power per octave, band 0 = 4 octaves).
_BAND_POWER = (4.0, 1.0, 1.0, 1.0)

# ------------------------------------------------------------------------------------------------
# Wavelet filters, computed from first principles.


def _daubechies_lowpass_candidates(num_moments):
    """All real 2*num_moments-tap orthonormal low-pass filters with `num_moments` vanishing moments.

    Daubechies' construction: |m0(w)|^2 = cos(w/2)^(2N) * P(sin(w/2)^2) with
    P(y) = sum_k C(N-1+k, k) y^k. Each root y of P gives a reciprocal pair of z-roots
    (z + 1/z = 2 - 4y); a filter keeps one root of each pair (conjugate roots together).
    Returns a list of float64 arrays normalised to sum sqrt(2).
    """
    n = num_moments
    poly = [math.comb(n - 1 + k, k) for k in range(n)]  # ascending powers of y
    y_roots = np.roots(poly[::-1]) if n > 1 else np.zeros([0])
    pairs = []
    taken = [False] * len(y_roots)
    for i, y in enumerate(y_roots):
        if taken[i]:
            continue
        taken[i] = True
        b = 2 - 4 * y
        z_in = (b - np.sqrt(b * b - 4 + 0j)) / 2
        if abs(z_in) > 1:
            z_in = 1 / z_in
        if abs(y.imag) < 1e-10:
            pairs.append(([z_in.real], [1 / z_in.real]))
        else:
            j = min((k for k in range(len(y_roots)) if not taken[k]), key=lambda k: abs(y_roots[k] - np.conj(y)))
            taken[j] = True
            pairs.append(([z_in, np.conj(z_in)], [1 / z_in, 1 / np.conj(z_in)]))
    candidates = []
    for choice in range(2 ** len(pairs)):
        roots = [-1.0] * n
        for bit, (inside, outside) in enumerate(pairs):
            roots += list(outside if (choice >> bit) & 1 else inside)
        h = np.real(np.poly(roots))
        candidates.append(h / h.sum() * np.sqrt(2))
    return candidates


def _phase_nonlinearity(h):
    """Squared deviation of the unwrapped phase response of `h` from its best linear fit."""
    w = np.linspace(0, np.pi, 512, endpoint=False)[1:]
    response = np.exp(-1j * np.outer(w, np.arange(len(h)))) @ h
    phase = np.unwrap(np.angle(response))
    basis = np.stack([w, np.ones_like(w)], axis=1)
    coef = np.linalg.lstsq(basis, phase, rcond=None)[0]
    return float(np.sum((phase - basis @ coef) ** 2))


@functools.lru_cache(maxsize=None)
def least_asymmetric_lowpass(num_moments):
    """Symlet low-pass filter (2*num_moments taps, sum sqrt(2)) as a tuple of floats.

    Among Daubechies' filters with `num_moments` vanishing moments, the one whose phase is closest to
    linear; of the two time-reversed minimisers, the one whose energy centroid lies before the middle.
    """
    if not isinstance(num_moments, int) or num_moments < 1:
        raise ValueError(f'num_moments must be a positive int, got {num_moments!r}')
    candidates = _daubechies_lowpass_candidates(num_moments)
    best = min(_phase_nonlinearity(h) for h in candidates)
    finalists = [h for h in candidates if _phase_nonlinearity(h) <= best * (1 + 1e-2) + 1e-9]
    taps = np.arange(2 * num_moments)
    chosen = min(finalists, key=lambda h: float(np.sum(taps * h * h)))
    return tuple(float(v) for v in chosen)


@functools.lru_cache(maxsize=None)
def octave_filter_bank(num_moments=2, num_bands=4):
    """Zero-phase octave band filters, shape (num_bands, L), rows summing to a unit impulse.

    With orthonormal low/high-pass l, h: P_lo = l * flip(l) / 2 and P_hi = h * flip(h) / 2 satisfy
    P_lo + P_hi = impulse. Band num_bands-1 = P_hi(w); band i = P_lo(w) ... P_lo(2^(k-1) w) P_hi(2^k w);
    band 0 = the remaining product of low-passes. Band 0 is the lowest-frequency band.
    Returned as a tuple of tuples of floats (odd length L, centre tap in the middle).
    """
    lo = np.asarray(least_asymmetric_lowpass(num_moments))
    hi = lo[::-1] * (-1.0) ** np.arange(len(lo))
    p_lo = np.convolve(lo, lo[::-1]) / 2
    p_hi = np.convolve(hi, hi[::-1]) / 2

    def dilate(f, factor):
        out = np.zeros((len(f) - 1) * factor + 1)
        out[::factor] = f
        return out

    bands = []
    low_so_far = np.ones(1)
    for level in range(num_bands - 1):
        bands.append(np.convolve(low_so_far, dilate(p_hi, 2 ** level)))
        low_so_far = np.convolve(low_so_far, dilate(p_lo, 2 ** level))
    bands.append(low_so_far)
    bands = bands[::-1]  # lowest frequency first
    length = max(len(b) for b in bands)
    bank = np.zeros([num_bands, length])
    for i, b in enumerate(bands):
        start = (length - len(b)) // 2
        bank[i, start:start + len(b)] = b
    return tuple(tuple(float(v) for v in row) for row in bank)

# ------------------------------------------------------------------------------------------------
# Random parameters.


class _RandomDraws:
    """Vectorised per-sample random numbers from torch's global RNG, or fixed percentiles (debug)."""

    def __init__(self, batch_size, device, dtype, debug_percentile):
        self.n = batch_size
        self.device = device
        self.dtype = dtype
        self.q = debug_percentile

    def gate(self, probability, enabled=True):
        """Bool [N]: True where the transformation is applied (in debug mode: everywhere iff enabled)."""
        if self.q is not None:
            return torch.full([self.n], bool(enabled), dtype=torch.bool, device=self.device)
        return torch.rand([self.n], device=self.device) < probability

    def uniform(self, *shape):
        """Uniform [0, 1) values of shape [N, *shape]."""
        if self.q is not None:
            return torch.full([self.n, *shape], self.q, dtype=self.dtype, device=self.device)
        return torch.rand([self.n, *shape], device=self.device).to(self.dtype)  # float32 draws for every dtype

    def normal(self, *shape):
        """Standard normal values of shape [N, *shape]."""
        if self.q is not None:
            q = min(max(self.q, 1e-6), 1 - 1e-6)
            value = math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)).item()
            return torch.full([self.n, *shape], value, dtype=self.dtype, device=self.device)
        return torch.randn([self.n, *shape], device=self.device).to(self.dtype)

    def integer(self, high):
        """Integers uniform in [0, high) as a float tensor of shape [N]."""
        if self.q is not None:
            value = float(min(math.floor(self.q * high), high - 1))
            return torch.full([self.n], value, dtype=self.dtype, device=self.device)
        return torch.randint(high, [self.n], device=self.device).to(self.dtype)

# ------------------------------------------------------------------------------------------------
# Batched homogeneous matrices, [N, 3, 3] (2-D) or [N, C+1, C+1] (colour).


def _eye(size, n, like):
    return misc.constant(np.eye(size), dtype=like.dtype, device=like.device).expand(n, size, size)


def _translate2d(tx, ty):
    m = _eye(3, tx.shape[0], tx).clone()
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m


def _scale2d(sx, sy):
    m = _eye(3, sx.shape[0], sx).clone()
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m


def _rotate2d(cos, sin):
    m = _eye(3, cos.shape[0], cos).clone()
    m[:, 0, 0] = cos
    m[:, 0, 1] = -sin
    m[:, 1, 0] = sin
    m[:, 1, 1] = cos
    return m


def _mirror_index(index, size):
    """Map integer indices (any range) into [0, size) by reflection about the edge pixels."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    r = torch.remainder(index, period)
    return torch.where(r < size, r, period - r)


def _mirror_coordinate(q, size):
    """Map real pixel coordinates q (any range) into [0, size - 1] by reflection about the edge pixels."""
    if size == 1:
        return torch.zeros_like(q)
    period = 2 * size - 2
    r = q - torch.floor(q * (1 / period)) * period  # in [0, period)
    return torch.minimum(r, period - r)


def _mirror_pad(x, pad_x0, pad_x1, pad_y0, pad_y1):
    """Reflect-pad the last two dims of x by any amounts (repeating the reflection as needed)."""
    h, w = x.shape[2], x.shape[3]
    if max(pad_x0, pad_x1) < w and max(pad_y0, pad_y1) < h:  # native reflection covers it (faster)
        return torch.nn.functional.pad(x, [pad_x0, pad_x1, pad_y0, pad_y1], mode='reflect')
    if pad_x0 or pad_x1:
        ix = _mirror_index(torch.arange(-pad_x0, w + pad_x1, device=x.device), w)
        x = x.index_select(3, ix)
    if pad_y0 or pad_y1:
        iy = _mirror_index(torch.arange(-pad_y0, h + pad_y1, device=x.device), h)
        x = x.index_select(2, iy)
    return x


def _split_blit(inv, square):
    """Factor inverse transforms [N, 3, 3] as inv = blit @ residual.

    blit = [[D, D t_int], [0, 0, 1]] is a pixel permutation: D is the quarter-turn/flip matrix closest to
    the linear part L (only flips when the image is not square) and t_int an integer translation.
    residual = [[D^T L, t_frac], [0, 0, 1]] is what is left: a linear part near the identity (rotation
    within +-45 degrees, no flip) and a translation in [-0.5, 0.5] px. Resampling only the residual
    keeps flips, quarter turns and whole-pixel shifts exact, and keeps the orientation of the
    up/down-sampling filters consistent (their phase responses cancel only without a flip).
    """
    dihedral = [[[1, 0], [0, 1]], [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[-1, 0], [0, -1]]]
    if square:
        dihedral += [[[0, -1], [1, 0]], [[0, 1], [-1, 0]], [[0, 1], [1, 0]], [[0, -1], [-1, 0]]]
    candidates = misc.constant(dihedral, dtype=inv.dtype, device=inv.device)  # [K, 2, 2]
    linear, shift = inv[:, :2, :2], inv[:, :2, 2:]
    score = torch.einsum('kij,nij->nk', candidates, linear)  # trace(D^T L): closest D in Frobenius norm
    d = candidates[score.argmax(dim=1)]  # [N, 2, 2]
    d_t = d.transpose(1, 2)
    local_shift = d_t @ shift
    whole = torch.round(local_shift)
    blit = _eye(3, inv.shape[0], inv).clone()
    blit[:, :2, :2] = d
    blit[:, :2, 2:] = d @ whole
    residual = _eye(3, inv.shape[0], inv).clone()
    residual[:, :2, :2] = d_t @ linear
    residual[:, :2, 2:] = local_shift - whole
    return blit, residual

# ------------------------------------------------------------------------------------------------


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    """ADA augmentation pipeline; forward(images [N, C, H, W] float) -> augmented images, same shape.

    Constructor arguments are per-transformation strength multipliers (probability = p * strength,
    0 disables the transformation) and distribution parameters; see the module docstring. The
    probability `p` is the scalar float32 buffer `self.p` (initially 1), set by the training loop.
    """

    def __init__(self,
                 xflip=0, rotate90=0, xint=0, xint_max=0.125,
                 scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
                 brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
                 imgfilter=0, imgfilter_bands=[1, 1, 1, 1], imgfilter_std=1,
                 noise=0, cutout=0, noise_std=0.1, cutout_size=0.5):
        super().__init__()
        self.register_buffer('p', torch.ones([], dtype=torch.float32))

        # Pixel blitting.
        self.xflip = float(xflip)
        self.rotate90 = float(rotate90)
        self.xint = float(xint)
        self.xint_max = float(xint_max)

        # General geometric transformations.
        self.scale = float(scale)
        self.rotate = float(rotate)
        self.aniso = float(aniso)
        self.xfrac = float(xfrac)
        self.scale_std = float(scale_std)
        self.rotate_max = float(rotate_max)
        self.aniso_std = float(aniso_std)
        self.xfrac_std = float(xfrac_std)

        # Colour transformations.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)

        # Image-space filtering.
        bands = [float(b) for b in imgfilter_bands]
        if len(bands) != 4:
            raise ValueError(f'imgfilter_bands must have 4 entries, got {len(bands)}')
        self.imgfilter = float(imgfilter)
        self.imgfilter_bands = bands
        self.imgfilter_std = float(imgfilter_std)

        # Image-space corruptions.
        self.noise = float(noise)
        self.cutout = float(cutout)
        self.noise_std = float(noise_std)
        self.cutout_size = float(cutout_size)

        # Filters: geometric resampling low-pass (12 taps, sum 1) and the 4-band filter bank.
        self.register_buffer('Hz_geom', upfirdn2d.setup_filter(list(least_asymmetric_lowpass(6))))
        self.register_buffer('Hz_fbank', torch.tensor(octave_filter_bank(2, 4), dtype=torch.float32))

    # --------------------------------------------------------------------------------------------

    def forward(self, images, debug_percentile=None):
        """Augment a batch. images: [N, C, H, W] floating point. debug_percentile: None, or a number in
        [0, 1]; then every enabled transformation is applied to every sample (p is ignored) with all
        random parameters set to that percentile of their distributions (the per-pixel values of the
        additive noise stay random). Returns [N, C, H, W], same dtype and device."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f'images must be a 4-D tensor [N, C, H, W], got {getattr(images, "shape", type(images))}')
        if not images.is_floating_point():
            raise ValueError(f'images must be floating point, got {images.dtype}')
        if debug_percentile is not None:
            debug_percentile = float(debug_percentile)
            if not 0 <= debug_percentile <= 1:
                raise ValueError(f'debug_percentile must be in [0, 1], got {debug_percentile}')
        if self.p.device != images.device:
            raise ValueError(f'AugmentPipe is on {self.p.device} but images are on {images.device}; call .to(device)')
        batch_size, num_channels = images.shape[:2]
        if self._color_enabled() and num_channels not in (1, 3):
            raise ValueError(f'colour augmentations need 1 or 3 channels, got {num_channels}')
        if batch_size == 0:
            return images

        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        x = images.to(dtype)
        draws = _RandomDraws(batch_size, images.device, dtype, debug_percentile)
        p = self.p.to(dtype)
        x = self._apply_geometric(x, draws, p)
        x = self._apply_color(x, draws, p)
        x = self._apply_imgfilter(x, draws, p)
        x = self._apply_noise(x, draws, p)
        x = self._apply_cutout(x, draws, p)
        return x.to(images.dtype)

    def _color_enabled(self):
        return any(s > 0 for s in (self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation))

    # --------------------------------------------------------------------------------------------
    # Geometric transformations.

    def _geometric_matrix(self, draws, p, height, width):
        """Inverse transform [N, 3, 3]: output pixel coords -> input pixel coords (origin at centre)."""
        n = draws.n
        ref = p.new_zeros([n]).to(draws.dtype)
        inv = _eye(3, n, ref)
        zero, one = torch.zeros_like(ref), torch.ones_like(ref)

        if self.xflip > 0:
            i = draws.integer(2)
            i = torch.where(draws.gate(p * self.xflip), i, zero)
            inv = inv @ _scale2d(1 - 2 * i, one)
        if self.rotate90 > 0:
            k = draws.integer(4)
            k = torch.where(draws.gate(p * self.rotate90), k, zero)
            quarter = (4 - k.long()) % 4  # inverse rotation, exact cos/sin from a table
            cos = misc.constant([1, 0, -1, 0], dtype=draws.dtype, device=ref.device)[quarter]
            sin = misc.constant([0, 1, 0, -1], dtype=draws.dtype, device=ref.device)[quarter]
            inv = inv @ _rotate2d(cos, sin)
        if self.xint > 0:
            t = (draws.uniform(2) * 2 - 1) * self.xint_max
            t = torch.where(draws.gate(p * self.xint)[:, None], t, torch.zeros_like(t))
            inv = inv @ _translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height))
        if self.scale > 0:
            s = torch.exp2(draws.normal() * self.scale_std)
            s = torch.where(draws.gate(p * self.scale), s, one)
            inv = inv @ _scale2d(1 / s, 1 / s)
        p_rot = 1 - torch.sqrt(torch.clamp(1 - p * self.rotate, 0, 1))
        if self.rotate > 0:  # before anisotropic scaling
            theta = (draws.uniform() * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(draws.gate(p_rot), theta, zero)
            inv = inv @ _rotate2d(torch.cos(-theta), torch.sin(-theta))
        if self.aniso > 0:
            s = torch.exp2(draws.normal() * self.aniso_std)
            s = torch.where(draws.gate(p * self.aniso), s, one)
            inv = inv @ _scale2d(1 / s, s)
        if self.rotate > 0:  # after anisotropic scaling
            theta = (draws.uniform() * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(draws.gate(p_rot), theta, zero)
            inv = inv @ _rotate2d(torch.cos(-theta), torch.sin(-theta))
        if self.xfrac > 0:
            t = draws.normal(2) * self.xfrac_std
            t = torch.where(draws.gate(p * self.xfrac)[:, None], t, torch.zeros_like(t))
            inv = inv @ _translate2d(-t[:, 0] * width, -t[:, 1] * height)
        return inv

    def _apply_geometric(self, x, draws, p):
        strengths = (self.xflip, self.rotate90, self.xint, self.scale, self.rotate, self.aniso, self.xfrac)
        if not any(s > 0 for s in strengths):
            return x
        height, width = x.shape[2], x.shape[3]
        inv = self._geometric_matrix(draws, p, height, width)
        blit, residual = _split_blit(inv, square=(height == width))
        eye = _eye(3, draws.n, inv)
        if not torch.equal(blit, eye):
            x = self._blit(x, blit)
        if not torch.equal(residual, eye):
            x = self._resample(x, residual)
        return x

    @staticmethod
    def _blit(x, inv):
        """Exact pixel permutation (inv maps pixel centres to pixel centres), mirror padding."""
        n, c, h, w = x.shape
        yc = torch.arange(h, dtype=inv.dtype, device=x.device) - (h - 1) / 2
        xc = torch.arange(w, dtype=inv.dtype, device=x.device) - (w - 1) / 2
        yc, xc = yc[:, None], xc[None, :]
        m = inv[:, :2, :, None, None]  # [N, 2, 3, 1, 1]
        src_x = m[:, 0, 0] * xc + m[:, 0, 1] * yc + m[:, 0, 2] + (w - 1) / 2  # [N, H, W]
        src_y = m[:, 1, 0] * xc + m[:, 1, 1] * yc + m[:, 1, 2] + (h - 1) / 2
        ix = _mirror_index(torch.round(src_x).long(), w)
        iy = _mirror_index(torch.round(src_y).long(), h)
        index = (iy * w + ix).reshape(n, 1, h * w).expand(n, c, h * w)
        return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)

    def _resample(self, x, inv):
        """Upsample 2x (Hz_geom), bilinear grid_sample at mirrored coordinates, downsample 2x (Hz_geom reversed)."""
        n, c, h, w = x.shape
        f = self.Hz_geom
        taps = f.shape[0]
        up_pad0 = (taps + 1) // 2  # left padding that upsample2d uses for up=2
        down_pad0, down_pad1 = (taps - 1) // 2, (taps - 2) // 2  # downsample2d's default padding for down=2
        f64 = f.detach().double().cpu()
        centre = float((torch.arange(taps, dtype=torch.float64) * f64).sum() / f64.sum())  # filter delay, taps
        dtype, device = inv.dtype, x.device

        # A fixed mirror margin; source positions that the padded, upsampled image cannot serve exactly
        # (filter footprint plus bilinear taps) are mirrored back into the image instead (about the same
        # result as mirror padding by any amount, at a fixed cost). Identity maps stay inside the margin.
        margin = taps // 2 + 1
        x = _mirror_pad(x, margin, margin, margin, margin)

        # upfirdn2d filters every channel independently; folding the batch into the channel axis gives
        # the same result and is much faster for depthwise convolutions on CPU.
        x = upfirdn2d.upsample2d(x.reshape(1, n * c, h + 2 * margin, w + 2 * margin), f, up=2)
        up_h, up_w = x.shape[2], x.shape[3]
        x = x.reshape(n, c, up_h, up_w)

        # The 2x-supersampled output before downsampling has 2*size + taps - 2 samples per axis; sample m
        # sits at output pixel index (m - centre) / 2 (the reversed filter then re-centres it). `pre` maps
        # (m_x, m_y, 1) to centred output pixel coordinates, `inv` then to centred input coordinates.
        len_x, len_y = 2 * w + taps - 2, 2 * h + taps - 2
        pre = misc.constant([[0.5, 0, -centre / 2 - (w - 1) / 2],
                             [0, 0.5, -centre / 2 - (h - 1) / 2],
                             [0, 0, 1]], dtype=dtype, device=device)
        to_src = (inv @ pre)[:, :2, :, None, None]  # [N, 2, 3, 1, 1]
        index_x = torch.arange(len_x, dtype=dtype, device=device)[None, None, :]
        index_y = torch.arange(len_y, dtype=dtype, device=device)[None, :, None]

        # Per axis: centred input coordinate -> 0-based input pixel q (mirrored into range where the padded,
        # upsampled image cannot serve it) -> upsampled sample k = 2 * (q + margin) - shift, since sample k
        # holds padded pixel (k + shift) / 2 -> grid_sample coordinate (2k + 1) / up_size - 1.
        shift = (taps - 1 - up_pad0) - centre
        lowest = (up_pad0 + shift) / 2 - margin  # first position whose upsampled neighbours are all valid
        coords = []
        for axis, size, up_size in ((0, w, up_w), (1, h, up_h)):
            row = to_src[:, axis]
            q = row[:, 0] * index_x + row[:, 1] * index_y + (row[:, 2] + (size - 1) / 2)  # [N, Ly, Lx]
            highest = size - 1 + margin + 0.5 - (taps - up_pad0 - shift) / 2
            q = torch.where((q >= lowest) & (q <= highest), q, _mirror_coordinate(q, size))
            coords.append(q * (4 / up_size) + ((4 * margin - 2 * shift + 1) / up_size - 1))
        grid = torch.stack(coords, dim=-1)  # [N, Ly, Lx, 2]
        x = grid_sample_gradfix.grid_sample(x, grid.to(x.dtype))
        x = upfirdn2d.downsample2d(x.reshape(1, n * c, len_y, len_x), f, down=2,
                                   padding=[-down_pad0, -down_pad1, -down_pad0, -down_pad1], flip_filter=True)
        return x.reshape(n, c, h, w)

    # --------------------------------------------------------------------------------------------
    # Colour transformations.

    def _apply_color(self, x, draws, p):
        if not self._color_enabled():
            return x
        n, c = x.shape[:2]
        ref = torch.zeros([n], dtype=draws.dtype, device=x.device)
        zero, one = torch.zeros_like(ref), torch.ones_like(ref)
        eye = _eye(c + 1, n, ref)
        luma = misc.constant(np.ones([c, 1]) / np.sqrt(c), dtype=draws.dtype, device=x.device)
        luma_proj = luma @ luma.T  # [C, C]
        mat = eye

        def linear(part):  # [N, C, C] -> homogeneous [N, C+1, C+1]
            out = eye.clone()
            out[:, :c, :c] = part
            return out

        if self.brightness > 0:
            b = draws.normal() * self.brightness_std
            b = torch.where(draws.gate(p * self.brightness), b, zero)
            m = eye.clone()
            m[:, :c, c] = b[:, None]
            mat = m @ mat
        if self.contrast > 0:
            s = torch.exp2(draws.normal() * self.contrast_std)
            s = torch.where(draws.gate(p * self.contrast), s, one)
            mat = linear(s[:, None, None] * eye[:, :c, :c]) @ mat
        if self.lumaflip > 0:
            i = draws.integer(2)
            i = torch.where(draws.gate(p * self.lumaflip), i, zero)
            mat = linear(eye[:, :c, :c] - 2 * i[:, None, None] * luma_proj) @ mat
        if self.hue > 0:
            theta = (draws.uniform() * 2 - 1) * math.pi * self.hue_max
            theta = torch.where(draws.gate(p * self.hue), theta, zero)
            if c == 3:  # rotation around the luma axis (Rodrigues); identity for 1 channel
                v = 1 / np.sqrt(3)
                cross = misc.constant([[0, -v, v], [v, 0, -v], [-v, v, 0]], dtype=draws.dtype, device=x.device)
                cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
                mat = linear(cos * eye[:, :c, :c] + sin * cross + (1 - cos) * luma_proj) @ mat
        if self.saturation > 0:
            s = torch.exp2(draws.normal() * self.saturation_std)
            s = torch.where(draws.gate(p * self.saturation), s, one)
            if c == 3:  # chroma scaling; identity for 1 channel
                mat = linear(luma_proj + s[:, None, None] * (eye[:, :c, :c] - luma_proj)) @ mat

        if torch.equal(mat, eye):
            return x
        h, w = x.shape[2], x.shape[3]
        mat = mat.to(x.dtype)
        y = torch.baddbmm(mat[:, :c, c:], mat[:, :c, :c], x.reshape(n, c, h * w))
        return y.reshape(n, c, h, w)

    # --------------------------------------------------------------------------------------------
    # Image-space filtering.

    def _apply_imgfilter(self, x, draws, p):
        if not self.imgfilter > 0:
            return x
        n, c, h, w = x.shape
        num_bands = self.Hz_fbank.shape[0]
        gains = torch.ones([n, num_bands], dtype=draws.dtype, device=x.device)
        any_band = torch.zeros([n], dtype=torch.bool, device=x.device)
        for i, band_strength in enumerate(self.imgfilter_bands):
            g = torch.exp2(draws.normal() * self.imgfilter_std)
            applied = draws.gate(p * self.imgfilter * band_strength, enabled=band_strength > 0)
            onehot = torch.arange(num_bands, device=x.device) == i
            gains = torch.where(applied[:, None] & onehot[None, :], gains * g[:, None], gains)
            any_band = any_band | applied
        if not bool(any_band.any()):
            return x
        power = misc.constant(np.asarray(_BAND_POWER) / np.sum(_BAND_POWER), dtype=draws.dtype, device=x.device)
        norm = torch.sqrt((gains.square() * power).sum(dim=1, keepdim=True))
        gains = torch.where(any_band[:, None], gains / norm, gains)

        kernel = (gains @ self.Hz_fbank.to(gains.dtype)).to(x.dtype)  # [N, L]
        taps = kernel.shape[1]
        kernel = kernel[:, None, :].expand(n, c, taps).reshape(n * c, 1, 1, taps)
        y = x.reshape(1, n * c, h, w)
        y = _mirror_pad(y, taps // 2, taps // 2, 0, 0)
        y = conv2d_gradfix.conv2d(input=y, weight=kernel, groups=n * c)
        y = _mirror_pad(y, 0, 0, taps // 2, taps // 2)
        y = conv2d_gradfix.conv2d(input=y, weight=kernel.transpose(2, 3), groups=n * c)
        return y.reshape(n, c, h, w)

    # --------------------------------------------------------------------------------------------
    # Image-space corruptions.

    def _apply_noise(self, x, draws, p):
        if not self.noise > 0:
            return x
        sigma = draws.normal().abs() * self.noise_std
        sigma = torch.where(draws.gate(p * self.noise), sigma, torch.zeros_like(sigma))
        if not bool((sigma != 0).any()):
            return x
        noise = torch.randn(x.shape, device=x.device).to(x.dtype)  # float32 draws for every dtype
        return x + noise * sigma.to(x.dtype)[:, None, None, None]

    def _apply_cutout(self, x, draws, p):
        if not self.cutout > 0:
            return x
        n, c, h, w = x.shape
        centre = draws.uniform(2)
        applied = draws.gate(p * self.cutout)
        if not bool(applied.any()):
            return x
        px = (torch.arange(w, dtype=draws.dtype, device=x.device) + 0.5) / w
        py = (torch.arange(h, dtype=draws.dtype, device=x.device) + 0.5) / h
        inside_x = (px[None, :] - centre[:, 0:1]).abs() < self.cutout_size / 2  # [N, W]
        inside_y = (py[None, :] - centre[:, 1:2]).abs() < self.cutout_size / 2  # [N, H]
        cut = inside_y[:, :, None] & inside_x[:, None, :] & applied[:, None, None]
        return x * (~cut).to(x.dtype)[:, None, :, :]
