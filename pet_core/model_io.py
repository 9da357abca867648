"""Load user model files (state_dict, safetensors, packed; trusted-only code formats) and save state_dicts.

Formats that run code from the file when loaded (a pickled module, TorchScript, a ``torch.export``
program) load only with ``trust_code``; without it they are refused from their zip member names or
the safe unpickler's refusal, before any of their code is deserialised. Every problem with the file
becomes a one-line :class:`PetError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from pet_core.accuracy import logits_of
from pet_core.errors import PetError
from pet_core.factory import build_from_factory, check_factory_name, is_factory_arch
from pet_core.packed.container import MAGIC as PACKED_MAGIC
from pet_core.safetensors_header import check_safetensors_header
from pet_core.zoo import build_model, list_models, model_info

TRUST_CODE_ENV = "PET_TRUST_CODE"  # the app offers trust only when the server was started with this set to 1
CODE_KINDS = frozenset({"pickle", "torchscript", "export"})  # info["kind"] of files that needed trust


def env_trusts_code(environ: dict | None = None) -> bool:
    """True when the server owner set ``PET_TRUST_CODE=1``: only then may the app offer trust."""
    return (os.environ if environ is None else environ).get(TRUST_CODE_ENV, "").strip() == "1"


class NeedsInputShape(PetError):
    """A state_dict for a zoo architecture came without an input shape: the zoo builds per shape."""


def _refused(name: str, what: str) -> PetError:
    """The one-line refusal of a code-carrying file loaded without trust."""
    return PetError(f"model file {name} {what}, which runs code from the file when loaded; "
                    f"refused (start with --trust-code / {TRUST_CODE_ENV}=1 to allow)")


def save_state_dict(model: nn.Module, path: str | Path) -> None:
    """Save ``model``'s weights: safetensors for a ``.safetensors`` path, else ``torch.save``."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        # safetensors refuses tensors that share storage, so give each its own copy
        save_file({k: v.clone() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def load_model_file(
    path: str | Path,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    *,
    arch: str | None = None,
    trust_code: bool = False,
    allow_pickle: bool | None = None,
    task: str = "image_classification",
) -> tuple[nn.Module, dict]:
    """Load a model file for inputs of ``input_shape`` and ``num_classes`` outputs; returns (model, info).

    info is {"kind": "torchscript"|"export"|"state_dict"|"safetensors"|"pickle"|"packed", "arch": str|None,
    "path": str} (and "factory" for a ``module:factory`` architecture). State dicts are matched to a zoo
    architecture (``arch`` or inferred from keys and shapes), or, when ``arch`` is ``"module:factory"``,
    loaded strictly into the model that factory builds (:mod:`pet_core.factory`; needs ``trust_code``).
    ``trust_code`` allows the formats that run code from the file (pickle, TorchScript, torch.export);
    ``allow_pickle`` is its deprecated old name. A torch.export program contributes its weights, matched
    to a zoo architecture like a state_dict.

    ``input_shape`` is (C, H, W) for images or (L,) for token tasks (``task``, see :func:`check_forward`).
    Without it (weights only, no dataset) the forward check is skipped, except for a packed file, whose
    manifest gives its shape; a zoo state_dict then raises :class:`NeedsInputShape`.

    Raises:
        PetError: one line naming the file, also when a code-carrying file comes without trust.
    """
    if allow_pickle is not None:
        warnings.warn("allow_pickle is deprecated; use trust_code", DeprecationWarning, stacklevel=2)
        trust_code = trust_code or allow_pickle
    path = Path(path)
    name = path.name
    if is_factory_arch(arch):          # refused before the file is read or the module imported
        check_factory_name(arch)
        if not trust_code:
            raise PetError(f"architecture {arch} imports and runs that module's code; refused "
                           f"(start with --trust-code / {TRUST_CODE_ENV}=1 to allow)")
    if not path.is_file():
        raise PetError(f"model file {path} not found")
    size = path.stat().st_size
    if size == 0:
        raise PetError(f"model file {name} is empty")
    with path.open("rb") as f:
        head = f.read(1024)

    if head[:8] == PACKED_MAGIC:   # our packed format: rebuilds the compressed model bit-exactly
        from pet_core.packed import load_packed

        model, info = load_packed(path, trust_code=trust_code)
        ident = info["model"]
        if input_shape is None and ident.get("input_shape"):
            input_shape = tuple(ident["input_shape"])
            num_classes = ident.get("num_classes")
        if input_shape is not None:
            check_forward(model, input_shape, num_classes, name, task)
        return model.eval().cpu(), {"kind": "packed", "arch": ident.get("arch"), "path": str(path), "model": ident,
                                    "task": ident.get("task")}
    if head[:4] == b"PK\x03\x04":
        model, kind = _load_zip(path, trust_code)
    elif _looks_like_safetensors(head, size) or path.suffix == ".safetensors":
        model, kind = _load_safetensors(path), "safetensors"
    elif head[:1] == b"\x80":  # pickle protocol opcode: legacy (non-zip) torch.save
        model, kind = _torch_load(path, trust_code), "state_dict"
    elif path.suffix.lower() == ".onnx" or _looks_like_onnx(head):
        raise PetError(f"model file {name} is ONNX, which is an export format here, not an input: load the "
                       f"model it was exported from (a Hugging Face folder, a state_dict, TorchScript)")
    elif _is_text(head):
        raise PetError(f"model file {name} is a text file, not a PyTorch/safetensors model")
    else:
        raise PetError(f"model file {name} is not a recognised model format (unknown bytes {head[:4].hex()})")

    if isinstance(model, nn.Module):  # TorchScript, torch.export or unpickled: all trusted by now
        if kind == "state_dict":
            kind = "pickle"  # a whole module came back from a trusted torch.load
        if input_shape is not None:
            check_forward(model, input_shape, num_classes, name, task)
        return model.eval().cpu(), {"kind": kind, "arch": None, "path": str(path)}

    state = _unwrap_state_dict(model, name)
    if is_factory_arch(arch):
        built = _load_factory(state, arch, num_classes, name)
        if input_shape is not None:
            check_forward(built, input_shape, num_classes, name, task)
        return built.eval().cpu(), {"kind": kind, "arch": None, "factory": arch, "path": str(path)}
    if input_shape is None:
        raise NeedsInputShape(f"model file {name} is a state_dict for a zoo architecture, which is built for an "
                              f"input shape: give a dataset")
    built, arch_name = _match_arch(state, input_shape, num_classes, arch, name)
    return built.eval().cpu(), {"kind": kind, "arch": arch_name, "path": str(path)}


# ---------------------------------------------------------------- format readers


def _is_text(head: bytes) -> bool:
    """True when the first bytes decode as UTF-8 without NULs (a text file, not a binary model)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start > len(head) - 4  # a multi-byte char cut at the read boundary
    return True


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto: field 1 (ir_version, a small varint), then the producer's name."""
    return len(head) > 2 and head[0] == 0x08 and 1 <= head[1] <= 20 and b"\x12" in head[2:4]


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: little-endian u64 header length, then a JSON object."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _zip_kind(names: list[str]) -> str:
    """"torchscript", "export" or "torch_save", from the member names alone (nothing is unpickled)."""
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith(("/archive_format", "serialized_exported_program.json"))
           or ("/models/" in n and n.endswith(".json")) for n in names):
        return "export"
    return "torch_save"


def _load_zip(path: Path, trust_code: bool):
    """A zip archive: TorchScript, a torch.export program, or a torch.save file."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError):
        raise PetError(f"model file {path.name} is truncated or corrupt (zip archive ended early)") from None
    if bad is not None:
        raise PetError(f"model file {path.name} is corrupt (zip member {bad} fails its CRC check)")
    kind = _zip_kind(names)
    if kind == "torchscript":
        if not trust_code:
            raise _refused(path.name, "is TorchScript")
        try:
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
        except Exception as e:
            raise PetError(f"model file {path.name} is a broken TorchScript archive: {_first_line(e)}") from None
    if kind == "export":
        if not trust_code:
            raise _refused(path.name, "is a torch.export program")
        try:  # its weights only: a graph traced for one batch size and no layer modules is no workbench model
            return {k: v for k, v in torch.export.load(str(path)).state_dict.items()}, "export"
        except Exception as e:
            raise PetError(f"model file {path.name} is a broken torch.export archive: {_first_line(e)}") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise PetError(f"model file {path.name} is a zip archive but not a PyTorch model (no data.pkl)")
    return _torch_load(path, trust_code), "state_dict"


def _torch_load(path: Path, trust_code: bool):
    """torch.load with weights_only; full unpickling (which runs code) only with trust."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e).lower() and "weights only" not in str(e).lower():
            raise PetError(f"model file {path.name} is truncated or corrupt ({_first_line(e)})") from None
        if not trust_code:
            raise _refused(path.name, "holds a pickled module (Python objects, not only tensors)") from None
    except Exception as e:
        raise PetError(f"model file {path.name} is truncated or corrupt ({_first_line(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise PetError(f"model file {path.name} could not be unpickled: {_first_line(e)}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, once its header is checked."""
    from safetensors.torch import load_file

    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise PetError(f"model file {path.name} is truncated or corrupt safetensors ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """First line of an exception message, shortened: PetError messages must stay one line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]


# ---------------------------------------------------------------- state dicts and architectures


def _unwrap_state_dict(obj, name: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a plain or nested ({"state_dict": ...}) checkpoint."""
    for _ in range(3):  # checkpoints nest at most a level or two
        if isinstance(obj, dict):
            for key in ("state_dict", "model_state_dict", "model", "net"):
                if isinstance(obj.get(key), (dict, nn.Module)):
                    obj = obj[key]
                    break
            else:
                break
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise PetError(f"model file {name} holds {type(obj).__name__}, not a state_dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PetError(f"model file {name} holds a dict without tensors; keys: {list(obj)[:6]}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}  # saved from DataParallel
    return tensors


def _build_for(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``arch`` built for ``input_shape`` grown to its min_hw, as adapt_dataset does for data."""
    c, h, w = input_shape
    side = model_info(arch).min_hw
    return build_model(arch, (c, max(h, side), max(w, side)), num_classes)


def _first_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """Human description of the first key/shape difference, or '' when they match."""
    for k, v in expected.items():
        if k not in got:
            return f"missing key {k}"
        if tuple(got[k].shape) != tuple(v.shape):
            return f"{k} has shape {tuple(got[k].shape)}, expected {tuple(v.shape)}"
    extra = [k for k in got if k not in expected]
    return f"unexpected key {extra[0]}" if extra else ""


def _match_arch(state, input_shape, num_classes, arch, name) -> tuple[nn.Module, str]:
    """Build the zoo model whose keys and shapes equal ``state`` and load it."""
    candidates = [arch] if arch else [m.name for m in list_models()]
    best, best_score, best_reason = None, float("-inf"), ""
    for cand in candidates:
        model = _build_for(cand, input_shape, num_classes)
        expected = model.state_dict()
        reason = _first_mismatch(expected, state)
        if not reason:
            # dtype differences (e.g. a half-precision save) are fine: load_state_dict copies/casts
            model.load_state_dict(state, strict=True)
            return model, cand
        score = sum(1 for k, v in expected.items() if k in state and tuple(state[k].shape) == tuple(v.shape))
        score -= sum(1 for k in state if k not in expected)
        if score > best_score:
            best, best_score, best_reason = cand, score, reason
    shape = "x".join(str(v) for v in input_shape)
    if arch:
        raise PetError(f"model file {name} does not match architecture {arch} for {shape} inputs: {best_reason}")
    raise PetError(
        f"model file {name} matches no zoo architecture for {shape} inputs, {num_classes} classes; "
        f"closest is {best}: {best_reason}"
    )


def _load_factory(state: dict, arch: str, num_classes: int | None, name: str) -> nn.Module:
    """The model ``arch`` ("module:factory") builds, with ``state`` loaded strictly."""
    built = build_from_factory(arch, num_classes=num_classes)
    reason = _first_mismatch(built.state_dict(), state)
    if reason:
        raise PetError(f"model file {name} does not match architecture {arch}: {reason}")
    try:
        built.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PetError(f"model file {name} does not load into {arch}: {_first_line(e)}") from None
    return built


def check_forward(model: nn.Module, input_shape: tuple[int, ...], num_classes: int | None, name: str,
                  task: str = "image_classification") -> None:
    """One forward of zeros, checked; say clearly what is wrong when it fails.

    Images: (1, C, H, W) float must give (1, num_classes). Token tasks: (1, L) int64 token ids;
    sequence classification must give (1, num_classes) logits, a causal LM (1, L, vocab). Logits
    are taken from a ModelOutput or tuple with :func:`pet_core.accuracy.logits_of`.
    """
    tokens = task != "image_classification"
    x = torch.zeros(1, *input_shape, dtype=torch.long if tokens else torch.float32)  # (1, L) or (1, C, H, W)
    model.eval()
    try:
        with torch.inference_mode():
            out = logits_of(model(x))
    except Exception as e:
        shape = "x".join(str(v) for v in input_shape)
        what = "token" if tokens else ""
        raise PetError(f"model file {name} fails on {shape} {what + ' ' if what else ''}inputs: "
                       f"{_first_line(e)}") from None
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if task == "causal_lm":
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or tuple(out.shape[:2]) != (1, input_shape[0]):
            raise PetError(f"model file {name} outputs {got} for one block of {input_shape[0]} tokens, "
                           f"expected (1, {input_shape[0]}, vocab) logits")
        return
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        raise PetError(f"model file {name} outputs {got} for one input, expected (1, {num_classes})")

