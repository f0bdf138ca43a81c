/*
 * C ABI around the CoordinateTransfer launcher, for ctypes (fgdeploy/native/kernels.py) and tests.
 * Needs CUDA only, no TensorRT. Build: see plugins/README.md (or fgdeploy.native.build.build_kernel_library).
 */
#include "coordTransferKernel.h"

#include <cstdint>

#define FGDEPLOY_CAPI extern "C" __attribute__((visibility("default")))

namespace
{
constexpr int32_t kABI_VERSION = 2; // bump when a signature below changes
constexpr int32_t kDTYPE_FLOAT32 = 0;
constexpr int32_t kDTYPE_FLOAT16 = 1;
} // namespace

//! Version of this C ABI; the Python loader refuses a library with another version.
FGDEPLOY_CAPI int32_t fgdeploy_ct_abi_version()
{
    return kABI_VERSION;
}

//! Why the arguments are invalid, or nullptr when they are valid (no CUDA call is made).
FGDEPLOY_CAPI char const* fgdeploy_ct_check_args(void const* heatmaps, void const* features, void const* output,
    int64_t batch, int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW,
    int32_t window, int32_t mode)
{
    return fgdeploy::coordTransferCheckArgs(
        heatmaps, features, output, batch, parts, channels, heatH, heatW, featH, featW, window, mode);
}

namespace
{
int32_t forwardOnCurrentDevice(int32_t dtype, void const* heatmaps, void const* features, void* output, int64_t batch,
    int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW, int32_t window,
    int32_t mode, cudaStream_t s)
{
    if (dtype == kDTYPE_FLOAT32)
    {
        return static_cast<int32_t>(fgdeploy::coordTransferForward<float>(s, static_cast<float const*>(heatmaps),
            static_cast<float const*>(features), static_cast<float*>(output), batch, parts, channels, heatH, heatW,
            featH, featW, window, mode));
    }
    if (dtype == kDTYPE_FLOAT16)
    {
        return static_cast<int32_t>(fgdeploy::coordTransferForward<__half>(s, static_cast<__half const*>(heatmaps),
            static_cast<__half const*>(features), static_cast<__half*>(output), batch, parts, channels, heatH, heatW,
            featH, featW, window, mode));
    }
    return static_cast<int32_t>(cudaErrorInvalidValue);
}
} // namespace

//! Enqueue the forward pass on `stream` (a cudaStream_t, 0 = legacy default stream) of CUDA device `device`
//! (-1: the calling thread's current device; otherwise it is made current for the launch and restored).
//! dtype: 0 = float32, 1 = float16. Returns a cudaError_t value (0 = success).
FGDEPLOY_CAPI int32_t fgdeploy_ct_forward(int32_t dtype, void const* heatmaps, void const* features, void* output,
    int64_t batch, int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH, int64_t featW,
    int32_t window, int32_t mode, void* stream, int32_t device)
{
    auto const s = static_cast<cudaStream_t>(stream);
    if (fgdeploy::coordTransferCheckArgs(
            heatmaps, features, output, batch, parts, channels, heatH, heatW, featH, featW, window, mode)
        != nullptr)
    {
        return static_cast<int32_t>(cudaErrorInvalidValue); // before any CUDA call, even without a GPU
    }
    int previous = -1;
    if (device >= 0)
    {
        cudaError_t const status = cudaGetDevice(&previous);
        if (status != cudaSuccess)
        {
            return static_cast<int32_t>(status);
        }
        if (previous != device && (cudaSetDevice(device) != cudaSuccess))
        {
            return static_cast<int32_t>(cudaGetLastError());
        }
    }
    int32_t const result = forwardOnCurrentDevice(
        dtype, heatmaps, features, output, batch, parts, channels, heatH, heatW, featH, featW, window, mode, s);
    if (device >= 0 && previous != device)
    {
        cudaSetDevice(previous);
    }
    return result;
}

//! The same computation on the CPU with host pointers (tests without a GPU); same return codes.
FGDEPLOY_CAPI int32_t fgdeploy_ct_forward_host(int32_t dtype, void const* heatmaps, void const* features,
    void* output, int64_t batch, int64_t parts, int64_t channels, int64_t heatH, int64_t heatW, int64_t featH,
    int64_t featW, int32_t window, int32_t mode)
{
    if (dtype == kDTYPE_FLOAT32)
    {
        return static_cast<int32_t>(fgdeploy::coordTransferForwardHost<float>(static_cast<float const*>(heatmaps),
            static_cast<float const*>(features), static_cast<float*>(output), batch, parts, channels, heatH, heatW,
            featH, featW, window, mode));
    }
    if (dtype == kDTYPE_FLOAT16)
    {
        return static_cast<int32_t>(fgdeploy::coordTransferForwardHost<__half>(
            static_cast<__half const*>(heatmaps), static_cast<__half const*>(features), static_cast<__half*>(output),
            batch, parts, channels, heatH, heatW, featH, featW, window, mode));
    }
    return static_cast<int32_t>(cudaErrorInvalidValue);
}

//! Human-readable name of a cudaError_t value (static storage).
FGDEPLOY_CAPI char const* fgdeploy_ct_error_string(int32_t code)
{
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}
