"""Small stand-ins used by the metric tests: an in-memory image dataset, a tiny generator with the host's call
convention, and a TorchScript-able feature detector with the Inception/VGG16 call conventions. The tests in this
file check the stand-ins themselves (determinism, scripting round trip). Importing it registers the small
offline metric `fake_swd64`."""

import numpy as np
import torch
import torch.nn.functional as F

from metrics import metric_main, sliced_wasserstein
from training.dataset import Dataset

# ---------------------------------------------------------------------------------------------------------------
# Dataset.


class MemoryDataset(Dataset):
    """Deterministic blocky random images: image i is a 4x4 grid of uniform values in [lo, hi] (seeded by
    (seed, i)), nearest-upsampled to `resolution`, plus `shift` (clipped to 0..255). Integer labels i % num_classes
    when num_classes > 0."""

    def __init__(self, num_images=64, resolution=16, channels=3, seed=0, lo=40, hi=215, shift=0, num_classes=0,
                 use_labels=False, max_size=None, xflip=False, random_seed=0):
        self._seed, self._lo, self._hi, self._shift = int(seed), int(lo), int(hi), int(shift)
        self._num_classes = int(num_classes)
        super().__init__(name='memory', raw_shape=[num_images, channels, resolution, resolution], max_size=max_size,
                         use_labels=use_labels, xflip=xflip, random_seed=random_seed)

    def _load_raw_image(self, raw_idx):
        c, res = self._raw_shape[1], self._raw_shape[2]
        rng = np.random.RandomState([self._seed, int(raw_idx)])
        grid = rng.randint(self._lo, self._hi + 1, size=[c, 4, 4]).astype(np.int64)
        img = np.kron(grid, np.ones([1, res // 4, res // 4], dtype=np.int64)) + self._shift
        return np.clip(img, 0, 255).astype(np.uint8)

    def _load_raw_labels(self):
        if self._num_classes == 0:
            return None
        return (np.arange(self._raw_shape[0]) % self._num_classes).astype(np.int64)


def memory_dataset_kwargs(**kwargs):
    """dataset_kwargs building a MemoryDataset through dnnlib.util.construct_class_by_name."""
    return dict(class_name=f'{MemoryDataset.__module__}.MemoryDataset', **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Generator.


class TinyMapping(torch.nn.Module):
    """w = z @ A (+ one-hot label embedding), broadcast to num_ws copies; linear so PPL has a closed form."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        gen = torch.Generator().manual_seed(1)
        self.weight = torch.nn.Parameter(torch.randn([z_dim, w_dim], generator=gen) / np.sqrt(z_dim))
        self.embed = torch.nn.Parameter(torch.randn([max(c_dim, 1), w_dim], generator=gen))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None):
        w = z.to(self.weight.dtype) @ self.weight
        if self.c_dim > 0:
            w = w + c.to(self.weight.dtype) @ self.embed
        return (w * truncation_psi).unsqueeze(1).repeat([1, self.num_ws, 1])


class TinySynthesis(torch.nn.Module):
    """image = tanh?(mean_ws(w) @ B) reshaped to [N, C, R, R], plus noise_strength * noise_const (const mode)."""

    def __init__(self, w_dim, img_resolution, img_channels, use_tanh=True, noise_strength=0.0):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.use_tanh = use_tanh
        self.noise_strength = noise_strength
        gen = torch.Generator().manual_seed(2)
        n_out = img_channels * img_resolution * img_resolution
        self.weight = torch.nn.Parameter(torch.randn([w_dim, n_out], generator=gen) / np.sqrt(w_dim) * 0.5)
        self.register_buffer('noise_const', torch.randn([img_resolution, img_resolution], generator=gen))
        self.calls = []  # kwargs of each call, for tests

    def forward(self, ws, noise_mode='random', force_fp32=False):
        self.calls.append(dict(noise_mode=noise_mode, force_fp32=force_fp32))
        x = ws.mean(dim=1) @ self.weight
        x = x.reshape([-1, self.img_channels, self.img_resolution, self.img_resolution])
        if self.use_tanh:
            x = torch.tanh(x)
        if self.noise_strength and noise_mode == 'const':
            x = x + self.noise_strength * self.noise_const
        return x


class TinyGenerator(torch.nn.Module):
    """Generator with the host's call convention: G(z, c, truncation_psi, truncation_cutoff, **synthesis_kwargs)."""

    def __init__(self, z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, num_ws=2, use_tanh=True,
                 noise_strength=0.0):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels, self.num_ws = img_resolution, img_channels, num_ws
        self.mapping = TinyMapping(z_dim, c_dim, w_dim, num_ws)
        self.synthesis = TinySynthesis(w_dim, img_resolution, img_channels, use_tanh, noise_strength)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


def tiny_pyramid_fn(G, z, c, **G_kwargs):
    """A G_pyramid_fn for TinyGenerator: full image plus its 2x2 and 4x4 average-pooled versions (list)."""
    img = G(z, c, **G_kwargs)
    return [F.avg_pool2d(img, 4), F.avg_pool2d(img, 2), img]


class TinyDiscriminator(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 1)


# ---------------------------------------------------------------------------------------------------------------
# Detector.


class FakeDetector(torch.nn.Module):
    """Stand-in detector (TorchScript-able) with the Inception/VGG16 call conventions:
    return_features -> [N, 16] features of the 4x4 average-pooled image; no_output_bias -> [N, 10] softmax
    probabilities; return_lpips -> [N, C*H*W] pixels / 255 (a trivially "perceptual" feature stack)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.proj = torch.nn.Parameter(torch.randn([48, 16], generator=gen) / 7, requires_grad=False)
        self.cls = torch.nn.Parameter(torch.randn([16, 10], generator=gen), requires_grad=False)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False,
                resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        x = img.to(torch.float32)
        if x.shape[1] == 1:
            x = x.repeat([1, 3, 1, 1])
        if return_lpips:
            return x.flatten(1) / 255
        f = F.adaptive_avg_pool2d(x / 255, [4, 4]).flatten(1) @ self.proj
        if return_features:
            return f
        return torch.softmax(f @ self.cls, dim=1)


class CountingDetector(torch.nn.Module):
    """Wraps a detector and counts calls / images."""

    def __init__(self, inner=None):
        super().__init__()
        self.inner = inner if inner is not None else FakeDetector()
        self.num_calls = 0
        self.num_images = 0

    def forward(self, img, **kwargs):
        self.num_calls += 1
        self.num_images += img.shape[0]
        return self.inner(img, **kwargs)


def save_scripted_detector(path):
    """Write FakeDetector as a TorchScript file; returns the path."""
    torch.jit.save(torch.jit.script(FakeDetector().eval()), str(path))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# A small offline metric, registered when this module is imported (also in the worker processes that unpickle a
# TinyGenerator, so multi-process CLI runs know it).


@metric_main.register_metric
def fake_swd64(opts):
    per_level, mean = sliced_wasserstein.compute_swd(opts, num_images=64, patches_per_image=8, dirs_per_repeat=32)
    return metric_main.swd_results('fake_swd64', per_level, mean)


# ---------------------------------------------------------------------------------------------------------------
# Tests of the stand-ins.


def test_memory_dataset_is_deterministic_and_shaped():
    a = MemoryDataset(num_images=5, resolution=8, channels=3, seed=4)
    b = MemoryDataset(num_images=5, resolution=8, channels=3, seed=4)
    c = MemoryDataset(num_images=5, resolution=8, channels=3, seed=5)
    img, label = a[2]
    assert img.shape == (3, 8, 8) and img.dtype == np.uint8 and label.shape == (0,)
    assert np.array_equal(img, b[2][0])
    assert not np.array_equal(img, c[2][0])
    shifted = MemoryDataset(num_images=5, resolution=8, channels=3, seed=4, shift=10)
    assert np.array_equal(shifted[2][0].astype(int), img.astype(int) + 10)


def test_fake_detector_scripted_round_trip(tmp_path):
    path = save_scripted_detector(tmp_path / 'det.pt')
    loaded = torch.jit.load(path)
    img = torch.randint(0, 256, [3, 3, 16, 16], dtype=torch.uint8)
    ref = FakeDetector()
    assert torch.allclose(loaded(img, return_features=True), ref(img, return_features=True))
    probs = loaded(img, no_output_bias=True)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))
    assert loaded(img, resize_images=False, return_lpips=True).shape == (3, 3 * 16 * 16)


def test_tiny_generator_call_convention():
    G = TinyGenerator(z_dim=8, c_dim=0, img_resolution=16, img_channels=1)
    z = torch.randn([2, 8])
    img = G(z, torch.zeros([2, 0]), noise_mode='const', force_fp32=True)
    assert img.shape == (2, 1, 16, 16) and img.abs().max() <= 1
    assert G.synthesis.calls[-1] == dict(noise_mode='const', force_fp32=True)
    assert G.mapping(z, None).shape == (2, G.num_ws, G.w_dim)
