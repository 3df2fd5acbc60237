"""Does a snapshot's main discriminator reward lower or higher contrast? Prints figures.

The FSR learners on the synthetic teacher paint 8-20% less patch variance than the reals at every level
(docs/RESULTS.md section 17). This asks whether the adversarial term pulls that way: the mean score of the
snapshot's D (higher = more real) on real images and on the generator's top-level images (the top head's, or G's
own), each rescaled about its per-channel mean by a contrast gain g. A score that falls as g rises means D rewards
dimmer images, and G's gradient through it lowers the contrast.

    python bench/fsr_d_contrast.py runs/.../network-snapshot-000040.pkl --num=256
"""
import os
import sys

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fsr_plugin import snapshot_eval as se  # noqa: E402

GAINS = (0.8, 0.9, 1.0, 1.1, 1.2)


def contrast_scores(D, images, gains=GAINS, c_dim=0):
    """images [N, C, R, R] -> [len(gains)] mean D score of mean + g (images - mean), mean per channel over the set."""
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    c = torch.zeros([images.shape[0], c_dim])
    with torch.no_grad():
        return torch.tensor([float(D(mean + g * (images - mean), c).float().mean()) for g in gains])


@click.command()
@click.argument('snapshot', type=click.Path(exists=True, dir_okay=False))
@click.option('--num', type=click.IntRange(min=2), default=256, show_default=True, help='Images per sample')
@click.option('--threads', type=click.IntRange(min=1), default=1, show_default=True)
def main(snapshot, num, threads):
    torch.set_num_threads(threads)
    snap = se.Snapshot(snapshot)
    if snap.D is None:
        raise click.ClickException(f'{snapshot} holds no discriminator')
    R = int(snap.G.img_resolution)
    real = se.real_pyramid_images(snap.training_set_kwargs, [R], num, seed=7)[R]
    fake = se.pyramid_images(snap, num, seed=0, noise_mode='random')[R]
    D = snap.D.float()
    for name, images in (('real', real), ('fake', fake)):
        scores = contrast_scores(D, images, c_dim=snap.G.c_dim)
        figures = '  '.join(f'{g:.1f}: {s:+.3f}' for g, s in zip(GAINS, scores))
        print(f'{name}: mean D score at contrast gain {figures}')


if __name__ == '__main__':
    main()
