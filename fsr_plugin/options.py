"""The --fsr* command-line options of train.py and their parsed form (FSRConfig)."""

import dataclasses

import click


def _parse_per_layer(text, name):
    """'0.01' -> 0.01 for every layer; '8:0.1,16:0.05' -> {8: 0.1, 16: 0.05}; '' or None -> None."""
    if text is None or str(text).strip() == '':
        return None
    text = str(text).strip()
    if ':' not in text:
        try:
            return float(text)
        except ValueError:
            raise click.BadParameter(f'{name}: expected a number or "res:value,res:value", got {text!r}') from None
    out = {}
    for part in text.split(','):
        try:
            r, w = part.split(':')
            out[int(r)] = float(w)
        except ValueError:
            raise click.BadParameter(f'{name}: expected a number or "res:value,res:value", got {text!r}') from None
    return out


@dataclasses.dataclass
class FSRConfig:
    enabled: bool = False
    head_kernel: int = 1
    head_init: str = 'random'           # random | torgb | identity
    head_style: str = 'unit'            # ToRGB style copied into the heads: unit | w_avg
    unit_atoms: bool = False
    head_lr: float = 1.0                # learning-rate multiplier of the heads
    head_gain: bool = False             # every head learns one scalar gain of its atoms
    head_offset: object = 0.0           # gain of a learned per-position offset of the heads: float or {res: g}; 0 = off
    head_offset_kimg: float = 0.0       # the offsets stay at 0, untrained, until this many kimg have been shown
    top_wta: int = 0                    # winner-take-all window of the top head's features (0 = off)
    top_wta_jitter: float = 0.0         # jitter of its suppression, in units of the winning values' std
    top_wta_st: float = 0.0             # share of the gradient its losers get (straight-through; 0 = winners only)
    top_wta_min: float = 0.0            # its winners are kept only above this feature value (0 = every positive one)
    atom_centre: float = 0.0            # weight of the centring prior on the top head's atoms (0 = off)
    atom_recon: float = 0.0             # weight of the sparse-coding reconstruction term on the top atoms (0 = off)
    atom_recon_lam: float = 0.1         # its codes' L1 weight
    atom_recon_iters: int = 30          # its FISTA iterations per G step
    atom_recon_images: int = 8          # real images it codes per G step
    atom_recon_used: float = 0.0        # its codes use only channels with at least this share of the painted top level
    top_amp: float = 0.0                # weight of the top level's amplitude matching against those codes (0 = off)
    top_amp_min: float = 0.3            # real coded sites weaker than this are FISTA's residue, not sites
    top_amp_refit: int = 60             # least-squares iterations that undo the codes' L1 shrinkage on their support
    top_restart: float = 0.0            # restart dead top-level channels every this many kimg (0 = off)
    top_restart_share: float = 0.01     # a channel is dead below this share of the top level's painted mass
    top_restart_max: int = 2            # at most this many restarts per event
    top_restart_atom: str = 'split'     # a restarted channel's atom: split (donor's, perturbed) | data | missing
    swd_weight: object = 0.0            # patch sliced-Wasserstein loss weight: float (all levels) or {res: weight}
    swd_patch: int = 3                  # its patch size q
    swd_dirs: int = 64                  # its random directions per level and step
    swd_pairs: bool = False             # its patches also hold the level below (joint super-resolution statistics)
    swd_image_weight: object = 0.0      # the same loss on whole images of every level: float or {res: weight}
    swd_unbiased: bool = False          # both SWD losses in their split-half form, free of the pull to narrower fakes
    moments_weight: object = 0.0        # patch mean/covariance matching loss weight: float or {res: weight}
    moments_patch: int = 3              # its patch size q
    moments_pairs: bool = False         # its patches also hold the level below
    moments_unbiased: bool = False      # its split-half estimate, free of the batch estimates' variance
    moments_late_weight: object = 0.0   # the moment weights from moments_late_kimg on: float or {res: weight}
    moments_late_kimg: float = 0.0      # when moments_late_weight replaces moments_weight (kimg of training)
    moments_avg_kimg: float = 0.0       # > 0: the moment loss's direction from running moments of this half-life
    contrast_weight: object = 0.0       # patch total-variance (contrast) matching loss weight: float or {res: weight}
    image_moments_weight: object = 0.0  # per-image mean colour moment matching loss weight: float or {res: weight}
    mean_image_weight: object = 0.0     # per-position mean (the batch's mean image) matching weight: float or {res: w}
    mean_image_kimg: object = 0.0       # the mean-image term is on from this many kimg: float or {res: kimg}
    consistency_weight: object = 0.0    # pyramid consistency |down(x_r) - x_{r/2}|^2 weight: float or {res: weight}
    consistency_detach: bool = True     # its lower level is a fixed target (only the higher level moves)
    consistency_mode: str = 'full'      # full (every pixel of the downscaled level) | mean (each image's mean colour)
    pyramid_filter: str = 'box'         # box | fir
    main_d: str = 'host'                # the image the host's main discriminator judges: host (G's) | head (top head's)
    relu: bool = False                  # ReLU instead of leaky ReLU in the synthesis layers
    sparsity: str = 'l1'                # none | l1 | hoyer | topk
    sparsity_weight: object = 0.0       # float (all layers) or {res: weight}
    sparsity_target: object = None      # None, float or {res: target}
    sparsity_patch: int = 1
    pair: bool = True                   # pairwise-resolution discriminators
    pair_weight: float = 1.0
    pair_r1: object = None              # R1 gamma of the pair discriminators (None = the host's r1_gamma)
    pair_channels: int = 32
    pair_depth: int = 2
    pair_mbstd: int = 4                 # minibatch-std group size in the pair blocks (0 = off)
    pair_global: int = 0                # hidden width of the pair blocks' image-level perceptron (0 = off)
    schedule: str = 'none'              # none | layerwise
    start_res: object = None
    stage_kimg: object = None           # float or list of floats
    fade_kimg: float = 0.0
    policy: str = 'joint'               # frozen | finetune | joint
    finetune_lr: float = 0.1
    diagnostics: bool = False           # add the fsr_* metrics to --metrics

    @classmethod
    def from_options(cls, opts):
        """opts: dict of click values keyed by the option names below (fsr, fsr_head_kernel, ...)."""
        stage_kimg = opts.get('fsr_stage_kimg')
        if stage_kimg is not None:
            values = [float(v) for v in str(stage_kimg).split(',')]
            stage_kimg = values[0] if len(values) == 1 else values
        return cls(
            enabled=bool(opts.get('fsr', False)),
            head_kernel=int(opts.get('fsr_head_kernel') or 1),
            head_init=opts.get('fsr_head_init') or 'random',
            head_style=opts.get('fsr_head_style') or 'unit',
            unit_atoms=bool(opts.get('fsr_unit_atoms', False)),
            head_gain=bool(opts.get('fsr_head_gain', False)),
            head_offset=_parse_per_layer(opts.get('fsr_head_offset'), '--fsr-head-offset') or 0.0,
            head_offset_kimg=float(opts.get('fsr_head_offset_kimg') or 0.0),
            head_lr=float(opts.get('fsr_head_lr') if opts.get('fsr_head_lr') is not None else 1.0),
            top_wta=int(opts.get('fsr_top_wta') or 0),
            top_wta_jitter=float(opts.get('fsr_top_wta_jitter') or 0.0),
            top_wta_st=float(opts.get('fsr_top_wta_st') or 0.0),
            top_wta_min=float(opts.get('fsr_top_wta_min') or 0.0),
            atom_centre=float(opts.get('fsr_atom_centre') or 0.0),
            atom_recon=float(opts.get('fsr_atom_recon') or 0.0),
            atom_recon_lam=float(opts.get('fsr_atom_recon_lam') if opts.get('fsr_atom_recon_lam') is not None
                                 else 0.1),
            atom_recon_iters=int(opts.get('fsr_atom_recon_iters') or 30),
            atom_recon_images=int(opts.get('fsr_atom_recon_images') or 8),
            atom_recon_used=float(opts.get('fsr_atom_recon_used') or 0.0),
            top_amp=float(opts.get('fsr_top_amp') or 0.0),
            top_amp_min=float(opts.get('fsr_top_amp_min') if opts.get('fsr_top_amp_min') is not None else 0.3),
            top_amp_refit=int(opts.get('fsr_top_amp_refit') if opts.get('fsr_top_amp_refit') is not None else 60),
            top_restart=float(opts.get('fsr_top_restart') or 0.0),
            top_restart_share=float(opts.get('fsr_top_restart_share') if opts.get('fsr_top_restart_share') is not None
                                    else 0.01),
            top_restart_max=int(opts.get('fsr_top_restart_max') if opts.get('fsr_top_restart_max') is not None
                                else 2),
            top_restart_atom=opts.get('fsr_top_restart_atom') or 'split',
            swd_weight=_parse_per_layer(opts.get('fsr_swd'), '--fsr-swd') or 0.0,
            swd_patch=int(opts.get('fsr_swd_patch') or 3),
            swd_dirs=int(opts.get('fsr_swd_dirs') or 64),
            swd_pairs=bool(opts.get('fsr_swd_pairs', False)),
            swd_image_weight=_parse_per_layer(opts.get('fsr_swd_image'), '--fsr-swd-image') or 0.0,
            swd_unbiased=bool(opts.get('fsr_swd_unbiased', False)),
            moments_weight=_parse_per_layer(opts.get('fsr_moments'), '--fsr-moments') or 0.0,
            moments_patch=int(opts.get('fsr_moments_patch') or 3),
            moments_pairs=bool(opts.get('fsr_moments_pairs', False)),
            moments_unbiased=bool(opts.get('fsr_moments_unbiased', False)),
            moments_late_weight=_parse_per_layer(opts.get('fsr_moments_late'), '--fsr-moments-late') or 0.0,
            moments_late_kimg=float(opts.get('fsr_moments_late_kimg') or 0.0),
            moments_avg_kimg=float(opts.get('fsr_moments_avg') or 0.0),
            contrast_weight=_parse_per_layer(opts.get('fsr_contrast'), '--fsr-contrast') or 0.0,
            image_moments_weight=_parse_per_layer(opts.get('fsr_image_moments'), '--fsr-image-moments') or 0.0,
            mean_image_weight=_parse_per_layer(opts.get('fsr_mean_image'), '--fsr-mean-image') or 0.0,
            mean_image_kimg=_parse_per_layer(opts.get('fsr_mean_image_kimg'), '--fsr-mean-image-kimg') or 0.0,
            consistency_weight=_parse_per_layer(opts.get('fsr_consistency'), '--fsr-consistency') or 0.0,
            consistency_detach=bool(opts.get('fsr_consistency_detach', True)),
            consistency_mode=opts.get('fsr_consistency_mode') or 'full',
            pyramid_filter=opts.get('fsr_pyramid_filter') or 'box',
            main_d=opts.get('fsr_main_d') or 'host',
            relu=bool(opts.get('fsr_relu', False)),
            sparsity=opts.get('fsr_sparsity') or 'l1',
            sparsity_weight=_parse_per_layer(opts.get('fsr_sparsity_weight'), '--fsr-sparsity-weight') or 0.0,
            sparsity_target=_parse_per_layer(opts.get('fsr_sparsity_target'), '--fsr-sparsity-target'),
            sparsity_patch=int(opts.get('fsr_sparsity_patch') or 1),
            pair=bool(opts.get('fsr_pair', True)),
            pair_weight=float(opts.get('fsr_pair_weight') if opts.get('fsr_pair_weight') is not None else 1.0),
            pair_r1=opts.get('fsr_pair_r1'),
            pair_channels=int(opts.get('fsr_pair_channels') or 32),
            pair_depth=int(opts.get('fsr_pair_depth') if opts.get('fsr_pair_depth') is not None else 2),
            pair_mbstd=int(opts.get('fsr_pair_mbstd') if opts.get('fsr_pair_mbstd') is not None else 4),
            pair_global=int(opts.get('fsr_pair_global') or 0),
            schedule=opts.get('fsr_schedule') or 'none',
            start_res=opts.get('fsr_start_res'),
            stage_kimg=stage_kimg,
            fade_kimg=float(opts.get('fsr_fade_kimg') or 0.0),
            policy=opts.get('fsr_policy') or 'joint',
            finetune_lr=float(opts.get('fsr_finetune_lr') if opts.get('fsr_finetune_lr') is not None else 0.1),
            diagnostics=bool(opts.get('fsr_diagnostics', False)),
        )


def cli_options():
    """The click options train.py adds to its command (all start with --fsr)."""
    return [
        click.option('--fsr', help='Forward Super-Resolution training (off = plain host training)', type=bool,
                     default=False, show_default=True),
        click.option('--fsr-head-kernel', help='FSR output-head kernel size (1 = ToRGB-like, 3/4 = patch atoms)',
                     type=int, default=1, show_default=True),
        click.option('--fsr-head-init', help='FSR head initialisation', type=click.Choice(['random', 'torgb',
                     'identity']), default='random', show_default=True),
        click.option('--fsr-head-style', help='FSR heads from ToRGB (torgb/identity init): style of the copied ToRGB '
                     '(unit = all styles 1, w_avg = the style at the mapping network\'s mean w)',
                     type=click.Choice(['unit', 'w_avg']), default='unit', show_default=True),
        click.option('--fsr-unit-atoms', help='FSR heads: unit-norm atoms', type=bool, default=False),
        click.option('--fsr-head-lr', help='FSR heads: learning-rate multiplier', type=float, default=1.0,
                     show_default=True),
        click.option('--fsr-head-gain', help='FSR heads: each head learns one scalar gain of its atoms (with '
                     '--fsr-unit-atoms, lets lower heads paint low-contrast levels)', type=bool, default=False),
        click.option('--fsr-head-offset', help='FSR heads: each listed head also adds a learned per-position colour '
                     'offset, the same in every image (starts at 0), to paint a fixed pattern such as a border frame; '
                     'the value is its learning-rate gain: one number (every head) or res:gain,res:gain '
                     '(e.g. 16:0.05); 0 = off', default='0', show_default=True),
        click.option('--fsr-head-offset-kimg', help='FSR heads: the --fsr-head-offset offsets stay at 0 and are not '
                     'trained until this many kimg have been shown (until then training is as without them); 0 = '
                     'from the start', type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option('--fsr-top-wta', help='FSR: the top head paints only one channel per site, winners of a w x w '
                     'spatial suppression (w odd; 1 = channel selection only; 0 = off)', type=click.IntRange(min=0),
                     default=0, show_default=True),
        click.option('--fsr-top-wta-jitter', help='FSR --fsr-top-wta: the suppression compares the winning values '
                     'plus this many of their standard deviations of Gaussian noise, as the synthetic teacher does '
                     '(more, and randomly placed, sites)', type=click.FloatRange(min=0), default=0.0,
                     show_default=True),
        click.option('--fsr-top-wta-st', help='FSR --fsr-top-wta: the channels that lose the selection get this '
                     'share of their gradient (straight-through; the images are unchanged), so a channel that stopped '
                     'winning can win again where its atom is needed (0 = winners only)',
                     type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option('--fsr-top-wta-min', help='FSR --fsr-top-wta: a winner paints only when its feature value '
                     'exceeds this (after the suppression), as the synthetic teacher drops weak sites: a dead zone '
                     'between no site and a site (0 = every positive winner paints)', type=click.FloatRange(min=0),
                     default=0.0, show_default=True),
        click.option('--fsr-atom-centre', help='FSR heads with kernel >= 2: weight of a prior that pulls the energy '
                     'centroid of every top-head atom to the middle of its window (sum over atoms of the squared '
                     'offset in pixels; 0 = off)', type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option('--fsr-atom-recon', help='FSR: weight of a reconstruction term on the top head\'s atoms: each G '
                     'step codes real top-level images in the head\'s unit-norm atoms by non-negative convolutional '
                     'sparse coding (FISTA) and turns the atoms towards reconstructing them (0.5 x squared residual '
                     'per image: the sparse-coding oracle\'s objective; 0 = off)',
                     type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option('--fsr-atom-recon-lam', help='FSR --fsr-atom-recon: L1 weight of the codes (image units)',
                     type=click.FloatRange(min=0), default=0.1, show_default=True),
        click.option('--fsr-atom-recon-iters', help='FSR --fsr-atom-recon: FISTA iterations per G step',
                     type=click.IntRange(min=1), default=30, show_default=True),
        click.option('--fsr-atom-recon-images', help='FSR --fsr-atom-recon: real images coded per G step (at most '
                     'the batch)', type=click.IntRange(min=1), default=8, show_default=True),
        click.option('--fsr-atom-recon-used', help='FSR --fsr-atom-recon: code only with the atoms of channels that '
                     'paint at least this share of the top level in the same G step\'s fake batch (the atoms the '
                     'generator draws with; 0 = every atom)', type=click.FloatRange(min=0, max=1, max_open=True),
                     default=0.0, show_default=True),
        click.option('--fsr-top-amp', help='FSR --fsr-atom-recon with --fsr-top-wta: weight of a term that matches '
                     'the amplitudes of the top level\'s painted sites (winning feature x atom norm) to those of the '
                     'real images\' sparse codes in the same atoms (refitted without shrinkage): the squared 1-D '
                     'Wasserstein-2 distance of the two samples (0 = off)', type=click.FloatRange(min=0), default=0.0,
                     show_default=True),
        click.option('--fsr-top-amp-min', help='FSR --fsr-top-amp: coded real sites weaker than this amplitude '
                     '(image units) are not counted', type=click.FloatRange(min=0), default=0.3, show_default=True),
        click.option('--fsr-top-amp-refit', help='FSR --fsr-top-amp: least-squares iterations on the codes\' support '
                     'that undo the L1 shrinkage (0 = none)', type=click.IntRange(min=0), default=60,
                     show_default=True),
        click.option('--fsr-top-restart', help='FSR --fsr-top-wta with --fsr-main-d=head: every this many kimg, '
                     're-initialise top-level channels that painted less than --fsr-top-restart-share of the top level '
                     'since the last restart, each from one of the most used channels (split; 0 = off)',
                     type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option('--fsr-top-restart-share', help='FSR --fsr-top-restart: a channel below this share of the top '
                     'level\'s painted mass is dead', type=click.FloatRange(min=0, max=1), default=0.01,
                     show_default=True),
        click.option('--fsr-top-restart-max', help='FSR --fsr-top-restart: at most this many channels restarted at '
                     'once', type=click.IntRange(min=1), default=2, show_default=True),
        click.option('--fsr-top-restart-atom', help='FSR --fsr-top-restart: a restarted channel\'s head atom: split = '
                     'the donor channel\'s atom, perturbed; data = a patch of a real image; missing = the real patch '
                     'that the used atoms represent worst, the donor being the used channel with the nearest atom',
                     type=click.Choice(['split', 'data', 'missing']), default='split', show_default=True),
        click.option('--fsr-swd', help='FSR: weight of the per-level patch sliced-Wasserstein generator loss between '
                     'the head images and the real pyramid: number or "res:w,res:w" (0 = off)', type=str,
                     default='0', show_default=True),
        click.option('--fsr-swd-patch', help='FSR --fsr-swd: patch size q', type=click.IntRange(min=1), default=3,
                     show_default=True),
        click.option('--fsr-swd-dirs', help='FSR --fsr-swd: random projection directions per level and step',
                     type=click.IntRange(min=1), default=64, show_default=True),
        click.option('--fsr-swd-pairs', help='FSR --fsr-swd: a patch of level r also holds the level r/2 under it '
                     '(matches the super-resolution step, as the pair discriminators see it)', type=bool,
                     default=False),
        click.option('--fsr-swd-image', help='FSR: weight of the sliced-Wasserstein loss between whole head images '
                     'and whole real pyramid levels: number or "res:w,res:w" (0 = off)', type=str, default='0',
                     show_default=True),
        click.option('--fsr-swd-unbiased', help='FSR --fsr-swd and --fsr-swd-image: the split-half form (halves of '
                     'each batch; the within-sample distances subtracted), whose gradient has no pull towards a fake '
                     'distribution narrower than the reals\' (whole images in batches of 32: about 0.92 of the '
                     'reals\' spread)', type=bool, default=False, show_default=True),
        click.option('--fsr-moments', help='FSR: weight of the per-level patch-moment generator loss (mean and '
                     'covariance of the head images\' patches against the real pyramid\'s, in the units of the '
                     'fsr_moment_gap diagnostic): number or "res:w,res:w" (0 = off)', type=str, default='0',
                     show_default=True),
        click.option('--fsr-moments-patch', help='FSR --fsr-moments: patch size q', type=click.IntRange(min=1),
                     default=3, show_default=True),
        click.option('--fsr-moments-pairs', help='FSR --fsr-moments: a patch of level r also holds the level r/2 '
                     'under it (matches the cross-moments of the super-resolution step)', type=bool, default=False),
        click.option('--fsr-moments-unbiased', help='FSR --fsr-moments: the split-half estimate (cross products of '
                     'two halves of each batch), whose gradient has no pull towards images with less varied patch '
                     'statistics than the reals', type=bool, default=False, show_default=True),
        click.option('--fsr-moments-late', help='FSR: the --fsr-moments weights from --fsr-moments-late-kimg on '
                     '(they replace --fsr-moments then, levels not named are off): number or "res:w,res:w" (0 = no '
                     'change during the run)', type=str, default='0', show_default=True),
        click.option('--fsr-moments-late-kimg', help='FSR: --fsr-moments-late replaces --fsr-moments once this many '
                     'kimg have been shown', type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option('--fsr-moments-avg', help='FSR --fsr-moments: take the mismatch from running averages of the '
                     'fake and real batch moments with this half-life in kimg, and pull each batch along it (less '
                     'noisy than one batch\'s mismatch; replaces the split-half form for this loss; 0 = off)',
                     type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option('--fsr-contrast', help='FSR: weight of the per-level contrast loss, the squared relative '
                     'mismatch of the total variance of the head images\' q x q patches (q: --fsr-moments-patch; the '
                     'split-half form with --fsr-moments-unbiased): number or "res:w,res:w" (0 = off)', type=str,
                     default='0', show_default=True),
        click.option('--fsr-image-moments', help='FSR: weight of the per-level loss on the mean colour of whole '
                     'images: its mean and its between-image covariance against the real pyramid\'s, in the units '
                     'of --fsr-moments (split-half with --fsr-moments-unbiased): number or "res:w,res:w" (0 = off)',
                     type=str, default='0', show_default=True),
        click.option('--fsr-mean-image', help='FSR: weight of the per-level loss on the batch\'s mean image, the '
                     'average colour at every position against the real pyramid\'s, over the reals\' pixel variance '
                     '(a pattern painted at the same place in every image; split-half with --fsr-moments-unbiased): '
                     'number or "res:w,res:w" (0 = off)', type=str, default='0', show_default=True),
        click.option('--fsr-mean-image-kimg', help='FSR: --fsr-mean-image is on once this many kimg have been shown: '
                     'number (every level) or "res:kimg,res:kimg" (levels not named: from the start; 0 = from the '
                     'start)', type=str, default='0', show_default=True),
        click.option('--fsr-consistency', help='FSR: weight of the pyramid consistency loss of generated level r, '
                     'the squared difference between its 2x downsampling (the --fsr-pyramid-filter) and the level r/2 '
                     'of the same sample, over the real level r/2\'s pixel variance: number (every level with one '
                     'below) or "res:w,res:w" (0 = off)', type=str, default='0', show_default=True),
        click.option('--fsr-consistency-detach', help='FSR --fsr-consistency: the lower level is a fixed target, so '
                     'only the higher level moves (0: both move)', type=bool, default=True, show_default=True),
        click.option('--fsr-consistency-mode', help='FSR --fsr-consistency: full = every pixel of the downscaled '
                     'level; mean = only each image\'s mean colour (over the reals\' between-image variance of it)',
                     type=click.Choice(['full', 'mean']), default='full', show_default=True),
        click.option('--fsr-pyramid-filter', help='FSR real pyramid filter', type=click.Choice(['box', 'fir']),
                     default='box', show_default=True),
        click.option('--fsr-main-d', help='FSR: the image the main discriminator judges: host = the generator\'s '
                     'own (ToRGB) image; head = the top output head\'s image, so G is trained through its heads only '
                     '(G\'s ToRGB layers then get no gradient; generate.py, calc_metrics.py and the metrics in '
                     'training use the top head\'s images)', type=click.Choice(['host', 'head']), default='host',
                     show_default=True),
        click.option('--fsr-relu', help='FSR: ReLU (not leaky ReLU) in the synthesis layers', type=bool,
                     default=False),
        click.option('--fsr-sparsity', help='FSR hierarchical-sparsity penalty',
                     type=click.Choice(['none', 'l1', 'hoyer', 'topk']), default='l1', show_default=True),
        click.option('--fsr-sparsity-weight', help='FSR sparsity weight: number or "res:w,res:w"', type=str,
                     default='0', show_default=True),
        click.option('--fsr-sparsity-target', help='FSR target density: number or "res:t,res:t"', type=str),
        click.option('--fsr-sparsity-patch', help='FSR sparsity patch size q', type=int, default=1,
                     show_default=True),
        click.option('--fsr-pair', help='FSR pairwise-resolution discriminators', type=bool, default=True,
                     show_default=True),
        click.option('--fsr-pair-weight', help='FSR pair-discriminator loss weight', type=float, default=1.0,
                     show_default=True),
        click.option('--fsr-pair-r1', help='FSR pair-discriminator R1 gamma [default: --gamma]', type=float),
        click.option('--fsr-pair-channels', help='FSR pair-discriminator channels', type=int, default=32,
                     show_default=True),
        click.option('--fsr-pair-depth', help='FSR pair-discriminator conv layers', type=int, default=2,
                     show_default=True),
        click.option('--fsr-pair-mbstd', help='FSR pair-discriminator minibatch-std group (0 = off)', type=int,
                     default=4, show_default=True),
        click.option('--fsr-pair-global', help='FSR pair discriminators: hidden width of an image-level perceptron '
                     'on each pair\'s pooled features and mean colours (0 = local scores only)',
                     type=click.IntRange(min=0), default=0, show_default=True),
        click.option('--fsr-schedule', help='FSR stage schedule', type=click.Choice(['none', 'layerwise']),
                     default='none', show_default=True),
        click.option('--fsr-start-res', help='FSR first stage resolution', type=int),
        click.option('--fsr-stage-kimg', help='FSR stage length(s) in kimg (number or comma list)', type=str),
        click.option('--fsr-fade-kimg', help='FSR fade-in kimg at each new stage', type=float, default=0,
                     show_default=True),
        click.option('--fsr-policy', help='FSR lower blocks at later stages',
                     type=click.Choice(['frozen', 'finetune', 'joint']), default='joint', show_default=True),
        click.option('--fsr-finetune-lr', help='FSR lr multiplier of lower blocks under --fsr-policy=finetune',
                     type=float, default=0.1, show_default=True),
        click.option('--fsr-diagnostics', help='FSR: evaluate the fsr_* diagnostics at every snapshot', type=bool,
                     default=False),
    ]
