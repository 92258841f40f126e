"""The one interface every update strategy implements.

A *system* is an LM, an embedder and (optionally) a FAISS index over a knowledge base. A
strategy takes the base system and a knowledge update and returns the updated system,
paying its costs into the run's ledger. `run.py` knows nothing about particular strategies.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import faiss

from updatelab.data.update import Document, KnowledgeUpdate
from updatelab.metrics.cost import CostLedger
from updatelab.retrieval.embedder import EmbeddingCache, Embedder, embed_documents
from updatelab.retrieval.index import build_index, index_bytes


@dataclass
class System:
    lm: Any
    tokenizer: Any
    embedder: Embedder
    docs: Sequence[Document] = ()
    index: faiss.Index | None = None
    use_retrieval: bool = True
    kb_version: str = "v0"

    def with_(self, **changes: Any) -> "System":
        return replace(self, **changes)


@dataclass
class RunContext:
    cfg: Any  # the resolved Hydra config
    ledger: CostLedger
    embedding_cache: EmbeddingCache | None
    out_dir: Path  # this attempt's Hydra output dir (logs, W&B files)
    seed: int
    artifact_dir: Path | None = None  # next to the results file, stable across attempts (adapter, checkpoints)
    logger: Any = None  # a Lightning logger bound to the cell's W&B run, or None
    progress: bool = True
    notes: dict[str, Any] = field(default_factory=dict)


class Strategy(abc.ABC):
    name: str = "strategy"

    @abc.abstractmethod
    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        """Return the updated system; record what it paid in `ctx.ledger`."""


def index_documents(system: System, docs: Sequence[Document], ctx: RunContext, kb_version: str) -> System:
    """Embed `docs` (only texts the cache has not seen) and build a fresh index over them."""
    with ctx.ledger.phase("embed") as ph:
        vectors, stats = embed_documents(
            system.embedder, ctx.embedding_cache, [d.text for d in docs], progress=ctx.progress, desc=f"embed KB {kb_version}"
        )
        ph.tokens += stats.tokens
        ph.flops += 2.0 * sum(p.numel() for p in system.embedder.model.parameters()) * stats.tokens
        ph.extra.update(n_docs=stats.n_docs, n_embedded=stats.n_embedded, n_cached=stats.n_cached)
    ctx.notes.setdefault("embed_stats", []).append(stats)
    with ctx.ledger.phase("index") as ph:
        index = build_index(vectors, ctx.cfg.index)
        ph.extra.update(index_bytes=index_bytes(index), index_kind=ctx.cfg.index.kind, n_vectors=int(index.ntotal))
    return system.with_(docs=list(docs), index=index, kb_version=kb_version)
