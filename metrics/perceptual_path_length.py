"""Perceptual Path Length (Karras et al. 2019, "A Style-Based Generator Architecture for GANs"): the expected
LPIPS distance between images generated at two latents a small step epsilon apart along an interpolation path,
divided by epsilon^2.

* space 'z': spherical interpolation (slerp) between the directions of two latents z0, z1; 'w': linear
  interpolation (lerp) between their mapped w0, w1.
* sampling 'full': the path position t is uniform in [0, 1); 'end': t = 0 (path endpoints only).
* The pair (t, t + epsilon) is rendered with noise_mode='const' (noise buffers re-randomised per batch) and
  force_fp32=True, optionally center-cropped (the face crop of the original metric: rows 3/8..7/8, columns
  2/8..6/8 of the image), average-pooled down to 256 px when larger, mapped to [0, 255] (float, no quantisation)
  and compared with the VGG16 LPIPS feature stack of the detector: d = sum((f(t) - f(t + eps))^2) / eps^2.
* Values outside the 1st..99th percentile are dropped before averaging.
"""

import copy

import numpy as np
import torch

from . import metric_utils

PPL_SPACES = ('z', 'w')
PPL_SAMPLINGS = ('full', 'end')


def slerp(a, b, t):
    """Spherical interpolation between the directions of a and b ([..., D]) at fraction t ([..., 1]); returns unit
    vectors [..., D] (t = 0 gives a / |a|, t = 1 gives b / |b|)."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    angle = t * torch.acos(cos)
    ortho = b - cos * a  # component of b orthogonal to a
    ortho = ortho / ortho.norm(dim=-1, keepdim=True)
    out = a * torch.cos(angle) + ortho * torch.sin(angle)
    return out / out.norm(dim=-1, keepdim=True)


def _split_G_kwargs(G_kwargs):
    mapping_keys = ('truncation_psi', 'truncation_cutoff')
    mapping_kwargs = {k: v for k, v in G_kwargs.items() if k in mapping_keys}
    synthesis_kwargs = {k: v for k, v in G_kwargs.items() if k not in mapping_keys}
    synthesis_kwargs.update(noise_mode='const', force_fp32=True)
    return mapping_kwargs, synthesis_kwargs


class PPLSampler:
    """Draws latent pairs and returns their scaled LPIPS distances.

    Args:
        G:        generator with G.mapping(z, c) -> ws [N, num_ws, w_dim] and G.synthesis(ws, **kw) -> images
                  (deep-copied; its noise_const buffers are re-randomised on every call).
        G_kwargs: truncation_psi / truncation_cutoff go to the mapping, the rest to the synthesis.
        epsilon:  step along the path. space: 'z' or 'w'. sampling: 'full' or 'end'. crop: face crop.
        vgg16:    detector called as vgg16(images_float_0_255, resize_images=False, return_lpips=True) -> [N, ...].
    """

    def __init__(self, G, G_kwargs, epsilon, space, sampling, crop, vgg16):
        if space not in PPL_SPACES:
            raise ValueError(f'PPL: space must be one of {PPL_SPACES}, got {space!r}')
        if sampling not in PPL_SAMPLINGS:
            raise ValueError(f'PPL: sampling must be one of {PPL_SAMPLINGS}, got {sampling!r}')
        if not epsilon > 0:
            raise ValueError(f'PPL: epsilon must be > 0, got {epsilon}')
        self.G = copy.deepcopy(G).eval().requires_grad_(False)
        self.mapping_kwargs, self.synthesis_kwargs = _split_G_kwargs(G_kwargs)
        self.epsilon = float(epsilon)
        self.space = space
        self.sampling = sampling
        self.crop = bool(crop)
        self.vgg16 = vgg16

    def to(self, device):
        self.G = self.G.to(device)
        return self

    def _randomize_noise(self):
        for name, buf in self.G.named_buffers():
            if name.endswith('noise_const'):
                buf.copy_(torch.randn_like(buf))

    @torch.no_grad()
    def path_points(self, z0, z1, t, c):
        """ws [2N, num_ws, w_dim]: the points at t and t + epsilon of each path (first N, then second N)."""
        eps = self.epsilon
        t = t.to(z0.dtype).unsqueeze(1)
        if self.space == 'w':
            w0, w1 = self.G.mapping(torch.cat([z0, z1]), torch.cat([c, c]), **self.mapping_kwargs).chunk(2)
            tw = t.unsqueeze(2)
            return torch.cat([w0.lerp(w1, tw), w0.lerp(w1, tw + eps)])
        zt0 = slerp(z0, z1, t)
        zt1 = slerp(z0, z1, t + eps)
        return self.G.mapping(torch.cat([zt0, zt1]), torch.cat([c, c]), **self.mapping_kwargs)

    @torch.no_grad()
    def distances(self, z0, z1, t, c):
        """float64 [N]: LPIPS(image(t), image(t + eps)) / eps^2 for latents z0, z1 [N, z_dim], t [N], labels c."""
        ws = self.path_points(z0, z1, t, c)
        self._randomize_noise()
        img = self.G.synthesis(ws, **self.synthesis_kwargs).to(torch.float32)
        if self.crop:
            c8 = img.shape[2] // 8
            img = img[:, :, c8 * 3: c8 * 7, c8 * 2: c8 * 6]
        factor = int(self.G.img_resolution) // 256
        if factor > 1:
            n, ch, h, w = img.shape
            img = img.reshape([n, ch, h // factor, factor, w // factor, factor]).mean([3, 5])
        img = (img + 1) * (255 / 2)
        if img.shape[1] == 1:
            img = img.repeat([1, 3, 1, 1])
        lpips = self.vgg16(img, resize_images=False, return_lpips=True).to(torch.float64)
        lpips_t0, lpips_t1 = lpips.flatten(1).chunk(2)
        return (lpips_t0 - lpips_t1).square().sum(1) / self.epsilon ** 2

    def __call__(self, c):
        """Distances [N] for N = c.shape[0] random paths (z ~ N(0, I), t as set by `sampling`)."""
        n, device = c.shape[0], c.device
        t = torch.rand([n], device=device) * (1 if self.sampling == 'full' else 0)
        z0, z1 = torch.randn([n * 2, self.G.z_dim], device=device).chunk(2)
        return self.distances(z0, z1, t, c)


def ppl_from_distances(dist):
    """Mean of the distances [N] within their 1st..99th percentile (lower/higher sample values), float64."""
    dist = np.asarray(dist, dtype=np.float64).reshape(-1)
    if dist.size == 0:
        raise ValueError('ppl_from_distances: no distances')
    lo = np.percentile(dist, 1, method='lower')
    hi = np.percentile(dist, 99, method='higher')
    return float(dist[(dist >= lo) & (dist <= hi)].mean())


def compute_ppl(opts, num_samples, epsilon, space, sampling, crop, batch_size):
    """PPL of opts.G over `num_samples` paths, `batch_size` paths per call and rank. Float on rank 0, NaN on other
    ranks."""
    if opts.G is None:
        raise ValueError('PPL needs a generator: MetricOptions.G is None')
    if opts.eval_resolution is not None:
        raise ValueError('PPL has no per-resolution variant (it needs the full-resolution LPIPS network input)')
    vgg16 = metric_utils.get_feature_detector(url=metric_utils.vgg16_url(opts), device=opts.device,
                                              num_gpus=opts.num_gpus, rank=opts.rank, verbose=opts.progress.verbose)
    sampler = PPLSampler(G=opts.G, G_kwargs=opts.G_kwargs, epsilon=epsilon, space=space, sampling=sampling,
                         crop=crop, vgg16=vgg16).to(opts.device)
    sample_labels = metric_utils.make_label_sampler(opts, sampler.G)

    dist = []
    progress = opts.progress.sub(tag='ppl sampling', num_items=num_samples)
    for batch_start in range(0, num_samples, batch_size * opts.num_gpus):
        progress.update(batch_start)
        x = sampler(sample_labels(batch_size))
        for src in range(opts.num_gpus):
            y = x.clone()
            if opts.num_gpus > 1:
                torch.distributed.broadcast(y, src=src)
            dist.append(y)
    progress.update(num_samples)
    if opts.rank != 0:
        return float('nan')
    return ppl_from_distances(torch.cat(dist)[:num_samples].cpu().numpy())
