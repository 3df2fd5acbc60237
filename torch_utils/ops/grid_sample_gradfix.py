"""grid_sample with first and second derivatives w.r.t. the input (R1 differentiates through augmentations).

Old torch releases lacked the double backward of grid_sample (the "derivative for
aten::grid_sampler_2d_backward is not implemented" error); the torch versions we support provide it
natively (checked by tests/test_gradfix_fma.py with gradgradcheck), so this is a plain pass-through and
`enabled` is kept only for API compatibility.
"""

import torch.nn.functional as F

enabled = False  # API compatibility: has no effect, the native op already supports double backward.


def grid_sample(input, grid):  # pylint: disable=redefined-builtin
    """Bilinear sampling of input [N, C, H, W] at grid [N, Ho, Wo, 2] (x, y in [-1, 1]), zero padding,
    align_corners=False. Returns [N, C, Ho, Wo]."""
    return F.grid_sample(input=input, grid=grid, mode='bilinear', padding_mode='zeros', align_corners=False)
