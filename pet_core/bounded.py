"""Bounded parsing of untrusted input: size caps, a YAML loader that refuses alias bombs, capped zlib.

Everything a user can hand the engine (recipe text, a share link, a packed file's manifest) is
parsed here with a budget, so a 400-byte file cannot make the server allocate gigabytes, and
every refusal is a one-line :class:`PetError`. Error messages quote values through
:func:`shown`, which never prints more than ~200 characters of them, however large they are.

>>> shown(list(range(10**6)))
'[0, 1, 2, 3, ...]'
"""

from __future__ import annotations

import datetime
import os
import zlib
from pathlib import Path
from typing import Any

import yaml

from pet_core.errors import PetError

MAX_TEXT_BYTES = 1 << 20        # recipe text, and a share link once inflated
MAX_DEPTH = 20                  # nesting of mappings and lists (a recipe needs 6)
MAX_NODES = 200_000             # values in a document once aliases are expanded
MAX_ALIASES = 100               # YAML aliases (*name) in one document
SHOWN_CHARS = 200               # the most characters of a value an error message quotes
_ITEMS, _LEVELS, _STR = 4, 3, 60


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, without building the full repr first.

    Containers show their first few items and three levels, huge integers their digit count.
    """
    return cut(_short(value, _LEVELS), limit)


def shown_key(key: Any, limit: int = 60) -> str:
    """A mapping key for a message path (``layers.<key>.prune``): printable text as it is, cut to ``limit``.

    Anything else (numbers, text with a newline or control characters) is quoted as by :func:`shown`,
    so a message stays one line.
    """
    return cut(key, limit) if isinstance(key, str) and key.isprintable() else shown(key, limit)


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` ending in "..." when it is longer than ``limit``."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(v: Any, level: int) -> str:
    if v is None or isinstance(v, (bool, float, datetime.date)):
        return repr(v)
    if isinstance(v, int):
        if v.bit_length() > 128:                       # repr of a 5,000-digit int raises; 400 digits is noise
            return f"<integer of about {int(v.bit_length() * 0.30103) + 1} digits>"
        return repr(v)
    if isinstance(v, (str, bytes)):
        return repr(v[:_STR]) + ("..." if len(v) > _STR else "")
    if isinstance(v, dict):
        if level == 0:
            return "{...}"
        items = [f"{_short(k, level - 1)}: {_short(x, level - 1)}" for k, x in _first(v.items())]
        return "{" + ", ".join(items + ["..."] * (len(v) > _ITEMS)) + "}"
    if isinstance(v, (list, tuple, set, frozenset)):
        left, right = ("[", "]") if isinstance(v, list) else ("(", ")") if isinstance(v, tuple) else ("{", "}")
        if level == 0:
            return left + "..." + right
        if not v and isinstance(v, (set, frozenset)):
            return f"{type(v).__name__}()"
        items = [_short(x, level - 1) for x in _first(v)]
        comma = "," if isinstance(v, tuple) and len(v) == 1 else ""
        return left + ", ".join(items + ["..."] * (len(v) > _ITEMS)) + comma + right
    return f"<{type(v).__name__}>"


def _first(items: Any) -> list:
    out = []
    for item in items:
        if len(out) == _ITEMS:
            break
        out.append(item)
    return out


def env_bytes(name: str, default: int) -> int:
    """A size limit from the environment (``PET_MAX_...``): bytes, with an optional K/M/G suffix."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or len(digits) > 15:
        raise PetError(f"{name} = {shown(text)} must be a number of bytes (e.g. 1G, 512M)")
    return int(digits) * scale


def inflate(data: bytes, max_bytes: int, what: str) -> bytes:
    """zlib-decompress ``data`` into at most ``max_bytes``; PetError if more would come out or it is damaged."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_bytes + 1)     # one byte more than allowed says "too much"
    except zlib.error:
        raise PetError(f"{what} is damaged (not zlib data)") from None
    if len(out) > max_bytes:
        raise PetError(f"{what} inflates to more than {max_bytes:,} bytes (refused)")
    if not inflater.eof or inflater.unused_data:
        raise PetError(f"{what} is damaged (truncated or trailing zlib data)")
    return out


def check_tree(data: Any, what: str) -> None:
    """PetError unless ``data`` (parsed JSON) nests at most MAX_DEPTH deep with at most MAX_NODES values."""
    stack, count = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise PetError(f"{what} has more than {MAX_NODES:,} values (refused)")
        if depth > MAX_DEPTH:
            raise PetError(f"{what} nests deeper than {MAX_DEPTH} levels (refused)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def check_size(text: str | bytes, what: str, max_bytes: int = MAX_TEXT_BYTES) -> None:
    """PetError when ``text`` is longer than ``max_bytes`` (characters count as bytes here)."""
    if len(text) > max_bytes:
        raise PetError(f"{what} is {len(text):,} bytes, more than the {max_bytes:,} allowed (refused)")


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nesting while it composes, before anything is constructed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise PetError(f"YAML uses more than {MAX_ALIASES} aliases (refused)")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise PetError(f"YAML nests deeper than {MAX_DEPTH} levels (refused)")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> None:
    """PetError when the node graph, with every alias expanded, is too big, too deep or cyclic.

    Each distinct node is visited once (post-order, explicit stack), so a billion-laughs document
    costs as many steps as it has lines.
    """
    size: dict[int, tuple[int, int]] = {}           # id(node) -> (values, depth) once expanded
    busy: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            busy.discard(key)
            nodes = 1 + sum(size[id(c)][0] for c in children)
            depth = 1 + max((size[id(c)][1] for c in children), default=0)
            if nodes > MAX_NODES:
                raise PetError(f"YAML expands to more than {MAX_NODES:,} values through its aliases (refused)")
            if depth > MAX_DEPTH:
                raise PetError(f"YAML nests deeper than {MAX_DEPTH} levels through its aliases (refused)")
            size[key] = (nodes, depth)
            continue
        if key in size:
            continue
        if key in busy:
            raise PetError("YAML refers to itself through an alias (refused)")
        busy.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with budgets: size, nesting, aliases and their expansion.

    Raises PetError for text over the budget and for text that is not valid YAML.
    """
    check_size(text, "YAML text")
    loader = None
    try:
        loader = _BoundedLoader(text)                   # reads the stream: may refuse characters already
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except PetError:
        raise
    except (yaml.YAMLError, ValueError, OverflowError) as exc:   # ValueError: bad dates, 5,000-digit ints
        raise PetError(f"not valid YAML: {cut(' '.join(str(exc).split()))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_files(dirs: list, pattern: str, parse, what: str, *, max_files: int, max_bytes: int) -> tuple[list, list[str]]:
    """``parse(text, file_name)`` for each file matching ``pattern`` in each folder of ``dirs``, in order:
    (what parsed, one message per file refused). Files over ``max_bytes`` are refused before they are
    read; at most ``max_files`` per folder are read."""
    items, problems = [], []
    for folder in dirs:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            problems.append(f"{what}s folder {folder} is not a folder")
        files = sorted(folder.glob(pattern)) if folder.is_dir() else []
        for path in files[:max_files]:
            try:
                if path.stat().st_size > max_bytes:
                    raise PetError(f"{what} {path.name}: {path.stat().st_size:,} bytes, more than {max_bytes:,} allowed")
                items.append(parse(path.read_text(encoding="utf-8"), path.name))
            except PetError as exc:
                problems.append(str(exc))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{what} {path.name}: cannot read it ({exc})")
        if len(files) > max_files:
            problems.append(f"{folder}: only the first {max_files} {what}s were read")
    return items, problems
