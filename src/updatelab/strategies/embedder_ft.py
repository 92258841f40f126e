"""The stale-index hazard: tune the embedder on the update, then keep the old index or re-embed.

Both arms fine-tune the embedder contrastively (`updatelab.retrieval.embedder_tuning`) on
(training question wording, KB v1 document) pairs; the LM is untouched.

- `embedder_ft_stale`: the index a team that kept re-embedding with the *old* embedder has --
  KB v1, incrementally re-embedded by the base embedder, exactly `reembed`'s index -- queried with
  the tuned embedder: documents in the old latent space, queries in the new one.
- `embedder_ft_reembed`: KB v1 re-embedded with the tuned embedder. Every stored vector belongs
  to the old space, so the incremental re-embed refuses them (another embedder fingerprint) and
  the whole KB is embedded again.

Against `reembed` (same index as the stale arm, old queries) the stale arm isolates what the
mismatch of spaces costs; against the re-embedded arm, what the tuning gains when paid for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace

from updatelab.data.update import KnowledgeUpdate
from updatelab.metrics.cost import forward_flops
from updatelab.retrieval.embedder import Embedder
from updatelab.retrieval.embedder_tuning import (
    TuningOptions, check_no_eval_questions, training_pairs, tuned_embedder)
from updatelab.strategies.base import RunContext, Strategy, System, index_documents
from updatelab.strategies.reembed import Reembed


@dataclass(kw_only=True)
class EmbedderFtReembed(TuningOptions, Strategy):
    """The tuning options (`TuningOptions`: sources, epochs, batch_size, lr, ...) are this arm's
    config keys, validated when Hydra instantiates it."""

    name: str = "embedder_ft_reembed"

    def options(self) -> TuningOptions:
        return TuningOptions(sources=self.sources, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                             warmup_ratio=self.warmup_ratio, scale=self.scale)

    def tune(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> Embedder:
        e = base.embedder
        pairs = training_pairs(update, self.sources, e.query_prefix, e.doc_prefix)
        check_no_eval_questions(pairs, (*update.questions, *update.dev))
        with ctx.ledger.phase("train") as ph:
            result = tuned_embedder(e, pairs, self.options(), ctx.seed, ctx.cfg.paths.cache_dir, ctx.progress)
        # The training's own clock: for a reused embedder, what the identical training cost when it ran.
        ph.wall_s = result.wall_s
        ph.tokens = result.tokens
        ph.flops = 3 * forward_flops(e.n_params, result.tokens)  # forward + backward, every weight trained
        ph.extra.update(what="embedder", pairs=len(pairs), steps=result.steps,
                        final_loss=result.loss_curve[-1] if result.loss_curve else None,
                        trainable_params=e.n_params, reused_embedder=result.reused, tuning_key=result.key)
        ctx.notes["train_loss_curve"] = result.loss_curve
        ctx.notes["training"] = {
            "what": "embedder", "options": asdict(self.options()) | {"sources": list(self.sources)},
            "counts": dict(Counter(p.source for p in pairs)), "steps": result.steps,
            "base_fingerprint": e.fingerprint, "tuned_fingerprint": result.embedder.fingerprint,
        }
        return result.embedder

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        tuned = base.with_(embedder=self.tune(base, update, ctx))
        # The shared cache holds the base embedder's vectors (it would refuse these), and a re-run
        # must pay the full re-embed again: no cache.
        updated = index_documents(tuned, update.kb_v1, replace(ctx, embedding_cache=None), kb_version="v1",
                                  incremental_from=base)
        embed = ctx.ledger.phases["embed"]
        embed.extra["changed_fraction"] = len(update.changed_doc_ids()) / max(len(update.kb_v1), 1)
        ctx.notes["training"].update(index_fingerprint=updated.vectors_fingerprint,
                                     query_fingerprint=updated.embedder.fingerprint)
        return updated.with_(use_retrieval=True)


@dataclass(kw_only=True)
class EmbedderFtStale(EmbedderFtReembed):
    name: str = "embedder_ft_stale"

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        kept = Reembed().apply(base, update, ctx)  # the index maintained with the old embedder
        updated = kept.with_(embedder=self.tune(base, update, ctx))  # queries in the new space
        ctx.notes["training"].update(index_fingerprint=updated.vectors_fingerprint,
                                     query_fingerprint=updated.embedder.fingerprint)
        return updated
