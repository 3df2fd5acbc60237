"""VGG16 feature detector with LPIPS heads (precision/recall features and the PPL distance).

``VGG16LPIPS`` stores its tensors in two public key layouts, so it loads from one merged state dict:

* torchvision's ``vgg16``: ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}`` (the 13
  convolutions) and ``classifier.{0,3,6}.{weight,bias}`` (fc6 25088->4096, fc7 4096->4096, fc8 4096->1000);
* the LPIPS "v0.1" linear heads of the ``lpips`` package's ``vgg.pth``: ``lin{0..4}.model.1.weight``
  ([1, C, 1, 1], C = 64, 128, 256, 512, 512; non-negative).

The classifier and the heads are optional (a module without them refuses the call that needs them).

Call convention (the one the metrics use for NVIDIA's ``vgg16`` detector)::

    detector(images, return_features=False, return_lpips=False, resize_images=True)

``images``: [N, C, H, W] RGB (C = 3 or 1), uint8 or float, values on the 0..255 scale. They are mapped to
[-1, 1] and normalised with the LPIPS scaling layer (shift [-.030, -.088, -.188], scale [.458, .448,
.450], which equals torchvision's ImageNet mean/std normalisation of [0, 1] input). ``resize_images=True``
resizes to 224 x 224 (bilinear, ``align_corners=False``, antialiased when shrinking); with
``resize_images=False`` the image is used at its own size (LPIPS for PPL).

* ``return_features=True`` -> [N, 4096] float32: fc7 activations after ReLU (torchvision
  ``classifier.4``), the layer the improved precision/recall paper uses. NOT verified to equal the
  features of NVIDIA's ``vgg16.pt`` (that file could not be obtained here).
* ``return_lpips=True`` -> [N, D] float32, D = sum over the five taps (relu1_2, relu2_2, relu3_3,
  relu4_3, relu5_3) of C*H*W: each tap unit-normalised over channels (eps 1e-10), multiplied by
  sqrt(head weight) and divided by sqrt(H*W). Hence ``(a - b).square().sum(1)`` is exactly the LPIPS
  distance between the two images (sum over taps of the spatial mean of the weighted squared
  differences of normalised features).
"""

import torch
import torch.nn.functional as F

VGG16_CONFIG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']
LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
RESIZE_TO = 224
NUM_FEATURES = 4096
NORM_EPS = 1e-10


class LPIPSHead(torch.nn.Module):
    """One LPIPS linear head (dropout + 1x1 convolution to one channel, no bias). Keys: model.1.weight."""

    def __init__(self, channels):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Conv2d(channels, 1, 1, bias=False))


def _vgg16_features():
    layers, in_channels = [], 3
    for item in VGG16_CONFIG:
        if item == 'M':
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(in_channels, item, 3, padding=1), torch.nn.ReLU(inplace=True)]
            in_channels = item
    return torch.nn.Sequential(*layers)


class VGG16LPIPS(torch.nn.Module):
    """VGG16 convolutions (+ optional fc6/fc7/fc8 classifier, + optional LPIPS heads); see module doc.

    ``dtype``: torch.float32 or torch.bfloat16 (convolutions in bfloat16; classifier, LPIPS arithmetic
    and outputs in float32).
    """

    def __init__(self, with_classifier=True, with_lpips=True, dtype=torch.float32):
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f'dtype must be torch.float32 or torch.bfloat16, got {dtype}')
        self.compute_dtype = dtype
        self.features = _vgg16_features()
        self.classifier = None
        if with_classifier:
            self.classifier = torch.nn.Sequential(
                torch.nn.Linear(512 * 7 * 7, 4096), torch.nn.ReLU(inplace=True), torch.nn.Dropout(),
                torch.nn.Linear(4096, 4096), torch.nn.ReLU(inplace=True), torch.nn.Dropout(),
                torch.nn.Linear(4096, 1000))
        self.with_lpips = with_lpips
        if with_lpips:
            for i, channels in enumerate(LPIPS_CHANNELS):
                setattr(self, f'lin{i}', LPIPSHead(channels))
        self.register_buffer('shift', torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)
        self.to_compute_dtype(dtype)

    @classmethod
    def from_state_dict(cls, state_dict, dtype=torch.float32):
        """Build from a state dict with ``features.*`` and optionally ``classifier.*`` / ``lin*.model.1.weight``."""
        keys = set(state_dict.keys())
        with_classifier = any(k.startswith('classifier.') for k in keys)
        with_lpips = any(k.startswith('lin') for k in keys)
        with torch.device('meta'):  # no random initialisation of 138M parameters that get replaced anyway
            module = cls(with_classifier=with_classifier, with_lpips=with_lpips)
        module.load_state_dict({k: v.detach().float() for k, v in state_dict.items()}, strict=True, assign=True)
        module.shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
        module.scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
        module.requires_grad_(False)
        if with_lpips:
            for i in range(len(LPIPS_CHANNELS)):
                if (getattr(module, f'lin{i}').model[1].weight < 0).any():
                    raise ValueError(f'lin{i}.model.1.weight has negative entries; LPIPS heads must be non-negative')
        return module.to_compute_dtype(dtype)

    def to_compute_dtype(self, dtype):
        """Store the convolutions in ``dtype`` (float32 or bfloat16); everything else stays float32."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f'dtype must be torch.float32 or torch.bfloat16, got {dtype}')
        self.compute_dtype = dtype
        self.features.to(dtype)
        return self

    def _normalized_input(self, images, resize_images):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f'images must be a [N, 1 or 3, H, W] tensor, got {shape}')
        x = images.to(torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if resize_images and (x.shape[2] != RESIZE_TO or x.shape[3] != RESIZE_TO):
            x = F.interpolate(x, size=(RESIZE_TO, RESIZE_TO), mode='bilinear', align_corners=False,
                              antialias=min(x.shape[2], x.shape[3]) > RESIZE_TO)
        x = (x / 127.5 - 1 - self.shift) / self.scale
        return x.to(self.compute_dtype).contiguous(memory_format=torch.channels_last)

    def forward(self, images, return_features=False, return_lpips=False, resize_images=True):
        """uint8/float [N, C, H, W] (0..255) -> [N, 4096] fc7 features or [N, D] LPIPS stack (float32)."""
        if return_features == return_lpips:
            raise ValueError('set exactly one of return_features=True or return_lpips=True')
        if return_features and self.classifier is None:
            raise ValueError('this VGG16 has no classifier weights (classifier.*), so it cannot return fc7 features')
        if return_lpips and not self.with_lpips:
            raise ValueError('this VGG16 has no LPIPS heads (lin0..lin4), so it cannot return LPIPS features')
        with torch.inference_mode():
            x = self._normalized_input(images, resize_images)
            if return_features:
                x = self.features(x)
                x = F.adaptive_avg_pool2d(x.float(), (7, 7)).flatten(1)
                out = F.relu(self.classifier[3](F.relu(self.classifier[0](x))))
            else:
                parts = []
                for index, layer in enumerate(self.features):
                    x = layer(x)
                    if index in LPIPS_TAPS:
                        tap = LPIPS_TAPS.index(index)
                        f = x.float()
                        f = f / (f.square().sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
                        weight = getattr(self, f'lin{tap}').model[1].weight.float().view(1, -1, 1, 1)
                        f = f * (weight.sqrt() / (f.shape[2] * f.shape[3]) ** 0.5)
                        parts.append(f.flatten(1))
                        if tap == len(LPIPS_TAPS) - 1:
                            break
                out = torch.cat(parts, dim=1)
        return out.clone()  # a normal tensor, usable outside inference mode

