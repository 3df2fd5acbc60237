"""Tests for the metric feature detectors (metrics/inception.py, metrics/vgg16_lpips.py, metrics/detectors.py).

Real detector weights are not available offline, so every test builds stand-in weights: random tensors in
the exact public key layouts (the tables below are written out literally, independently of the code under
test), small TorchScript / pickled stand-in modules, and a fake download that fails.
"""
import importlib
import importlib.util
import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metrics import detectors, inception, vgg16_lpips

# Every convolution of the pytorch-fid weights file pt_inception-2015-12-05-6726825d.pth:
# module prefix, out channels, in channels, kernel height, kernel width. Each has <prefix>.conv.weight and
# <prefix>.bn.{weight,bias,running_mean,running_var}; then fc.weight [1008, 2048] and fc.bias [1008].
PYTORCH_FID_CONVS = """
Conv2d_1a_3x3                32    3 3 3
Conv2d_2a_3x3                32   32 3 3
Conv2d_2b_3x3                64   32 3 3
Conv2d_3b_1x1                80   64 1 1
Conv2d_4a_3x3               192   80 3 3
Mixed_5b.branch1x1           64  192 1 1
Mixed_5b.branch5x5_1         48  192 1 1
Mixed_5b.branch5x5_2         64   48 5 5
Mixed_5b.branch3x3dbl_1      64  192 1 1
Mixed_5b.branch3x3dbl_2      96   64 3 3
Mixed_5b.branch3x3dbl_3      96   96 3 3
Mixed_5b.branch_pool         32  192 1 1
Mixed_5c.branch1x1           64  256 1 1
Mixed_5c.branch5x5_1         48  256 1 1
Mixed_5c.branch5x5_2         64   48 5 5
Mixed_5c.branch3x3dbl_1      64  256 1 1
Mixed_5c.branch3x3dbl_2      96   64 3 3
Mixed_5c.branch3x3dbl_3      96   96 3 3
Mixed_5c.branch_pool         64  256 1 1
Mixed_5d.branch1x1           64  288 1 1
Mixed_5d.branch5x5_1         48  288 1 1
Mixed_5d.branch5x5_2         64   48 5 5
Mixed_5d.branch3x3dbl_1      64  288 1 1
Mixed_5d.branch3x3dbl_2      96   64 3 3
Mixed_5d.branch3x3dbl_3      96   96 3 3
Mixed_5d.branch_pool         64  288 1 1
Mixed_6a.branch3x3          384  288 3 3
Mixed_6a.branch3x3dbl_1      64  288 1 1
Mixed_6a.branch3x3dbl_2      96   64 3 3
Mixed_6a.branch3x3dbl_3      96   96 3 3
Mixed_6b.branch1x1          192  768 1 1
Mixed_6b.branch7x7_1        128  768 1 1
Mixed_6b.branch7x7_2        128  128 1 7
Mixed_6b.branch7x7_3        192  128 7 1
Mixed_6b.branch7x7dbl_1     128  768 1 1
Mixed_6b.branch7x7dbl_2     128  128 7 1
Mixed_6b.branch7x7dbl_3     128  128 1 7
Mixed_6b.branch7x7dbl_4     128  128 7 1
Mixed_6b.branch7x7dbl_5     192  128 1 7
Mixed_6b.branch_pool        192  768 1 1
Mixed_6c.branch1x1          192  768 1 1
Mixed_6c.branch7x7_1        160  768 1 1
Mixed_6c.branch7x7_2        160  160 1 7
Mixed_6c.branch7x7_3        192  160 7 1
Mixed_6c.branch7x7dbl_1     160  768 1 1
Mixed_6c.branch7x7dbl_2     160  160 7 1
Mixed_6c.branch7x7dbl_3     160  160 1 7
Mixed_6c.branch7x7dbl_4     160  160 7 1
Mixed_6c.branch7x7dbl_5     192  160 1 7
Mixed_6c.branch_pool        192  768 1 1
Mixed_6d.branch1x1          192  768 1 1
Mixed_6d.branch7x7_1        160  768 1 1
Mixed_6d.branch7x7_2        160  160 1 7
Mixed_6d.branch7x7_3        192  160 7 1
Mixed_6d.branch7x7dbl_1     160  768 1 1
Mixed_6d.branch7x7dbl_2     160  160 7 1
Mixed_6d.branch7x7dbl_3     160  160 1 7
Mixed_6d.branch7x7dbl_4     160  160 7 1
Mixed_6d.branch7x7dbl_5     192  160 1 7
Mixed_6d.branch_pool        192  768 1 1
Mixed_6e.branch1x1          192  768 1 1
Mixed_6e.branch7x7_1        192  768 1 1
Mixed_6e.branch7x7_2        192  192 1 7
Mixed_6e.branch7x7_3        192  192 7 1
Mixed_6e.branch7x7dbl_1     192  768 1 1
Mixed_6e.branch7x7dbl_2     192  192 7 1
Mixed_6e.branch7x7dbl_3     192  192 1 7
Mixed_6e.branch7x7dbl_4     192  192 7 1
Mixed_6e.branch7x7dbl_5     192  192 1 7
Mixed_6e.branch_pool        192  768 1 1
Mixed_7a.branch3x3_1        192  768 1 1
Mixed_7a.branch3x3_2        320  192 3 3
Mixed_7a.branch7x7x3_1      192  768 1 1
Mixed_7a.branch7x7x3_2      192  192 1 7
Mixed_7a.branch7x7x3_3      192  192 7 1
Mixed_7a.branch7x7x3_4      192  192 3 3
Mixed_7b.branch1x1          320 1280 1 1
Mixed_7b.branch3x3_1        384 1280 1 1
Mixed_7b.branch3x3_2a       384  384 1 3
Mixed_7b.branch3x3_2b       384  384 3 1
Mixed_7b.branch3x3dbl_1     448 1280 1 1
Mixed_7b.branch3x3dbl_2     384  448 3 3
Mixed_7b.branch3x3dbl_3a    384  384 1 3
Mixed_7b.branch3x3dbl_3b    384  384 3 1
Mixed_7b.branch_pool        192 1280 1 1
Mixed_7c.branch1x1          320 2048 1 1
Mixed_7c.branch3x3_1        384 2048 1 1
Mixed_7c.branch3x3_2a       384  384 1 3
Mixed_7c.branch3x3_2b       384  384 3 1
Mixed_7c.branch3x3dbl_1     448 2048 1 1
Mixed_7c.branch3x3dbl_2     384  448 3 3
Mixed_7c.branch3x3dbl_3a    384  384 1 3
Mixed_7c.branch3x3dbl_3b    384  384 3 1
Mixed_7c.branch_pool        192 2048 1 1
"""


def pytorch_fid_layout():
    """{key: shape} of the pytorch-fid Inception state dict, from the literal table above."""
    layout = {}
    for line in PYTORCH_FID_CONVS.strip().splitlines():
        prefix, cout, cin, kh, kw = line.split()
        cout, cin, kh, kw = int(cout), int(cin), int(kh), int(kw)
        layout[f'{prefix}.conv.weight'] = (cout, cin, kh, kw)
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            layout[f'{prefix}.bn.{name}'] = (cout,)
    layout['fc.weight'] = (1008, 2048)
    layout['fc.bias'] = (1008,)
    return layout


def random_inception_state_dict(seed=0):
    """Random weights in the pytorch-fid layout; He-scaled so activations stay of order one."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in pytorch_fid_layout().items():
        if key.endswith('conv.weight'):
            t = torch.randn(shape, generator=gen) * math.sqrt(2 / (shape[1] * shape[2] * shape[3]))
        elif key.endswith(('bn.weight', 'running_var')):
            t = torch.rand(shape, generator=gen) + 0.5
        elif key == 'fc.weight':
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        else:
            t = torch.randn(shape, generator=gen) * 0.1
        state[key] = t
    return state


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope='module')
def inception_state():
    return random_inception_state_dict()


@pytest.fixture(scope='module')
def reference(inception_state):
    module = inception.InceptionV3FID()
    module.load_state_dict(inception_state, strict=True)
    return module


@pytest.fixture(scope='module')
def fast32(reference):
    return inception.FastInceptionV3FID(reference, dtype=torch.float32)


@pytest.fixture(scope='module')
def images():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 37, 45), dtype=torch.uint8, generator=gen)


@pytest.fixture(scope='module')
def ref_features(reference, images):
    return reference(images[:1], return_features=True)  # the slow unfolded module: one image


@pytest.fixture(scope='module')
def fast_features(fast32, images):
    return fast32(images, return_features=True)


# ---------------------------------------------------------------------------------------------------
# Inception: layout, loading


def test_state_dict_layout_matches_pytorch_fid_table():
    ours = {k: tuple(v.shape) for k, v in inception.InceptionV3FID().state_dict().items()
            if not k.endswith('num_batches_tracked')}
    assert ours == pytorch_fid_layout()
    assert len(ours) == 94 * 5 + 2


def test_strict_load_of_pytorch_fid_layout(inception_state):
    module = inception.InceptionV3FID()
    module.load_state_dict(inception_state, strict=True)  # file without num_batches_tracked
    assert torch.equal(module.Mixed_7c.branch_pool.conv.weight, inception_state['Mixed_7c.branch_pool.conv.weight'])
    with_counters = dict(inception_state, **{k: torch.tensor(0) for k in module.state_dict() if 'num_batches' in k})
    inception.InceptionV3FID().load_state_dict(with_counters, strict=True)
    broken = dict(inception_state)
    del broken['Mixed_6b.branch7x7dbl_3.bn.running_var']
    with pytest.raises(RuntimeError, match='Missing key'):
        inception.InceptionV3FID().load_state_dict(broken, strict=True)


@pytest.mark.parametrize('legacy_format', [False, True])
def test_load_detector_from_state_dict_file(tmp_path, inception_state, fast32, legacy_format):
    path = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
    torch.save(inception_state, path, _use_new_zipfile_serialization=not legacy_format)
    detector = detectors.load_detector(str(path), kind='inception')
    assert isinstance(detector, inception.FastInceptionV3FID)
    assert not detector.training and not any(t.requires_grad for t in detector.parameters())
    ours, expected = detector.state_dict(), fast32.state_dict()  # same weights as the fixture built in memory
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in ours)
    with pytest.raises(ValueError, match='inception detector'):
        detectors.load_detector(str(path), kind='vgg16')


# ---------------------------------------------------------------------------------------------------
# Inception: math


def test_fold_batchnorm_matches_explicit_formula():
    gen = torch.Generator().manual_seed(3)
    block = inception.ConvBN(4, 5, (3, 1), padding=(1, 0)).double()
    block.conv.weight.data = torch.randn(5, 4, 3, 1, generator=gen, dtype=torch.float64)
    block.bn.weight.data = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    block.bn.bias.data = torch.randn(5, generator=gen, dtype=torch.float64)
    block.bn.running_mean.data = torch.randn(5, generator=gen, dtype=torch.float64)
    block.bn.running_var.data = torch.rand(5, generator=gen, dtype=torch.float64) + 0.1
    x = torch.randn(2, 4, 6, 7, generator=gen, dtype=torch.float64)
    w, b = inception.fold_batchnorm(block)
    folded = F.conv2d(x, w, b, padding=(1, 0))
    z = F.conv2d(x, block.conv.weight.double(), padding=(1, 0))
    bn = block.bn
    v = lambda t: t.double().view(1, -1, 1, 1)  # noqa: E731
    explicit = (z - v(bn.running_mean)) / torch.sqrt(v(bn.running_var) + 1e-3) * v(bn.weight) + v(bn.bias)
    assert torch.allclose(folded, explicit, rtol=1e-10, atol=1e-10)


def test_fast_module_matches_reference_fp32(ref_features, fast_features):
    assert fast_features.shape == (2, 2048) and fast_features.dtype == torch.float32
    assert rel_err(fast_features[:1], ref_features) < 1e-4
    assert (fast_features[:1] - ref_features).abs().max() <= 1e-4 * ref_features.abs().max()
    assert not torch.allclose(fast_features[0], fast_features[1])


def test_no_output_bias_probabilities_end_to_end(fast32, images, fast_features):
    probs_nobias = fast32(images, no_output_bias=True)
    assert probs_nobias.shape == (2, 1008) and (probs_nobias >= 0).all()
    assert torch.allclose(probs_nobias.sum(1), torch.ones(2), atol=1e-5)
    expected_logits = fast_features.double() @ fast32.fc_weight.double().t()  # computed independently
    assert torch.allclose(probs_nobias.double(), torch.softmax(expected_logits, 1), rtol=1e-4, atol=1e-7)


def test_head_outputs(monkeypatch, fast32, images):
    # The trunk is replaced by fixed features so that only the head (shared by every output) runs.
    features = torch.randn(2, 2048, generator=torch.Generator().manual_seed(4)).relu() * 3
    monkeypatch.setattr(fast32, 'pool_features', lambda x: features)
    logits = features.double() @ fast32.fc_weight.double().t()
    biased = logits + fast32.fc_bias.double()
    assert torch.equal(fast32(images, return_features=True), features)
    cases = [({}, torch.softmax(biased, 1)), ({'no_output_bias': True}, torch.softmax(logits, 1)),
             ({'return_logits': True}, biased), ({'return_logits': True, 'no_output_bias': True}, logits)]
    for kwargs, expected in cases:
        out = fast32(images, **kwargs)
        assert out.shape == (2, 1008) and out.dtype == torch.float32
        tolerance = dict(rtol=1e-5, atol=1e-4) if kwargs.get('return_logits') else dict(rtol=1e-4, atol=1e-8)
        assert torch.allclose(out.double(), expected, **tolerance), kwargs
    assert torch.allclose(fast32(images).sum(1), torch.ones(2), atol=1e-5)


def test_uint8_float_and_grayscale_inputs(fast32, images, fast_features):
    as_float = fast32(images.float(), return_features=True)
    assert rel_err(as_float, fast_features) < 1e-6
    gray = images[:, :1]
    assert torch.equal(inception._check_images(gray), gray.repeat(1, 3, 1, 1).float())
    assert not as_float.requires_grad
    as_float += 1  # outputs are ordinary tensors, not inference-mode tensors


def test_input_checks(fast32, reference):
    with pytest.raises(ValueError, match='1 or 3 channels'):
        fast32(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'):
        fast32(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match='299x299'):
        reference(torch.zeros(1, 3, 32, 32), resize_images=False)
    with pytest.raises(ValueError, match='299x299'):
        fast32(torch.zeros(1, 3, 32, 32), resize_images=False)
    with pytest.raises(ValueError, match='dtype'):
        inception.FastInceptionV3FID(reference, dtype=torch.float16)


def test_chunking_does_not_change_outputs(reference, images, fast_features):
    one = inception.FastInceptionV3FID(reference, chunk_size=1)(images, return_features=True)
    assert rel_err(one, fast_features) < 1e-5


def test_plain_conv_path_matches_fused(reference, images, fast_features):
    # The path used off-CPU (CUDA) or without oneDNN: F.conv2d + bias + ReLU instead of the fused op.
    fast = inception.FastInceptionV3FID(reference)
    convs = [m for m in fast.modules() if isinstance(m, inception.FoldedConv)]
    assert len(convs) == 5 + 3 * 5 + 4 + 4 * 8 + 5 + 2 * 7
    for conv in convs:
        conv.use_fused = False
    assert rel_err(fast(images[:1], return_features=True), fast_features[:1]) < 1e-5


def _tf1_resize_loops(img, out_h, out_w):
    """TF-1 resize_bilinear (align_corners=False, half_pixel_centers=False) with explicit loops."""
    n, c, h, w = img.shape
    out = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        sy = i * h / out_h
        y0 = int(math.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for j in range(out_w):
            sx = j * w / out_w
            x0 = int(math.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            top = img[:, :, y0, x0] * (1 - fx) + img[:, :, y0, x1] * fx
            bottom = img[:, :, y1, x0] * (1 - fx) + img[:, :, y1, x1] * fx
            out[:, :, i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize('in_h,in_w', [(5, 7), (23, 4), (11, 11), (30, 600)])
def test_tf1_resize_against_loops(in_h, in_w):
    img = np.random.RandomState(0).uniform(0, 255, size=(1, 2, in_h, in_w))
    expected = _tf1_resize_loops(img, 11, 11)
    x = torch.from_numpy(img).float()
    assert np.allclose(inception.resize_tf1_bilinear(x, 11).numpy(), expected, atol=1e-3)
    assert np.allclose(inception.resize_tf1_bilinear_fast(x, 11).numpy(), expected, atol=1e-3)


def test_input_scaling_is_tf_graph_convention(reference):
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 299, 299)
    y = inception.preprocess(x)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-1.0, 0.0, 127 / 128]))


def test_bf16_mode_close_to_fp32(reference, images, fast_features):
    fast16 = inception.FastInceptionV3FID(reference, dtype=torch.bfloat16)
    assert fast16.conv2a.weight.dtype == torch.bfloat16 and fast16.conv1a.weight.dtype == torch.float32
    f16 = fast16(images, return_features=True)
    assert f16.dtype == torch.float32
    assert 1e-5 < rel_err(f16, fast_features) < 3e-2


def _import_torch_fidelity_inception():
    spec = importlib.util.find_spec('torch_fidelity')
    if spec is None:
        return None
    if 'torch_fidelity' not in sys.modules:  # its package __init__ needs torchvision; load only the module file
        package = types.ModuleType('torch_fidelity')
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules['torch_fidelity'] = package
    try:
        return importlib.import_module('torch_fidelity.feature_extractor_inceptionv3').FeatureExtractorInceptionV3
    except ImportError:
        return None


def test_equivalence_with_torch_fidelity(tmp_path, inception_state, ref_features, fast_features, fast32, images):
    tf_class = _import_torch_fidelity_inception()
    if tf_class is None:
        pytest.skip('torch_fidelity not importable (dev-only: pip install --no-deps torch-fidelity==0.4.0)')
    path = tmp_path / 'weights.pth'
    torch.save(inception_state, path)
    tf_model = tf_class('inception-v3-compat', ['2048', 'logits_unbiased'], feature_extractor_weights_path=str(path))
    tf_model.eval()
    with torch.no_grad():
        tf_features, tf_logits = tf_model(images[:1])
    assert rel_err(ref_features, tf_features) < 1e-4
    assert rel_err(fast_features[:1], tf_features) < 1e-4
    assert (fast_features[:1] - tf_features).abs().max() <= 1e-4 * tf_features.abs().max()
    assert rel_err(fast_features[:1] @ fast32.fc_weight.t(), tf_logits) < 1e-4


# ---------------------------------------------------------------------------------------------------
# Loading as-is modules, URLs, caching


class StandInDetector(torch.nn.Module):
    """Tiny detector with NVIDIA's call convention: uint8 NCHW in, features or probabilities out."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, img, return_features: bool = False, no_output_bias: bool = False,
                resize_images: bool = True, return_lpips: bool = False):
        x = img.to(torch.float32) / 127.5 - 1
        if resize_images:
            x = F.interpolate(x, size=(16, 16), mode='bilinear', align_corners=False)
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        if return_features:
            return features
        logits = features @ self.fc.weight.t()
        if not no_output_bias:
            logits = logits + self.fc.bias
        return torch.softmax(logits, dim=1)


def test_torchscript_stand_in_from_file(tmp_path, images):
    module = StandInDetector().eval()
    path = tmp_path / 'inception-2015-12-05.pt'
    torch.jit.script(module).save(str(path))
    detector = detectors.load_detector(str(path), device='cpu')
    assert isinstance(detector, torch.jit.ScriptModule)
    assert torch.allclose(detector(images, return_features=True), module(images, return_features=True), atol=1e-6)
    assert torch.allclose(detector(images, no_output_bias=True), module(images, no_output_bias=True), atol=1e-6)
    via_url = detectors.load_detector(path.as_uri())
    assert torch.allclose(via_url(images), module(images), atol=1e-6)
    bf16 = detectors.load_detector(str(path), dtype=torch.bfloat16)
    out = bf16(images, return_features=True)
    assert out.dtype == torch.float32
    assert rel_err(out, module(images, return_features=True)) < 3e-2


def test_pickled_stand_in_from_file(tmp_path, images):
    module = StandInDetector().eval()
    path = tmp_path / 'inception-2015-12-05.pkl'
    with open(path, 'wb') as f:
        pickle.dump(module, f)
    detector = detectors.load_detector(str(path))
    assert type(detector).__name__ == 'StandInDetector'
    assert torch.equal(detector(images, return_features=True), module(images, return_features=True))
    whole = tmp_path / 'standin_module.pt'  # a whole module saved with torch.save (not weights-only loadable)
    torch.save(module, whole)
    assert torch.equal(detectors.load_detector(str(whole))(images), module(images))


def test_unrecognised_files(tmp_path):
    path = tmp_path / 'weird.pkl'
    with open(path, 'wb') as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match='expected a state dict'):
        detectors.load_detector(str(path))
    torch.save({'foo.weight': torch.zeros(1)}, tmp_path / 'foo.pth')
    with pytest.raises(ValueError, match='unrecognised detector state dict'):
        detectors.load_detector(str(tmp_path / 'foo.pth'))
    with pytest.raises(ValueError, match='kind'):
        detectors.load_detector(str(path), kind='resnet')


def test_offline_error_names_file_and_cache_path(monkeypatch, tmp_path):
    import dnnlib.util
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    seen = []

    def offline_open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
        seen.append(url)
        raise IOError(f'Could not download {url} (URLError: network unreachable)')
    monkeypatch.setattr(dnnlib.util, 'open_url', offline_open_url, raising=False)
    with pytest.raises(detectors.DetectorUnavailableError) as info:
        detectors.load_detector(detectors.INCEPTION_URL)
    message = str(info.value)
    assert seen == [detectors.INCEPTION_URL]
    assert "'inception-2015-12-05.pt'" in message and detectors.INCEPTION_URL in message
    assert 'GAN_INCEPTION_URL' in message and '\n' not in message
    if hasattr(dnnlib.util, 'url_cache_filename'):  # the place open_url looks for the cached file
        cache_name = dnnlib.util.url_cache_filename(detectors.INCEPTION_URL)
        expected = os.path.join(str(tmp_path / 'cache'), 'downloads', cache_name)
        assert expected in message
    assert isinstance(info.value, OSError)
    with pytest.raises(detectors.DetectorUnavailableError, match='GAN_VGG16_URL'):
        detectors.load_detector(detectors.VGG16_URL)
    with pytest.raises(detectors.DetectorUnavailableError, match='not found'):
        detectors.load_detector(str(tmp_path / 'missing.pt'))


def test_offline_error_from_real_open_url(monkeypatch, tmp_path):
    import dnnlib.util
    if not hasattr(dnnlib.util, '_urlopen'):
        pytest.skip('dnnlib.util has no _urlopen hook to simulate an offline machine')
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))

    def no_network(url, timeout):  # what an offline machine gives: the host name does not resolve
        import socket
        import urllib.error
        raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(dnnlib.util, '_urlopen', no_network)
    with pytest.raises(detectors.DetectorUnavailableError) as info:
        detectors.load_detector('https://example.com/metrics/vgg16.pt')
    message = str(info.value)
    assert "'vgg16.pt'" in message and str(tmp_path / 'cache') in message and 'GAN_VGG16_URL' in message


def test_download_path_uses_open_url_filename(monkeypatch, tmp_path, images):
    import dnnlib.util
    path = tmp_path / 'cached_inception.pt'
    torch.jit.script(StandInDetector().eval()).save(str(path))
    calls = []

    def cached_open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
        calls.append((url, return_filename))
        return str(path) if return_filename else open(path, 'rb')
    monkeypatch.setattr(dnnlib.util, 'open_url', cached_open_url, raising=False)
    detector = detectors.load_detector('https://example.com/metrics/inception-2015-12-05.pt')
    assert calls == [('https://example.com/metrics/inception-2015-12-05.pt', True)]
    assert detector(images, return_features=True).shape == (2, 8)


def test_default_urls_and_env_overrides(monkeypatch):
    monkeypatch.delenv('GAN_INCEPTION_URL', raising=False)
    monkeypatch.delenv('GAN_VGG16_URL', raising=False)
    assert detectors.inception_url().endswith('/inception-2015-12-05.pt')
    assert detectors.vgg16_url().endswith('/vgg16.pt')
    monkeypatch.setenv('GAN_INCEPTION_URL', '/data/pt_inception-2015-12-05-6726825d.pth')
    monkeypatch.setenv('GAN_VGG16_URL', '/data/vgg16.pt')
    assert detectors.inception_url() == '/data/pt_inception-2015-12-05-6726825d.pth'
    assert detectors.vgg16_url() == '/data/vgg16.pt'
    assert detectors.get_feature_detector_name(detectors.INCEPTION_URL) == 'inception-2015-12-05'
    sg3_url = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/vgg16.pkl'
    assert detectors.resolve_detector_url(sg3_url) == '/data/vgg16.pt'
    assert detectors.resolve_detector_url(detectors.INCEPTION_URL) == '/data/pt_inception-2015-12-05-6726825d.pth'
    assert detectors.resolve_detector_url('https://example.com/other.pt') == 'https://example.com/other.pt'
    assert detectors.resolve_detector_url('/local/inception-2015-12-05.pt') == '/local/inception-2015-12-05.pt'


def test_env_override_applies_to_hard_coded_nvidia_url(monkeypatch, tmp_path, images):
    path = tmp_path / 'my_inception.pt'
    torch.jit.script(StandInDetector().eval()).save(str(path))
    monkeypatch.setenv('GAN_INCEPTION_URL', str(path))
    monkeypatch.setattr(detectors, '_detector_cache', {})
    detector = detectors.get_feature_detector(detectors.INCEPTION_URL, torch.device('cpu'))
    assert detector(images, return_features=True).shape == (2, 8)


def test_get_feature_detector_caches_per_url_device_dtype(tmp_path, monkeypatch):
    monkeypatch.setattr(detectors, '_detector_cache', {})
    path = str(tmp_path / 'standin.pt')
    torch.jit.script(StandInDetector().eval()).save(path)
    a = detectors.get_feature_detector(path, torch.device('cpu'))
    b = detectors.get_feature_detector(path, 'cpu', num_gpus=1, rank=0)
    c = detectors.get_feature_detector(path, 'cpu', dtype=torch.bfloat16)
    assert a is b and c is not a
    assert len(detectors._detector_cache) == 2


@pytest.mark.parametrize('rank', [0, 1])
def test_get_feature_detector_rank_zero_loads_first(tmp_path, monkeypatch, rank):
    monkeypatch.setattr(detectors, '_detector_cache', {})
    path = str(tmp_path / 'standin.pt')
    torch.jit.script(StandInDetector().eval()).save(path)
    events = []
    real_load = detectors.load_detector
    monkeypatch.setattr(torch.distributed, 'is_available', lambda: True)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.distributed, 'barrier', lambda *a, **k: events.append('barrier'))
    monkeypatch.setattr(detectors, 'load_detector', lambda *a, **k: events.append('load') or real_load(*a, **k))
    detectors.get_feature_detector(path, 'cpu', num_gpus=2, rank=rank)
    assert events == (['load', 'barrier'] if rank == 0 else ['barrier', 'load'])
    detectors.get_feature_detector(path, 'cpu', num_gpus=2, rank=rank)  # cached: no loading, no barrier
    assert len(events) == 2


# ---------------------------------------------------------------------------------------------------
# VGG16 + LPIPS

VGG16_CONVS = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
               (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512)]
VGG16_FCS = [(0, 4096, 25088), (3, 4096, 4096), (6, 1000, 4096)]
LPIPS_HEADS = [(0, 64), (1, 128), (2, 256), (3, 512), (4, 512)]


def random_vgg_state_dict(with_classifier=True, with_lpips=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, cout, cin in VGG16_CONVS:
        state[f'features.{index}.weight'] = torch.randn(cout, cin, 3, 3, generator=gen) * math.sqrt(2 / (9 * cin))
        state[f'features.{index}.bias'] = torch.randn(cout, generator=gen) * 0.1
    if with_classifier:
        for index, cout, cin in VGG16_FCS:
            state[f'classifier.{index}.weight'] = torch.randn(cout, cin, generator=gen) * math.sqrt(2 / cin)
            state[f'classifier.{index}.bias'] = torch.randn(cout, generator=gen) * 0.1
    if with_lpips:
        for index, channels in LPIPS_HEADS:
            state[f'lin{index}.model.1.weight'] = torch.rand(1, channels, 1, 1, generator=gen)
    return state


@pytest.fixture(scope='module')
def vgg_state():
    return random_vgg_state_dict()


@pytest.fixture(scope='module')
def vgg(vgg_state):
    return vgg16_lpips.VGG16LPIPS.from_state_dict(vgg_state)


def lpips_by_hand(state, a, b):
    """LPIPS distance [N] from the raw state dict: scaling layer, VGG16 convs, per-tap unit normalisation,
    squared difference, head 1x1 conv, spatial mean, sum over taps."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    xs = [((t.double() / 255 * 2 - 1) - shift) / scale for t in (a, b)]
    taps = {2: 0, 7: 1, 14: 2, 21: 3, 28: 4}  # conv index whose ReLU output LPIPS reads -> head
    pool_after = {2, 7, 14, 21}
    total = torch.zeros(a.shape[0], dtype=torch.float64)
    for index, _, _ in VGG16_CONVS:
        w, bias = state[f'features.{index}.weight'].double(), state[f'features.{index}.bias'].double()
        xs = [torch.relu(F.conv2d(x, w, bias, padding=1)) for x in xs]
        if index in taps:
            na, nb = [x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10) for x in xs]
            head = state[f'lin{taps[index]}.model.1.weight'].double()
            total += F.conv2d((na - nb).square(), head).mean(dim=(1, 2, 3))
        if index in pool_after:
            xs = [F.max_pool2d(x, 2) for x in xs]
    return total


def test_vgg_state_dict_layout(vgg_state):
    ours = {k: tuple(v.shape) for k, v in vgg16_lpips.VGG16LPIPS().state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in vgg_state.items()}


def test_lpips_stack_squared_difference_is_lpips(vgg, vgg_state):
    gen = torch.Generator().manual_seed(5)
    a = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=gen)
    b = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=gen)
    both = vgg(torch.cat([a, b]), resize_images=False, return_lpips=True)
    assert both.shape == (4, 64 * 16 * 16 + 128 * 8 * 8 + 256 * 4 * 4 + 512 * 2 * 2 + 512 * 1 * 1)
    fa, fb = both.chunk(2)
    ours = (fa - fb).square().sum(1).double()
    expected = lpips_by_hand(vgg_state, a, b)
    assert torch.allclose(ours, expected, rtol=1e-4)
    assert (ours > 0).all()
    assert torch.allclose(vgg(a, resize_images=False, return_lpips=True), fa, rtol=1e-5, atol=1e-7)


def test_vgg_resize_path(vgg):
    img = torch.randint(0, 256, (1, 3, 64, 48), dtype=torch.uint8)
    features = vgg(img, return_features=True)
    assert features.shape == (1, 4096) and features.dtype == torch.float32 and (features >= 0).all()
    resized = F.interpolate(img.float(), size=(224, 224), mode='bilinear', align_corners=False)
    assert rel_err(features, vgg(resized, return_features=True, resize_images=False)) < 1e-5


def test_vgg_features_by_hand(vgg, vgg_state):
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    features = vgg(img, return_features=True, resize_images=False)
    assert features.shape == (1, 4096) and (features >= 0).all()
    # By hand: convs and 5 max pools (32 -> 1 px), average pool to 7x7 (replicates), fc6 + ReLU, fc7 + ReLU.
    x = ((img.double() / 127.5 - 1) - torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    for index, _, _ in VGG16_CONVS:
        w, b = vgg_state[f'features.{index}.weight'].double(), vgg_state[f'features.{index}.bias'].double()
        x = torch.relu(F.conv2d(x, w, b, padding=1))
        if index in (2, 7, 14, 21, 28):
            x = F.max_pool2d(x, 2)
    x = x.expand(-1, -1, 7, 7).flatten(1)
    for index in (0, 3):
        w, b = vgg_state[f'classifier.{index}.weight'].double(), vgg_state[f'classifier.{index}.bias'].double()
        x = torch.relu(x @ w.t() + b)
    assert rel_err(features, x) < 1e-4


def test_vgg_missing_parts_and_bad_calls(vgg, vgg_state):
    without_heads = {k: v for k, v in vgg_state.items() if not k.startswith('lin')}
    heads_only_missing = vgg16_lpips.VGG16LPIPS.from_state_dict(without_heads)
    with pytest.raises(ValueError, match='no LPIPS heads'):
        heads_only_missing(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), return_lpips=True, resize_images=False)
    without_classifier = {k: v for k, v in vgg_state.items() if 'classifier' not in k}
    no_classifier = vgg16_lpips.VGG16LPIPS.from_state_dict(without_classifier)
    with pytest.raises(ValueError, match='no classifier'):
        no_classifier(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), return_features=True)
    with pytest.raises(ValueError, match='exactly one'):
        vgg(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    negative = {k: v for k, v in vgg_state.items() if 'classifier' not in k}
    negative['lin2.model.1.weight'] = -negative['lin2.model.1.weight']
    with pytest.raises(ValueError, match='non-negative'):
        vgg16_lpips.VGG16LPIPS.from_state_dict(negative)


def test_vgg_load_detector_and_bf16(tmp_path, vgg_state):
    state = {k: v for k, v in vgg_state.items() if 'classifier' not in k}
    path = tmp_path / 'vgg16_lpips.pth'
    torch.save(state, path)
    fp32 = detectors.load_detector(str(path), kind='vgg16')
    bf16 = detectors.load_detector(str(path), kind='vgg16', dtype=torch.bfloat16)
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    a = fp32(img, resize_images=False, return_lpips=True)
    b = bf16(img, resize_images=False, return_lpips=True)
    assert b.dtype == torch.float32
    assert rel_err(b, a) < 5e-2
    d32 = (a[0] - a[1]).square().sum()
    d16 = (b[0] - b[1]).square().sum()
    assert abs(d16 - d32) / d32 < 5e-2
