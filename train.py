"""Train a StyleGAN2 network (CPU or CUDA, one process or several), with plugins adding their own --flags.

Examples:
    # Built-in data, small CPU preset, a few minutes:
    python train.py --outdir=runs --data=toy-shapes --cfg=cpu --kimg=20 --snap=5
    # MNIST prepared with dataset_tool.py:
    python train.py --outdir=runs --data=datasets/mnist32.zip --cfg=cpu --kimg=200 --mirror=0
    # Continue a run exactly where its last snapshot left off:
    python train.py --outdir=runs --resume=runs/00003-mnist32-cpu-gpus1-batch32-gamma0.0064
    # Fine-tune from a pickle (ours or NVIDIA's StyleGAN2-ADA/StyleGAN3 StyleGAN2 file) in a new run:
    python train.py --outdir=runs --data=mydata.zip --resume=ffhq256.pkl --cfg=paper256

--gpus N starts N processes (GPUs when CUDA is available, otherwise CPU processes with the gloo backend). Under
torchrun (WORLD_SIZE set in the environment) each process is one rank and --gpus is taken from the environment.
"""

import copy
import glob
import json
import math
import os
import re
import sys
import tempfile

import click
import torch

from torch_utils.cpu_allocator import tune_cpu_allocator

import dnnlib
from torch_utils import cpu_features
from torch_utils import custom_ops
from torch_utils import training_stats
from training import dataset as dataset_lib
from training import hooks as hooks_lib
from training import training_loop

# ----------------------------------------------------------------------------------------------------------------------
# Plugins: module names listed in plugins.txt (one per line) or the GAN_PLUGINS environment variable (comma list).
# Each provides cli_options() -> list of click options and make_plugin(options: dict, training_options) ->
# TrainingPlugin or None; optionally update_training_options(c, options) and register_metrics(register_metric).

hooks_lib.register_configured_plugins()  # plugins.txt next to this file, and $GAN_PLUGINS
PLUGIN_MODULES = hooks_lib.plugin_packages()

# ----------------------------------------------------------------------------------------------------------------------
# Presets (HOST_CONTRACT 4.1) plus CPU presets. ref_gpus: batch per GPU = mb // ref_gpus.

PRESETS = dict(
    auto=dict(ref_gpus=-1, kimg=25000, mb=-1, mbstd=-1, fmaps=-1, lrate=-1, gamma=-1, ema=-1, ramp=0.05, map=2),
    stylegan2=dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None, map=8),
    paper256=dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8),
    paper512=dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None, map=8),
    paper1024=dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8),
    cifar=dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1, lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2),
    # CPU presets: channel_base 4096 / channel_max 128 (the benchmark configuration), 2 mapping layers.
    cpu=dict(ref_gpus=1, kimg=1000, mb=32, mbstd=4, fmaps=0.125, cmax=128, lrate=0.0025, gamma=-1, ema=-1,
             ramp=0.05, map=2),
    # Tiny networks for smoke tests and CI: minutes of CPU time.
    cpu_tiny=dict(ref_gpus=1, kimg=10, mb=8, mbstd=4, fmaps=1 / 32, cmax=32, lrate=0.0025, gamma=-1, ema=-1,
                  ramp=0.05, map=2),
)
CFG_NAMES = ['auto', 'stylegan2', 'paper256', 'paper512', 'paper1024', 'cifar', 'cpu', 'cpu-tiny']

AUGPIPE_NAMES = ['blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc']


class UserError(Exception):
    """A problem with the command line or the inputs: printed as one line, exit code 1."""


def _parse_g_channels(text):
    """'32:16,16:64' -> {32: 16, 16: 64} (block resolution: output channels of G's block)."""
    out = {}
    for part in str(text).split(','):
        try:
            res, channels = (int(v) for v in part.split(':'))
        except ValueError:
            raise click.BadParameter(f'expected "res:channels,..." (e.g. 32:16), got {text!r}',
                                     param_hint='--g-channels') from None
        if res < 4 or res & (res - 1) or channels < 1:
            raise click.BadParameter(f'{part!r}: the resolution must be a power of two >= 4 and the width >= 1',
                                     param_hint='--g-channels')
        out[res] = channels
    return out


def _parse_resolutions(text, flag):
    """'4,8' -> [4, 8] (block resolutions: powers of two >= 4, sorted, no repeats)."""
    try:
        values = sorted({int(v) for v in str(text).split(',')})
    except ValueError:
        raise click.BadParameter(f'expected resolutions "r,r,..." (e.g. 4,8), got {text!r}', param_hint=flag) from None
    bad = [r for r in values if r < 4 or r & (r - 1)]
    if bad:
        raise click.BadParameter(f'{bad}: resolutions must be powers of two >= 4', param_hint=flag)
    return values


def _parse_ema_rampup(text):
    """--ema-rampup: 'none' -> None (no ramp), else a positive float (fraction of the images shown so far)."""
    if text.strip().lower() == 'none':
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise UserError(f'--ema-rampup={text!r}: expected a positive number or "none"')
    return value


def _parse_lr_steps(text):
    """--lr-steps 'kimg:factor,...' -> [[kimg, factor], ...] sorted by kimg (kimg >= 0, factor > 0, each kimg once)."""
    steps = {}
    for part in _parse_comma_list(text):
        kimg, sep, factor = part.partition(':')
        try:
            kimg, factor = float(kimg), float(factor)
        except ValueError:
            kimg = factor = None
        if not sep or kimg is None or not kimg >= 0 or not factor > 0 or not math.isfinite(kimg * factor):
            raise UserError(f'--lr-steps: {part!r} is not kimg:factor with kimg >= 0 and factor > 0')
        if kimg in steps:
            raise UserError(f'--lr-steps: kimg {kimg:g} is given twice')
        steps[kimg] = factor
    if not steps:
        raise UserError(f'--lr-steps={text!r}: expected kimg:factor pairs, e.g. 100:0.3,120:0.1')
    return [[kimg, steps[kimg]] for kimg in sorted(steps)]


def _parse_comma_list(s):
    if s is None or s.lower() == 'none' or s == '':
        return []
    return [x.strip() for x in s.split(',') if x.strip()]


def _next_run_dir(outdir, desc):
    prev = []
    if os.path.isdir(outdir):
        prev = [x for x in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, x))]
    ids = [int(m.group()) for m in (re.match(r'^\d+', x) for x in prev) if m is not None]
    cur = max(ids, default=-1) + 1
    return os.path.join(outdir, f'{cur:05d}-{desc}')


def _format_num(x):
    return f'{x:g}'


# ----------------------------------------------------------------------------------------------------------------------

def setup_training_options(opts):
    """Turn the command-line options into the training_loop keyword arguments (an EasyDict). Raises UserError."""
    args = dnnlib.EasyDict()
    gpus = opts.gpus
    if gpus < 1:
        raise UserError('--gpus must be at least 1')
    device = opts.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device=cuda but no CUDA device is available')
    if device == 'cuda' and gpus > torch.cuda.device_count():
        raise UserError(f'--gpus={gpus} but only {torch.cuda.device_count()} CUDA device(s) are visible')
    args.num_gpus = gpus
    args.device = device
    args.random_seed = opts.seed
    args.image_snapshot_ticks = opts.snap
    args.network_snapshot_ticks = opts.snap
    args.kimg_per_tick = opts.tick
    args.metrics = None if opts.metrics is None else _parse_comma_list(opts.metrics)

    # Dataset.
    if opts.data is None:
        raise UserError('--data is required (a dataset folder/zip or a built-in name such as toy-shapes)')
    try:
        args.training_set_kwargs = dataset_lib.dataset_kwargs_from_data_arg(
            opts.data, use_labels=bool(opts.cond), max_size=opts.subset, xflip=bool(opts.mirror),
            random_seed=opts.seed)
        training_set = dnnlib.util.construct_class_by_name(**args.training_set_kwargs)
        args.training_set_kwargs.resolution = training_set.resolution
        args.training_set_kwargs.use_labels = training_set.has_labels
        args.training_set_kwargs.max_size = len(training_set)
        desc = training_set.name
        res = training_set.resolution
        if opts.cond and not training_set.has_labels:
            raise UserError(f'--cond=1 but {opts.data} has no labels (dataset.json)')
        del training_set
    except (IOError, ValueError) as e:
        raise UserError(str(e)) from None
    if opts.subset is not None and opts.subset < 1:
        raise UserError('--subset must be at least 1')
    args.data_loader_kwargs = dnnlib.EasyDict(pin_memory=(device == 'cuda'),
                                              num_workers=opts.workers if opts.workers is not None else
                                              (3 if device == 'cuda' else 1),
                                              prefetch_factor=2)
    if args.data_loader_kwargs.num_workers == 0:
        del args.data_loader_kwargs['prefetch_factor']
    if opts.cond:
        desc += '-cond'
    if opts.subset is not None:
        desc += f'-subset{opts.subset}'
    if opts.mirror:
        desc += '-mirror'

    # Base configuration.
    cfg = opts.cfg.replace('-', '_')
    spec = dnnlib.EasyDict(PRESETS[cfg])
    desc += f'-{opts.cfg}'
    if spec.ref_gpus < 0:
        spec.ref_gpus = gpus
    if spec.mb < 0:
        spec.mb = max(min(gpus * min(4096 // res, 32), 64), gpus)
    if spec.mbstd < 0:
        spec.mbstd = min(spec.mb // gpus, 4)
    if spec.fmaps < 0:
        spec.fmaps = 1 if res >= 512 else 0.5
    if spec.lrate < 0:
        spec.lrate = 0.002 if res >= 1024 else 0.0025
    if spec.gamma < 0:
        spec.gamma = 0.0002 * (res ** 2) / spec.mb
    if spec.ema < 0:
        spec.ema = spec.mb * 10 / 32

    cbase = opts.cbase if opts.cbase is not None else int(spec.fmaps * 32768)
    cmax = opts.cmax if opts.cmax is not None else spec.get('cmax', 512)
    map_depth = opts.map_depth if opts.map_depth is not None else spec.map
    args.G_kwargs = dnnlib.EasyDict(class_name='training.networks.Generator', z_dim=512, w_dim=512,
                                    mapping_kwargs=dnnlib.EasyDict(), synthesis_kwargs=dnnlib.EasyDict())
    args.D_kwargs = dnnlib.EasyDict(class_name='training.networks.Discriminator', block_kwargs=dnnlib.EasyDict(),
                                    mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict())
    args.G_kwargs.synthesis_kwargs.channel_base = args.D_kwargs.channel_base = cbase
    args.G_kwargs.synthesis_kwargs.channel_max = args.D_kwargs.channel_max = cmax
    args.G_kwargs.mapping_kwargs.num_layers = map_depth
    args.G_kwargs.synthesis_kwargs.num_fp16_res = args.D_kwargs.num_fp16_res = 4
    args.G_kwargs.synthesis_kwargs.conv_clamp = args.D_kwargs.conv_clamp = 256
    args.D_kwargs.epilogue_kwargs.mbstd_group_size = opts.mbstd_group if opts.mbstd_group is not None else spec.mbstd
    if opts.d_arch is not None:
        args.D_kwargs.architecture = opts.d_arch
    if opts.g_arch is not None:
        args.G_kwargs.synthesis_kwargs.architecture = opts.g_arch
    if opts.g_channels:
        args.G_kwargs.synthesis_kwargs.channel_overrides = _parse_g_channels(opts.g_channels)
        beyond = [r for r in args.G_kwargs.synthesis_kwargs.channel_overrides
                  if r > args.training_set_kwargs.resolution]
        if beyond:
            raise UserError(f'--g-channels names resolution(s) {beyond} above the data resolution '
                            f'{args.training_set_kwargs.resolution}')
    if opts.sn:
        args.D_kwargs.spectral_norm = True
    if not opts.g_noise:
        args.G_kwargs.synthesis_kwargs.use_noise = False
    if opts.g_noise_res:
        if not opts.g_noise:
            raise UserError('--g-noise-res picks the resolutions that keep their noise inputs; it needs --g-noise=1')
        noise_res = _parse_resolutions(opts.g_noise_res, '--g-noise-res')
        beyond = [r for r in noise_res if r > args.training_set_kwargs.resolution]
        if beyond:
            raise UserError(f'--g-noise-res names resolution(s) {beyond} above the data resolution '
                            f'{args.training_set_kwargs.resolution}')
        args.G_kwargs.synthesis_kwargs.noise_resolutions = noise_res
    if opts.g_input_noise:
        args.G_kwargs.synthesis_kwargs.input_noise_channels = opts.g_input_noise

    glr = opts.glr if opts.glr is not None else spec.lrate
    dlr = opts.dlr if opts.dlr is not None else spec.lrate
    args.G_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=glr, betas=[0.0, 0.99], eps=1e-8)
    args.D_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=dlr, betas=[0.0, 0.99], eps=1e-8)
    args.loss_kwargs = dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=spec.gamma,
                                       style_mixing_prob=0.9, pl_weight=2, loss_type=opts.loss, gp_weight=opts.gp)
    args.G_reg_interval = 4
    args.D_reg_interval = 16
    args.total_kimg = spec.kimg
    args.batch_size = spec.mb
    args.batch_gpu = spec.mb // spec.ref_gpus
    args.ema_kimg = spec.ema
    args.ema_rampup = spec.ramp
    if cfg in ('cifar', 'cpu', 'cpu_tiny'):
        args.loss_kwargs.pl_weight = 0  # disable path length regularization
        args.loss_kwargs.style_mixing_prob = 0  # disable style mixing
        args.G_reg_interval = None
    if cfg == 'cifar':
        args.D_kwargs.architecture = 'orig'  # disable residual skip connections
    if cfg == 'cpu_tiny':
        args.max_grid_cells = (8, 8)  # smoke-test runs: small image grids

    if opts.gamma is not None:
        if opts.gamma < 0:
            raise UserError('--gamma must be non-negative')
        args.loss_kwargs.r1_gamma = opts.gamma
        desc += f'-gamma{_format_num(opts.gamma)}'
    if opts.kimg is not None:
        if opts.kimg < 1:
            raise UserError('--kimg must be at least 1')
        args.total_kimg = opts.kimg
        desc += f'-kimg{opts.kimg}'
    if opts.batch is not None:
        if opts.batch < 1 or opts.batch % gpus != 0:
            raise UserError('--batch must be at least 1 and divisible by --gpus')
        args.batch_size = opts.batch
        args.batch_gpu = opts.batch // gpus
        desc += f'-batch{opts.batch}'
    if opts.batch_gpu is not None:
        args.batch_gpu = opts.batch_gpu
    if args.batch_size % (gpus * args.batch_gpu) != 0:
        raise UserError(f'--batch ({args.batch_size}) must be divisible by --gpus x --batch-gpu '
                        f'({gpus} x {args.batch_gpu})')
    if args.batch_gpu < args.D_kwargs.epilogue_kwargs.mbstd_group_size:
        args.D_kwargs.epilogue_kwargs.mbstd_group_size = args.batch_gpu
    if args.batch_gpu % args.D_kwargs.epilogue_kwargs.mbstd_group_size != 0:
        raise UserError(f'--batch-gpu ({args.batch_gpu}) must be divisible by --mbstd-group '
                        f'({args.D_kwargs.epilogue_kwargs.mbstd_group_size})')
    if opts.ema_kimg is not None:
        args.ema_kimg = opts.ema_kimg

    # Precision: 'mixed' = reduced-precision blocks (float16 on CUDA, bfloat16 on CPU) with float32 master weights.
    precision = 'fp32' if opts.fp32 else opts.precision
    if precision == 'auto':
        precision = 'mixed' if device == 'cuda' else 'fp32'
    if precision == 'fp32':
        args.G_kwargs.synthesis_kwargs.num_fp16_res = args.D_kwargs.num_fp16_res = 0
        args.G_kwargs.synthesis_kwargs.conv_clamp = args.D_kwargs.conv_clamp = None
    args.precision = precision
    if opts.nhwc:
        args.G_kwargs.synthesis_kwargs.fp16_channels_last = args.D_kwargs.block_kwargs.fp16_channels_last = True
    if opts.nobench:
        args.cudnn_benchmark = False
    if opts.allow_tf32:
        args.allow_tf32 = True

    # Augmentation.
    args.ada_target = None
    args.augment_p = 0
    if opts.aug == 'ada':
        args.ada_target = opts.target
    elif opts.aug == 'fixed':
        if opts.p is None:
            raise UserError('--aug=fixed requires --p')
        args.augment_p = opts.p
        desc += f'-fixed{_format_num(opts.p)}'
    if opts.p is not None and opts.aug != 'fixed':
        raise UserError('--p can only be given with --aug=fixed')
    if opts.aug != 'noaug':
        args.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe',
                                              **_augpipe_spec(opts.augpipe))
    else:
        args.augment_kwargs = None

    # Progressive growing.
    args.growing_kwargs = None
    if opts.grow_from is not None:
        if opts.grow_kimg is None:
            raise UserError('--grow-from needs --grow-kimg (length of each stage before the last)')
        resolutions = []
        r = opts.grow_from
        while r <= res:
            resolutions.append(r)
            r *= 2
        if not resolutions or resolutions[-1] != res:
            raise UserError(f'--grow-from={opts.grow_from} cannot reach the data resolution {res} by doubling')
        stage_kimg = [float(k) for k in str(opts.grow_kimg).split(',')]
        if len(stage_kimg) == 1:
            stage_kimg = stage_kimg * (len(resolutions) - 1)
        args.growing_kwargs = dnnlib.EasyDict(resolutions=resolutions, stage_kimg=stage_kimg,
                                              fade_kimg=opts.grow_fade_kimg)
        if len(resolutions) > 1 and args.D_kwargs.get('architecture', 'resnet') != 'skip':
            args.D_kwargs.architecture = 'skip'  # lower resolutions enter D at their own FromRGB
        desc += f'-grow{opts.grow_from}'

    # Fine-tuning: architecture defaults come from the pickle.
    if opts.resume is not None:
        args.resume_pkl = opts.resume
        args.ada_kimg = 100
        args.ema_rampup = None
        desc += '-resumecustom'
    if opts.ema_rampup is not None:
        args.ema_rampup = _parse_ema_rampup(opts.ema_rampup)
    if opts.lr_steps is not None:
        args.lr_steps = _parse_lr_steps(opts.lr_steps)
    if opts.freezed:
        args.D_kwargs.block_kwargs.freeze_layers = opts.freezed
        desc += f'-freezed{opts.freezed}'
    if args.metrics is None:
        args.metrics = _default_metrics(cfg)
    if opts.loss != 'nonsaturating':
        desc += f'-{opts.loss}'
    if opts.sn:
        desc += '-sn'
    if opts.div:
        if opts.div < 0:
            raise UserError('--div must be non-negative')
        if opts.div_res < 1 or args.training_set_kwargs.resolution % opts.div_res != 0:
            raise UserError(f'--div-res ({opts.div_res}) must divide the training resolution '
                            f'({args.training_set_kwargs.resolution})')
        if opts.div_batch < 2:
            raise UserError('--div-batch must be at least 2')
        args.loss_kwargs.update(div_weight=opts.div, div_res=opts.div_res, div_batch=opts.div_batch)
        desc += f'-div{_format_num(opts.div)}'
    args.desc = f'{desc}-gpus{gpus}-batch{args.batch_size}-gamma{_format_num(args.loss_kwargs.r1_gamma)}'
    if opts.desc:
        args.desc += f'-{opts.desc}'
    return args


def _default_metrics(cfg):
    """CPU presets: the offline sliced Wasserstein distance (cpu-tiny: none). NVIDIA presets: fid50k_full when an
    Inception detector is configured ($GAN_INCEPTION_URL), otherwise none (a download mid-training would fail
    offline) with a notice."""
    if cfg == 'cpu_tiny':
        return []
    if cfg == 'cpu':
        return ['swd2k']
    if os.environ.get('GAN_INCEPTION_URL'):
        return ['fid50k_full']
    print('Note: no --metrics given and $GAN_INCEPTION_URL is not set: no metrics during training '
          '(use --metrics=swd2k for an offline metric).')
    return []


def _augpipe_spec(name):
    from training import augment
    if name not in augment.augpipe_specs:
        raise UserError(f'--augpipe={name!r}: unknown, valid: {", ".join(sorted(augment.augpipe_specs))}')
    return dict(augment.augpipe_specs[name])


def _apply_resume_architecture(args):
    """For fine-tuning, take G/D architecture options from the pickle's init_kwargs (after rebuilding NVIDIA modules
    as ours), so a mismatched --cfg cannot silently drop weights."""
    import legacy
    try:
        data = legacy.load_network(args.resume_pkl)
    except (legacy.NetworkFileError, IOError) as e:
        raise UserError(str(e)) from None
    for key, kw in [('G', args.G_kwargs), ('D', args.D_kwargs)]:
        module = data[key]
        init = dict(module.init_kwargs)
        if key == 'G':
            try:
                module_kwargs = legacy.generator_kwargs_from_module(module, args.resume_pkl)
            except legacy.NetworkFileError as e:
                raise UserError(str(e)) from None
            kw.mapping_kwargs = dnnlib.EasyDict(module_kwargs['mapping_kwargs'])
            kw.synthesis_kwargs = dnnlib.EasyDict(module_kwargs['synthesis_kwargs'], **{
                k: v for k, v in kw.synthesis_kwargs.items() if k in ('num_fp16_res', 'conv_clamp')})
            kw.z_dim = module_kwargs['z_dim']
            kw.w_dim = module_kwargs['w_dim']
        else:
            for name in ('architecture', 'channel_base', 'channel_max', 'cmap_dim', 'mapping_kwargs',
                         'epilogue_kwargs'):
                if name in init:
                    kw[name] = copy.deepcopy(init[name])
            block = dict(init.get('block_kwargs', {}) or {})
            block.update(kw.get('block_kwargs', {}))
            kw.block_kwargs = dnnlib.EasyDict(block)
    print(f'Fine-tuning: architecture options taken from {args.resume_pkl}')


# ----------------------------------------------------------------------------------------------------------------------
# Continuing a run.

def find_latest_snapshot(run_dir):
    snaps = sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))
    if not snaps:
        raise UserError(f'{run_dir}: no network-snapshot-*.pkl to continue from')
    return snaps[-1]


def resolve_continue(resume):
    """If `resume` is a run directory or a snapshot inside one, return (run_dir, snapshot); else None."""
    if os.path.isdir(resume):
        if not os.path.isfile(os.path.join(resume, 'training_options.json')):
            raise UserError(f'{resume}: not a run directory (no training_options.json)')
        return resume, find_latest_snapshot(resume)
    run_dir = os.path.dirname(os.path.abspath(resume))
    if os.path.isfile(resume) and os.path.isfile(os.path.join(run_dir, 'training_options.json')) and \
            os.path.basename(resume).startswith('network-snapshot-'):
        return run_dir, resume
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Launching processes.

def subprocess_fn(rank, c, temp_dir):
    dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)
    if c.num_gpus > 1:
        backend = 'nccl' if c.device == 'cuda' else 'gloo'
        if os.environ.get('WORLD_SIZE'):
            torch.distributed.init_process_group(backend=backend, init_method='env://')
        else:
            init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
            torch.distributed.init_process_group(backend=backend, init_method=f'file://{init_file}', rank=rank,
                                                 world_size=c.num_gpus)
        if c.device == 'cpu':
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // c.num_gpus))
    if rank != 0:
        custom_ops.verbosity = 'none'
    kwargs = {k: v for k, v in c.items() if k not in ('desc', 'precision', 'run_dir', 'plugin_options', 'device')}
    plugins = []
    for module in PLUGIN_MODULES:
        plugin = module.make_plugin(dict(c.plugin_options), c)
        if plugin is not None:
            plugins.append(plugin)
    device = c.device if c.device == 'cpu' else f'cuda:{rank}'
    try:
        training_loop.training_loop(run_dir=c.run_dir, rank=rank, device=device, plugins=plugins, **kwargs)
    except training_loop.TrainingDivergedError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)


def launch_training(c, resume_snapshot=None):
    if resume_snapshot is not None:
        c.resume_snapshot = resume_snapshot
    if os.environ.get('WORLD_SIZE'):
        rank = int(os.environ['RANK'])
        if c.device == 'cuda':
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', rank)))
        subprocess_fn(rank, c, None)
        return
    torch.multiprocessing.set_start_method('spawn', force=True)
    with tempfile.TemporaryDirectory() as temp_dir:
        if c.num_gpus == 1:
            subprocess_fn(rank=0, c=c, temp_dir=temp_dir)
        else:
            torch.multiprocessing.spawn(fn=subprocess_fn, args=(c, temp_dir), nprocs=c.num_gpus)


# ----------------------------------------------------------------------------------------------------------------------

def _plugin_options(f):
    for module in PLUGIN_MODULES:
        for option in reversed(module.cli_options()):
            f = option(f)
    return f


@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.pass_context
@click.option('--outdir', help='Where to save the results', required=True, metavar='DIR')
@click.option('--gpus', help='Number of processes (GPUs, or CPU processes without CUDA)', type=int, default=1,
              show_default=True)
@click.option('--device', help='Device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto',
              show_default=True)
@click.option('--snap', help='Snapshot interval in ticks', type=int, default=50, show_default=True)
@click.option('--tick', help='Progress print interval in kimg', type=float, default=4, show_default=True)
@click.option('--metrics', help='Comma-separated list of metrics, or "none" [default: swd2k for --cfg=cpu, none for '
              'cpu-tiny, fid50k_full for the GPU presets when $GAN_INCEPTION_URL is set]', type=str)
@click.option('--seed', help='Random seed', type=int, default=0, show_default=True)
@click.option('-n', '--dry-run', help='Print training options and exit', is_flag=True)
@click.option('--data', help='Training data (directory, zip, or built-in name[:opts])', metavar='PATH')
@click.option('--cond', help='Train conditional model based on dataset labels', type=bool, default=False)
@click.option('--subset', help='Train with only N images', type=int)
@click.option('--mirror', help='Enable dataset x-flips', type=bool, default=False)
@click.option('--cfg', help='Base config', type=click.Choice(CFG_NAMES), default='auto', show_default=True)
@click.option('--gamma', help='R1 regularization weight', type=float)
@click.option('--kimg', help='Training duration in kimg', type=int)
@click.option('--batch', help='Total batch size', type=int)
@click.option('--batch-gpu', help='Samples per process at a time (gradient accumulation)', type=int)
@click.option('--glr', help='G learning rate', type=float)
@click.option('--dlr', help='D learning rate', type=float)
@click.option('--cbase', help='Capacity multiplier (channel_base)', type=int)
@click.option('--cmax', help='Max. feature maps (channel_max)', type=int)
@click.option('--map-depth', help='Mapping network depth', type=int)
@click.option('--mbstd-group', help='Minibatch std group size', type=int)
@click.option('--d-arch', help='Discriminator architecture', type=click.Choice(['orig', 'skip', 'resnet']))
@click.option('--g-arch', help='Generator architecture (skip: the image sums every block\'s ToRGB, the default; orig: '
              'only the last block paints it)', type=click.Choice(['orig', 'skip', 'resnet']))
@click.option('--g-channels', help='Widths of chosen generator blocks, overriding --cbase/--cmax for G only: '
              '"res:channels,..." (e.g. 32:16)', type=str)
@click.option('--sn', help='Spectral normalisation of D weights', type=bool, default=False)
@click.option('--g-noise', help='Per-pixel noise inputs in G (0: all variety must come from z)', type=bool,
              default=True, show_default=True)
@click.option('--g-noise-res', help='Only these block resolutions of G take noise inputs, e.g. 4,8 (the blocks above '
              'then vary only through z and the noise below; default: every block)', metavar='RES,...')
@click.option('--g-input-noise', help='Channels of a random map per image added to G\'s 4x4 constant input through a '
              'learned projection (zero at the start): a spatial latent, like a per-position z (default 0: none)',
              type=click.IntRange(min=0), default=0, metavar='K')
@click.option('--lr-steps', help='Learning-rate steps: from each kimg on, every G and D learning rate (plugins\' '
              'multipliers included) times its factor, e.g. 100:0.3,120:0.1 (factors are not cumulative)',
              metavar='KIMG:FACTOR,...')
@click.option('--ema-kimg', help='G_ema half-life in kimg', type=float)
@click.option('--ema-rampup', help='G_ema half-life ramp: at most this fraction of the images shown so far '
              '("none": --ema-kimg from the start; default: the --cfg preset\'s)', type=str)
@click.option('--loss', help='Loss family', type=click.Choice(['nonsaturating', 'hinge', 'wgan']),
              default='nonsaturating', show_default=True)
@click.option('--gp', help='WGAN-GP gradient penalty weight (0 = off)', type=float, default=0, show_default=True)
@click.option('--div', help='Diversity term against mode collapse: weight of relu(1 - fake pair distance / real pair '
              'distance) (0 = off)', type=float, default=0, show_default=True)
@click.option('--div-res', help='Resolution at which --div compares samples (box-downscaled)', type=int, default=8,
              show_default=True)
@click.option('--div-batch', help='Extra constant-noise images per batch chunk that --div compares', type=int,
              default=16, show_default=True)
@click.option('--aug', help='Augmentation mode', type=click.Choice(['noaug', 'ada', 'fixed']), default='ada',
              show_default=True)
@click.option('--p', help='Augmentation probability for --aug=fixed', type=float)
@click.option('--target', help='ADA target value', type=float, default=0.6, show_default=True)
@click.option('--augpipe', help='Augmentation pipeline', type=click.Choice(AUGPIPE_NAMES), default='bgc',
              show_default=True)
@click.option('--grow-from', help='Progressive growing: start resolution', type=int)
@click.option('--grow-kimg', help='Progressive growing: kimg per stage (one value or a comma list)', type=str)
@click.option('--grow-fade-kimg', help='Progressive growing: fade-in kimg', type=float, default=0, show_default=True)
@click.option('--resume', help='Continue a run (run dir or its snapshot) or fine-tune from a pickle/weights file',
              metavar='PKL')
@click.option('--resume-as-new', help='Treat --resume as a pickle to fine-tune from, even if it is a run snapshot',
              is_flag=True)
@click.option('--freezed', help='Freeze-D: number of D layers to freeze', type=int, default=0)
@click.option('--precision', help='auto: mixed on CUDA, fp32 on CPU; mixed = fp16 (CUDA) / bf16 (CPU) blocks',
              type=click.Choice(['auto', 'fp32', 'mixed']), default='auto', show_default=True)
@click.option('--fp32', help='Disable mixed precision (same as --precision=fp32)', type=bool, default=False)
@click.option('--nhwc', help='Use NHWC memory format with reduced precision', type=bool, default=False)
@click.option('--nobench', help='Disable cuDNN benchmarking', type=bool, default=False)
@click.option('--allow-tf32', help='Allow TF32 for matmul and convolutions', type=bool, default=False)
@click.option('--workers', help='DataLoader worker processes', type=int)
@click.option('--desc', help='String to include in result dir name', metavar='STR', type=str)
@_plugin_options
def main(ctx, outdir, dry_run, **config_kwargs):
    """Train a GAN (StyleGAN2) with optional plugins."""
    tune_cpu_allocator()
    opts = dnnlib.EasyDict(config_kwargs)
    try:
        _main(ctx, outdir, dry_run, opts)
    except UserError as e:
        click.echo(f'train.py: error: {e}', err=True)
        sys.exit(1)


def _main(ctx, outdir, dry_run, opts):
    # Continue an existing run?
    if opts.resume is not None and not opts.resume_as_new:
        found = resolve_continue(opts.resume)
        if found is not None:
            run_dir, snapshot = found
            allowed = {'outdir', 'resume', 'resume_as_new', 'kimg', 'snap', 'metrics', 'dry_run', 'workers', 'tick'}
            given = [name for name in ctx.params if name not in allowed and
                     ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
            if given:
                raise UserError(f'continuing {run_dir}: options come from its training_options.json; cannot change '
                                f'{", ".join("--" + g.replace("_", "-") for g in given)}')
            with open(os.path.join(run_dir, 'training_options.json')) as f:
                c = dnnlib.EasyDict(json.load(f))
            for key in ('training_set_kwargs', 'data_loader_kwargs', 'G_kwargs', 'D_kwargs', 'G_opt_kwargs',
                        'D_opt_kwargs', 'loss_kwargs', 'augment_kwargs', 'growing_kwargs', 'plugin_options'):
                if isinstance(c.get(key), dict):
                    c[key] = dnnlib.EasyDict(c[key])
            if opts.kimg is not None:
                c.total_kimg = opts.kimg
            if ctx.get_parameter_source('snap') == click.core.ParameterSource.COMMANDLINE:
                c.image_snapshot_ticks = c.network_snapshot_ticks = opts.snap
            if ctx.get_parameter_source('metrics') == click.core.ParameterSource.COMMANDLINE:
                c.metrics = _parse_comma_list(opts.metrics)
            c.resume_pkl = None
            c.run_dir = run_dir
            print(f'Continuing {run_dir} from {snapshot}')
            _warn_precision(c)
            if dry_run:
                print(json.dumps(c, indent=2))
                return
            launch_training(c, resume_snapshot=snapshot)
            return

    c = setup_training_options(opts)
    plugin_names = _plugin_option_names()
    c.plugin_options = dnnlib.EasyDict({k: v for k, v in opts.items() if k in plugin_names})
    if c.get('resume_pkl') is not None:
        _apply_resume_architecture(c)
    for module in PLUGIN_MODULES:
        if hasattr(module, 'update_training_options'):
            module.update_training_options(c, dict(c.plugin_options))
    metric_errors = _check_metrics(c.metrics)
    if metric_errors:
        raise UserError(metric_errors)

    c.run_dir = _next_run_dir(outdir, c.desc)
    print()
    print('Training options:')
    print(json.dumps(c, indent=2))
    print()
    print(f'Output directory:    {c.run_dir}')
    print(f'Number of processes: {c.num_gpus} ({c.device})')
    print(f'Batch size:          {c.batch_size} images')
    print(f'Training duration:   {c.total_kimg} kimg')
    print(f'Dataset path:        {c.training_set_kwargs.get("path", opts.data)}')
    print(f'Dataset resolution:  {c.training_set_kwargs.resolution}')
    print(f'Precision:           {c.precision}')
    print()
    _warn_precision(c)
    if dry_run:
        print('Dry run; exiting.')
        return
    print('Creating output directory...')
    os.makedirs(c.run_dir)
    with open(os.path.join(c.run_dir, 'training_options.json'), 'wt') as f:
        json.dump(c, f, indent=2)
    launch_training(c)


def _warn_precision(c):
    """Print (stderr) the warning that bfloat16 blocks would be emulated on this CPU, if they would be."""
    message = cpu_features.mixed_precision_warning(c.get('precision'), c.get('device', 'cpu'))
    if message:
        print(message, file=sys.stderr)


def _plugin_option_names():
    names = set()
    for module in PLUGIN_MODULES:
        for option in module.cli_options():
            probe = option(lambda: None)
            for param in getattr(probe, '__click_params__', []):
                names.add(param.name)
    return names


def _check_metrics(metrics):
    if not metrics:
        return None
    from metrics import metric_main
    for module in PLUGIN_MODULES:
        if hasattr(module, 'register_metrics'):
            module.register_metrics(metric_main.register_metric)
    bad = [m for m in metrics if not metric_main.is_valid_metric(m)]
    if bad:
        return f'--metrics: unknown {", ".join(bad)}; valid: {", ".join(metric_main.list_valid_metrics())}'
    return None


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
