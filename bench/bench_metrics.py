"""Benchmark of the metric pipelines on a small generator and the built-in toy-shapes dataset; prints figures.

Measures, separately:
* FID in the fid10k_full style: the real-image pass (dataset -> Inception features), the generated-image pass
  (G -> uint8 -> Inception features) and the Frechet formula on 2048-D statistics; the passes are extrapolated
  to 10k images each. Without --detector (or $GAN_INCEPTION_URL) an untrained Inception-v3 of the same
  architecture (metrics.inception.FastInceptionV3FID with random weights) stands in: the timing is representative,
  the FID value is meaningless.
* SWD: the whole `swd`-style evaluation (Laplacian-patch descriptors of real and generated images + the sliced
  distance), at --swd-images images.

Dataset statistics are not cached here (every pass is timed). Examples:

    python bench/bench_metrics.py                         # CPU-sized defaults
    python bench/bench_metrics.py --device=cuda --fid-images=10000 --swd-images=10000
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from metrics import frechet_inception_distance, metric_utils, sliced_wasserstein  # noqa: E402


def build_generator(res, device):
    """A small StyleGAN2 generator (training.networks) at `res` pixels."""
    from training.networks import Generator
    G = Generator(z_dim=128, c_dim=0, w_dim=128, img_resolution=res, img_channels=3,
                  synthesis_kwargs=dict(channel_base=4096, channel_max=128))
    return G.eval().requires_grad_(False).to(device)


def build_inception(detector, device):
    if detector or os.environ.get(metric_utils.INCEPTION_URL_ENV):
        from metrics import detectors
        url = detector or detectors.inception_url()
        return detectors.get_feature_detector(url, device=device), f'{url}'
    from metrics import inception
    reference = inception.InceptionV3FID()
    return inception.FastInceptionV3FID(reference).eval().to(device), 'untrained FastInceptionV3FID (timing only)'


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


@click.command()
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--res', type=int, default=32, show_default=True, help='Image resolution')
@click.option('--fid-images', type=int, default=None, help='Images per FID pass [default: 256 on CPU, 10000 on CUDA]')
@click.option('--swd-images', type=int, default=None, help='Images per SWD set [default: 2048 on CPU, 10000 on CUDA]')
@click.option('--batch', type=int, default=64, show_default=True, help='Images per detector call')
@click.option('--detector', metavar='PATH|URL', help='Real Inception detector (else an untrained stand-in)')
def main(device, res, fid_images, swd_images, batch, detector):
    device = torch.device('cuda' if device == 'auto' and torch.cuda.is_available() else
                          ('cpu' if device == 'auto' else device))
    on_cuda = device.type == 'cuda'
    fid_images = fid_images or (10000 if on_cuda else 256)
    swd_images = swd_images or (10000 if on_cuda else 2048)
    print(f'device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, resolution {res}')

    torch.manual_seed(0)
    G = build_generator(res, device)
    num_params = sum(p.numel() for p in G.parameters())
    dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ToyShapesDataset', resolution=res,
                                     num_images=max(fid_images, swd_images), num_channels=3, seed=0)
    opts = metric_utils.MetricOptions(G=G, dataset_kwargs=dataset_kwargs, device=device, cache=False,
                                      batch_size=batch, batch_gen=min(batch, 16))
    print(f'generator: {num_params / 1e6:.2f} M parameters; dataset: toy-shapes {res}x{res}')

    # FID, fid10k_full style.
    inception, name = build_inception(detector, device)
    print(f'FID detector: {name}')
    kwargs = dict(return_features=True)
    real, t_real = timed(lambda: metric_utils.compute_feature_stats_for_dataset(
        opts, 'bench-inception', kwargs, batch_size=batch, detector=inception, capture_mean_cov=True,
        max_items=fid_images))
    fake, t_fake = timed(lambda: metric_utils.compute_feature_stats_for_generator(
        opts, 'bench-inception', kwargs, batch_size=batch, detector=inception, capture_mean_cov=True,
        max_items=fid_images))
    fid, t_formula = timed(lambda: frechet_inception_distance.frechet_distance(*real.get_mean_cov(),
                                                                               *fake.get_mean_cov()))
    print(f'FID real pass      {fid_images:6d} images  {t_real:8.2f} s  {t_real / fid_images * 1e3:8.2f} ms/image')
    print(f'FID generated pass {fid_images:6d} images  {t_fake:8.2f} s  {t_fake / fid_images * 1e3:8.2f} ms/image')
    print(f'FID formula (2048-D, eigh)          {t_formula:8.2f} s')
    est = (t_real + t_fake) / fid_images * 10000 + t_formula
    print(f'FID value {fid:.3f}; fid10k_full estimate (10k reals + 10k fakes): {est:.1f} s '
          f'({dnnlib.util.format_time(est)})')

    # SWD, swd style.
    (per_level, mean), t_swd = timed(lambda: sliced_wasserstein.compute_swd(opts, num_images=swd_images,
                                                                            patches_per_image=16))
    levels = ', '.join(f'{r}: {v:.2f}' for r, v in per_level.items())
    print(f'SWD {swd_images:6d} images per set, 16 patches/level   {t_swd:8.2f} s  '
          f'({t_swd / swd_images * 1e3:.2f} ms per image pair); SWD x1e3 mean {mean:.2f} (levels {levels})')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
