"""Patch-moment matching against running averages of the batch moments (`--fsr-moments-avg=H`).

The batch form of `--fsr-moments` (`patch_moment_loss.level_moment_losses`) measures the mismatch between the fake
and real patch moments of one batch of 32 images. The mismatch the run has left is about one to two 500-image noise
floors (docs/RESULTS.md section 21), several times smaller than the noise of a 32-image estimate, so the direction
of every step is mostly noise: the generator's iterates wander about the teacher's statistics (section 18: the
training copy is 2-10x further off than its EMA) and what the loss pulls out of that noise is a small average.

Here the direction comes from exponential running averages instead. At every step and level the fake and real batch
moments (mean [D], population covariance [D, D] of the q x q patches, the statistic of `fsr_moment_gap`) update
averages with half-life H kimg; with D_m and D_C the differences of the fake and real averages, the loss value is
the running mismatch |D_m|^2 / trace(C_real) + |D_C|_F^2 / |C_real|_F^2 (the normalisers from the real average), and
its gradient is that of the batch loss with the averages in place of the batch's estimates,
2 <D_m, d m_fake> / trace(C_real) + 2 <D_C, d C_fake> / |C_real|_F^2: the low-noise difference along the batch's
own derivative. With no history (H -> 0) it is the gradient of the plain batch loss. The price is a lag of about
H kimg in the difference the generator sees.

The averages are bias-corrected (a weight that starts at 0, as in Adam), so the first step uses that step's
moments alone; a level whose weight turns on later (`--fsr-moments-late`) starts its averages then. They are state
of the run: `state_dict` / `load_state_dict` carry them through snapshots, so a continued run matches an
uninterrupted one.
"""

import torch

from .patch_moment_loss import patch_mean_cov
from .patch_swd import level_patch_rows

__all__ = ['RunningMoments']


class RunningMoments:
    """Running fake and real patch moments per level, and the loss built on them.
    half_life_kimg: the averages' half-life in thousands of images (> 0)."""

    _KEYS = ('mean_fake', 'cov_fake', 'mean_real', 'cov_real')

    def __init__(self, half_life_kimg):
        if not float(half_life_kimg) > 0:
            raise ValueError(f'RunningMoments: half_life_kimg must be > 0, got {half_life_kimg}')
        self.half_life_images = float(half_life_kimg) * 1000
        self.levels = {}  # {r: {'weight': float (sum of decay weights), 'mean_fake': [D], 'cov_fake': [D, D], ...}}

    def decay(self, num_images):
        """The factor that the averages' old content keeps after a batch of num_images images."""
        return 0.5 ** (float(num_images) / self.half_life_images)

    def update(self, r, rows_fake, rows_real, num_images, fake_moments=None):
        """Fold one batch's patch rows fake [P, D] and real [Q, D] of level r into the averages (no gradient).
        fake_moments: (mean, covariance) of rows_fake when the caller has them already. Returns the level's
        averages {'mean_fake', 'cov_fake', 'mean_real', 'cov_real'} after the update."""
        beta = self.decay(num_images)
        m_f, c_f = patch_mean_cov(rows_fake.detach()) if fake_moments is None else fake_moments
        m_r, c_r = patch_mean_cov(rows_real.detach().to(rows_fake.dtype))
        batch = dict(mean_fake=m_f.detach(), cov_fake=c_f.detach(), mean_real=m_r, cov_real=c_r)
        state = self.levels.get(r)
        if state is None or state['mean_fake'].shape != m_f.shape:
            state = dict(weight=0.0, **{k: torch.zeros_like(v) for k, v in batch.items()})
            self.levels[r] = state
        state['weight'] = beta * state['weight'] + (1 - beta)
        for k in self._KEYS:
            state[k] = beta * state[k].to(batch[k].device) + (1 - beta) * batch[k]
        return {k: state[k] / state['weight'] for k in self._KEYS}

    def level_losses(self, fake_pyramid, real_pyramid, weights, num_images, patch_size=3, pairs=False, eps=1e-12):
        """Per level r with weight > 0 in both pyramids ({r: [N, C, r, r]}), the q x q patches (stride 1; with pairs
        also the level r/2 under them, as `patch_moment_loss.level_moment_losses`): fold this batch in, then
        weights[r] * (mean term + covariance term) of the running mismatch, differentiable in the fake pyramid
        through this batch's moments. num_images: images in this batch (the averages' clock).
        Returns {r: (weighted loss, unweighted running mean term, unweighted running covariance term)}."""
        out = {}
        for r, w, rows_fake, rows_real in level_patch_rows(fake_pyramid, real_pyramid, weights, patch_size, pairs):
            m_f, c_f = patch_mean_cov(rows_fake)  # once: folded in detached, and the gradient's path
            avg = self.update(r, rows_fake, rows_real, num_images, fake_moments=(m_f, c_f))
            diff_mean = avg['mean_fake'] - avg['mean_real']
            diff_cov = avg['cov_fake'] - avg['cov_real']
            spread = torch.diagonal(avg['cov_real']).sum().clamp_min(eps)
            size = avg['cov_real'].square().sum().clamp_min(eps)
            mean_term = diff_mean.square().sum() / spread
            cov_term = diff_cov.square().sum() / size
            # Value: the running mismatch; gradient: 2 <difference, d(batch moment)> over the normaliser.
            pull = 2 * ((diff_mean.to(m_f.dtype) * (m_f - m_f.detach())).sum() / spread +
                        (diff_cov.to(c_f.dtype) * (c_f - c_f.detach())).sum() / size)
            out[r] = (w * (mean_term.to(pull.dtype) + cov_term.to(pull.dtype) + pull), mean_term, cov_term)
        return out

    def state_dict(self):
        """{r: {'weight', 'mean_fake', ...}}: copies of the averages (CPU tensors)."""
        return {int(r): {k: (v.detach().cpu().clone() if torch.is_tensor(v) else float(v)) for k, v in s.items()}
                for r, s in self.levels.items()}

    def load_state_dict(self, state, device='cpu'):
        self.levels = {int(r): {k: (v.to(device) if torch.is_tensor(v) else float(v)) for k, v in s.items()}
                       for r, s in (state or {}).items()}
