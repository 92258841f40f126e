"""Seeded synthetic knowledge update: fictional people, after bioS (Allen-Zhu & Li, "Physics of
Language Models: Part 3.1").

Each person has a unique made-up full name (first + middle + invented surname, so a pretrained
LM cannot know them) and one value for each of six attributes
(:data:`updatelab.data.synthetic_vocab.ATTRIBUTES`, with the name lists and templates). A person's
bio is one sentence per attribute, in attribute order, each from a template drawn by the seeded
RNG, and every sentence names the person by full name so that documents stand alone. The bio is
chunked into documents of ``sentences_per_doc`` sentences, ``doc_id = "{person_id}-{chunk}"``.

The update event turns KB v0 (``n_people`` people) into KB v1:

* ``edit_fraction`` of the people get ONE attribute changed to another value of its pool; the
  changed sentence keeps its template, so exactly one document's text changes;
* ``n_new`` new people are added (all their documents are new);
* everyone else is unchanged (identical documents).

Changed people (edited + new) are split into *evaluated* (``eval_fraction``) and *demo* people.
``questions.jsonl``: ``updated`` asks each evaluated edited person's changed attribute and two
attributes of each evaluated new person (answer = KB v1 value); ``paraphrased`` asks the same
facts with different question templates (never used anywhere else); ``unchanged`` asks
``n_unchanged_questions`` random (person, attribute) facts of unchanged people; ``general`` is
the first ``n_general`` questions of ``general_qa.jsonl`` (world knowledge: the forgetting
probe, the same across seeds). qids are ``"{split}-{i:04d}"``; ``paraphrased-i`` asks the fact
of ``updated-i``.

Question wordings have one role each: ``questions`` templates ask ``updated``/``unchanged`` (and
``dev``), ``paraphrases`` ask ``paraphrased`` (and ``dev``), ``train_questions`` (>= 4 per
attribute) and ``reverse`` only ever appear in training files. So a model trained on the training
files is evaluated on wordings it never saw.

``train_qa.jsonl``: every attribute of every demo person, once per training template (the first
``qa_templates`` of them; null = all) -- never an evaluated person. ``inject_qa.jsonl``: every
changed fact (edited people's changed attribute, all attributes of new people; evaluated and demo
people) once per training template (the first ``inject_templates``; null = all), plus the reversed
question (value -> name) where the value identifies one KB v1 person. ``dev.jsonl``: the demo
people's changed facts (as ``updated`` picks them) in one ``questions`` and one ``paraphrases``
wording each: held-out questions for checkpoint selection, about people never evaluated.
``train_docs.jsonl``: ``renderings`` renderings of every KB v1 person's full bio, keyed by entity
(rendering 0 = the KB v1 text; others re-draw the templates and shuffle the sentence order).

Everything is drawn from ``random.Random`` streams seeded by strings derived from ``seed``
(string seeding hashes with SHA-512: stable across processes and Python versions), so the same
seed and parameters give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from collections import Counter
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from updatelab.data.rows import Document, QAPair, Question, TrainDoc
from updatelab.data.rows_io import write_jsonl
from updatelab.data.schema import FILE_NAMES, META_FILE, SPLITS
from updatelab.data.synthetic_vocab import (
    _ATTR,
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    FIRST_NAMES,
    MIDDLE_NAMES,
    SURNAMES,
)

GENERATOR_VERSION = 3  # of the files written (the cache key): bumped by any change to them
# (including one to the vocabulary in synthetic_vocab.py, whose tables the files are made of).
# The random draws keep their v2 key: v3 changed one training wording, and a wording must not
# redraw the world (people, facts, edits stay those of v2, so results stay comparable).
_DRAW_VERSION = 2

QUESTIONS_PER_NEW_PERSON = 2


@dataclass
class _Person:
    pid: str
    name: str
    values: dict[str, str]
    templates: dict[str, int]  # attribute -> sentence template index

    def sentence(self, attr: str, template: int | None = None, value: str | None = None) -> str:
        t = _ATTR[attr].sentences[self.templates[attr] if template is None else template]
        return t.format(name=self.name, value=self.values[attr] if value is None else value)

    def chunks(self, spd: int) -> list[tuple[str, str]]:
        """[(doc_id, text)] of this person's bio."""
        sents = [self.sentence(a) for a in ATTRIBUTE_NAMES]
        return [(f"{self.pid}-{c}", " ".join(sents[i:i + spd])) for c, i in enumerate(range(0, len(sents), spd))]

    def doc_of(self, attr: str, spd: int) -> str:
        return f"{self.pid}-{ATTRIBUTE_NAMES.index(attr) // spd}"


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"updatelab.synthetic/v{_DRAW_VERSION}/seed={seed}/{stream}")


def _round(fraction: float, n: int) -> int:
    return int(math.floor(fraction * n + 0.5 + 1e-9))


def _general_qa_path():
    return resources.files("updatelab.data").joinpath("general_qa.jsonl")


def general_qa() -> list[dict[str, Any]]:
    """The hand-written world-knowledge questions (``question``, ``answer``, ``aliases``)."""
    text = _general_qa_path().read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _new_person(rng: random.Random, pid: str, taken: set[str]) -> _Person:
    while True:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(MIDDLE_NAMES)} {rng.choice(SURNAMES)}"
        if name not in taken:
            taken.add(name)
            break
    values = {a.name: rng.choice(a.values) for a in ATTRIBUTES}
    templates = {a.name: rng.randrange(len(a.sentences)) for a in ATTRIBUTES}
    return _Person(pid, name, values, templates)


def configured(**overrides: Any) -> dict[str, Any]:
    """Every generator parameter as configs/data/synthetic.yaml sets it -- the one place their
    defaults live -- with seed 0 (the tree's `seed`) and `overrides` on top. An unknown name or a
    value outside the schema's range (updatelab/config_schema.py) is a ValueError."""
    from omegaconf import OmegaConf

    from updatelab.config_rules import refuse_outside
    from updatelab.config_schema import GeneratorConfig
    from updatelab.run import CONFIG_DIR

    written = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "data" / "synthetic.yaml").generator)
    params = {**written, "seed": 0}  # the YAML's seed is ${seed}, the top-level key
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"unknown generator parameter(s) {', '.join(unknown)}; valid: {', '.join(params)}")
    params.update(overrides)
    if isinstance(params["seed"], bool) or not isinstance(params["seed"], int):
        raise ValueError(f"seed must be an integer, got {params['seed']!r}")
    refuse_outside(GeneratorConfig, {k: v for k, v in params.items() if k != "seed"}, "data.generator.")
    capacity = len(FIRST_NAMES) * len(MIDDLE_NAMES) * len(SURNAMES)
    if params["n_people"] + params["n_new"] > capacity // 2:
        raise ValueError(f"n_people + n_new = {params['n_people'] + params['n_new']} is too many for the name "
                         f"lists (max {capacity // 2})")
    return params


def generate(out_dir: str | Path, **params: Any) -> Path:
    """Write a synthetic knowledge update into `out_dir` (created; the files are overwritten), with
    the parameters of :func:`configured` (`params` override the configured ones).

    Deterministic: same parameters -> byte-identical files. Returns ``Path(out_dir)``.
    """
    return _write(Path(out_dir), **configured(**params))


def _write(out_dir: Path, seed: int, n_people: int, edit_fraction: float, n_new: int, eval_fraction: float,
           n_unchanged_questions: int, n_general: int, renderings: int, sentences_per_doc: int,
           qa_templates: int | None, inject_templates: int | None) -> Path:
    spd = sentences_per_doc
    width = max(4, len(str(n_people + n_new - 1)))

    # KB v0 people, then the new people (ids continue the numbering; names unique across both).
    taken: set[str] = set()
    rng = _rng(seed, "people")
    people = [_new_person(rng, f"p{i:0{width}d}", taken) for i in range(n_people)]
    rng = _rng(seed, "new")
    new_people = [_new_person(rng, f"p{n_people + i:0{width}d}", taken) for i in range(n_new)]

    # The edits: one attribute each, a different value of the same pool, same template.
    rng = _rng(seed, "edits")
    edited_idx = sorted(rng.sample(range(n_people), _round(edit_fraction, n_people)))
    edits: dict[int, tuple[str, str, str]] = {}  # person index -> (attribute, old, new)
    for i in edited_idx:
        attr = rng.choice(ATTRIBUTE_NAMES)
        old = people[i].values[attr]
        new = rng.choice([v for v in _ATTR[attr].values if v != old])
        edits[i] = (attr, old, new)
    people_v1 = []
    for i, p in enumerate(people):
        if i in edits:
            attr, _, new = edits[i]
            p = _Person(p.pid, p.name, {**p.values, attr: new}, dict(p.templates))
        people_v1.append(p)
    edited = [people_v1[i] for i in edited_idx]
    unchanged = [p for i, p in enumerate(people_v1) if i not in edits]

    # Evaluated vs demo, stratified over edited and new people.
    rng = _rng(seed, "eval-split")
    eval_edit = set(rng.sample(range(len(edited)), _round(eval_fraction, len(edited))))
    eval_new = set(rng.sample(range(n_new), _round(eval_fraction, n_new)))
    evaluated_edited = [p for j, p in enumerate(edited) if j in eval_edit]
    evaluated_new = [p for j, p in enumerate(new_people) if j in eval_new]
    demo = [p for j, p in enumerate(edited) if j not in eval_edit]
    demo += [p for j, p in enumerate(new_people) if j not in eval_new]

    # Questions.
    rng = _rng(seed, "questions")
    facts: list[tuple[_Person, str]] = [(people_v1[i], edits[i][0]) for j, i in enumerate(edited_idx) if j in eval_edit]
    for p in evaluated_new:
        k = min(QUESTIONS_PER_NEW_PERSON, len(ATTRIBUTE_NAMES))
        chosen = set(rng.sample(ATTRIBUTE_NAMES, k))
        facts += [(p, a) for a in ATTRIBUTE_NAMES if a in chosen]
    pairs = [(p, a) for p in unchanged for a in ATTRIBUTE_NAMES]
    if n_unchanged_questions > len(pairs):
        raise ValueError(f"n_unchanged_questions={n_unchanged_questions} but the unchanged people "
                         f"only have {len(pairs)} facts")
    unchanged_facts = [pairs[j] for j in sorted(rng.sample(range(len(pairs)), n_unchanged_questions))]

    def question(qid: str, split: str, p: _Person, attr: str, templates: tuple[str, ...]) -> Question:
        a = _ATTR[attr]
        value = p.values[attr]
        return Question(qid=qid, split=split, question=rng.choice(templates).format(name=p.name), answer=value,
                        aliases=a.aliases.get(value, ()), doc_id=p.doc_of(attr, spd), entity=p.name, attribute=attr)

    questions = [question(f"updated-{j:04d}", "updated", p, a, _ATTR[a].questions) for j, (p, a) in enumerate(facts)]
    questions += [question(f"paraphrased-{j:04d}", "paraphrased", p, a, _ATTR[a].paraphrases)
                  for j, (p, a) in enumerate(facts)]
    questions += [question(f"unchanged-{j:04d}", "unchanged", p, a, _ATTR[a].questions)
                  for j, (p, a) in enumerate(unchanged_facts)]
    general = general_qa()[:n_general]
    questions += [Question(qid=f"general-{j:04d}", split="general", question=g["question"], answer=g["answer"],
                           aliases=g.get("aliases", ())) for j, g in enumerate(general)]

    # The development split: demo people's changed facts in the evaluation's wordings (so it
    # measures what `updated`/`paraphrased` measure), never an evaluated person.
    rng = _rng(seed, "dev")
    demo_facts: list[tuple[_Person, str]] = [(people_v1[i], edits[i][0]) for j, i in enumerate(edited_idx)
                                             if j not in eval_edit]
    for p in [p for j, p in enumerate(new_people) if j not in eval_new]:
        chosen = set(rng.sample(ATTRIBUTE_NAMES, min(QUESTIONS_PER_NEW_PERSON, len(ATTRIBUTE_NAMES))))
        demo_facts += [(p, a) for a in ATTRIBUTE_NAMES if a in chosen]
    dev = []
    for p, attr in demo_facts:
        for templates in (_ATTR[attr].questions, _ATTR[attr].paraphrases):
            dev.append(question(f"dev-{len(dev):04d}", "dev", p, attr, templates))

    # Training data, all in training-only question wordings.
    def qa_row(p: _Person, attr: str, template: str) -> QAPair:
        return QAPair(question=template.format(name=p.name), answer=p.values[attr], entity=p.name, attribute=attr,
                      doc_id=p.doc_of(attr, spd))

    train_qa = [qa_row(p, a.name, t) for p in sorted(demo, key=lambda p: p.pid) for a in ATTRIBUTES
                for t in a.train_questions[:qa_templates]]
    # Injection QA: every changed fact (an edited person's changed attribute, every attribute of a
    # new person), evaluated and demo people alike -- knowledge injection as practised.
    holders = Counter((a, p.values[a]) for p in people_v1 + new_people for a in ATTRIBUTE_NAMES)
    changed_facts = [(people_v1[i], edits[i][0]) for i in edited_idx]
    changed_facts += [(p, a) for p in new_people for a in ATTRIBUTE_NAMES]
    inject_qa = []
    for p, attr in changed_facts:
        inject_qa += [qa_row(p, attr, t) for t in _ATTR[attr].train_questions[:inject_templates]]
        if holders[(attr, p.values[attr])] == 1:
            inject_qa += [QAPair(question=t.format(value=p.values[attr]), answer=p.name, entity=p.name,
                                 attribute=attr, doc_id=p.doc_of(attr, spd)) for t in _ATTR[attr].reverse]
    rng = _rng(seed, "renderings")
    train_docs = []
    for p in people_v1 + new_people:
        kb_text = " ".join(p.sentence(a) for a in ATTRIBUTE_NAMES)
        seen = {kb_text}
        train_docs.append(TrainDoc(entity=p.name, text=kb_text, rendering=0))
        for r in range(1, renderings):
            for _ in range(100):  # re-draw until this rendering differs from the earlier ones
                sents = [p.sentence(a.name, rng.randrange(len(a.sentences))) for a in ATTRIBUTES]
                rng.shuffle(sents)
                text = " ".join(sents)
                if text not in seen:
                    break
            seen.add(text)
            train_docs.append(TrainDoc(entity=p.name, text=text, rendering=r))

    # Write.
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kb_v0 = [Document(doc_id=d, text=t, entity=p.name) for p in people for d, t in p.chunks(spd)]
    kb_v1 = [Document(doc_id=d, text=t, entity=p.name) for p in people_v1 + new_people for d, t in p.chunks(spd)]
    files = {"kb_v0": kb_v0, "kb_v1": kb_v1, "questions": questions, "train_docs": train_docs, "train_qa": train_qa,
             "inject_qa": inject_qa, "dev": dev}
    for key, items in files.items():
        write_jsonl(out / FILE_NAMES[key], (item.to_row() for item in items))

    v0_text = {d.doc_id: d.text for d in kb_v0}
    params = {"seed": seed, "n_people": n_people, "edit_fraction": edit_fraction, "n_new": n_new,
              "eval_fraction": eval_fraction, "n_unchanged_questions": n_unchanged_questions, "n_general": n_general,
              "renderings": renderings, "sentences_per_doc": sentences_per_doc, "qa_templates": qa_templates,
              "inject_templates": inject_templates}
    split_counts = {s: n for s in SPLITS if (n := sum(q.split == s for q in questions))}
    meta = {
        "generator": "updatelab.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "params": params,
        "attributes": list(ATTRIBUTE_NAMES),
        "general_qa_sha256": _general_qa_sha256(),
        "counts": {
            "people_v0": n_people, "people_v1": n_people + n_new, "edited_people": len(edited), "new_people": n_new,
            "evaluated_people": len(evaluated_edited) + len(evaluated_new), "demo_people": len(demo),
            "docs_v0": len(kb_v0), "docs_v1": len(kb_v1),
            "changed_docs": sum(v0_text.get(d.doc_id) != d.text for d in kb_v1),
            "questions": split_counts, "train_docs": len(train_docs), "train_qa": len(train_qa),
            "inject_qa": len(inject_qa), "dev": len(dev),
        },
        "edits": [{"person_id": people[i].pid, "entity": people[i].name, "attribute": a, "old": o, "new": n,
                   "doc_id": people[i].doc_of(a, spd)} for i, (a, o, n) in sorted(edits.items())],
        "new_entities": [p.name for p in new_people],
        "evaluated_entities": [p.name for p in evaluated_edited + evaluated_new],
        "demo_entities": [p.name for p in demo],
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _general_qa_sha256() -> str:
    return hashlib.sha256(_general_qa_path().read_bytes()).hexdigest()


def params_hash(**params: Any) -> str:
    """Short hash of the full generator parameters (:func:`configured`: the configured ones filled
    in), the generator version and general_qa.jsonl: the name of the folder :func:`ensure_generated` writes."""
    blob = json.dumps({"version": GENERATOR_VERSION, "general_qa": _general_qa_sha256(),
                       "params": configured(**params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_generated(root_dir: str | Path, **params: Any) -> Path:
    """``root_dir/synthetic-<params_hash>``, generated unless it already exists.

    Generates into a temporary sibling folder and renames it into place (atomic on one file
    system), so concurrent callers never see a half-written folder; the loser of a race discards
    its copy (the contents are identical anyway).
    """
    root = Path(root_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"synthetic-{params_hash(**params)}"
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        generate(tmp, **params)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
