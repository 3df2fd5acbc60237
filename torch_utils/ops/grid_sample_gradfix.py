"""grid_sample with first and second derivatives w.r.t. the input (R1 differentiates through augmentations).

On the CPU, torch's own grid_sample has a double backward. On CUDA it does not: R1 through ADA's geometric
augmentations fails there with "derivative for aten::grid_sampler_2d_backward is not implemented". With `enabled`
set (the training loop sets it), CUDA inputs therefore go through `grid_sample_double_backward`, an autograd Function
pair that differentiates the input gradient again. CPU inputs always take torch's op, so CPU training is unchanged.
"""

import torch
import torch.nn.functional as F

enabled = False  # set by the training loop: CUDA inputs take the twice-differentiable path

_BILINEAR, _ZEROS = 0, 0  # aten's interpolation_mode / padding_mode codes


def grid_sample(input, grid):  # pylint: disable=redefined-builtin
    """Bilinear sampling of input [N, C, H, W] at grid [N, Ho, Wo, 2] (x, y in [-1, 1]), zero padding,
    align_corners=False. Returns [N, C, Ho, Wo]."""
    if enabled and input.is_cuda:
        return grid_sample_double_backward(input, grid)
    return F.grid_sample(input=input, grid=grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def grid_sample_double_backward(input, grid):  # pylint: disable=redefined-builtin
    """The same sampling as grid_sample, differentiable twice w.r.t. input on any device.

    The input gradient grad_input = S^T grad_output is linear in grad_output for a fixed grid (S is the sampling
    matrix), so its derivative w.r.t. grad_output is S itself: a grid_sample. Second derivatives through the grid
    are not provided (augmentation grids carry no gradient); the first derivative w.r.t. the grid is.
    """
    return _GridSampleForward.apply(input, grid)


class _GridSampleForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, grid):  # pylint: disable=redefined-builtin,arguments-differ
        if input.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != input.shape[0]:
            raise ValueError(f'grid_sample: input must be [N, C, H, W] and grid [N, Ho, Wo, 2], got '
                             f'{list(input.shape)} and {list(grid.shape)}')
        ctx.save_for_backward(input, grid)
        return F.grid_sample(input=input, grid=grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    @staticmethod
    def backward(ctx, grad_output):  # pylint: disable=arguments-differ
        input, grid = ctx.saved_tensors  # pylint: disable=redefined-builtin
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_input, grad_grid = _GridSampleBackward.apply(grad_output, input, grid, mask)
        return (grad_input if mask[0] else None), (grad_grid if mask[1] else None)


class _GridSampleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_output, input, grid, mask):  # pylint: disable=redefined-builtin,arguments-differ
        ctx.save_for_backward(grid)
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, input, grid, _BILINEAR, _ZEROS, False, list(mask))
        if not mask[0]:
            grad_input = torch.zeros_like(input)
        if not mask[1]:
            grad_grid = torch.zeros_like(grid)
        return grad_input, grad_grid

    @staticmethod
    def backward(ctx, grad2_grad_input, grad2_grad_grid):  # pylint: disable=arguments-differ
        del grad2_grad_grid  # second derivatives through the grid are not provided (see above)
        (grid,) = ctx.saved_tensors
        grad2_grad_output = None
        if ctx.needs_input_grad[0]:
            grad2_grad_output = _GridSampleForward.apply(grad2_grad_input, grid)
        return grad2_grad_output, None, None, None
