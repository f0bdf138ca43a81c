"""Python side of fgdeploy's native code (the C++/CUDA sources are in the repository's ``plugins/`` folder).

- ``build``: build the two shared libraries with nvcc (cached by a hash of sources and flags), find them,
  describe them: ``libfgdeploy_plugins.so`` (the TensorRT plugin) and ``libfgdeploy_ct_kernels.so``;
- ``kernels``: the CUDA kernel library through ctypes (``KernelLibrary``), checked against the NumPy reference.

Loading the plugin into TensorRT is ``fgdeploy.backends.trt_support.load_plugin_library``.
"""
