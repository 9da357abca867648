"""One deployable file from a workbench, loaded back and measured: size on disk, accuracy, latency.

Unlike the workbench's accounted sizes, every number here is measured on the written file: the
size is ``stat``'s, the accuracy comes from loading the file back (onnxruntime, torch.jit.load,
load_model_file) and running the test set, and latency is a median over repeated runs.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.export import onnx_export as ox
from pet_core.export.formats import FORMATS
from pet_core.latency import measure_latency
from pet_core.size import model_bytes

ONNX_FORMATS = ("onnx", "onnx-int8", "onnx-int8-static")
TENSOR_FORMATS = ("packed", "state_dict")      # need no example input: any model, weights only too
LATENCY_BATCHES = (1, 64)
NOTES = {
    "size_bytes": "measured: bytes of the written file on disk",
    "accuracy": "measured: the file loaded back and run on the test set (the task's metric; None weights-only)",
    "latency_ms": "measured: median ms per forward at batch 1 and 64 (CPU, after warm-up)",
    "accounted_size_bytes": "accounted: the workbench's encoding-level size, no file format overhead",
}


def calibration_batches(x_train: torch.Tensor, n_batches: int = 8, batch: int = 64,
                        seed: int = 0) -> list[np.ndarray]:
    """A few fixed random batches of training images for static-quantisation calibration."""
    gen = torch.Generator().manual_seed(seed)   # seeded so the same recipe gives the same file
    idx = torch.randperm(len(x_train), generator=gen)[: n_batches * batch]
    return [x_train[idx[i:i + batch]].numpy().astype(np.float32) for i in range(0, len(idx), batch)]


def make_artifact(fmt: str, wb, baseline, path: str | Path, *, calibration: list[np.ndarray] | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    """Write ``wb.model`` as ``fmt`` to ``path``, load it back, and measure it.

    Returns {format, path, size_bytes, accuracy, latency_ms: {batch1, batch64}, latency_p90_ms,
    threads, kind: "measured"}. ``threads`` pins intra-op threads for the latency runs.
    """
    if fmt not in FORMATS:
        raise PetError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    image = baseline.dataset is not None and baseline.task == "image_classification"
    if not image and fmt not in TENSOR_FORMATS:
        what = "weights-only" if baseline.dataset is None else baseline.task.replace("_", " ")
        raise PetError(f"{fmt} export needs an image classifier and its dataset; this model is {what}: "
                       f"export it as {' or '.join(TENSOR_FORMATS)}")
    path = _writable(path)
    shape = None if baseline.dataset is None else tuple(baseline.dataset.input_shape)
    model = wb.model.eval()
    try:
        if fmt in ONNX_FORMATS:
            _write_onnx(fmt, model, shape, path, calibration, baseline)
            sess = ox.onnx_session(path, threads)
            accuracy = ox.onnx_accuracy(path, wb.x_eval, wb.y_eval, session=sess)
            name = sess.get_inputs()[0].name
            runner = _timed(lambda x: sess.run(None, {name: x}), lambda b: np.zeros((b, *shape), np.float32))
        else:
            loaded = _write_torch(fmt, wb, baseline, model, shape, path)
            accuracy = None if loaded is None else wb.evaluate(loaded)
            dtype = torch.float32 if image else torch.long        # token ids for sequence models
            runner = (None if loaded is None or shape is None
                      else _timed(_no_grad(loaded), lambda b: torch.zeros(b, *shape, dtype=dtype)))
    except OSError as e:
        raise PetError(f"cannot write {path}: {e.strerror or e}") from None
    latency = runner(threads) if runner else {}
    return {
        "format": fmt,
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "metric": wb.metric.name,
        wb.metric.name: accuracy,
        **({} if wb.metric.name == "accuracy" else {"accuracy": None}),
        "latency_ms": {k: v["median_ms"] for k, v in latency.items()},
        "latency_p90_ms": {k: v["p90_ms"] for k, v in latency.items()},
        "threads": threads or torch.get_num_threads(),
        "kind": "measured",
    }


def export_report(fmt: str, wb, baseline, path: str | Path) -> dict[str, Any]:
    """What ``python -m pet_core export --json`` prints: the artifact next to the accounted numbers."""
    out = make_artifact(fmt, wb, baseline, path)
    report = wb.report()
    name = report["metric"]["name"]
    out["baseline"] = {k: report["baseline"][k] for k in (name, "size_bytes")}
    out["accounted_size_bytes"] = report["compressed"]["size_bytes"]
    out[f"accounted_{name}"] = report["compressed"][name]
    out["notes"] = NOTES
    return out


# ---------------------------------------------------------------- writing


def _writable(path: str | Path) -> Path:
    """``path`` as a Path whose folder exists; PetError when it cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise PetError(f"cannot write {path}: it is a folder, give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):   # probe before the (slow) export, without truncating anything
            pass
    except OSError as e:
        raise PetError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _write_onnx(fmt, model, shape, path, calibration, baseline) -> None:
    if fmt == "onnx":
        ox.export_onnx(model, shape, path)
        return
    with tempfile.TemporaryDirectory(prefix="pet-export-") as tmp:
        fp32 = ox.export_onnx(model, shape, Path(tmp) / "fp32.onnx")
        if fmt == "onnx-int8":
            ox.quantize_onnx_dynamic(fp32, path)
        else:
            batches = calibration or calibration_batches(baseline.dataset.x_train)
            ox.quantize_onnx_static(fp32, path, batches)


def _write_torch(fmt, wb, baseline, model, shape, path) -> nn.Module | None:
    """Write a torch-side format and return the model loaded back from the file (None: no loader)."""
    from pet_core.model_io import load_model_file

    ds = baseline.dataset
    if fmt == "torchscript":
        ox.export_torchscript(model, shape, path)
        return torch.jit.load(str(path), map_location="cpu").eval()
    if fmt == "state_dict":
        ox.export_state_dict(model, path)
        if baseline.arch and ds is not None:
            return load_model_file(path, shape, ds.num_classes, arch=baseline.arch)[0]
        # a user's own architecture: no zoo builder, so load the weights into a copy of the model
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        clone = copy.deepcopy(model)
        clone.load_state_dict(state)
        return clone.eval()
    from pet_core.packed import load_packed   # packed imports the workbench

    write_packed_artifact(wb, baseline, path)   # our packed format (as small as the accounting)
    model, _ = load_packed(path, trust_code=bool(baseline.info.get("trusted")))   # loaded back bit-exactly
    return model.eval()


def write_packed_artifact(wb, baseline, path: str | Path, *, huffman: bool = False) -> dict[str, Any]:
    """Write ``wb.model`` as a packed file; its real, measured size.

    ``huffman`` Huffman-codes value codes and index gaps where that is smaller. Returns
    {path, file_bytes, kind: "measured", compression_ratio: baseline model bytes / file bytes}.
    A model whose architecture nothing can rebuild (see :func:`pet_core.packed.packed_model_info`)
    is a PetError.
    """
    from pet_core.packed import packed_model_info, save_packed   # packed imports the workbench

    info = save_packed(wb, path, huffman=huffman, model_info=packed_model_info(baseline))
    return {"path": str(path), "file_bytes": info["file_bytes"], "kind": "measured",
            "compression_ratio": model_bytes(baseline.model) / info["file_bytes"]}


# ---------------------------------------------------------------- latency


def _no_grad(model: nn.Module) -> Callable:
    def run(x):
        with torch.inference_mode():
            return model(x)
    return run


def _timed(fn: Callable, example: Callable[[int], Any]) -> Callable[[int | None], dict]:
    """A function of ``threads`` timing ``fn`` at each latency batch size."""
    def run(threads: int | None) -> dict:
        return {f"batch{b}": measure_latency(fn, example(b), repeats=50, warmup=10, threads=threads)
                for b in LATENCY_BATCHES}
    return run
