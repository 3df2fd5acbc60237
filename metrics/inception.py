"""Inception-v3 in the "FID" variant (the TensorFlow graph of 2015-12-05 as used by FID/KID/IS).

Two modules with the same call convention:

* ``InceptionV3FID`` holds its tensors in the key layout of the widely used PyTorch FID weights file
  ``pt_inception-2015-12-05-6726825d.pth`` (``Conv2d_1a_3x3.conv.weight``, ``Conv2d_1a_3x3.bn.running_mean``,
  ``Mixed_5b.branch1x1.conv.weight``, ..., ``fc.weight`` (1008 x 2048), ``fc.bias``). It is the readable
  reference: convolution, batch norm, ReLU, exactly as stored.
* ``FastInceptionV3FID`` is built from a reference module for inference: batch norm folded into the
  convolutions, the 1x1 convolutions that read the same tensor merged into one, the input scaling folded
  into the first convolution, channels-last memory layout, optional bfloat16 weights. Same outputs up to
  float rounding.

Call convention (both modules), matching the detectors the metrics use::

    detector(images, return_features=False, no_output_bias=False, resize_images=True, return_logits=False)

``images``: [N, C, H, W] RGB (C = 3, or 1 = grayscale repeated), uint8 or float, pixel values on the
0..255 scale, any H and W. They are resized to 299 x 299 with TensorFlow-1 bilinear resampling
(``align_corners=False`` without half-pixel centres, the convention of the original graph) and mapped to
[-1, 1) with ``(x - 128) / 128``. Returns float32:

* ``return_features=True``: [N, 2048] pool features (FID, KID).
* otherwise [N, 1008] class probabilities (softmax); ``no_output_bias=True`` leaves out the output bias
  (the original TF Inception Score); ``return_logits=True`` returns the logits instead of probabilities.
"""

import torch
import torch.nn.functional as F

from torch_utils import cpu_features

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3

# ---------------------------------------------------------------------------------------------------
# Preprocessing


def _tf1_bilinear_taps(in_size, out_size, device):
    """Source indices and weights of TF-1 bilinear resizing along one axis (no half-pixel centres).

    Output sample i reads the input at position i * in_size / out_size, interpolating between the two
    neighbouring samples (the upper one clamped at the border). Returns (lo, hi, frac), each [out_size].
    """
    scale = in_size / out_size
    pos = torch.arange(out_size, dtype=torch.float64, device=device) * scale
    lo = pos.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = (pos - lo.double()).float()
    return lo, hi, frac


def resize_tf1_bilinear(x, size=INPUT_SIZE):
    """Resize float [N, C, H, W] to [N, C, size, size] like TF-1 ``resize_bilinear`` (align_corners=False).

    Implemented as two separable gather-and-lerp passes (rows, then columns); cost O(N*C*size*(W+size)).
    """
    if x.ndim != 4:
        raise ValueError(f'expected a 4-D [N, C, H, W] tensor, got shape {tuple(x.shape)}')
    h, w = x.shape[2], x.shape[3]
    if h != size:
        lo, hi, frac = _tf1_bilinear_taps(h, size, x.device)
        top, bottom = x.index_select(2, lo), x.index_select(2, hi)
        x = torch.lerp(top, bottom, frac.to(x.dtype).view(1, 1, size, 1))
    if w != size:
        lo, hi, frac = _tf1_bilinear_taps(w, size, x.device)
        left, right = x.index_select(3, lo), x.index_select(3, hi)
        x = torch.lerp(left, right, frac.to(x.dtype).view(1, 1, 1, size))
    return x


def _check_images(images):
    """Validate detector input and return it as float32 [N, 3, H, W] on the 0..255 scale."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f'images must be a [N, C, H, W] tensor, got {shape}')
    if images.shape[1] not in (1, 3):
        raise ValueError(f'images must have 1 or 3 channels (RGB, NCHW), got {images.shape[1]} channels')
    if images.dtype == torch.bool or images.is_complex():
        raise ValueError(f'images must be uint8 or floating point, got {images.dtype}')
    x = images.to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _check_unresized(x):
    if x.shape[2] != INPUT_SIZE or x.shape[3] != INPUT_SIZE:
        raise ValueError(f'resize_images=False needs {INPUT_SIZE}x{INPUT_SIZE} input, got {x.shape[2]}x{x.shape[3]}')


def preprocess(images, resize_images=True):
    """uint8/float [N, C, H, W] (0..255) -> float32 [N, 3, 299, 299] in [-1, 1), as the TF graph does."""
    x = _check_images(images)
    if resize_images:
        x = resize_tf1_bilinear(x, INPUT_SIZE)
    else:
        _check_unresized(x)
    return (x - 128) / 128


def _head(features, fc_weight, fc_bias, return_features, no_output_bias, return_logits):
    """Pool features [N, 2048] -> features, logits or class probabilities (float32)."""
    features = features.float()
    if return_features:
        return features
    logits = features @ fc_weight.float().t()
    if not no_output_bias:
        logits = logits + fc_bias.float()
    return logits if return_logits else torch.softmax(logits, dim=1)


# ---------------------------------------------------------------------------------------------------
# Reference module in the pytorch-fid key layout


class ConvBN(torch.nn.Module):
    """Convolution without bias, batch norm (running statistics, eps=1e-3), ReLU. Keys: conv.*, bn.*."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = torch.nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x):
        bn = self.bn
        x = F.batch_norm(self.conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
        return F.relu(x)


def _avg_pool_3x3(x):
    """3x3 average pool, stride 1, 'same' size, padding excluded from the average (as in the TF graph)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(torch.nn.Module):
    """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (64 + 64 + 96 + pool_features channels)."""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(torch.nn.Module):
    """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (384 + 96 + in channels)."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], dim=1)


class InceptionC(torch.nn.Module):
    """Mixed_6b..6e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1 (4 x 192 channels)."""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, b7d, bp], dim=1)


class InceptionD(torch.nn.Module):
    """Mixed_7a (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (320 + 192 + in)."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class InceptionE(torch.nn.Module):
    """Mixed_7b/7c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (320 + 768 + 768 + 192 channels).

    The FID graph pools with a padding-excluding 3x3 average in Mixed_7b (``pool='avg'``) and with a
    3x3/1 max pool in Mixed_7c (``pool='max'``).
    """

    def __init__(self, in_channels, pool):
        super().__init__()
        if pool not in ('avg', 'max'):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], dim=1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], dim=1)
        pooled = _avg_pool_3x3(x) if self.pool == 'avg' else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, b3d, bp], dim=1)


class InceptionV3FID(torch.nn.Module):
    """Reference FID Inception-v3 whose ``state_dict`` has the pytorch-fid key layout (see module doc)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool='avg')
        self.Mixed_7c = InceptionE(2048, pool='max')
        self.fc = torch.nn.Linear(NUM_FEATURES, NUM_CLASSES)
        self.eval()

    def pool_features(self, x):
        """Preprocessed [N, 3, 299, 299] in [-1, 1] -> [N, 2048] average-pooled Mixed_7c activations."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
            x = getattr(self, 'Mixed_' + name)(x)
        return x.mean(dim=(2, 3))

    def forward(self, images, return_features=False, no_output_bias=False, resize_images=True, return_logits=False):
        """uint8/float [N, C, H, W] (0..255) -> [N, 2048] features or [N, 1008] probabilities/logits."""
        x = preprocess(images, resize_images=resize_images).to(self.fc.weight.dtype)
        features = self.pool_features(x)
        return _head(features, self.fc.weight, self.fc.bias, return_features, no_output_bias, return_logits)


# ---------------------------------------------------------------------------------------------------
# Fast inference module


def fold_batchnorm(conv_bn):
    """ConvBN -> (weight, bias) of one convolution computing the same pre-ReLU values.

    The per-channel factors are computed in float64; the weight keeps the convolution's dtype.
    """
    bn = conv_bn.bn
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv_bn.conv.weight.detach() * scale.to(conv_bn.conv.weight.dtype).view(-1, 1, 1, 1)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    return weight, bias


def _fused_conv_available():
    """True when this torch build has oneDNN's fused convolution + pointwise op (CPU)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
    except (AttributeError, RuntimeError):
        return False


class FoldedConv(torch.nn.Module):
    """Convolution with bias (batch norm folded in), optionally followed by ReLU; inference only.

    Weight [O, I, kh, kw] in ``dtype`` and channels-last layout; bias [O] always float32. On CPU the
    convolution and ReLU run as one oneDNN primitive when the build offers it.
    """

    def __init__(self, weight, bias, stride=(1, 1), padding=(0, 0), relu=True, dtype=torch.float32):
        super().__init__()
        self.register_buffer('weight', weight.to(dtype).contiguous(memory_format=torch.channels_last))
        self.register_buffer('bias', bias.float().contiguous())
        self.stride = [int(s) for s in stride] if isinstance(stride, (tuple, list)) else [int(stride)] * 2
        self.padding = [int(p) for p in padding] if isinstance(padding, (tuple, list)) else [int(padding)] * 2
        self.relu = relu
        # oneDNN's fused bfloat16 convolution refuses CPUs without native bfloat16 (AVX2-only x86); F.conv2d
        # emulates it there.
        self.use_fused = _fused_conv_available() and (dtype != torch.bfloat16 or cpu_features.native_bf16() is True)

    def forward(self, x):
        if self.use_fused and x.device.type == 'cpu' and x.dtype == self.weight.dtype:
            attr = 'relu' if self.relu else 'none'
            return torch.ops.mkldnn._convolution_pointwise(
                x.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                self.padding, self.stride, [1, 1], 1, attr, [], '')
        y = F.conv2d(x, self.weight, self.bias.to(x.dtype), self.stride, self.padding)
        return F.relu_(y) if self.relu else y


def _folded(conv_bn, dtype, relu=True):
    weight, bias = fold_batchnorm(conv_bn)
    return FoldedConv(weight, bias, conv_bn.conv.stride, conv_bn.conv.padding, relu=relu, dtype=dtype)


def _merged_1x1(conv_bns, dtype):
    """Several 1x1 ConvBNs that read the same input, as one convolution (outputs concatenated)."""
    folded = [fold_batchnorm(m) for m in conv_bns]
    return FoldedConv(torch.cat([w for w, _ in folded]), torch.cat([b for _, b in folded]), dtype=dtype)


def _pool_branch(conv_bn, dtype):
    # relu(conv(avgpool(x))) == relu(avgpool(conv(x))): both maps are linear and the padding-excluding
    # average of the constant bias is the bias, so convolving first is exact up to rounding and pools
    # the few output channels instead of all input channels.
    return _folded(conv_bn, dtype, relu=False)


class _FastA(torch.nn.Module):
    def __init__(self, ref, dtype):
        super().__init__()
        self.entry = _merged_1x1([ref.branch1x1, ref.branch5x5_1, ref.branch3x3dbl_1], dtype)  # 64|48|64
        self.b5 = _folded(ref.branch5x5_2, dtype)
        self.b3a = _folded(ref.branch3x3dbl_2, dtype)
        self.b3b = _folded(ref.branch3x3dbl_3, dtype)
        self.pool = _pool_branch(ref.branch_pool, dtype)

    def forward(self, x):
        b1, b5, b3 = torch.split(self.entry(x), [64, 48, 64], dim=1)
        bp = F.relu_(_avg_pool_3x3(self.pool(x)))
        return torch.cat([b1, self.b5(b5), self.b3b(self.b3a(b3)), bp], dim=1)


class _FastB(torch.nn.Module):
    def __init__(self, ref, dtype):
        super().__init__()
        self.b3 = _folded(ref.branch3x3, dtype)
        self.b3d = torch.nn.Sequential(*[_folded(getattr(ref, f'branch3x3dbl_{i}'), dtype) for i in (1, 2, 3)])

    def forward(self, x):
        return torch.cat([self.b3(x), self.b3d(x), F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _FastC(torch.nn.Module):
    def __init__(self, ref, dtype):
        super().__init__()
        self.c7 = ref.branch7x7_1.conv.out_channels
        self.entry = _merged_1x1([ref.branch1x1, ref.branch7x7_1, ref.branch7x7dbl_1], dtype)  # 192|c7|c7
        self.b7 = torch.nn.Sequential(*[_folded(getattr(ref, f'branch7x7_{i}'), dtype) for i in (2, 3)])
        self.b7d = torch.nn.Sequential(*[_folded(getattr(ref, f'branch7x7dbl_{i}'), dtype) for i in (2, 3, 4, 5)])
        self.pool = _pool_branch(ref.branch_pool, dtype)

    def forward(self, x):
        b1, b7, b7d = torch.split(self.entry(x), [192, self.c7, self.c7], dim=1)
        bp = F.relu_(_avg_pool_3x3(self.pool(x)))
        return torch.cat([b1, self.b7(b7), self.b7d(b7d), bp], dim=1)


class _FastD(torch.nn.Module):
    def __init__(self, ref, dtype):
        super().__init__()
        self.entry = _merged_1x1([ref.branch3x3_1, ref.branch7x7x3_1], dtype)  # 192|192
        self.b3 = _folded(ref.branch3x3_2, dtype)
        self.b7 = torch.nn.Sequential(*[_folded(getattr(ref, f'branch7x7x3_{i}'), dtype) for i in (2, 3, 4)])

    def forward(self, x):
        b3, b7 = torch.split(self.entry(x), [192, 192], dim=1)
        return torch.cat([self.b3(b3), self.b7(b7), F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _FastE(torch.nn.Module):
    def __init__(self, ref, dtype):
        super().__init__()
        self.pool_kind = ref.pool
        self.entry = _merged_1x1([ref.branch1x1, ref.branch3x3_1, ref.branch3x3dbl_1], dtype)  # 320|384|448
        self.b3a = _folded(ref.branch3x3_2a, dtype)
        self.b3b = _folded(ref.branch3x3_2b, dtype)
        self.b3d = _folded(ref.branch3x3dbl_2, dtype)
        self.b3da = _folded(ref.branch3x3dbl_3a, dtype)
        self.b3db = _folded(ref.branch3x3dbl_3b, dtype)
        self.pool = _pool_branch(ref.branch_pool, dtype) if ref.pool == 'avg' else _folded(ref.branch_pool, dtype)

    def forward(self, x):
        b1, b3, b3d = torch.split(self.entry(x), [320, 384, 448], dim=1)
        b3 = b3.contiguous(memory_format=torch.channels_last)
        b3d = self.b3d(b3d)
        if self.pool_kind == 'avg':
            bp = F.relu_(_avg_pool_3x3(self.pool(x)))
        else:
            bp = self.pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, self.b3a(b3), self.b3b(b3), self.b3da(b3d), self.b3db(b3d), bp], dim=1)


def _resize_matrix(in_size, out_size, device):
    """[in_size, out_size] float32 matrix M with (signal @ M) = TF-1 bilinear resize of signal."""
    lo, hi, frac = _tf1_bilinear_taps(in_size, out_size, device)
    m = torch.zeros(in_size, out_size, dtype=torch.float32, device=device)
    cols = torch.arange(out_size, device=device)
    m.index_put_((lo, cols), 1 - frac, accumulate=True)
    m.index_put_((hi, cols), frac, accumulate=True)
    return m


def resize_tf1_bilinear_fast(x, size=INPUT_SIZE):
    """Same result as ``resize_tf1_bilinear`` (up to rounding); columns by a small matmul when W <= 512."""
    h, w = x.shape[2], x.shape[3]
    if h != size:
        lo, hi, frac = _tf1_bilinear_taps(h, size, x.device)
        x = torch.lerp(x.index_select(2, lo), x.index_select(2, hi), frac.view(1, 1, size, 1))
    if w != size:
        if w <= 512:
            x = x @ _resize_matrix(w, size, x.device)
        else:
            lo, hi, frac = _tf1_bilinear_taps(w, size, x.device)
            x = torch.lerp(x.index_select(3, lo), x.index_select(3, hi), frac.view(1, 1, 1, size))
    return x


class FastInceptionV3FID(torch.nn.Module):
    """Inference-only FID Inception-v3 built from an ``InceptionV3FID`` (see module doc).

    ``dtype``: torch.float32 (the reference's features up to rounding) or torch.bfloat16 (all
    convolutions except the first in bfloat16; resizing, first convolution, pooling, head and outputs in
    float32). ``chunk_size``: images per internal forward pass (bounds the activation memory, about
    45 MB per image in float32, and keeps it cache- and allocator-friendly); outputs do not depend on it.
    """

    def __init__(self, reference, dtype=torch.float32, chunk_size=8):
        super().__init__()
        if not isinstance(reference, InceptionV3FID):
            raise TypeError(f'reference must be an InceptionV3FID, got {type(reference).__name__}')
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f'dtype must be torch.float32 or torch.bfloat16, got {dtype}')
        if int(chunk_size) < 1:
            raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
        self.compute_dtype = dtype
        self.chunk_size = int(chunk_size)
        # First convolution, always float32: fold the input scaling x_in = (x - 128) / 128 into it (the
        # convolution has no padding, so the constant shift becomes a bias term exactly).
        weight, bias = fold_batchnorm(reference.Conv2d_1a_3x3)
        self.conv1a = FoldedConv(weight / 128, bias - weight.double().sum(dim=(1, 2, 3)), stride=2)
        self.conv2a = _folded(reference.Conv2d_2a_3x3, dtype)
        self.conv2b = _folded(reference.Conv2d_2b_3x3, dtype)
        self.conv3b = _folded(reference.Conv2d_3b_1x1, dtype)
        self.conv4a = _folded(reference.Conv2d_4a_3x3, dtype)
        blocks = [_FastA(reference.Mixed_5b, dtype), _FastA(reference.Mixed_5c, dtype),
                  _FastA(reference.Mixed_5d, dtype), _FastB(reference.Mixed_6a, dtype)]
        blocks += [_FastC(getattr(reference, 'Mixed_6' + s), dtype) for s in 'bcde']
        blocks += [_FastD(reference.Mixed_7a, dtype), _FastE(reference.Mixed_7b, dtype),
                   _FastE(reference.Mixed_7c, dtype)]
        self.blocks = torch.nn.Sequential(*blocks)
        self.register_buffer('fc_weight', reference.fc.weight.detach().float().clone())
        self.register_buffer('fc_bias', reference.fc.bias.detach().float().clone())
        self.eval()
        self.requires_grad_(False)

    def _apply(self, fn, *args, **kwargs):
        # Keep convolution weights channels-last when the module is moved to another device.
        result = super()._apply(fn, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, FoldedConv):
                module.weight = module.weight.contiguous(memory_format=torch.channels_last)
        return result

    def pool_features(self, x):
        """[N, 3, 299, 299] float32 on the 0..255 scale (already resized) -> [N, 2048] float32 features."""
        x = self.conv1a(x.contiguous(memory_format=torch.channels_last)).to(self.compute_dtype)
        x = F.max_pool2d(self.conv2b(self.conv2a(x)), kernel_size=3, stride=2)
        x = F.max_pool2d(self.conv4a(self.conv3b(x)), kernel_size=3, stride=2)
        return self.blocks(x).float().mean(dim=(2, 3))

    def forward(self, images, return_features=False, no_output_bias=False, resize_images=True, return_logits=False):
        """uint8/float [N, C, H, W] (0..255) -> [N, 2048] features or [N, 1008] probabilities/logits."""
        x = _check_images(images)
        if not resize_images:
            _check_unresized(x)
        with torch.inference_mode():
            features = []
            for chunk in x.split(self.chunk_size):
                if resize_images:
                    chunk = resize_tf1_bilinear_fast(chunk, INPUT_SIZE)
                features.append(self.pool_features(chunk))
            features = torch.cat(features) if features else x.new_zeros([0, NUM_FEATURES])
            out = _head(features, self.fc_weight, self.fc_bias, return_features, no_output_bias, return_logits)
        return out.clone()  # a normal tensor, usable outside inference mode
