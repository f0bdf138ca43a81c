/*
 * CoordinateTransfer forward kernel (fgdeploy, docs: docs/method.md section 4a, README.md here).
 *
 * The launcher knows nothing about TensorRT: the plugin (coordTransferPlugin.cpp) and the
 * C-ABI shim for ctypes (coordTransferCapi.cpp) both call it with device pointers.
 */
#ifndef FGDEPLOY_COORD_TRANSFER_KERNEL_H
#define FGDEPLOY_COORD_TRANSFER_KERNEL_H

#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace fgdeploy
{

//! Pooling modes (the `mode` attribute); mirrors fgdeploy/tensors.py MODE_MAX / MODE_AVERAGE.
constexpr int32_t kMODE_MAX = 0;
constexpr int32_t kMODE_AVERAGE = 1;

//! Largest window side accepted (a window larger than the grid is clipped anyway).
constexpr int32_t kMAX_WINDOW = 255;

//!
//! \brief Enqueue the CoordinateTransfer forward pass on `stream`.
//!
//! For each (n, p): (i*, j*) = first row-major argmax of heatmaps[n, p] (NaN counts as the maximum,
//! as in torch.argmax); centre cy = ((2 i* + 1) featH) div (2 heatH), cx likewise, clamped to the
//! grid; output[n, p, c] = max (mode 0) or mean over the valid cells (mode 1, fp32 accumulation) of
//! features[n, c] in the window rows cy - window/2 .. cy + window/2, columns likewise, clipped.
//!
//! \param heatmaps (batch, parts, heatH, heatW), contiguous, same type T as features.
//! \param features (batch, channels, featH, featW), contiguous.
//! \param output   (batch, parts, channels), contiguous; written completely.
//! \param window   odd, 1 <= window <= kMAX_WINDOW.
//! \param mode     kMODE_MAX or kMODE_AVERAGE.
//!
//! \return cudaSuccess; cudaErrorInvalidValue for a bad argument (checked before any CUDA call);
//!         otherwise the launch error from cudaGetLastError(). batch == 0 launches nothing.
//!
template <typename T>
cudaError_t coordTransferForward(cudaStream_t stream, T const* heatmaps, T const* features, T* output,
    int64_t batch, int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW,
    int32_t window, int32_t mode);

//! The same computation on the CPU (host pointers), through the same per-element device/host
//! functions as the kernel; only the parallel argmax reduction differs. For tests without a GPU.
template <typename T>
cudaError_t coordTransferForwardHost(T const* heatmaps, T const* features, T* output, int64_t batch, int64_t parts,
    int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW, int32_t window, int32_t mode);

//! Argument check shared by the launcher and its callers; returns nullptr when valid, else why not.
char const* coordTransferCheckArgs(void const* heatmaps, void const* features, void const* output, int64_t batch,
    int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW, int32_t window,
    int32_t mode);

extern template cudaError_t coordTransferForward<float>(cudaStream_t, float const*, float const*, float*, int64_t,
    int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);
extern template cudaError_t coordTransferForward<__half>(cudaStream_t, __half const*, __half const*, __half*,
    int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);
extern template cudaError_t coordTransferForwardHost<float>(float const*, float const*, float*, int64_t, int64_t,
    int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);
extern template cudaError_t coordTransferForwardHost<__half>(__half const*, __half const*, __half*, int64_t,
    int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);

} // namespace fgdeploy

#endif // FGDEPLOY_COORD_TRANSFER_KERNEL_H
