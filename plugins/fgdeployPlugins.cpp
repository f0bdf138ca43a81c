/*
 * Entry points of libfgdeploy_plugins.so, for IPluginRegistry::loadLibrary (Python:
 * trt.get_plugin_registry().load_library(path)) and trtexec --dynamicPlugins. The library does not
 * link libnvinfer: TensorRT finds the creators through these two exported functions.
 *
 * Servers that only dlopen plugin libraries (Triton's TensorRT backend: --backend-config=tensorrt,plugins=...)
 * never call getCreators. For them, with FGDEPLOY_PLUGIN_AUTOREGISTER=1 in the environment, a load-time
 * constructor registers the creators with the registry of the libnvinfer already loaded in the process
 * (found by soname, RTLD_NOLOAD: nothing is loaded by us). It is opt-in because loadLibrary refuses a library
 * whose creators are already registered, so the two ways must not both run in one process.
 */
#include "NvInferRuntime.h"
#include "common/pluginLogger.h"
#include "coordinate_transfer/coordTransferPlugin.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>

#define FGDEPLOY_PLUGIN_API extern "C" __attribute__((visibility("default")))

FGDEPLOY_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    try
    {
        static fgdeploy::CoordTransferCreator sCoordTransferCreator;
        static nvinfer1::IPluginCreatorInterface* const kCREATORS[] = {&sCoordTransferCreator};
        nbCreators = static_cast<int32_t>(sizeof(kCREATORS) / sizeof(kCREATORS[0]));
        return kCREATORS;
    }
    catch (...)
    {
        fgdeploy::pluginError("fgdeploy plugins: could not construct the plugin creators");
    }
    nbCreators = 0;
    return nullptr;
}

FGDEPLOY_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    fgdeploy::setPluginLoggerFinder(finder);
}

namespace
{
using GetPluginRegistryFn = nvinfer1::IPluginRegistry* (*) ();

//! The plugin registry of the TensorRT already loaded in this process, or nullptr (then nothing is loaded).
nvinfer1::IPluginRegistry* loadedPluginRegistry()
{
    for (char const* soname : {"libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"})
    {
        void* handle = dlopen(soname, RTLD_LAZY | RTLD_NOLOAD);
        if (handle == nullptr)
        {
            continue;
        }
        auto function = reinterpret_cast<GetPluginRegistryFn>(dlsym(handle, "getPluginRegistry"));
        dlclose(handle); // drops only the reference RTLD_NOLOAD added
        if (function != nullptr)
        {
            return function();
        }
    }
    auto function = reinterpret_cast<GetPluginRegistryFn>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
    return function != nullptr ? function() : nullptr;
}

__attribute__((constructor)) void fgdeployAutoRegister()
{
    char const* flag = std::getenv("FGDEPLOY_PLUGIN_AUTOREGISTER");
    if (flag == nullptr || std::strcmp(flag, "1") != 0)
    {
        return;
    }
    nvinfer1::IPluginRegistry* registry = loadedPluginRegistry();
    if (registry == nullptr)
    {
        std::fprintf(stderr,
            "[fgdeploy plugin] FGDEPLOY_PLUGIN_AUTOREGISTER=1 but no libnvinfer is loaded in this process, so the "
            "CoordinateTransfer creator is not registered; load this library after TensorRT (Triton: "
            "--backend-config=tensorrt,plugins=PATH, not LD_PRELOAD)\n");
        return;
    }
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    for (int32_t i = 0; creators != nullptr && i < count; ++i)
    {
        auto const* v3 = dynamic_cast<nvinfer1::IPluginCreatorV3One const*>(creators[i]);
        char const* pluginNamespace = v3 != nullptr ? v3->getPluginNamespace() : "fgdeploy";
        if (!registry->registerCreator(*creators[i], pluginNamespace))
        {
            std::fprintf(stderr, "[fgdeploy plugin] FGDEPLOY_PLUGIN_AUTOREGISTER=1: TensorRT refused to register "
                                 "creator %d (already registered?)\n", static_cast<int>(i));
        }
    }
}
} // namespace
