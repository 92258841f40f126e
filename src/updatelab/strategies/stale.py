from __future__ import annotations

from dataclasses import dataclass

from updatelab.data.update import KnowledgeUpdate
from updatelab.strategies.base import RunContext, Strategy, System


@dataclass
class Stale(Strategy):
    """Nothing updated: RAG over KB v0 with the base LM — the baseline that shows what goes wrong."""

    name: str = "stale"

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        return base
