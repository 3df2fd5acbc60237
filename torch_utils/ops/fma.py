"""Fused multiply-add with broadcasting: fma(a, b, c) = a * b + c, computed by one torch.addcmul."""

import torch


def fma(a, b, c):
    """a * b + c with broadcasting; the result has the broadcast shape of all three.

    a, b, c: tensors (Python numbers are accepted and become 0-d tensors of a tensor argument's dtype and
    device). Gradients are summed back to each argument's own shape; they are differentiable again.
    """
    like = next((t for t in (a, b, c) if isinstance(t, torch.Tensor)), None)
    if like is None:
        raise TypeError('fma: at least one of a, b, c must be a tensor')
    a, b, c = (t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=like.dtype, device=like.device)
               for t in (a, b, c))
    return _FusedMultiplyAdd.apply(a, b, c)


def _sum_to_shape(grad, shape):
    """Reduce a broadcast gradient to `shape` (sum over the leading extra dims and over size-1 dims)."""
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(dim=list(range(extra)))
    dims = [i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1]
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.reshape(shape)


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):  # pylint: disable=arguments-differ
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx, dout):  # pylint: disable=arguments-differ
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _sum_to_shape(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _sum_to_shape(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _sum_to_shape(dout, ctx.c_shape)
        return da, db, dc
