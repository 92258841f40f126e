"""inject_qa written by a model when the user's data has none (`qa_generator`, issue 12): the parser
on hand-written outputs, the grounding and leakage filters, the cache, and once the real embedded LM
through the LoRA arm's training data."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from updatelab.data.load import load_update
from updatelab.data.qa_generation import (
    GeneratorOptions,
    filter_pairs,
    generate_inject_qa,
    parse_pairs,
    with_inject_qa,
)
from updatelab.data.update import Document, KnowledgeUpdate, Question

EMPLOYERS = {  # entity -> (employer in KB v0, employer in KB v1)
    "Mara Quill": ("Holloway Freight", "Brightwater Labs"),
    "Ines Larrow": ("Orchid Media", "Fenwick Tools"),
    "Teodor Vasko": ("Kestrel Bank", "Kestrel Bank"),
}
CITIES = {"Mara Quill": "Oslo", "Ines Larrow": "Lisbon", "Teodor Vasko": "Riga"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def own_folder(folder: Path) -> Path:
    """A user's folder in the published schema: 2 changed documents, 1 unchanged, no inject_qa.jsonl."""
    folder.mkdir(parents=True)
    for version, k in (("kb_v0", 0), ("kb_v1", 1)):
        _write_jsonl(folder / f"{version}.jsonl", [
            {"doc_id": f"d{i}", "text": f"{name} works at {jobs[k]}. {name} was born in {CITIES[name]}.",
             "entity": name} for i, (name, jobs) in enumerate(EMPLOYERS.items())])
    _write_jsonl(folder / "questions.jsonl", [
        {"qid": f"q{i}", "split": "updated" if jobs[0] != jobs[1] else "unchanged",
         "question": f"Where does {name} work?", "answer": jobs[1], "aliases": [], "doc_id": f"d{i}",
         "entity": name, "attribute": "employer"} for i, (name, jobs) in enumerate(EMPLOYERS.items())])
    return folder


@pytest.fixture
def update(tmp_path) -> KnowledgeUpdate:
    return load_update(own_folder(tmp_path / "my_kb"))


def canned(outputs: dict[str, str]):
    """A generator factory answering each document with a hand-written output (by the entity named
    first in it); it counts how often it was made."""
    made = []

    def make():
        made.append(1)
        return lambda docs: [next((o for name, o in outputs.items() if d.startswith(name)), "") for d in docs]

    make.made = made
    return make


# -- parsing ---------------------------------------------------------------------------------------

def test_parser_reads_well_formed_pairs_in_the_usual_shapes():
    out = ("Q: Where does Mara Quill work now?\nA: Brightwater Labs\n"
           "2. **Question:** Which city was she born in? **Answer:** \"Oslo\"\n"
           "Question 3: Who works at Brightwater Labs?\nAnswer 3: Mara Quill\n")
    pairs, malformed = parse_pairs(out)
    assert pairs == [("Where does Mara Quill work now?", "Brightwater Labs"),
                     ("Which city was she born in?", "Oslo"),
                     ("Who works at Brightwater Labs?", "Mara Quill")]
    assert malformed == 0


def test_parser_counts_questions_without_answers_and_skips_chatter():
    out = ("Sure! Here are some questions.\nQ: Where does Mara Quill work?\nQ: Where was she born?\nA: Oslo\n"
           "A: an answer without a question\nQ: Empty answer?\nA:\nQ: Cut off by the token budget")
    pairs, malformed = parse_pairs(out)
    assert pairs == [("Where was she born?", "Oslo")]
    assert malformed == 3  # no answer, an empty answer, cut off
    assert parse_pairs("") == ([], 0)
    assert parse_pairs("Mara Quill works at Brightwater Labs.") == ([], 0)


# -- filters -----------------------------------------------------------------------------------------

def test_answers_must_be_short_spans_of_the_document(update):
    doc = update.doc("d0")  # "Mara Quill works at Brightwater Labs. Mara Quill was born in Oslo."
    raw = [(doc, "Which company employs Mara Quill today?", "brightwater labs."),  # normalised: kept
           (doc, "What is Mara Quill's job?", "Mara Quill's profession is chemistry."),  # not in the document
           (doc, "Where was Mara Quill born?", "Bergen"),  # not in the document
           (doc, "What do we know?", "Mara Quill works at Brightwater Labs. Mara Quill was born in Oslo"),
           (doc, "What about Mara Quill?", "Mara Quill was born in Oslo."),  # restates a sentence
           (doc, "Mara Quill works at which company", "Brightwater Labs"),  # no question mark
           (doc, "Is Mara Quill born in Oslo?", "Oslo"),  # the question gives it away
           (doc, "Which company employs Mara Quill today?", "Brightwater Labs"),  # duplicate
           (doc, "Brightwater Labs employs whom?", "Brightwa")]  # not on a word boundary
    kept, dropped = filter_pairs(raw, update, per_doc=5, max_answer_words=8)
    assert [(p.question, p.answer, p.doc_id, p.entity) for p in kept] == [
        ("Which company employs Mara Quill today?", "brightwater labs.", "d0", "Mara Quill")]
    assert dropped == {"answer_not_in_document": 3, "answer_too_long": 1, "answer_is_a_sentence": 1,
                       "not_a_question": 1, "answer_in_question": 1, "duplicate": 1}


def test_leakage_filter_drops_evaluation_questions_and_near_copies(update):
    doc, other = update.doc("d0"), update.doc("d1")
    raw = [(doc, "where does mara quill  WORK?", "Brightwater Labs"),  # the evaluation question itself
           (doc, "Where does Mara Quill work now?", "Brightwater Labs"),  # one word added: a near copy
           (other, "Where does Ines Larrow work?", "Fenwick Tools"),  # exact copy of another's question
           (doc, "Where does Teodor Vasko work?", "Brightwater Labs"),  # an unchanged entity's question
           (doc, "So where does Mara Quill work today?", "Brightwater Labs"),  # near copy: 3-gram Jaccard 0.5
           (doc, "Which company employs Mara Quill today?", "Brightwater Labs")]  # a training wording
    kept, dropped = filter_pairs(raw, update, per_doc=5, max_answer_words=8)
    assert [p.question for p in kept] == ["Which company employs Mara Quill today?"]
    assert dropped == {"evaluation_question": 3, "near_evaluation_question": 2}


def test_dev_questions_are_held_out_too_and_per_doc_caps(update):
    from dataclasses import replace

    dev = Question(qid="v0", split="dev", question="Which company employs Mara Quill today?", answer="Brightwater Labs",
                   doc_id="d0", entity="Mara Quill")
    with_dev = replace(update, dev=(dev,))
    doc = update.doc("d0")
    raw = [(doc, "Which company employs Mara Quill today?", "Brightwater Labs"),
           (doc, "In which city was Mara Quill born?", "Oslo"), (doc, "Mara Quill's employer is?", "Brightwater Labs"),
           (doc, "What is Mara Quill's birthplace?", "Oslo")]
    kept, dropped = filter_pairs(raw, with_dev, per_doc=2, max_answer_words=8)
    assert [p.question for p in kept] == ["In which city was Mara Quill born?", "Mara Quill's employer is?"]
    assert dropped == {"evaluation_question": 1, "over_per_doc": 1}


# -- the file and its cache ------------------------------------------------------------------------

OUTPUTS = {
    "Mara Quill": "Q: Which company employs Mara Quill today?\nA: Brightwater Labs\nQ: Where does Mara Quill work?\n"
                  "A: Brightwater Labs\nQ: What is her job?\nA: She is a chemist.\nQ: In which city was",
    "Ines Larrow": "1. Q: Which firm does Ines Larrow work for? A: Fenwick Tools\n2. Q: Where was Ines Larrow born?\n"
                   "A: Lisbon",
    "Teodor Vasko": "Q: Which bank does Teodor Vasko work at?\nA: Kestrel Bank",  # unchanged: never asked
}


def test_generated_file_is_in_the_user_schema_and_cached(update, tmp_path):
    before = sorted(p.name for p in (tmp_path / "my_kb").iterdir())
    opts = GeneratorOptions(source="base_lm", questions_per_doc=3)
    make = canned(OUTPUTS)
    res = generate_inject_qa(update, opts, "fake-lm", make, tmp_path / "cache")
    assert len(make.made) == 1 and not res.cached
    assert [(p.question, p.doc_id) for p in res.pairs] == [
        ("Which company employs Mara Quill today?", "d0"), ("Which firm does Ines Larrow work for?", "d1"),
        ("Where was Ines Larrow born?", "d1")]
    assert res.counts == {"documents": 2, "parsed": 5, "kept": 3, "dropped": 3,
                          "dropped_by_reason": {"malformed": 1, "answer_not_in_document": 1,
                                                "evaluation_question": 1}}
    assert res.path.is_relative_to(tmp_path / "cache") and res.path.name == "inject_qa.jsonl"
    assert sorted(p.name for p in (tmp_path / "my_kb").iterdir()) == before  # the user's folder untouched
    rows = [json.loads(line) for line in res.path.read_text().splitlines()]
    assert rows[0] == {"question": "Which company employs Mara Quill today?", "answer": "Brightwater Labs",
                       "entity": "Mara Quill", "attribute": "", "doc_id": "d0"}
    meta = json.loads((res.path.parent / "meta.json").read_text())
    assert [o["doc_id"] for o in meta["outputs"]] == ["d0", "d1"] and meta["model"] == "fake-lm"

    # The loader accepts it as a user-written inject_qa.jsonl.
    folder = tmp_path / "with_qa"
    shutil.copytree(tmp_path / "my_kb", folder)
    shutil.copy(res.path, folder / "inject_qa.jsonl")
    assert load_update(folder).inject_qa == res.pairs

    # A second call loads the file; other options or another model are another file.
    again = generate_inject_qa(update, opts, "fake-lm", make, tmp_path / "cache")
    assert again.cached and again.pairs == res.pairs and again.counts == res.counts and len(make.made) == 1
    other = generate_inject_qa(update, GeneratorOptions(source="base_lm", questions_per_doc=1), "fake-lm", make,
                               tmp_path / "cache")
    assert not other.cached and other.key != res.key and len(make.made) == 2
    assert generate_inject_qa(update, opts, "other-lm", make, tmp_path / "cache").key != res.key


def _cfg(tmp_path, **gen):
    from omegaconf import OmegaConf

    block = {"name": gen.get("source", "none"), **gen}
    return OmegaConf.create({"model": {"name": "smollm2-135m-instruct"}, "paths": {"cache_dir": str(tmp_path / "c")},
                             "device": "cpu", "qa_generator": block})


def test_a_user_file_wins_and_none_generates_nothing(update, tmp_path, monkeypatch):
    import updatelab.data.qa_generation as qg

    monkeypatch.setattr(qg, "generate_inject_qa", lambda *a, **k: pytest.fail("generated"))
    same, rec = with_inject_qa(update, _cfg(tmp_path))
    assert same is update and rec == {"source": "none"}
    folder = tmp_path / "with_qa"
    shutil.copytree(tmp_path / "my_kb", folder)
    _write_jsonl(folder / "inject_qa.jsonl", [{"question": "Which company employs Mara Quill today?",
                                                "answer": "Brightwater Labs", "entity": "Mara Quill",
                                                "attribute": "employer", "doc_id": "d0"}])
    written = load_update(folder)
    same, rec = with_inject_qa(written, _cfg(tmp_path, source="base_lm"))
    assert same is written and rec == {"source": "file"}
    with pytest.raises(ValueError, match="qa_generator.path"):
        with_inject_qa(update, _cfg(tmp_path, source="hub"))
    with pytest.raises(ValueError, match="unknown qa_generator key"):
        with_inject_qa(update, _cfg(tmp_path, source="base_lm", per_doc=2))


def test_only_fine_tuning_cells_name_a_generator(compose_cfg):
    from updatelab.run import cell_config

    assert "qa_generator" not in cell_config(compose_cfg("strategy=lora"))  # run ids of earlier cells stay
    assert cell_config(compose_cfg("strategy=lora", "qa_generator=base_lm"))["qa_generator"]["source"] == "base_lm"
    assert "qa_generator" not in cell_config(compose_cfg("strategy=reembed", "qa_generator=base_lm"))
    assert cell_config(compose_cfg("strategy=stale", "qa_generator=base_lm")) == cell_config(compose_cfg("strategy=stale"))


def test_a_hub_generator_needs_a_model_before_anything_loads(compose_cfg):
    from updatelab.config_check import ConfigError, validate

    validate(compose_cfg("strategy=lora", "qa_generator=hub", "qa_generator.path=org/some-instruct-model"))
    with pytest.raises(ConfigError, match="qa_generator.path"):
        validate(compose_cfg("strategy=lora", "qa_generator=hub"))
    with pytest.raises(ConfigError, match="qa_generator.questions_per_doc"):
        validate(compose_cfg("strategy=lora", "qa_generator=base_lm", "qa_generator.questions_per_doc=0"))


# -- end to end, with the embedded LM -----------------------------------------------------------------

def test_the_embedded_lm_writes_inject_qa_for_the_lora_arm(tmp_path, compose_cfg, converted_lm):
    """`data=local qa_generator=base_lm strategy=lora`: the arm's training data gets generated QA
    about the changed documents, in a file the loader accepts, recorded as such; a re-run reuses it."""
    import torch

    from updatelab.evaluation import prompt_builder
    from updatelab.models.lm import load_lm
    from hydra.utils import instantiate

    folder = own_folder(tmp_path / "my_kb")
    cfg = compose_cfg("data=local", f"data.path={folder}", "strategy=lora", "qa_generator=base_lm",
                      "qa_generator.max_new_tokens=40", "qa_generator.questions_per_doc=2",
                      f"paths.cache_dir={tmp_path / 'cache'}")
    update = load_update(folder)
    lm, tok = load_lm(str(converted_lm), cfg.model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are shared with timed jobs
    try:
        arm = instantiate(cfg.strategy, docs=False, paraphrases=False, inject_qa=True, replay_ratio=0.0)
        base, ctx = SimpleNamespace(lm=lm, tokenizer=tok), SimpleNamespace(cfg=cfg, seed=0, progress=False)
        data = arm.training_data(base, update, ctx, prompt_builder(cfg.eval), None)
        again = arm.training_data(base, update, ctx, prompt_builder(cfg.eval), None)
    finally:
        torch.set_num_threads(threads)
    record = data.record(arm.recipe())
    gen = record["inject_qa_generation"]
    assert record["inject_qa_source"] == "generated:smollm2-135m-instruct"
    assert gen["documents"] == 2 and gen["parsed"] >= 1  # the model follows the Q:/A: format
    assert gen["kept"] + gen["dropped"] >= gen["parsed"] and record["counts"]["inject_qa"] == gen["kept"]
    # Generated QA adds to the changed documents, it does not replace them.
    assert record["counts"]["documents"] == 2 and any("trained on as well" in n for n in record["notes"])
    path = Path(gen["path"])
    assert path.is_relative_to(tmp_path / "cache") and not (folder / "inject_qa.jsonl").exists()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(list(r) == ["question", "answer", "entity", "attribute", "doc_id"] for r in rows)
    assert {r["doc_id"] for r in rows} <= {"d0", "d1"}  # changed documents only
    shutil.copy(path, folder / "inject_qa.jsonl")
    assert len(load_update(folder).inject_qa) == gen["kept"]  # validated as a user-written file
    assert again.inject_qa_generation["cached"] and [e.prompt for e in again.examples] == [e.prompt for e in data.examples]
