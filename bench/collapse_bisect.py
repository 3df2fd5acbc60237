"""Bisect a mode collapse: train G/D pairs in a minimal, independent GAN loop and print sample diversity.

The loop here shares nothing with training/training_loop.py or training/loss.py: plain Adam, the non-saturating
logistic loss, lazy R1 folded into every 16th D step, no EMA, no augmentation. Each side is either this project's
StyleGAN2 network (`ours`, the --cfg=cpu architecture: channel_base 4096, channel_max 128, mapping 2) or a small
DCGAN (`dcgan`: transposed convolutions with batch norm in G, strided convolutions in D, lr 2e-4, betas 0.5/0.999).
Mixing the two localises a collapse to the loop, to G or to D.

Printed every --every kimg: the losses and `div`, the mean pairwise L2 distance between 64 fakes (fixed z, const
noise) divided by the same for 64 reals (1.0 = as varied as the data; a collapsed generator falls towards 0 plus
its noise). `div` counts noise speckle as variety; with --classifier (a digit classifier trained by
bench/mnist_mode_coverage.py) each report also gives the class coverage of 1000 fakes (`covered`, `sure`, `H`,
`conf`, as defined there), which tells a varied set of digits from one template. A grid of the 64 fakes is written
to --out.

Levers on the discriminator side: --mbstd/--mbstd-channels (our minibatch-std layer), --dcgan-d-norm/--dcgan-d-mbstd
(the DCGAN D), and --pack=M (PacGAN: D scores packs of M samples stacked along channels; either D).

    python bench/collapse_bisect.py --data=datasets/mnist32.zip --gnet=ours --dnet=ours --kimg=10
    python bench/collapse_bisect.py --data=datasets/mnist32.zip --gnet=ours --dnet=dcgan --kimg=10 --threads=1
    python bench/collapse_bisect.py --data=datasets/mnist32.zip --gnet=dcgan --dnet=dcgan --dcgan-d-norm=batch --kimg=30
    python bench/collapse_bisect.py --data=datasets/mnist32.zip --gnet=dcgan --dnet=ours --pack=2 --kimg=30 \
        --classifier=mnist_cls.pt
"""

import os
import sys
import time

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils import cpu_allocator  # noqa: E402
from training.dataset import ImageFolderDataset  # noqa: E402
from training.networks import Discriminator, Generator, MinibatchStdLayer  # noqa: E402


class DCGANGenerator(torch.nn.Module):
    """z [N, z_dim] -> image [N, C, R, R] in [-1, 1] (R = 4 * 2^k)."""

    def __init__(self, z_dim, resolution, channels, width=256):
        super().__init__()
        self.z_dim, self.c_dim, self.width = z_dim, 0, width
        self.fc = torch.nn.Linear(z_dim, width * 16)
        layers, ch = [torch.nn.BatchNorm2d(width), torch.nn.ReLU()], width
        res = 4
        while res < resolution:
            out = channels if res * 2 == resolution else max(ch // 2, 32)
            layers.append(torch.nn.ConvTranspose2d(ch, out, 4, 2, 1))
            layers += [torch.nn.Tanh()] if res * 2 == resolution else [torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
            ch, res = out, res * 2
        self.net = torch.nn.Sequential(*layers)

    def forward(self, z, c, **_kwargs):
        return self.net(self.fc(z).reshape(-1, self.width, 4, 4))


class DCGANDiscriminator(torch.nn.Module):
    """image [N, C, R, R] -> score [N, 1].

    norm='batch' puts batch norm after every convolution but the first (the classic DCGAN D): real and fake batches
    pass separately, so the layer sees each batch's statistics. mbstd > 0 appends a minibatch-std feature (our
    MinibatchStdLayer, that group size) before the output layer instead.
    """

    def __init__(self, resolution, channels, width=64, norm='none', mbstd=0):
        super().__init__()
        layers, ch, res = [], channels, resolution
        while res > 4:
            layers.append(torch.nn.Conv2d(ch, width, 4, 2, 1))
            if norm == 'batch' and ch != channels:
                layers.append(torch.nn.BatchNorm2d(width))
            layers.append(torch.nn.LeakyReLU(0.2))
            ch, width, res = width, width * 2, res // 2
        if mbstd > 0:
            layers.append(MinibatchStdLayer(mbstd))
        self.net = torch.nn.Sequential(*layers, torch.nn.Flatten(),
                                       torch.nn.Linear((ch + (1 if mbstd > 0 else 0)) * 16, 1))

    def forward(self, img, c, **_kwargs):
        return self.net(img)


class PackedDiscriminator(torch.nn.Module):
    """PacGAN packing: D scores groups of `pack` samples stacked along channels.

    image [N, C, R, R] -> score [N, 1]: each of the N // pack packs gets one score, repeated for its members, so the
    per-sample losses keep their scale. N must be divisible by pack.
    """

    def __init__(self, D, pack):
        super().__init__()
        self.D, self.pack = D, pack

    def forward(self, img, c, **kwargs):
        N, C, H, W = img.shape
        score = self.D(img.reshape(N // self.pack, self.pack * C, H, W), c[::self.pack], **kwargs)
        return score.repeat_interleave(self.pack, dim=0)


def build(gnet, dnet, resolution, channels, glr, dlr, mbstd, g_noise=True, map_lr_mult=0.01, dcgan_d_norm='none',
          dcgan_d_mbstd=0, mbstd_channels=1, pack=1, betas=(0.0, 0.99)):
    """Returns (G, D, G optimiser, D optimiser): Adam with `betas` for our networks, the DCGAN's own settings for
    the DCGAN's; D wrapped in PackedDiscriminator when pack > 1."""
    reg = 16 / 17  # lazy R1 every 16 steps: StyleGAN2's lr/beta correction
    if gnet == 'ours':
        G = Generator(512, 0, 512, resolution, channels,
                      mapping_kwargs=dict(num_layers=2, lr_multiplier=map_lr_mult),
                      synthesis_kwargs=dict(channel_base=4096, channel_max=128, use_noise=g_noise))
        opt_G = torch.optim.Adam(G.parameters(), lr=glr, betas=betas, eps=1e-8)
    else:
        G = DCGANGenerator(512, resolution, channels)
        opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if dnet == 'ours':
        D = Discriminator(0, resolution, channels * pack, channel_base=4096, channel_max=128,
                          epilogue_kwargs=dict(mbstd_group_size=mbstd, mbstd_num_channels=mbstd_channels))
        opt_D = torch.optim.Adam(D.parameters(), lr=dlr * reg, betas=(betas[0] ** reg, betas[1] ** reg), eps=1e-8)
    else:
        D = DCGANDiscriminator(resolution, channels * pack, norm=dcgan_d_norm, mbstd=dcgan_d_mbstd)
        opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if pack > 1:
        D = PackedDiscriminator(D, pack)
    return G, D, opt_G, opt_D


def mean_pairwise_distance(x):
    flat = x.flatten(1).double()
    return torch.cdist(flat, flat).sum().item() / (len(x) * (len(x) - 1))


@click.command()
@click.option('--data', help='Dataset zip or folder (dataset_tool.py format)', required=True)
@click.option('--gnet', type=click.Choice(['ours', 'dcgan']), default='ours', show_default=True)
@click.option('--dnet', type=click.Choice(['ours', 'dcgan']), default='ours', show_default=True)
@click.option('--kimg', type=float, default=10, show_default=True)
@click.option('--batch', type=int, default=32, show_default=True)
@click.option('--glr', help='Adam lr of our G', type=float, default=0.0025, show_default=True)
@click.option('--dlr', help='Adam lr of our D', type=float, default=0.0025, show_default=True)
@click.option('--betas', help='Adam betas of our G and D', type=(float, float), default=(0.0, 0.99), show_default=True)
@click.option('--g-noise/--no-g-noise', help='Noise inputs in our G', default=True, show_default=True)
@click.option('--map-lr-mult', help='Learning-rate multiplier of our mapping network', type=float, default=0.01,
              show_default=True)
@click.option('--gamma', help='R1 weight (every 16 D steps)', type=float, default=0.0064, show_default=True)
@click.option('--mbstd', help='Minibatch-std group of our D', type=int, default=4, show_default=True)
@click.option('--mbstd-channels', help='Minibatch-std features of our D (channels split into this many groups)',
              type=int, default=1, show_default=True)
@click.option('--pack', help='PacGAN: D scores packs of this many samples (batch and group sizes must divide)',
              type=int, default=1, show_default=True)
@click.option('--classifier', help='Digit classifier from bench/mnist_mode_coverage.py: report class coverage')
@click.option('--dcgan-d-norm', help='Normalisation in the DCGAN D', type=click.Choice(['none', 'batch']),
              default='none', show_default=True)
@click.option('--dcgan-d-mbstd', help='Minibatch-std group in the DCGAN D (0 = none)', type=int, default=0,
              show_default=True)
@click.option('--every', help='Report interval in kimg', type=float, default=2, show_default=True)
@click.option('--threads', type=int, default=1, show_default=True)
@click.option('--max-images', help='Images loaded from --data', type=int, default=20000, show_default=True)
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--out', help='PNG grid of 64 fakes, rewritten at each report', default='collapse_bisect.png',
              show_default=True)
def main(data, gnet, dnet, kimg, batch, glr, dlr, betas, g_noise, map_lr_mult, gamma, mbstd, mbstd_channels, pack,
         classifier, dcgan_d_norm, dcgan_d_mbstd, every, threads, max_images, seed, out):
    if pack < 1 or batch % pack != 0:
        raise click.ClickException(f'--batch={batch} is not divisible by --pack={pack}')
    cpu_allocator.tune_cpu_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dataset = ImageFolderDataset(data, max_size=max_images)
    reals = torch.from_numpy(np.stack([dataset[i][0] for i in range(len(dataset))]))
    res, channels = dataset.resolution, dataset.num_channels
    G, D, opt_G, opt_D = build(gnet, dnet, res, channels, glr, dlr, min(mbstd, batch), g_noise, map_lr_mult,
                                  dcgan_d_norm, min(dcgan_d_mbstd, batch), mbstd_channels, pack, betas)
    c = torch.zeros([batch, 0])
    digit_model = None
    if classifier:
        # pylint: disable-next=import-outside-toplevel
        from bench.mnist_mode_coverage import class_figures, classify_fakes, load_classifier
        digit_model = load_classifier(classifier)
    z_fixed = torch.randn([64, 512], generator=torch.Generator().manual_seed(seed))
    real_div = mean_pairwise_distance(reals[:64].float() / 127.5 - 1)
    print(f'{gnet} G vs {dnet} D on {data} ({len(dataset)} images, {res}x{res}x{channels}), batch {batch}')

    step, start, next_report = 0, time.time(), every
    while step * batch < kimg * 1000:
        x = reals[torch.randint(len(reals), [batch])].float() / 127.5 - 1
        # D step (+ R1 every 16 steps, weighted by the interval).
        G.requires_grad_(False)
        D.requires_grad_(True)
        with torch.no_grad():
            fake = G(torch.randn([batch, 512]), c)
        loss_D = F.softplus(D(fake, c)).mean() + F.softplus(-D(x, c)).mean()
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        if gamma > 0 and step % 16 == 0:
            xr = x.detach().requires_grad_(True)
            grads, = torch.autograd.grad(D(xr, c).sum(), [xr], create_graph=True)
            (grads.square().sum([1, 2, 3]).mean() * (gamma / 2) * 16).backward()
        opt_D.step()
        # G step.
        D.requires_grad_(False)
        G.requires_grad_(True)
        loss_G = F.softplus(-D(G(torch.randn([batch, 512]), c), c)).mean()
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()
        step += 1

        if step * batch >= next_report * 1000 or step * batch >= kimg * 1000:
            next_report += every
            with torch.no_grad():  # train mode: the DCGAN's batch norm uses the 64 samples' statistics
                fakes = G(z_fixed, torch.zeros([64, 0]), noise_mode='const', force_fp32=True)
                coverage = ''
                if digit_model is not None:
                    z_cls = torch.randn([1000, 512], generator=torch.Generator().manual_seed(seed + 1))
                    fig = class_figures(torch.cat([
                        classify_fakes(digit_model, G, z, torch.zeros([len(z), 0]), force_fp32=True)
                        for z in z_cls.split(100)]))
                    coverage = (f'  covered {fig["covered"]}  sure {fig["sure"]:.2f}  H {fig["entropy"]:.2f}  '
                                f'conf {fig["conf"]:.2f}')
            div = mean_pairwise_distance(fakes) / real_div
            print(f'kimg {step * batch / 1e3:6.1f}  {time.time() - start:6.0f} s  loss_D {loss_D.item():.3f}  '
                  f'loss_G {loss_G.item():.3f}  div {div:.3f}{coverage}', flush=True)
            grid = ((fakes.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            grid = grid.reshape(8, 8, channels, res, res).transpose(0, 3, 1, 4, 2).reshape(8 * res, 8 * res, channels)
            PIL.Image.fromarray(grid[:, :, 0] if channels == 1 else grid).save(out)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
