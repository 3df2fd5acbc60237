// Interface between the host side (bias_act.cpp) and the CUDA kernels (bias_act.cu) of the bias_act op.
//
// One elementwise kernel serves three modes. With u = x + b (b broadcast along one dimension),
// a = act(u) and y = clamp(gain * a, -clamp, +clamp):
//   mode 0 (value):       out = y
//   mode 1 (gradient):    out = x * dy/du                      (x holds the incoming gradient)
//   mode 2 (2nd order):   out = x * dy_in * d(dy/du)/d(ref)    (ref = u for 'x'-ref activations, else y)
// where dy/du is evaluated from the saved reference tensor (xref + b, or yref) and is zero wherever the
// output is clamped. Every tensor passed in must share x's sizes and strides (non-overlapping, dense),
// so elements are visited in storage order and the bias index is (i / bias_stride) % bias_len.

#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

// Activation codes; they must match `cuda_idx` in bias_act.py.
enum BiasActActivation : int {
    kBiasActLinear = 1,
    kBiasActRelu = 2,
    kBiasActLrelu = 3,
    kBiasActTanh = 4,
    kBiasActSigmoid = 5,
    kBiasActElu = 6,
    kBiasActSelu = 7,
    kBiasActSoftplus = 8,
    kBiasActSwish = 9,  // the only activation whose derivative is evaluated from xref (u) instead of yref
};

// Element types the kernels are compiled for (half and float compute in float, double in double).
enum BiasActDtype : int {
    kBiasActHalf = 0,
    kBiasActFloat = 1,
    kBiasActDouble = 2,
};

struct BiasActArgs {
    const void* x;        // mode 0: the input; modes 1, 2: the incoming gradient
    const void* b;        // bias (length bias_len) or nullptr
    const void* xref;     // saved input x (swish), or nullptr
    const void* yref;     // saved output y (all other activations), or nullptr
    const void* dy;       // mode 2: the gradient that was fed into mode 1; else nullptr
    void* out;
    int64_t numel;        // number of elements of x (and out)
    int64_t bias_len;     // size of x along the bias dimension
    int64_t bias_stride;  // stride of x along the bias dimension, in elements
    int mode;             // 0, 1 or 2 (see above)
    int act;              // BiasActActivation
    double alpha;         // negative slope of lrelu (unused by the other activations)
    double gain;
    double clamp;         // < 0 disables clamping
};

// Enqueues the kernel for `dtype` on `stream`; returns the launch status.
cudaError_t launch_bias_act(const BiasActArgs& args, int dtype, cudaStream_t stream);
