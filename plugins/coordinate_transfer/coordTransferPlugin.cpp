/*
 * CoordinateTransfer TensorRT plugin (IPluginV3) and its creator (IPluginCreatorV3One).
 * See coordTransferPlugin.h and README.md. No method lets an exception escape: each catches,
 * logs through the TensorRT logger and returns an error code or nullptr.
 */
#include "coordTransferPlugin.h"

#include "../common/pluginLogger.h"
#include "coordTransferKernel.h"

#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>

using namespace nvinfer1;

namespace fgdeploy
{
namespace
{
// Identity; mirrors fgdeploy/tensors.py (OP_NAME, OP_VERSION, PLUGIN_NAMESPACE) and the ONNX node.
char const* const kPLUGIN_NAME{"CoordinateTransfer"};
char const* const kPLUGIN_VERSION{"1"};
char const* const kPLUGIN_NAMESPACE{"fgdeploy"};
char const* const kFIELD_WINDOW{"window"};
char const* const kFIELD_MODE{"mode"};
constexpr int32_t kNB_INPUTS = 2;  // heatmaps, features
constexpr int32_t kNB_OUTPUTS = 1; // pooled
constexpr int32_t kHEATMAPS = 0;
constexpr int32_t kFEATURES = 1;

//! Log "CoordinateTransfer: <what>" as an error; never throws.
void logError(char const* what) noexcept
{
    try
    {
        pluginError((std::string(kPLUGIN_NAME) + ": " + what).c_str());
    }
    catch (...)
    {
        pluginError(what);
    }
}

//! Log the exception currently being handled; call only inside a catch block.
void logCurrentException(char const* where) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        try
        {
            logError((std::string(where) + ": " + e.what()).c_str());
        }
        catch (...)
        {
            logError(e.what());
        }
    }
    catch (...)
    {
        logError(where);
    }
}

bool isFloatType(DataType t) noexcept
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

//! Read one int attribute (kINT32 or kINT64, length 1) into `out`; throws naming the field.
int32_t readIntField(PluginField const& field)
{
    std::string const name(field.name);
    if (field.data == nullptr || field.length != 1)
    {
        throw std::invalid_argument("field '" + name + "' must hold exactly one integer, got length "
            + std::to_string(field.length) + (field.data == nullptr ? " and no data" : ""));
    }
    if (field.type == PluginFieldType::kINT32)
    {
        return *static_cast<int32_t const*>(field.data);
    }
    if (field.type == PluginFieldType::kINT64)
    {
        int64_t const v = *static_cast<int64_t const*>(field.data);
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        {
            throw std::invalid_argument("field '" + name + "' = " + std::to_string(v) + " does not fit int32");
        }
        return static_cast<int32_t>(v);
    }
    throw std::invalid_argument("field '" + name + "' must be kINT32 or kINT64, got PluginFieldType "
        + std::to_string(static_cast<int32_t>(field.type)));
}

//! Shapes must be (N, P, Hh, Wh) and (N, C, Hf, Wf) with the same N where N is known (>= 0).
char const* checkInputDims(Dims const& heat, Dims const& feat) noexcept
{
    if (heat.nbDims != 4 || feat.nbDims != 4)
    {
        return "heatmaps must be (N, P, Hh, Wh) and features (N, C, Hf, Wf): both rank 4";
    }
    if (heat.d[0] >= 0 && feat.d[0] >= 0 && heat.d[0] != feat.d[0])
    {
        return "heatmaps and features have different batch sizes";
    }
    return nullptr;
}

} // namespace

void validateCoordTransferParams(CoordTransferParams const& params)
{
    if (params.window < 1 || params.window % 2 == 0 || params.window > kMAX_WINDOW)
    {
        throw std::invalid_argument("window must be an odd integer in [1, " + std::to_string(kMAX_WINDOW)
            + "], got " + std::to_string(params.window));
    }
    if (params.mode != kMODE_MAX && params.mode != kMODE_AVERAGE)
    {
        throw std::invalid_argument(
            "mode must be 0 (max) or 1 (average), got " + std::to_string(params.mode));
    }
}

CoordTransferParams parseCoordTransferFields(PluginFieldCollection const* fc)
{
    CoordTransferParams params; // defaults for absent fields (the ONNX parser skips missing attributes)
    if (fc == nullptr)
    {
        return params;
    }
    if (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        throw std::invalid_argument("malformed PluginFieldCollection");
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        if (field.name == nullptr)
        {
            throw std::invalid_argument("field " + std::to_string(i) + " has no name");
        }
        if (std::strcmp(field.name, kFIELD_WINDOW) == 0)
        {
            params.window = readIntField(field);
        }
        else if (std::strcmp(field.name, kFIELD_MODE) == 0)
        {
            params.mode = readIntField(field);
        }
        else
        {
            throw std::invalid_argument(
                std::string("unknown field '") + field.name + "'; valid fields: window (int), mode (int)");
        }
    }
    return params;
}

// ---------------------------------------------------------------------------------------------
// CoordTransferPlugin

CoordTransferPlugin::CoordTransferPlugin(CoordTransferParams const& params)
    : mParams(params)
{
    validateCoordTransferParams(mParams);
}

CoordTransferPlugin::CoordTransferPlugin(CoordTransferPlugin const& other)
    : IPluginV3()
    , IPluginV3OneCore()
    , IPluginV3OneBuild()
    , IPluginV3OneRuntime()
    , mParams(other.mParams) // already validated; serialization storage is per object
{
}

IPluginCapability* CoordTransferPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    logError("unknown PluginCapabilityType requested");
    return nullptr;
}

IPluginV3* CoordTransferPlugin::clone() noexcept
{
    try
    {
        return new CoordTransferPlugin(*this);
    }
    catch (...)
    {
        logCurrentException("clone");
    }
    return nullptr;
}

char const* CoordTransferPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* CoordTransferPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* CoordTransferPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t CoordTransferPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t CoordTransferPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 2 inputs (heatmaps, features) and 1 output");
        return 1;
    }
    if (!isFloatType(inputTypes[kFEATURES]) || inputTypes[kHEATMAPS] != inputTypes[kFEATURES])
    {
        logError("heatmaps and features must have the same type, FP32 or FP16; cast in the ONNX graph");
        return 1;
    }
    // Strongly typed networks: this is the type inference of the output (= type of features).
    outputTypes[0] = inputTypes[kFEATURES];
    return 0;
}

int32_t CoordTransferPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 2 inputs (heatmaps, features) and 1 output");
        return 1;
    }
    if (inputs[kHEATMAPS].nbDims != 4 || inputs[kFEATURES].nbDims != 4)
    {
        logError("heatmaps must be (N, P, Hh, Wh) and features (N, C, Hf, Wf): both rank 4");
        return 1;
    }
    // (N, P, C); copying the input expressions keeps N dynamic.
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[kFEATURES].d[0];
    outputs[0].d[1] = inputs[kHEATMAPS].d[1];
    outputs[0].d[2] = inputs[kFEATURES].d[1];
    return 0;
}

bool CoordTransferPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0
        || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false; // all positions: row-major (NCHW / NPC) only
    }
    if (pos == kHEATMAPS)
    {
        return isFloatType(desc.type); // heatmaps: FP32 or FP16
    }
    return desc.type == inOut[kHEATMAPS].desc.type; // features and output: the type of heatmaps
}

int32_t CoordTransferPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 2 inputs (heatmaps, features) and 1 output");
        return 1;
    }
    if (char const* problem = checkInputDims(in[kHEATMAPS].desc.dims, in[kFEATURES].desc.dims))
    {
        logError(problem);
        return 1;
    }
    return 0; // one algorithm for every shape: nothing to choose here
}

size_t CoordTransferPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t CoordTransferPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 2 inputs (heatmaps, features) and 1 output");
        return 1;
    }
    if (char const* problem = checkInputDims(in[kHEATMAPS].dims, in[kFEATURES].dims))
    {
        logError(problem);
        return 1;
    }
    return 0; // enqueue reads the dims from its descriptors, so nothing is cached
}

int32_t CoordTransferPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            logError("enqueue called without tensors");
            return 1;
        }
        Dims const& heat = inputDesc[kHEATMAPS].dims;
        Dims const& feat = inputDesc[kFEATURES].dims;
        if (char const* problem = checkInputDims(heat, feat))
        {
            logError(problem);
            return 1;
        }
        DataType const type = inputDesc[kFEATURES].type;
        if (inputDesc[kHEATMAPS].type != type)
        {
            logError("heatmaps and features must have the same type");
            return 1;
        }
        cudaError_t status{cudaErrorInvalidValue};
        if (type == DataType::kFLOAT)
        {
            status = coordTransferForward<float>(stream, static_cast<float const*>(inputs[kHEATMAPS]),
                static_cast<float const*>(inputs[kFEATURES]), static_cast<float*>(outputs[0]), feat.d[0], heat.d[1],
                feat.d[1], heat.d[2], heat.d[3], feat.d[2], feat.d[3], mParams.window, mParams.mode);
        }
        else if (type == DataType::kHALF)
        {
            status = coordTransferForward<__half>(stream, static_cast<__half const*>(inputs[kHEATMAPS]),
                static_cast<__half const*>(inputs[kFEATURES]), static_cast<__half*>(outputs[0]), feat.d[0],
                heat.d[1], feat.d[1], heat.d[2], heat.d[3], feat.d[2], feat.d[3], mParams.window, mParams.mode);
        }
        else
        {
            logError("unsupported tensor type (FP32 and FP16 only)");
            return 1;
        }
        if (status != cudaSuccess)
        {
            logError((std::string("kernel launch failed: ") + cudaGetErrorString(status)).c_str());
            return 1;
        }
        return 0;
    }
    catch (...)
    {
        logCurrentException("enqueue");
    }
    return 1;
}

IPluginV3* CoordTransferPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources; enqueue touches no mutable state
}

PluginFieldCollection const* CoordTransferPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        // Order: window, mode; both int32, one element. createPlugin(kRUNTIME) reads them back by name.
        mSerialFields.clear();
        mSerialFields.emplace_back(kFIELD_WINDOW, &mParams.window, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back(kFIELD_MODE, &mParams.mode, PluginFieldType::kINT32, 1);
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }
    catch (...)
    {
        logCurrentException("getFieldsToSerialize");
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------------------
// CoordTransferCreator

CoordTransferCreator::CoordTransferCreator()
{
    // The ONNX parser forwards only node attributes named here; data is null (names and types only).
    mFields.emplace_back(kFIELD_WINDOW, nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kFIELD_MODE, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* CoordTransferCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* CoordTransferCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* CoordTransferCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* CoordTransferCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* CoordTransferCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    // kBUILD gets the ONNX node's attributes, kRUNTIME the fields of getFieldsToSerialize(): same parsing.
    try
    {
        return new CoordTransferPlugin(parseCoordTransferFields(fc));
    }
    catch (...)
    {
        std::string where;
        try
        {
            where = std::string("node '") + (name != nullptr ? name : "?") + "'";
        }
        catch (...)
        {
        }
        logCurrentException(where.empty() ? "createPlugin" : where.c_str());
    }
    return nullptr;
}

} // namespace fgdeploy
