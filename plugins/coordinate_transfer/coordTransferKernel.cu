/*
 * CoordinateTransfer forward kernel: see coordTransferKernel.h for the contract.
 *
 * One block per (n, p) pair (grid-stride when there are more pairs than blocks):
 *   1. warp 0 finds the heatmap argmax (first maximum in row-major order, NaN = maximum) with a
 *      warp-shuffle reduction over (value, index) pairs, a total order, so the result is deterministic;
 *   2. every thread maps the cell to the feature grid in integer arithmetic and pools its channels
 *      over the clipped window; output writes are coalesced along C.
 * Values are read as float (exact for half); average mode sums in fp32 with Kahan compensation so
 * the result is within about one fp32 rounding of the exact mean.
 */
#include "coordTransferKernel.h"

#include <climits>
#include <cmath>
#include <cstdint>

namespace fgdeploy
{
namespace
{

constexpr int32_t kTHREADS = 128;         // threads per block (4 warps)
constexpr int64_t kMAX_BLOCKS = 1 << 20;  // grid-stride beyond this many (n, p) pairs
constexpr int64_t kMAX_DIM = INT32_MAX;   // every size must fit int32 (TensorRT dims do)

// --- per-element logic, shared by the CUDA kernel and the host (CPU) path used by tests -------------

__host__ __device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__host__ __device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

template <typename T>
__host__ __device__ __forceinline__ T fromFloat(float v);

template <>
__host__ __device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}

template <>
__host__ __device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

__host__ __device__ __forceinline__ bool isNan(float v)
{
    return v != v; // no fast-math anywhere in this build, so this is exact
}

__host__ __device__ __forceinline__ int64_t clampI64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

//! True when candidate (a, ia) ranks above (b, ib): NaN first, then larger value, then smaller index.
__host__ __device__ __forceinline__ bool ranksAbove(float a, int64_t ia, float b, int64_t ib)
{
    bool const aNan = isNan(a);
    bool const bNan = isNan(b);
    if (aNan || bNan)
    {
        return aNan && (!bNan || ia < ib);
    }
    return a > b || (a == b && ia < ib);
}

//! Inclusive window rows [y0, y1] and columns [x0, x1] around heatmap cell `cell` (row-major index).
struct Window
{
    int64_t y0, y1, x0, x1;
};

__host__ __device__ __forceinline__ Window windowAround(
    int64_t cell, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW, int32_t window)
{
    int64_t const i = cell / heatW;
    int64_t const j = cell - i * heatW;
    // Integer centre mapping of docs/method.md 4a: cy = ((2 i + 1) Hf) div (2 Hh), clamped.
    int64_t const cy = clampI64((2 * i + 1) * featH / (2 * heatH), 0, featH - 1);
    int64_t const cx = clampI64((2 * j + 1) * featW / (2 * heatW), 0, featW - 1);
    int64_t const half = window / 2;
    return Window{clampI64(cy - half, 0, featH - 1), clampI64(cy + half, 0, featH - 1),
        clampI64(cx - half, 0, featW - 1), clampI64(cx + half, 0, featW - 1)};
}

//! Max (NaN propagates, as torch.amax) or mean over the window's valid cells of one channel plane.
template <typename T>
__host__ __device__ __forceinline__ float poolPlane(T const* plane, int64_t featW, Window const& w, int32_t mode)
{
    if (mode == kMODE_MAX)
    {
        float result = toFloat(plane[w.y0 * featW + w.x0]);
        for (int64_t y = w.y0; y <= w.y1; ++y)
        {
            for (int64_t x = w.x0; x <= w.x1; ++x)
            {
                float const v = toFloat(plane[y * featW + x]);
                if (v > result || isNan(v))
                {
                    result = v;
                }
            }
        }
        return result;
    }
    float sum = 0.0F;
    float comp = 0.0F; // Kahan compensation: error ~ 2 ulp of sum |x| instead of (k*k - 1) ulp
    for (int64_t y = w.y0; y <= w.y1; ++y)
    {
        for (int64_t x = w.x0; x <= w.x1; ++x)
        {
            float const term = toFloat(plane[y * featW + x]) - comp;
            float const next = sum + term;
            comp = (next - sum) - term;
            sum = next;
        }
    }
    return sum / static_cast<float>((w.y1 - w.y0 + 1) * (w.x1 - w.x0 + 1));
}

// --- the CUDA kernel --------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kTHREADS) coordTransferKernel(T const* __restrict__ heatmaps,
    T const* __restrict__ features, T* __restrict__ output, int64_t pairs, int64_t parts, int64_t channels,
    int64_t heatH, int64_t heatW, int64_t featH, int64_t featW, int32_t window, int32_t mode)
{
    __shared__ int64_t sCell;
    int64_t const cells = heatH * heatW;
    int64_t const plane = featH * featW;

    for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x)
    {
        if (threadIdx.x < 32)
        {
            // Sentinel (-inf, INT64_MAX) loses to every real cell, -inf included, by the index rule.
            float best = -INFINITY;
            int64_t bestIdx = INT64_MAX;
            T const* heat = heatmaps + pair * cells;
            for (int64_t k = threadIdx.x; k < cells; k += 32)
            {
                float const v = toFloat(heat[k]);
                if (ranksAbove(v, k, best, bestIdx))
                {
                    best = v;
                    bestIdx = k;
                }
            }
            // Butterfly reduction over a total order: every lane ends with the same winner.
            for (int32_t offset = 16; offset > 0; offset /= 2)
            {
                float const other = __shfl_xor_sync(0xffffffffu, best, offset);
                int64_t const otherIdx = __shfl_xor_sync(0xffffffffu, bestIdx, offset);
                if (ranksAbove(other, otherIdx, best, bestIdx))
                {
                    best = other;
                    bestIdx = otherIdx;
                }
            }
            if (threadIdx.x == 0)
            {
                sCell = bestIdx;
            }
        }
        __syncthreads();

        Window const w = windowAround(sCell, heatH, heatW, featH, featW, window);
        int64_t const n = pair / parts;
        T* out = output + pair * channels;
        for (int64_t c = threadIdx.x; c < channels; c += blockDim.x)
        {
            out[c] = fromFloat<T>(poolPlane(features + (n * channels + c) * plane, featW, w, mode));
        }
        __syncthreads(); // sCell is rewritten by the next pair
    }
}

bool badDim(int64_t v, int64_t minimum)
{
    return v < minimum || v > kMAX_DIM;
}

} // namespace

char const* coordTransferCheckArgs(void const* heatmaps, void const* features, void const* output, int64_t batch,
    int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW, int32_t window,
    int32_t mode)
{
    if (window < 1 || window % 2 == 0 || window > kMAX_WINDOW)
    {
        return "window must be odd and in [1, 255]";
    }
    if (mode != kMODE_MAX && mode != kMODE_AVERAGE)
    {
        return "mode must be 0 (max) or 1 (average)";
    }
    if (badDim(batch, 0) || badDim(parts, 0) || badDim(channels, 0))
    {
        return "batch, parts and channels must be in [0, 2^31 - 1]";
    }
    if (badDim(heatH, 1) || badDim(heatW, 1) || badDim(featH, 1) || badDim(featW, 1))
    {
        return "heatmap and feature spatial sizes must be in [1, 2^31 - 1]";
    }
    bool const empty = batch == 0 || parts == 0 || channels == 0;
    if (!empty && (heatmaps == nullptr || features == nullptr || output == nullptr))
    {
        return "heatmaps, features and output must be non-null device pointers";
    }
    return nullptr;
}

template <typename T>
cudaError_t coordTransferForward(cudaStream_t stream, T const* heatmaps, T const* features, T* output,
    int64_t batch, int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW,
    int32_t window, int32_t mode)
{
    if (coordTransferCheckArgs(heatmaps, features, output, batch, parts, channels, heatH, heatW, featH, featW,
            window, mode)
        != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    int64_t const pairs = batch * parts;
    if (pairs == 0 || channels == 0)
    {
        return cudaSuccess;
    }
    auto const blocks = static_cast<uint32_t>(pairs < kMAX_BLOCKS ? pairs : kMAX_BLOCKS);
    coordTransferKernel<T><<<blocks, kTHREADS, 0, stream>>>(
        heatmaps, features, output, pairs, parts, channels, heatH, heatW, featH, featW, window, mode);
    return cudaGetLastError();
}

template <typename T>
cudaError_t coordTransferForwardHost(T const* heatmaps, T const* features, T* output, int64_t batch, int64_t parts,
    int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW, int32_t window, int32_t mode)
{
    if (coordTransferCheckArgs(heatmaps, features, output, batch, parts, channels, heatH, heatW, featH, featW,
            window, mode)
        != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    int64_t const cells = heatH * heatW;
    for (int64_t pair = 0; pair < batch * parts; ++pair)
    {
        float best = -INFINITY;
        int64_t bestIdx = INT64_MAX;
        for (int64_t k = 0; k < cells; ++k)
        {
            float const v = toFloat(heatmaps[pair * cells + k]);
            if (ranksAbove(v, k, best, bestIdx))
            {
                best = v;
                bestIdx = k;
            }
        }
        Window const w = windowAround(bestIdx, heatH, heatW, featH, featW, window);
        int64_t const n = pair / parts;
        for (int64_t c = 0; c < channels; ++c)
        {
            output[pair * channels + c]
                = fromFloat<T>(poolPlane(features + (n * channels + c) * featH * featW, featW, w, mode));
        }
    }
    return cudaSuccess;
}

template cudaError_t coordTransferForward<float>(cudaStream_t, float const*, float const*, float*, int64_t, int64_t,
    int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);
template cudaError_t coordTransferForward<__half>(cudaStream_t, __half const*, __half const*, __half*, int64_t,
    int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);

template cudaError_t coordTransferForwardHost<float>(float const*, float const*, float*, int64_t, int64_t, int64_t,
    int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);
template cudaError_t coordTransferForwardHost<__half>(__half const*, __half const*, __half*, int64_t, int64_t,
    int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);

} // namespace fgdeploy
