"""metrics/metric_utils.py: FeatureStats, ProgressMonitor, options, image helpers, and the dataset / generator
feature pipelines (cache, uint8 conversion, labels, per-resolution evaluation)."""

import glob

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dnnlib
from metrics import metric_utils
from metrics.metric_utils import FeatureStats, MetricOptions, ProgressMonitor
from test_metrics_fakes import (CountingDetector, FakeDetector, MemoryDataset, TinyGenerator, memory_dataset_kwargs,
                                tiny_pyramid_fn)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / 'dnnlib-cache'
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(path))
    return path


@pytest.fixture
def counting_detector(monkeypatch):
    """Every detector load returns the same CountingDetector (records the url it was asked for)."""
    det = CountingDetector()
    det.urls = []

    def fake_get_feature_detector(url, device=None, num_gpus=1, rank=0, verbose=False, dtype=torch.float32):
        det.urls.append(url)
        return det
    monkeypatch.setattr(metric_utils, 'get_feature_detector', fake_get_feature_detector)
    return det


# ---------------------------------------------------------------------------------------------------------------
# FeatureStats


def test_feature_stats_mean_cov_match_numpy():
    rng = np.random.RandomState(0)
    x = rng.randn(103, 6) * rng.uniform(0.5, 3, 6) + rng.randn(6) * 5
    stats = FeatureStats(capture_all=True, capture_mean_cov=True)
    for chunk in np.array_split(x, 7):
        stats.append(chunk)
    mean, cov = stats.get_mean_cov()
    x32 = x.astype(np.float32).astype(np.float64)  # rows are stored as float32
    np.testing.assert_allclose(mean, x32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x32, rowvar=False, bias=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(stats.get_all(), x.astype(np.float32))
    assert stats.get_all_torch().dtype == torch.float32 and stats.num_items == 103 and stats.num_features == 6


def test_feature_stats_max_items_and_is_full():
    stats = FeatureStats(capture_all=True, max_items=10)
    assert not stats.is_full()
    stats.append(np.arange(24, dtype=np.float32).reshape(8, 3))
    stats.append_torch(torch.arange(24, 48, dtype=torch.float32).reshape(8, 3))
    assert stats.is_full() and stats.num_items == 10
    np.testing.assert_array_equal(stats.get_all(), np.arange(30, dtype=np.float32).reshape(10, 3))
    stats.append(np.ones([4, 3]))  # ignored once full
    assert stats.num_items == 10


def test_feature_stats_save_load_round_trip(tmp_path):
    stats = FeatureStats(capture_all=True, capture_mean_cov=True, max_items=50)
    stats.append(np.random.RandomState(1).randn(20, 4))
    stats.save(str(tmp_path / 's.pkl'))
    loaded = FeatureStats.load(str(tmp_path / 's.pkl'))
    assert loaded.num_items == 20 and loaded.max_items == 50 and loaded.capture_mean_cov
    np.testing.assert_array_equal(loaded.get_all(), stats.get_all())
    for a, b in zip(loaded.get_mean_cov(), stats.get_mean_cov()):
        np.testing.assert_array_equal(a, b)


def test_feature_stats_errors():
    stats = FeatureStats(capture_all=False)
    stats.append(np.zeros([2, 3]))
    with pytest.raises(ValueError, match='capture_all'):
        stats.get_all()
    with pytest.raises(ValueError, match='capture_mean_cov'):
        stats.get_mean_cov()
    with pytest.raises(ValueError, match='expected 3'):
        stats.append(np.zeros([2, 4]))
    with pytest.raises(ValueError, match=r'\[N, F\]'):
        stats.append(np.zeros([2, 3, 1]))
    with pytest.raises(ValueError, match='no items'):
        FeatureStats(capture_mean_cov=True).get_mean_cov()


# ---------------------------------------------------------------------------------------------------------------
# ProgressMonitor and options


def test_progress_monitor_prints_and_forwards(capsys):
    calls = []
    root = ProgressMonitor(verbose=True, progress_fn=lambda done, total: calls.append((done, total)))
    sub = root.sub(tag='dataset features', num_items=2500, rel_lo=0.5, rel_hi=1.0)
    for n in [500, 1000, 1500, 2500]:
        sub.update(n)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2  # at 1000 items and at the end (2500)
    assert lines[0].split()[:4] == ['dataset', 'features', 'items', '1000'] and 'ms/item' in lines[0]
    assert lines[1].split()[3] == '2500'
    assert calls[0] == (0, 1000) and calls[1] == (500, 1000)  # root start, sub start at rel_lo
    assert calls[-1] == (1000, 1000)
    with pytest.raises(ValueError, match='exceeds'):
        sub.update(2600)


def test_progress_monitor_silent_when_not_verbose(capsys):
    ProgressMonitor(tag='x', num_items=10, verbose=False).update(10)
    assert capsys.readouterr().out == ''


def test_metric_options_defaults_and_checks():
    opts = MetricOptions(dataset_kwargs=dict(a=1))
    assert opts.device.type in ('cpu', 'cuda') and opts.cache and opts.batch_size == 64
    assert isinstance(opts.dataset_kwargs, dnnlib.EasyDict)
    other = opts.replace(eval_resolution=8)
    other.dataset_kwargs.update(a=2)
    assert opts.dataset_kwargs.a == 1 and opts.eval_resolution is None and other.eval_resolution == 8
    with pytest.raises(ValueError, match='rank'):
        MetricOptions(num_gpus=2, rank=2)
    with pytest.raises(ValueError, match='pyramid_filter'):
        MetricOptions(pyramid_filter='lanczos')
    with pytest.raises(ValueError, match='batch_gen'):
        MetricOptions(batch_size=64, batch_gen=5)
    with pytest.raises(AttributeError, match='no field'):
        opts.replace(nonsense=1)


def test_detector_url_resolution(monkeypatch):
    from metrics import detectors
    assert (metric_utils.INCEPTION_URL_ENV, metric_utils.VGG16_URL_ENV) == (detectors.INCEPTION_URL_ENV,
                                                                             detectors.VGG16_URL_ENV)
    monkeypatch.delenv(metric_utils.INCEPTION_URL_ENV, raising=False)
    monkeypatch.delenv(metric_utils.VGG16_URL_ENV, raising=False)
    assert metric_utils.inception_url(MetricOptions()) == detectors.INCEPTION_URL
    assert metric_utils.vgg16_url(MetricOptions()) == detectors.VGG16_URL
    assert metric_utils.vgg16_url(MetricOptions(vgg16_url='/v.pt')) == '/v.pt'
    monkeypatch.setenv(metric_utils.INCEPTION_URL_ENV, '/x/inc.pt')
    assert metric_utils.inception_url(MetricOptions()) == '/x/inc.pt'
    assert metric_utils.inception_url(MetricOptions(detector_url='/y/mine.pt')) == '/y/mine.pt'
    assert metric_utils.get_feature_detector_name('https://h/a/inception-2015-12-05.pt') == 'inception-2015-12-05'
    assert metric_utils.get_feature_detector_name('C:\\det\\vgg16.pkl') == 'vgg16'


# ---------------------------------------------------------------------------------------------------------------
# Image helpers


def test_images_to_uint8_formula():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 0.999, 1.0, 5.0]).view(1, 1, 2, 4)
    expected = np.clip(x.numpy() * 127.5 + 128, 0, 255).astype(np.uint8)  # truncation like a uint8 cast
    np.testing.assert_array_equal(metric_utils.images_to_uint8(x).numpy(), expected)


def test_downscale_images_box_and_fir():
    img = torch.randint(0, 256, [2, 3, 16, 16], dtype=torch.uint8)
    box = metric_utils.downscale_images(img, 4, 'box')
    expected = img.double().reshape(2, 3, 4, 4, 4, 4).mean([3, 5]).round().to(torch.uint8)
    assert torch.equal(box, expected)
    assert metric_utils.downscale_images(img, 16) is img
    # fir, one step 16 -> 8: edge-replicated borders, outer([1,3,3,1]) / 64, stride 2 (explicit numpy loop).
    fir8 = metric_utils.downscale_images(img, 8, 'fir').numpy()
    tap = np.array([1, 3, 3, 1], dtype=np.float64)
    k = np.outer(tap, tap) / 64
    padded = np.pad(img.numpy().astype(np.float64), [(0, 0), (0, 0), (1, 1), (1, 1)], mode='edge')
    expected8 = np.zeros([2, 3, 8, 8])
    for y in range(8):
        for x in range(8):
            expected8[:, :, y, x] = (padded[:, :, 2 * y:2 * y + 4, 2 * x:2 * x + 4] * k).sum(axis=(2, 3))
    np.testing.assert_array_equal(fir8, np.clip(np.rint(expected8), 0, 255).astype(np.uint8))
    const = torch.full([1, 1, 16, 16], 77, dtype=torch.uint8)
    fir = metric_utils.downscale_images(const, 4, 'fir')
    assert fir.shape == (1, 1, 4, 4) and torch.equal(fir, torch.full_like(fir, 77))
    with pytest.raises(ValueError, match='cannot downscale'):
        metric_utils.downscale_images(img, 5)


# ---------------------------------------------------------------------------------------------------------------
# Dataset pipeline


def _dataset_images(**kwargs):
    ds = MemoryDataset(**kwargs)
    return torch.tensor(np.stack([ds[i][0] for i in range(len(ds))]))


def test_dataset_stats_are_detector_features_and_cached(cache_dir, counting_detector):
    dataset_kwargs = memory_dataset_kwargs(num_images=37, resolution=16, channels=1, seed=3)
    opts = MetricOptions(dataset_kwargs=dataset_kwargs, device='cpu', detector_url='/det/fake-inception.pt')
    stats = metric_utils.compute_feature_stats_for_dataset(opts, '/det/fake-inception.pt', dict(return_features=True),
                                                           batch_size=10, capture_all=True, capture_mean_cov=True)
    images = _dataset_images(num_images=37, resolution=16, channels=1, seed=3)
    expected = FakeDetector()(images.repeat([1, 3, 1, 1]), return_features=True).numpy()  # gray -> RGB
    np.testing.assert_allclose(stats.get_all(), expected, rtol=1e-6, atol=1e-6)
    assert counting_detector.num_images == 37 and counting_detector.num_calls == 4

    files = glob.glob(str(cache_dir / 'gan-metrics' / 'memory-fake-inception-*.pkl'))
    assert len(files) == 1 and not glob.glob(str(cache_dir / 'gan-metrics' / '*.tmp'))

    # Second run (same settings, dict keys in another order): served from the cache, detector untouched.
    opts2 = MetricOptions(dataset_kwargs=dict(reversed(list(dataset_kwargs.items()))), device='cpu')
    again = metric_utils.compute_feature_stats_for_dataset(opts2, '/det/fake-inception.pt', dict(return_features=True),
                                                           batch_size=10, capture_all=True, capture_mean_cov=True)
    assert counting_detector.num_calls == 4 and counting_detector.urls == ['/det/fake-inception.pt']
    np.testing.assert_array_equal(again.get_all(), stats.get_all())

    # Other settings -> another cache entry; cache=False -> no file and a fresh computation.
    metric_utils.compute_feature_stats_for_dataset(opts, '/det/fake-inception.pt', dict(return_features=True),
                                                   batch_size=10, capture_all=True, max_items=20)
    assert counting_detector.num_images == 37 + 20
    assert len(glob.glob(str(cache_dir / 'gan-metrics' / '*.pkl'))) == 2
    metric_utils.compute_feature_stats_for_dataset(opts.replace(cache=False), '/det/fake-inception.pt',
                                                   dict(return_features=True), batch_size=10, capture_all=True)
    assert counting_detector.num_images == 37 + 20 + 37
    assert len(glob.glob(str(cache_dir / 'gan-metrics' / '*.pkl'))) == 2


def test_dataset_stats_at_eval_resolution(cache_dir, counting_detector):
    opts = MetricOptions(dataset_kwargs=memory_dataset_kwargs(num_images=9, resolution=16), device='cpu',
                         eval_resolution=8, cache=False)
    stats = metric_utils.compute_feature_stats_for_dataset(opts, 'u', dict(return_lpips=True), capture_all=True)
    images = F.avg_pool2d(_dataset_images(num_images=9, resolution=16).double(), 2).round()
    np.testing.assert_allclose(stats.get_all(), (images / 255).flatten(1).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match='resolution 32'):
        metric_utils.compute_feature_stats_for_dataset(opts.replace(eval_resolution=32), 'u', {}, capture_all=True)


def test_dataset_stats_need_dataset_kwargs():
    with pytest.raises(ValueError, match='dataset_kwargs is empty'):
        metric_utils.compute_feature_stats_for_dataset(MetricOptions(device='cpu'), 'u', {}, detector=FakeDetector())


# ---------------------------------------------------------------------------------------------------------------
# Generator pipeline


class ConstantGenerator(torch.nn.Module):
    """Outputs a fixed image for every z; records the labels and kwargs it is called with."""

    def __init__(self, image, c_dim=0):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = 4, c_dim, 4
        self.img_channels, self.img_resolution = image.shape[0], image.shape[1]
        self.register_buffer('image', image)
        self.calls = []

    def forward(self, z, c, truncation_psi=1, **kwargs):
        self.calls.append(dict(c=c.clone(), truncation_psi=truncation_psi, **kwargs))
        return self.image.unsqueeze(0).repeat([z.shape[0], 1, 1, 1])


def test_generator_stats_feed_uint8_images(counting_detector):
    image = torch.linspace(-1.2, 1.2, 64).reshape(1, 8, 8)  # grayscale, values beyond [-1, 1] get clamped
    G = ConstantGenerator(image)
    opts = MetricOptions(G=G, G_kwargs=dict(truncation_psi=0.7), device='cpu', batch_size=8)
    stats = metric_utils.compute_feature_stats_for_generator(opts, 'u', dict(return_lpips=True), batch_size=8,
                                                             batch_gen=4, capture_all=True, max_items=20)
    assert stats.num_items == 20 and counting_detector.num_images == 24  # 3 batches of 8
    expected_u8 = np.clip(image.numpy() * 127.5 + 128, 0, 255).astype(np.uint8)
    expected = np.repeat(expected_u8, 3, axis=0).reshape(-1).astype(np.float32) / 255  # gray repeated to RGB
    np.testing.assert_allclose(stats.get_all(), np.tile(expected, [20, 1]), atol=1e-6)
    assert G.calls == []  # the pipeline works on a deep copy


def test_generator_call_kwargs_force_fp32_off_cuda():
    G = TinyGenerator()
    assert metric_utils.generator_call_kwargs(G, MetricOptions(device='cpu', G_kwargs=dict(noise_mode='const'))) == \
        dict(noise_mode='const', force_fp32=True)
    assert metric_utils.generator_call_kwargs(G, MetricOptions(device='cpu', G_kwargs=dict(force_fp32=False))) == \
        dict(force_fp32=False)

    class NoKwargs(torch.nn.Module):
        def forward(self, z, c):
            return z
    assert metric_utils.generator_call_kwargs(NoKwargs(), MetricOptions(device='cpu')) == {}


def test_conditional_generator_gets_dataset_labels(counting_detector):
    G = ConstantGenerator(torch.zeros(3, 8, 8), c_dim=3)
    opts = MetricOptions(G=G, device='cpu', dataset_kwargs=memory_dataset_kwargs(num_images=12, resolution=8,
                                                                                 num_classes=3, use_labels=True))
    labels = metric_utils.make_label_sampler(opts, G)(50)
    assert labels.shape == (50, 3) and torch.equal(labels.sum(1), torch.ones(50))
    assert set(labels.argmax(1).tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match='needs dataset_kwargs'):
        metric_utils.make_label_sampler(MetricOptions(G=G, device='cpu'), G)
    with pytest.raises(ValueError, match='c_dim=3'):
        bad = MetricOptions(G=G, device='cpu', dataset_kwargs=memory_dataset_kwargs(num_images=4, resolution=8))
        metric_utils.make_label_sampler(bad, G)


def test_generator_stats_at_eval_resolution_use_pyramid_fn(counting_detector):
    G = TinyGenerator(img_resolution=16)
    torch.manual_seed(3)
    opts = MetricOptions(G=G, device='cpu', eval_resolution=8, G_pyramid_fn=tiny_pyramid_fn, batch_size=4)
    via_fn = metric_utils.compute_feature_stats_for_generator(opts, 'u', dict(return_lpips=True), batch_size=4,
                                                              capture_all=True, max_items=4).get_all()
    torch.manual_seed(3)
    z = torch.randn([4, G.z_dim])
    full = G(z, torch.zeros([4, 0]))
    expected = metric_utils.images_to_uint8(F.avg_pool2d(full, 2)).float().flatten(1) / 255
    np.testing.assert_allclose(via_fn, expected.numpy(), atol=1e-6)
    # Without a pyramid function the full-resolution uint8 output is downscaled (box) like the real images.
    torch.manual_seed(3)
    plain = metric_utils.compute_feature_stats_for_generator(opts.replace(G_pyramid_fn=None), 'u',
                                                             dict(return_lpips=True), batch_size=4,
                                                             capture_all=True, max_items=4).get_all()
    expected_plain = metric_utils.downscale_images(metric_utils.images_to_uint8(full), 8).float().flatten(1) / 255
    np.testing.assert_allclose(plain, expected_plain.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match='not the requested 2'):
        metric_utils.compute_feature_stats_for_generator(opts.replace(eval_resolution=2), 'u', {}, batch_size=4,
                                                         capture_all=True, max_items=4)


def test_generator_stats_need_max_items_and_G():
    with pytest.raises(ValueError, match='max_items'):
        metric_utils.compute_feature_stats_for_generator(MetricOptions(G=TinyGenerator(), device='cpu'), 'u', {},
                                                         detector=FakeDetector())
    with pytest.raises(ValueError, match='G is None'):
        metric_utils.compute_feature_stats_for_generator(MetricOptions(device='cpu'), 'u', {}, max_items=4)
