"""The `stored` probe's prompts: a fact's KB v1 text up to its answer."""

from updatelab.data.update import Document, Question
from updatelab.metrics.stored import cloze_items


def _q(qid, answer, doc_id="a-1", aliases=()):
    return Question(qid=qid, split="updated", question="Where was Ada born?", answer=answer, aliases=aliases, doc_id=doc_id)


KB = [
    Document("a-0", "Ada Vale was born in Lyon.", entity="Ada Vale"),
    Document("b-0", "Lyon is where Bo Kerr lives.", entity="Bo Kerr"),
    Document("a-1", "Acme employs Ada Vale. Ada Vale studied Law at Rice University.", entity="Ada Vale"),
]


def test_prompt_is_the_entitys_text_up_to_the_answer():
    [c] = cloze_items([_q("q1", "Law")], KB)
    assert c.prompt == "Ada Vale was born in Lyon. Acme employs Ada Vale. Ada Vale studied"
    assert c.answers == ("Law",) and c.qid == "q1"


def test_an_answer_that_opens_its_document_follows_the_entitys_earlier_documents():
    [c] = cloze_items([_q("q1", "Acme")], KB)
    assert c.prompt == "Ada Vale was born in Lyon."


def test_the_earliest_accepted_answer_ends_the_prompt():
    [c] = cloze_items([_q("q1", "Rice University", aliases=("Law",))], KB)
    assert c.prompt.endswith("Ada Vale studied")


def test_questions_without_a_usable_document_are_skipped():
    questions = [_q("none", "Lyon", doc_id=None), _q("missing", "Lyon", doc_id="z-9"),
                 _q("absent", "Paris"), _q("opens-the-text", "Lyon", doc_id="b-0")]
    assert cloze_items(questions, KB) == []
