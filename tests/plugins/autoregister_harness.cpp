/*
 * Loads libfgdeploy_plugins.so the way Triton's TensorRT backend does for --backend-config=tensorrt,plugins=PATH:
 * dlopen(PATH, RTLD_NOW | RTLD_LOCAL) in a process where libnvinfer is already loaded (here: a fake one, loaded
 * RTLD_LOCAL as a backend's dependency would be), then prints what the registry received.
 *
 *   autoregister_harness FAKE_NVINFER|- PLUGIN_LIBRARY
 *
 * Prints "REGISTERED <name/version/namespace as ns;...>" (empty when nothing) and exits 0, or "ERROR ..." and 1.
 */
#include <cstdio>
#include <cstring>
#include <dlfcn.h>

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::printf("ERROR usage: autoregister_harness FAKE_NVINFER|- PLUGIN_LIBRARY\n");
        return 1;
    }
    void* nvinfer = nullptr;
    if (std::strcmp(argv[1], "-") != 0)
    {
        nvinfer = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (nvinfer == nullptr)
        {
            std::printf("ERROR fake libnvinfer: %s\n", dlerror());
            return 1;
        }
    }
    void* plugin = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    if (plugin == nullptr)
    {
        std::printf("ERROR plugin library: %s\n", dlerror());
        return 1;
    }
    char const* registered = "";
    if (nvinfer != nullptr)
    {
        using Fn = char const* (*) ();
        auto fn = reinterpret_cast<Fn>(dlsym(nvinfer, "fakeRegistrations"));
        registered = fn != nullptr ? fn() : "(no fakeRegistrations)";
    }
    std::printf("REGISTERED %s\n", registered);
    return 0;
}
