"""The FSR training plugin: wires heads, real pyramid, sparsity, pair discriminators and the stage schedule into the
host's training loop through training/hooks.py.

Per generator pass the loop asks the synthesis network once for its per-resolution hidden features S_r; the heads turn
them into the fake pyramid X_r, the sparsity penalty reads S_r, and the pair discriminators D_r(x_{r/2}, x_r) score
consecutive levels. The real pyramid is built once per real batch (cached for the D main and D regularisation
phases). Loss family follows the host's (`loss.loss_type`); R1 on real pairs in the Dreg phase.

Fine-tuning (`train.py --resume=<pickle>`): the loop builds the heads (`extra_modules`) before it copies the
pickle's weights into G, so a 'torgb'/'identity' initialisation made there would copy the ToRGB layers of a
randomly initialised G. The plugin therefore repeats that initialisation once, at the first hook after the weights
are in place and before the first training step (`on_stage` / `param_lr_multipliers`), from the generator it is
given then, and copies the result into the EMA heads. Heads that were loaded meanwhile are left alone: restored
from this run's snapshot (`load_state_dict` was called) or copied from the pickle's own FSR heads (their tensors
changed since construction; the EMA heads then start from those loaded heads).
"""

import inspect

import click
import torch
import torch.nn.functional as F

from torch_utils import misc
from torch_utils import training_stats
from torch_utils.ops import upfirdn2d
from training import hooks as hooks_lib
from training import networks

from . import atom_centring
from . import amplitude_matching
from . import atom_reconstruction
from . import channel_restart
from . import level_consistency
from . import fsr_metrics
from . import patch_moment_loss
from . import patch_swd
from . import pyramid as pyramid_lib
from .heads import OutputHeads
from .options import FSRConfig
from .pair_disc import PairDiscriminators
from .pair_disc import pair_r1_penalty
from .running_moments import RunningMoments
from .schedule import FSRSchedule
from .sparsity import SparsityPenalty
from . import upsampling_disc
from .wta import painted_mass
from .wta import wta_mask

UPSAMPLING_DISCRIMINATOR = f'{upsampling_disc.__name__}.UpsamplingDiscriminator'  # class_name for D_kwargs

MISSING_CANDIDATES = 512  # --fsr-top-restart-atom=missing: real patches drawn per restart event

FSR_METRICS = ['fsr_sparsity', 'fsr_moment_gap', 'fsr_feature_sim', 'fsr_swd_levels', 'fsr_level_consistency']


class FSRPlugin(hooks_lib.TrainingPlugin):
    """TrainingPlugin of Forward Super-Resolution. cfg: FSRConfig; r1_gamma: the host's R1 weight (default for the
    pair discriminators); schedule: an FSRSchedule or None."""

    name = 'fsr'

    def __init__(self, cfg, r1_gamma=0.0, schedule=None, seed=0):
        self.cfg = cfg
        self.seed = int(seed)
        self.pair_r1 = float(cfg.pair_r1) if cfg.pair_r1 is not None else float(r1_gamma)
        self.schedule = schedule
        self.heads = None
        self.heads_ema = None
        self.pairs = None
        self.sparsity = None
        self.swd_weights = {}
        self.swd_image_weights = {}
        self.moment_weights = {}
        self.moment_late_weights = {}  # --fsr-moments-late: the moment weights from --fsr-moments-late-kimg on
        self.contrast_weights = {}
        self.image_moment_weights = {}
        self.mean_image_weights = {}
        self.consistency_weights = {}
        self._real_cache = (None, None, None)
        self._fake_cache = []  # --fsr-main-d=head: [(features dict of a generator pass, its head pyramid)], last 2
        self.G = None
        self.D = None
        self._heads_as_built = None   # CPU copies of the heads' tensors at construction, until _finish_head_init.
        self._heads_restored = False  # True once load_state_dict ran (continuing a run: heads come from a snapshot).
        self.usage = None             # --fsr-top-restart: channel_restart.ChannelUsage of the top level
        self._restart = dict(next_nimg=0, total=0, used=0)
        self._last_real = None        # --fsr-top-restart-atom=data|missing: the last real batch seen
        self._cur_nimg = 0            # images shown before the coming step (--fsr-head-offset-kimg)
        # --fsr-moments-avg: running fake and real patch moments per level
        self.running_moments = RunningMoments(cfg.moments_avg_kimg) if cfg.moments_avg_kimg > 0 else None

    # ------------------------------------------------------------------------------------------------------------------

    def extra_modules(self, G, D, training_set, device):
        cfg = self.cfg
        self.G, self.D = G, D
        self.heads = OutputHeads.for_generator(G, kernel_size=cfg.head_kernel, unit_norm_atoms=cfg.unit_atoms,
                                               init=cfg.head_init, style=cfg.head_style, top_wta=cfg.top_wta,
                                               head_gain=cfg.head_gain, top_wta_jitter=cfg.top_wta_jitter,
                                               top_wta_straight_through=cfg.top_wta_st, top_wta_min=cfg.top_wta_min,
                                               offset_gains=_level_weights(cfg.head_offset,
                                                                           list(G.synthesis.block_resolutions)))
        self._hold_offsets()
        self._heads_as_built = _tensor_copies(self.heads)
        resolutions = list(G.synthesis.block_resolutions)
        modules = {'heads': hooks_lib.ExtraModule(self.heads, side='G', lr_multiplier=cfg.head_lr)}
        if cfg.pair:
            self.pairs = PairDiscriminators(resolutions, G.img_channels, channels=cfg.pair_channels,
                                            depth=cfg.pair_depth, mbstd_group_size=cfg.pair_mbstd,
                                            global_channels=cfg.pair_global)
            modules['pairs'] = hooks_lib.ExtraModule(self.pairs, side='D')
        if cfg.sparsity != 'none':
            weights = cfg.sparsity_weight if isinstance(cfg.sparsity_weight, dict) else \
                {r: float(cfg.sparsity_weight) for r in resolutions}
            if any(w > 0 for w in weights.values()):
                self.sparsity = SparsityPenalty(weights, mode=cfg.sparsity, patch_size=cfg.sparsity_patch,
                                                target=cfg.sparsity_target)
        self.swd_weights = _level_weights(cfg.swd_weight, [r for r in resolutions if r >= cfg.swd_patch])
        self.swd_image_weights = _level_weights(cfg.swd_image_weight, resolutions)
        self.moment_weights = _level_weights(cfg.moments_weight, [r for r in resolutions if r >= cfg.moments_patch])
        self.moment_late_weights = _level_weights(cfg.moments_late_weight,
                                                  [r for r in resolutions if r >= cfg.moments_patch])
        self.contrast_weights = _level_weights(cfg.contrast_weight,
                                               [r for r in resolutions if r >= cfg.moments_patch])
        self.image_moment_weights = _level_weights(cfg.image_moments_weight, resolutions)
        self.mean_image_weights = _level_weights(cfg.mean_image_weight, resolutions)
        self.consistency_weights = _level_weights(cfg.consistency_weight, resolutions[1:])
        if cfg.top_restart > 0:
            self.usage = channel_restart.ChannelUsage(self.heads.head(resolutions[-1]).in_channels, window=cfg.top_wta,
                                                      min_value=cfg.top_wta_min)
            self._restart['next_nimg'] = self._restart_interval()
        return modules

    def set_ema_modules(self, ema_modules):
        self.heads_ema = ema_modules.get('heads')

    def state_dict(self):
        state = {}
        if self.cfg.head_offset_kimg > 0:
            state['cur_nimg'] = int(self._cur_nimg)
        if self.usage is not None:
            state['restart'] = dict(self._restart, usage=self.usage.state_dict())
        if self.running_moments is not None:
            state['running_moments'] = self.running_moments.state_dict()
        return state

    def snapshot_extras(self):
        """--fsr-main-d=head: the snapshot names its image source, the top level of the EMA heads
        (generate.py then writes those images, not G's untrained ToRGB output)."""
        return {'image_source': f'{self.name}.heads'} if self.cfg.main_d == 'head' else {}

    def load_state_dict(self, state):
        # The heads, pair discriminators and their optimiser state are restored by the host.
        self._heads_restored = True
        restart = (state or {}).get('restart')
        if self.usage is not None and restart is not None:
            self.usage.load_state_dict(restart['usage'])
            self._restart = {k: int(restart[k]) for k in ('next_nimg', 'total', 'used')}
        if self.running_moments is not None:
            self.running_moments.load_state_dict((state or {}).get('running_moments'))
        if self.cfg.head_offset_kimg > 0:
            self._cur_nimg = int((state or {}).get('cur_nimg', 0))
            self._hold_offsets()

    def _hold_offsets(self):
        """--fsr-head-offset-kimg: the heads' offsets are held (no gradient) before that many kimg."""
        if self.heads is not None:
            self.heads.hold_offsets(self._cur_nimg < self.cfg.head_offset_kimg * 1000)

    # ------------------------------------------------------------------------------------------------------------------
    # --fsr-top-restart

    def _restart_interval(self):
        return max(int(round(self.cfg.top_restart * 1000)), 1)

    def after_step(self, step):
        """Release the heads' offsets once --fsr-head-offset-kimg is reached; --fsr-top-restart: at every interval,
        restart the top level's dead channels (fsr_plugin.channel_restart) from the usage measured since the last
        restart."""
        if self.cfg.head_offset_kimg > 0:
            self._cur_nimg = int(step['cur_nimg'])
            self._hold_offsets()
        if self.usage is None or step['cur_nimg'] < self._restart['next_nimg']:
            return
        cur_nimg = int(step['cur_nimg'])
        while self._restart['next_nimg'] <= cur_nimg:
            self._restart['next_nimg'] += self._restart_interval()
        cfg = self.cfg
        shares = self.usage.shares()
        if float(shares.sum()) <= 0:
            return  # the top level has not been trained since the last event (an earlier layer-wise stage)
        self._restart['used'] = int((shares >= cfg.top_restart_share).sum())
        pairs = channel_restart.choose_restarts(shares, cfg.top_restart_share, cfg.top_restart_max)
        self.usage.reset()
        if not pairs:
            return
        R = self.heads.resolutions[-1]
        gen = channel_restart.restart_generator(self.seed, cur_nimg)
        patches = None
        head = step['modules']['heads'].head(R)
        if cfg.top_restart_atom in ('data', 'missing'):
            if self._last_real is None or self._last_real.shape[-1] != R:
                return
            num = len(pairs) if cfg.top_restart_atom == 'data' else MISSING_CANDIDATES
            patches = channel_restart.real_patches(self._last_real, head.kernel_size, head.bias, num, gen)
            if cfg.top_restart_atom == 'missing':
                atoms = head.effective_weight().detach().transpose(0, 1)
                pairs, patches = channel_restart.missing_patch_pairs(shares, cfg.top_restart_share,
                                                                     cfg.top_restart_max, atoms, patches)
                if not pairs:
                    return
        ema_heads = step['ema_modules'].get('heads')
        channel_restart.restart_channels(
            pairs, getattr(step['G'].synthesis, f'b{R}').conv1, head, optimizer=step['optimizers']['G'],
            conv_ema=getattr(step['G_ema'].synthesis, f'b{R}').conv1,
            head_ema=ema_heads.head(R) if ema_heads is not None else None,
            mode='split' if cfg.top_restart_atom == 'split' else 'data',
            patches=patches, generator=gen)
        self._restart['total'] += len(pairs)
        _log(f'FSR: kimg {cur_nimg / 1000:.1f}: {self._restart["used"]} top-level channels in use; restarted '
             + ', '.join(f'{dead} from {donor}' for dead, donor in pairs))

    def on_tick(self, tick_info):
        if self.usage is None:
            return {}
        return {'top_used_channels': self._restart['used'], 'top_restarts': self._restart['total']}

    def on_stage(self, stage, G, D, modules):
        self._finish_head_init(G)

    def _finish_head_init(self, G):
        """Once, before the first training step and after the loop loaded any pretrained weights: initialise the
        heads from G ('torgb'/'identity') unless they were loaded, and make the EMA heads equal to the heads (unless
        the pickle gave their own EMA copy: fine-tuning an FSR pickle starts them from its EMA heads, as G_ema)."""
        if self._heads_as_built is None or self.heads is None:
            return
        as_built, self._heads_as_built = self._heads_as_built, None
        if self._heads_restored:
            return
        loaded = not _tensors_equal(self.heads, as_built)
        if loaded and self.heads_ema is not None and not _tensors_equal(self.heads_ema, as_built):
            _log('FSR: output heads and their EMA copy loaded with the network')
            return
        if loaded:
            _log('FSR: output heads loaded with the network; EMA heads start from them')
        elif self.cfg.head_init != 'random':
            copied = self.heads.init_from_generator(G, mode=self.cfg.head_init, style=self.cfg.head_style)
            what = f'ToRGB ({self.cfg.head_style} style) at {copied}' if copied else 'no ToRGB'
            if self.cfg.head_init == 'identity':
                what += f'; head {self.heads.resolutions[-1]} residual, starts equal to the image'
            _log(f'FSR: output heads initialised from the generator: {what}')
        else:
            return
        if self.heads_ema is not None:
            misc.copy_params_and_buffers(self.heads, self.heads_ema, require_all=True)

    def wants_generator_features(self):
        return True

    def has_d_regularisers(self):
        return self.pairs is not None and self.pair_r1 > 0

    def replaces_generator_image(self):
        return self.cfg.main_d == 'head'

    def generator_image(self, img, features, fade_alpha, ema=False):
        """--fsr-main-d=head: the top head's image X_R [N, C, R, R] float32 of this pass (R = img's resolution, the
        current stage's while growing), faded in from the head image below (upsampled with the synthesis filter) as
        the host fades its own images. A training pass's pyramid is kept for the loss terms of the same pass;
        ema=True (snapshot grids of G_ema) uses the EMA heads and keeps nothing."""
        if self.cfg.main_d != 'head':
            return None
        heads = self.heads_ema if (ema and self.heads_ema is not None) else self.heads
        pyr = heads({r: f.float() for r, f in features.items()}, img=img)
        if not ema:
            # Two entries: the G main phase runs a second pass (the host's diversity term) before its loss terms.
            self._fake_cache = self._fake_cache[-1:] + [(features, pyr)]
        r = img.shape[-1]
        x = pyr[r]
        if fade_alpha < 1 and r // 2 in pyr:
            low = upfirdn2d.upsample2d(pyr[r // 2], self.G.synthesis.b4.resample_filter)
            x = torch.lerp(low, x, float(fade_alpha))
        return x

    def _fake_pyramid(self, feats, ctx):
        """The head pyramid {r: X_r} of the generator pass in ctx: the one `generator_image` built for it, else
        computed here from feats (float32 features) and the pass's image."""
        for i, (cached_feats, pyr) in enumerate(self._fake_cache):
            if cached_feats is ctx.get('gen_features'):
                del self._fake_cache[i]
                return pyr
        if self.cfg.main_d == 'head' and self.heads.residual_final:
            raise RuntimeError('FSR --fsr-main-d=head: no head pyramid was kept for this generator pass, and the '
                               'residual top head needs the generator\'s own image')
        return self.heads(feats, img=ctx['gen_img'])

    def param_lr_multipliers(self, side, module, modules, stage):
        if side == 'G':
            self._finish_head_init(module)
        if self.schedule is None or side != 'G' or stage is None:
            return {}
        return self.schedule.lr_multipliers(module, self.heads, stage)

    # ------------------------------------------------------------------------------------------------------------------

    def _real_levels_like(self, fake_pyr, ctx):
        """The step's real pyramid at the levels of fake_pyr that the real batch reaches ({r: [N, C, r, r]})."""
        real_img = ctx['real_img']
        return self._real_pyramid(real_img, [r for r in fake_pyr if r <= real_img.shape[-1]])

    def _real_pyramid(self, real_img, resolutions):
        """The real pyramid of this real batch, built once for all phases of a step. The cache holds the batch tensor
        itself and matches by identity: a key of address and shape could match a new batch that the allocator put
        where a freed one was."""
        cached_img, cached_res, pyr = self._real_cache
        if cached_img is not real_img or cached_res != tuple(resolutions):
            pyr = pyramid_lib.build_pyramid(real_img.detach(), resolutions, filter=self.cfg.pyramid_filter)
            self._real_cache = (real_img, tuple(resolutions), pyr)
        return pyr

    @staticmethod
    def _adv(loss_type, scores, real):
        """Per-sample adversarial term of the host's loss family: real=True: 'make this look real'."""
        if loss_type == 'nonsaturating':
            return F.softplus(-scores) if real else F.softplus(scores)
        if loss_type == 'hinge':
            return F.relu(1 - scores) if real else F.relu(1 + scores)
        return -scores if real else scores

    def loss_terms(self, where, ctx):
        cfg = self.cfg
        loss = ctx['loss']
        terms = {}
        if where in ('G', 'Dfake'):
            feats = ctx.get('gen_features') or {}
            if not feats:
                return {}
            grad = torch.enable_grad() if where == 'G' else torch.no_grad()
            with grad:
                # One float32 copy of the (possibly reduced-precision) features serves the heads and the sparsity
                # penalty (both work in float32); float32 features pass through as they are.
                feats = {r: f.float() for r, f in feats.items()}
                fake_pyr = self._fake_pyramid(feats, ctx)
            if where == 'G':
                R = self.heads.resolutions[-1]
                if self.usage is not None and R in feats:
                    self.usage.update(feats[R])
                    self._last_real = ctx.get('real_img')
                if self.sparsity is not None:
                    penalties, report = self.sparsity(feats)
                    for name, value in report.items():
                        training_stats.report(f'FSR/{name}', value)
                    if penalties:
                        terms['sparsity'] = sum(penalties.values())
                if cfg.atom_centre > 0:
                    penalty = atom_centring.centring_penalty(self.heads.atoms(R))
                    training_stats.report('FSR/atom_centre', penalty)
                    terms['atom_centre'] = cfg.atom_centre * penalty
                if cfg.atom_recon > 0:
                    terms.update(self._atom_recon_terms(ctx, feats))
                if self.swd_weights or self.swd_image_weights:
                    terms.update(self._swd_terms(fake_pyr, ctx))
                moment_weights = self.moment_weights_at(ctx.get('cur_nimg', 0))
                if moment_weights:
                    terms.update(self._moment_terms(fake_pyr, ctx, moment_weights))
                if self.contrast_weights:
                    terms.update(self._contrast_terms(fake_pyr, ctx))
                if self.image_moment_weights:
                    terms.update(self._image_moment_terms(fake_pyr, ctx))
                mean_image_weights = self.mean_image_weights_at(ctx.get('cur_nimg', 0))
                if mean_image_weights:
                    terms.update(self._mean_image_terms(fake_pyr, ctx, mean_image_weights))
                if self.consistency_weights:
                    terms.update(self._consistency_terms(fake_pyr, ctx))
                if self.pairs is not None:
                    scores = self.pairs(fake_pyr)
                    if scores:
                        adv = [self._adv(loss.loss_type, s, real=True).squeeze(1) for s in scores.values()]
                        terms['pair_G'] = cfg.pair_weight * sum(adv)
            elif self.pairs is not None:
                scores = self.pairs({r: x.detach() for r, x in fake_pyr.items()})
                if scores:
                    adv = [self._adv(loss.loss_type, s, real=False).squeeze(1) for s in scores.values()]
                    for r, s in scores.items():
                        training_stats.report(f'FSR/pair_scores_fake_r{r}', s)
                    terms['pair_Dfake'] = cfg.pair_weight * sum(adv)
        elif where == 'Dreal' and self.pairs is not None:
            real_img = ctx['real_img']
            resolutions = [r for r in self.heads.resolutions if r <= real_img.shape[-1]]
            scores = self.pairs(self._real_pyramid(real_img, resolutions))
            if scores:
                for r, s in scores.items():
                    training_stats.report(f'FSR/pair_scores_real_r{r}', s)
                adv = [self._adv(loss.loss_type, s, real=True).squeeze(1) for s in scores.values()]
                terms['pair_Dreal'] = cfg.pair_weight * sum(adv)
        elif where == 'Dreg' and self.pairs is not None and self.pair_r1 > 0:
            real_img = ctx['real_img']
            resolutions = [r for r in self.heads.resolutions if r <= real_img.shape[-1]]
            pyr = self._real_pyramid(real_img, resolutions)
            penalties = []
            for r in self.pairs.levels:
                if r in pyr and r // 2 in pyr:
                    x_lo = pyr[r // 2].detach().requires_grad_(True)
                    x_hi = pyr[r].detach().requires_grad_(True)
                    penalty = pair_r1_penalty(self.pairs.block(r)(x_lo, x_hi), [x_lo, x_hi])
                    training_stats.report(f'FSR/pair_r1_r{r}', penalty)
                    penalties.append(penalty)
            if penalties:
                terms['pair_r1'] = sum(penalties) * (self.pair_r1 / 2) * cfg.pair_weight
        return terms

    def _swd_terms(self, fake_pyr, ctx):
        """--fsr-swd / --fsr-swd-image: {'swd': sum over levels of weight * patch sliced-Wasserstein loss,
        'swd_image': the same on whole images} for the G phase."""
        real_pyr = self._real_levels_like(fake_pyr, ctx)
        seed = int(ctx.get('cur_nimg', 0))
        terms = {}
        for name, weights, patch, pairs in (('swd', self.swd_weights, self.cfg.swd_patch, self.cfg.swd_pairs),
                                            ('swd_image', self.swd_image_weights, 0, False)):
            if not weights:
                continue
            losses = patch_swd.level_swd_losses(fake_pyr, real_pyr, weights, patch_size=patch,
                                                num_dirs=self.cfg.swd_dirs, seed=seed, pairs=pairs,
                                                unbiased=self.cfg.swd_unbiased)
            for r, (_, value) in losses.items():
                training_stats.report(f'FSR/{name}_r{r}', value)
            if losses:
                terms[name] = sum(weighted for weighted, _ in losses.values())
        return terms

    def _atom_recon_terms(self, ctx, feats):
        """--fsr-atom-recon: {'atom_recon': weight * 0.5 squared residual per image} of the first
        --fsr-atom-recon-images real images at the top head's resolution, sparse-coded in the head's unit-norm atoms
        (gradient to the atoms' directions only); with --fsr-atom-recon-used=S only the atoms of channels that paint
        at least S of the top level in this pass's fake batch (feats: {r: float32 features}); nothing while the real
        images are below that resolution (an earlier growing stage). Logs FSR/atom_recon_mse,
        FSR/atom_recon_density, FSR/atom_recon_explained and FSR/atom_recon_atoms (atoms coded with). With
        --fsr-top-amp also {'top_amp': ...} on the same codes (`_top_amp_loss`)."""
        cfg = self.cfg
        real_img = ctx.get('real_img')
        R = self.heads.resolutions[-1]
        if real_img is None or real_img.shape[-1] != R:
            return {}
        pyr = self._real_pyramid(real_img, [r for r in self.heads.resolutions if r <= real_img.shape[-1]])
        images = pyr[R][:cfg.atom_recon_images].detach()
        head = self.heads.head(R)
        offset = head.effective_offset()
        if offset is not None:
            images = images - offset.detach()  # it paints conv(codes) + bias + offset (--fsr-head-offset), both fixed here
        atoms = None
        if cfg.atom_recon_used > 0 and R in feats:
            mass = painted_mass(feats[R], head.wta, min_value=getattr(head, 'wta_min', 0.0))  # no jitter: no draws
            atoms = (mass >= cfg.atom_recon_used * mass.sum().clamp_min(1e-30)).to(feats[R].device)
            if not bool(atoms.any()):
                return {}
        weight = head.effective_weight()
        loss, stats, coded = atom_reconstruction.reconstruction_loss(images, weight, head.bias, head.padding,
                                                                     cfg.atom_recon_lam, iters=cfg.atom_recon_iters,
                                                                     atoms=atoms, return_codes=True)
        stats['atoms'] = torch.tensor(float(head.in_channels if atoms is None else int(atoms.sum())))
        for name, value in stats.items():
            training_stats.report(f'FSR/atom_recon_{name}', value)
        terms = {'atom_recon': cfg.atom_recon * loss}
        if cfg.top_amp > 0 and R in feats:
            terms['top_amp'] = cfg.top_amp * self._top_amp_loss(feats[R], head, weight, coded, ctx)
        return terms

    def _top_amp_loss(self, features, head, weight, coded, ctx):
        """--fsr-top-amp: the squared 1-D Wasserstein-2 distance between the amplitudes of the top level's painted
        sites (features [N, C, R, R] with gradient, kept by the head's selection drawn afresh from a generator seeded
        by the step's image count, times the norms of `weight`'s atoms) and the real coded sites' (coded: the
        reconstruction term's codes, refitted on their support; the norm of what each coded site paints, sites above
        --fsr-top-amp-min). Logs FSR/top_amp and the 10% and 50% quantiles FSR/top_amp_{fake,real}_p{10,50}."""
        cfg = self.cfg
        codes = coded['codes']
        if cfg.top_amp_refit > 0:
            codes = amplitude_matching.refit_on_support(coded['target'], codes, coded['unit'], head.padding,
                                                        coded['step'], iters=cfg.top_amp_refit)
        real = amplitude_matching.site_amplitudes(codes, cfg.top_amp_min, weight=coded['unit'])
        gen = torch.Generator(device=features.device).manual_seed(int(ctx.get('cur_nimg', 0)) + 1)
        mask = wta_mask(features.detach(), head.wta, getattr(head, 'wta_jitter', 0.0), gen,
                        getattr(head, 'wta_min', 0.0))
        norms = weight.square().sum(dim=[0, 2, 3]).sqrt()
        fake = amplitude_matching.painted_amplitudes(features, mask, norms)
        value = amplitude_matching.quantile_matching_loss(fake, real)
        training_stats.report('FSR/top_amp', value)
        for name, sample in (('fake', fake.detach()), ('real', real)):
            if sample.numel():
                q = torch.quantile(sample.float(), torch.tensor([0.1, 0.5], device=sample.device))
                training_stats.report(f'FSR/top_amp_{name}_p10', q[0])
                training_stats.report(f'FSR/top_amp_{name}_p50', q[1])
        return value

    def moment_weights_at(self, cur_nimg):
        """{res: weight} of the patch-moment loss after cur_nimg training images: --fsr-moments, replaced by
        --fsr-moments-late once cur_nimg >= --fsr-moments-late-kimg * 1000 (when that option is given)."""
        if self.moment_late_weights and cur_nimg >= self.cfg.moments_late_kimg * 1000:
            return self.moment_late_weights
        return self.moment_weights

    def _moment_terms(self, fake_pyr, ctx, weights):
        """--fsr-moments: {'moments': sum over levels of weight * (patch mean term + covariance term)} for the G
        phase, weights {res: w}; logs FSR/moments_mean_r<r> and FSR/moments_cov_r<r> (unweighted)."""
        real_pyr = self._real_levels_like(fake_pyr, ctx)
        if self.running_moments is not None:
            num_images = next(iter(fake_pyr.values())).shape[0]
            losses = self.running_moments.level_losses(fake_pyr, real_pyr, weights, num_images,
                                                       patch_size=self.cfg.moments_patch, pairs=self.cfg.moments_pairs)
        else:
            losses = patch_moment_loss.level_moment_losses(fake_pyr, real_pyr, weights,
                                                           patch_size=self.cfg.moments_patch,
                                                           pairs=self.cfg.moments_pairs,
                                                           unbiased=self.cfg.moments_unbiased)
        return _report_level_terms('moments', losses, ('moments_mean', 'moments_cov'))

    def _contrast_terms(self, fake_pyr, ctx):
        """--fsr-contrast: {'contrast': sum over levels of weight * squared relative patch-variance mismatch} for the
        G phase; logs FSR/contrast_r<r> (unweighted) and FSR/contrast_ratio_r<r> (the batch's fake / real trace)."""
        real_pyr = self._real_levels_like(fake_pyr, ctx)
        losses = patch_moment_loss.level_contrast_losses(fake_pyr, real_pyr, self.contrast_weights,
                                                         patch_size=self.cfg.moments_patch,
                                                         unbiased=self.cfg.moments_unbiased)
        return _report_level_terms('contrast', losses, ('contrast', 'contrast_ratio'))

    def _image_moment_terms(self, fake_pyr, ctx):
        """--fsr-image-moments: {'image_moments': sum over levels of weight * (mean term + covariance term) of the
        images' mean colours} for the G phase; logs FSR/image_mean_r<r> and FSR/image_cov_r<r> (unweighted)."""
        real_pyr = self._real_levels_like(fake_pyr, ctx)
        losses = patch_moment_loss.level_image_mean_losses(fake_pyr, real_pyr, self.image_moment_weights,
                                                           unbiased=self.cfg.moments_unbiased)
        return _report_level_terms('image_moments', losses, ('image_mean', 'image_cov'))

    def mean_image_weights_at(self, cur_nimg):
        """{res: weight} of the mean-image loss after cur_nimg training images: the --fsr-mean-image levels whose
        start (--fsr-mean-image-kimg: one number, or per level with unnamed levels from 0) has been reached."""
        start = self.cfg.mean_image_kimg
        return {r: w for r, w in self.mean_image_weights.items()
                if cur_nimg >= (start.get(r, 0.0) if isinstance(start, dict) else start) * 1000}

    def _mean_image_terms(self, fake_pyr, ctx, weights):
        """--fsr-mean-image: {'mean_image': sum over levels of weight * the batch mean images' mismatch} for the G
        phase (from --fsr-mean-image-kimg on); logs FSR/mean_image_r<r> (unweighted)."""
        real_pyr = self._real_levels_like(fake_pyr, ctx)
        losses = patch_moment_loss.level_mean_image_losses(fake_pyr, real_pyr, weights,
                                                           unbiased=self.cfg.moments_unbiased)
        return _report_level_terms('mean_image', losses, ('mean_image',))

    def _consistency_terms(self, fake_pyr, ctx):
        """--fsr-consistency: {'consistency': sum over levels r of weight * |down(x_r) - x_{r/2}|^2 / the real level
        r/2's pixel variance} for the G phase; logs FSR/consistency_r<r> (unweighted; about 2 for unrelated levels)."""
        real_pyr = self._real_levels_like(fake_pyr, ctx)
        losses = level_consistency.level_consistency_losses(fake_pyr, real_pyr, self.consistency_weights,
                                                            filter=self.cfg.pyramid_filter,
                                                            detach_lower=self.cfg.consistency_detach,
                                                            mode=self.cfg.consistency_mode)
        return _report_level_terms('consistency', losses, ('consistency',))

    # ------------------------------------------------------------------------------------------------------------------

    def pyramid_fn(self, G, z, c, **G_kwargs):
        """Per-resolution outputs of G through the EMA heads: {r: X_r}. Used by metrics and generate.py."""
        heads = self.heads_ema if self.heads_ema is not None else self.heads
        G_kwargs = {k: v for k, v in G_kwargs.items() if k in ('noise_mode', 'force_fp32', 'truncation_psi')}
        psi = G_kwargs.pop('truncation_psi', 1)
        ws = G.mapping(z, c, truncation_psi=psi)
        img, feats = G.synthesis(ws, return_features=True, **G_kwargs)
        return heads({r: f.float() for r, f in feats.items()}, img=img)

    def register_metrics(self, register_metric):
        context = fsr_metrics.FSRMetricContext(
            pyramid_fn=self.pyramid_fn, get_D=lambda: self.D,
            head_atoms_fn=lambda G, r: self._head_atoms(r),
            relu_resolutions=tuple(self.heads.resolutions) if self.cfg.relu else ())
        fsr_metrics.register_fsr_metrics(register_metric, context)

    def _head_atoms(self, r):
        heads = self.heads_ema if self.heads_ema is not None else self.heads
        if heads is None or r not in heads.resolutions:
            return None
        return heads.atoms(r).detach().cpu()


def _tensor_copies(module):
    """{name: CPU copy} of every parameter and buffer of module."""
    return {name: t.detach().to('cpu', copy=True) for name, t in misc.named_params_and_buffers(module)}


def _tensors_equal(module, copies):
    """True if every parameter and buffer of module equals its copy in `copies` (same names, bitwise)."""
    current = dict(misc.named_params_and_buffers(module))
    return current.keys() == copies.keys() and all(torch.equal(current[n].detach().cpu(), copies[n]) for n in copies)


def _log(msg):
    """Print once per job (rank 0 when torch.distributed is running)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
            torch.distributed.get_rank() == 0:
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Module-level entry points used by train.py (listed in plugins.txt).

def make_schedule(cfg, G_kwargs_resolution):
    """FSRSchedule for --fsr-schedule=layerwise, else None. G_kwargs_resolution: the data resolution."""
    if cfg.schedule == 'none':
        return None
    resolutions = []
    r = 4
    while r <= G_kwargs_resolution:
        resolutions.append(r)
        r *= 2
    start = cfg.start_res if cfg.start_res is not None else min(8, G_kwargs_resolution)
    num_stages = len([x for x in resolutions if x >= start])
    if cfg.stage_kimg is None:
        raise ValueError('--fsr-schedule=layerwise needs --fsr-stage-kimg')
    stage_kimg = cfg.stage_kimg if isinstance(cfg.stage_kimg, list) else [cfg.stage_kimg] * (num_stages - 1)
    return FSRSchedule(resolutions, stage_kimg, fade_kimg=cfg.fade_kimg, policy=cfg.policy,
                       finetune_lr_mult=cfg.finetune_lr, start_res=start)


def update_training_options(c, options):
    """Adjust train.py's options for FSR: ReLU synthesis layers, the stage schedule (host growing, skip D), and the
    diagnostics metrics. Nothing changes when --fsr is off."""
    cfg = FSRConfig.from_options(options)
    if not cfg.enabled:
        return
    fine_tuning = c.get('resume_pkl') is not None
    if cfg.top_wta % 2 == 0 and cfg.top_wta != 0:
        raise click.UsageError(f'--fsr-top-wta must be 0 (off) or odd (the suppression window), got {cfg.top_wta}')
    if cfg.top_restart > 0 and (cfg.top_wta < 1 or cfg.main_d != 'head'):
        raise click.UsageError(f'--fsr-top-restart needs --fsr-top-wta >= 1 (it restarts channels that do not win '
                               f'the selection) and --fsr-main-d=head (it changes channels that G\'s own image '
                               f'sums), got --fsr-top-wta={cfg.top_wta} --fsr-main-d={cfg.main_d}')
    if cfg.atom_centre > 0 and cfg.head_kernel < 2:
        raise click.UsageError(f'--fsr-atom-centre needs atoms with a window (--fsr-head-kernel >= 2), got '
                               f'--fsr-head-kernel={cfg.head_kernel}')
    if cfg.atom_recon > 0 and cfg.head_init == 'identity':
        raise click.UsageError('--fsr-atom-recon codes real images in the top head\'s atoms alone, but '
                               '--fsr-head-init=identity makes the top head a residual on the generator\'s image')
    if cfg.top_amp > 0 and (cfg.atom_recon <= 0 or cfg.top_wta < 1):
        raise click.UsageError(f'--fsr-top-amp matches the top level\'s painted sites against the real images\' codes '
                               f'of --fsr-atom-recon, so it needs --fsr-atom-recon > 0 and --fsr-top-wta >= 1 (sites '
                               f'to match), got --fsr-atom-recon={cfg.atom_recon} --fsr-top-wta={cfg.top_wta}')
    if cfg.top_wta_min > 0 and cfg.top_wta < 1:
        raise click.UsageError(f'--fsr-top-wta-min needs --fsr-top-wta >= 1 (a selection to threshold), got '
                               f'--fsr-top-wta={cfg.top_wta}')
    if cfg.top_wta_st > 0 and cfg.top_wta < 1:
        raise click.UsageError(f'--fsr-top-wta-st needs --fsr-top-wta >= 1 (a selection with losers), got '
                               f'--fsr-top-wta={cfg.top_wta}')
    if cfg.top_wta_jitter > 0 and cfg.top_wta < 3:
        raise click.UsageError(f'--fsr-top-wta-jitter needs --fsr-top-wta >= 3 (a suppression window), got '
                               f'--fsr-top-wta={cfg.top_wta}')
    _check_level_loss_options(cfg, c.training_set_kwargs.resolution)
    if cfg.main_d == 'head':
        print('FSR --fsr-main-d=head: the main discriminator judges the top head\'s image; the generator\'s own '
              '(ToRGB) image is not trained. Snapshots name the heads as their image source (generate.py writes the '
              'top head\'s images, and the host metrics score them; --g-image gives G\'s own).')
    if cfg.relu:
        pretrained_act = c.G_kwargs.synthesis_kwargs.get('activation',
                                                         _default_argument(networks.SynthesisLayer, 'activation'))
        if fine_tuning and pretrained_act != 'relu':
            print(f'Note: --fsr-relu=1 changes the activation of the generator from {c.resume_pkl}; its starting '
                  f'images differ from the pretrained ones')
        c.G_kwargs.synthesis_kwargs.activation = 'relu'
    schedule = make_schedule(cfg, c.training_set_kwargs.resolution)
    if schedule is not None:
        c.growing_kwargs = dict(schedule.growing_kwargs())
        if fine_tuning:
            _fine_tuning_architecture(c, schedule)
        else:
            c.D_kwargs.architecture = 'skip'
            c.G_kwargs.synthesis_kwargs.setdefault('architecture', 'skip')
    if cfg.diagnostics:
        c.metrics = list(c.metrics) + [m for m in FSR_METRICS if m not in c.metrics]
    c.desc += '-fsr'


def _report_level_terms(name, losses, stat_names):
    """A per-level G loss's result {r: (weighted loss, stat_1, ..., stat_k)} -> {name: sum of the weighted losses}
    ({} without levels), after reporting stat_i of every level as FSR/<stat_names[i]>_r<r>."""
    for r, (_, *stats) in losses.items():
        for stat_name, value in zip(stat_names, stats, strict=True):
            training_stats.report(f'FSR/{stat_name}_r{r}', value)
    return {name: sum(terms[0] for terms in losses.values())} if losses else {}


def _level_weights(weight, resolutions):
    """A per-level option's value (float for every level, or {res: w}) -> {res: w} of the levels with w > 0."""
    if isinstance(weight, dict):
        return {r: float(w) for r, w in weight.items() if w > 0}
    return {r: float(weight) for r in resolutions} if weight > 0 else {}


def _check_level_value(flag, r, value, resolution, what='weights'):
    """Refuse a negative per-level value, or a level r (None: every level) that is not a synthesis resolution."""
    if value < 0:
        raise click.UsageError(f'{flag}: {what} must be >= 0, got {value}')
    if r is not None and (r < 4 or r > resolution or r & (r - 1)):
        raise click.UsageError(f'{flag}: {r} is not a synthesis resolution of this {resolution}x{resolution} '
                               f'generator')


def _check_level_loss_options(cfg, resolution):
    checks = (('--fsr-swd', cfg.swd_weight, cfg.swd_patch, '--fsr-swd-patch'),
              ('--fsr-swd-image', cfg.swd_image_weight, 1, None),
              ('--fsr-moments', cfg.moments_weight, cfg.moments_patch, '--fsr-moments-patch'),
              ('--fsr-moments-late', cfg.moments_late_weight, cfg.moments_patch, '--fsr-moments-patch'),
              ('--fsr-contrast', cfg.contrast_weight, cfg.moments_patch, '--fsr-moments-patch'),
              ('--fsr-image-moments', cfg.image_moments_weight, 1, None),
              ('--fsr-mean-image', cfg.mean_image_weight, 1, None),
              ('--fsr-consistency', cfg.consistency_weight, 1, None))
    offsets = cfg.head_offset if isinstance(cfg.head_offset, dict) else {None: cfg.head_offset}
    for r, g in offsets.items():
        _check_level_value('--fsr-head-offset', r, g, resolution, what='gains')
    if cfg.head_offset_kimg > 0 and not any(g > 0 for g in offsets.values()):
        raise click.UsageError('--fsr-head-offset-kimg: give the offsets it starts with --fsr-head-offset')
    for flag, weight, patch, patch_flag in checks:
        weights = weight if isinstance(weight, dict) else {None: weight}
        for r, w in weights.items():
            _check_level_value(flag, r, w, resolution)
            if r is not None and w > 0 and r < patch:
                raise click.UsageError(f'{flag}: level {r} is smaller than the patch ({patch_flag}={patch})')
    late = cfg.moments_late_weight if isinstance(cfg.moments_late_weight, dict) else {None: cfg.moments_late_weight}
    if any(w > 0 for w in late.values()) and cfg.moments_late_kimg <= 0:
        raise click.UsageError('--fsr-moments-late: give --fsr-moments-late-kimg=K (> 0), the kimg from which these '
                               'weights replace --fsr-moments')
    if cfg.moments_late_kimg > 0 and not any(w > 0 for w in late.values()):
        raise click.UsageError('--fsr-moments-late-kimg: give the weights that start then with --fsr-moments-late')
    starts = cfg.mean_image_kimg if isinstance(cfg.mean_image_kimg, dict) else {None: cfg.mean_image_kimg}
    weights = cfg.mean_image_weight if isinstance(cfg.mean_image_weight, dict) else None
    for r, k in starts.items():
        _check_level_value('--fsr-mean-image-kimg', r, k, resolution, what='starts')
        if r is not None and weights is not None and weights.get(r, 0) <= 0:
            raise click.UsageError(f'--fsr-mean-image-kimg: level {r} has no --fsr-mean-image weight')
    if cfg.moments_avg_kimg > 0 and not any(w > 0 for weight in (cfg.moments_weight, cfg.moments_late_weight)
                                            for w in (weight.values() if isinstance(weight, dict) else [weight])):
        raise click.UsageError('--fsr-moments-avg: it changes the patch-moment loss, which is off; give its weights '
                               'with --fsr-moments (or --fsr-moments-late)')
    if isinstance(cfg.consistency_weight, dict) and cfg.consistency_weight.get(4, 0) > 0:
        raise click.UsageError('--fsr-consistency: level 4 is the lowest level and has no level below to agree with; '
                               'weights are keyed by the higher level of each pair (8 and up)')


def _default_argument(cls, name):
    """Default of constructor argument `name` of cls (looked up past the persistence wrapper's *args, **kwargs)."""
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return params[name].default
    raise KeyError(f'{cls.__name__} has no constructor argument {name!r}')


def _fine_tuning_architecture(c, schedule):
    """Fine-tuning with a stage schedule: G and D keep the pickle's architecture (their tensors are copied one by one).
    Stages below the data resolution need G images there ('skip' G; refused otherwise) and a D that judges them: a
    'skip' D does natively, any other D is swapped for UpsamplingDiscriminator (same tensors)."""
    if schedule.start_res == c.training_set_kwargs.resolution:
        return
    g_arch = c.G_kwargs.synthesis_kwargs.get('architecture', _default_argument(networks.SynthesisBlock,
                                                                                'architecture'))
    if g_arch != 'skip':
        raise click.UsageError(f'--fsr-schedule=layerwise from {schedule.start_res}x{schedule.start_res}: the '
                               f'generator in {c.resume_pkl} has architecture {g_arch!r}, which makes no image below '
                               f'the full resolution; use --fsr-start-res={c.training_set_kwargs.resolution} or a '
                               f'skip generator')
    d_arch = c.D_kwargs.get('architecture', _default_argument(networks.Discriminator, 'architecture'))
    if d_arch != 'skip':
        c.D_kwargs.class_name = UPSAMPLING_DISCRIMINATOR
        print(f'FSR: the {d_arch!r} discriminator of {c.resume_pkl} judges the lower stages upsampled to '
              f'{c.training_set_kwargs.resolution}x{c.training_set_kwargs.resolution}')


def make_plugin(options, training_options=None):
    """FSRPlugin for the parsed options, or None when --fsr is off."""
    cfg = FSRConfig.from_options(options)
    if not cfg.enabled:
        return None
    r1_gamma = 0.0
    schedule = None
    seed = 0
    if training_options is not None:
        r1_gamma = training_options.get('loss_kwargs', {}).get('r1_gamma', 0.0)
        schedule = make_schedule(cfg, training_options['training_set_kwargs']['resolution'])
        seed = int(training_options.get('random_seed', 0))
    return FSRPlugin(cfg, r1_gamma=r1_gamma, schedule=schedule, seed=seed)


def register_metrics(register_metric):
    """Register the fsr_* metric names (without a live plugin: fallbacks documented in fsr_metrics)."""
    fsr_metrics.register_fsr_metrics(register_metric)
