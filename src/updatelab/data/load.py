"""Load a knowledge update (a local folder or a hub dataset), every row validated.

Local: each line of each file is parsed once, by the row classes of :mod:`updatelab.data.rows`
(pydantic), which check it and are the loaded objects; then the cross-file rules
(:mod:`updatelab.data.schema`). The first problem stops loading with a
:class:`~updatelab.data.schema.DatasetSchemaError` naming the file and 1-based line.

Hub: ``datasets.load_dataset(<hub id>, data_files=<file>, split="train")`` per file key (one call
per file, because the JSON builder infers one schema per call and the files' columns differ);
`datasets` parses, the row classes check what it returned, then the same cross-file checks,
errors naming the dataset id, file key and row index. Without explicit Features: casting to
them would turn a number into a string before the check could say the file is wrong.

:meth:`KnowledgeUpdate.dataset` gives any loaded file back as a ``datasets.Dataset`` with the
schema's Features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from updatelab.data.overlap import warn_near_copies
from updatelab.data.rows_io import HubLocator, LocalLocator, Rows, read_jsonl, validate_rows
from updatelab.data.schema import FILE_NAMES, OPTIONAL_FILES, REQUIRED_FILES, check_update
from updatelab.data.update import KnowledgeUpdate, compute_fingerprint

SOURCES = ("local", "hub")


def _load_dataset(*args: Any, **kwargs: Any):
    """``datasets.load_dataset``, imported lazily (importing `datasets` takes a second)."""
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def load_update(path: str | Path, source: str = "local", *, data_files: Mapping[str, str] | None = None,
                name: str | None = None, cache_dir: str | Path | None = None, **load_kwargs: Any) -> KnowledgeUpdate:
    """Validate and load a knowledge update.

    source="local": `path` is a folder; `data_files` optionally maps file keys (kb_v0, kb_v1,
    questions, train_docs, train_qa) to file names inside it (defaults: ``<key>.jsonl``; the
    optional files are used when present). source="hub": `path` is a hub dataset id;
    `data_files` maps file keys to files in the repository (default: the three required files
    only, since the hub cannot be probed for the optional ones). `cache_dir` and `load_kwargs`
    (e.g. ``revision=``) go to ``datasets.load_dataset`` (hub only: a local folder is read
    directly, and a local load accepts and ignores them). `name` defaults to the folder name or
    hub id. Raises DatasetSchemaError on the first malformed row.
    """
    if source == "local":
        return _load_local(Path(path), data_files, name)
    if source == "hub":
        return _load_hub(str(path), data_files, name, cache_dir, load_kwargs)
    raise ValueError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}")


def _check_keys(data_files: Mapping[str, Any]) -> None:
    unknown = [k for k in data_files if k not in FILE_NAMES]
    if unknown:
        raise ValueError(f"unknown data_files key {unknown[0]!r}; valid keys: {', '.join(FILE_NAMES)}")
    missing = [k for k in REQUIRED_FILES if k not in data_files]
    if missing:
        raise ValueError(f"data_files lacks the required key(s) {', '.join(missing)}")


def _load_local(root: Path, data_files: Mapping[str, str] | None, name: str | None) -> KnowledgeUpdate:
    if not root.is_dir():
        raise FileNotFoundError(f"knowledge update folder not found: {root}")
    if data_files is not None:
        _check_keys(data_files)
        files = {k: root / v for k, v in data_files.items()}
    else:
        files = {k: root / FILE_NAMES[k] for k in REQUIRED_FILES}
        files.update({k: root / FILE_NAMES[k] for k in OPTIONAL_FILES if (root / FILE_NAMES[k]).is_file()})
    for key, p in files.items():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing {key} file of the knowledge update in {root}")
    files = {k: files[k] for k in FILE_NAMES if k in files}  # canonical order
    loc = LocalLocator(files)

    rows: dict[str, Rows] = {key: read_jsonl(p, key, loc) for key, p in files.items()}
    check_update(rows, loc)
    return _build(name or root.name, str(root), {key: [row for _, row in r] for key, r in rows.items()})


def _load_hub(repo_id: str, data_files: Mapping[str, str] | None, name: str | None,
              cache_dir: str | Path | None, load_kwargs: dict[str, Any]) -> KnowledgeUpdate:
    files = dict(data_files) if data_files is not None else {k: FILE_NAMES[k] for k in REQUIRED_FILES}
    _check_keys(files)
    files = {k: files[k] for k in FILE_NAMES if k in files}
    loc = HubLocator(repo_id, files)
    checked: dict[str, Rows] = {}
    for key, fname in files.items():
        ds = _load_dataset(repo_id, data_files=fname, split="train",
                           cache_dir=str(cache_dir) if cache_dir is not None else None, **load_kwargs)
        checked[key] = validate_rows(key, enumerate(ds.to_list()), loc, parsed=True)
    check_update(checked, loc)
    loaded = {key: [row for _, row in rows] for key, rows in checked.items()}
    return _build(name or repo_id, f"hub:{repo_id}", loaded)


def _build(name: str, source: str, rows: Mapping[str, list[Any]]) -> KnowledgeUpdate:
    files = {key: tuple(rows.get(key, ())) for key in FILE_NAMES}
    # training questions worded like evaluation ones: a person must judge
    warn_near_copies({key: [r.to_row() for r in files[key]] for key in ("questions", "train_qa", "inject_qa")})
    return KnowledgeUpdate(name=name, fingerprint=compute_fingerprint(*files.values()), source=source, **files)
