"""In-memory form of a knowledge update: KB v0 -> KB v1, the questions, optional training data.

Everything is an immutable dataclass holding tuples, so a loaded update (and its fingerprint)
cannot drift. The row classes (:class:`Document`, :class:`Question`, :class:`QAPair`,
:class:`TrainDoc`) are the schema's own, from :mod:`updatelab.data.rows`. Build one with
:func:`updatelab.data.load.load_update`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from updatelab.data.rows import Document, QAPair, Question, TrainDoc
from updatelab.data.rows_io import dumps_row, write_jsonl
from updatelab.data.schema import FILE_NAMES, OPTIONAL_FILES, SPLITS

__all__ = ["Document", "KnowledgeUpdate", "QAPair", "Question", "TrainDoc", "compute_fingerprint"]

_FILE_ATTRS = tuple(FILE_NAMES)  # kb_v0, kb_v1, questions, train_docs, train_qa, inject_qa, dev


def compute_fingerprint(kb_v0: Iterable[Document], kb_v1: Iterable[Document], questions: Iterable[Question],
                        train_docs: Iterable[TrainDoc] = (), train_qa: Iterable[QAPair] = (),
                        inject_qa: Iterable[QAPair] = (), dev: Iterable[Question] = ()) -> str:
    """sha256 (hex) over the canonical content of the files.

    Each file contributes its key and its rows, one canonical JSON line per row (key order and
    defaults as written by :meth:`KnowledgeUpdate.save`). So it is stable across runs and
    machines, equal for the same data loaded from a folder or from the hub, and blind to JSON
    formatting (spacing, key order, omitted defaults). An absent optional file counts as empty.
    """
    h = hashlib.sha256()
    for key, items in zip(_FILE_ATTRS, (kb_v0, kb_v1, questions, train_docs, train_qa, inject_qa, dev)):
        items = list(items)
        if key in ("inject_qa", "dev") and not items:
            continue  # absent newer files leave the fingerprint of older updates as it was
        h.update(f"== {key}\n".encode())
        for item in items:
            h.update(dumps_row(item.to_row()).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class KnowledgeUpdate:
    """KB v0 -> KB v1 plus the questions that measure the update.

    ``name``: folder name or hub id. ``fingerprint``: :func:`compute_fingerprint` of the content.
    ``train_docs``/``train_qa`` are empty when the files are absent. ``source``: where it was
    loaded from (path or hub id), for the record.
    """

    name: str
    fingerprint: str
    kb_v0: tuple[Document, ...]
    kb_v1: tuple[Document, ...]
    questions: tuple[Question, ...]
    train_docs: tuple[TrainDoc, ...] = ()
    train_qa: tuple[QAPair, ...] = ()
    inject_qa: tuple[QAPair, ...] = ()
    dev: tuple[Question, ...] = ()  # split "dev": checkpoint selection only, never reported as evaluation
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in _FILE_ATTRS:
            object.__setattr__(self, name, tuple(getattr(self, name)))

    # -- lookups -----------------------------------------------------------------------------
    @cached_property
    def _v0_text(self) -> dict[str, str]:
        return {d.doc_id: d.text for d in self.kb_v0}

    @cached_property
    def _v1_by_id(self) -> dict[str, Document]:
        return {d.doc_id: d for d in self.kb_v1}

    def doc(self, doc_id: str) -> Document:
        """The KB v1 document `doc_id` (KeyError if absent)."""
        return self._v1_by_id[doc_id]

    # -- the update --------------------------------------------------------------------------
    def splits(self) -> dict[str, list[Question]]:
        """Questions by split, every split of :data:`SPLITS` present, in that order (file order within)."""
        out: dict[str, list[Question]] = {s: [] for s in SPLITS}
        for q in self.questions:
            out.setdefault(q.split, []).append(q)
        return out

    def changed_doc_ids(self) -> list[str]:
        """KB v1 doc_ids that are new or whose text differs from KB v0 (KB v1 order)."""
        return [d.doc_id for d in self.kb_v1 if self._v0_text.get(d.doc_id) != d.text]

    def unchanged_doc_ids(self) -> list[str]:
        """KB v1 doc_ids whose text is identical in KB v0 (KB v1 order)."""
        return [d.doc_id for d in self.kb_v1 if self._v0_text.get(d.doc_id) == d.text]

    def new_doc_ids(self) -> list[str]:
        """KB v1 doc_ids absent from KB v0 (a subset of :meth:`changed_doc_ids`)."""
        return [d.doc_id for d in self.kb_v1 if d.doc_id not in self._v0_text]

    def deleted_doc_ids(self) -> list[str]:
        """KB v0 doc_ids absent from KB v1 (KB v0 order)."""
        return [d.doc_id for d in self.kb_v0 if d.doc_id not in self._v1_by_id]

    def changed_entities(self) -> list[str]:
        """Non-empty entities with at least one changed document (KB v1 order, unique)."""
        changed = set(self.changed_doc_ids())
        return list(dict.fromkeys(d.entity for d in self.kb_v1 if d.entity and d.doc_id in changed))

    def unchanged_entities(self) -> list[str]:
        """Non-empty KB v1 entities none of whose documents changed (KB v1 order, unique)."""
        changed = set(self.changed_entities())
        return list(dict.fromkeys(d.entity for d in self.kb_v1 if d.entity and d.entity not in changed))

    def evaluated_entities(self) -> list[str]:
        """Entities asked about in ``questions`` (any split; file order, unique)."""
        return list(dict.fromkeys(q.entity for q in self.questions if q.entity))

    def train_docs_for(self, entities: Iterable[str]) -> list[TrainDoc]:
        """The training renderings of `entities` (e.g. ``changed_entities()`` for "changed only")."""
        wanted = set(entities)
        return [t for t in self.train_docs if t.entity in wanted]

    # -- (de)serialisation -------------------------------------------------------------------
    def compute_fingerprint(self) -> str:
        return compute_fingerprint(*(getattr(self, k) for k in _FILE_ATTRS))

    def save(self, out_dir: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """Write the update as a folder in the on-disk format (optional files only when non-empty)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for key in _FILE_ATTRS:
            items: Sequence[Any] = getattr(self, key)
            if key in OPTIONAL_FILES and not items:
                continue
            write_jsonl(out / FILE_NAMES[key], (item.to_row() for item in items))
        if meta is not None:
            (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        return out

    def dataset(self, key: str):
        """File `key`'s rows as a ``datasets.Dataset`` with the schema's Features (e.g. to push to
        the hub); built from the loaded rows, so no file is read again."""
        import datasets

        from updatelab.data.rows import features_for

        return datasets.Dataset.from_list([item.to_row() for item in getattr(self, key)], features=features_for(key))

    def summary(self) -> dict[str, Any]:
        """Counts, for logs."""
        return {"name": self.name, "fingerprint": self.fingerprint[:12], "kb_v0": len(self.kb_v0),
                "kb_v1": len(self.kb_v1), "changed_docs": len(self.changed_doc_ids()),
                "questions": {s: len(qs) for s, qs in self.splits().items()},
                "train_docs": len(self.train_docs), "train_qa": len(self.train_qa),
                "inject_qa": len(self.inject_qa), "dev": len(self.dev)}

