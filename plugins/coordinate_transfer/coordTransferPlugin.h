/*
 * TensorRT IPluginV3 plugin for fgdeploy's CoordinateTransfer op (docs/method.md section 4a).
 *
 * Identity: name "CoordinateTransfer", version "1", namespace "fgdeploy" (mirrors fgdeploy/tensors.py).
 * Inputs: heatmaps (N, P, Hh, Wh), features (N, C, Hf, Wf), same type, FP32 or FP16, linear.
 * Output: pooled (N, P, C), type of features. Fields: window (int32, odd >= 1, default 3),
 * mode (int32, 0 = max, 1 = average, default 0). The kernel lives in coordTransferKernel.{h,cu}.
 */
#ifndef FGDEPLOY_COORD_TRANSFER_PLUGIN_H
#define FGDEPLOY_COORD_TRANSFER_PLUGIN_H

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

namespace fgdeploy
{

//! Validated attribute values of one CoordinateTransfer node.
struct CoordTransferParams
{
    int32_t window{3}; //!< odd window side on the feature grid
    int32_t mode{0};   //!< 0 = max, 1 = average over the valid cells
};

//! The one validation of the attributes, used by every construction path; throws std::invalid_argument.
void validateCoordTransferParams(CoordTransferParams const& params);

//! Read `window`/`mode` from a field collection (absent fields keep their defaults), then validate.
//! Throws std::invalid_argument naming the bad field (wrong type/length, unknown name, bad value).
CoordTransferParams parseCoordTransferFields(nvinfer1::PluginFieldCollection const* fc);

class CoordTransferPlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    //! Validates `params` (throws std::invalid_argument); the creator catches.
    explicit CoordTransferPlugin(CoordTransferParams const& params);
    CoordTransferPlugin(CoordTransferPlugin const& other);
    CoordTransferPlugin& operator=(CoordTransferPlugin const&) = delete;
    ~CoordTransferPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    CoordTransferParams mParams;
    // Storage behind getFieldsToSerialize(); must outlive the call, so it is a member.
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class CoordTransferCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    CoordTransferCreator();
    ~CoordTransferCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace fgdeploy

#endif // FGDEPLOY_COORD_TRANSFER_PLUGIN_H
