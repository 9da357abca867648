"""Deployable artifacts: ONNX (fp32, int8 dynamic/static), TorchScript and state_dict files.

``onnx_export`` writes and runs the files; ``artifacts.make_artifact`` writes one, loads it back
and measures it (size on disk, accuracy, latency). Submodules import onnxruntime lazily, so
importing this package costs nothing.
"""
