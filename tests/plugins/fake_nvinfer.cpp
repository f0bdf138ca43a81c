/*
 * A stand-in for libnvinfer.so.N with only a plugin registry, to check how libfgdeploy_plugins.so registers
 * itself when a server merely dlopens it (Triton's --backend-config=tensorrt,plugins=...). Built with the soname
 * of the TensorRT major whose headers it is compiled against; records each registerCreator call.
 *
 *   g++ -shared -fPIC fake_nvinfer.cpp -Wl,-soname,libnvinfer.so.10 -o libnvinfer.so.10
 */
#include "NvInferRuntime.h"

#include <cstdint>
#include <string>

using namespace nvinfer1;

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace
{
std::string gRegistered; // "name/version/namespace;" per registered creator

class FakeRegistry : public IPluginRegistry
{
public:
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override { *n = 0; return nullptr; }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override { return nullptr; }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#endif
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 10)
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override { *n = 0; return nullptr; }
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        InterfaceInfo info = creator.getInterfaceInfo();
        std::string kind = info.kind != nullptr ? info.kind : "";
        if (kind == "PLUGIN CREATOR_V3ONE")
        {
            auto& v3 = static_cast<IPluginCreatorV3One&>(creator);
            gRegistered += std::string(v3.getPluginName()) + "/" + v3.getPluginVersion() + "/" + v3.getPluginNamespace();
        }
        else
        {
            gRegistered += "kind " + kind;
        }
        gRegistered += std::string(" as ") + (pluginNamespace != nullptr ? pluginNamespace : "(null)") + ";";
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override { *n = 0; return nullptr; }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override { return nullptr; }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
};
} // namespace

extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    static FakeRegistry* registry = new FakeRegistry(); // never destroyed: no static destruction order issues
    return registry;
}

extern "C" __attribute__((visibility("default"))) char const* fakeRegistrations() noexcept
{
    return gRegistered.c_str();
}
