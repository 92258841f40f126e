from __future__ import annotations

from dataclasses import dataclass

from updatelab.data.update import KnowledgeUpdate
from updatelab.strategies.base import RunContext, Strategy, System, index_documents


@dataclass
class Reembed(Strategy):
    """Re-embed KB v1 with the frozen embedder and rebuild the index; the LM is untouched.

    Incremental: documents whose content hash the cache holds (every unchanged document,
    embedded when the base system was built) are not embedded again. The ledger records the
    documents actually embedded and what a full re-embed would have cost.
    """

    name: str = "reembed"

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        updated = index_documents(base, update.kb_v1, ctx, kb_version="v1", incremental_from=base)
        embed = ctx.ledger.phases["embed"]
        n_new, n_all = embed.extra["n_embedded"], len(update.kb_v1)
        embed.extra["changed_fraction"] = n_new / max(n_all, 1)
        # What a full re-embed would have cost, at this run's measured per-document rate.
        if n_new:
            embed.extra["full_reembed_est_s"] = embed.wall_s / n_new * n_all
        return updated.with_(use_retrieval=True)
