"""Which contrast the `--fsr-swd` losses ask for; prints figures.

Two disjoint real batches A and B of fsr-synthetic teacher images (its box-downscaled pyramid, as the plugin builds
the real pyramid): the loss of gain x A against B, averaged over --batches pairs of batches, for a range of gains,
per level, for whole images (`--fsr-swd-image`, patch size 0) and 3x3 patches (`--fsr-swd`), plain and split-half
(`--fsr-swd-unbiased`). A loss without a bias is smallest at gain 1 (A and B come from one distribution); the
plain whole-image loss in batches of 32 is smallest near 0.92 (the expected order statistics of 32 normal draws
hold 0.92 of their variance), and a generator trained with it is pulled to about 0.85 of the reals' patch variance.

    python bench/fsr_swd_bias.py --batch=32 --batches=20
"""
import os
import sys

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fsr_plugin import patch_swd  # noqa: E402
from fsr_plugin import pyramid as pyramid_lib  # noqa: E402
from fsr_plugin.synthetic import FSRTeacher  # noqa: E402


def mean_losses(images, gains, levels, batch, batches, patch_size, unbiased):
    """float64 [len(gains), len(levels)]: the loss of gain x batch A against batch B, mean over `batches` pairs."""
    total = np.zeros((len(gains), len(levels)))
    weights = {r: 1.0 for r in levels}
    for b in range(batches):
        a = pyramid_lib.build_pyramid(images[2 * b * batch:(2 * b + 1) * batch], levels)
        other = pyramid_lib.build_pyramid(images[(2 * b + 1) * batch:(2 * b + 2) * batch], levels)
        for i, g in enumerate(gains):
            out = patch_swd.level_swd_losses({r: g * a[r] for r in levels}, other, weights, patch_size=patch_size,
                                             seed=b, unbiased=unbiased)
            total[i] += [float(out[r][1]) for r in levels]
    return total / batches


@click.command()
@click.option('--res', type=int, default=32, show_default=True, help='Teacher resolution')
@click.option('--batch', type=click.IntRange(min=2), default=32, show_default=True, help='Images per batch (even)')
@click.option('--batches', type=click.IntRange(min=1), default=20, show_default=True, help='Pairs of batches')
@click.option('--threads', type=click.IntRange(min=1), default=1, show_default=True)
def main(res, batch, batches, threads):
    torch.set_num_threads(threads)
    teacher = FSRTeacher(resolution=res, seed=0)
    images = teacher.sample(2 * batch * batches, seed=3, details=False)['image']
    levels = [r for r in (4, 8, 16, 32, 64, 128) if r <= res]
    gains = [0.85, 0.9, 0.95, 1.0, 1.05, 1.1]
    for name, patch in (('whole images (--fsr-swd-image)', 0), ('3x3 patches (--fsr-swd)', 3)):
        for unbiased in (False, True):
            table = mean_losses(images, gains, levels, batch, batches, patch, unbiased)
            form = 'split-half' if unbiased else 'plain'
            best = [gains[int(np.argmin(table[:, j]))] for j in range(len(levels))]
            print(f'{name}, {form}, batches of {batch}: gain with the lowest loss per level '
                  + ' '.join(f'r={r}: {g:.2f}' for r, g in zip(levels, best)))
            for g, row in zip(gains, table):
                print(f'  gain {g:.2f}  ' + '  '.join(f'{v:+.4f}' for v in row))


if __name__ == '__main__':
    main()
