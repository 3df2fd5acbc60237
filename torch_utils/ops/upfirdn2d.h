// Interface between the host side (upfirdn2d.cpp) and the CUDA kernel (upfirdn2d.cu) of the upfirdn2d op,
// plus the per-sample arithmetic shared by both. Plain C++ (no torch or CUDA headers), so the arithmetic can
// also be compiled for the host and checked there.
//
// One output sample of one image plane, per axis (x shown; y is the same with its own parameters):
//   out[o] = gain * sum_k corr[k] * padded[o * down + k],   k = 0 .. taps - 1
//   padded[m] = upsampled[m - pad0],   upsampled[j] = in[j / up] if j % up == 0 and 0 <= j / up < in_size, else 0
//   corr[k] = f[k] when flip is set (correlation), else f[taps - 1 - k] (true convolution).
// Only taps k with (o * down + k - pad0) % up == 0 can meet a nonzero sample, so the loops step by `up`.

#pragma once

#if defined(__CUDACC__)
#define UPFIRDN2D_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UPFIRDN2D_HOST_DEVICE inline
#endif

struct Upfirdn2dParams {
    int up_x, up_y;        // upsampling factors (>= 1)
    int down_x, down_y;    // downsampling factors (>= 1)
    int pad_x0, pad_y0;    // leading padding in upsampled samples; negative crops
    int in_w, in_h;        // input plane size
    int out_w, out_h;      // output plane size
    int taps_x, taps_y;    // filter size; f is row-major [taps_y, taps_x]
    int flip;              // nonzero: correlate with f as stored; zero: true convolution
    double gain;           // multiplies every output sample
};

// Smallest tap index k >= 0 with (o * down + k - pad0) divisible by up.
UPFIRDN2D_HOST_DEVICE int upfirdn2d_first_tap(int o, int up, int down, int pad0)
{
    const int r = (pad0 - o * down) % up;  // C++ remainder takes the sign of the dividend
    return r < 0 ? r + up : r;
}

// One output sample at (ox, oy) of the plane starting at `plane` (element strides stride_y, stride_x).
template <typename acc_t, typename in_t>
UPFIRDN2D_HOST_DEVICE acc_t upfirdn2d_output_sample(const in_t* plane, long long stride_y, long long stride_x,
                                                    const float* f, const Upfirdn2dParams& p, int ox, int oy)
{
    acc_t acc = 0;
    const int kx_first = upfirdn2d_first_tap(ox, p.up_x, p.down_x, p.pad_x0);
    const int ky_first = upfirdn2d_first_tap(oy, p.up_y, p.down_y, p.pad_y0);
    for (int ky = ky_first; ky < p.taps_y; ky += p.up_y) {
        const int my = oy * p.down_y + ky - p.pad_y0;  // position in the upsampled image, a multiple of up_y
        if (my < 0)
            continue;
        const int iy = my / p.up_y;
        if (iy >= p.in_h)
            break;  // larger ky only move further out
        const int fy = p.flip ? ky : p.taps_y - 1 - ky;
        const in_t* row = plane + iy * stride_y;
        const float* frow = f + fy * p.taps_x;
        for (int kx = kx_first; kx < p.taps_x; kx += p.up_x) {
            const int mx = ox * p.down_x + kx - p.pad_x0;
            if (mx < 0)
                continue;
            const int ix = mx / p.up_x;
            if (ix >= p.in_w)
                break;
            const int fx = p.flip ? kx : p.taps_x - 1 - kx;
            acc += static_cast<acc_t>(row[ix * stride_x]) * static_cast<acc_t>(frow[fx]);
        }
    }
    return acc * static_cast<acc_t>(p.gain);
}
