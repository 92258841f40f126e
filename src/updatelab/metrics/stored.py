"""Is an updated fact stored in the LM's weights? A cloze probe in the knowledge base's own wording.

Answering a question closed-book needs two things: the fact is *stored* (the model completes the
sentence that states it) and it is *extractable* (the model can use it to answer a question
phrased differently). Allen-Zhu & Li (Physics of LMs 3.1) show the two come apart: a model can
memorise a biography yet fail every question about it. The ``updated`` split measures both
together; this probe measures storage alone, so a fine-tuned arm that stored the update but
cannot retrieve it in QA is told apart from one that stored nothing.

For every question with a gold document, the prompt is that KB v1 document up to the first
occurrence of the answer, preceded by the entity's earlier documents in KB order (a bio chunked
into documents reads as one text again; a sentence may start with its answer), with no chat
template and no retrieval (it probes the weights, also in RAG arms). It is scored like the QA splits: the greedy completion contains the answer. The text
is training text on purpose: it is a memorisation probe, not a generalisation test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from updatelab.data.update import Document, Question


@dataclass(frozen=True)
class Cloze:
    qid: str
    prompt: str
    answers: tuple[str, ...]


def cloze_items(questions: Sequence[Question], kb: Sequence[Document]) -> list[Cloze]:
    """One cloze per question whose gold document states an accepted answer after some leading
    text (its own or its entity's earlier documents); other questions are skipped."""
    by_id = {d.doc_id: d for d in kb}
    items = []
    for q in questions:
        doc = by_id.get(q.doc_id) if q.doc_id else None
        if doc is None:
            continue
        found = [doc.text.find(a) for a in q.answers if a and a in doc.text]
        if not found:
            continue
        before = []
        if doc.entity:
            for d in kb:
                if d.doc_id == doc.doc_id:
                    break
                if d.entity == doc.entity:
                    before.append(d.text)
        prompt = " ".join([*before, doc.text[: min(found)]]).rstrip()
        if prompt:
            items.append(Cloze(q.qid, prompt, q.answers))
    return items
