"""updatelab.data: the synthetic generator, the on-disk schema, loading, and `datasets` views.

Fast and offline: everything is generated under tmp_path; the hub is replaced by local files.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from updatelab.data import load as load_mod  # noqa: E402
from updatelab.data import rows_io  # noqa: E402
from updatelab.data import synthetic, synthetic_vocab  # noqa: E402
from updatelab.data.load import load_update  # noqa: E402
from updatelab.data.rows import features_for  # noqa: E402
from updatelab.data.schema import SPLITS, DatasetSchemaError  # noqa: E402
from updatelab.data.update import Document, KnowledgeUpdate, Question  # noqa: E402

FILES = ("kb_v0.jsonl", "kb_v1.jsonl", "questions.jsonl", "train_docs.jsonl", "train_qa.jsonl", "inject_qa.jsonl",
         "dev.jsonl", "meta.json")
SMALL = dict(n_people=30, edit_fraction=0.2, n_new=6, eval_fraction=0.5, n_unchanged_questions=8, n_general=5,
             renderings=3, sentences_per_doc=2)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def no_datasets(*args, **kwargs):
    raise AssertionError("datasets must not be called before every row is validated")


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory) -> Path:
    """The configured synthetic update (configs/data/synthetic.yaml), seed 0."""
    return synthetic.generate(tmp_path_factory.mktemp("gen") / "seed0", seed=0)


@pytest.fixture(scope="module")
def update(gen_dir) -> KnowledgeUpdate:
    return load_update(gen_dir)


@pytest.fixture
def small(tmp_path) -> Path:
    return synthetic.generate(tmp_path / "small", seed=3, **SMALL)


def rewrite_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_text("".join(lines), encoding="utf-8")


def edit_row(**changes):
    def edit(line: str) -> str:
        row = json.loads(line)
        for k, v in changes.items():
            if v is KeyError:
                del row[k]
            else:
                row[k] = v
        return json.dumps(row) + "\n"
    return edit


# --- the generator ----------------------------------------------------------------------------

def test_vocabulary_invariants():
    synthetic_vocab.check_vocabulary()  # unique, non-overlapping values; >= 20 values, >= 4/2/2 templates


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = synthetic.generate(tmp_path / "a", seed=7, **SMALL)
    b = synthetic.generate(tmp_path / "b", seed=7, **SMALL)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_different_seed_gives_different_files(tmp_path):
    a = synthetic.generate(tmp_path / "a", seed=7, **SMALL)
    b = synthetic.generate(tmp_path / "b", seed=8, **SMALL)
    for name in ("kb_v0.jsonl", "kb_v1.jsonl", "questions.jsonl", "train_docs.jsonl", "train_qa.jsonl"):
        assert (a / name).read_bytes() != (b / name).read_bytes(), name


def test_counts_match_parameters(update, gen_dir):
    p = synthetic.configured()  # what gen_dir was generated with: configs/data/synthetic.yaml
    n_people, n_new, n_attr, spd = p["n_people"], p["n_new"], len(synthetic_vocab.ATTRIBUTES), p["sentences_per_doc"]
    chunks = -(-n_attr // spd)
    assert len(update.kb_v0) == n_people * chunks
    assert len(update.kb_v1) == (n_people + n_new) * chunks
    n_edit = round(p["edit_fraction"] * n_people)
    n_eval_edit, n_eval_new = round(p["eval_fraction"] * n_edit), round(p["eval_fraction"] * n_new)
    expected_updated = n_eval_edit + synthetic.QUESTIONS_PER_NEW_PERSON * n_eval_new
    counts = {s: len(qs) for s, qs in update.splits().items() if qs}
    assert counts == {"updated": expected_updated, "paraphrased": expected_updated,
                      "unchanged": p["n_unchanged_questions"], "general": p["n_general"]}
    assert len(update.changed_doc_ids()) == n_edit + n_new * chunks
    assert len(update.train_docs) == p["renderings"] * (n_people + n_new)
    demo_people = (n_edit - n_eval_edit) + (n_new - n_eval_new)
    per_person = sum(len(a.train_questions[:p["qa_templates"]]) for a in synthetic_vocab.ATTRIBUTES)
    assert len(update.train_qa) == demo_people * per_person
    meta = json.loads((gen_dir / "meta.json").read_text())
    assert meta["counts"]["questions"] == counts and meta["counts"]["edited_people"] == n_edit


def test_edited_people_differ_in_exactly_one_chunk(update, gen_dir):
    edits = json.loads((gen_dir / "meta.json").read_text())["edits"]
    assert edits
    v0 = {d.doc_id: d.text for d in update.kb_v0}
    v1 = {d.doc_id: d.text for d in update.kb_v1}
    for e in edits:
        pid = e["person_id"]
        differing = [d for d in v0 if d.startswith(pid + "-") and v0[d] != v1[d]]
        assert differing == [e["doc_id"]]
        assert e["new"] != e["old"]
        old, new = v0[e["doc_id"]], v1[e["doc_id"]]
        assert e["old"] in old and e["new"] in new and e["old"] not in new
        assert new == old.replace(e["old"], e["new"])  # same template, only the value replaced


def test_changed_doc_ids_are_new_or_edited_docs(update):
    v0 = {d.doc_id: d.text for d in update.kb_v0}
    expected = [d.doc_id for d in update.kb_v1 if d.doc_id not in v0 or v0[d.doc_id] != d.text]
    assert update.changed_doc_ids() == expected
    assert set(update.unchanged_doc_ids()) == {d.doc_id for d in update.kb_v1} - set(expected)
    # The helper on a hand-made update: content decides, not ids.
    ku = KnowledgeUpdate(
        name="t", fingerprint="", questions=(),
        kb_v0=(Document("a", "same"), Document("b", "old", "B"), Document("gone", "x")),
        kb_v1=(Document("a", "same", "A"), Document("b", "new", "B"), Document("c", "added", "C")),
    )
    assert ku.changed_doc_ids() == ["b", "c"]
    assert ku.unchanged_doc_ids() == ["a"]
    assert ku.new_doc_ids() == ["c"] and ku.deleted_doc_ids() == ["gone"]
    assert ku.changed_entities() == ["B", "C"]


def test_gold_doc_of_every_question_contains_the_answer(update):
    asked = [q for q in update.questions if q.split != "general"]
    assert asked
    for q in asked:
        doc = update.doc(q.doc_id)
        assert q.answer in doc.text, q
        assert q.entity in doc.text and doc.entity == q.entity
    for q in update.splits()["general"]:
        assert q.doc_id is None


def test_paraphrased_questions_share_facts_not_templates(update):
    splits = update.splits()
    upd, par = splits["updated"], splits["paraphrased"]
    fact = lambda q: (q.entity, q.attribute, q.answer, q.doc_id)  # noqa: E731
    assert Counter(map(fact, upd)) == Counter(map(fact, par))
    base = {t for a in synthetic_vocab.ATTRIBUTES for t in a.questions}
    para = {t for a in synthetic_vocab.ATTRIBUTES for t in a.paraphrases}
    assert not base & para
    template = lambda q: q.question.replace(q.entity, "{name}")  # noqa: E731
    assert all(template(q) in base for q in upd + splits["unchanged"])
    assert all(template(q) in para for q in par)
    assert not {q.question for q in upd} & {q.question for q in par}


def test_training_data_never_touches_evaluated_entities_or_questions(update, gen_dir):
    evaluated = {q.entity for q in update.questions if q.entity}
    assert update.train_qa and not {p.entity for p in update.train_qa} & evaluated
    meta = json.loads((gen_dir / "meta.json").read_text())
    assert {p.entity for p in update.train_qa} == set(meta["demo_entities"])
    qa_texts = {p.question for p in update.train_qa}
    for q in update.questions:
        assert q.question not in qa_texts
        assert not any(q.question in t.text for t in update.train_docs)


def test_train_docs_cover_every_kb_v1_person_with_distinct_renderings(update):
    by_entity: dict[str, list[str]] = {}
    for t in update.train_docs:
        by_entity.setdefault(t.entity, []).append(t.text)
    assert set(by_entity) == {d.entity for d in update.kb_v1}
    for entity, texts in by_entity.items():
        assert len(texts) == 5 and len(set(texts)) == 5
        kb_text = " ".join(d.text for d in update.kb_v1 if d.entity == entity)
        assert texts[0] == kb_text  # rendering 0 is the KB v1 bio
    assert set(update.train_docs_for(update.changed_entities())) < set(update.train_docs)


def test_general_qa_file_is_a_usable_probe():
    rows = synthetic.general_qa()
    assert 50 <= len(rows) <= 80
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) <= {"question", "answer", "aliases"} and r["question"].endswith("?")
        assert 1 <= len(r["answer"].split()) <= 3


def test_ensure_generated_is_cached_and_race_safe(tmp_path):
    root = tmp_path / "data"
    results, errors = [], []

    def worker():
        try:
            results.append(synthetic.ensure_generated(root, seed=1, **SMALL))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    final = results[0]
    assert final.name.startswith("synthetic-") and [p.name for p in root.iterdir()] == [final.name]
    ref = synthetic.generate(tmp_path / "ref", seed=1, **SMALL)
    for name in FILES:
        assert (final / name).read_bytes() == (ref / name).read_bytes()
    mtime = (final / "kb_v0.jsonl").stat().st_mtime_ns
    assert synthetic.ensure_generated(root, seed=1, **SMALL) == final
    assert (final / "kb_v0.jsonl").stat().st_mtime_ns == mtime  # not regenerated
    assert synthetic.ensure_generated(root, seed=2, **SMALL) != final


# --- schema errors ----------------------------------------------------------------------------

def test_invalid_json_names_file_and_line(small, monkeypatch):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)
    rewrite_line(small / "kb_v1.jsonl", 3, lambda line: line[: len(line) // 2] + "\n")
    with pytest.raises(DatasetSchemaError) as err:
        load_update(small)
    msg = str(err.value)
    assert str(small / "kb_v1.jsonl") in msg and "line 3" in msg and "invalid JSON" in msg
    assert err.value.line == 3


def test_missing_key_names_the_key(small, monkeypatch):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)
    rewrite_line(small / "kb_v0.jsonl", 2, edit_row(text=KeyError))
    with pytest.raises(DatasetSchemaError, match=r"kb_v0\.jsonl, line 2: missing key 'text'"):
        load_update(small)


def test_unknown_split_lists_the_valid_splits(small, monkeypatch):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)
    rewrite_line(small / "questions.jsonl", 4, edit_row(split="updatd"))
    with pytest.raises(DatasetSchemaError) as err:
        load_update(small)
    msg = str(err.value)
    assert "questions.jsonl, line 4" in msg and "'updatd'" in msg
    assert all(s in msg for s in SPLITS)


def test_duplicate_doc_id_names_both_lines(small, monkeypatch):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)
    first = read_jsonl(small / "kb_v1.jsonl")[0]["doc_id"]
    rewrite_line(small / "kb_v1.jsonl", 5, edit_row(doc_id=first))
    expected = rf"kb_v1\.jsonl, line 5: duplicate doc_id '{first}' \(first on line 1\)"
    with pytest.raises(DatasetSchemaError, match=expected):
        load_update(small)


def test_gold_doc_missing_from_kb_v1(small, monkeypatch):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)
    rewrite_line(small / "questions.jsonl", 2, edit_row(doc_id="p9999-0"))
    with pytest.raises(DatasetSchemaError, match=r"questions\.jsonl, line 2: gold doc_id 'p9999-0' is not in kb_v1"):
        load_update(small)


@pytest.mark.parametrize("file, change, problem", [
    ("kb_v1.jsonl", dict(text="  "), "empty 'text'"),
    ("kb_v1.jsonl", dict(entity=3), "'entity' must be a string"),
    ("questions.jsonl", dict(aliases="x"), "'aliases' must be a list of strings"),
    ("questions.jsonl", dict(anwser="x"), "unknown key 'anwser'"),
    ("train_qa.jsonl", dict(entity=None), "'entity' is null"),
])
def test_other_row_errors(small, monkeypatch, file, change, problem):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)
    rewrite_line(small / file, 1, edit_row(**change))
    with pytest.raises(DatasetSchemaError, match=rf"{file}, line 1: .*{problem}"):
        load_update(small)


def test_train_qa_about_an_evaluated_entity_is_rejected(small, monkeypatch):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)
    q = read_jsonl(small / "questions.jsonl")[0]
    rewrite_line(small / "train_qa.jsonl", 2, edit_row(entity=q["entity"]))
    with pytest.raises(DatasetSchemaError, match=r"train_qa\.jsonl, line 2: entity .* is asked about"):
        load_update(small)


# --- loading ----------------------------------------------------------------------------------

def test_loading_parses_each_line_once_and_round_trips(small, tmp_path, monkeypatch):
    monkeypatch.setattr(load_mod, "_load_dataset", no_datasets)  # a local folder is read directly
    parsed = Counter()
    real = rows_io.parse_line

    def spy(kind, line):
        parsed[line] += 1
        return real(kind, line)

    monkeypatch.setattr(rows_io, "parse_line", spy)
    ku = load_update(small)
    lines = [line for name in FILES[:-1] for line in (small / name).read_text(encoding="utf-8").splitlines(True)]
    assert sum(parsed.values()) == len(lines) and set(parsed) == set(lines)

    assert ku.name == "small" and len(ku.fingerprint) == 64
    assert [d.to_row() for d in ku.kb_v1] == read_jsonl(small / "kb_v1.jsonl")
    assert [q.to_row() for q in ku.questions] == read_jsonl(small / "questions.jsonl")
    assert [t.to_row() for t in ku.train_docs] == read_jsonl(small / "train_docs.jsonl")
    assert [p.to_row() for p in ku.train_qa] == read_jsonl(small / "train_qa.jsonl")
    assert isinstance(ku.questions[0], Question) and list(ku.splits()) == list(SPLITS)

    out = ku.save(tmp_path / "saved")
    for name in FILES[:-1]:
        assert (out / name).read_bytes() == (small / name).read_bytes()
    again = load_update(out, name="small")
    assert again == ku and again.fingerprint == ku.fingerprint


def test_each_file_comes_back_as_a_dataset_with_the_schemas_features(small):
    ku = load_update(small)
    for key, name in zip(("kb_v0", "kb_v1", "questions", "train_docs", "train_qa", "inject_qa", "dev"), FILES):
        ds = ku.dataset(key)
        assert ds.features == features_for(key)
        assert ds.to_list() == read_jsonl(small / name)


def test_fingerprint_is_stable_and_tracks_content(small, tmp_path):
    a = load_update(small)
    b = load_update(small)
    assert a.fingerprint == b.fingerprint == a.compute_fingerprint()
    rewrite_line(small / "questions.jsonl", 1, edit_row(aliases=["extra"]))
    assert load_update(small).fingerprint != a.fingerprint


def test_optional_files_may_be_absent(small, tmp_path):
    (small / "train_docs.jsonl").unlink()
    (small / "train_qa.jsonl").unlink()
    (small / "meta.json").unlink()
    ku = load_update(small)
    assert ku.train_docs == () and ku.train_qa == () and ku.kb_v1


def test_hub_source_validates_rows_and_names_dataset_file_and_row(small, tmp_path, monkeypatch):
    """The hub is never called: `load_dataset(<id>, data_files=...)` is served from local files."""
    real = load_mod._load_dataset
    seen = []

    def fake_hub(path, data_files=None, split=None, **kwargs):
        assert path == "org/bios", path
        seen.append(data_files)
        return real("json", data_files=str(small / data_files), split=split, cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(load_mod, "_load_dataset", fake_hub)
    keys = ("kb_v0", "kb_v1", "questions", "train_docs", "train_qa", "inject_qa", "dev")
    files = {k: f"{k}.jsonl" for k in keys}
    hub = load_update(source="hub", path="org/bios", data_files=files)
    assert sorted(seen) == sorted(files.values())
    monkeypatch.setattr(load_mod, "_load_dataset", real)
    local = load_update(small)
    assert hub.name == "org/bios" and hub.fingerprint == local.fingerprint and hub == KnowledgeUpdate(
        **{**{f: getattr(local, f) for f in keys},
           "name": "org/bios", "fingerprint": local.fingerprint})

    monkeypatch.setattr(load_mod, "_load_dataset", fake_hub)
    rewrite_line(small / "questions.jsonl", 6, edit_row(split="bogus"))
    with pytest.raises(DatasetSchemaError) as err:
        load_update(source="hub", path="org/bios", data_files=files)
    msg = str(err.value)
    assert "hub dataset 'org/bios'" in msg and "file 'questions'" in msg and "row 5" in msg and "'bogus'" in msg
    assert err.value.row == 5


def test_unknown_source_and_missing_files_are_clear(small, tmp_path):
    with pytest.raises(ValueError, match="valid sources: local, hub"):
        load_update(small, source="s3")
    (small / "kb_v0.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="kb_v0"):
        load_update(small)


def test_qa_templates_limits_demo_questions_per_attribute(tmp_path):
    one = load_update(synthetic.generate(tmp_path / "one", seed=0, qa_templates=1, **SMALL))
    both = load_update(synthetic.generate(tmp_path / "both", seed=0, qa_templates=None, **SMALL))  # null: every template
    per_fact = len(synthetic_vocab.ATTRIBUTES[0].train_questions)
    assert len(one.train_qa) == len(both.train_qa) // per_fact == len({(q.entity, q.attribute) for q in both.train_qa})
    assert {q.question for q in one.train_qa} < {q.question for q in both.train_qa}
    with pytest.raises(ValueError, match="qa_templates"):
        synthetic.generate(tmp_path / "bad", seed=0, qa_templates=0, **SMALL)
