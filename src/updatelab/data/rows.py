"""The rows of a knowledge update, defined once: validation, in-memory objects, `datasets` Features.

Each row kind is a frozen pydantic dataclass. The same class checks a row of a user's file
(:func:`parse_line`, :func:`validate_row`), is the immutable object the rest of the code holds,
writes the canonical row (:meth:`Row.to_row`) and gives the file's ``datasets.Features``
(:func:`features_for`), so the four cannot disagree. The fields and rules are documented in
:mod:`updatelab.data.schema`.

A file differs from the in-memory object in three ways, all handled here, in validation context
``{"kind": <file kind>}``: keys the file must spell out may have an in-memory default (a document
built in code need not name its entity; a file must, so a forgotten column is noticed);
``dev.jsonl`` has no ``split`` column (the file is the split); and a null value for an optional,
non-nullable key means "absent", as `datasets` writes absent keys of hub files.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING
from dataclasses import fields as dc_fields
from functools import cache
from typing import Annotated, Any, ClassVar, Union

from pydantic import AfterValidator, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError, ValidationInfo
from pydantic import field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from updatelab.data.schema import DEV_SPLIT, FILE_KIND, SPLITS


def _problem(message: str) -> PydanticCustomError:
    """A row problem already in its final words (see :func:`_one_line`)."""
    return PydanticCustomError("row_problem", "{problem}", {"problem": message})


def _nonempty(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty", "empty")
    return value


# Strict: a number where a string belongs is a mistake in the file, never a value to convert.
NonEmptyStr = Annotated[StrictStr, AfterValidator(_nonempty)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]

_CONFIG = ConfigDict(extra="forbid")  # an unknown key is mostly a typo of an optional one


@dataclass(frozen=True, config=_CONFIG)
class Row:
    """Base of the row kinds: the file-row rules and the canonical written form."""

    FILE_REQUIRED: ClassVar[tuple[str, ...]] = ()
    """Fields with an in-memory default that a file must still spell out."""

    @model_validator(mode="before")
    @classmethod
    def _file_row(cls, data: Any, info: ValidationInfo) -> Any:
        kind = (info.context or {}).get("kind")
        if kind is None or isinstance(data, cls):  # built in code: checked when it was built
            return data
        if not isinstance(data, dict):
            raise _problem(f"expected a JSON object, got {type_name(data)}")
        names = file_fields(kind)
        unknown = [k for k in data if k not in names]
        if unknown:  # before the field errors: a typo explains the "missing" key that follows
            raise _problem(f"unknown key {unknown[0]!r}; allowed keys: {', '.join(names)}")
        for name in _required_in_file(kind):
            if name not in data:
                raise _problem(f"missing key {name!r}")
        out = {k: v for k, v in data.items() if not (v is None and k in _absent_if_null(kind))}
        if kind == "dev":
            out["split"] = DEV_SPLIT
        return out

    def to_row(self, kind: str | None = None) -> dict[str, Any]:
        """The canonical file row: every field, in declaration order, tuples as lists."""
        names = file_fields(kind) if kind else tuple(f.name for f in dc_fields(self))
        values = ((n, getattr(self, n)) for n in names)
        return {n: list(v) if isinstance(v, tuple) else v for n, v in values}


@dataclass(frozen=True, config=_CONFIG)
class Document(Row):
    """One KB document (a chunk that must stand on its own). ``entity``: "" when unknown."""

    doc_id: NonEmptyStr
    text: NonEmptyStr
    entity: StrictStr = ""

    FILE_REQUIRED: ClassVar[tuple[str, ...]] = ("entity",)


@dataclass(frozen=True, config=_CONFIG)
class Question(Row):
    """An evaluation (or, with split ``dev``, development) question. ``doc_id`` is the gold
    document in KB v1 (None for ``general``)."""

    qid: NonEmptyStr
    split: StrictStr
    question: NonEmptyStr
    answer: NonEmptyStr
    aliases: tuple[NonEmptyStr, ...] = ()
    doc_id: NonEmptyStr | None = None
    entity: StrictStr | None = None
    attribute: StrictStr | None = None

    @field_validator("split")
    @classmethod
    def _known_split(cls, split: str, info: ValidationInfo) -> str:
        # questions.jsonl holds evaluation splits only; "dev" comes from dev.jsonl (or code).
        valid = SPLITS if (info.context or {}).get("kind") == "questions" else (*SPLITS, DEV_SPLIT)
        if split not in valid:
            raise _problem(f"unknown split {split!r}; valid splits: {', '.join(valid)}")
        return split

    @property
    def answers(self) -> tuple[str, ...]:
        """All accepted answers: ``(answer, *aliases)``."""
        return (self.answer, *self.aliases)

    def to_row(self, kind: str | None = None) -> dict[str, Any]:
        # dev.jsonl has no split column: the file is the split
        return super().to_row(kind or ("dev" if self.split == DEV_SPLIT else "questions"))


@dataclass(frozen=True, config=_CONFIG)
class QAPair(Row):
    """A training QA pair: demo QA (``train_qa``, entities never evaluated) or injection QA
    (``inject_qa``, the changed facts in training-only wording). ``doc_id``: the KB v1 document
    holding the fact, when known."""

    question: NonEmptyStr
    answer: NonEmptyStr
    entity: StrictStr = ""
    attribute: StrictStr = ""
    doc_id: NonEmptyStr | None = None

    FILE_REQUIRED: ClassVar[tuple[str, ...]] = ("entity", "attribute")


@dataclass(frozen=True, config=_CONFIG)
class TrainDoc(Row):
    """One rendering (``rendering`` = 0, 1, ...) of all KB v1 facts about ``entity``, for LoRA training."""

    entity: NonEmptyStr
    text: NonEmptyStr
    rendering: NonNegativeInt = 0

    FILE_REQUIRED: ClassVar[tuple[str, ...]] = ("rendering",)


ROW_TYPES: dict[str, type[Row]] = {"kb": Document, "questions": Question, "train_docs": TrainDoc, "qa": QAPair,
                                   "dev": Question}
"""Row kind -> the class of its rows."""


@cache
def file_fields(kind: str) -> tuple[str, ...]:
    """The keys of a row of file kind `kind`, in canonical (written) order."""
    names = tuple(f.name for f in dc_fields(ROW_TYPES[kind]))
    return tuple(n for n in names if n != "split") if kind == "dev" else names


@cache
def _required_in_file(kind: str) -> tuple[str, ...]:
    """The keys a row of file kind `kind` must have, in canonical order."""
    cls = ROW_TYPES[kind]
    return tuple(f.name for f in dc_fields(cls)
                 if f.name in file_fields(kind) and (not _has_default(f) or f.name in cls.FILE_REQUIRED))


@cache
def _absent_if_null(kind: str) -> frozenset[str]:
    """Optional keys whose type does not admit None: a null there means "absent"."""
    cls = ROW_TYPES[kind]
    hints = typing.get_type_hints(cls)
    return frozenset(f.name for f in dc_fields(cls) if f.name in file_fields(kind)
                     and f.name not in _required_in_file(kind) and not _nullable(hints[f.name]))


def _has_default(f: Any) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _nullable(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


@cache
def _adapter(kind: str) -> TypeAdapter:
    return TypeAdapter(ROW_TYPES[kind])


class RowProblem(ValueError):
    """What is wrong with one row, in one line (no location; the caller adds it)."""


def parse_line(kind: str, line: str | bytes) -> Row:
    """Parse and validate one JSON line of a file of kind `kind` (the only parse of that line)."""
    try:
        return _adapter(kind).validate_json(line, context={"kind": kind})
    except ValidationError as e:
        raise RowProblem(_one_line(kind, e)) from None


def validate_row(kind: str, obj: Any) -> Row:
    """Validate one already parsed row (e.g. of a hub file, which `datasets` parsed)."""
    try:
        return _adapter(kind).validate_python(obj, context={"kind": kind})
    except ValidationError as e:
        raise RowProblem(_one_line(kind, e)) from None


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _one_line(kind: str, exc: ValidationError) -> str:
    """The first problem of a row as one line naming the key, in the words of a JSON file."""
    err = exc.errors(include_url=False)[0]
    loc, kind_of, value = err["loc"], err["type"], err.get("input")
    key = loc[0] if loc else None
    if kind_of == "row_problem":
        return err["msg"]
    if kind_of == "json_invalid":
        return f"invalid JSON: {err['ctx']['error']}"
    if kind_of == "missing":
        return f"missing key {key!r}"
    if kind_of == "empty":
        return f"key {key!r} has an empty string" if len(loc) > 1 else f"empty {key!r}"
    expected = {"string_type": "a string", "int_type": "an integer"}.get(kind_of)
    if len(loc) > 1 and expected:  # an item of a list
        return f"key {key!r} must be a list of strings, has {type_name(value)} {value!r}"[:300]
    if expected and value is None:
        return f"key {key!r} is null; expected {expected}"
    if expected:
        return f"key {key!r} must be {expected}, got {type_name(value)} {value!r}"[:300]
    if kind_of in ("tuple_type", "list_type"):
        return f"key {key!r} must be a list of strings, got {type_name(value)}"
    if kind_of == "greater_than_equal":
        return f"key {key!r} must be >= {err['ctx']['ge']}, got {value!r}"
    return f"key {key!r}: {err['msg']}" if key is not None else err["msg"]


@cache
def features_for(key: str):
    """The `datasets.Features` of file `key`, from the row class's field types."""
    import datasets

    kind = FILE_KIND[key]
    hints = typing.get_type_hints(ROW_TYPES[kind])
    return datasets.Features({name: _feature(hints[name], datasets) for name in file_fields(kind)})


def _feature(tp: Any, datasets: Any) -> Any:
    if _nullable(tp):  # Arrow columns are nullable anyway
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (tuple, list):
        List = getattr(datasets, "List", None) or datasets.Sequence  # List is datasets >= 4
        return List(_feature(typing.get_args(tp)[0], datasets))
    return datasets.Value({str: "string", int: "int64"}[tp])
