from __future__ import annotations

from dataclasses import dataclass

from updatelab.data.update import KnowledgeUpdate
from updatelab.strategies.base import RunContext, Strategy, System


@dataclass
class ClosedBook(Strategy):
    """The base LM alone, no retrieval: what the model knows before any update.

    Not an update strategy but the reference `lora` must be read against: its `general`
    accuracy is the forgetting baseline (RAG arms answer general questions with retrieved,
    irrelevant passages in the prompt, which is a different condition).
    """

    name: str = "closed_book"

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        return base.with_(use_retrieval=False, docs=(), index=None, vectors=None, kb_version="")
