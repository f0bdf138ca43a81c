/*
 * See pluginLogger.h. The finder pointer is process-wide state by nature (TensorRT sets it once per
 * loaded library); a mutex guards it because plugins may log from several builder threads.
 */
#include "pluginLogger.h"

#include <cstdio>
#include <mutex>

namespace fgdeploy
{
namespace
{
std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};
} // namespace

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        if (gLoggerFinder == nullptr && finder != nullptr)
        {
            gLoggerFinder = finder;
        }
    }
    catch (...)
    {
        std::fprintf(stderr, "[fgdeploy plugin] could not store the TensorRT logger finder\n");
    }
}

void pluginLog(nvinfer1::ILogger::Severity severity, char const* message) noexcept
{
    char const* text = message != nullptr ? message : "(no message)";
    try
    {
        nvinfer1::ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, text);
            return;
        }
    }
    catch (...)
    {
        // fall through to stderr
    }
    std::fprintf(stderr, "[fgdeploy plugin] %s\n", text);
}

} // namespace fgdeploy
