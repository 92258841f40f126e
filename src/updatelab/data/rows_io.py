"""Knowledge-update rows in and out: reading and validating JSON Lines files, the locators that
turn a row's position into a :class:`~updatelab.data.schema.DatasetSchemaError`, and the one
canonical way rows are written.

What a valid row is (its class, :mod:`updatelab.data.rows`) and the checks across files
(:func:`~updatelab.data.schema.check_update`, :mod:`updatelab.data.schema`) live elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from updatelab.data.rows import Row, RowProblem, parse_line, validate_row
from updatelab.data.schema import FILE_KIND, DatasetSchemaError, row_key

# --------------------------------------------------------------------------------------------
# Locations: where a row came from, for error messages
# --------------------------------------------------------------------------------------------

class Locator:
    """Turns (file key, position) into a :class:`DatasetSchemaError`."""

    def error(self, key: str, pos: int | None, problem: str) -> DatasetSchemaError:  # pragma: no cover
        raise NotImplementedError

    def describe(self, key: str, pos: int) -> str:  # "line 3" / "row 2"
        raise NotImplementedError  # pragma: no cover


class LocalLocator(Locator):
    """Positions are 1-based line numbers in local files."""

    def __init__(self, files: Mapping[str, Path]):
        self.files = dict(files)

    def error(self, key: str, pos: int | None, problem: str) -> DatasetSchemaError:
        path = str(self.files[key])
        where = path if pos is None else f"{path}, line {pos}"
        return DatasetSchemaError(where, problem, file=path, line=pos)

    def describe(self, key: str, pos: int) -> str:
        return f"line {pos}"


class HubLocator(Locator):
    """Positions are 0-based row indices of the rows `datasets` returned for a file key."""

    def __init__(self, repo_id: str, data_files: Mapping[str, Any]):
        self.repo_id, self.data_files = repo_id, dict(data_files)

    def error(self, key: str, pos: int | None, problem: str) -> DatasetSchemaError:
        where = f"hub dataset {self.repo_id!r}, file {key!r} ({self.data_files.get(key)})"
        if pos is not None:
            where += f", row {pos}"
        return DatasetSchemaError(where, problem, file=key, row=pos)

    def describe(self, key: str, pos: int) -> str:
        return f"row {pos}"


Rows = list[tuple[int, Row]]
"""Validated rows of one file: (position, row object)."""


def validate_rows(key: str, rows: Iterable[tuple[int, Any]], loc: Locator, *, parsed: bool = True) -> Rows:
    """Validate each (position, row) of file `key` and check unique ids. A row is a parsed
    object (`parsed`, e.g. what `datasets` read from the hub) or one JSON line to parse."""
    kind = FILE_KIND[key]
    check = validate_row if parsed else parse_line
    out: Rows = []
    seen: dict[Any, int] = {}
    for pos, obj in rows:
        try:
            row = check(kind, obj)
        except RowProblem as e:
            raise loc.error(key, pos, str(e)) from None
        uk = row_key(kind, row)
        if uk is not None:
            name, value = uk
            if value in seen:
                raise loc.error(key, pos, f"duplicate {name} {value!r} (first on {loc.describe(key, seen[value])})")
            seen[value] = pos
        out.append((pos, row))
    return out


def read_jsonl(path: str | Path, key: str, loc: Locator | None = None) -> Rows:
    """Parse and check every line of a local JSONL file, once (pydantic parses the JSON).

    Returns [(1-based line number, row object)] for the non-blank lines.
    """
    path = Path(path)
    loc = loc or LocalLocator({key: path})

    def lines() -> Iterable[tuple[int, str]]:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise loc.error(key, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
                if lineno == 1:
                    line = line.lstrip("\ufeff")
                if not line.strip():
                    continue
                yield lineno, line

    return validate_rows(key, lines(), loc, parsed=False)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def dumps_row(row: Mapping[str, Any]) -> str:
    """One JSONL line (without newline), in the canonical byte form every writer uses."""
    return json.dumps(row, ensure_ascii=False)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(dumps_row(row))
            f.write("\n")
