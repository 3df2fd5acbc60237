"""Evaluate quality metrics of a trained network (pickle or weights file) against a dataset.

Examples:

\b
  # Offline, no pretrained detector needed (the default when no Inception detector is configured):
  python calc_metrics.py --network=runs/00000-x/network-snapshot-000200.pkl --metrics=swd2k
\b
  # FID with a local copy of the Inception detector, against another dataset, on CPU:
  python calc_metrics.py --network=net.pkl --metrics=fid10k_full,kid10k_full --detector=~/inception-2015-12-05.pt \\
      --data=~/datasets/ffhq-64.zip --device=cpu

The default --metrics is fid50k_full when an Inception detector is configured (--detector or $GAN_INCEPTION_URL),
else swd (multi-scale sliced Wasserstein distance, which needs no download). Results are printed as JSON lines;
when the network file sits in a training run folder (one with training_options.json) they are also appended to
<run folder>/metric-<name>.jsonl. A network file that names an image source (e.g. an FSR run with
--fsr-main-d=head) is scored on that image, the one its discriminator judged; --g-image scores G's own.
"""

import copy
import os
import sys
import tempfile

import click
import torch

import dnnlib
from metrics import metric_main
from metrics import metric_utils


def default_metrics(detector_url=None):
    """['fid50k_full'] when an Inception detector is configured (argument or $GAN_INCEPTION_URL), else ['swd']."""
    if detector_url or os.environ.get(metric_utils.INCEPTION_URL_ENV):
        return ['fid50k_full']
    return ['swd']


def parse_metric_list(text):
    """'a,b' -> ['a', 'b'] ('none' -> []); raises ValueError naming the valid metrics for unknown names."""
    names = [name.strip() for name in text.split(',') if name.strip()]
    if names == ['none']:
        return []
    unknown = [name for name in names if not metric_main.is_valid_metric(name)]
    if unknown or not names:
        raise ValueError(f'unknown metric(s) {", ".join(unknown) or repr(text)}; --metrics can only contain: '
                         f'{", ".join(metric_main.list_valid_metrics())} (or none)')
    return names


def resolve_device(device, num_gpus):
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda' (checks that enough CUDA devices exist)."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('--device=cuda, but no CUDA device is available')
        if torch.cuda.device_count() < num_gpus:
            raise ValueError(f'--gpus={num_gpus}, but only {torch.cuda.device_count()} CUDA device(s) are available')
    return device


def find_run_dir(network_pkl):
    """The folder of a local network file if it is a training run folder (holds training_options.json)."""
    if dnnlib.util.is_url(network_pkl, allow_file_urls=True) or not os.path.isfile(network_pkl):
        return None
    run_dir = os.path.dirname(os.path.abspath(network_pkl))
    return run_dir if os.path.isfile(os.path.join(run_dir, 'training_options.json')) else None


def subprocess_fn(rank, args, temp_dir):
    """Evaluate every metric in one process (rank); rank 0 prints and records the results."""
    if args.num_gpus > 1:
        backend = 'nccl' if args.device_type == 'cuda' else 'gloo'
        init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
        init_method = f'file:///{init_file.replace(os.sep, "/")}' if os.name == 'nt' else f'file://{init_file}'
        torch.distributed.init_process_group(backend=backend, init_method=init_method, rank=rank,
                                             world_size=args.num_gpus)
    device = torch.device('cuda', rank) if args.device_type == 'cuda' else torch.device('cpu')
    if args.device_type == 'cuda':
        torch.cuda.set_device(device)
    progress = metric_utils.ProgressMonitor(verbose=args.verbose) if rank == 0 else None

    for metric in args.metrics:
        if rank == 0 and args.verbose:
            print(f'Calculating {metric}...', flush=True)
        result = metric_main.calc_metric(metric=metric, G=args.G, dataset_kwargs=args.dataset_kwargs,
                                         num_gpus=args.num_gpus, rank=rank, device=device, progress=progress,
                                         detector_url=args.detector_url, vgg16_url=args.vgg16_url,
                                         batch_size=args.batch_size)
        if rank == 0:
            metric_main.report_metric(result, run_dir=args.run_dir, snapshot_pkl=args.network_pkl)
    if args.num_gpus > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _dataset_kwargs(data, network, G, mirror):
    if data is not None:
        from training import dataset as dataset_module
        kwargs = dnnlib.EasyDict(dataset_module.dataset_kwargs_from_data_arg(data))
    elif network.get('training_set_kwargs'):
        kwargs = dnnlib.EasyDict(copy.deepcopy(network['training_set_kwargs']))
    else:
        return dnnlib.EasyDict()
    kwargs.resolution = int(G.img_resolution)
    kwargs.use_labels = int(G.c_dim) != 0
    if mirror is not None:
        kwargs.xflip = bool(mirror)
    return kwargs


@click.command(help=__doc__)
@click.option('--network', 'network_pkl', metavar='PATH|URL', required=True,
              help='Network pickle or weights file (G_ema is evaluated)')
@click.option('--metrics', metavar='LIST', default=None,
              help='Comma-separated metric names or "none" [default: fid50k_full with an Inception detector, else swd]')
@click.option('--data', metavar='PATH|NAME', help='Dataset: folder, zip or built-in name [default: the one the '
              'network was trained on]')
@click.option('--mirror', type=bool, metavar='BOOL', help='Enable dataset x-flips [default: as in training]')
@click.option('--gpus', 'num_gpus', type=click.IntRange(min=1), default=1, show_default=True,
              help='Number of processes (one per GPU; on CPU, processes joined with gloo)')
@click.option('--detector', 'detector_url', metavar='PATH|URL', help='Inception-v3 detector (FID, KID, IS) '
              f'[default: ${metric_utils.INCEPTION_URL_ENV} or the StyleGAN2-ADA URL]')
@click.option('--vgg-detector', 'vgg16_url', metavar='PATH|URL', help='VGG16 detector (precision/recall, PPL) '
              f'[default: ${metric_utils.VGG16_URL_ENV} or the StyleGAN2-ADA URL]')
@click.option('--device', 'device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=64, show_default=True,
              help='Images per detector call')
@click.option('--g-image', is_flag=True, help='Score G\'s own image even when the network file names another '
              'image source (e.g. FSR runs with --fsr-main-d=head, whose images are the top head\'s)')
@click.option('--verbose', type=bool, default=True, metavar='BOOL', show_default=True, help='Print progress')
def calc_metrics(network_pkl, metrics, data, mirror, num_gpus, detector_url, vgg16_url, device, batch_size, g_image,
                 verbose):
    from torch_utils.cpu_allocator import tune_cpu_allocator
    tune_cpu_allocator()
    try:
        metrics = parse_metric_list(metrics) if metrics is not None else default_metrics(detector_url)
        device_type = resolve_device(device, num_gpus)
    except ValueError as err:
        raise click.UsageError(str(err)) from None

    import legacy  # the network loader; imported here so that `--help` works without torch_utils
    if verbose:
        print(f'Loading network from "{network_pkl}"...', flush=True)
    try:
        network = legacy.load_network(network_pkl)
    except (OSError, ValueError) as err:
        raise click.ClickException(f'--network: {err}') from None
    from training import image_source
    try:
        G, source_name = image_source.network_generator(network, own_image=g_image)
    except image_source.ImageSourceError as err:
        raise click.ClickException(f'--network: {err}') from None
    if source_name is not None and verbose:
        print(f'Images: the top level of {source_name}, which this network was trained to output (--g-image scores '
              f'G\'s own image)', flush=True)

    try:
        dataset_kwargs = _dataset_kwargs(data, network, G, mirror)
        if dataset_kwargs:
            dnnlib.util.construct_class_by_name(**dataset_kwargs).close()  # fail early on a bad dataset
    except Exception as err:  # any failure to open the dataset is a user-input problem
        raise click.ClickException(f'--data: cannot open the dataset: {err}') from None
    if not dataset_kwargs and verbose:
        print('No dataset: the network file records none and --data is not given; metrics that need real images '
              'will fail.', flush=True)

    args = dnnlib.EasyDict(G=G, metrics=metrics, dataset_kwargs=dataset_kwargs, num_gpus=num_gpus,
                           device_type=device_type, detector_url=detector_url, vgg16_url=vgg16_url,
                           batch_size=batch_size, verbose=verbose, network_pkl=network_pkl,
                           run_dir=find_run_dir(network_pkl))
    if verbose:
        print(f'Metrics: {", ".join(metrics) or "none"}; device: {device_type} x {num_gpus}; results recorded in: '
              f'{args.run_dir or "(not a run folder: printed only)"}', flush=True)
    if not metrics:
        return
    if num_gpus == 1:
        try:
            subprocess_fn(rank=0, args=args, temp_dir=None)
        except (ValueError, OSError) as err:  # one-line errors: a metric without a dataset, a detector not found
            raise click.ClickException(str(err)) from None
    else:
        with tempfile.TemporaryDirectory() as temp_dir:
            torch.multiprocessing.spawn(fn=subprocess_fn, args=(args, temp_dir), nprocs=num_gpus)


if __name__ == '__main__':
    calc_metrics()  # pylint: disable=no-value-for-parameter
    sys.exit(0)
