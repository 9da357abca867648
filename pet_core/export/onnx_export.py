"""Write deployable files (ONNX fp32/int8, TorchScript, state_dict) and run ONNX files.

Every file is self-contained (no external data) with a dynamic batch axis, so one artifact
serves batch 1 and batch 64. onnxruntime is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from pet_core.accuracy import top1_accuracy
from pet_core.errors import PetError
from pet_core.model_io import save_state_dict

OPSET = 18
INPUT, OUTPUT = "input", "logits"


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and warnings: the CLI's stdout is one JSON line."""
    sink = io.StringIO()
    # torch's loggers hold the original stderr, so redirecting it does not reach them
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _example(model: nn.Module, input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    # batch 2, not 1: torch.export specialises size-1 dims, which would pin the batch axis
    return torch.zeros((batch, *(int(v) for v in input_shape)), dtype=torch.float32)


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    """Export ``model`` for (C,H,W) inputs to one ONNX file (opset 18, dynamic batch axis).

    Tries the dynamo exporter first and falls back to the TorchScript-based one when it fails.
    """
    path = Path(path)
    model = model.eval()
    example = _example(model, input_shape)
    common = dict(input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET, external_data=False)
    first_error: Exception | None = None
    with _quiet(), torch.no_grad():
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **common)
        except Exception as e:  # noqa: BLE001 - any dynamo failure: try the older exporter
            first_error = e
            try:
                torch.onnx.export(model, (example,), str(path), dynamo=False,
                                  dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, **common)
            except Exception as e2:  # noqa: BLE001
                raise PetError(f"ONNX export failed: {_line(first_error)}; fallback: {_line(e2)}") from None
    _drop_initializer_value_info(path)
    onnx.checker.check_model(str(path))
    return path


def _drop_initializer_value_info(path: Path) -> None:
    """Remove value_info entries that repeat initializer shapes (the dynamo exporter writes them).

    onnxruntime's quantisers transpose weights in place; a stale shape left in value_info then
    fails their shape inference ("Inferred shape and existing shape differ").
    """
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in inits]
    if len(keep) != len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
        onnx.save(model, str(path))


def export_torchscript(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    """Trace ``model`` with a (1,C,H,W) example and save it as a TorchScript archive."""
    path = Path(path)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), (_example(model, input_shape, 1),), check_trace=False)
    traced.save(str(path))
    return path


def export_state_dict(model: nn.Module, path: str | Path) -> Path:
    """Save ``model``'s weights (safetensors for a ``.safetensors`` path, else torch.save)."""
    save_state_dict(model, path)
    return Path(path)


# ---------------------------------------------------------------- quantisation


def quantize_onnx_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantisation: QInt8 weights, activations quantised at run time.

    Gemm nodes are rewritten as MatMul + Add first, because onnxruntime's dynamic quantiser
    only handles MatMul (the exporters emit Gemm for every nn.Linear). Conv stays fp32: its
    dynamic form (ConvInteger) measured ~10x slower than fp32 Conv on CPU; static quantisation
    covers convolutions.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _gemm_to_matmul(onnx.load(str(src)))
    with _quiet(), tempfile.TemporaryDirectory(prefix="pet-q-") as tmp:
        plain = Path(tmp) / "matmul.onnx"
        onnx.save(model, str(plain))
        quantize_dynamic(str(plain), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=False)
    return Path(dst)


class _Batches:
    """A CalibrationDataReader over a list of (N,C,H,W) float32 batches."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._it = iter([{name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self):
        return next(self._it, None)


def quantize_onnx_static(src: str | Path, dst: str | Path, calibration_batches: list[np.ndarray]) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on a few training batches.

    The model goes through ``quant_pre_process`` (shape inference + graph clean-up, which lets
    more nodes be quantised) when that succeeds. Activations are uint8 and weights int8 with
    ``reduce_range`` unless the CPU has VNNI (without it the u8s8 kernels can saturate). The
    stem (a first conv on <= 3 input channels and its Relu/pool) stays fp32: int8 kernels with
    so few input channels measured 3-5x slower than fp32, for a negligible share of the bytes.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_batches:
        raise PetError("static quantisation needs at least one calibration batch")
    with _quiet(), tempfile.TemporaryDirectory(prefix="pet-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre))
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
            pre = Path(src)
        quantize_static(str(pre), str(dst), _Batches(_input_name(pre), calibration_batches),
                        nodes_to_exclude=_stem_nodes(onnx.load(str(pre)).graph), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=_reduce_range(),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return Path(dst)


def _reduce_range() -> bool:
    """7-bit weights unless the CPU has VNNI, where onnxruntime's u8s8 kernels cannot saturate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _stem_nodes(graph) -> list[str]:
    """Names of fp32-friendly stem nodes: Convs with <= 3 input channels per group, fed by a graph
    input, plus the chain of Relu/Clip/pool nodes that directly follows each of them."""
    inits = {i.name: i for i in graph.initializer}
    inputs = {i.name for i in graph.input} - set(inits)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    stem = []
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if w is None or node.input[0] not in inputs or len(w.dims) < 2 or w.dims[1] > 3:
            continue
        stem.append(node.name)
        nxt = consumers.get(node.output[0], [])
        while len(nxt) == 1 and nxt[0].op_type in ("Relu", "Clip", "MaxPool", "AveragePool"):
            stem.append(nxt[0].name)
            nxt = consumers.get(nxt[0].output[0], [])
    return stem


def _input_name(path: str | Path) -> str:
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits)


def _gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace Gemm(A, W, b) with constant W (alpha=beta=1, no transA) by MatMul(A, W') + Add(b)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}__mm" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]  # drop the now unused transposed copies
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


# ---------------------------------------------------------------- running


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with full graph optimisation; ``threads`` intra-op threads.

    QDQ propagation is disabled: it moves a QuantizeLinear up in front of an fp32 stem's MaxPool,
    which then runs on the slow generic uint8 NCHW kernel (measured 10x slower than fp32 MaxPool).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
        # no spinning when we pin threads: on a busy 2-core machine spin-waits steal the other core
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if threads == 1 else "1")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["QDQPropagationTransformer"])
    except Exception as e:  # noqa: BLE001
        raise PetError(f"onnxruntime cannot load {Path(path).name}: {_line(e)}") from None


def onnx_accuracy(path, x, y, batch: int = 1024, *, session=None) -> float:
    """Top-1 accuracy (a fraction) of the ONNX file at ``path`` on inputs ``x``, labels ``y``."""
    sess = session or onnx_session(path)
    name = sess.get_inputs()[0].name
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return top1_accuracy(lambda xb: sess.run(None, {name: np.ascontiguousarray(xb, dtype=np.float32)})[0],
                         x, y, batch_size=batch)


def _line(e: BaseException) -> str:
    """First line of an exception message, shortened for a one-line PetError."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


__all__ = ["export_onnx", "export_torchscript", "export_state_dict", "quantize_onnx_dynamic",
           "quantize_onnx_static", "onnx_session", "onnx_accuracy", "OPSET"]
