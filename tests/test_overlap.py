"""Training questions worded like evaluation questions (names masked) are named in a warning."""

import json
import logging

import pytest

from updatelab.data.load import load_update
from updatelab.data.overlap import near_copies, template_ngrams
from updatelab.data.synthetic import ensure_generated


def test_the_entity_name_is_masked_so_a_template_matches_across_people():
    a = template_ngrams("In what year was Ada Lovelace born?", "Ada Lovelace")
    b = template_ngrams("In what year was Alan Turing born?", "Alan Turing")
    assert a == b and ("year", "was", "<e>") in a


def test_a_reworded_template_is_a_near_copy_and_another_wording_is_not():
    evaluation = [{"question": "In what year was Ada Lovelace born?", "entity": "Ada Lovelace"}]
    near = {"question": "What year was Alan Turing born in?", "entity": "Alan Turing"}
    other = {"question": "Alan Turing was born in which year?", "entity": "Alan Turing"}
    assert [(i, j) for i, j, _ in near_copies([near, other], evaluation)] == [(0, 0)]


@pytest.mark.parametrize("seed", [0, 1, 2, 99])
def test_the_synthetic_worlds_training_questions_are_no_near_copies(tmp_path, caplog, seed):
    with caplog.at_level(logging.WARNING, logger="updatelab"):
        load_update(ensure_generated(tmp_path, seed=seed))
    assert "worded like an evaluation question" not in caplog.text


def test_a_near_copy_in_your_inject_qa_is_named_in_one_warning(tmp_path, caplog):
    folder = ensure_generated(tmp_path, seed=0)
    questions = [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines()]
    q = next(r for r in questions if r["split"] == "updated")
    copy = {"question": q["question"].replace("?", " exactly?"), "answer": q["answer"], "entity": q["entity"],
            "attribute": q["attribute"], "doc_id": q["doc_id"]}
    with (folder / "inject_qa.jsonl").open("a") as f:
        f.write(json.dumps(copy) + "\n")
    with caplog.at_level(logging.WARNING, logger="updatelab"):
        load_update(folder)
    lines = [r.getMessage() for r in caplog.records if "worded like an evaluation question" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("inject_qa.jsonl: ") and repr(copy["question"]) in lines[0]
