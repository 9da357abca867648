"""Packed export: one file as small as the size accounting says, loaded back bit-equal.

``save_packed(wb, path, huffman=False, model_info=...)`` writes the workbench's compressed model;
``load_packed(path)`` rebuilds it. See docs in :mod:`pet_core.packed.container` (file layout),
:mod:`pet_core.packed.streams` (per-tensor layouts) and :mod:`pet_core.packed.huffman`.
"""

from pet_core.packed.container import PACKED_VERSION
from pet_core.packed.decode import load_packed
from pet_core.packed.arch import packed_model_info
from pet_core.packed.encode import save_packed

__all__ = ["save_packed", "load_packed", "packed_model_info", "PACKED_VERSION"]
