"""Drop-in conv2d / conv_transpose2d that can skip weight gradients (used by the R1 and path-length terms).

* Default (or `enabled` False, or outside `no_weight_gradients()`): straight to torch.nn.functional.
* `enabled` True and `weight_gradients_disabled` True when the op runs: an autograd Function whose backward
  computes the input (and bias) gradient only, with torch.ops.aten.convolution_backward. That backward is
  itself differentiable, so second derivatives w.r.t. the input (and through it, w.r.t. the weight) work.

Note: inside torch.autograd.grad(outputs, inputs=[x]) native convolutions already skip the weight gradient
that is not asked for, so wrapping only the autograd.grad call (as the losses do) costs nothing either way.
"""

import contextlib

import torch
import torch.nn.functional as F

enabled = False                   # route through the weight-gradient-skipping Function when requested
weight_gradients_disabled = False  # set by no_weight_gradients()


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Context manager: convolutions run inside it (with `enabled` set) give their weights no gradient."""
    global weight_gradients_disabled  # pylint: disable=global-statement
    previous = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = previous


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # pylint: disable=redefined-builtin
    """Same as torch.nn.functional.conv2d (input [N, Cin, H, W], weight [Cout, Cin/groups, kh, kw])."""
    if enabled and weight_gradients_disabled and _worth_routing(input, weight, padding):
        return _conv_without_weight_grad(input, weight, bias, stride, padding, dilation, groups,
                                         transposed=False, output_padding=0)
    return F.conv2d(input=input, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation,
                    groups=groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,  # pylint: disable=redefined-builtin
                     dilation=1):
    """Same as torch.nn.functional.conv_transpose2d (weight [Cin, Cout/groups, kh, kw])."""
    if enabled and weight_gradients_disabled and _worth_routing(input, weight, padding):
        return _conv_without_weight_grad(input, weight, bias, stride, padding, dilation, groups,
                                         transposed=True, output_padding=output_padding)
    return F.conv_transpose2d(input=input, weight=weight, bias=bias, stride=stride, padding=padding,
                              output_padding=output_padding, groups=groups, dilation=dilation)

#----------------------------------------------------------------------------

def _worth_routing(input, weight, padding):  # pylint: disable=redefined-builtin
    return (torch.is_grad_enabled() and weight.requires_grad and input.ndim == 4 and weight.ndim == 4
            and not isinstance(padding, str))


def _pair(value, name):
    if isinstance(value, int):
        return [value, value]
    value = [int(v) for v in value]
    if len(value) == 1:
        return value * 2
    if len(value) != 2:
        raise ValueError(f'conv2d_gradfix: {name} must be an int or a pair of ints, got {value}')
    return value


def _conv_without_weight_grad(input, weight, bias, stride, padding, dilation, groups,  # pylint: disable=redefined-builtin
                              transposed, output_padding):
    params = (_pair(stride, 'stride'), _pair(padding, 'padding'), _pair(dilation, 'dilation'), bool(transposed),
              _pair(output_padding, 'output_padding'), int(groups))
    return _ConvInputGradOnly.apply(input, weight, bias, params)


class _ConvInputGradOnly(torch.autograd.Function):
    """Convolution whose backward yields gradients for the input and bias, never for the weight.

    The weight stays an input of the graph, so the input gradient computed here (convolution_backward,
    which has its own derivative) remains differentiable w.r.t. the weight: an R1-style penalty on that
    gradient still trains the weight.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, params):  # pylint: disable=arguments-differ,redefined-builtin
        stride, padding, dilation, transposed, output_padding, groups = params
        if transposed:
            out = F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
        else:
            out = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(input, weight)
        ctx.params = params
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # pylint: disable=arguments-differ
        input, weight = ctx.saved_tensors  # pylint: disable=redefined-builtin
        stride, padding, dilation, transposed, output_padding, groups = ctx.params
        need_input, _, need_bias = ctx.needs_input_grad[:3]
        if not (need_input or need_bias):
            return None, None, None, None
        grad_input, _, grad_bias = torch.ops.aten.convolution_backward(
            grad_out, input, weight, ctx.bias_sizes, stride, padding, dilation, transposed, output_padding,
            groups, [need_input, False, need_bias and ctx.bias_sizes is not None])
        return (grad_input if need_input else None), None, (grad_bias if need_bias else None), None
