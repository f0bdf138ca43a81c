/*
 * Exercises libfgdeploy_plugins.so the way TensorRT does (dlopen, getCreators, setLoggerFinder, then
 * only virtual calls through the IPluginV3 interfaces), without TensorRT's libraries or a GPU.
 *
 *   plugin_harness /path/to/libfgdeploy_plugins.so
 *
 * Prints "PASS <name>" / "FAIL <name>: <detail>" per check; the exit code is the number of failures.
 * Built and run by tests/plugins/test_plugin_library.py against TENSORRT_INCLUDE_DIR.
 */
#include "NvInferRuntime.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

void check(bool ok, char const* name, std::string const& detail = "")
{
    std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, ok || detail.empty() ? "" : ": ", ok ? "" : detail.c_str());
    gFailures += ok ? 0 : 1;
}

class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            mLast = msg != nullptr ? msg : "";
        }
    }
    std::string mLast;
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

struct Fields
{
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};
    PluginFieldCollection const* get()
    {
        fc.nbFields = static_cast<int32_t>(fields.size());
        fc.fields = fields.data();
        return &fc;
    }
};

int32_t readInt(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0 && fc->fields[i].type == PluginFieldType::kINT32)
        {
            return *static_cast<int32_t const*>(fc->fields[i].data);
        }
    }
    return -999;
}

DynamicPluginTensorDesc desc(DataType type, TensorFormat format, std::vector<int64_t> const& dims)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    return d;
}

void runChecks(IPluginCreatorV3One* creator, RecordingLogger& logger)
{
    check(std::strcmp(creator->getPluginName(), "CoordinateTransfer") == 0, "creator name");
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, "creator version");
    check(std::strcmp(creator->getPluginNamespace(), "fgdeploy") == 0, "creator namespace");
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names != nullptr && names->nbFields == 2 && std::strcmp(names->fields[0].name, "window") == 0
            && std::strcmp(names->fields[1].name, "mode") == 0 && names->fields[0].type == PluginFieldType::kINT32,
        "field names: window, mode (kINT32)");

    int32_t window = 5;
    int32_t mode = 1;
    Fields f;
    f.fields = {PluginField("window", &window, PluginFieldType::kINT32, 1),
        PluginField("mode", &mode, PluginFieldType::kINT32, 1)};
    IPluginV3* plugin = creator->createPlugin("ct_node", f.get(), TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin(window=5, mode=1, kBUILD)");
    if (plugin == nullptr)
    {
        return;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core != nullptr && build != nullptr && runtime != nullptr, "capability interfaces");
    check(std::strcmp(core->getPluginName(), "CoordinateTransfer") == 0
            && std::strcmp(core->getPluginNamespace(), "fgdeploy") == 0
            && std::strcmp(core->getPluginVersion(), "1") == 0,
        "plugin identity equals creator identity");

    // Serialization round trip: kRUNTIME gets exactly getFieldsToSerialize().
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    check(readInt(saved, "window") == 5 && readInt(saved, "mode") == 1, "getFieldsToSerialize holds window=5 mode=1");
    IPluginV3* restored = creator->createPlugin("ct_node", saved, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "createPlugin(kRUNTIME) from serialized fields");
    if (restored != nullptr)
    {
        auto* rr = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* again = rr->getFieldsToSerialize();
        check(readInt(again, "window") == 5 && readInt(again, "mode") == 1, "round trip keeps window and mode");
        delete restored;
    }
    IPluginV3* cloned = plugin->clone();
    check(cloned != nullptr, "clone");
    if (cloned != nullptr)
    {
        auto* cr = static_cast<IPluginV3OneRuntime*>(cloned->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(readInt(cr->getFieldsToSerialize(), "window") == 5, "clone keeps window");
        delete cloned;
    }
    IPluginV3* attached = runtime->attachToContext(nullptr);
    check(attached != nullptr && attached != plugin, "attachToContext returns a new clone");
    delete attached;

    // Types: output = type of features; both inputs must share FP32 or FP16.
    DataType out[1]{DataType::kINT8};
    DataType halfIn[2]{DataType::kHALF, DataType::kHALF};
    check(build->getNbOutputs() == 1, "one output");
    check(build->getOutputDataTypes(out, 1, halfIn, 2) == 0 && out[0] == DataType::kHALF, "FP16 in -> FP16 out");
    DataType floatIn[2]{DataType::kFLOAT, DataType::kFLOAT};
    check(build->getOutputDataTypes(out, 1, floatIn, 2) == 0 && out[0] == DataType::kFLOAT, "FP32 in -> FP32 out");
    DataType mixed[2]{DataType::kFLOAT, DataType::kHALF};
    check(build->getOutputDataTypes(out, 1, mixed, 2) != 0, "mixed FP32/FP16 inputs rejected");
    DataType ints[2]{DataType::kINT32, DataType::kINT32};
    check(build->getOutputDataTypes(out, 1, ints, 2) != 0, "INT32 inputs rejected");

    // Formats: linear only, all positions the type of position 0.
    std::vector<int64_t> heat{-1, 15, 10, 10};
    std::vector<int64_t> feat{-1, 512, 32, 32};
    std::vector<int64_t> pooled{-1, 15, 512};
    DynamicPluginTensorDesc io[3]{desc(DataType::kHALF, TensorFormat::kLINEAR, heat),
        desc(DataType::kHALF, TensorFormat::kLINEAR, feat), desc(DataType::kHALF, TensorFormat::kLINEAR, pooled)};
    check(build->supportsFormatCombination(0, io, 2, 1) && build->supportsFormatCombination(1, io, 2, 1)
            && build->supportsFormatCombination(2, io, 2, 1),
        "FP16 linear accepted at every position");
    io[1].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(1, io, 2, 1), "features type != heatmaps type rejected");
    io[1].desc.type = DataType::kHALF;
    io[2].desc.format = TensorFormat::kHWC8;
    check(!build->supportsFormatCombination(2, io, 2, 1), "non-linear format rejected");
    io[2].desc.format = TensorFormat::kLINEAR;
    check(!build->supportsFormatCombination(3, io, 2, 1), "out-of-range position rejected");
    io[0].desc.type = DataType::kINT32;
    check(!build->supportsFormatCombination(0, io, 2, 1), "INT32 heatmaps rejected");
    io[0].desc.type = DataType::kHALF;

    // Shapes at configure/onShapeChange time.
    check(build->configurePlugin(io, 2, io + 2, 1) == 0, "configurePlugin with dynamic batch");
    DynamicPluginTensorDesc badIo[2]{desc(DataType::kHALF, TensorFormat::kLINEAR, {2, 15, 10, 10}),
        desc(DataType::kHALF, TensorFormat::kLINEAR, {3, 512, 32, 32})};
    check(build->configurePlugin(badIo, 2, io + 2, 1) != 0, "configurePlugin rejects different batch sizes");
    PluginTensorDesc concrete[3]{badIo[0].desc, badIo[1].desc, io[2].desc};
    check(runtime->onShapeChange(concrete, 2, concrete + 2, 1) != 0, "onShapeChange rejects different batches");
    concrete[1].dims.nbDims = 3;
    check(runtime->onShapeChange(concrete, 2, concrete + 2, 1) != 0, "onShapeChange rejects rank-3 features");
    check(build->getWorkspaceSize(io, 2, io + 2, 1) == 0, "no workspace");

    // enqueue: a bad type fails before any CUDA call; never throws.
    PluginTensorDesc enq[2]{badIo[0].desc, badIo[0].desc};
    enq[1].dims = concrete[0].dims;
    enq[0].type = DataType::kINT32;
    enq[1].type = DataType::kINT32;
    enq[1].dims.nbDims = 4;
    enq[1].dims.d[0] = 2;
    void const* inputs[2]{nullptr, nullptr};
    void* outputs[1]{nullptr};
    check(runtime->enqueue(enq, nullptr, inputs, outputs, nullptr, nullptr) != 0, "enqueue rejects INT32");
    delete plugin;

    // Validation on every construction path, with the reason logged.
    auto rejects = [&](char const* name, Fields& fields, char const* expect) {
        logger.mLast.clear();
        IPluginV3* p = creator->createPlugin("bad_node", fields.get(), TensorRTPhase::kBUILD);
        bool const ok = p == nullptr && logger.mLast.find(expect) != std::string::npos
            && logger.mLast.find("bad_node") != std::string::npos;
        check(ok, name, "plugin=" + std::string(p ? "created" : "null") + " log='" + logger.mLast + "'");
        delete p;
    };
    int32_t even = 4;
    int32_t zero = 0;
    int32_t two = 2;
    float wrongType = 3.0F;
    int64_t wide = 7;
    Fields evenWindow;
    evenWindow.fields = {PluginField("window", &even, PluginFieldType::kINT32, 1)};
    rejects("window=4 rejected with reason", evenWindow, "window must be an odd integer");
    Fields zeroWindow;
    zeroWindow.fields = {PluginField("window", &zero, PluginFieldType::kINT32, 1)};
    rejects("window=0 rejected with reason", zeroWindow, "window must be an odd integer");
    Fields badMode;
    badMode.fields = {PluginField("mode", &two, PluginFieldType::kINT32, 1)};
    rejects("mode=2 rejected with reason", badMode, "mode must be 0 (max) or 1 (average)");
    Fields floatWindow;
    floatWindow.fields = {PluginField("window", &wrongType, PluginFieldType::kFLOAT32, 1)};
    rejects("kFLOAT32 window rejected", floatWindow, "must be kINT32 or kINT64");
    Fields unknown;
    unknown.fields = {PluginField("windw", &window, PluginFieldType::kINT32, 1)};
    rejects("unknown field rejected", unknown, "unknown field 'windw'");
    Fields twoValues;
    twoValues.fields = {PluginField("window", &window, PluginFieldType::kINT32, 2)};
    rejects("length-2 field rejected", twoValues, "exactly one integer");
    IPluginV3* restoredRuntime = creator->createPlugin("bad_node", evenWindow.get(), TensorRTPhase::kRUNTIME);
    check(restoredRuntime == nullptr, "window=4 rejected at kRUNTIME too");
    delete restoredRuntime;

    Fields int64Window;
    int64Window.fields = {PluginField("window", &wide, PluginFieldType::kINT64, 1)};
    IPluginV3* p64 = creator->createPlugin("n", int64Window.get(), TensorRTPhase::kBUILD);
    check(p64 != nullptr, "kINT64 window=7 accepted");
    if (p64 != nullptr)
    {
        auto* r = static_cast<IPluginV3OneRuntime*>(p64->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(readInt(r->getFieldsToSerialize(), "window") == 7, "kINT64 window stored as 7");
        delete p64;
    }
    Fields none;
    IPluginV3* defaults = creator->createPlugin("n", none.get(), TensorRTPhase::kBUILD);
    check(defaults != nullptr, "no fields: defaults");
    if (defaults != nullptr)
    {
        auto* r = static_cast<IPluginV3OneRuntime*>(defaults->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* fc = r->getFieldsToSerialize();
        check(readInt(fc, "window") == 3 && readInt(fc, "mode") == 0, "defaults are window=3, mode=0");
        delete defaults;
    }
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libfgdeploy_plugins.so\n", argv[0]);
        return 100;
    }
    void* handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 101;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"));
    check(getCreators != nullptr && setLoggerFinder != nullptr, "exports getCreators and setLoggerFinder");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return gFailures;
    }
    RecordingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    check(creators != nullptr && count == 1, "one creator");
    if (creators == nullptr || count != 1)
    {
        return gFailures;
    }
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is an IPluginCreatorV3One", info.kind);
    runChecks(static_cast<IPluginCreatorV3One*>(creators[0]), logger);
    std::printf("%d failure(s)\n", gFailures);
    return gFailures;
}
