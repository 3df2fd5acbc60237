"""Contrast recalibration of a snapshot's EMA output heads (`python -m fsr_plugin.ema_calibration`).

G_ema is an average of the generator's weights, not of its images. On the synthetic teacher the average of a
generator with ReLU layers and a winner-take-all top level paints less contrast than the iterates it averages: the
40-kimg snapshots of the best recipe paint 0.80-0.91 of the reals' patch variance per level; in a run that logs the
training copy's batches (`--fsr-contrast`) they read 0.95-0.99 while its G_ema reads 0.86-0.92, and a longer average
is dimmer still (docs/RESULTS.md section 18). This is the
generator analogue of the batch-norm statistics that weight averaging (SWA) recomputes after averaging
(`torch.optim.swa_utils.update_bn`): after the average, each level's output gets one scalar gain about its own
mean so that its q x q patches have the real pyramid's total variance,

    x_r' = m_r + k_r (x_r - m_r),   k_r = sqrt(t_real,r / t_fake,r),

with m_r the fake level's per-channel mean and t the trace of the patch covariance (the `--fsr-contrast` and
`fsr_moment_gap` statistic), both measured on `num` generated and `num` real images. The gain goes into the head's
learned gain (`--fsr-head-gain`) or, for heads without unit-norm atoms, into its weight; the bias absorbs the mean,
so the means, the atoms' directions, the winner-take-all selection and every other level are unchanged. One scalar
per level is all it fits: the shape of the covariance stays the generator's, and so do the means unless the option
below moves them.

Optionally (`--mean-images=N`), each level's mean colour as well: the head's bias moves by the reals' per-channel
mean minus the level's, measured on N generated images and N real images (the whole data set when it holds no more
than N). The training copy's level colours wander: in a fine-tuning run on the synthetic teacher they sat up to 0.012
per channel off the reals' at a snapshot and changed sign between snapshots 8 kimg apart. The EMA copy keeps
0.001-0.002 of it, which is small in pixel terms but not against a mean 3x3 patch of norm 0.048: the 1000-image
patch-moment gap reads it as up to 2.4 times its floor (docs/RESULTS.md section 26). The shift is estimated, so its
own noise enters what it corrects: take N well above the evaluation's sample size.

Calibrate a copy for evaluation and generation; resume training from the original (the training copy of the heads
has no such gain, and the EMA would blend the two).
"""

import copy
import math
import os

import click
import torch

import legacy
from fsr_plugin import patch_moment_loss
from fsr_plugin import patch_swd
from fsr_plugin import snapshot_eval

__all__ = ['level_gains', 'apply_gain', 'calibrate_snapshot_heads', 'level_mean_shifts', 'apply_mean_shift',
           'shift_snapshot_head_means']


def level_gains(fake_pyramid, real_pyramid, patch_size=3):
    """{r: (k_r, fake per-channel mean [C])}: k_r = sqrt(real / fake total variance of the q x q patches) for every
    level in both pyramids ({r: [N, C, r, r]}) that holds a patch. Raises ValueError for a level the fakes paint
    flat (zero variance)."""
    out = {}
    for r, x_fake in fake_pyramid.items():
        if r not in real_pyramid or r < patch_size:
            continue
        t_fake = float(patch_moment_loss.patch_total_variance(patch_swd.patch_rows(x_fake.double(), patch_size)))
        t_real = float(patch_moment_loss.patch_total_variance(patch_swd.patch_rows(real_pyramid[r].double(), patch_size)))
        if not t_fake > 0:
            raise ValueError(f'level_gains: the generated level {r} is flat (zero patch variance); nothing to scale')
        out[int(r)] = (math.sqrt(t_real / t_fake), x_fake.double().mean(dim=[0, 2, 3]))
    return out


@torch.no_grad()
def apply_gain(head, gain, mean):
    """Make `head` (fsr_plugin.heads.OutputHead) paint m + gain (x - m) where it painted x, m = mean [C] (its
    outputs' per-channel mean): the gain goes into the learned gain (log_gain) or, without unit-norm atoms, into the
    weight; the bias becomes gain * bias + (1 - gain) * m and a per-position offset (--fsr-head-offset) gain * offset.
    Residual heads and heads without a bias are refused."""
    gain = float(gain)
    if not gain > 0:
        raise ValueError(f'apply_gain: the gain must be > 0, got {gain}')
    if head.residual:
        raise ValueError('apply_gain: a residual head adds the generator image, which a head gain does not scale')
    if head.bias is None:
        raise ValueError('apply_gain: the head has no bias to keep its mean in place')
    if head.log_gain is not None:
        head.log_gain.add_(math.log(gain))
    elif not head.unit_norm_atoms:
        head.weight.mul_(gain)
    else:
        raise ValueError('apply_gain: unit-norm atoms without a learned gain (--fsr-head-gain=0) cannot carry a gain')
    mean = torch.as_tensor(mean, dtype=head.bias.dtype, device=head.bias.device).reshape(head.bias.shape)
    head.bias.copy_(gain * head.bias + (1 - gain) * mean)
    if getattr(head, 'offset', None) is not None:
        head.offset.mul_(gain)


def _fake_and_real_levels(snapshot, num, seed, z_seed, dataset_kwargs, verb, batch_size):
    """({r: num generated images}, {r: num real images}) at the heads' levels: z seeded with z_seed, random noise
    inputs from torch seeded with `seed` (the caller's global RNG state is kept), reals by a numpy permutation seeded
    with `seed`. Raises ValueError without heads or without a data set."""
    if snapshot.heads is None:
        raise ValueError(f'{snapshot.path}: no FSR output heads to {verb} (not a --fsr run?)')
    dataset_kwargs = dataset_kwargs or snapshot.training_set_kwargs
    if not dataset_kwargs:
        raise ValueError(f'{snapshot.path}: no training set recorded; give the real data')
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        fake = snapshot_eval.pyramid_images(snapshot, num, seed=z_seed, noise_mode='random', batch_size=batch_size)
    real = snapshot_eval.real_pyramid_images(dataset_kwargs, list(snapshot.heads.resolutions), num, seed=seed)
    return fake, real


def calibrate_snapshot_heads(snapshot, num=512, seed=1, patch_size=3, dataset_kwargs=None):
    """Recalibrate snapshot.heads (a `snapshot_eval.Snapshot` with FSR heads) in place: `num` generated images (z
    seeded with 1000003 + seed, random noise inputs, float32 as the metrics run G off CUDA) against `num` real images
    (a numpy permutation seeded with `seed`) of dataset_kwargs (default: the snapshot's training set). Returns
    {r: gain}."""
    fake, real = _fake_and_real_levels(snapshot, num, seed, 1000003 + int(seed), dataset_kwargs, 'calibrate', None)
    gains = {}
    for r, (gain, mean) in level_gains(fake, real, patch_size).items():
        apply_gain(snapshot.heads.head(r), gain, mean)
        gains[r] = gain
    return gains


def level_mean_shifts(fake_pyramid, real_pyramid):
    """{r: real minus fake per-channel mean (float64 [C])} for every level in both pyramids ({r: [N, C, r, r]})."""
    return {int(r): real_pyramid[r].double().mean(dim=[0, 2, 3]) - x.double().mean(dim=[0, 2, 3])
            for r, x in fake_pyramid.items() if r in real_pyramid}


@torch.no_grad()
def apply_mean_shift(head, shift):
    """Make `head` (fsr_plugin.heads.OutputHead) paint x + shift where it painted x (shift [C]), through its bias.
    A head without a bias is refused."""
    if head.bias is None:
        raise ValueError('apply_mean_shift: the head has no bias to carry a shift')
    shift = torch.as_tensor(shift, dtype=head.bias.dtype, device=head.bias.device)
    if shift.numel() != head.bias.numel():
        raise ValueError(f'apply_mean_shift: expected {head.bias.numel()} channel shifts, got {shift.numel()}')
    head.bias.add_(shift.reshape(head.bias.shape))


def shift_snapshot_head_means(snapshot, num=4096, seed=1, dataset_kwargs=None):
    """Move each level's mean colour of snapshot.heads (in place) onto the reals': `num` generated images (z seeded
    with 2000003 + seed, random noise inputs, float32) against `num` real images (a numpy permutation seeded with
    `seed`; the whole data set when it holds no more) of dataset_kwargs (default: the snapshot's training set).
    G runs on 500 latents at a time. Returns {r: the shift, float64 [C]}. Run it after `calibrate_snapshot_heads`
    (the gain keeps the means, so the order does not change the shift's target)."""
    fake, real = _fake_and_real_levels(snapshot, num, seed, 2000003 + int(seed), dataset_kwargs, 'shift', 500)
    shifts = level_mean_shifts(fake, real)
    for r, shift in shifts.items():
        apply_mean_shift(snapshot.heads.head(r), shift)
    return shifts


@click.command()
@click.argument('network', type=click.Path(exists=True, dir_okay=False))
@click.option('--out', 'out_path', help='Where to write the calibrated network pickle', required=True,
              type=click.Path(dir_okay=False))
@click.option('--images', help='Generated and real images measured per level', type=click.IntRange(min=2),
              default=512, show_default=True)
@click.option('--seed', help='Seed of the real sample (numpy permutation) and of the latents', type=int, default=1,
              show_default=True)
@click.option('--patch', help='Patch size q of the total variance', type=click.IntRange(min=1), default=3,
              show_default=True)
@click.option('--mean-images', help='Also move each level\'s mean colour onto the reals\', measured on this many '
              'generated and real images (0 = off)', type=click.IntRange(min=0), default=0, show_default=True)
def main(network, out_path, images, seed, patch, mean_images):
    """Recalibrate the contrast of NETWORK's EMA output heads (one gain per level about its mean) and, with
    --mean-images, their mean colours; write the result to --out, with the gains (and shifts) under the pickle key
    'fsr_ema_calibration'."""
    if os.path.abspath(out_path) == os.path.abspath(network):
        raise click.UsageError('--out must differ from NETWORK: keep the original for resuming training')
    try:
        snapshot = snapshot_eval.Snapshot(network)
        gains = calibrate_snapshot_heads(snapshot, num=images, seed=seed, patch_size=patch)
        shifts = shift_snapshot_head_means(snapshot, num=mean_images, seed=seed) if mean_images >= 1 else {}
    except ValueError as e:
        raise click.ClickException(str(e))
    data = legacy.load_network(network)
    data['extra_modules_ema'][snapshot.heads_key] = copy.deepcopy(snapshot.heads).cpu()
    data['fsr_ema_calibration'] = dict(gains={int(r): float(g) for r, g in gains.items()}, images=images, seed=seed,
                                       patch=patch, source=os.path.basename(network))
    if shifts:
        data['fsr_ema_calibration'].update(mean_shifts={int(r): [float(v) for v in s] for r, s in shifts.items()},
                                           mean_images=mean_images)
    legacy.save_network_pkl(data, out_path)
    line = 'gains ' + ' '.join(f'r{r}={g:.4f}' for r, g in sorted(gains.items()))
    if shifts:
        line += '; mean shifts ' + ' '.join(f'r{r}=(' + ', '.join(f'{v:+.4f}' for v in s.tolist()) + ')'
                                            for r, s in sorted(shifts.items()))
    click.echo(line + f' -> {out_path}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
