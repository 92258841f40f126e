"""Read a benchmark's records as it is published: a JSON list (ROME's ``counterfact.json``,
KnowEdit's ``ZsRE-test-all.json``), JSON Lines (TOFU's files, named ``.json`` on the hub, and any
export), parquet (hub exports), or a hub dataset id through ``datasets.load_dataset``.

Local files are parsed here rather than through `datasets`, so that a malformed record is named
by its index in the file (`datasets` would fail the whole file on an Arrow type conflict), and
the content hash of the bytes keys the converted update in the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from updatelab.data.formats.common import record_error


@dataclass(frozen=True)
class Source:
    """Where records come from. ``label`` names it in error messages; ``content_hash`` keys the cache."""

    label: str
    content_hash: str
    name: str  # short name for the loaded update (file name or hub id)


def local_source(path: str | Path) -> tuple[Source, bytes]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (data.path must be the dataset file as distributed)")
    raw = p.read_bytes()
    return Source(label=str(p), content_hash=hashlib.sha256(raw).hexdigest(), name=p.name), raw


def parse_local(source: Source, raw: bytes) -> list[Any]:
    """Records of a local file: parquet by suffix, else JSON list or JSON Lines by the first character."""
    if source.label.endswith(".parquet"):
        import pyarrow.parquet as pq  # a dependency of `datasets`
        import io

        return pq.read_table(io.BytesIO(raw)).to_pylist()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise record_error(source.label, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise record_error(source.label, None, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        return records
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise record_error(source.label, len(records), f"invalid JSON on line {lineno}, column {e.colno}: {e.msg}") from None
    if not records:
        raise record_error(source.label, None, "no records")
    return records


def hub_records(repo_id: str, config: str | None, split: str, revision: str | None,
                data_files: str | None = None) -> tuple[Source, list[Any]]:
    """All rows of one split of a hub dataset (clusters with network; never called in tests).
    `data_files` picks one file of a repository without configs (KnowEdit)."""
    import datasets

    ds = datasets.load_dataset(repo_id, name=config, split=split, revision=revision, data_files=data_files)
    records = ds.to_list()
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    label = f"hub dataset {repo_id!r}" + (f" ({config or data_files})" if config or data_files else "") + f", split {split!r}"
    return Source(label=label, content_hash=hashlib.sha256(blob).hexdigest(), name=repo_id), records
