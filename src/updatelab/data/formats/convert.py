"""Turn a published benchmark file into a knowledge-update folder in the data cache.

The folder (``<data_dir>/<format>-<hash>``) is keyed by the source content and the converter
parameters, written into a temporary sibling and renamed into place (atomic on one file system,
as the synthetic generator does), and checked by the schema before the rename, so a half-written
or invalid conversion is never cached. The caller loads it with the ordinary ``load_update``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from updatelab.data.formats import counterfact, tofu, zsre
from updatelab.data.formats.common import Converted
from updatelab.data.formats.read import Source, hub_records, local_source, parse_local
from updatelab.data.rows_io import LocalLocator, validate_rows, write_jsonl
from updatelab.data.schema import FILE_NAMES, check_update

CONVERTERS: dict[str, Callable[..., Converted]] = {
    "counterfact": counterfact.convert,
    "zsre": zsre.convert,
    "tofu": tofu.convert,
}
"""``data.source`` -> converter ``(records, *, label, sample, sample_seed, ...) -> Converted``."""

VERSION = 1
"""Bump when a converter's output changes for the same input, so cached folders are not reused."""


def ensure_converted(fmt: str, data_dir: str | Path, path: str, *, hub: bool = False, hub_config: str | None = None,
                     hub_split: str = "train", revision: str | None = None, hub_data_files: str | None = None,
                     **params: Any) -> tuple[Path, str]:
    """The cached update folder for `path` (a local file, or a hub id when `hub`) converted by
    format `fmt` with `params`; returns (folder, name for the loaded update)."""
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown benchmark format {fmt!r}; valid: {', '.join(CONVERTERS)}")
    raw: bytes | None = None
    records: list[Any] | None = None
    if hub:
        source, records = hub_records(str(path), hub_config, hub_split, revision, hub_data_files)
    else:
        source, raw = local_source(path)
    root = Path(data_dir)
    final = root / f"{fmt}-{_key(fmt, source, params)}"
    if final.is_dir():
        return final, f"{fmt}:{source.name}"
    if records is None:
        records = parse_local(source, raw)
    if not isinstance(records, list):
        raise ValueError(f"{source.label}: expected a JSON list of records")
    converted = CONVERTERS[fmt](records, label=source.label, **params)  # raises before anything is written
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _write(tmp, converted, {"source": source.label, "content_sha256": source.content_hash, "params": params,
                                "converter_version": VERSION})
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; its copy is identical
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final, f"{fmt}:{source.name}"


def _key(fmt: str, source: Source, params: dict[str, Any]) -> str:
    general = hashlib.sha256(resources.files("updatelab.data").joinpath("general_qa.jsonl").read_bytes()).hexdigest()
    blob = json.dumps({"format": fmt, "version": VERSION, "content": source.content_hash, "params": params,
                       "general_qa": general}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write(folder: Path, c: Converted, provenance: dict[str, Any]) -> None:
    rows = {"kb_v0": c.kb_v0, "kb_v1": c.kb_v1, "questions": c.questions}
    files = {key: folder / FILE_NAMES[key] for key in rows}
    for key, items in rows.items():
        write_jsonl(files[key], (item.to_row() for item in items))
    # The schema's own checks (gold docs exist, updated docs changed, unchanged ones not), so that
    # a converter bug fails here, naming the row, instead of being cached. The rows were checked
    # one by one when the converter built them; positions are the lines just written.
    loc = LocalLocator(files)
    check_update({key: validate_rows(key, enumerate(items, 1), loc) for key, items in rows.items()}, loc)
    meta = {**provenance, **c.summary()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
