"""GAN losses: StyleGAN2 (non-saturating logistic, lazy R1, path length, style mixing), hinge and WGAN(-GP).

`StyleGAN2Loss.accumulate_gradients(phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg)` computes the loss of one
training phase on one batch chunk and calls backward(). Phases: Gmain, Greg, Gboth, Dmain, Dreg, Dboth (HOST_CONTRACT
section 6). Plugins add named loss terms through the hook interface (training/hooks.py): every term a hook returns is
reported as `Loss/<name>` and added to the phase's loss.

Loss families (`loss_type`):
* 'nonsaturating' (default): G: softplus(-D(G(z))), D: softplus(D(G(z))) + softplus(-D(x)).
* 'hinge':  G: -D(G(z)),         D: relu(1 + D(G(z))) + relu(1 - D(x)).
* 'wgan':   G: -D(G(z)),         D: D(G(z)) - D(x)  (+ drift 1e-3 * D(x)^2 keeps scores bounded, as in ProGAN).
Regularisers: R1 (r1_gamma, on reals, Dreg phase) for any family; WGAN-GP (gp_weight, gradient norm on random
interpolates between reals and fakes pushed to 1, Dreg phase).

Optional diversity term against mode collapse (div_weight > 0, Gmain phase; not in NVIDIA's code, off by default).
G draws div_batch extra images from the first div_batch latents of the chunk with constant noise inputs (with random
noise, per-pixel speckle counts as variety and G can satisfy the term by getting noisier); the fakes are paired
(image i with image i + n/2), so are the chunk's reals. Every image is box-downscaled to div_res x div_res and
standardised (its own mean subtracted, scaled to unit L2 norm: a flat image becomes 0), so that a pair's distance
d(a, b) = |a - b|^2 / 2 (= 1 - cos(a, b) unless one is flat) measures a difference of shape, not of brightness or
contrast (on MNIST a collapsed G draws one template whose contrast still varies with z: 2x the reals' pixel L1
distance at 8x8, but 0.6x their cosine distance). Then
    loss_div = div_weight * relu(1 - mean_i d(G(z_i), G(z_i+n/2)) / mean_j d(x_j, x_j+N/2)),
a hinge that is zero once fake pairs differ on average as much as real pairs do, in the spirit of
diversity-sensitive (Yang et al. 2019) and mode-seeking (Mao et al. 2019) regularisation.
"""

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix
from torch_utils.ops import upfirdn2d

LOSS_TYPES = ('nonsaturating', 'hinge', 'wgan')


class StyleGAN2Loss:
    """Loss of one G/D pair. G and D may be our networks or NVIDIA's (call conventions of HOST_CONTRACT 1.8)."""

    def __init__(self, device, G, D, augment_pipe=None, r1_gamma=10, style_mixing_prob=0, pl_weight=0,
                 pl_batch_shrink=2, pl_decay=0.01, pl_no_weight_grad=False, blur_init_sigma=0, blur_fade_kimg=0,
                 loss_type='nonsaturating', gp_weight=0, wgan_drift=1e-3, div_weight=0, div_res=8, div_batch=16,
                 hooks=None):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f'loss_type must be one of {LOSS_TYPES}, got {loss_type!r}')
        self.device = device
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.pl_no_weight_grad = bool(pl_no_weight_grad)
        self.pl_mean = torch.zeros([], device=device)
        self.blur_init_sigma = float(blur_init_sigma)
        self.blur_fade_kimg = float(blur_fade_kimg)
        self.loss_type = loss_type
        self.gp_weight = float(gp_weight)
        self.wgan_drift = float(wgan_drift)
        self.div_weight = float(div_weight)
        self.div_res = int(div_res)
        self.div_batch = int(div_batch)
        if self.div_weight < 0 or self.div_res < 1 or self.div_batch < 2:
            raise ValueError(f'div_weight must be >= 0, div_res >= 1 and div_batch >= 2, got {div_weight}, '
                             f'{div_res} and {div_batch}')
        self.hooks = hooks
        self.resolution = None  # Progressive growing: current stage resolution (None = full).
        self.fade_alpha = 1.0   # Progressive growing: fade-in of the newest block (1 = fully on).
        self.ada_signs = None   # Optional float64 tensor [sum of sign(D(reals)), count], accumulated for ADA.
        import inspect
        self._mapping_sg3 = 'update_emas' in inspect.signature(G.mapping.forward).parameters
        self._synthesis_kwargs = set(inspect.signature(G.synthesis.forward).parameters)
        self._d_kwargs = set(inspect.signature(D.forward).parameters)

    # ------------------------------------------------------------------------------------------------------------------
    # State that must survive a resume.

    def state_dict(self):
        return {'pl_mean': self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state):
        self.pl_mean.copy_(state['pl_mean'].to(self.device))

    # ------------------------------------------------------------------------------------------------------------------

    def _mapping(self, z, c, update_emas):
        if self._mapping_sg3:
            return self.G.mapping(z, c, update_emas=update_emas)
        return self.G.mapping(z, c, skip_w_avg_update=not update_emas)

    def _wants_features(self):
        return self.hooks is not None and self.hooks.wants_generator_features()

    def _replaces_image(self):
        return self.hooks is not None and self.hooks.replaces_generator_image()

    def run_G(self, z, c, update_emas=False, return_features=False, ws_requires_grad=False, noise_mode=None):
        """z [N, z_dim], c [N, c_dim] -> (img [N, C, R, R], ws [N, num_ws, w_dim], features dict or None).
        img is the image D judges: the synthesis output (faded in while growing), or a plugin's replacement
        (hooks `generator_image`).
        ws_requires_grad: make ws differentiable even when the mapping network is frozen (path length).
        noise_mode: None = the synthesis network's default (random noise), or 'random' | 'const' | 'none'."""
        ws = self._mapping(z, c, update_emas)
        if self.style_mixing_prob > 0:
            with torch.autograd.profiler.record_function('style_mixing'):
                cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, ws.shape[1])
                cutoff = torch.where(torch.rand([], device=ws.device) < self.style_mixing_prob, cutoff,
                                     torch.full_like(cutoff, ws.shape[1]))
                ws[:, cutoff:] = self._mapping(torch.randn_like(z), c, False)[:, cutoff:]
        if ws_requires_grad and not ws.requires_grad:
            ws = ws.detach().requires_grad_(True)
        kwargs = {}
        if 'update_emas' in self._synthesis_kwargs:
            kwargs['update_emas'] = update_emas
        if self.resolution is not None:
            kwargs['max_res'] = self.resolution
        if noise_mode is not None:
            kwargs['noise_mode'] = noise_mode
        fading = self.resolution is not None and self.fade_alpha < 1
        replace = self._replaces_image()
        if return_features or replace:
            kwargs['return_features'] = True
        if fading:
            kwargs['return_prev_img'] = True
        out = self.G.synthesis(ws, **kwargs)
        out = out if isinstance(out, tuple) else (out,)
        features = out[1] if (return_features or replace) else None
        img = out[0]
        if replace:  # A plugin's image (e.g. an FSR head's) is what D judges; the plugin does its own fading.
            img = self.hooks.generator_image(out[0], features, float(self.fade_alpha) if fading else 1.0)
        if fading and img is out[0]:  # No replacement given: the host's own fade-in.
            img = self._fade(out[0], out[-1])
        return img, ws, (features if return_features else None)

    def _fade(self, img, low):
        """Progressive fade-in: blend the newest block's image [N, C, R, R] with the previous stage's image
        [N, C, R/2, R/2] of the same pass, upsampled with the synthesis filter."""
        low = upfirdn2d.upsample2d(low, self.G.synthesis.b4.resample_filter)
        return torch.lerp(low, img, float(self.fade_alpha))

    def run_D(self, img, c, blur_sigma=0, update_emas=False):
        """img [N, C, R, R] -> scores [N, 1]: optional blur, augmentation, then D."""
        blur_size = int(np.floor(blur_sigma * 3))
        if blur_size > 0:
            with torch.autograd.profiler.record_function('blur'):
                f = torch.arange(-blur_size, blur_size + 1, device=img.device).div(blur_sigma).square().neg().exp2()
                img = upfirdn2d.filter2d(img, f / f.sum())
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        kwargs = {}
        if 'update_emas' in self._d_kwargs:
            kwargs['update_emas'] = update_emas
        return self.D(img, c, **kwargs)

    def _blur_sigma(self, cur_nimg):
        if self.blur_fade_kimg > 0:
            return max(1 - cur_nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma
        return 0

    def _g_adv(self, logits):
        if self.loss_type == 'nonsaturating':
            return F.softplus(-logits)
        return -logits

    def _d_fake(self, logits):
        if self.loss_type == 'nonsaturating':
            return F.softplus(logits)
        if self.loss_type == 'hinge':
            return F.relu(1 + logits)
        return logits

    def _d_real(self, logits):
        if self.loss_type == 'nonsaturating':
            return F.softplus(-logits)
        if self.loss_type == 'hinge':
            return F.relu(1 - logits)
        return -logits + self.wgan_drift * logits.square()

    # ------------------------------------------------------------------------------------------------------------------

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg):
        """Compute the loss of `phase` on one chunk and backpropagate it, scaled by `gain` (the phase interval)."""
        if phase not in ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth'):
            raise ValueError(f'unknown phase {phase!r}')
        if self.pl_weight == 0:
            phase = {'Greg': 'none', 'Gboth': 'Gmain'}.get(phase, phase)
        if self.r1_gamma == 0 and self.gp_weight == 0 and not self._hooks_regularise_d():
            phase = {'Dreg': 'none', 'Dboth': 'Dmain'}.get(phase, phase)
        blur_sigma = self._blur_sigma(cur_nimg)
        ctx = dict(phase=phase, real_img=real_img, real_c=real_c, gen_z=gen_z, gen_c=gen_c, gain=gain,
                   cur_nimg=cur_nimg, loss=self)

        # Gmain: make D call fakes real.
        if phase in ('Gmain', 'Gboth'):
            with torch.autograd.profiler.record_function('Gmain_forward'):
                gen_img, gen_ws, feats = self.run_G(gen_z, gen_c, return_features=self._wants_features())
                gen_logits = self.run_D(gen_img, gen_c, blur_sigma=blur_sigma)
                training_stats.report('Loss/scores/fake', gen_logits)
                training_stats.report('Loss/signs/fake', gen_logits.sign())
                loss_Gmain = self._g_adv(gen_logits)
                training_stats.report('Loss/G/loss', loss_Gmain)
                total = loss_Gmain.mean()
                if self.div_weight > 0:
                    k = min(self.div_batch, gen_z.shape[0])
                    div_img, _, _ = self.run_G(gen_z[:k], gen_c[:k], noise_mode='const')
                    total = total + self.diversity_loss(div_img, real_img)
                total = total + self._hook_terms('G', ctx, gen_img=gen_img, gen_ws=gen_ws, gen_features=feats)
            with torch.autograd.profiler.record_function('Gmain_backward'):
                total.mul(gain).backward()

        # Greg: path length regularisation.
        if phase in ('Greg', 'Gboth'):
            with torch.autograd.profiler.record_function('Gpl_forward'):
                batch_size = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
                gen_img, gen_ws, _ = self.run_G(gen_z[:batch_size], gen_c[:batch_size], ws_requires_grad=True)
                pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
                with torch.autograd.profiler.record_function('pl_grads'), \
                        conv2d_gradfix.no_weight_gradients(self.pl_no_weight_grad):
                    pl_grads = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws],
                                                   create_graph=True, only_inputs=True)[0]
                pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
                pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
                self.pl_mean.copy_(pl_mean.detach())
                pl_penalty = (pl_lengths - pl_mean).square()
                training_stats.report('Loss/pl_penalty', pl_penalty)
                loss_Gpl = pl_penalty * self.pl_weight
                training_stats.report('Loss/G/reg', loss_Gpl)
            with torch.autograd.profiler.record_function('Gpl_backward'):
                loss_Gpl.mean().mul(gain).backward()

        # Dmain: fakes look fake.
        loss_Dgen = 0
        if phase in ('Dmain', 'Dboth'):
            with torch.autograd.profiler.record_function('Dgen_forward'):
                with torch.no_grad():
                    gen_img, gen_ws, feats = self.run_G(gen_z, gen_c, update_emas=True,
                                                        return_features=self._wants_features())
                gen_logits = self.run_D(gen_img, gen_c, blur_sigma=blur_sigma, update_emas=True)
                training_stats.report('Loss/scores/fake', gen_logits)
                training_stats.report('Loss/signs/fake', gen_logits.sign())
                loss_Dgen = self._d_fake(gen_logits)
                total = loss_Dgen.mean()
                total = total + self._hook_terms('Dfake', ctx, gen_img=gen_img, gen_ws=gen_ws, gen_features=feats)
            with torch.autograd.profiler.record_function('Dgen_backward'):
                total.mul(gain).backward()

        # Dmain: reals look real; Dreg: R1 / GP on reals.
        if phase in ('Dmain', 'Dreg', 'Dboth'):
            name = {'Dmain': 'Dreal', 'Dreg': 'Dr1', 'Dboth': 'Dreal_Dr1'}[phase]
            with torch.autograd.profiler.record_function(name + '_forward'):
                real_img_tmp = real_img.detach().requires_grad_(phase in ('Dreg', 'Dboth') and self.r1_gamma != 0)
                real_logits = self.run_D(real_img_tmp, real_c, blur_sigma=blur_sigma)
                training_stats.report('Loss/scores/real', real_logits)
                training_stats.report('Loss/signs/real', real_logits.sign())
                if self.ada_signs is not None and phase in ('Dmain', 'Dboth'):
                    with torch.no_grad():
                        self.ada_signs += torch.stack([real_logits.sign().sum().to(torch.float64),
                                                       torch.tensor(float(real_logits.numel()), dtype=torch.float64,
                                                                    device=real_logits.device)])

                total = torch.zeros([], device=real_img.device)
                if phase in ('Dmain', 'Dboth'):
                    loss_Dreal = self._d_real(real_logits)
                    training_stats.report('Loss/D/loss', loss_Dgen + loss_Dreal)
                    total = total + loss_Dreal.mean()
                    total = total + self._hook_terms('Dreal', ctx)

                if phase in ('Dreg', 'Dboth'):
                    if self.r1_gamma != 0:
                        with torch.autograd.profiler.record_function('r1_grads'), \
                                conv2d_gradfix.no_weight_gradients():
                            r1_grads = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp],
                                                           create_graph=True, only_inputs=True)[0]
                        r1_penalty = r1_grads.square().sum([1, 2, 3])
                        loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
                        training_stats.report('Loss/r1_penalty', r1_penalty)
                        training_stats.report('Loss/D/reg', loss_Dr1)
                        total = total + loss_Dr1.mean()
                    if self.gp_weight != 0:
                        total = total + self._gradient_penalty(real_img, real_c, gen_z, gen_c, blur_sigma)
                    total = total + self._hook_terms('Dreg', ctx)
            with torch.autograd.profiler.record_function(name + '_backward'):
                total.mul(gain).backward()

    def diversity_loss(self, gen_img, real_img):
        """gen_img [n, C, R, R], real_img [N, C, R, R] -> scalar div_weight * relu(1 - d_fake / d_real), where d is
        the mean cosine distance between image i and image i + n//2 (N//2 for the reals), each box-downscaled to
        div_res and standardised (module docstring). Zero when either side has fewer than 2 images. Reports
        Loss/G/div_ratio (d_fake / d_real: 1 = fakes as varied as the reals) and Loss/G/div."""
        nf, nr = gen_img.shape[0] // 2, real_img.shape[0] // 2
        if nf == 0 or nr == 0:
            return gen_img.new_zeros([])
        fake = self._div_features(gen_img if gen_img.dtype == torch.float64 else gen_img.float())
        real = self._div_features(real_img.detach().to(fake.dtype))
        d_fake = (fake[:nf] - fake[nf:2 * nf]).square().sum(dim=1).mean() / 2
        d_real = ((real[:nr] - real[nr:2 * nr]).square().sum(dim=1).mean() / 2).clamp_min(1e-8)
        ratio = d_fake / d_real
        loss = F.relu(1 - ratio) * self.div_weight
        training_stats.report('Loss/G/div_ratio', ratio.detach())
        training_stats.report('Loss/G/div', loss.detach())
        return loss

    def _div_features(self, img):
        """img [N, C, R, R] -> [N, C * r * r] unit vectors: box-downscaled to r = min(R, div_res), mean removed."""
        r = img.shape[-1]
        if r > self.div_res:
            if r % self.div_res != 0:
                raise ValueError(f'div_res ({self.div_res}) must divide the image resolution ({r})')
            img = F.avg_pool2d(img, r // self.div_res)
        x = img.flatten(1)
        x = x - x.mean(dim=1, keepdim=True)
        return x / (x.square().sum(dim=1, keepdim=True) + 1e-8).sqrt()

    def _gradient_penalty(self, real_img, real_c, gen_z, gen_c, blur_sigma):
        """WGAN-GP: gp_weight * (|grad_x D(x_hat)| - 1)^2 on x_hat = lerp(real, fake, u), u ~ U(0,1) per sample."""
        with torch.no_grad():
            fake, _, _ = self.run_G(gen_z, gen_c)
        u = torch.rand([real_img.shape[0], 1, 1, 1], device=real_img.device)
        x_hat = torch.lerp(real_img.detach(), fake.detach(), u).requires_grad_(True)
        logits = self.run_D(x_hat, real_c, blur_sigma=blur_sigma)
        grads = torch.autograd.grad(outputs=[logits.sum()], inputs=[x_hat], create_graph=True, only_inputs=True)[0]
        gp = (grads.flatten(1).norm(dim=1) - 1).square()
        training_stats.report('Loss/gp_penalty', gp)
        return gp.mean() * self.gp_weight

    def _hooks_regularise_d(self):
        return self.hooks is not None and self.hooks.has_d_regularisers()

    def _hook_terms(self, where, ctx, **extra):
        """Sum of the named loss terms that plugins contribute at `where` ('G', 'Dfake', 'Dreal', 'Dreg')."""
        if self.hooks is None:
            return 0
        terms = self.hooks.loss_terms(where, dict(ctx, **extra))
        total = 0
        for name, value in terms.items():
            training_stats.report(f'Loss/{name}', value)
            total = total + value.mean()
        return total
