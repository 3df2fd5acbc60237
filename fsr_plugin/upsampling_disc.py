"""A pretrained non-'skip' discriminator that judges lower-resolution stage images by upsampling them.

Fine-tuning a pickle with a layer-wise FSR schedule that starts below the data resolution R trains the generator at
r < R first (the host's progressive growing: G stops at max_res=r, the reals are downscaled to r). The host's
Discriminator takes r x r images only with architecture='skip'; NVIDIA's StyleGAN2-ADA discriminators are 'resnet'
(or 'orig'), and a skip D has other tensors, so the pretrained D could not be loaded. This subclass keeps the
pretrained D exactly (same tensor names: the host copies it tensor by tensor) and upsamples an r x r input to R x R
with the generator's own skip upsampling (upfirdn2d.upsample2d, filter [1, 3, 3, 1], once per octave) before the
unchanged forward pass. At R x R it is the host's Discriminator, bit for bit.
"""

import torch

from torch_utils import persistence
from torch_utils.ops import upfirdn2d
from training import networks

UPSAMPLE_FILTER = [1, 3, 3, 1]


def upsample_to(img, resolution):
    """img [N, C, r, r] (r a power of two <= resolution) -> [N, C, resolution, resolution] by repeated 2x upsampling
    with the [1, 3, 3, 1] filter. Returns img itself when r == resolution."""
    r = int(img.shape[-1])
    if img.ndim != 4 or img.shape[-2] != r:
        raise ValueError(f'upsample_to: expected square images [N, C, r, r], got {list(img.shape)}')
    if r > resolution or r < 1 or resolution % r != 0 or (resolution // r) & (resolution // r - 1) != 0:
        raise ValueError(f'upsample_to: cannot reach {resolution} from {r} by doubling')
    if r == resolution:
        return img
    f = upfirdn2d.setup_filter(UPSAMPLE_FILTER, device=img.device)
    while img.shape[-1] < resolution:
        img = upfirdn2d.upsample2d(img, f)
    return img


@persistence.persistent_class
class UpsamplingDiscriminator(networks.Discriminator):
    """training.networks.Discriminator (same arguments, same tensors) that accepts images below img_resolution for
    any architecture: img [N, C, r, r] with r a power of two <= img_resolution -> scores [N, 1]. A 'skip' D is left
    to the host's own lower-resolution path."""

    def forward(self, img, c, update_emas=False, **block_kwargs):
        if img.ndim == 4 and img.shape[-1] < self.img_resolution and self.b4.architecture != 'skip':
            img = upsample_to(img.to(torch.float32), self.img_resolution)
        return super().forward(img, c, update_emas=update_emas, **block_kwargs)
