"""updatelab.data.rows: one class per row kind is the file schema, the in-memory object and the
`datasets` Features."""

import dataclasses

import datasets
import pytest
from pydantic import ValidationError

from updatelab.data.rows import Document, QAPair, Question, RowProblem, TrainDoc, features_for, parse_line, validate_row


def test_a_row_built_in_code_is_checked_like_a_row_of_a_file():
    with pytest.raises(ValidationError):
        Document("d0", "  ")
    with pytest.raises(ValidationError):
        TrainDoc("Ada", "text", rendering=-1)


def test_the_row_classes_are_frozen_dataclasses_with_positional_fields():
    doc = Document("d0", "Ada was born in Lyon.")
    assert dataclasses.is_dataclass(doc) and doc.entity == "" and hash(doc) == hash(Document("d0", doc.text))
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.text = "x"


def test_a_file_must_name_a_key_that_code_may_leave_to_its_default():
    with pytest.raises(RowProblem, match="missing key 'entity'"):
        parse_line("kb", '{"doc_id": "d0", "text": "Ada was born in Lyon."}')


def test_lists_are_tuples_in_memory_and_lists_in_the_written_row():
    q = parse_line("questions", '{"qid": "q0", "split": "general", "question": "Q?", "answer": "A", "aliases": ["B"]}')
    assert q.aliases == ("B",) and q.to_row()["aliases"] == ["B"]


def test_dev_rows_have_no_split_column_and_load_as_split_dev():
    q = parse_line("dev", '{"qid": "v0", "question": "Q?", "answer": "A"}')
    assert q.split == "dev" and "split" not in q.to_row()
    with pytest.raises(RowProblem, match="unknown key 'split'"):
        parse_line("dev", '{"qid": "v0", "split": "dev", "question": "Q?", "answer": "A"}')


def test_questions_jsonl_takes_evaluation_splits_only():
    with pytest.raises(RowProblem, match="unknown split 'dev'; valid splits: updated, .*, general$"):
        parse_line("questions", '{"qid": "q0", "split": "dev", "question": "Q?", "answer": "A"}')


def test_a_null_optional_key_of_a_parsed_row_means_absent_but_a_null_required_one_is_an_error():
    # `datasets` fills a hub file's absent keys with null
    row = {"qid": "q0", "split": "general", "question": "Q?", "answer": "A", "aliases": None, "doc_id": None}
    assert validate_row("questions", row).aliases == ()
    with pytest.raises(RowProblem, match="key 'entity' is null; expected a string"):
        validate_row("qa", {"question": "Q?", "answer": "A", "entity": None, "attribute": ""})


@pytest.mark.parametrize("line, problem", [
    ("[1]", "expected a JSON object, got array"),
    ('{"doc_id": "d0", "text": "t", "entity": "e"', "invalid JSON: "),
    ('{"doc_id": 7, "text": "t", "entity": "e"}', "key 'doc_id' must be a string, got integer 7"),
    ('{"doc_id": "d0", "text": "t", "entity": "e", "entitiy": "e"}', "unknown key 'entitiy'; allowed keys: doc_id, text, entity"),
])
def test_problems_are_one_line_naming_the_key(line, problem):
    with pytest.raises(RowProblem) as err:
        parse_line("kb", line)
    assert str(err.value).startswith(problem) and "\n" not in str(err.value)


def test_an_integer_key_takes_no_boolean_nor_negative_number():
    with pytest.raises(RowProblem, match="key 'rendering' must be an integer, got boolean True"):
        parse_line("train_docs", '{"entity": "Ada", "text": "t", "rendering": true}')
    with pytest.raises(RowProblem, match="key 'rendering' must be >= 0, got -1"):
        parse_line("train_docs", '{"entity": "Ada", "text": "t", "rendering": -1}')


def test_features_follow_the_row_classes_field_types_and_order():
    s = datasets.Value("string")
    assert features_for("kb_v0") == datasets.Features({"doc_id": s, "text": s, "entity": s})
    assert features_for("train_docs")["rendering"] == datasets.Value("int64")
    assert list(features_for("dev")) == [f for f in (f.name for f in dataclasses.fields(Question)) if f != "split"]
    assert features_for("questions")["aliases"].feature == s
    assert list(features_for("inject_qa")) == [f.name for f in dataclasses.fields(QAPair)]
