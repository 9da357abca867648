"""Every export format: its label and its file suffix. The CLI's choices and the Export page read this."""

FORMATS: dict[str, tuple[str, str]] = {
    "packed": ("packed (our format, as small as accounted)", ".petz"),
    "onnx": ("ONNX fp32", ".onnx"),
    "onnx-int8": ("ONNX int8 (dynamic)", ".int8.onnx"),
    "onnx-int8-static": ("ONNX int8 (static, calibrated)", ".int8s.onnx"),
    "torchscript": ("TorchScript", ".ts.pt"),
    "state_dict": ("state_dict (safetensors)", ".safetensors"),
}
