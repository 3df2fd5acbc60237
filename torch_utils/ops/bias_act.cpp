// Host side of the bias_act op: argument checks, output allocation and kernel launch (see bias_act.h).

// Narrow includes instead of <torch/extension.h>: this halves the compile time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include "bias_act.h"

namespace {

bool is_given(const at::Tensor& t)
{
    return t.defined() && t.numel() > 0;
}

void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name)
{
    TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " must be on the same device as x");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have the same dtype as x");
    TORCH_CHECK(t.sizes() == x.sizes() && t.strides() == x.strides(),
                "bias_act: ", name, " must have the same shape and strides as x");
}

int dtype_code(const at::Tensor& x)
{
    switch (x.scalar_type()) {
        case at::kHalf:   return kBiasActHalf;
        case at::kFloat:  return kBiasActFloat;
        case at::kDouble: return kBiasActDouble;
        default: TORCH_CHECK(false, "bias_act: x must be float16, float32 or float64, got ", x.scalar_type());
    }
    return -1;
}

// grad = 0: y = clamp(gain * act(x + b)); grad = 1: x * dy/du; grad = 2: x * dy * d(dy/du)/d(ref).
// Unused tensors are passed as empty tensors; clamp < 0 disables clamping.
at::Tensor bias_act(at::Tensor x, at::Tensor b, at::Tensor xref, at::Tensor yref, at::Tensor dy,
                       int64_t grad, int64_t dim, int64_t act, double alpha, double gain, double clamp)
{
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "bias_act: x must be non-overlapping and dense");
    const int dtype = dtype_code(x);
    TORCH_CHECK(grad >= 0 && grad <= 2, "bias_act: grad must be 0, 1 or 2, got ", grad);
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range: ", dim);
    TORCH_CHECK(act >= kBiasActLinear && act <= kBiasActSwish, "bias_act: unknown activation code ", act);

    if (is_given(b)) {
        TORCH_CHECK(b.device() == x.device(), "bias_act: b must be on the same device as x");
        TORCH_CHECK(b.scalar_type() == x.scalar_type(), "bias_act: b must have the same dtype as x");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must be 1-D with x.shape[dim] elements");
        TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
    }
    if (is_given(xref)) check_like_x(xref, x, "xref");
    if (is_given(yref)) check_like_x(yref, x, "yref");
    if (is_given(dy)) check_like_x(dy, x, "dy");
    if (grad >= 1 && x.numel() > 0) {
        const bool needs_xref = act == kBiasActSwish;
        const bool needs_yref = !needs_xref && (act != kBiasActLinear || clamp >= 0);
        TORCH_CHECK(!needs_xref || is_given(xref), "bias_act: this activation's gradient needs xref");
        TORCH_CHECK(!needs_yref || is_given(yref), "bias_act: this activation's gradient needs yref");
        TORCH_CHECK(grad != 2 || is_given(dy), "bias_act: grad=2 needs dy");
    }

    at::Tensor out = at::empty_like(x);
    TORCH_CHECK(out.strides() == x.strides(), "bias_act: could not allocate an output with x's strides");
    if (x.numel() == 0)
        return out;

    BiasActArgs args;
    args.x = x.data_ptr();
    args.b = is_given(b) ? b.data_ptr() : nullptr;
    args.xref = is_given(xref) ? xref.data_ptr() : nullptr;
    args.yref = is_given(yref) ? yref.data_ptr() : nullptr;
    args.dy = is_given(dy) ? dy.data_ptr() : nullptr;
    args.out = out.data_ptr();
    args.numel = x.numel();
    args.bias_len = x.size(dim);
    args.bias_stride = x.stride(dim) > 0 ? x.stride(dim) : 1;
    args.mode = static_cast<int>(grad);
    args.act = static_cast<int>(act);
    args.alpha = alpha;
    args.gain = gain;
    args.clamp = clamp;

    const c10::cuda::CUDAGuard device_guard(x.device());
    const cudaError_t err = launch_bias_act(args, dtype, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "bias_act: CUDA kernel launch failed: ", cudaGetErrorString(err));
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp and its derivatives (see bias_act.h)");
}
