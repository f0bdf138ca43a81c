"""fgdeploy: keypoint-guided fine-grained classifiers, from training to TensorRT.

Importing the package pulls in nothing heavy (no torch, onnxruntime or tensorrt).
"""

__version__ = "0.1.0"
