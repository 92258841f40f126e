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
import numpy as np

from updatelab.data.update import Document, KnowledgeUpdate
from updatelab.metrics.cost import CostLedger, forward_flops
from updatelab.retrieval.embedder import EmbeddingCache, Embedder, embed_documents, text_hash
from updatelab.retrieval.index import build_index, index_bytes, search


@dataclass
class System:
    lm: Any
    tokenizer: Any
    embedder: Embedder
    docs: Sequence[Document] = ()
    index: faiss.Index | None = None
    vectors: np.ndarray | None = None  # embeddings of `docs`, row for row (what the index holds)
    vectors_fingerprint: str | None = None  # the embedder that made `vectors` (None: `embedder`)
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


def nearest_documents(system: System, texts: Sequence[str], k: int) -> tuple[list[list[int]], int]:
    """For each text, the positions in `system.docs` of its top-k documents (as queries are
    embedded), and the real tokens the query embedding processed."""
    if not texts:
        return [], 0
    qvecs, tokens = system.embedder.encode([system.embedder.query_prefix + t for t in texts])
    _, ids = search(system.index, qvecs, k)
    return [[int(i) for i in row if i >= 0] for row in ids], tokens


def index_documents(
    system: System, docs: Sequence[Document], ctx: RunContext, kb_version: str, incremental_from: System | None = None
) -> System:
    """Embed `docs` and build a fresh index over them.

    With `incremental_from`, only documents whose content hash is not in that system's index
    are embedded (the honest cost of an incremental re-embed); otherwise the shared cache
    supplies whatever it holds (building the base system, which every arm shares). Vectors made
    by another embedder (another fingerprint: e.g. before it was tuned) are refused, so a
    changed embedder forces a full re-embed.
    """
    known, refused = None, False
    if incremental_from is not None and incremental_from.vectors is not None:
        made_by = incremental_from.vectors_fingerprint or incremental_from.embedder.fingerprint
        refused = made_by != system.embedder.fingerprint
        prefix = system.embedder.doc_prefix
        known = {} if refused else {
            text_hash(prefix + d.text): v for d, v in zip(incremental_from.docs, incremental_from.vectors)}
    with ctx.ledger.phase("embed") as ph:
        vectors, stats = embed_documents(
            system.embedder, ctx.embedding_cache, [d.text for d in docs], progress=ctx.progress,
            desc=f"embed KB {kb_version}", known=known,
        )
        ph.tokens += stats.tokens
        ph.flops += forward_flops(system.embedder.n_params, stats.tokens)
        ph.extra.update(n_docs=stats.n_docs, n_embedded=stats.n_embedded, n_cached=stats.n_cached)
        if refused:
            ph.extra["reuse_refused"] = "the index's vectors are another embedder's: full re-embed"
    ctx.notes.setdefault("embed_stats", []).append(stats)
    with ctx.ledger.phase("index") as ph:
        index = build_index(vectors, ctx.cfg.index)
        ph.extra.update(index_bytes=index_bytes(index), index_kind=ctx.cfg.index.kind, n_vectors=int(index.ntotal))
    return system.with_(docs=list(docs), index=index, vectors=vectors, kb_version=kb_version,
                        vectors_fingerprint=system.embedder.fingerprint)
