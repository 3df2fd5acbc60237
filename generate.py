"""Generate images with a trained network (pickle or weights file), on CPU or GPU.

Examples:
    # One PNG per seed, truncation 0.7:
    python generate.py --network=network-snapshot-000200.pkl --seeds=0-15 --trunc=0.7 --outdir=out
    # A single grid image of 32 seeds:
    python generate.py --network=net.pt --seeds=0-31 --grid=8x4 --outdir=out
    # No network at hand: a freshly initialised generator (shows that the pipeline works, images are noise-like):
    python generate.py --random-init --seeds=0-15 --grid=4x4 --outdir=out

z for seed s is numpy.random.RandomState(s).randn(1, z_dim), so seeds map to the same images as in NVIDIA's tools.
"""

import os
import re
import sys

import click
import numpy as np
import PIL.Image
import torch

import dnnlib

from torch_utils.cpu_allocator import tune_cpu_allocator

import legacy
from training import image_source


def parse_range(text):
    """'0,5,10-12' -> [0, 5, 10, 11, 12] (ranges are inclusive); raises click.BadParameter."""
    try:
        return dnnlib.util.parse_int_ranges(text)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def parse_grid(text):
    """'8x4' -> (8, 4) (columns, rows)."""
    m = re.fullmatch(r'(\d+)[x,](\d+)', str(text))
    if not m:
        raise click.BadParameter(f'grid must look like 8x4, got {text!r}')
    return int(m.group(1)), int(m.group(2))


def pick_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('--device=cuda requested but no CUDA device is available')
    return device


def to_uint8(images):
    """[N, C, H, W] float in about [-1, 1] -> [N, H, W, C] uint8 numpy (NVIDIA's img*127.5+128 convention)."""
    images = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def save_image(array, path):
    """Save an [H, W, C] uint8 array as PNG: 1 channel -> greyscale, 3 -> RGB, other counts -> first channel(s)."""
    if array.shape[2] == 1:
        PIL.Image.fromarray(array[:, :, 0], 'L').save(path)
    elif array.shape[2] == 3:
        PIL.Image.fromarray(array, 'RGB').save(path)
    else:
        PIL.Image.fromarray(array[:, :, :3] if array.shape[2] > 3 else array[:, :, 0], None).save(path)


def make_grid(arrays, cols, rows):
    """Tile up to cols*rows [H, W, C] uint8 arrays into one [rows*H, cols*W, C] array (missing cells black)."""
    h, w, c = arrays[0].shape
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for idx, arr in enumerate(arrays[:cols * rows]):
        r, q = divmod(idx, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = arr
    return grid


def random_generator(resolution=32, channels=3, seed=0):
    """A freshly initialised small StyleGAN2 generator (used by --random-init)."""
    from training import networks
    torch.manual_seed(seed)
    return networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=channels,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=4096, channel_max=128)).eval()


def generate_images(G, seeds, device, truncation_psi=1.0, class_idx=None, noise_mode='const', batch_size=8):
    """Render one image per seed with G(z, c) (a network's generator, or image_source.network_generator's
    stand-in for one whose file names another image). Returns [len(seeds), H, W, C] uint8 numpy."""
    label = torch.zeros([1, G.c_dim], device=device)
    if G.c_dim != 0:
        if class_idx is None:
            raise click.UsageError('this network is conditional: pass --class')
        if not 0 <= class_idx < G.c_dim:
            raise click.BadParameter(f'--class must be in [0, {G.c_dim - 1}], got {class_idx}')
        label[:, class_idx] = 1
    elif class_idx is not None:
        print('warning: --class is ignored for an unconditional network', file=sys.stderr)
    force_fp32 = device.type != 'cuda'
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        z = np.concatenate([np.random.RandomState(seed).randn(1, G.z_dim) for seed in chunk])
        z = torch.from_numpy(z).to(device)
        with torch.no_grad():
            img = G(z, label.repeat(len(chunk), 1), truncation_psi=truncation_psi, noise_mode=noise_mode,
                    force_fp32=force_fp32)
        out.append(to_uint8(img))
    return np.concatenate(out)


def find_pyramid_module(data):
    """An EMA extra module of the network file that maps hidden features to per-resolution images (e.g. the FSR
    plugin's output heads: forward({r: S_r}, img) -> {r: X_r}, attribute `resolutions`), or None."""
    for name, module in (data.get('extra_modules_ema') or {}).items():
        if hasattr(module, 'resolutions') and callable(module):
            return name, module
    return None


def generate_pyramids(G, heads, seeds, device, truncation_psi=1.0, noise_mode='const'):
    """One row per seed: every level of the heads' pyramid upscaled (nearest) to the top resolution and tiled
    left to right. Returns [len(seeds), R, R * levels, C] uint8."""
    rows = []
    force_fp32 = device.type != 'cuda'
    for seed in seeds:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
        c = torch.zeros([1, G.c_dim], device=device)
        with torch.no_grad():
            ws = G.mapping(z, c, truncation_psi=truncation_psi)
            img, feats = G.synthesis(ws, return_features=True, noise_mode=noise_mode, force_fp32=force_fp32)
            levels = heads({r: f.float() for r, f in feats.items() if r in heads.resolutions}, img=img)
        R = G.img_resolution
        tiles = [torch.nn.functional.interpolate(levels[r], size=(R, R), mode='nearest') for r in sorted(levels)]
        rows.append(to_uint8(torch.cat(tiles, dim=3))[0])
    return np.stack(rows)


@click.command()
@click.option('--network', 'network_path', help='Network pickle or weights file (path or URL).')
@click.option('--random-init', is_flag=True, help='Use a freshly initialised 32x32 generator instead of --network.')
@click.option('--seeds', default='0-7', show_default=True, help='Seeds, e.g. 0,5,10-12 (inclusive ranges).')
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True, help='Truncation psi.')
@click.option('--class', 'class_idx', type=int, default=None, help='Class label (conditional networks).')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--grid', default=None, help='Write one grid image COLSxROWS instead of one file per seed.')
@click.option('--pyramid', is_flag=True, help='Write every resolution of a plugin\'s per-level outputs (e.g. FSR '
              'heads) side by side, one PNG per seed (pyramidNNNN.png).')
@click.option('--g-image', is_flag=True, help='Write G\'s own image even when the network file names another '
              'image source (e.g. FSR runs with --fsr-main-d=head, whose images are the top head\'s).')
@click.option('--device', default='auto', show_default=True, help='auto, cpu, cuda or cuda:N.')
@click.option('--outdir', required=True, type=click.Path(file_okay=False), help='Where to save the images.')
def main(network_path, random_init, seeds, truncation_psi, class_idx, noise_mode, grid, pyramid, g_image, device,
         outdir):
    """Generate images from a trained network."""
    tune_cpu_allocator()
    seeds = parse_range(seeds)
    if not seeds:
        raise click.BadParameter('--seeds selects no seed')
    device = pick_device(device)
    if random_init == (network_path is not None):
        raise click.UsageError('give exactly one of --network and --random-init')
    if random_init:
        print('Using a freshly initialised generator (--random-init): images show the pipeline works, not a '
              'trained model.')
        G = random_generator().to(device)
    else:
        print(f'Loading networks from "{network_path}"...')
        try:
            data = legacy.load_network(network_path)
        except legacy.NetworkFileError as e:
            raise click.ClickException(str(e)) from None
        try:
            G, source_name = image_source.network_generator(data, own_image=g_image or pyramid)
        except image_source.ImageSourceError as e:
            raise click.ClickException(str(e)) from None
        G = G.to(device)
        if source_name is not None:
            print(f'Images: the top level of {source_name}, which this network was trained to output (--g-image '
                  f'writes G\'s own image)')
        if pyramid:
            found = find_pyramid_module(data)
            if found is None:
                raise click.ClickException(f'{network_path}: has no per-resolution output module '
                                           f'(train with --fsr to get one)')
            os.makedirs(outdir, exist_ok=True)
            rows = generate_pyramids(G, found[1].to(device), seeds, device, truncation_psi, noise_mode)
            for seed, row in zip(seeds, rows):
                save_image(row, os.path.join(outdir, f'pyramid{seed:04d}.png'))
            print(f'Wrote {len(seeds)} pyramids ({found[0]}: {found[1].resolutions}) to {outdir}')
            return
    os.makedirs(outdir, exist_ok=True)
    images = generate_images(G, seeds, device, truncation_psi, class_idx, noise_mode)
    if grid is not None:
        cols, rows = parse_grid(grid)
        path = os.path.join(outdir, 'grid.png')
        save_image(make_grid(list(images), cols, rows), path)
        print(f'Wrote {path} ({len(seeds)} seeds, {cols}x{rows})')
    else:
        for seed, img in zip(seeds, images):
            save_image(img, os.path.join(outdir, f'seed{seed:04d}.png'))
        print(f'Wrote {len(seeds)} images to {outdir}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
