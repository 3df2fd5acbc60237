"""Throughput of the FID Inception-v3 feature detector: ours (fp32, bf16) vs torch-fidelity 0.4.0.

Random weights (no download), uint8 input at --res pixels resized to 299 inside the detector. Prints the
median images/second over --repeats timed runs per variant, all in one process, and the feature
difference of each variant against the unfolded reference module. No assertions.

    python bench/bench_detector.py --batch 64 --res 32 --repeats 3

torch-fidelity is optional (a dev/bench-only dependency: pip install --no-deps torch-fidelity==0.4.0);
its package __init__ imports torchvision, so only its Inception module file is imported here.
"""

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from metrics import inception  # noqa: E402


def random_inception_state_dict(seed=0):
    """Random weights in the pytorch-fid key layout with activations of order one (He-scaled convs)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in inception.InceptionV3FID().state_dict().items():
        if key.endswith('num_batches_tracked'):
            continue
        if key.endswith('conv.weight'):
            t = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith(('bn.weight', 'running_var')):
            t = torch.rand(value.shape, generator=gen) + 0.5
        elif key == 'fc.weight':
            t = torch.randn(value.shape, generator=gen) / value.shape[1] ** 0.5
        else:
            t = torch.randn(value.shape, generator=gen) * 0.1
        state[key] = t
    return state


def import_torch_fidelity_inception():
    """Return torch-fidelity's FeatureExtractorInceptionV3 class, or None when it is not installed."""
    spec = importlib.util.find_spec('torch_fidelity')
    if spec is None:
        return None
    if 'torch_fidelity' not in sys.modules:
        package = types.ModuleType('torch_fidelity')  # skip the package __init__ (needs torchvision)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules['torch_fidelity'] = package
    try:
        module = importlib.import_module('torch_fidelity.feature_extractor_inceptionv3')
    except ImportError as error:
        print(f'torch-fidelity found but not importable: {error}')
        return None
    return module.FeatureExtractorInceptionV3


def time_interleaved(variants, images, repeats):
    """Images per wall-clock second and per CPU second (all threads of this process) of each variant,
    timed round-robin (one run of each per round) so that load from other processes sharing the CPU
    spreads over all variants alike. Returns ({name: [wall rates]}, {name: [cpu rates]})."""
    for fn in variants.values():
        fn(images[:2])  # warm-up (oneDNN primitive creation)
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn(images)
            wall[name].append(images.shape[0] / (time.perf_counter() - start_wall))
            cpu[name].append(images.shape[0] / (time.process_time() - start_cpu))
    return wall, cpu


def random_ish_images(count, base, seed):
    """uint8 [count, 3, 64, 64]: smooth random colour fields (random base x base noise, bilinear-upsampled)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(count, 3, base, base, generator=gen)
    brightness = torch.rand(count, 1, 1, 1, generator=gen)
    img = torch.nn.functional.interpolate(noise, size=(64, 64), mode='bilinear', align_corners=False)
    return ((0.6 * img + 0.4 * brightness) * 255).round().clamp(0, 255).to(torch.uint8)


def frechet_distance(features_a, features_b):
    """FID formula of HOST_CONTRACT 8.3 on two float64 feature sets [N, D]."""
    import numpy as np
    import scipy.linalg
    a, b = features_a.double().numpy(), features_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    with warnings.catch_warnings():  # fewer images than dimensions: singular covariances are expected
        warnings.simplefilter('ignore')
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(np.square(mu_a - mu_b).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def compare_fid(reference, count):
    """FID between two sets of random-ish images, with fp32 and with bf16 features."""
    set_a, set_b = random_ish_images(count, 4, seed=1), random_ish_images(count, 8, seed=2)
    results = {}
    for name, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        fast = inception.FastInceptionV3FID(reference, dtype=dtype)
        results[name] = (fast(set_a, return_features=True), fast(set_b, return_features=True))
    (a32, b32), (a16, b16) = results['fp32'], results['bf16']
    rel = ((torch.cat([a16, b16]) - torch.cat([a32, b32])).norm() / torch.cat([a32, b32]).norm()).item()
    fid32, fid16 = frechet_distance(a32, b32), frechet_distance(a16, b16)
    print(f'FID between two sets of {count} random-ish images (random weights): fp32 {fid32:.4f}, '
          f'bf16 {fid16:.4f}, relative difference {abs(fid16 - fid32) / fid32:.2e}; '
          f'bf16 feature rel. error {rel:.2e}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--res', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
    parser.add_argument('--fid-images', type=int, default=0, help='also compare fp32/bf16 FID on N images per set')
    parser.add_argument('--chunk', type=int, default=8, help='chunk_size of our module')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, '
          f'input {args.res}x{args.res} uint8 -> 299x299, median of {args.repeats}')

    state = random_inception_state_dict()
    reference = inception.InceptionV3FID()
    reference.load_state_dict(state)
    images = torch.randint(0, 256, (args.batch, 3, args.res, args.res), dtype=torch.uint8)
    with torch.no_grad():
        ref_features = reference(images[:8], return_features=True)

    variants = {}
    for name, dtype in (('ours fp32', torch.float32), ('ours bf16', torch.bfloat16)):
        fast = inception.FastInceptionV3FID(reference, dtype=dtype, chunk_size=args.chunk)
        variants[name] = lambda x, fast=fast: fast(x, return_features=True)

    tf_class = import_torch_fidelity_inception()
    if tf_class is None:
        print('torch-fidelity: not installed (pip install --no-deps torch-fidelity==0.4.0), skipped')
    else:
        path = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'bench_detector_weights_{os.getpid()}.pth')
        torch.save(state, path)
        try:
            tf_model = tf_class('inception-v3-compat', ['2048'], feature_extractor_weights_path=path).eval()
        finally:
            os.remove(path)

        def run_tf(x):
            with torch.no_grad():
                return tf_model(x)[0]
        variants['torch-fidelity 0.4.0'] = run_tf

    errors = {name: ((fn(images[:8]) - ref_features).norm() / ref_features.norm()).item()
              for name, fn in variants.items()}
    rates, cpu_rates = time_interleaved(variants, images, args.repeats)
    for name, runs in rates.items():
        print(f'{name:22s} median {statistics.median(runs):7.2f} img/s  best {max(runs):7.2f}  '
              f'runs [{", ".join(f"{r:.2f}" for r in runs)}]  per CPU-second: median '
              f'{statistics.median(cpu_rates[name]):6.2f}  feature rel. error vs reference {errors[name]:.2e}')
    base = rates.get('torch-fidelity 0.4.0')
    if args.fid_images:
        compare_fid(reference, args.fid_images)
    if base:
        for name in ('ours fp32', 'ours bf16'):
            ratios = [a / b for a, b in zip(rates[name], base)]
            cpu_ratio = statistics.median(cpu_rates[name]) / statistics.median(cpu_rates['torch-fidelity 0.4.0'])
            print(f'speed-up {name} vs torch-fidelity: median of per-round ratios {statistics.median(ratios):.2f}x, '
                  f'ratio of medians {statistics.median(rates[name]) / statistics.median(base):.2f}x, '
                  f'ratio of bests {max(rates[name]) / max(base):.2f}x, CPU-time ratio {cpu_ratio:.2f}x')


if __name__ == '__main__':
    main()
