"""What every benchmark converter shares: field access that names the bad field, sampling, and a
builder that collects KB documents and questions into the one knowledge-update shape.

A converter is a pure function ``records -> Converted``: it reads nothing and writes nothing, so
it is tested on a list of dicts and cached by :mod:`updatelab.data.formats.convert`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

from updatelab.data.schema import DatasetSchemaError
from updatelab.data.update import Document, Question
from updatelab.metrics.qa import contains

_MISSING = object()


class RecordProblem(ValueError):
    """One field of one record is missing or has the wrong shape (the caller adds file and index)."""

    def __init__(self, field_path: str, problem: str):
        self.field, self.problem = field_path, problem
        super().__init__(f"{problem} {field_path!r}" if problem == "missing field" else f"field {field_path!r} {problem}")


def record_error(label: str, index: int | None, problem: str) -> DatasetSchemaError:
    """``"<file>: record <i>: <problem>"`` -- i is the 0-based position in the JSON list / rows."""
    where = label if index is None else f"{label}: record {index}"
    return DatasetSchemaError(where, problem, file=label, row=index)


def parse_all(records: Sequence[Any], parse, label: str) -> list[Any]:
    """``parse`` every record (not only the sampled ones: whether a file is accepted must not
    depend on the sample seed); the first bad record stops with file, index and field."""
    out = []
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec, Mapping):
                raise RecordProblem("", f"must be a JSON object, got {type(rec).__name__}")
            out.append(parse(rec))
        except RecordProblem as e:
            raise record_error(label, i, str(e) if e.field else e.problem) from None
    return out


def get(rec: Mapping[str, Any], path: str, kind: str = "str", *, optional: bool = False, at: str = "") -> Any:
    """The value at dotted `path` (``requested_rewrite.target_new.str``), checked against `kind`:
    ``str`` (non-empty string), ``str_list`` (list of non-empty strings), ``dict``, ``list``,
    ``int``, ``answers`` (:func:`answers`). Missing or null (hub datasets fill absent struct keys
    with null) is "missing field", or None when `optional`. `at` prefixes the field name in
    errors, for values nested in lists (``locality.Relation_Specificity[0]``)."""
    full = f"{at}.{path}" if at else path
    value: Any = rec
    for part in path.split("."):
        value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING or value is None:
            if optional:
                return None
            raise RecordProblem(full, "missing field")
    return answers(value, full) if kind == "answers" else check(value, full, kind)


def check(value: Any, path: str, kind: str) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise RecordProblem(path, f"must be a string, got {type(value).__name__}")
        if not value.strip():
            raise RecordProblem(path, "is empty")
        return value.strip()
    if kind == "str_list":
        if not isinstance(value, (list, tuple)):
            raise RecordProblem(path, f"must be a list of strings, got {type(value).__name__}")
        return [check(v, f"{path}[{i}]", "str") for i, v in enumerate(value)]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordProblem(path, f"must be an integer, got {type(value).__name__}")
        return value
    types = {"dict": Mapping, "list": (list, tuple)}
    if not isinstance(value, types[kind]):
        raise RecordProblem(path, f"must be a JSON {'object' if kind == 'dict' else 'array'}, got {type(value).__name__}")
    return value


def answers(value: Any, path: str) -> tuple[str, ...]:
    """Accepted answers from a string, a list of strings or a list of alias lists (KnowEdit uses
    all three): the first is the gold answer, the rest are aliases; duplicates dropped."""
    if isinstance(value, str):
        flat = [check(value, path, "str")]
    elif isinstance(value, (list, tuple)) and value:
        flat = []
        for i, v in enumerate(value):
            flat += check(v, f"{path}[{i}]", "str_list") if isinstance(v, (list, tuple)) else [check(v, f"{path}[{i}]", "str")]
    else:
        raise RecordProblem(path, "must be a string or a non-empty list of strings")
    if not flat:
        raise RecordProblem(path, "has no answer")
    return tuple(dict.fromkeys(flat))


def check_sample(sample: int | None, seed: int) -> None:
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ValueError(f"data.sample must be a positive integer or null (all), got {sample!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"data.sample_seed must be an integer, got {seed!r}")


def sample_indices(n: int, sample: int | None, seed: int) -> list[int]:
    """`sample` of range(n) drawn with `seed` (all when None or larger than n), in file order."""
    check_sample(sample, seed)
    if sample is None or sample >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), sample))


def general_qa(n: int) -> list[dict[str, Any]]:
    """The first `n` of the packaged world-knowledge questions (the synthetic world's `general`
    split too): the forgetting probe stays the same whichever dataset an experiment runs."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"data.n_general must be an integer >= 0, got {n!r}")
    text = resources.files("updatelab.data").joinpath("general_qa.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()][:n]


def statement(prompt: str, answer: str) -> str:
    """A KB sentence from a completion or question prompt and its answer."""
    return f"{prompt} {answer}."


@dataclass
class Converted:
    """The rows of one knowledge update, as a converter built them, plus counts for meta.json."""

    kb_v0: list[Document] = field(default_factory=list)
    kb_v1: list[Document] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    def doc(self, doc_id: str, text_v0: str | None, text_v1: str | None, entity: str = "") -> str:
        """Add a document to KB v0 and/or KB v1 (None = absent from that version); returns its id."""
        if text_v0 is not None:
            self.kb_v0.append(Document(doc_id=doc_id, text=text_v0, entity=entity))
        if text_v1 is not None:
            self.kb_v1.append(Document(doc_id=doc_id, text=text_v1, entity=entity))
        return doc_id

    def ask(self, qid: str, split: str, question: str, golds: Iterable[str], doc_id: str | None,
            entity: str | None = None, attribute: str | None = None) -> bool:
        """Add a question unless its prompt already contains a gold answer: `contains` scoring
        would count a model that only repeats the prompt as correct (CounterFact's "Toyota
        Corolla is produced by" -> Toyota). Returns whether it was added."""
        golds = tuple(dict.fromkeys(golds))
        if split != "general" and contains(question, golds):
            self.dropped[f"{split}: answer in the prompt"] += 1
            return False
        self.questions.append(Question(qid=qid, split=split, question=question, answer=golds[0], aliases=golds[1:],
                                       doc_id=doc_id, entity=entity, attribute=attribute))
        return True

    def add_general(self, n: int) -> None:
        for j, g in enumerate(general_qa(n)):
            self.ask(f"general-{j:04d}", "general", g["question"], [g["answer"], *g.get("aliases", ())], None)

    def summary(self) -> dict[str, Any]:
        splits = Counter(q.split for q in self.questions)
        return {**self.meta, "kb_v0": len(self.kb_v0), "kb_v1": len(self.kb_v1), "questions": dict(splits),
                "dropped": dict(self.dropped)}
