"""What a schema's declarations mean (updatelab/config_schema.py: `check(ge=1)`, `check(choices=...)`):
whether a value is allowed, and the words for what is. The one reading of them, for a composed config
(updatelab/config_check.py) and for options built in Python (the recipe, the embedder tuning)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

RANGE = ("ge", "gt", "le", "lt")
_PLAIN = {bool: "true or false", str: "a string"}


def _field_kind(schema: type, name: str) -> tuple[set[Any], bool]:
    """The types a schema field allows (`list` for a list field), and whether it may be null."""
    hint = typing.get_type_hints(schema)[name]
    args = set(typing.get_args(hint)) if typing.get_origin(hint) is typing.Union else {hint}
    args = {list if typing.get_origin(a) is list else a for a in args}
    return args - {type(None)}, type(None) in args


def _numeric(types: set[Any], meta: dict) -> str | None:
    """'an integer' / 'a number' when the field holds a number (a range implies one), else None."""
    ranged = bool(meta.keys() & set(RANGE))
    if float in types or (ranged and int not in types):
        return "a number"
    if int in types and (ranged or not types - {int}):
        return "an integer"
    return None


def _range(meta: dict) -> str:
    """'>= 1', '> 0', 'in (0, 1]', 'in [0, 1)', ... ('' without bounds)."""
    lo = ("(", ">", meta["gt"]) if "gt" in meta else ("[", ">=", meta["ge"]) if "ge" in meta else None
    hi = (")", "<", meta["lt"]) if "lt" in meta else ("]", "<=", meta["le"]) if "le" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[2]}, {hi[2]}{hi[0]}"
    return f"{lo[1]} {lo[2]}" if lo else f"{hi[1]} {hi[2]}" if hi else ""


def describe(schema: type, name: str) -> str:
    """What a field accepts, in words: 'an integer >= 1 or null', 'one of constant, cosine', ..."""
    meta = dict(next(f for f in dataclasses.fields(schema) if f.name == name).metadata)
    types, nullable = _field_kind(schema, name)
    parts = []
    kind = _numeric(types, meta)
    if kind:
        parts.append(f"{kind} {_range(meta)}".strip())
    if meta.get("choices") and list in types:
        parts.append(f"a non-empty list of {', '.join(map(str, meta['choices']))}")
    elif meta.get("choices"):
        parts += list(meta["choices"]) if parts else [f"one of {', '.join(map(str, meta['choices']))}"]
    if not parts:  # a type alone (a wrong one is refused at compose time, worded by this)
        parts.append(_PLAIN.get(next(iter(types)), "a value of its type") if len(types) == 1 else "a value of its type")
    if nullable:
        parts.append("null")
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def allowed(schema: type, name: str, v: Any) -> bool:
    """Whether `v` is within what the field `name` of `schema` declares (its type aside: OmegaConf checks that)."""
    meta = next(f for f in dataclasses.fields(schema) if f.name == name).metadata
    if not meta:
        return True  # a type alone: OmegaConf holds a composed value to it
    types, nullable = _field_kind(schema, name)
    if v is None:
        return nullable
    if "choices" in meta and list in types:
        return isinstance(v, list) and bool(v) and all(str(x) in map(str, meta["choices"]) for x in v)
    if "choices" in meta and str(v) in map(str, meta["choices"]):
        return True
    kind = _numeric(types, meta)
    if kind is None:
        return "choices" not in meta  # a plain typed field: OmegaConf checked its type
    ok_type = isinstance(v, int) if kind == "an integer" else isinstance(v, (int, float))
    if not ok_type or isinstance(v, bool):
        return False
    return (("ge" not in meta or v >= meta["ge"]) and ("gt" not in meta or v > meta["gt"])
            and ("le" not in meta or v <= meta["le"]) and ("lt" not in meta or v < meta["lt"]))


def refuse_outside(schema: type, values: dict[str, Any], prefix: str) -> None:
    """ValueError for the first value outside what its field in `schema` declares: the rules of a
    composed config, for options built in Python too (library use, tests)."""
    for name, v in values.items():
        if not allowed(schema, name, v):
            raise ValueError(f"{prefix}{name} must be {describe(schema, name)}, got {v!r}")
