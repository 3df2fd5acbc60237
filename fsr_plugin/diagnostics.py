"""FSR diagnostics (FSR.md section 4): pure functions on tensors that measure what the FSR theory predicts.

* `layer_sparsity`: how many channels of a hidden layer are active per position or per q x q patch, and the Hoyer
  sparsity of the per-patch vectors (Fig. 5 analogue).
* `PatchMoments`, `patch_moment_gap`, `moment_gap_with_floor`: first and second moments of all q x q image patches,
  real vs generated, beside the noise floor of two disjoint real samples (Fig. 6 analogue).
* `effective_patch_filters`, `effective_filters_d_first_layer`, `random_d_first_layer_filters`, `torgb_atoms`,
  `feature_similarity`: D's first-layer patch filters vs G's output atoms, optimally matched, beside random
  networks (Fig. 7 analogue).
* `PositionMoments`, `position_gaps`: the mean image and the variance image (per-position statistics over images),
  real vs generated, beside the same for two real samples: a pattern at fixed places, which the patch moments pool.
* `per_level_swd`: the host's sliced Wasserstein distance (Laplacian-pyramid patches) at every pyramid level.

Orientation convention of filters and atoms: a filter w [C, k, k] is an image-space template. D's first layer
(a cross-correlation, the host's Conv2dLayer with up=1) responds at pixel p with sum_u w[:, u] * x[:, p + u - c];
G's output head (fsr_plugin.heads) paints atom a[:, u] at pixel q + u - c. Both index the image the same way, so a
D filter and a G atom that look alike on screen have cosine near 1.

Everything is computed in float64 on the CPU or the input's device; inputs may be numpy arrays or torch tensors.
"""

import numpy as np
import torch
import torch.nn.functional as F

from fsr_plugin import matching

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_CHUNK_ELEMS = 1 << 23  # elements per float64 working chunk (64 MiB)


# ----------------------------------------------------------------------------------------------------------------------
# Input helpers.


def _as_float64(x, what, ndim=4):
    """numpy / torch input -> float64 torch tensor with `ndim` dims (device kept for tensors)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{what}: expected a torch tensor or numpy array, got {type(x).__name__}')
    if x.ndim != ndim:
        raise ValueError(f'{what}: expected a {ndim}-D tensor, got shape {list(x.shape)}')
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f'{what}: contains NaN or Inf')
    return x


def _chunks(n, per_item):
    """Batch slices so that each chunk holds at most _CHUNK_ELEMS elements (at least one item)."""
    step = max(1, _CHUNK_ELEMS // max(int(per_item), 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _box_sum(x, q):
    """Sum over every q x q window (stride 1, no padding): [N, K, H, W] -> [N, K, H-q+1, W-q+1] (exact for ints)."""
    if q == 1:
        return x
    ones = torch.ones([x.shape[1], 1, q, q], dtype=x.dtype, device=x.device)
    return F.conv2d(x, ones, groups=x.shape[1])


def _distribution(values, num_bins, lo, hi):
    """Mean, quantiles (QUANTILES) and histogram (num_bins equal bins on [lo, hi]) of a 1-D float array; NaNs are
    left out. An empty array gives NaNs and zero counts."""
    values = values[np.isfinite(values)]
    edges = np.linspace(lo, hi, num_bins + 1)
    if values.size == 0:
        return dict(mean=float('nan'), quantiles={p: float('nan') for p in QUANTILES},
                    hist=(np.zeros(num_bins, dtype=np.int64), edges))
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
    return dict(mean=float(values.mean()), quantiles={p: float(np.quantile(values, p)) for p in QUANTILES},
                hist=(counts.astype(np.int64), edges))


# ----------------------------------------------------------------------------------------------------------------------
# Sparsity of hidden layers.


def hoyer_sparsity(v, dim=-1):
    """Hoyer sparsity (sqrt(n) - |v|_1 / |v|_2) / (sqrt(n) - 1) of vectors of length n = v.shape[dim] >= 2.

    1 for a vector with one non-zero entry, 0 for a vector whose entries all have the same magnitude. The all-zero
    vector gives NaN (undefined). Returns a float64 tensor with `dim` removed.
    """
    v = torch.as_tensor(v).to(torch.float64)
    n = v.shape[dim]
    if n < 2:
        raise ValueError(f'hoyer_sparsity: vectors need at least 2 entries, got {n}')
    l1 = v.abs().sum(dim)
    l2 = v.square().sum(dim).sqrt()
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-300), torch.full_like(l1, float('nan')))
    return (np.sqrt(n) - ratio) / (np.sqrt(n) - 1)


def layer_sparsity(a, tau=0.1, patch=1, relu_layer=False, num_bins=20):
    """Channel sparsity of hidden activations a [N, C, H, W] (FSR.md section 4, "Sparsity of a hidden layer").

    Activity: an entry is active when a > tau * rms(a), with rms(a) = sqrt(mean(a^2)) over the WHOLE tensor (all N
    images, channels and positions). relu_layer=True counts exact non-zeros instead (a != 0, i.e. tau = 0 for a
    ReLU output).

    Patches: every q x q window (q = patch, stride 1, no padding), so there are N * (H-q+1) * (W-q+1) patches; q = 1
    is per position. The restriction of the layer to a patch is the vector of its C * q * q values (channel-major),
    and two activities are reported:
      * active_fraction = (number of active entries of that vector) / (C * q * q);
      * union_fraction  = (number of channels active at ANY position of the patch) / C.
    Both equal the per-position fraction of active channels when q = 1.
    Hoyer sparsity of the patch vector v (n = C * q * q): (sqrt(n) - |v|_1 / |v|_2) / (sqrt(n) - 1); all-zero
    patches have no Hoyer value (left out of its statistics; their share is `zero_fraction`).

    Returns a dict:
        mean_active_fraction, mean_union_fraction, mean_hoyer:  float means over patches;
        active_fraction_quantiles, union_fraction_quantiles, hoyer_quantiles:  {p: value} for p in QUANTILES;
        active_fraction_hist, hoyer_hist:  (int64 counts [num_bins], float64 edges [num_bins + 1]) on [0, 1];
        active_fraction, union_fraction, hoyer:  float64 numpy [num_patches] per-patch values (hoyer NaN for
            all-zero patches), patch order = (n, y, x);
        zero_fraction:  share of all-zero patches;  rms, threshold:  the rms and the activity threshold used;
        num_patches, dim (= C * q * q), patch (= q), channels (= C).
    """
    a = _as_float64(a, 'layer_sparsity: activations [N, C, H, W]')
    n, c, h, w = a.shape
    q = int(patch)
    if n == 0:
        raise ValueError('layer_sparsity: empty batch')
    if q < 1 or q > min(h, w):
        raise ValueError(f'layer_sparsity: patch must be in [1, min(H, W) = {min(h, w)}], got {patch}')
    dim = c * q * q
    if dim < 2:
        raise ValueError(f'layer_sparsity: a patch must hold at least 2 values (C * q * q = {dim})')
    if not tau >= 0:
        raise ValueError(f'layer_sparsity: tau must be >= 0, got {tau}')
    if int(num_bins) < 1:
        raise ValueError(f'layer_sparsity: num_bins must be >= 1, got {num_bins}')

    rms = float(a.square().mean().sqrt())
    threshold = 0.0 if relu_layer else float(tau) * rms
    active_parts, union_parts, hoyer_parts = [], [], []
    for sl in _chunks(n, c * h * w):
        x = a[sl]
        active = (x != 0) if relu_layer else (x > threshold)
        count = _box_sum(active.to(torch.float64).sum(1, keepdim=True), q)        # active entries per patch
        union = (F.max_pool2d(active.to(torch.float64), q, stride=1) if q > 1 else active.to(torch.float64)).sum(1)
        l1 = _box_sum(x.abs().sum(1, keepdim=True), q)[:, 0]
        l2 = _box_sum(x.square().sum(1, keepdim=True), q)[:, 0].sqrt()
        ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-300), torch.full_like(l1, float('nan')))
        active_parts.append((count[:, 0] / dim).flatten().cpu())
        union_parts.append((union / c).flatten().cpu())
        hoyer_parts.append(((np.sqrt(dim) - ratio) / (np.sqrt(dim) - 1)).flatten().cpu())
    active_fraction = torch.cat(active_parts).numpy()
    union_fraction = torch.cat(union_parts).numpy()
    hoyer = torch.cat(hoyer_parts).numpy()

    act = _distribution(active_fraction, num_bins, 0.0, 1.0)
    uni = _distribution(union_fraction, num_bins, 0.0, 1.0)
    hoy = _distribution(hoyer, num_bins, 0.0, 1.0)
    return dict(
        mean_active_fraction=act['mean'], active_fraction_quantiles=act['quantiles'], active_fraction_hist=act['hist'],
        mean_union_fraction=uni['mean'], union_fraction_quantiles=uni['quantiles'],
        mean_hoyer=hoy['mean'], hoyer_quantiles=hoy['quantiles'], hoyer_hist=hoy['hist'],
        active_fraction=active_fraction, union_fraction=union_fraction, hoyer=hoyer,
        zero_fraction=float(np.mean(~np.isfinite(hoyer))), rms=rms, threshold=threshold,
        num_patches=int(active_fraction.size), dim=dim, patch=q, channels=c)


# ----------------------------------------------------------------------------------------------------------------------
# Patch moments.


class PatchMoments:
    """Running mean and covariance of all q x q patches (stride 1, no padding) of image batches [N, C, H, W].

    A patch is the vector of its D = C * q * q values, ordered (channel, dy, dx) like F.unfold. Sums are kept in
    float64 relative to a shift (the first batch's mean patch) for accuracy. `update` may be called many times;
    `mean_cov()` returns (mean [D], population covariance [D, D] = E[(x - mean)(x - mean)^T]) as float64 numpy.
    """

    def __init__(self, q=3):
        if int(q) < 1:
            raise ValueError(f'PatchMoments: q must be >= 1, got {q}')
        self.q = int(q)
        self.shape = None       # [C, H, W] of the images
        self.count = 0          # number of patches seen
        self._shift = None
        self._sum = None
        self._outer = None

    @property
    def dim(self):
        return None if self.shape is None else self.shape[0] * self.q * self.q

    @torch.no_grad()
    def update(self, images):
        """Add every q x q patch of images [N, C, H, W] (H, W >= q; C, H, W equal across calls). Returns self."""
        x = _as_float64(images, 'PatchMoments.update: images [N, C, H, W]')
        c, h, w = x.shape[1:]
        if self.shape is None:
            if h < self.q or w < self.q:
                raise ValueError(f'PatchMoments: images of {h}x{w} pixels are smaller than the {self.q}x{self.q} patch')
            self.shape = [c, h, w]
        elif [c, h, w] != self.shape:
            raise ValueError(f'PatchMoments: images [C, H, W] = {[c, h, w]} differ from the earlier {self.shape}')
        d = self.dim
        num_pos = (h - self.q + 1) * (w - self.q + 1)
        for sl in _chunks(x.shape[0], d * num_pos):
            rows = F.unfold(x[sl], self.q).transpose(1, 2).reshape(-1, d)  # [n * L, D]
            if self._shift is None:
                self._shift = rows.mean(0)
                self._sum = torch.zeros(d, dtype=torch.float64, device=rows.device)
                self._outer = torch.zeros([d, d], dtype=torch.float64, device=rows.device)
            rows = rows.to(self._shift.device) - self._shift
            self._sum += rows.sum(0)
            self._outer += rows.T @ rows
            self.count += rows.shape[0]
        return self

    def mean_cov(self):
        """(mean [D], covariance [D, D]) float64 numpy (population covariance, divided by the patch count)."""
        if self.count == 0:
            raise ValueError('PatchMoments: no patches added')
        m = self._sum / self.count
        cov = self._outer / self.count - torch.outer(m, m)
        return (self._shift + m).cpu().numpy(), cov.cpu().numpy()


def _moments(x, q, what):
    if isinstance(x, PatchMoments):
        if x.q != q:
            raise ValueError(f'{what}: PatchMoments has q={x.q}, expected q={q}')
        return x
    return PatchMoments(q).update(_as_float64(x, f'{what} [N, C, H, W]'))


def _relative(num, den):
    """num / den with 0/0 = 0 and x/0 = inf."""
    if den > 0:
        return float(num / den)
    return 0.0 if num == 0 else float('inf')


def moment_gaps(real, fake):
    """Moment gaps between two PatchMoments (same q and image shape):
    gap_1 = |mean_real - mean_fake|_2 / |mean_real|_2,  gap_2 = |Cov_real - Cov_fake|_F / |Cov_real|_F
    (0/0 = 0, x/0 = inf). Returns dict(gap_1, gap_2)."""
    if real.shape != fake.shape:
        raise ValueError(f'moment gap: image shapes [C, H, W] differ: {real.shape} vs {fake.shape}')
    mr, cr = real.mean_cov()
    mf, cf = fake.mean_cov()
    return dict(gap_1=_relative(np.linalg.norm(mr - mf), np.linalg.norm(mr)),
                gap_2=_relative(np.linalg.norm(cr - cf), np.linalg.norm(cr)))


def patch_moment_gap(real, fake, q=3):
    """Patch-moment gap (FSR.md section 4) between real [N, C, H, W] and fake [M, C, H, W] images (or PatchMoments).

    Every q x q patch (stride 1, no padding) of every image is a vector of D = C * q * q values; over all patches
    of a set, mean m and population covariance S. gap_1 = |m_real - m_fake| / |m_real| (L2 norms), gap_2 =
    |S_real - S_fake|_F / |S_real|_F. Returns dict(gap_1, gap_2, num_patches_real, num_patches_fake, dim).
    """
    mr = _moments(real, q, 'patch_moment_gap: real')
    mf = _moments(fake, q, 'patch_moment_gap: fake')
    out = moment_gaps(mr, mf)
    out.update(num_patches_real=mr.count, num_patches_fake=mf.count, dim=mr.dim)
    return out


def moment_gap_with_floor(real_a, real_b, fake, q=3):
    """Patch-moment gaps of `fake` against the reference sample `real_a`, beside the noise floor: the same gaps
    between `real_a` and a disjoint real sample `real_b` of the same size as `fake` (images [N, C, H, W] or
    PatchMoments; the caller guarantees that real_a and real_b share no image).

    A level counts as learned for moment k when gap_k <= 2 * floor_k. Returns dict(gap_1, gap_2, floor_1, floor_2,
    ratio_1, ratio_2 (gap / floor; inf when the floor is 0 and the gap is not), learned_1, learned_2, learned (both),
    num_patches_real_a, num_patches_real_b, num_patches_fake, dim).
    """
    ma = _moments(real_a, q, 'moment_gap_with_floor: real_a')
    mb = _moments(real_b, q, 'moment_gap_with_floor: real_b')
    mf = _moments(fake, q, 'moment_gap_with_floor: fake')
    if mb.count != mf.count:
        raise ValueError(f'moment_gap_with_floor: the floor sample real_b must be as large as fake; got '
                         f'{mb.count} and {mf.count} patches')
    gap = moment_gaps(ma, mf)
    floor = moment_gaps(ma, mb)
    out = dict(gap_1=gap['gap_1'], gap_2=gap['gap_2'], floor_1=floor['gap_1'], floor_2=floor['gap_2'])
    for k in (1, 2):
        out[f'ratio_{k}'] = _relative(out[f'gap_{k}'], out[f'floor_{k}'])
        out[f'learned_{k}'] = bool(out[f'gap_{k}'] <= 2 * out[f'floor_{k}'])
    out['learned'] = out['learned_1'] and out['learned_2']
    out.update(num_patches_real_a=ma.count, num_patches_real_b=mb.count, num_patches_fake=mf.count, dim=ma.dim)
    return out


class PositionMoments:
    """Running per-position mean and variance over images of batches [N, C, H, W]: the mean image and the variance
    image, float64 (sums relative to the first batch's mean image). `mean_var()` returns (mean [C, H, W], population
    variance over images [C, H, W]) as float64 numpy."""

    def __init__(self):
        self.shape = None
        self.count = 0
        self._shift = None
        self._sum = None
        self._sq = None

    @torch.no_grad()
    def update(self, images):
        """Add images [N, C, H, W] (C, H, W equal across calls). Returns self."""
        x = _as_float64(images, 'PositionMoments.update: images [N, C, H, W]')
        if self.shape is None:
            self.shape = list(x.shape[1:])
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._sq = torch.zeros_like(self._shift)
        elif list(x.shape[1:]) != self.shape:
            raise ValueError(f'PositionMoments: images [C, H, W] = {list(x.shape[1:])} differ from the earlier '
                             f'{self.shape}')
        d = x.to(self._shift.device) - self._shift
        self._sum += d.sum(0)
        self._sq += d.square().sum(0)
        self.count += x.shape[0]
        return self

    def mean_var(self):
        if self.count == 0:
            raise ValueError('PositionMoments: no images added')
        m = self._sum / self.count
        return (self._shift + m).cpu().numpy(), (self._sq / self.count - m.square()).clamp_min(0).cpu().numpy()


def _position_moments(x, what):
    return x if isinstance(x, PositionMoments) else PositionMoments().update(_as_float64(x, f'{what} [N, C, H, W]'))


def position_gaps(real_a, real_b, fake):
    """How much a sample's per-position statistics depart from the reference sample real_a, beside the same for a
    disjoint real sample real_b of the same size as fake (the noise floor). Images [N, C, H, W] or PositionMoments.

    The patch moments pool all positions, so they see a pattern that sits at the same place in every image (a frame,
    a grid) only through the pooled covariance. Here, with m_x(p) [C] and v_x(p) [C] the mean and variance over images
    at position p:
    * mean_gap = rms over channels and positions of the pattern d(p) = m_x(p) - m_a(p) minus its per-channel average
      over positions (the overall colour is gap_1's business), over the reals' pooled pixel standard deviation
      (sqrt of the channel-average variance over images and positions);
    * var_gap = rms over positions of l(p) - mean_p l(p), l(p) = log(sum_c v_x(p) / sum_c v_a(p)): how unevenly the
      variance is spread over positions (the overall contrast, exp(mean_p l), is returned as var_scale).
    Returns dict(mean_gap, mean_floor, var_gap, var_floor, var_scale, var_scale_floor)."""
    ma, va = _position_moments(real_a, 'position_gaps: real_a').mean_var()
    pooled = float(np.mean(va.mean(axis=(1, 2)) + ma.var(axis=(1, 2))))  # the reals' pooled pixel variance
    eps = 1e-9 * max(float(va.sum(0).mean()), 1e-300)
    out = {}
    for name, x in (('gap', fake), ('floor', real_b)):
        mom = _position_moments(x, f'position_gaps: {"fake" if name == "gap" else "real_b"}')
        if mom.shape != list(ma.shape):
            raise ValueError(f'position_gaps: images [C, H, W] differ: {list(ma.shape)} vs {mom.shape}')
        mx, vx = mom.mean_var()
        d = mx - ma
        d = d - d.mean(axis=(1, 2), keepdims=True)
        log_ratio = np.log((vx.sum(0) + eps) / (va.sum(0) + eps))
        key = '' if name == 'gap' else '_floor'
        out['mean_gap' if name == 'gap' else 'mean_floor'] = _relative(np.sqrt(np.mean(d ** 2)), np.sqrt(pooled))
        out['var_gap' if name == 'gap' else 'var_floor'] = float(np.sqrt(np.mean((log_ratio - log_ratio.mean()) ** 2)))
        out['var_scale' + key] = float(np.exp(log_ratio.mean()))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Effective filters and feature similarity.


def _layer_weight(layer, what):
    """Effective weight (weight * weight_gain, gain 1 when absent) of a conv layer, float64 CPU [O, I, k, k]."""
    weight = getattr(layer, 'weight', None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError(f'{what}: expected a conv layer with a 4-D .weight, got {type(layer).__name__}')
    return weight.detach().to('cpu', torch.float64) * float(getattr(layer, 'weight_gain', 1.0))


def compose_filters(w1, w2):
    """Patch filters of two stacked linear cross-correlations (biases and the activation between them ignored).

    w1 [T, C, k1, k1] maps the image to T channels, w2 [O, T2, k2, k2] (T2 >= T) reads them; only w2's first T input
    channels (those fed by w1) are used. Result [O, C, k1 + k2 - 1, k1 + k2 - 1]:
        E[o, c, s] = sum_t sum_{u + v = s} w2[o, t, u] * w1[t, c, v],
    so conv(conv(x, w1), w2) == conv(x, E) with stride 1 (exactly, zero padding included, when k1 = 1; in the
    interior otherwise).
    """
    w1 = torch.as_tensor(w1, dtype=torch.float64)
    w2 = torch.as_tensor(w2, dtype=torch.float64)
    if w1.ndim != 4 or w2.ndim != 4:
        raise ValueError(f'compose_filters: expected 4-D weights, got {list(w1.shape)} and {list(w2.shape)}')
    t, c, k1 = w1.shape[0], w1.shape[1], w1.shape[2]
    if w2.shape[1] < t:
        raise ValueError(f'compose_filters: second layer reads {w2.shape[1]} channels, first makes {t}')
    w2 = w2[:, :t]
    k2 = w2.shape[2]
    out = torch.zeros([w2.shape[0], c, k1 + k2 - 1, w1.shape[3] + w2.shape[3] - 1], dtype=torch.float64)
    for uy in range(k2):
        for ux in range(w2.shape[3]):
            out[:, :, uy:uy + k1, ux:ux + w1.shape[3]] += torch.einsum('ot,tcyx->ocyx', w2[:, :, uy, ux], w1)
    return out


def effective_patch_filters(first, second=None):
    """Effective patch filters of a discriminator's first layer(s): float64 [num_filters, C, k, k].

    first: the layer that reads the image (e.g. Conv2dLayer, nn.Conv2d; weight [T, C, k1, k1] times weight_gain).
    second: optional next layer; then the filters of the composition first -> second (`compose_filters`; the bias and
    activation between them are ignored, i.e. the activation is linearised: leaky ReLU is linear with slope 1 on the
    positive side and its gain is a common scale that cosine similarity removes).
    """
    w1 = _layer_weight(first, 'effective_patch_filters: first')
    if second is None:
        return w1
    return compose_filters(w1, _layer_weight(second, 'effective_patch_filters: second'))


def _d_first_layers(D, resolution, mode):
    """(fromrgb layer, second layer or None) of D at `resolution` for mode 'fromrgb' / 'composed' / 'auto'."""
    if mode not in ('auto', 'fromrgb', 'composed'):
        raise ValueError(f"mode must be 'auto', 'fromrgb' or 'composed', got {mode!r}")
    block = getattr(D, f'b{int(resolution)}', None)
    if block is None:
        blocks = sorted(int(name[1:]) for name, _ in D.named_children() if name[1:].isdigit())
        raise ValueError(f'D has no block at resolution {resolution}; blocks: {blocks}')
    fromrgb = getattr(block, 'fromrgb', None)
    if fromrgb is None:
        raise ValueError(f'D block b{resolution} has no FromRGB layer (architecture '
                         f'{getattr(block, "architecture", "?")!r} reads images only at its top resolution)')
    k = int(fromrgb.weight.shape[-1])
    if mode == 'fromrgb' or (mode == 'auto' and k > 1):
        return fromrgb, None
    second = getattr(block, 'conv0', None)
    if second is None:
        second = getattr(block, 'conv', None)  # DiscriminatorEpilogue (4x4 block)
    if second is None:
        raise ValueError(f'D block b{resolution} has no convolution after FromRGB to compose with')
    return fromrgb, second


def effective_filters_d_first_layer(D, resolution, mode='auto'):
    """Effective patch filters of D's first layer at `resolution`: float64 [num_filters, img_channels, k, k].

    mode 'fromrgb': weight * weight_gain of D.b<resolution>.fromrgb (k = its kernel, 1 in StyleGAN2).
    mode 'composed': FromRGB composed with the next 3x3 convolution (conv0, or conv of the 4x4 epilogue, whose
        minibatch-std input channel is dropped): [tmp_channels, img_channels, k_rgb + 2, k_rgb + 2] patch filters,
        biases and the leaky ReLU between them ignored (see `effective_patch_filters`).
    mode 'auto' (default): 'composed' when FromRGB is 1x1 (colour-only filters cannot be edge features), else
        'fromrgb'.
    Raises ValueError when D has no block or no FromRGB at that resolution.
    """
    first, second = _d_first_layers(D, resolution, mode)
    return effective_patch_filters(first, second)


def random_d_first_layer_filters(D, resolution, mode='auto', generator=None):
    """The filters `effective_filters_d_first_layer` would give for a freshly initialised D of the same
    architecture: the same layers with weights redrawn from the host's initialisation (standard normal, times the
    layers' weight_gain), composed the same way. float64 [num_filters, img_channels, k, k]."""
    first, second = _d_first_layers(D, resolution, mode)

    def redraw(layer):
        shape = list(layer.weight.shape)
        return torch.randn(shape, generator=generator, dtype=torch.float64) * float(getattr(layer, 'weight_gain', 1.0))
    w1 = redraw(first)
    return w1 if second is None else compose_filters(w1, redraw(second))


def torgb_atoms(G, resolution, w=None):
    """G's own output atoms at `resolution` (fallback when no FSR head exists): the ToRGB layer of block b<r> is a
    modulated 1x1 convolution, so hidden channel i paints colour weight[:, i] * weight_gain * style_i. The style is
    taken at latent w [w_dim] (default: G.mapping.w_avg, the running mean of W). Returns float64 [C_r, img_channels,
    k, k], or None when the block has no ToRGB (orig/resnet architectures below the last block)."""
    block = getattr(G.synthesis, f'b{int(resolution)}', None)
    torgb = getattr(block, 'torgb', None)
    if torgb is None:
        return None
    if w is None:
        w = getattr(G.mapping, 'w_avg', None)
        if w is None:
            w = torch.zeros([G.w_dim])
    with torch.no_grad():
        w = torch.as_tensor(w, dtype=torch.float32).reshape(1, -1).to(torgb.weight.device)
        styles = (torgb.affine(w) * torgb.weight_gain).to('cpu', torch.float64)[0]   # [C_r]
    weight = torgb.weight.detach().to('cpu', torch.float64)                           # [img_C, C_r, k, k]
    return (weight * styles.reshape(1, -1, 1, 1)).transpose(0, 1).contiguous()


def feature_similarity(d_filters, g_atoms, random_baseline=None, threshold=0.5):
    """Similarity of D's first-layer filters d_filters [F, C, k, k] and G's output atoms g_atoms [A, C, k, k]
    (FSR.md section 4, "Feature similarity").

    Both are flattened and L2-normalised; signed cosine matrix [A, F]; optimal one-to-one matching (Hungarian,
    fsr_plugin.matching.match_filters) giving min(A, F) pairs. random_baseline: (d_random, g_random), each a tensor of
    the same shape as its counterpart or a list of such tensors (several random draws, averaged), e.g. from
    `random_d_first_layer_filters` and freshly initialised heads.

    Returns dict(mean_matched_cos, frac_above (share of pairs with cosine > threshold), num_pairs,
    random_mean_matched_cos, random_frac_above (NaN without a baseline), rows (indices into g_atoms), cols (indices
    into d_filters), matched_cos (numpy [num_pairs])).
    """
    d = torch.as_tensor(d_filters).detach().cpu().to(torch.float64)
    g = torch.as_tensor(g_atoms).detach().cpu().to(torch.float64)
    if d.ndim != 4 or g.ndim != 4:
        raise ValueError(f'feature_similarity: expected [N, C, k, k] filters, got {list(d.shape)} and {list(g.shape)}')
    if d.shape[1:] != g.shape[1:]:
        raise ValueError(f'feature_similarity: D filters {list(d.shape[1:])} and G atoms {list(g.shape[1:])} have '
                         f'different [C, k, k]')
    res = matching.match_filters(g, d, threshold=threshold)
    out = dict(mean_matched_cos=res['mean_matched_cos'], frac_above=res['frac_above'], num_pairs=len(res['rows']),
               random_mean_matched_cos=float('nan'), random_frac_above=float('nan'),
               rows=res['rows'], cols=res['cols'], matched_cos=res['matched_cos'])
    if random_baseline is not None:
        d_rand, g_rand = random_baseline
        d_rand = list(d_rand) if isinstance(d_rand, (list, tuple)) else [d_rand]
        g_rand = list(g_rand) if isinstance(g_rand, (list, tuple)) else [g_rand]
        if len(d_rand) != len(g_rand) or not d_rand:
            raise ValueError(f'feature_similarity: random_baseline needs as many D as G draws, got {len(d_rand)} and '
                             f'{len(g_rand)}')
        cos, frac = [], []
        for dr, gr in zip(d_rand, g_rand):
            dr, gr = torch.as_tensor(dr).detach().cpu(), torch.as_tensor(gr).detach().cpu()
            if dr.shape != d.shape or gr.shape != g.shape:
                raise ValueError(f'feature_similarity: random baseline shapes {list(dr.shape)}, {list(gr.shape)} '
                                 f'differ from {list(d.shape)}, {list(g.shape)}')
            r = matching.match_filters(gr, dr, threshold=threshold)
            cos.append(r['mean_matched_cos'])
            frac.append(r['frac_above'])
        out['random_mean_matched_cos'] = float(np.mean(cos))
        out['random_frac_above'] = float(np.mean(frac))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Per-level sliced Wasserstein distance.


def _to_uint8(images, what):
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f'{what}: expected [N, C, r, r] images, got {getattr(images, "shape", type(images))}')
    if images.dtype == torch.uint8:
        return images.cpu()
    from metrics import metric_utils
    return metric_utils.images_to_uint8(images.detach()).cpu()


def per_level_swd(real_pyramid, fake_pyramid, patches_per_image=64, seed=0, **swd_kwargs):
    """Sliced Wasserstein distance between real and generated images at every pyramid level.

    real_pyramid, fake_pyramid: {r: images [N, C, r, r]} with the same keys; float images in [-1, 1] (converted like
    the host's metrics: (x * 127.5 + 128).clamp(0, 255) to uint8) or uint8. Each level is scored with the host's
    `metrics.sliced_wasserstein.swd_images` (Laplacian pyramid of that level's images, 7x7 patches normalised by the
    real statistics, sliced Wasserstein-1 x 1e3); swd_kwargs go to it (nhood_size, min_res, dir_repeats, ...).
    Returns {r: dict(swd=mean over the level's Laplacian bands, bands={band resolution: value})}.
    """
    from metrics import sliced_wasserstein
    if set(real_pyramid) != set(fake_pyramid):
        raise ValueError(f'per_level_swd: resolutions differ: real {sorted(real_pyramid)} vs fake {sorted(fake_pyramid)}')
    out = {}
    for r in sorted(real_pyramid):
        real = _to_uint8(real_pyramid[r], f'per_level_swd: real level {r}')
        fake = _to_uint8(fake_pyramid[r], f'per_level_swd: fake level {r}')
        if real.shape[1:] != fake.shape[1:]:
            raise ValueError(f'per_level_swd: level {r}: real {list(real.shape)} vs fake {list(fake.shape)}')
        bands, mean = sliced_wasserstein.swd_images(real, fake, patches_per_image=patches_per_image, seed=seed,
                                                    **swd_kwargs)
        out[int(r)] = dict(swd=float(mean), bands={int(b): float(v) for b, v in bands.items()})
    return out
