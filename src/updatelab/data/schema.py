"""On-disk schema of a knowledge update, and validation of every row before use.

A knowledge update is a folder of JSON Lines files (one JSON object per line; blank lines are
ignored, as `datasets` ignores them):

``kb_v0.jsonl``, ``kb_v1.jsonl`` (required)
    ``{"doc_id": str, "text": str, "entity": str}`` -- the knowledge base before and after the
    update. ``doc_id`` non-empty and unique within the file, ``text`` non-empty, ``entity`` the
    person/subject the document is about ("" when unknown, e.g. for your own data).
``questions.jsonl`` (required)
    ``{"qid": str, "split": str, "question": str, "answer": str, "aliases": [str],
    "doc_id": str|null, "entity": str|null, "attribute": str|null}``. ``split`` is one of
    :data:`SPLITS`; ``aliases`` (other accepted answers) defaults to ``[]``; ``doc_id``,
    ``entity``, ``attribute`` default to null. ``qid`` unique. ``doc_id`` is the gold document in
    KB v1: required (and present in kb_v1.jsonl) for every split but ``general``, which must have
    null. An ``updated``/``paraphrased`` question's gold document must be changed by the update
    (new, or text different from KB v0); an ``unchanged`` question's must not be.
``train_docs.jsonl`` (optional)
    ``{"entity": str, "text": str, "rendering": int}`` -- extra renderings of each KB v1 entity's
    facts, for paraphrase augmentation of LoRA training. Keyed by entity (not doc_id) because a
    rendering is a whole bio, not a chunk; ``(entity, rendering)`` unique, ``rendering >= 0``.
    Every entity must be a KB v1 entity and every non-empty KB v1 entity must have at least one
    rendering, so that training can pick "changed only" or "changed + unchanged".
``train_qa.jsonl`` (optional)
    ``{"question": str, "answer": str, "entity": str, "attribute": str, "doc_id": str|null}`` -- QA
    pairs about *demo* entities (never asked about in questions.jsonl: checked), which teach the
    answer format; never with the text of an evaluation question (checked).
``inject_qa.jsonl`` (optional)
    Same fields as ``train_qa`` -- QA about the *changed facts themselves* (knowledge injection as
    practised): the same facts the evaluation asks, but never with the text of an evaluation
    question (checked) and, for the synthetic data, in question templates reserved for training.
    ``doc_id`` (optional) names the KB v1 document that holds the fact (RAFT-style training).
``dev.jsonl`` (optional)
    ``{"qid": str, "question": str, "answer": str, "aliases": [str], "doc_id": str|null,
    "entity": str|null, "attribute": str|null}`` -- the development split: held-out questions for
    checkpoint selection, never an evaluation question (checked) nor a training question.
``meta.json`` (optional)
    Generator parameters and counts, for the record; never read by the loader.

Keys not listed above are an error (they would mostly be typos of optional keys). The first
problem found stops loading with a :class:`DatasetSchemaError` that names the file, the 1-based
line (or, for the hub, the file key and row index) and what is wrong.

The row classes that implement these rules (and are the loaded objects and give the `datasets`
Features) are in :mod:`updatelab.data.rows`; reading, locating and writing rows are in
:mod:`updatelab.data.rows_io`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # rows_io imports this module at run time
    from updatelab.data.rows_io import Locator, Rows

SPLITS: tuple[str, ...] = ("updated", "paraphrased", "portability", "unchanged", "general")  # portability: zsRE multi-hop
"""Question splits, in report order."""

DEV_SPLIT = "dev"
"""The split of ``dev.jsonl`` rows once loaded: checkpoint selection, never an evaluation split."""

FILE_NAMES: dict[str, str] = {
    "kb_v0": "kb_v0.jsonl",
    "kb_v1": "kb_v1.jsonl",
    "questions": "questions.jsonl",
    "train_docs": "train_docs.jsonl",
    "train_qa": "train_qa.jsonl",
    "inject_qa": "inject_qa.jsonl",
    "dev": "dev.jsonl",
}
"""File key -> default file name inside a knowledge-update folder."""

REQUIRED_FILES: tuple[str, ...] = ("kb_v0", "kb_v1", "questions")
OPTIONAL_FILES: tuple[str, ...] = ("train_docs", "train_qa", "inject_qa", "dev")
META_FILE = "meta.json"

class DatasetSchemaError(ValueError):
    """A malformed knowledge update. ``str(err)`` is ``"<where>: <problem>"``.

    Attributes: ``where`` (file path and line, or hub id, file key and row), ``problem``,
    ``file`` (path or file key), ``line`` (1-based line of a local file, else None), ``row``
    (0-based row index of a hub file, else None).
    """

    def __init__(self, where: str, problem: str, *, file: str | None = None, line: int | None = None,
                 row: int | None = None) -> None:
        self.where, self.problem, self.file, self.line, self.row = where, problem, file, line, row
        super().__init__(f"{where}: {problem}")


FILE_KIND: dict[str, str] = {"kb_v0": "kb", "kb_v1": "kb", "questions": "questions",
                             "train_docs": "train_docs", "train_qa": "qa", "inject_qa": "qa", "dev": "dev"}
"""File key -> row kind (the row classes are in :mod:`updatelab.data.rows`)."""


def row_key(kind: str, row: Any) -> tuple[str, Any] | None:
    """(name, value) of the key that must be unique within a file of this kind, if any."""
    if kind == "kb":
        return "doc_id", row.doc_id
    if kind in ("questions", "dev"):
        return "qid", row.qid
    if kind == "train_docs":
        return "(entity, rendering)", (row.entity, row.rendering)
    return None


def check_update(rows: Mapping[str, Rows], loc: Locator) -> None:
    """Checks across files (all rows already valid on their own)."""
    for key in ("kb_v1", "questions"):
        if not rows.get(key):
            raise loc.error(key, None, "no rows (a knowledge update needs at least one)")
    v0 = {r.doc_id: r.text for _, r in rows["kb_v0"]}
    v1 = {r.doc_id: r.text for _, r in rows["kb_v1"]}

    question_entities: set[str] = set()
    question_texts: dict[str, int] = {}
    for pos, q in rows["questions"]:
        split, doc_id = q.split, q.doc_id
        if split == "general":
            if doc_id is not None:
                raise loc.error("questions", pos, f"split 'general' must have doc_id null, got {doc_id!r}")
        else:
            if doc_id is None:
                raise loc.error("questions", pos, f"split {split!r} needs a gold doc_id (a document of kb_v1)")
            if doc_id not in v1:
                raise loc.error("questions", pos, f"gold doc_id {doc_id!r} is not in kb_v1")
            changed = v0.get(doc_id) != v1[doc_id]
            if split in ("updated", "paraphrased") and not changed:
                raise loc.error("questions", pos,
                                f"split {split!r} but its gold doc {doc_id!r} is identical in kb_v0 and kb_v1")
            if split == "unchanged" and changed:
                raise loc.error("questions", pos,
                                f"split 'unchanged' but its gold doc {doc_id!r} is new or changed in kb_v1")
        if q.entity:
            question_entities.add(q.entity)
        question_texts.setdefault(_norm_text(q.question), pos)

    if rows.get("train_docs") is not None:
        v1_entities = {r.entity for _, r in rows["kb_v1"] if r.entity}
        covered = set()
        for pos, r in rows["train_docs"]:
            if r.entity not in v1_entities:
                raise loc.error("train_docs", pos, f"entity {r.entity!r} is not an entity of kb_v1")
            covered.add(r.entity)
        missing = [e for e in _ordered(r.entity for _, r in rows["kb_v1"]) if e and e not in covered]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise loc.error("train_docs", None, "must cover every kb_v1 entity; none for "
                            + ", ".join(repr(e) for e in missing[:5]) + more)

    for pos, r in rows.get("train_qa") or ():
        if r.entity and r.entity in question_entities:
            raise loc.error("train_qa", pos, f"entity {r.entity!r} is asked about in questions.jsonl "
                            "(train_qa must only use entities never evaluated)")
    training_texts: dict[str, tuple[str, int]] = {}
    for key in ("train_qa", "inject_qa"):
        for pos, r in rows.get(key) or ():
            qpos = question_texts.get(_norm_text(r.question))
            if qpos is not None:
                raise loc.error(key, pos,
                                f"question is an evaluation question (questions {loc.describe('questions', qpos)})")
            if r.doc_id is not None and r.doc_id not in v1:
                raise loc.error(key, pos, f"doc_id {r.doc_id!r} is not in kb_v1")
            training_texts.setdefault(_norm_text(r.question), (key, pos))
    for pos, r in rows.get("dev") or ():
        text = _norm_text(r.question)
        if text in question_texts:
            raise loc.error("dev", pos, "question is an evaluation question "
                            f"(questions {loc.describe('questions', question_texts[text])})")
        if text in training_texts:
            key, tpos = training_texts[text]
            raise loc.error("dev", pos, f"question is a training question ({key} {loc.describe(key, tpos)})")
        if r.doc_id is not None and r.doc_id not in v1:
            raise loc.error("dev", pos, f"doc_id {r.doc_id!r} is not in kb_v1")


def _norm_text(text: str) -> str:
    return " ".join(text.casefold().split())


def _ordered(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
