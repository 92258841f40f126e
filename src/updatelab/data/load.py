"""Load a knowledge update (a local folder or a hub dataset) through `datasets`, validated first.

Local: a fast line-by-line pass (``json.loads`` per line) checks every row of every file and the
cross-file rules (:mod:`updatelab.data.schema`), stopping at the first problem with a
:class:`~updatelab.data.schema.DatasetSchemaError` naming the file and 1-based line. Only then
is each file read through ``datasets.load_dataset("json", data_files=..., split="train")`` with
explicit features; the rows `datasets` returns are compared with the validated ones (a stale
Arrow cache is retried once with a forced rebuild) and the :class:`KnowledgeUpdate` is built
from them.

Hub: ``load_dataset(<hub id>, data_files=<file>, split="train")`` per file key (one call per
file, because the JSON builder infers one schema per call and the files' columns differ), then
the same row and cross-file checks, errors naming the dataset id, file key and row index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from updatelab.data.overlap import warn_near_copies
from updatelab.data.rows_io import HubLocator, LocalLocator, Locator, Rows, read_jsonl, validate_rows
from updatelab.data.schema import (
    DEV_SPLIT,
    FILE_KIND,
    FILE_NAMES,
    OPTIONAL_FILES,
    REQUIRED_FILES,
    check_update,
    normalize_row,
)
from updatelab.data.update import Document, KnowledgeUpdate, QAPair, Question, TrainDoc, compute_fingerprint

SOURCES = ("local", "hub")


def _load_dataset(*args: Any, **kwargs: Any):
    """``datasets.load_dataset``, imported lazily (importing `datasets` takes a second)."""
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def features_for(key: str):
    """The `datasets.Features` of file `key` (explicit, so all-null columns keep their type)."""
    import datasets

    Value = datasets.Value
    List = getattr(datasets, "List", None) or datasets.Sequence  # List is datasets >= 4
    s = Value("string")
    kind = FILE_KIND[key]
    spec: dict[str, Any]
    if kind == "kb":
        spec = {"doc_id": s, "text": s, "entity": s}
    elif kind == "questions":
        spec = {"qid": s, "split": s, "question": s, "answer": s, "aliases": List(s), "doc_id": s, "entity": s,
                "attribute": s}
    elif kind == "train_docs":
        spec = {"entity": s, "text": s, "rendering": Value("int64")}
    elif kind == "dev":
        spec = {"qid": s, "question": s, "answer": s, "aliases": List(s), "doc_id": s, "entity": s, "attribute": s}
    else:
        spec = {"question": s, "answer": s, "entity": s, "attribute": s, "doc_id": s}
    return datasets.Features(spec)


def load_update(path: str | Path, source: str = "local", *, data_files: Mapping[str, str] | None = None,
                name: str | None = None, cache_dir: str | Path | None = None, **load_kwargs: Any) -> KnowledgeUpdate:
    """Validate and load a knowledge update.

    source="local": `path` is a folder; `data_files` optionally maps file keys (kb_v0, kb_v1,
    questions, train_docs, train_qa) to file names inside it (defaults: ``<key>.jsonl``; the
    optional files are used when present). source="hub": `path` is a hub dataset id;
    `data_files` maps file keys to files in the repository (default: the three required files
    only, since the hub cannot be probed for the optional ones). `cache_dir` and `load_kwargs`
    (e.g. ``revision=``) go to ``datasets.load_dataset``. `name` defaults to the folder name or
    hub id. Raises DatasetSchemaError on the first malformed row.
    """
    if source == "local":
        return _load_local(Path(path), data_files, name, cache_dir, load_kwargs)
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


def _load_local(root: Path, data_files: Mapping[str, str] | None, name: str | None,
                cache_dir: str | Path | None, load_kwargs: dict[str, Any]) -> KnowledgeUpdate:
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

    # 1. Fast pass: every row of every file, then the rules across files.
    checked: dict[str, Rows] = {key: read_jsonl(p, key, loc) for key, p in files.items()}
    check_update(checked, loc)

    # 2. Read everything back through `datasets`.
    loaded: dict[str, list[dict[str, Any]]] = {}
    for key, p in files.items():
        expected = [row for _, row in checked[key]]
        rows = _read_back(key, p, expected, cache_dir, load_kwargs, loc, checked[key])
        loaded[key] = rows
    return _build(name or root.name, str(root), loaded)


def _read_back(key: str, path: Path, expected: list[dict[str, Any]], cache_dir: Any, load_kwargs: dict[str, Any],
               loc: Locator, positions: Rows) -> list[dict[str, Any]]:
    kind = FILE_KIND[key]
    if not expected:  # `datasets` refuses a file without rows ("corresponds to no data")
        return []
    rows: list[dict[str, Any]] = []
    for attempt in range(2):
        kwargs = dict(load_kwargs)
        if attempt:
            kwargs["download_mode"] = "force_redownload"
        ds = _load_dataset("json", data_files=str(path), split="train", features=features_for(key),
                           cache_dir=str(cache_dir) if cache_dir is not None else None, **kwargs)
        rows = [normalize_row(kind, r) for r in ds.to_list()]
        if rows == expected:
            return rows
    # Still different after a forced rebuild: say where.
    for got, (pos, want) in zip(rows, positions):
        if got != want:
            raise loc.error(key, pos, f"`datasets` read this row back as {got!r}, the file has {want!r}")
    raise loc.error(key, None, f"`datasets` read {len(rows)} rows, the file has {len(expected)}")


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
        checked[key] = validate_rows(key, enumerate(ds.to_list()), loc)
    check_update(checked, loc)
    loaded = {key: [row for _, row in rows] for key, rows in checked.items()}
    return _build(name or repo_id, f"hub:{repo_id}", loaded)


def _build(name: str, source: str, rows: Mapping[str, list[dict[str, Any]]]) -> KnowledgeUpdate:
    warn_near_copies(rows)  # training questions worded like evaluation ones: a person must judge
    kb_v0 = tuple(Document(**r) for r in rows["kb_v0"])
    kb_v1 = tuple(Document(**r) for r in rows["kb_v1"])
    questions = tuple(Question(**r) for r in rows["questions"])
    train_docs = tuple(TrainDoc(**r) for r in rows.get("train_docs", ()))
    train_qa = tuple(QAPair(**r) for r in rows.get("train_qa", ()))
    inject_qa = tuple(QAPair(**r) for r in rows.get("inject_qa", ()))
    dev = tuple(Question(split=DEV_SPLIT, **r) for r in rows.get("dev", ()))
    return KnowledgeUpdate(
        name=name,
        fingerprint=compute_fingerprint(kb_v0, kb_v1, questions, train_docs, train_qa, inject_qa, dev),
        kb_v0=kb_v0, kb_v1=kb_v1, questions=questions, train_docs=train_docs, train_qa=train_qa,
        inject_qa=inject_qa, dev=dev, source=source,
    )
