"""Ways to run a model over evaluation items: eager PyTorch, ONNX Runtime with the weights as inputs,
and a CUDA mirror of the model that copies only the tensors that changed.

A backend is built once per architecture and evaluation set; ``bind(model)`` takes a model of that
architecture (the baseline or any working copy) and returns ``run(index) -> logits``, where ``index``
selects items of the evaluation set (a slice or an index array) and the logits come back as a CPU
tensor. Binding reads the model's current weights, so one exported graph serves every recipe: no
re-export per slider move. Results equal eager PyTorch up to float rounding (checked when the
engine picks a backend: ``pet_core.evaluation.engine``).
"""

from __future__ import annotations

import copy
import io
import threading
import weakref
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pet_core.accuracy import logits_of

Run = Callable[[Any], torch.Tensor]
INPUT = "x"


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy with every floating parameter and buffer scaled by its own random factors in [1, 1.25)
    (signs kept: a variance stays positive): no two tensors are equal, unless they are one tensor."""
    twin = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(twin.parameters()) + list(twin.buffers()):
            if t.is_floating_point():
                t.mul_(1 + 0.25 * torch.rand(t.shape, generator=gen, dtype=t.dtype))
    return twin


class EagerBackend:
    """The model itself, under ``torch.inference_mode`` (the reference every other backend must equal)."""

    name = "eager"

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def bind(self, model: nn.Module) -> Run:
        device = _device_of(model)

        def run(index: Any) -> torch.Tensor:
            with torch.inference_mode():
                return logits_of(model(self.x[index].to(device))).float().cpu()
        return run


class OnnxRuntimeBackend:
    """The architecture exported once to ONNX; ``bind`` opens a session of that graph with the model's
    current tensors written in as its initializers, so ONNX Runtime prepacks them as it does for any
    model: as fast as the dense model exported the usual way, with no re-export (no tracing) per move,
    only a copy of the weights. The session is kept per model until one of its tensors changes.

    Raises whatever the exporter raises for a model it cannot trace; the engine then keeps eager.
    """

    name = "onnxruntime"

    def __init__(self, model: nn.Module, x: torch.Tensor, threads: int | None = None) -> None:
        import onnx

        from pet_core.export.onnx_export import _quiet

        self.x_np = x.numpy()
        self.threads = threads or torch.get_num_threads()
        buf = io.BytesIO()
        with _quiet():   # exported from a copy whose tensors all differ: the exporter merges equal ones
            torch.onnx.export(perturbed(model, seed=1), (x[:2],), buf, dynamo=False, input_names=[INPUT],
                              output_names=["logits"], dynamic_axes={INPUT: {0: "batch"}},
                              do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
        graph = onnx.load_from_string(buf.getvalue())
        keys = set(model.state_dict())
        # a parameter or buffer is written in at bind time; the graph's own values (the twin's) are dropped
        self.fed = [init.name for init in graph.graph.initializer if init.name in keys]
        kept = [init for init in graph.graph.initializer if init.name not in keys]
        del graph.graph.initializer[:]
        graph.graph.initializer.extend(kept)
        self.template = graph
        self._sessions: dict[int, tuple] = {}
        self._lock = threading.Lock()
        self.output = self._session(model)[0].get_outputs()[0].name

    def _session(self, model: nn.Module) -> tuple:
        """(session, ...) for ``model``'s current tensors: the kept one while none of them changed."""
        import onnxruntime as ort

        state = model.state_dict()
        tensors = [state[name].detach().contiguous() for name in self.fed]
        mark = tuple((t.data_ptr(), t._version) for t in tensors)
        key = id(model)
        with self._lock:
            kept = self._sessions.get(key)
            if kept is not None and kept[1] == mark:
                return kept
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")   # a shared server's cores
        from onnx import ModelProto, numpy_helper

        graph = ModelProto()
        graph.CopyFrom(self.template)
        graph.graph.initializer.extend(numpy_helper.from_array(t.numpy(), name) for name, t in zip(self.fed, tensors))
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        kept = (session, mark)
        with self._lock:
            if key not in self._sessions:
                weakref.finalize(model, self._sessions.pop, key, None)
            self._sessions[key] = kept
        return kept

    def bind(self, model: nn.Module) -> Run:
        session = self._session(model)[0]

        def run(index: Any) -> torch.Tensor:
            return torch.from_numpy(session.run([self.output], {INPUT: self.x_np[index]})[0])
        return run


class CudaBackend:
    """A mirror of each bound model on the GPU, kept in step by copying only the tensors whose storage
    or version changed since the last bind; the evaluation inputs live on the GPU once. fp32 with TF32
    matmuls off, so predictions equal the CPU's up to float rounding (no mixed precision here)."""

    name = "cuda"

    def __init__(self, x: torch.Tensor, device: str | torch.device = "cuda") -> None:
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self._mirrors: dict[int, tuple[nn.Module, dict[str, tuple[int, int]]]] = {}
        self._lock = threading.Lock()

    def _mirror(self, model: nn.Module) -> tuple[nn.Module, dict[str, tuple[int, int]]]:
        key = id(model)
        with self._lock:
            if key not in self._mirrors:
                self._mirrors[key] = (copy.deepcopy(model).to(self.device).eval(), {})
                weakref.finalize(model, self._mirrors.pop, key, None)
            return self._mirrors[key]

    def bind(self, model: nn.Module) -> Run:
        mirror, seen = self._mirror(model)
        target = mirror.state_dict()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                mark = (tensor.data_ptr(), tensor._version)
                if seen.get(name) != mark:        # only what apply() rewrote since the last bind
                    target[name].copy_(tensor, non_blocking=True)
                    seen[name] = mark

        def run(index: Any) -> torch.Tensor:
            if isinstance(index, np.ndarray):
                index = torch.as_tensor(index, device=self.device)
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                with torch.inference_mode():
                    return logits_of(mirror(self.x[index])).float().cpu()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev
        return run


__all__ = ["CudaBackend", "EagerBackend", "OnnxRuntimeBackend", "Run", "perturbed"]
