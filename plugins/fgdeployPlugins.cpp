/*
 * Entry points of libfgdeploy_plugins.so, for IPluginRegistry::loadLibrary (Python:
 * trt.get_plugin_registry().load_library(path)) and trtexec --dynamicPlugins. The library does not
 * link libnvinfer: TensorRT finds the creators through these two exported functions.
 */
#include "NvInferRuntime.h"
#include "common/pluginLogger.h"
#include "coordinate_transfer/coordTransferPlugin.h"

#include <cstdint>

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
