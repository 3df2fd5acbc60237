"""Synthetic FSR data: a random, identifiable target generator G* (FSR.md sections 1 and 4b) and a dataset of its
images registered as `--data=fsr-synthetic`.

The teacher, for resolutions r_1 = 4 < r_2 < ... < r_L = R (each twice the previous):

    S_1 = ReLU(Deconv_1(z) - b_1)                 z ~ N(0, I), [z_channels, r_1/2, r_1/2]
    S_l = ReLU(Deconv_l(S_{l-1}) - b_l)           l = 2..L-1   (stride-2 transposed 4x4 convs, resolution x2)
    S_L = one channel per site: U = standardise(Deconv_L(S_{L-1})) + jitter * N(0, I); at every position the
          winning channel is argmax_k U_k; a position is a site when its winning value is the maximum of its
          3x3 neighbourhood (non-maximum suppression) and above a threshold; the site's amplitude is
          0.5 + Phi(standardised winning value) in [0.5, 1.5]
    x_l = Deconv_out,l(S_l)                       3x3 stride-1 transposed convs ("painting" filters)

Sparsity is set by calibration on a fixed batch at construction: b_l is the per-channel quantile that makes a
fraction `lower_densities[l]` of each channel active (about 2 of 8 and 3 of 16 channels per position), and the
top threshold makes `top_sites_per_3x3` sites per 3x3 neighbourhood on average.

The top output filters (the teacher's ATOMS) are structured edge-colour patches: 3 spatial patterns (flat,
vertical step edge, horizontal step edge; mutually orthogonal) times 4 colour directions around grey (the
vertices of a regular tetrahedron in RGB, randomly rotated per seed; pairwise cosine -1/3), so the 12 atoms have
mutual coherence exactly 1/3 and are fewer than the patch dimension 27. The lower-level output filters are the
least-squares linear read-outs of the box-downscaled top image from S_l (fitted at construction), so
x_l approximates the real pyramid; `level_fit_r2` says how well.

Values: images are float in about [-1, 1] (grey = 0; a gain calibrated so that 99.9% of pixels lie inside).
"""
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from training.dataset import Dataset, register_dataset

__all__ = ['FSRTeacher', 'FSRSyntheticDataset', 'structured_atoms', 'atom_coherence', 'images_to_uint8',
           'INFINITE_NUM_IMAGES']

INFINITE_NUM_IMAGES = 2 ** 20  # `num_images=0` ("infinite"): this many distinct images, generated on demand
_BATCH = 256                    # images per forward pass (bounds the memory of large draws)

_PATTERN_NAMES = ('flat', 'vertical-step', 'horizontal-step')


def _spatial_patterns():
    """float64 [3, 3, 3]: unit-norm 3x3 patterns flat, vertical step edge (left/right), horizontal step edge."""
    step = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    flat = torch.ones(3, 3, dtype=torch.float64)
    vertical = step[None, :].expand(3, 3)    # columns -1 | 0 | +1: a vertical edge
    horizontal = step[:, None].expand(3, 3)  # rows: a horizontal edge
    patterns = torch.stack([flat, vertical, horizontal])
    return patterns / patterns.flatten(1).norm(dim=1)[:, None, None]


def _random_rotation(rng):
    """float64 [3, 3] rotation matrix (det +1) drawn uniformly with numpy Generator `rng`."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.from_numpy(q)


def structured_atoms(num_atoms=12, rotation=None):
    """float64 [num_atoms, 3, 3, 3] unit-norm edge-colour atoms [K, RGB, kh, kw].

    Atom k = pattern (k % 3) x colour (k // 3): patterns flat / vertical step / horizontal step, colours the four
    tetrahedron directions (1,1,1), (1,-1,-1), (-1,1,-1), (-1,-1,1) / sqrt(3), optionally rotated by the
    [3, 3] matrix `rotation`. Any two atoms have cosine 0 (different pattern) or -1/3 (same pattern).
    """
    if not 1 <= int(num_atoms) <= 12:
        raise ValueError(f'structured_atoms: num_atoms must be in 1..12 (3 patterns x 4 colour directions), '
                         f'got {num_atoms}')
    colours = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / math.sqrt(3)
    if rotation is not None:
        colours = colours @ torch.as_tensor(rotation, dtype=torch.float64).T
    patterns = _spatial_patterns()
    atoms = [colours[k // 3][:, None, None] * patterns[k % 3][None] for k in range(int(num_atoms))]
    return torch.stack(atoms)


def atom_coherence(atoms):
    """Mutual coherence max_{i != j} |cos(a_i, a_j)| of filters [K, ...] (float; 0 for a single filter)."""
    a = torch.as_tensor(atoms, dtype=torch.float64).flatten(1)
    if a.shape[0] < 2:
        return 0.0
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gram = (a @ a.T).abs()
    gram.fill_diagonal_(0)
    return float(gram.max())


def _seed_int(*parts):
    """A 63-bit integer seed derived from non-negative integers `parts` (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class FSRTeacher:
    """The random target generator G* (see the module docstring). Deterministic given `seed`.

    Args:
        resolution:        top resolution R (power of two, >= 8).
        num_levels:        number of levels L; resolutions R / 2^(L-1) .. R. None = down to r_1 = 4.
        top_atoms:         number K of top-level atoms (1..12, see `structured_atoms`).
        widths:            channels of the lower levels S_1..S_{L-1}; None = 8 for S_1 and 16 above.
        seed:              seed of all teacher parameters (weights, colour rotation, calibration batch).
        z_channels:        channels of the input noise z (at resolution r_1 / 2).
        lower_densities:   target active fraction of each lower level; None = 2/8 for S_1 and 3/16 above.
        top_sites_per_3x3: target mean number of top-level sites per 3x3 neighbourhood (= 9 x site density).
        jitter:            std of the noise added to the standardised (unit-variance) top pre-activations
                           before the argmax (> 0; it also breaks ties between neighbours).
        amplitude_range:   (low, high) of site amplitudes.
        calib_images:      size of the calibration batch.

    Attributes: `resolutions` [r_1..r_L], `widths` {r: channels of S_r}, `atoms` float32 [K, 3, 3, 3],
    `out_filters` {r: float32 [C_r, 3, 3, 3]} (out_filters[R] is `atoms`), `target_density` {r: active fraction},
    `level_fit_r2` {r: R^2 of the linear read-out of the downscaled image from S_r}, `image_gain`.
    """

    def __init__(self, resolution=32, num_levels=None, top_atoms=12, widths=None, seed=0, z_channels=8,
                 lower_densities=None, top_sites_per_3x3=0.9, jitter=0.5, amplitude_range=(0.5, 1.5),
                 calib_images=512):
        resolution, seed = int(resolution), int(seed)
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f'FSRTeacher: resolution must be a power of two >= 8, got {resolution}')
        max_levels = int(math.log2(resolution)) - 1  # lowest level 4x4 (z at 2x2)
        if num_levels is None:
            num_levels = max_levels
        num_levels = int(num_levels)
        if not 2 <= num_levels <= max_levels:
            raise ValueError(f'FSRTeacher: num_levels must be in 2..{max_levels} for resolution {resolution} '
                             f'(lowest level 4x4), got {num_levels}')
        if seed < 0:
            raise ValueError(f'FSRTeacher: seed must be >= 0, got {seed}')
        if widths is None:
            widths = [8] + [16] * (num_levels - 2)
        widths = [int(w) for w in widths]
        if len(widths) != num_levels - 1 or min(widths) < 1:
            raise ValueError(f'FSRTeacher: widths must list {num_levels - 1} positive channel counts (levels below '
                             f'the top), got {widths}')
        if lower_densities is None:
            lower_densities = [2 / 8] + [3 / 16] * (num_levels - 2)
        lower_densities = [float(d) for d in lower_densities]
        if len(lower_densities) != num_levels - 1 or not all(0 < d < 1 for d in lower_densities):
            raise ValueError(f'FSRTeacher: lower_densities must list {num_levels - 1} fractions in (0, 1), '
                             f'got {lower_densities}')
        if not 0 < float(top_sites_per_3x3) <= 2.25:
            raise ValueError(f'FSRTeacher: top_sites_per_3x3 must be in (0, 2.25] (sites are 3x3 local maxima), '
                             f'got {top_sites_per_3x3}')
        lo, hi = (float(v) for v in amplitude_range)
        if not 0 <= lo <= hi:
            raise ValueError(f'FSRTeacher: amplitude_range must be (low, high) with 0 <= low <= high, got '
                             f'{amplitude_range}')
        if not float(jitter) > 0:
            raise ValueError(f'FSRTeacher: jitter must be > 0 (it breaks ties between neighbouring sites), got '
                             f'{jitter}')

        self.seed = seed
        self.resolution = resolution
        self.num_levels = num_levels
        self.resolutions = [resolution >> (num_levels - 1 - i) for i in range(num_levels)]
        self.z_channels = int(z_channels)
        self.top_atoms = int(top_atoms)
        self.widths = dict(zip(self.resolutions, widths + [self.top_atoms]))
        self.jitter = float(jitter)
        self.amplitude_range = (lo, hi)
        self.top_sites_per_3x3 = float(top_sites_per_3x3)
        self.target_density = dict(zip(self.resolutions[:-1], lower_densities))
        self.target_density[resolution] = self.top_sites_per_3x3 / 9 / self.top_atoms

        rng = np.random.default_rng([seed, 0])
        self._atoms64 = structured_atoms(self.top_atoms, rotation=_random_rotation(rng))
        # Deconvolution weights [C_in, C_out, 4, 4]; variance 1 / (taps reaching one output = C_in * 4).
        self._deconv = []
        c_in = self.z_channels
        for r in self.resolutions:
            c_out = self.widths[r]
            w = rng.standard_normal((c_in, c_out, 4, 4)) / math.sqrt(c_in * 4)
            self._deconv.append(torch.from_numpy(w))
            c_in = c_out
        self._calibrate(int(calib_images), rng)

    # -- noise ------------------------------------------------------------------------------------------------

    def _noise_shapes(self):
        r1 = self.resolutions[0]
        return [self.z_channels, r1 // 2, r1 // 2], [self.top_atoms, self.resolution, self.resolution]

    def _draw_noise(self, n, generator):
        z_shape, j_shape = self._noise_shapes()
        z = torch.randn([n] + z_shape, generator=generator, dtype=torch.float64)
        jit = torch.randn([n] + j_shape, generator=generator, dtype=torch.float64)
        return z, jit

    def noise_for_indices(self, indices, stream_seed):
        """(z, jitter) float64 noise of images `indices` of the image stream `stream_seed` (each image drawn from
        its own generator seeded by (stream_seed, index), so image i does not depend on the batch around it)."""
        zs, js = [], []
        gen = torch.Generator()
        for i in indices:
            gen.manual_seed(_seed_int(stream_seed, 1, int(i)))
            z, j = self._draw_noise(1, gen)
            zs.append(z)
            js.append(j)
        return torch.cat(zs), torch.cat(js)

    # -- forward ------------------------------------------------------------------------------------------------

    def _lower(self, z):
        """Activations S_1..S_{L-1} (list over resolutions[:-1]) of the calibrated lower levels."""
        acts = []
        h = z
        for i in range(self.num_levels - 1):
            pre = F.conv_transpose2d(h, self._deconv[i], stride=2, padding=1)
            h = F.relu(pre - self._bias[i][None, :, None, None]) * self._gain[i][None, :, None, None]
            acts.append(h)
        return acts

    def _top_scores(self, s_prev, jitter):
        u = F.conv_transpose2d(s_prev, self._deconv[-1], stride=2, padding=1)
        u = (u - self._top_mean[None, :, None, None]) / self._top_std[None, :, None, None]
        return u + self.jitter * jitter

    def _select_sites(self, scores, threshold):
        """scores [n, K, R, R] -> (site mask bool [n, R, R], winner index [n, R, R], winning value [n, R, R])."""
        value, index = scores.max(dim=1)
        local_max = F.max_pool2d(value[:, None], 3, stride=1, padding=1)[:, 0]
        mask = (value >= local_max) & (value > threshold)
        return mask, index, value

    def _forward(self, z, jit):
        lower = self._lower(z)
        scores = self._top_scores(lower[-1], jit)
        mask, index, value = self._select_sites(scores, self._top_threshold)
        lo, hi = self.amplitude_range
        amp = lo + (hi - lo) * 0.5 * (1 + torch.erf((value - self._amp_mean) / (self._amp_std * math.sqrt(2))))
        codes = torch.zeros_like(scores)
        codes.scatter_(1, index[:, None], (amp * mask)[:, None])
        image = F.conv_transpose2d(codes, self._atoms64, padding=1) * self.image_gain
        return lower, codes, image

    # -- calibration ----------------------------------------------------------------------------------------------

    def _calibrate(self, n, rng):
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        z, jit = self._draw_noise(n, gen)
        # Lower levels, one at a time: per-channel bias = (1 - density) quantile of the pre-activation, gain so
        # that active values have mean 1.
        self._bias, self._gain = [], []
        h = z
        for i, r in enumerate(self.resolutions[:-1]):
            pre = F.conv_transpose2d(h, self._deconv[i], stride=2, padding=1)
            flat = pre.transpose(0, 1).reshape(pre.shape[1], -1)
            bias = torch.quantile(flat, 1 - self.target_density[r], dim=1)
            act = F.relu(flat - bias[:, None])
            mean_active = act.sum(1) / (act > 0).sum(1).clamp_min(1)
            gain = 1 / mean_active.clamp_min(1e-12)
            self._bias.append(bias)
            self._gain.append(gain)
            h = F.relu(pre - bias[None, :, None, None]) * gain[None, :, None, None]
        # Top level: standardise each channel, then choose the threshold for the site density.
        u = F.conv_transpose2d(h, self._deconv[-1], stride=2, padding=1)
        self._top_mean = u.mean(dim=(0, 2, 3))
        self._top_std = u.std(dim=(0, 2, 3)).clamp_min(1e-12)
        scores = self._top_scores(h, jit)
        mask, _index, value = self._select_sites(scores, -math.inf)
        target = self.top_sites_per_3x3 / 9
        maxima = value[mask]
        max_density = maxima.numel() / value.numel()
        if max_density < target:
            raise ValueError(f'FSRTeacher: only {9 * max_density:.2f} local maxima per 3x3 neighbourhood; '
                             f'top_sites_per_3x3={self.top_sites_per_3x3} needs more jitter (jitter={self.jitter})')
        keep = max(1, int(round(target * value.numel())))
        self._top_threshold = float(torch.sort(maxima, descending=True).values[keep - 1]) - 1e-9
        sites = maxima[maxima > self._top_threshold]
        self._amp_mean = float(sites.mean())
        self._amp_std = float(sites.std().clamp_min(1e-12))
        # Image gain: 99.9% of calibration pixels inside [-1, 1].
        self.image_gain = 1.0
        lower, codes, image = self._forward(z, jit)
        self.image_gain = 1.0 / float(torch.quantile(image.abs().flatten()[:2_000_000], 0.999))
        image = image * self.image_gain
        # Lower-level output filters: least-squares read-out of the box-downscaled image from 3x3 neighbourhoods.
        self._out64 = {self.resolution: self._atoms64}
        self.level_fit_r2 = {self.resolution: 1.0}
        for r, s in zip(self.resolutions[:-1], lower):
            target_img = F.avg_pool2d(image, self.resolution // r)
            self._out64[r], self.level_fit_r2[r] = _fit_readout(s, target_img)

    # -- public API -----------------------------------------------------------------------------------------------

    @property
    def atoms(self):
        """float32 [K, 3, 3, 3]: the top-level output filters (unit norm), [atom, RGB, kh, kw]."""
        return self._atoms64.float()

    @property
    def out_filters(self):
        """{r: float32 [C_r, 3, 3, 3]}: output deconvolution filters of every level (x_r = sum painted filters)."""
        return {r: w.float() for r, w in self._out64.items()}

    def sample(self, n, seed=None, generator=None, start=0, details=True):
        """Draw `n` images. With `seed` (default 0 when no generator is given) image j is image start + j of the
        stream `seed`, identical to item start + j of `FSRSyntheticDataset(seed=...)` before uint8 conversion;
        with a torch.Generator the noise is drawn from it, batch by batch.

        Returns dict(image float32 [n, 3, R, R] in about [-1, 1]) and, when `details` (memory: about
        4 * n * (K + 3) * R^2 bytes), also: levels {r: float32 [n, 3, r, r]}, x_r = the image box-downscaled to r
        (x_{l-1} = down(x_l), levels[R] is image); readouts {r: float32 [n, 3, r, r]}, Deconv_out,r(S_r) with
        the fitted lower-level filters (readouts[R] is image; for r < R only a weak linear approximation of
        levels[r], see `level_fit_r2`); hidden {r: float32 [n, C_r, r, r]} (S_r); top_codes float32
        [n, K, R, R] (= hidden[R]: one channel per site, value = amplitude).
        """
        n = int(n)
        if n < 1:
            raise ValueError(f'FSRTeacher.sample: n must be >= 1, got {n}')
        if generator is not None and seed is not None:
            raise ValueError('FSRTeacher.sample: give seed or generator, not both')
        parts = []
        for first in range(0, n, _BATCH):
            count = min(_BATCH, n - first)
            if generator is not None:
                z, jit = self._draw_noise(count, generator)
            else:
                begin = int(start) + first
                z, jit = self.noise_for_indices(range(begin, begin + count), 0 if seed is None else int(seed))
            parts.append(self._outputs(z, jit, details))
        if len(parts) == 1:
            return parts[0]
        return _concat_nested(parts)

    def _outputs(self, z, jit, details):
        with torch.no_grad():
            lower, codes, image = self._forward(z, jit)
            if not details:
                return dict(image=image.float())
            hidden = dict(zip(self.resolutions, lower + [codes]))
            readouts = {r: F.conv_transpose2d(hidden[r], self._out64[r], padding=1).float()
                        for r in self.resolutions[:-1]}
            readouts[self.resolution] = image.float()
            levels = self._box_levels(image)
        return dict(image=image.float(), levels=levels, readouts=readouts,
                    hidden={r: h.float() for r, h in hidden.items()}, top_codes=codes.float())

    def _box_levels(self, image):
        """{r: the image [N, C, R, R] box-downscaled to r x r, float32} for every level (the real pyramid)."""
        return {r: F.avg_pool2d(image, self.resolution // r).float() for r in self.resolutions}

    def noise_share(self, n, seed=0):
        """The teacher's side of the fsr_noise_share metric: n images with z and jitter from a torch.Generator seeded
        `seed`, and the same z with the first image's jitter for all. Returns {r: dict(var, var_fixed, share)}: the
        variance over images of the real pyramid's level r (box-downscales of the top image, averaged over channels
        and positions) with fresh and with fixed jitter, and share = 1 - var_fixed / var, the part of the level's
        variation that the jitter makes rather than z."""
        n = int(n)
        if n < 2:
            raise ValueError(f'FSRTeacher.noise_share: n must be >= 2, got {n}')
        z, jit = self._draw_noise(n, torch.Generator().manual_seed(int(seed)))
        with torch.no_grad():  # only the image: the levels are its box-downscales
            fresh = self._box_levels(self._forward(z, jit)[2])
            fixed = self._box_levels(self._forward(z, jit[:1].expand_as(jit).contiguous())[2])
        out = {}
        for r in self.resolutions:
            var = float(fresh[r].double().var(dim=0).mean())
            var_fixed = float(fixed[r].double().var(dim=0).mean())
            out[r] = dict(var=var, var_fixed=var_fixed, share=1.0 - var_fixed / var if var > 0 else 0.0)
        return out

    def level_references(self, n, draws=16, seed=0):
        """What the teacher itself scores on its own real pyramid, level by level. Only part of a level's content is
        set by z: the top level's sites are also placed by a jitter drawn per position, and every lower level of the
        real pyramid is a box-downscale of that top image, while the teacher's own lower levels S_r never see it.

        n images with z and jitter from a torch.Generator seeded `seed`; for each of them `draws` more jitter draws
        with the same z. Returns dict(readouts {r: float32 [n, 3, r, r]}: the teacher's own outputs
        Deconv_out,r(S_r) (the fitted linear read-outs; the image itself at the top); given_z {r: float32
        [n, 3, r, r]}: the level averaged over the `draws` jitter draws, an estimate of E[x_r | z], the best
        (least-squares) image any function of z can give; z_share {r: float}: the fraction of the level's pixel
        variance that z sets, Var(E[x_r | z]) / Var(x_r), with the finite-draws bias removed).
        """
        n, draws = int(n), int(draws)
        if n < 2 or draws < 2:
            raise ValueError(f'FSRTeacher.level_references: n and draws must be >= 2, got {n} and {draws}')
        gen = torch.Generator().manual_seed(int(seed))
        z, jit = self._draw_noise(n, gen)
        first = self._outputs(z, jit, details=True)
        total = {r: first['levels'][r].double() for r in self.resolutions}
        for _ in range(draws - 1):
            _, jit = self._draw_noise(n, gen)
            levels = self._outputs(z, jit, details=True)['levels']
            for r in self.resolutions:
                total[r] += levels[r].double()
        given_z, z_share = {}, {}
        for r in self.resolutions:
            mean = total[r] / draws
            given_z[r] = mean.float()
            v_all = float(first['levels'][r].double().var(dim=0).sum())
            v_mean = float(mean.var(dim=0).sum())
            # Var(mean of k draws) = Var(E[x|z]) + E[Var(x|z)] / k, and Var(x) = Var(E[x|z]) + E[Var(x|z)].
            v_z = (v_mean - v_all / draws) / (1 - 1 / draws)
            z_share[r] = min(max(v_z / v_all, 0.0), 1.0) if v_all > 0 else float('nan')
        return dict(readouts=first['readouts'], given_z=given_z, z_share=z_share)

    def images_for_indices(self, indices, stream_seed):
        """float32 [len(indices), 3, R, R]: images `indices` of stream `stream_seed` (see `sample`)."""
        indices = list(indices)
        parts = []
        for first in range(0, len(indices), _BATCH):
            z, jit = self.noise_for_indices(indices[first:first + _BATCH], stream_seed)
            parts.append(self._outputs(z, jit, details=False)['image'])
        return torch.cat(parts)

    def measured_density(self, num_images=256, seed=12345):
        """Measured sparsity on fresh samples: {r: dict(active_fraction, active_per_position, channels, target)};
        the top level also has sites_per_3x3 (mean number of sites in a 3x3 neighbourhood, = 9 x site density)."""
        out = self.sample(num_images, seed=seed)
        result = {}
        for r in self.resolutions:
            h = out['hidden'][r]
            active = (h > 0).double()
            result[r] = dict(active_fraction=float(active.mean()), active_per_position=float(active.sum(1).mean()),
                             channels=int(h.shape[1]), target=float(self.target_density[r]))
        top = out['top_codes']
        result[self.resolution]['sites_per_3x3'] = float((top > 0).any(dim=1).double().mean()) * 9
        return result

    def describe(self):
        """dict of the teacher's design numbers (for logs and run options)."""
        return dict(seed=self.seed, resolutions=list(self.resolutions), widths=dict(self.widths),
                    top_atoms=self.top_atoms, atom_coherence=atom_coherence(self._atoms64),
                    target_density=dict(self.target_density), jitter=self.jitter,
                    amplitude_range=list(self.amplitude_range), image_gain=self.image_gain,
                    level_fit_r2=dict(self.level_fit_r2))


def _concat_nested(parts):
    """Concatenate a list of equally structured dicts (values: tensors or dicts of tensors) along dim 0."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: _concat_nested([p[key] for p in parts]) for key in first}
    return torch.cat(parts)


def _fit_readout(hidden, target, ridge=1e-6):
    """Least-squares 3x3 transposed-conv read-out hidden [n, C, r, r] -> target [n, 3, r, r].

    Returns (filters float64 [C, 3, 3, 3] for conv_transpose2d(padding=1), R^2 of the fit)."""
    n, c, r, _ = hidden.shape
    padded = F.pad(hidden, (1, 1, 1, 1))
    cols = torch.stack([padded[:, :, i:i + r, j:j + r] for i in range(3) for j in range(3)], dim=2)
    design = cols.permute(0, 3, 4, 1, 2).reshape(-1, c * 9)   # [n*r*r, C*9] in (c, ki, kj) order
    y = target.flatten(2).transpose(1, 2).reshape(-1, 3)      # [n*r*r, 3]
    gram = design.T @ design
    gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(c * 9, dtype=gram.dtype)
    coef = torch.linalg.solve(gram, design.T @ y)             # [C*9, 3]: conv2d (correlation) weights
    resid = y - design @ coef
    r2 = 1 - float(resid.square().sum() / (y - y.mean(0)).square().sum().clamp_min(1e-12))
    weight = coef.T.reshape(3, c, 3, 3)                       # conv2d weight [out, in, kh, kw]
    filters = weight.flip(2, 3).transpose(0, 1).contiguous()  # conv_transpose2d weight [in, out, kh, kw]
    return filters, r2


# ---------------------------------------------------------------------------------------------------------------
# Dataset of teacher images.

def images_to_uint8(images):
    """float images in about [-1, 1] -> uint8 numpy (x * 127.5 + 128, rounded and clamped to [0, 255])."""
    return (images * 127.5 + 128).round().clamp(0, 255).to(torch.uint8).numpy()


@functools.lru_cache(maxsize=8)
def shared_teacher(resolution=32, num_levels=None, top_atoms=12, seed=0, jitter=0.5):
    """The `FSRTeacher` of these arguments, built once per process (its calibration takes about 0.7 s at 16x16 and
    every metric opens the dataset anew). Treat it as read-only: later callers get the same object."""
    return FSRTeacher(resolution=int(resolution), num_levels=None if num_levels is None else int(num_levels),
                      top_atoms=int(top_atoms), seed=int(seed), jitter=float(jitter))


class FSRSyntheticDataset(Dataset):
    """Images of an `FSRTeacher`, generated on demand: raw image i depends only on (seed, i) (its noise comes
    from its own generator), so the dataset needs no files. Images are generated in chunks of `chunk_size`
    consecutive indices and kept in memory (at most `cache_images` of them; least recently used chunks are
    dropped first).

    Args:
        resolution:   image side R (power of two >= 8).
        num_images:   number of raw images; 0 = "infinite" (INFINITE_NUM_IMAGES distinct images).
        seed:         teacher seed and image stream seed.
        num_levels, top_atoms, jitter: passed to `FSRTeacher` (widths and densities keep their defaults).
        chunk_size:   images generated together; None = 64 for num_images <= 100000, else 1.
        cache_images: upper bound of images kept in memory (uint8).
        use_labels, max_size, xflip, random_seed: see `training.dataset.Dataset` (there are no labels).
    """

    def __init__(self, resolution=32, num_images=10000, seed=0, num_levels=None, top_atoms=12, jitter=0.5,
                 chunk_size=None, cache_images=200_000, use_labels=False, max_size=None, xflip=False,
                 random_seed=0):
        num_images = int(num_images)
        if num_images < 0:
            raise ValueError(f'fsr-synthetic: num must be >= 0 (0 = infinite), got {num_images}')
        if num_images == 0:
            num_images = INFINITE_NUM_IMAGES
        if chunk_size is None:
            chunk_size = 64 if num_images <= 100_000 else 1
        if int(chunk_size) < 1 or int(cache_images) < 1:
            raise ValueError(f'fsr-synthetic: chunk_size and cache_images must be >= 1, got {chunk_size}, '
                             f'{cache_images}')
        self.teacher = shared_teacher(resolution=resolution, num_levels=num_levels, top_atoms=top_atoms, seed=seed,
                                      jitter=jitter)
        self._seed = int(seed)
        self._chunk_size = int(chunk_size)
        self._max_chunks = max(1, int(cache_images) // self._chunk_size)
        self._cache = {}  # chunk index -> uint8 numpy [chunk, 3, R, R]; dict order = least recently used first
        super().__init__(name='fsr-synthetic', raw_shape=[num_images, 3, self.teacher.resolution,
                                                          self.teacher.resolution],
                         max_size=max_size, use_labels=use_labels, xflip=xflip, random_seed=random_seed)

    def _load_raw_labels(self):
        return None

    def _describe_raw_item(self, raw_idx):
        return f'fsr-synthetic image {raw_idx} (seed {self._seed})'

    def _load_raw_image(self, raw_idx):
        chunk = raw_idx // self._chunk_size
        images = self._cache.pop(chunk, None)
        if images is None:
            first = chunk * self._chunk_size
            last = min(first + self._chunk_size, self._raw_shape[0])
            images = images_to_uint8(self.teacher.images_for_indices(range(first, last), self._seed))
            while len(self._cache) >= self._max_chunks:
                self._cache.pop(next(iter(self._cache)))
        self._cache[chunk] = images  # (re)insert as most recently used
        return images[raw_idx - chunk * self._chunk_size]

    def __getstate__(self):
        return dict(super().__getstate__(), _cache={})


def _fsr_synthetic_factory(res=32, num=10000, seed=0, levels=None, atoms=12, jitter=0.5):
    return dict(class_name='fsr_plugin.synthetic.FSRSyntheticDataset', resolution=res, num_images=num, seed=seed,
                num_levels=levels, top_atoms=atoms, jitter=jitter)


register_dataset('fsr-synthetic', _fsr_synthetic_factory,
                 help='images of a random identifiable FSR target generator (FSR.md 4b): mosaics of edge-colour '
                      'atoms; options res=32, num=10000 (0 = infinite), seed=0, levels=None, atoms=12, jitter=0.5')
