/*
 * Logging for fgdeploy plugins through the ILogger TensorRT hands over via setLoggerFinder.
 * Falls back to stderr when no logger finder was set (e.g. a creator used directly in a test).
 */
#ifndef FGDEPLOY_PLUGIN_LOGGER_H
#define FGDEPLOY_PLUGIN_LOGGER_H

#include "NvInferRuntime.h"

namespace fgdeploy
{

//! Keep the finder TensorRT passes to the library's exported setLoggerFinder (first non-null wins).
void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Log `message` with `severity`; never throws.
void pluginLog(nvinfer1::ILogger::Severity severity, char const* message) noexcept;

inline void pluginError(char const* message) noexcept
{
    pluginLog(nvinfer1::ILogger::Severity::kERROR, message);
}

inline void pluginWarning(char const* message) noexcept
{
    pluginLog(nvinfer1::ILogger::Severity::kWARNING, message);
}

} // namespace fgdeploy

#endif // FGDEPLOY_PLUGIN_LOGGER_H
