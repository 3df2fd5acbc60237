"""The training loop: StyleGAN2 phases with lazy regularisation, G_ema, ADA, progressive growing, plugin hooks,
exact resume from snapshots, one process or several (torch.distributed; gloo on CPU, nccl on CUDA).

Read top to bottom: setup (seeds, data, networks, resume, augmentation, plugins, loss, phases), initial image grids,
then the main loop (fetch reals, draw latents, run each due phase, EMA, ADA), and at every tick the report, the image
grid, the snapshot, metrics and statistics.
"""

import copy
import json
import os
import pickle
import random
import time

import numpy as np
import PIL.Image
import torch

import dnnlib
from torch_utils import misc
from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix
from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops import upfirdn2d
from training import growing as growing_lib
from training import hooks as hooks_lib
from training import image_source


class TrainingDivergedError(RuntimeError):
    """Raised when a loss becomes NaN or infinite; the message names the last good snapshot."""


# ----------------------------------------------------------------------------------------------------------------------
# Image grids.

def setup_snapshot_image_grid(training_set, random_seed=0, max_cells=None):
    """Pick images for reals.png: grid width/height from the resolution; one label per row when labelled.
    Returns ((gw, gh), images uint8 [N, C, H, W], labels [N, c_dim])."""
    rnd = np.random.RandomState(random_seed)
    gw = int(np.clip(7680 // training_set.image_shape[2], 7, 32))
    gh = int(np.clip(4320 // training_set.image_shape[1], 4, 32))
    if max_cells is not None:
        gw, gh = min(gw, max_cells[0]), min(gh, max_cells[1])
    if not training_set.has_labels:
        all_indices = list(range(len(training_set)))
        rnd.shuffle(all_indices)
        grid_indices = [all_indices[i % len(all_indices)] for i in range(gw * gh)]
    else:
        label_groups = dict()
        for idx in range(len(training_set)):
            label = tuple(training_set.get_details(idx).raw_label.flat[::-1])
            label_groups.setdefault(label, []).append(idx)
        label_order = sorted(label_groups.keys())
        for label in label_order:
            rnd.shuffle(label_groups[label])
        grid_indices = []
        for y in range(gh):
            label = label_order[y % len(label_order)]
            indices = label_groups[label]
            grid_indices += [indices[x % len(indices)] for x in range(gw)]
            label_groups[label] = [indices[(i + gw) % len(indices)] for i in range(len(indices))]
    images, labels = zip(*[training_set[i] for i in grid_indices])
    return (gw, gh), np.stack(images), np.stack(labels)


def save_image_grid(img, fname, drange, grid_size):
    """img [N, C, H, W] (numpy, values in drange) -> one PNG tiled gw x gh, written atomically."""
    lo, hi = drange
    img = np.asarray(img, dtype=np.float32)
    img = (img - lo) * (255 / (hi - lo))
    img = np.rint(img).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    _N, C, H, W = img.shape
    img = img.reshape([gh, gw, C, H, W]).transpose(0, 3, 1, 4, 2).reshape([gh * H, gw * W, C])
    tmp = fname + '.tmp.png'
    if C == 1:
        PIL.Image.fromarray(img[:, :, 0], 'L').save(tmp)
    else:
        PIL.Image.fromarray(img[:, :, :3], 'RGB').save(tmp)
    os.replace(tmp, fname)


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers.

def _rng_state(device):
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def _resize_reals(img, resolution, alpha, f):
    """Downscale real images [N, C, R, R] to the stage resolution with filter f; fade like the generator does."""
    while img.shape[-1] > resolution:
        img = upfirdn2d.downsample2d(img, f)
    if alpha < 1:
        low = upfirdn2d.upsample2d(upfirdn2d.downsample2d(img, f), f)
        img = torch.lerp(low, img, float(alpha))
    return img


def _format_status(fields):
    return ' '.join(f'{k} {v}' for k, v in fields)


class _Phase:
    def __init__(self, name, modules, opt, interval):
        self.name = name
        self.modules = modules
        self.opt = opt
        self.interval = interval
        self.start_event = None
        self.end_event = None
        self.frozen = []  # Parameters with learning-rate multiplier 0 (kept without gradient).


def _block_param_groups(module, prefix, lr):
    """One optimiser parameter group per block: parameters named 'synthesis.bN.*' group by 'synthesis.bN', others
    by their first name component. Fixed structure, so optimiser states stay loadable whatever is frozen."""
    groups = {}
    for pname, param in module.named_parameters():
        parts = pname.split('.')
        key = '.'.join(parts[:2]) if parts[0] == 'synthesis' and len(parts) > 2 else \
            (parts[0] if len(parts) > 1 else '')
        groups.setdefault(key, []).append(param)
    return [dict(params=params, lr=lr, base_lr=lr, block=prefix + key) for key, params in groups.items()]


def lr_step_factor(lr_steps, cur_nimg):
    """The learning-rate factor of a step schedule at cur_nimg images: the factor of the last (kimg, factor) in
    lr_steps with kimg * 1000 <= cur_nimg, 1.0 before the first. Factors are absolute, not cumulative."""
    factor = 1.0
    for kimg, step_factor in sorted(lr_steps or (), key=lambda step: float(step[0])):
        if float(kimg) * 1000 <= cur_nimg:
            factor = float(step_factor)
    return factor


def _apply_lr_multipliers(phases, side, multipliers, factor=1.0):
    """Set each block group's lr to base_lr x multiplier x factor (the --lr-steps factor); remember the frozen
    (multiplier 0) parameters."""
    side_phases = [phase for phase in phases if phase.name.startswith(side)]
    opt = side_phases[0].opt
    frozen = []
    for group in opt.param_groups:
        mults = {float(multipliers.get(p, 1.0)) for p in group['params']}
        if len(mults) != 1:
            raise ValueError(f'learning-rate multipliers differ within block {group["block"]!r}: {sorted(mults)}')
        mult = mults.pop()
        group['lr'] = group['base_lr'] * mult * factor
        if mult == 0:
            frozen += group['params']
    for phase in side_phases:
        phase.frozen = frozen


# ----------------------------------------------------------------------------------------------------------------------

def training_loop(
    run_dir                 = '.',      # Output directory.
    training_set_kwargs     = {},       # Options for the training set (class_name + kwargs).
    data_loader_kwargs      = {},       # Options for torch.utils.data.DataLoader.
    G_kwargs                = {},       # Options for the generator network.
    D_kwargs                = {},       # Options for the discriminator network.
    G_opt_kwargs            = {},       # Options for the generator optimizer.
    D_opt_kwargs            = {},       # Options for the discriminator optimizer.
    augment_kwargs          = None,     # Options for the augmentation pipeline, None = disable.
    loss_kwargs             = {},       # Options for the loss function.
    metrics                 = [],       # Metrics to evaluate during training.
    random_seed             = 0,        # Global random seed.
    num_gpus                = 1,        # Number of processes (GPUs or CPU workers) taking part.
    rank                    = 0,        # Rank of this process in [0, num_gpus).
    batch_size              = 4,        # Total batch size for one training iteration.
    batch_gpu               = 4,        # Number of samples processed at a time by one process.
    ema_kimg                = 10,       # Half-life of the exponential moving average (EMA) of generator weights.
    ema_rampup              = 0.05,     # EMA ramp-up coefficient, None = no rampup.
    G_reg_interval          = None,     # How often to perform regularization for G? None = disable lazy reg.
    D_reg_interval          = 16,       # How often to perform regularization for D? None = disable lazy reg.
    augment_p               = 0,        # Initial value of augmentation probability.
    ada_target              = None,     # ADA target value. None = fixed p.
    ada_interval            = 4,        # How often to perform ADA adjustment?
    ada_kimg                = 500,      # ADA adjustment speed: kimg for p to go 0 -> 1.
    total_kimg              = 25000,    # Total length of the training, in thousands of real images.
    kimg_per_tick           = 4,        # Progress snapshot interval.
    image_snapshot_ticks    = 50,       # How often to save image snapshots? None = disable.
    network_snapshot_ticks  = 50,       # How often to save network snapshots? None = disable.
    resume_pkl              = None,     # Network pickle/weights to fine-tune from (a new run, counters from 0).
    resume_snapshot         = None,     # Snapshot of THIS run to continue exactly (counters, optimizers, RNG...).
    growing_kwargs          = None,     # Progressive growing: dict(resolutions, stage_kimg, fade_kimg); None = off.
    device                  = None,     # 'cpu', 'cuda' or None = cuda:rank when available, else cpu.
    plugins                 = (),       # TrainingPlugin instances (training/hooks.py).
    metric_kwargs           = {},       # Extra options for metric evaluation (e.g. detector_url).
    cudnn_benchmark         = True,     # Enable torch.backends.cudnn.benchmark?
    allow_tf32              = False,    # Enable TF32 for matmul and convolutions?
    abort_fn                = None,     # Callback that determines whether to abort training.
    progress_fn             = None,     # Callback function for updating training progress.
    max_grid_cells          = None,     # Optional (gw, gh) cap on the image grids (small runs).
    lr_steps                = None,     # [(kimg, factor), ...]: from kimg on, every learning rate x factor.
):
    # Initialize.
    start_time = time.time()
    if device is None:
        device = f'cuda:{rank}' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    np.random.seed(random_seed * num_gpus + rank)
    torch.manual_seed(random_seed * num_gpus + rank)
    random.seed(random_seed * num_gpus + rank)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    conv2d_gradfix.enabled = True
    grid_sample_gradfix.enabled = True
    sync_device = (device if device.type == 'cuda' else torch.device('cpu')) if num_gpus > 1 else None
    training_stats.init_multiprocessing(rank=rank, sync_device=sync_device)
    if batch_size % num_gpus != 0 or (batch_size // num_gpus) % batch_gpu != 0:
        raise ValueError(f'batch {batch_size} must be divisible by processes ({num_gpus}) x batch_gpu ({batch_gpu})')
    batch_per_rank = batch_size // num_gpus

    def log(msg):
        if rank == 0:
            print(msg, flush=True)

    # Resume state of this run (exact continuation).
    resume_data = None
    if resume_snapshot is not None:
        log(f'Resuming run from "{resume_snapshot}"...')
        with open(resume_snapshot, 'rb') as f:
            import legacy
            resume_data = legacy.load_network_pkl(f)
        if 'resume_state' not in resume_data:
            raise ValueError(f'{resume_snapshot}: has no resume_state (not a snapshot of this code base); '
                             f'use it as --resume=<pkl> of a new run to fine-tune')
    rs = resume_data['resume_state'] if resume_data is not None else None
    cur_nimg = rs['cur_nimg'] if rs else 0
    cur_tick = rs['cur_tick'] if rs else 0
    batch_idx = rs['batch_idx'] if rs else 0
    elapsed_before = rs.get('elapsed_sec', 0.0) if rs else 0.0

    # Load training set.
    log('Loading training set...')
    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    training_set_sampler = misc.InfiniteSampler(dataset=training_set, rank=rank, num_replicas=num_gpus,
                                                seed=random_seed, start_index=batch_idx * batch_per_rank)
    training_set_iterator = iter(torch.utils.data.DataLoader(dataset=training_set, sampler=training_set_sampler,
                                                             batch_size=batch_per_rank, **data_loader_kwargs))
    log(f'Num images: {len(training_set)}')
    log(f'Image shape: {training_set.image_shape}')
    log(f'Label shape: {training_set.label_shape}')
    log('')

    # Construct networks.
    log('Constructing networks...')
    common_kwargs = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution,
                         img_channels=training_set.num_channels)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train().requires_grad_(False).to(device)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common_kwargs).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()

    # Plugins: extra modules next to G and D.
    hooks = hooks_lib.HookManager(plugins)
    extras = hooks.extra_modules(G, D, training_set, device)
    for em in extras.values():
        em.module.train().requires_grad_(False).to(device)
    extras_ema = {name: copy.deepcopy(em.module).eval() for name, em in extras.items() if em.side == 'G'}
    hooks.set_ema_modules(extras_ema)

    # Fine-tune from a pickle (a new run) or restore this run's snapshot.
    if resume_pkl is not None and resume_data is None:
        import legacy
        log(f'Resuming from "{resume_pkl}"')
        src = legacy.load_network(resume_pkl)
        for name, module in [('G', G), ('D', D), ('G_ema', G_ema)]:
            report = legacy.copy_all_tensors(src[name].to(device), module, resume_pkl, name)
            log(f'  {name}: copied {len(report.matched)} tensors')
        for name, module in list(extras.items()):
            src_mod = (src.get('extra_modules') or {}).get(name)
            if src_mod is not None:
                # A plugin option switched on for the fine-tuning run may add tensors the pickle lacks: they keep
                # the plugin's initialisation, named in the log.
                report = legacy.copy_all_tensors(src_mod, module.module, resume_pkl, name, allow_missing=True)
                # G_ema comes from the pickle's G_ema, so a G-side module's EMA copy comes from the pickle's EMA copy
                # (the module, not its average, would pair G_ema's features with weights of another kind).
                src_ema = (src.get('extra_modules_ema') or {}).get(name)
                ema = ''
                if name in extras_ema and src_ema is not None:
                    legacy.copy_all_tensors(src_ema, extras_ema[name], resume_pkl, f'{name} (EMA)', allow_missing=True)
                    ema = ' (its EMA copy from the pickle\'s EMA copy)'
                kept = f'; kept as initialised (not in the pickle): {", ".join(report.missing)}' \
                    if report.missing else ''
                log(f'  {name}: copied from the pickle{ema}{kept}')
    if resume_data is not None:
        for name, module in [('G', G), ('D', D), ('G_ema', G_ema)]:
            misc.copy_params_and_buffers(resume_data[name], module, require_all=True)
        for name, em in extras.items():
            misc.copy_params_and_buffers(resume_data['extra_modules'][name], em.module, require_all=True)
        for name, mod in extras_ema.items():
            misc.copy_params_and_buffers(resume_data['extra_modules_ema'][name], mod, require_all=True)

    # Print network summary tables.
    if rank == 0:
        z = torch.empty([batch_gpu, G.z_dim], device=device)
        c = torch.empty([batch_gpu, G.c_dim], device=device)
        img = misc.print_module_summary(G, [z, c])
        misc.print_module_summary(D, [img, c])

    # Setup augmentation.
    augment_pipe = None
    ada_signs = None
    if augment_kwargs is not None and (augment_p > 0 or ada_target is not None):
        log('Setting up augmentation...')
        augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs).train().requires_grad_(False).to(device)
        augment_pipe.p.copy_(torch.as_tensor(augment_p))
        if resume_data is not None and resume_data.get('augment_pipe') is not None:
            misc.copy_params_and_buffers(resume_data['augment_pipe'], augment_pipe, require_all=True)
        if ada_target is not None:
            ada_signs = torch.zeros([2], dtype=torch.float64, device=device)  # [sum of signs, count]
            if rs is not None and rs.get('ada_signs') is not None:
                ada_signs.copy_(rs['ada_signs'])

    # Distribute across processes: identical initial weights everywhere.
    if num_gpus > 1:
        log(f'Distributing across {num_gpus} processes...')
        for module in [G, D, G_ema, augment_pipe] + [em.module for em in extras.values()] + list(extras_ema.values()):
            if module is not None:
                for param in misc.params_and_buffers(module):
                    torch.distributed.broadcast(param, src=0)

    # Setup training phases.
    log('Setting up training phases...')
    loss = dnnlib.util.construct_class_by_name(device=device, G=G, D=D, augment_pipe=augment_pipe, hooks=hooks,
                                               **loss_kwargs)
    loss.ada_signs = ada_signs
    if rs is not None:
        loss.load_state_dict(rs['loss_state'])
    phases = []
    for name, module, opt_kwargs, reg_interval in [('G', G, G_opt_kwargs, G_reg_interval),
                                                    ('D', D, D_opt_kwargs, D_reg_interval)]:
        side_extras = [em for em in extras.values() if em.side == name]
        opt_kwargs = dnnlib.EasyDict(opt_kwargs)
        if 'betas' in opt_kwargs:
            opt_kwargs.betas = [float(beta) for beta in opt_kwargs.betas]
        if reg_interval is not None:
            mb_ratio = reg_interval / (reg_interval + 1)
            opt_kwargs.lr = opt_kwargs.lr * mb_ratio
            opt_kwargs.betas = [beta ** mb_ratio for beta in opt_kwargs.betas]
        groups = _block_param_groups(module, '', opt_kwargs.lr)
        for em_name, em in extras.items():
            if em.side == name:
                groups += _block_param_groups(em.module, em_name + '/', opt_kwargs.lr * em.lr_multiplier)
        opt = dnnlib.util.construct_class_by_name(groups, **opt_kwargs)
        modules = [module] + [em.module for em in side_extras]
        if reg_interval is None:
            phases += [_Phase(name + 'both', modules, opt, 1)]
        else:
            phases += [_Phase(name + 'main', modules, opt, 1)]
            phases += [_Phase(name + 'reg', modules, opt, reg_interval)]
        if rs is not None:
            opt.load_state_dict(rs['opt_states'][name])
    for phase in phases:
        if rank == 0 and device.type == 'cuda':
            phase.start_event = torch.cuda.Event(enable_timing=True)
            phase.end_event = torch.cuda.Event(enable_timing=True)
    if rs is not None:
        hooks.load_state_dict(rs.get('plugin_state', {}))

    # Progressive growing.
    schedule = growing_lib.GrowingSchedule(**growing_kwargs) if growing_kwargs else None
    if schedule is not None and schedule.final_resolution != training_set.resolution:
        raise ValueError(f'growing schedule ends at {schedule.final_resolution}, the data is '
                         f'{training_set.resolution}x{training_set.resolution}')
    down_filter = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)

    # Export sample images.
    grid_size = grid_z = grid_c = None
    if rank == 0 and resume_data is None:
        log('Exporting sample images...')
        grid_size, images, labels = setup_snapshot_image_grid(training_set, random_seed, max_grid_cells)
        save_image_grid(images, os.path.join(run_dir, 'reals.png'), drange=[0, 255], grid_size=grid_size)
    if rank == 0:
        if grid_size is None:
            grid_size, _images, labels = setup_snapshot_image_grid(training_set, random_seed, max_grid_cells)
        grid_gen = torch.Generator().manual_seed(random_seed)  # Own RNG: grids never disturb the training RNG.
        grid_z = torch.randn([labels.shape[0], G.z_dim], generator=grid_gen).to(device).split(batch_gpu)
        grid_c = torch.from_numpy(labels).to(device).split(batch_gpu)

    def render_grid(stage_res):
        force_fp32 = device.type != 'cuda'
        with torch.no_grad():
            kwargs = dict(noise_mode='const', force_fp32=force_fp32)
            if stage_res is not None and stage_res != G_ema.img_resolution:
                kwargs['max_res'] = stage_res
            ws = [G_ema.mapping(z, c) for z, c in zip(grid_z, grid_c)]
            if hooks.replaces_generator_image():  # The grid shows what D judges: the plugin's image, EMA version.
                images = []
                for w in ws:
                    img, feats = G_ema.synthesis(w, return_features=True, **kwargs)
                    images.append(hooks.generator_image(img, feats, 1.0, ema=True).cpu())
                return torch.cat(images).numpy()
            return torch.cat([G_ema.synthesis(w, **kwargs).cpu() for w in ws]).numpy()

    if rank == 0 and resume_data is None:
        stage0 = schedule.at(0).resolution if schedule is not None else None
        save_image_grid(render_grid(stage0), os.path.join(run_dir, 'fakes_init.png'), drange=[-1, 1],
                        grid_size=grid_size)

    # Initialize logs.
    log('Initializing logs...')
    stats_collector = training_stats.Collector(regex='.*')
    stats_collector.update()  # Drop anything reported before training started (e.g. by an earlier run in-process).
    stats_metrics = dict()
    stats_jsonl = None
    stats_tfevents = None
    if rank == 0:
        stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
        try:
            import torch.utils.tensorboard as tensorboard
            stats_tfevents = tensorboard.SummaryWriter(run_dir)
        except ImportError:
            pass

    # Metrics registry (the host's; plugins may add metrics).
    from metrics import metric_main
    hooks.register_metrics(metric_main.register_metric)
    for metric in metrics:
        if not metric_main.is_valid_metric(metric):
            raise ValueError(f'unknown metric {metric!r}; valid: {", ".join(metric_main.list_valid_metrics())}')

    # Restore RNG state last: everything above that draws random numbers ran in the original run too.
    if rs is not None:
        states = rs['rng_states']
        _set_rng_state(states[rank] if isinstance(states, list) else states, device)

    # Train.
    log(f'Training for {total_kimg} kimg...')
    log('')
    tick_start_nimg = cur_nimg
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    current_stage = None
    last_snapshot = rs.get('snapshot_pkl') if rs else None
    if progress_fn is not None:
        progress_fn(0, total_kimg)

    lr_factor = 1.0  # The --lr-steps factor in force.

    def update_lr_multipliers(stage):
        """Every group's lr from its base_lr, the plugins' multipliers and the step factor (also after a resume,
        whose loaded optimiser states carry the lr of the run they came from)."""
        for side, module in [('G', G), ('D', D)]:
            side_modules = {name: em.module for name, em in extras.items() if em.side == side}
            mults = hooks.param_lr_multipliers(side, module, side_modules, stage) if hooks else {}
            _apply_lr_multipliers(phases, side, mults, lr_factor)

    if schedule is None:
        update_lr_multipliers(None)
    # What after_step gets besides the counters: the same objects for the whole run.
    step_handles = dict(G=G, D=D, G_ema=G_ema, modules={name: em.module for name, em in extras.items()},
                        ema_modules=extras_ema,
                        optimizers={side: next(ph.opt for ph in phases if ph.name.startswith(side))
                                    for side in ('G', 'D')})

    while True:
        # Progressive growing stage.
        stage = schedule.at(cur_nimg) if schedule is not None else None
        if stage is not None:
            if current_stage is None or stage.index != current_stage.index:
                log(f'Stage {stage.index + 1}/{len(schedule.resolutions)}: {stage.resolution}x{stage.resolution}')
                hooks.on_stage(stage, G, D, {name: em.module for name, em in extras.items()})
                update_lr_multipliers(stage)
            loss.resolution = stage.resolution if stage.resolution != training_set.resolution else None
            loss.fade_alpha = stage.alpha
            current_stage = stage

        # Learning-rate steps (--lr-steps): a function of cur_nimg alone, so a resumed run lands on the same factor.
        if lr_steps and lr_step_factor(lr_steps, cur_nimg) != lr_factor:
            lr_factor = lr_step_factor(lr_steps, cur_nimg)
            log(f'Learning rates x {lr_factor:g} from kimg {cur_nimg / 1000:.1f}')
            update_lr_multipliers(current_stage)

        # Fetch training data.
        with torch.autograd.profiler.record_function('data_fetch'):
            phase_real_img, phase_real_c = next(training_set_iterator)
            phase_real_img = phase_real_img.to(device).to(torch.float32) / 127.5 - 1
            if stage is not None and (stage.resolution != training_set.resolution or stage.alpha < 1):
                phase_real_img = _resize_reals(phase_real_img, stage.resolution, stage.alpha, down_filter)
            phase_real_img = phase_real_img.split(batch_gpu)
            phase_real_c = phase_real_c.to(device).split(batch_gpu)
            all_gen_z = torch.randn([len(phases) * batch_per_rank, G.z_dim], device=device)
            all_gen_z = [phase_gen_z.split(batch_gpu) for phase_gen_z in all_gen_z.split(batch_per_rank)]
            all_gen_c = [training_set.get_label(np.random.randint(len(training_set)))
                         for _ in range(len(phases) * batch_per_rank)]
            all_gen_c = torch.from_numpy(np.stack(all_gen_c)).pin_memory() if device.type == 'cuda' else \
                torch.from_numpy(np.stack(all_gen_c))
            all_gen_c = all_gen_c.to(device)
            all_gen_c = [phase_gen_c.split(batch_gpu) for phase_gen_c in all_gen_c.split(batch_per_rank)]

        # Execute training phases.
        for phase, phase_gen_z, phase_gen_c in zip(phases, all_gen_z, all_gen_c):
            if batch_idx % phase.interval != 0:
                continue
            if phase.start_event is not None:
                phase.start_event.record(torch.cuda.current_stream(device))

            phase.opt.zero_grad(set_to_none=True)
            for module in phase.modules:
                module.requires_grad_(True)
            for param in phase.frozen:
                param.requires_grad_(False)
            for real_img, real_c, gen_z, gen_c in zip(phase_real_img, phase_real_c, phase_gen_z, phase_gen_c):
                loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c, gen_z=gen_z,
                                          gen_c=gen_c, gain=phase.interval, cur_nimg=cur_nimg)
            for module in phase.modules:
                module.requires_grad_(False)

            with torch.autograd.profiler.record_function(phase.name + '_opt'):
                params = [p for group in phase.opt.param_groups for p in group['params'] if p.grad is not None]
                if len(params) > 0:
                    flat = torch.cat([p.grad.flatten() for p in params])
                    if num_gpus > 1:
                        torch.distributed.all_reduce(flat)
                        flat /= num_gpus
                    misc.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                    grads = flat.split([p.numel() for p in params])
                    for p, grad in zip(params, grads):
                        p.grad = grad.reshape(p.shape)
                phase.opt.step()

            if phase.end_event is not None:
                phase.end_event.record(torch.cuda.current_stream(device))

        # Update G_ema (and the EMA copies of G-side plugin modules).
        with torch.autograd.profiler.record_function('Gema'):
            ema_nimg = ema_kimg * 1000
            if ema_rampup is not None:
                ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
            ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
            pairs = [(G_ema, G)] + [(extras_ema[name], extras[name].module) for name in extras_ema]
            for dst, src in pairs:
                for p_ema, p in zip(dst.parameters(), src.parameters()):
                    p_ema.copy_(p.detach().lerp(p_ema, ema_beta))
                for b_ema, b in zip(dst.buffers(), src.buffers()):
                    b_ema.copy_(b)

        # Update state.
        cur_nimg += batch_size
        batch_idx += 1
        if hooks:
            hooks.after_step(dict(step_handles, cur_nimg=cur_nimg, batch_idx=batch_idx))

        # Execute ADA heuristic.
        if ada_signs is not None and (batch_idx % ada_interval == 0):
            signs = ada_signs.clone()
            if num_gpus > 1:
                torch.distributed.all_reduce(signs)
            if signs[1] > 0:
                mean_sign = float(signs[0] / signs[1])
                adjust = np.sign(mean_sign - ada_target) * (batch_size * ada_interval) / (ada_kimg * 1000)
                augment_pipe.p.copy_((augment_pipe.p + adjust).clamp(min=0, max=1))
            ada_signs.zero_()

        # Perform maintenance tasks once per tick.
        done = (cur_nimg >= total_kimg * 1000)
        if (not done) and (cur_tick != 0) and (cur_nimg < tick_start_nimg + kimg_per_tick * 1000):
            continue

        # Print status line, accumulating the same information in training_stats.
        tick_end_time = time.time()
        total_sec = tick_end_time - start_time + elapsed_before
        sec_per_kimg = (tick_end_time - tick_start_time) / max(cur_nimg - tick_start_nimg, 1) * 1e3
        eta_sec = max(total_kimg * 1000 - cur_nimg, 0) / 1e3 * sec_per_kimg
        cpu_mem_gb = _cpu_mem_gb()
        gpu_mem_gb = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else 0.0
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        training_stats.report0('Progress/tick', cur_tick)
        training_stats.report0('Progress/kimg', cur_nimg / 1e3)
        training_stats.report0('Timing/total_sec', total_sec)
        training_stats.report0('Timing/sec_per_tick', tick_end_time - tick_start_time)
        training_stats.report0('Timing/sec_per_kimg', sec_per_kimg)
        training_stats.report0('Timing/maintenance_sec', maintenance_time)
        training_stats.report0('Timing/eta_sec', eta_sec)
        training_stats.report0('Timing/total_hours', total_sec / (60 * 60))
        training_stats.report0('Timing/total_days', total_sec / (24 * 60 * 60))
        training_stats.report0('Resources/cpu_mem_gb', cpu_mem_gb)
        training_stats.report0('Resources/peak_gpu_mem_gb', gpu_mem_gb)
        training_stats.report0('Progress/augment', float(augment_pipe.p.cpu()) if augment_pipe is not None else 0)
        if stage is not None:
            training_stats.report0('Progress/resolution', stage.resolution)
            training_stats.report0('Progress/fade_alpha', stage.alpha)
        for name, value in hooks.on_tick(dict(cur_nimg=cur_nimg, cur_tick=cur_tick, stage=stage)).items():
            training_stats.report0(f'Plugin/{name}', value)
        for phase in phases:
            if phase.start_event is not None and phase.end_event is not None:
                torch.cuda.synchronize(device)
                training_stats.report0('Timing/' + phase.name, phase.start_event.elapsed_time(phase.end_event))
        stats_collector.update()
        stats_dict = stats_collector.as_dict()

        fields = [('tick', f'{cur_tick:<5d}'), ('kimg', f'{cur_nimg / 1e3:<8.1f}'),
                  ('time', f'{dnnlib.util.format_time(total_sec):<12s}'),
                  ('sec/tick', f'{tick_end_time - tick_start_time:<7.1f}'), ('sec/kimg', f'{sec_per_kimg:<7.2f}'),
                  ('eta', f'{dnnlib.util.format_time(eta_sec):<12s}'), ('maintenance', f'{maintenance_time:<6.1f}'),
                  ('cpumem', f'{cpu_mem_gb:<6.2f}'), ('gpumem', f'{gpu_mem_gb:<6.2f}')]
        if augment_pipe is not None:
            fields.append(('augment', f'{float(augment_pipe.p.cpu()):.3f}'))
        if stage is not None:
            fields.append(('res', f'{stage.resolution}' + (f'({stage.alpha:.2f})' if stage.alpha < 1 else '')))
        for key, short in [('Loss/G/loss', 'lossG'), ('Loss/D/loss', 'lossD')]:
            if key in stats_dict:
                fields.append((short, f'{stats_dict[key].mean:<7.3f}'))
        log(_format_status(fields))

        # Divergence check: stop before writing anything from a broken state.
        bad = [k for k, v in stats_dict.items() if k.startswith('Loss/') and v.num > 0 and not np.isfinite(v.mean)]
        if bad:
            msg = f'Training diverged at kimg {cur_nimg / 1e3:.1f}: non-finite {", ".join(sorted(bad))}. '
            msg += f'Last good snapshot: {last_snapshot}' if last_snapshot else 'No snapshot was written yet.'
            if stats_jsonl is not None:
                stats_jsonl.close()
            raise TrainingDivergedError(msg)

        # Check for abort.
        if (not done) and (abort_fn is not None) and abort_fn():
            done = True
            log('')
            log('Aborting...')

        # Save image snapshot.
        if rank == 0 and image_snapshot_ticks is not None and (done or cur_tick % image_snapshot_ticks == 0):
            images = render_grid(stage.resolution if stage is not None else None)
            save_image_grid(images, os.path.join(run_dir, f'fakes{cur_nimg // 1000:06d}.png'), drange=[-1, 1],
                            grid_size=grid_size)

        # Save network snapshot.
        snapshot_pkl = None
        snapshot_data = None
        if network_snapshot_ticks is not None and (done or cur_tick % network_snapshot_ticks == 0):
            snapshot_data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe,
                                 training_set_kwargs=dict(training_set_kwargs))
            if extras:
                snapshot_data['extra_modules'] = {name: em.module for name, em in extras.items()}
                snapshot_data['extra_modules_ema'] = dict(extras_ema)
            snapshot_data.update(hooks.snapshot_extras())
            for key, value in list(snapshot_data.items()):
                if isinstance(value, torch.nn.Module):
                    if num_gpus > 1:
                        misc.check_ddp_consistency(value, ignore_regex=r'.*\.[^.]+_(avg|ema)')
                    snapshot_data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
                elif isinstance(value, dict) and value and all(isinstance(v, torch.nn.Module)
                                                               for v in value.values()):
                    snapshot_data[key] = {k: copy.deepcopy(v).eval().requires_grad_(False).cpu()
                                          for k, v in value.items()}
            rng_states = _rng_state(device)
            if num_gpus > 1:
                gathered = [None] * num_gpus
                torch.distributed.all_gather_object(gathered, rng_states)
                rng_states = gathered
            snapshot_pkl = os.path.join(run_dir, f'network-snapshot-{cur_nimg // 1000:06d}.pkl')
            snapshot_data['resume_state'] = dict(
                cur_nimg=cur_nimg, cur_tick=cur_tick + 1, batch_idx=batch_idx, elapsed_sec=total_sec,
                opt_states={phase.name[0]: _cpu_state(phase.opt.state_dict()) for phase in phases},
                loss_state=loss.state_dict(), plugin_state=hooks.state_dict(), rng_states=rng_states,
                ada_signs=ada_signs.cpu() if ada_signs is not None else None,
                snapshot_pkl=os.path.basename(snapshot_pkl), num_gpus=num_gpus)
            if rank == 0:
                _save_pickle_atomic(snapshot_data, snapshot_pkl)
                last_snapshot = snapshot_pkl

        # Evaluate metrics.
        if snapshot_data is not None and len(metrics) > 0:
            log('Evaluating metrics...')
            G_metric, _ = image_source.network_generator(snapshot_data)  # the image the run trains D on
            for metric in metrics:
                result_dict = metric_main.calc_metric(metric=metric, G=G_metric,
                                                      dataset_kwargs=training_set_kwargs, num_gpus=num_gpus,
                                                      rank=rank, device=device, **metric_kwargs)
                if rank == 0:
                    metric_main.report_metric(result_dict, run_dir=run_dir, snapshot_pkl=snapshot_pkl)
                stats_metrics.update(result_dict.results)
        del snapshot_data

        # Update logs.
        timestamp = time.time()
        if stats_jsonl is not None:
            fields = dict({k: v for k, v in stats_dict.items() if v.num > 0}, timestamp=timestamp)
            stats_jsonl.write(json.dumps(fields) + '\n')
            stats_jsonl.flush()
        if stats_tfevents is not None:
            global_step = int(cur_nimg / 1e3)
            walltime = timestamp - start_time
            for name, value in stats_dict.items():
                if value.num > 0:
                    stats_tfevents.add_scalar(name, value.mean, global_step=global_step, walltime=walltime)
            for name, value in stats_metrics.items():
                stats_tfevents.add_scalar(f'Metrics/{name}', value, global_step=global_step, walltime=walltime)
            stats_tfevents.flush()
        if progress_fn is not None:
            progress_fn(cur_nimg // 1000, total_kimg)

        # Update state.
        cur_tick += 1
        tick_start_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    # Done.
    if stats_jsonl is not None:
        stats_jsonl.close()
    log('')
    log('Exiting...')
    return dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe, cur_nimg=cur_nimg, last_snapshot=last_snapshot)


def _cpu_state(obj):
    """Deep copy of an optimizer state dict with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_state(v) for v in obj)
    return copy.deepcopy(obj)


def _save_pickle_atomic(data, path):
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            pickle.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _cpu_mem_gb():
    try:
        with open('/proc/self/statm') as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf('SC_PAGE_SIZE') / 2 ** 30
    except (OSError, ValueError, AttributeError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
