"""A model as a file Netron can open: ONNX when the exporter manages, else TorchScript."""

from __future__ import annotations

import copy
import io
import logging

log = logging.getLogger(__name__)


def model_to_netron_bytes(model, input_shape) -> tuple[bytes, str]:
    """Serialise ``model`` for Netron; returns ``(file_bytes, "model.onnx" | "model.pt")``.

    ``input_shape`` is one sample's shape without the batch dimension, e.g. ``(1, 28, 28)``;
    a batch of one is traced. ``model`` is left exactly as it was: the exporters (dynamo
    swaps fake tensors into the module while it traces) only ever see a private copy, and
    nothing process-wide is touched (no stdout redirection, no warning filters; grad mode
    is thread-local).

        >>> data, name = model_to_netron_bytes(torch.nn.Linear(4, 2), (4,))   # doctest: +SKIP
        >>> name
        'model.onnx'
    """
    import torch

    if isinstance(model, torch.jit.ScriptModule):  # already a file Netron reads; saving mutates nothing
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        return buf.getvalue(), "model.pt"
    private = copy.deepcopy(model).eval()
    shape = tuple(int(v) for v in input_shape)
    param = next(private.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    example = torch.zeros((1, *shape), device=device, dtype=dtype)
    try:
        return _export_onnx(private, example), "model.onnx"
    except Exception as exc:  # noqa: BLE001 - any exporter failure -> fallback
        log.info("ONNX export failed (%s: %s); falling back to TorchScript", type(exc).__name__, exc)
    return _export_torchscript(copy.deepcopy(model).eval(), example), "model.pt"


def _export_onnx(model, example) -> bytes:
    import torch

    with torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False)
    data = program.model_proto.SerializeToString()
    if not data:
        raise RuntimeError("empty ONNX export")
    return data


def _export_torchscript(model, example) -> bytes:
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()
