"""Token datasets for text models: sequence classification and causal language modelling.

* ``sequence_classification``: an ``.npz`` with integer ``x`` (N, L) token ids and ``y`` (N,) labels
  (optionally ``x_test``/``y_test``, else the same stratified 75/25 split as images).
* ``causal_lm``: an ``.npz`` with an integer 1-D ``tokens`` stream (optionally ``tokens_test``) or
  integer ``x`` (N, L) blocks (optionally ``x_test``), or a UTF-8 ``.txt`` file tokenised with the
  model folder's tokenizer. A stream is cut into non-overlapping blocks of
  ``min(max_length, 128)`` tokens and the ragged tail is dropped (a stream shorter than one block
  is one shorter block); without a test stream the test split *is* the training split (a language
  dataset here is for measuring perplexity), and ``y`` is an empty int64 tensor.

Token ids stay int64, never standardised nor reshaped; each is checked against the model's
vocabulary. Files are read within ``PET_MAX_DATASET_BYTES`` (:func:`pet_core.npz.max_dataset_bytes`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pet_core.bounded import shown
from pet_core.errors import PetError
from pet_core.npz import max_dataset_bytes, read_npz
from pet_core.splits import check_labels, fingerprint, given_or_split

TOKEN_TASKS = ("sequence_classification", "causal_lm")
MAX_BLOCK_TOKENS = 128     # longer blocks cost (L x vocab) logits each and say little more about a model


def read_token_dataset(name: str, task: str, *, vocab_size: int | None = None, max_length: int | None = None,
                       tokenizer_dir: str | Path | None = None) -> dict:
    """The fields of a :class:`pet_core.data.Dataset` for ``task`` from ``name`` (a ``.npz``, or a
    ``.txt`` for ``causal_lm``); :func:`pet_core.data.load_dataset` wraps them.

    Raises:
        PetError: one line naming the file: missing arrays, non-integer or out-of-vocabulary ids,
            blocks longer than the model takes, or a text file without a tokenizer.
    """
    if task not in TOKEN_TASKS:
        raise PetError(f"task {shown(task)} is not a token task ({', '.join(TOKEN_TASKS)})")
    key = str(name).strip()
    path = Path(key).expanduser()
    if key.lower() in ("digits", "mnist"):
        raise PetError(f"{key} is an image dataset; a {task} model needs token data "
                       f"({'PATH.npz with x and y' if task != 'causal_lm' else 'PATH.npz with tokens or x, or PATH.txt'})")
    if key.lower().endswith(".txt"):
        if task != "causal_lm":
            raise PetError(f"{path.name}: a text file is a causal_lm dataset; {task} needs a .npz with x and y")
        tokens = _read_text(path, tokenizer_dir)
        return _lm_dataset(path.stem, tokens, None, None, None, vocab_size, max_length, path.name)
    if not key.lower().endswith(".npz"):
        raise PetError(f"unknown dataset {shown(name)} for a {task} model; use a path to a .npz"
                       + (" or .txt file" if task == "causal_lm" else " file"))
    if not path.is_file():
        raise PetError(f"dataset file {path} not found")
    arrays, found = read_npz(path, ("x", "y", "x_test", "y_test", "tokens", "tokens_test"))
    if task == "causal_lm":
        if "tokens" not in arrays and "x" not in arrays:
            raise PetError(f"{path.name}: a causal_lm dataset needs an integer 'tokens' (1-D) or 'x' (N, L) "
                           f"array; found keys {shown(found)}")
        return _lm_dataset(path.stem, arrays.get("tokens"), arrays.get("tokens_test"),
                           arrays.get("x") if "tokens" not in arrays else None,
                           arrays.get("x_test") if "tokens" not in arrays else None,
                           vocab_size, max_length, path.name)
    return _classification_dataset(path, arrays, found, vocab_size, max_length)


def _token_ids(a: np.ndarray, ndim: int, where: str, key: str, vocab_size: int | None) -> np.ndarray:
    """``a`` as int64 token ids of ``ndim`` dimensions, each in [0, vocab_size)."""
    if a.dtype.kind not in "iu":
        raise PetError(f"{where}: {key!r} must hold integer token ids, found dtype {a.dtype}")
    if a.ndim != ndim:
        want = "(N,)" if ndim == 1 else "(N, L)"
        raise PetError(f"{where}: {key!r} has shape {a.shape}; expected {want} token ids")
    if a.size and int(a.min()) < 0:
        raise PetError(f"{where}: {key!r} holds a negative token id {int(a.min())}")
    if a.size and vocab_size is not None and int(a.max()) >= vocab_size:
        raise PetError(f"{where}: {key!r} holds token id {int(a.max())}, outside the model's vocabulary of "
                       f"{vocab_size}")
    return a.astype(np.int64)


def _check_length(x: np.ndarray, where: str, key: str, max_length: int | None) -> None:
    if max_length is not None and x.ndim == 2 and x.shape[1] > max_length:
        raise PetError(f"{where}: {key!r} blocks have {x.shape[1]} tokens; the model takes at most {max_length}")


def _fields(name, x_tr, y_tr, x_te, y_te, num_classes: int, fp: str, task: str) -> dict:
    """Dataset fields from numpy arrays (token ids and labels become int64 tensors)."""
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr)]
    tensors += [tensors[0] if x_te is x_tr else torch.from_numpy(np.ascontiguousarray(x_te)),
                torch.from_numpy(np.ascontiguousarray(y_te))]
    return dict(zip(("x_train", "y_train", "x_test", "y_test"), tensors), name=name, num_classes=num_classes,
                fingerprint=fp, task=task)


def _classification_dataset(path: Path, arrays: dict, found: list, vocab_size, max_length) -> dict:
    where = path.name
    for key in ("x", "y"):
        if key not in arrays:
            raise PetError(f"{where}: missing array {key!r}; found keys {shown(found)}")
    x, y = _token_ids(arrays["x"], 2, where, "x", vocab_size), check_labels(arrays["y"], path, "y")
    _check_length(x, where, "x", max_length)
    if len(x) != len(y):
        raise PetError(f"{where}: x has {len(x)} sequences but y has {len(y)} labels")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise PetError(f"{where}: give both 'x_test' and 'y_test' or neither; found keys {shown(found)}")
    test = None if "x_test" not in arrays else (_token_ids(arrays["x_test"], 2, where, "x_test", vocab_size),
                                                check_labels(arrays["y_test"], path, "y_test"))
    x_tr, x_te, y_tr, y_te = given_or_split(x, y, test, where, "sequences")
    num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    fp = fingerprint(_tag("sequence_classification", 0), x_tr, y_tr, x_te, y_te)
    return _fields(path.stem, x_tr, y_tr, x_te, y_te, num_classes, fp, "sequence_classification")


def _tag(task: str, block: int) -> np.ndarray:
    """The task and block length as bytes, so the same file read another way has another fingerprint."""
    return np.frombuffer(f"{task}|{block}".encode(), dtype=np.uint8)


def block_length(max_length: int | None) -> int:
    """Tokens per block: the model's limit, at most :data:`MAX_BLOCK_TOKENS`."""
    return min(max_length or MAX_BLOCK_TOKENS, MAX_BLOCK_TOKENS)


def _blocks(stream: np.ndarray, block: int, where: str, key: str) -> np.ndarray:
    """A 1-D stream cut into (N, block) rows, the ragged tail dropped; a short stream is one row."""
    if len(stream) < 2:
        raise PetError(f"{where}: {key!r} has {len(stream)} tokens; perplexity needs at least 2")
    if len(stream) < block:
        return stream[None]                                    # (1, len)
    n = len(stream) // block
    return stream[:n * block].reshape(n, block)                # (n, block)


def _lm_dataset(name: str, tokens, tokens_test, x, x_test, vocab_size, max_length, where: str) -> dict:
    """Blocks of token ids for perplexity: from streams (cut into blocks) or given blocks."""
    block = block_length(max_length)
    if tokens is not None:
        x_tr = _blocks(_token_ids(tokens, 1, where, "tokens", vocab_size), block, where, "tokens")
        x_te = x_tr if tokens_test is None else _blocks(
            _token_ids(tokens_test, 1, where, "tokens_test", vocab_size), block, where, "tokens_test")
    else:
        x_tr = _token_ids(x, 2, where, "x", vocab_size)
        x_te = x_tr if x_test is None else _token_ids(x_test, 2, where, "x_test", vocab_size)
        for key, a in (("x", x_tr), ("x_test", x_te)):
            _check_length(a, where, key, max_length)
            if a.shape[1] < 2 or len(a) == 0:
                raise PetError(f"{where}: {key!r} has shape {a.shape}; perplexity needs blocks of >= 2 tokens")
    empty = np.zeros(0, dtype=np.int64)
    fp = fingerprint(_tag("causal_lm", block), x_tr, x_te)
    return _fields(name, x_tr, empty, x_te, empty.copy(), 0, fp, "causal_lm")


def _read_text(path: Path, tokenizer_dir) -> np.ndarray:
    """A UTF-8 text file within the dataset budget, tokenised by the model folder's tokenizer."""
    from pet_core.hf import load_hf_tokenizer

    if tokenizer_dir is None:
        raise PetError(f"{path.name}: a text dataset needs a Hugging Face model folder with a tokenizer")
    if not path.is_file():
        raise PetError(f"dataset file {path} not found")
    limit = max_dataset_bytes()
    size = path.stat().st_size
    if size > limit // 8:      # each character can become one int64 token id
        raise PetError(f"dataset file {path.name} is {size:,} bytes, more than the {limit // 8:,} allowed for "
                       f"text (PET_MAX_DATASET_BYTES / 8)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PetError(f"{path.name}: not UTF-8 text (byte {e.start})") from None
    tokenizer = load_hf_tokenizer(tokenizer_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


__all__ = ["MAX_BLOCK_TOKENS", "TOKEN_TASKS", "block_length", "read_token_dataset"]
