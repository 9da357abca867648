"""What a compression method declares, and the base its config and behaviour build on.

A method is one module: a frozen config dataclass (a :class:`StepConfig`, its fields made with
:func:`pet_core.fields.spec_field`) and a method object (a :class:`PruneMethod`,
:class:`CodeMethod` or :class:`FactorMethod`) that the registry (``pet_core.methods``) lists. The
recipe, ``python -m pet_core steps``, the pipeline, the size accounting, the packed coding, QAT,
the Compress controls and the Pareto labels all iterate that registry; nothing else names a method.

A method only decides *what* (a mask, codes, factors); the pipeline (``pet_core.pipeline``) does
the surgery, as ``torch.nn.utils.prune`` lets a method define only ``compute_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from torch import Tensor, nn

from pet_core.errors import PetError
from pet_core.fields import check_fields, check_value


@dataclass(frozen=True)
class StepConfig:
    """Base of every method config: validated on construction, hashable, round-trips as data.

    ``given`` records the keys a recipe gave, so :meth:`to_dict` writes back exactly those (a
    recipe saved and loaded again is unchanged); it takes no part in equality. Subclasses list
    mutually exclusive fields in ``ONE_OF`` (exactly one of each pair must be set).
    """

    ONE_OF: ClassVar[tuple[tuple[str, str], ...]] = ()
    given: frozenset = field(default=frozenset(), kw_only=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = getattr(self, "method", None) or self.step_name()
        for f in self.data_fields():
            value = check_value(f.name, getattr(self, f.name), f.metadata, where)
            object.__setattr__(self, f.name, value)        # normalised: 1 -> 1.0 for a float field
        for a, b in self.ONE_OF:
            if (getattr(self, a) is None) == (getattr(self, b) is None):
                raise PetError(f"{where} needs exactly one of {a} or {b}")
        self.check()

    def check(self) -> None:
        """Rules across fields beyond ``ONE_OF`` (override; raise PetError)."""

    @classmethod
    def merge(cls, base: dict[str, Any] | None, override: dict[str, Any]) -> dict[str, Any]:
        """A layer override's fields on top of the default's (see :func:`merge_fields`)."""
        return merge_fields(cls, base, override)

    @classmethod
    def step_name(cls) -> str:
        return getattr(cls, "STEP", cls.__name__)

    @classmethod
    def data_fields(cls) -> list:
        return [f for f in fields(cls) if f.name != "given"]

    @classmethod
    def from_fields(cls, data: dict[str, Any], where: str) -> "StepConfig":
        """The config from a recipe's fields, each checked with ``where`` in its message."""
        checked = check_fields(data, {f.name: f.metadata for f in cls.data_fields()}, where, cls.ONE_OF)
        try:
            return cls(**checked, given=frozenset(checked))
        except PetError as exc:
            text = str(exc)
            raise PetError(text if text.startswith("recipe:") else f"recipe: {where}: {text}") from None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a recipe writes them: the given ones, else every field that is set."""
        if self.given:
            names = [f.name for f in self.data_fields() if f.name in self.given]
        else:
            names = [f.name for f in self.data_fields() if getattr(self, f.name) is not None]
        return {name: getattr(self, name) for name in names}


def merge_fields(config: type, base: dict[str, Any] | None, override: dict[str, Any]) -> dict[str, Any]:
    """A layer override on top of the default's fields: field by field.

    Setting one field of a ``ONE_OF`` pair drops the other. An override that names a different
    ``method`` keeps only the fields that method also has (l1_channel keeps magnitude's sparsity).
    """
    base = dict(base or {})
    if "method" in override and base.get("method", override["method"]) != override["method"]:
        known = {f.name for f in config.data_fields()}
        base = {k: v for k, v in base.items() if k in known}     # what the new method also has
    for a, b in config.ONE_OF:
        for x, y in ((a, b), (b, a)):
            if x in override:
                base.pop(y, None)
    base.update(override)
    return base


# --- what methods return ------------------------------------------------------------------------

@dataclass
class Pruned:
    """A prune method's decision for one layer's stored tensors."""

    masks: list[Tensor | None]             # bool keep mask per stored tensor (its shape), None: all kept
    threshold: float | None = None         # the score threshold used, if any (drawn on histograms)
    rows: Tensor | None = None             # (out,) kept output channels, when whole channels go (bias follows)


@dataclass
class Coded:
    """A coding method's result for one stored tensor."""

    values: Tensor                         # effective values, the tensor's shape; pruned positions exactly 0
    value_bits: int                        # bits per stored value (code or index)
    overhead_bits: int                     # scales, offsets, codebook
    value_format: str                      # "int4", "shared16", ...
    levels: list[float] | None = None      # the values a weight can take, to draw on histograms
    codes: dict[str, Tensor | None] = field(default_factory=dict)   # StoredTensor fields for the packed file


@dataclass
class Factored:
    """A factor method's result: ``weight ≈ first (out, r) @ second (r, in_flat)``."""

    first: Tensor
    second: Tensor
    rank: int
    singular_values: Tensor
    values: Tensor                         # the reconstruction, the weight's shape


@dataclass
class Trainable:
    """How a coding trains (QAT): a parametrization of ``weight``, its description, and, when the
    trained tensor is not the weight itself (a codebook), the value it starts from."""

    parametrization: nn.Module
    description: str
    start: Tensor | None = None


class Method:
    """A registered method. ``step`` is its recipe key; ``name`` its ``method:`` value (or the step)."""

    step: ClassVar[str]
    name: str
    config: type
    summary: str
    choice_label: str = ""              # the picker's label, when not the name ("k-bit levels")
    table_field: str | None = None      # the field the per-layer table edits (for a step's first method)
    example: dict = {}                  # settings the test matrix and docs use (a typical, valid config)

    def label(self, cfg: Any) -> str:
        """A short label for plots and tables: 'magnitude 90% global', 'int4 sym per_channel'."""
        raise NotImplementedError

    def example_fields(self) -> dict[str, Any]:
        """The recipe fields of :attr:`example` (``method`` included where the step has several)."""
        has_method = "method" in {f.name for f in self.config.data_fields()}
        return {"method": self.name, **self.example} if has_method else dict(self.example)

    def make_config(self, **values: Any) -> Any:
        """The config from keyword fields (``method`` filled in for prune methods)."""
        if "method" in {f.name for f in self.config.data_fields()}:
            values.setdefault("method", self.name)
        try:
            return self.config(**values)
        except TypeError as exc:
            raise PetError(f"bad settings for method {self.name}: {exc}") from None


class PruneMethod(Method):
    """Chooses which stored values to keep. ``structured``: whole output channels (bias follows)."""

    step = "prune"
    structured: bool = False
    retrainable: bool = False      # masks can be recomputed by magnitude during training (gradual, lottery)
    keeps_own_mask: bool = False   # re-applied to its own masked result it keeps exactly the same weights

    def masks(self, stored: list[Tensor], weight: Tensor, cfg: Any, threshold: float | None) -> Pruned:
        """Keep masks for ``stored`` (the weight, or its low-rank factors); ``weight`` is the full
        (reconstructed) weight; ``threshold`` is the shared global threshold, when in global scope."""
        raise NotImplementedError

    def global_key(self, cfg: Any) -> Any:
        """Layers with the same non-None key share one threshold (global scope); None: per layer."""
        return None

    def global_scores(self, stored: list[Tensor]) -> list[Tensor]:
        """The scores a global threshold is chosen from (only for methods with a ``global_key``)."""
        raise NotImplementedError

    def threshold(self, scores: Any, cfg: Any) -> Any:
        """The cut of each member of a global group (hashable; equal when nothing changed), from the
        group's index of scores: a list, one per member, in the group's order."""
        raise NotImplementedError

    def layouts(self, cfg: Any) -> tuple:
        """Storage layouts this pattern makes possible (``pet_core.encoding.Layout``), besides the core ones."""
        return ()

    def packed_layouts(self) -> tuple:
        """Layouts a packed file written with this method may name (for checking and decoding)."""
        return ()


class CodeMethod(Method):
    """Stores the kept values in fewer bits (uniform levels, a codebook).

    Its packed coding: the ``kind`` names it writes into a manifest, the unsigned symbols and
    float32 overhead of a coded tensor, the checks of its manifest fields, and the decoding.
    """

    packed_kinds: tuple[str, ...] = ()

    def code(self, t: Tensor, mask: Tensor | None, cfg: Any) -> Coded:
        raise NotImplementedError

    def packed_symbols(self, t: Any) -> tuple[str, Any, bytes, dict]:
        """(kind, unsigned symbols (n,) int64 of every position, overhead bytes, manifest fields) of a
        ``StoredTensor`` this method coded (its ``codes`` and ``codebook``/``scale``/``offset``)."""
        raise NotImplementedError

    def packed_check(self, kind: str, meta: dict, where: str, n: int, get_int: Any) -> tuple[int, ...]:
        """Check this kind's manifest fields (PetError naming the first bad one); returns the
        allowed value bits."""
        raise NotImplementedError

    def packed_overhead(self, kind: str, meta: dict) -> int:
        """Bytes of float32 overhead before the streams (checked fields)."""
        raise NotImplementedError

    def packed_decode(self, kind: str, meta: dict, floats: Tensor, symbols: Any, idx: Tensor, n: int) -> Tensor:
        """float32 values (len(idx),) of the symbols at flat positions ``idx``; ``floats`` the overhead."""
        raise NotImplementedError

    def qat(self, module: nn.Module, cfg: Any, mask: Tensor | None, fixed_masks: bool) -> Trainable | None:
        """How ``module.weight`` trains through this coding (QAT); None: train fp32 and apply the
        coding after training. ``fixed_masks`` is False when masks change during training."""
        return None


class FactorMethod(Method):
    """Replaces a weight by two thin factors, which the later steps act on."""

    def factor(self, weight: Tensor, cfg: Any) -> Factored:
        raise NotImplementedError


class FloatMask:
    """A module's bool ``mask`` buffer as a float tensor of the weight's dtype, cached.

    ``w * bool_mask`` promotes the mask on every call (measured ~9x slower than ``w * float_mask``
    for a 700k-weight layer). The cache is rebuilt whenever the mask changes: a new tensor
    (``.to()``, ``deepcopy``) or an in-place write (``set_mask``, ``load_state_dict``) bumps
    ``data_ptr`` or ``_version``.
    """

    _fmask: Tensor | None = None
    _fkey: tuple | None = None

    def float_mask(self, like: Tensor) -> Tensor:
        m = self.mask
        key = (m.data_ptr(), m._version, m.device, like.dtype)
        if self._fkey != key or self._fmask is None:
            self._fmask = m.to(like.dtype)
            self._fkey = key
        return self._fmask
