// CUDA kernels of the bias_act op: fused bias + activation + gain + clamp, and its 1st/2nd derivatives.
// The modes and tensor conventions are described in bias_act.h.

#include <cuda_fp16.h>
#include "bias_act.h"

namespace {

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;

// The per-element math is __host__ __device__ so that tests can run it on the CPU through a small host
// program that includes this file (no GPU needed); the kernel below only loads, calls and stores.
#define BIAS_ACT_HD __host__ __device__ __forceinline__

//----------------------------------------------------------------------------
// Math helpers overloaded on the compute type (float or double).

BIAS_ACT_HD float dev_exp(float v) { return expf(v); }
BIAS_ACT_HD double dev_exp(double v) { return exp(v); }
BIAS_ACT_HD float dev_expm1(float v) { return expm1f(v); }
BIAS_ACT_HD double dev_expm1(double v) { return expm1(v); }
BIAS_ACT_HD float dev_log1p(float v) { return log1pf(v); }
BIAS_ACT_HD double dev_log1p(double v) { return log1p(v); }
BIAS_ACT_HD float dev_tanh(float v) { return tanhf(v); }
BIAS_ACT_HD double dev_tanh(double v) { return tanh(v); }
BIAS_ACT_HD float dev_abs(float v) { return fabsf(v); }
BIAS_ACT_HD double dev_abs(double v) { return fabs(v); }

//----------------------------------------------------------------------------
// Element access: storage type T, compute type Compute.

template <typename T> struct Element;

template <> struct Element<__half> {
    using Compute = float;
    static __device__ __forceinline__ float load(const void* p, int64_t i)
    {
        return __half2float(static_cast<const __half*>(p)[i]);
    }
    static __device__ __forceinline__ void store(void* p, int64_t i, float v)
    {
        static_cast<__half*>(p)[i] = __float2half_rn(v);
    }
};

template <> struct Element<float> {
    using Compute = float;
    static __device__ __forceinline__ float load(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
    static __device__ __forceinline__ void store(void* p, int64_t i, float v) { static_cast<float*>(p)[i] = v; }
};

template <> struct Element<double> {
    using Compute = double;
    static __device__ __forceinline__ double load(const void* p, int64_t i) { return static_cast<const double*>(p)[i]; }
    static __device__ __forceinline__ void store(void* p, int64_t i, double v) { static_cast<double*>(p)[i] = v; }
};

//----------------------------------------------------------------------------
// Activations.

template <typename C>
BIAS_ACT_HD C sigmoid(C u)
{
    return C(1) / (C(1) + dev_exp(-u));
}

// a = act(u).
template <typename C>
BIAS_ACT_HD C activation(int act, C u, C alpha)
{
    switch (act) {
        case kBiasActRelu:     return u < C(0) ? C(0) : u;
        case kBiasActLrelu:    return u < C(0) ? u * alpha : u;
        case kBiasActTanh:     return dev_tanh(u);
        case kBiasActSigmoid:  return sigmoid(u);
        case kBiasActElu:      return u > C(0) ? u : dev_expm1(u);
        case kBiasActSelu:     return u > C(0) ? C(kSeluScale) * u : C(kSeluScale * kSeluAlpha) * dev_expm1(u);
        case kBiasActSoftplus: return (u > C(0) ? u : C(0)) + dev_log1p(dev_exp(-dev_abs(u)));
        case kBiasActSwish:    return u * sigmoid(u);
        default:               return u;  // linear
    }
}

// For activations whose derivative is a function of their value a: d1 = da/du as a function of a,
// d2 = d(d1)/da.
template <typename C>
BIAS_ACT_HD void derivatives_from_value(int act, C a, C alpha, C& d1, C& d2)
{
    switch (act) {
        case kBiasActRelu:     d1 = a > C(0) ? C(1) : C(0); d2 = C(0); break;
        case kBiasActLrelu:    d1 = a > C(0) ? C(1) : alpha; d2 = C(0); break;
        case kBiasActTanh:     d1 = C(1) - a * a; d2 = C(-2) * a; break;
        case kBiasActSigmoid:  d1 = a * (C(1) - a); d2 = C(1) - C(2) * a; break;
        case kBiasActElu:      d1 = a > C(0) ? C(1) : a + C(1); d2 = a > C(0) ? C(0) : C(1); break;
        case kBiasActSelu:     d1 = a > C(0) ? C(kSeluScale) : a + C(kSeluScale * kSeluAlpha);
                               d2 = a > C(0) ? C(0) : C(1); break;
        case kBiasActSoftplus: d1 = -dev_expm1(-a); d2 = dev_exp(-a); break;
        default:               d1 = C(1); d2 = C(0); break;  // linear
    }
}

// Swish: d1 = da/du, d2 = d(d1)/du, as functions of u.
template <typename C>
BIAS_ACT_HD void swish_derivatives(C u, C& d1, C& d2)
{
    const C s = sigmoid(u);
    d1 = s * (C(1) + u * (C(1) - s));
    d2 = s * (C(1) - s) * (C(2) + u * (C(1) - C(2) * s));
}

//----------------------------------------------------------------------------

// One output element (see bias_act.h): v is x[i], bias the bias for i (0 without bias), xref/yref/dy the
// reference values for i (ignored where the mode or activation does not use them; has_yref tells whether
// yref exists), clamp < 0 disables clamping.
template <typename C>
BIAS_ACT_HD C bias_act_element(int mode, int act, C v, C bias, C xref, C yref, bool has_yref, C dy,
                               C alpha, C gain, C clamp)
{
    const bool clamping = clamp >= C(0);
    if (mode == 0) {
        const C y = gain * activation(act, v + bias, alpha);
        if (!clamping)
            return y;
        return y > clamp ? clamp : (y < -clamp ? -clamp : y);
    }

    // Derivative of y with respect to u (d1) and of d1 with respect to the reference (d2).
    C d1 = gain, d2 = C(0);
    bool inside = true;
    if (act == kBiasActSwish) {
        const C u = xref + bias;
        swish_derivatives(u, d1, d2);
        d1 *= gain;
        d2 *= gain;
        if (clamping)
            inside = dev_abs(gain * activation(act, u, alpha)) < clamp;
    } else if (has_yref) {
        const C a = gain != C(0) ? yref / gain : C(0);
        derivatives_from_value(act, a, alpha, d1, d2);
        d1 *= gain;  // d2 needs no gain: d(gain * d1(y / gain)) / dy = d1'(a)
        if (clamping)
            inside = dev_abs(yref) < clamp;
    }
    if (!inside)
        return C(0);
    return mode == 1 ? v * d1 : v * dy * d2;
}

template <typename T, typename Index>
__global__ void bias_act_kernel(BiasActArgs p)
{
    using E = Element<T>;
    using C = typename E::Compute;
    const C alpha = static_cast<C>(p.alpha);
    const C gain = static_cast<C>(p.gain);
    const C clamp = static_cast<C>(p.clamp);
    const Index numel = static_cast<Index>(p.numel);
    const Index bias_len = static_cast<Index>(p.bias_len);
    const Index bias_stride = static_cast<Index>(p.bias_stride);
    const Index step = static_cast<Index>(blockDim.x) * static_cast<Index>(gridDim.x);
    const bool use_xref = p.mode != 0 && p.xref != nullptr;
    const bool use_yref = p.mode != 0 && p.yref != nullptr;
    const bool use_dy = p.mode == 2 && p.dy != nullptr;

    for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
        const C v = E::load(p.x, i);
        const C bias = p.b ? E::load(p.b, (i / bias_stride) % bias_len) : C(0);
        const C xref = use_xref ? E::load(p.xref, i) : C(0);
        const C yref = use_yref ? E::load(p.yref, i) : C(0);
        const C dy = use_dy ? E::load(p.dy, i) : C(0);
        E::store(p.out, i, bias_act_element(p.mode, p.act, v, bias, xref, yref, use_yref, dy, alpha, gain, clamp));
    }
}

template <typename T>
cudaError_t launch_typed(const BiasActArgs& args, cudaStream_t stream)
{
    constexpr int kThreads = 256;
    const int64_t blocks_needed = (args.numel + kThreads - 1) / kThreads;
    const unsigned int blocks = static_cast<unsigned int>(blocks_needed < 65536 ? blocks_needed : 65536);
    if (args.numel <= 0x7fffffff - 65536LL * kThreads)  // 32-bit indices cannot overflow in the stride loop
        bias_act_kernel<T, unsigned int><<<blocks, kThreads, 0, stream>>>(args);
    else
        bias_act_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(args);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bias_act(const BiasActArgs& args, int dtype, cudaStream_t stream)
{
    if (args.numel <= 0)
        return cudaSuccess;
    switch (dtype) {
        case kBiasActHalf:   return launch_typed<__half>(args, stream);
        case kBiasActFloat:  return launch_typed<float>(args, stream);
        case kBiasActDouble: return launch_typed<double>(args, stream);
        default:             return cudaErrorInvalidValue;
    }
}
