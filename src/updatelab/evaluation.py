"""Ask an updated system every question and score the answers — the same for every arm."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from updatelab.data.update import Document, Question
from updatelab.metrics import qa
from updatelab.metrics.cost import forward_flops, non_embedding_params
from updatelab.metrics.retrieval import mrr, recall_at_k
from updatelab.metrics.stored import cloze_items
from updatelab.models.lm import PromptBuilder, generate
from updatelab.strategies.base import RunContext, System, nearest_documents


def prompt_builder(eval_cfg: Any) -> PromptBuilder:
    return PromptBuilder(system=eval_cfg.system_prompt, rag_user=eval_cfg.rag_user, closed_user=eval_cfg.closed_user,
                         rag_system=eval_cfg.get("rag_system_prompt"))


def retrieve(system: System, questions: Sequence[Question], k: int, ctx: RunContext) -> list[list[int]]:
    with ctx.ledger.phase("retrieve") as ph:
        hits, tokens = nearest_documents(system, [q.question for q in questions], k)
        ph.tokens += tokens
        ph.flops += forward_flops(system.embedder.n_params, tokens)
    return hits


def evaluate(system: System, questions: Sequence[Question], ctx: RunContext,
             kb: Sequence[Document] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every question; with `kb` (KB v1) also the ``stored`` probe (`stored_knowledge`)."""
    cfg = ctx.cfg.eval
    builder = prompt_builder(cfg)
    retrieved: list[list[str]] | None = None
    passages: list[list[str] | None] = [None] * len(questions)
    if system.use_retrieval:
        hits = retrieve(system, questions, cfg.top_k, ctx)
        retrieved = [[system.docs[i].doc_id for i in row] for row in hits]
        passages = [[system.docs[i].text for i in row] for row in hits]
    prompts = [builder.render(system.tokenizer, q.question, p) for q, p in zip(questions, passages)]
    with ctx.ledger.phase("generate") as ph:
        answers, gstats = generate(
            system.lm, system.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
            autocast=cfg.autocast, progress=ctx.progress, desc=f"answer ({len(prompts)} questions)",
        )
        ph.tokens += gstats.prompt_tokens + gstats.generated_tokens
        ph.flops += forward_flops(non_embedding_params(system.lm), gstats.prompt_tokens + gstats.generated_tokens)
        n = max(len(questions), 1)
        ph.extra.update(
            queries=len(questions), prompt_tokens=gstats.prompt_tokens, generated_tokens=gstats.generated_tokens,
            prompt_tokens_per_query=gstats.prompt_tokens / n,
            latency_ms_mean=1000 * float(np.mean(gstats.latencies_s)) if gstats.latencies_s else 0.0,
        )

    predictions = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        golds = [q.answer, *q.aliases]
        s = qa.score(a, golds)
        row = {"qid": q.qid, "split": q.split, "question": q.question, "gold": q.answer, "prediction": a,
               "correct": bool(s["contains"]), **s, "truncated": gstats.truncated[i]}
        if retrieved is not None:
            row["retrieved"] = retrieved[i]
            row["gold_doc"] = q.doc_id
        predictions.append(row)
    stored_splits = set(cfg.get("stored_splits") or ())
    if kb and stored_splits:
        predictions += stored_knowledge(system, [q for q in questions if q.split in stored_splits], kb, ctx)
    return split_metrics(predictions, cfg.top_k, retrieved is not None), predictions


def stored_knowledge(system: System, questions: Sequence[Question], kb: Sequence[Document],
                     ctx: RunContext) -> list[dict[str, Any]]:
    """Prediction rows of split ``stored``: does the LM alone complete each fact's KB v1 sentence?
    (`updatelab.metrics.stored`). A measurement, not serving: it is not booked as cost."""
    cfg = ctx.cfg.eval
    items = cloze_items(questions, kb)
    if not items:
        return []
    completions, cstats = generate(
        system.lm, system.tokenizer, [c.prompt for c in items], max_new_tokens=cfg.get("stored_max_new_tokens", 8),
        batch_size=cfg.batch_size, autocast=cfg.autocast, progress=ctx.progress, desc=f"stored ({len(items)} facts)",
    )
    rows = []
    for c, a, t in zip(items, completions, cstats.truncated):
        s = qa.score(a, list(c.answers))
        rows.append({"qid": f"stored:{c.qid}", "split": "stored", "question": c.prompt, "gold": c.answers[0],
                     "prediction": a, "correct": bool(s["contains"]), **s, "truncated": t})
    return rows


def split_metrics(predictions: Sequence[dict[str, Any]], k: int, with_retrieval: bool) -> dict[str, Any]:
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        by_split[p["split"]].append(p)
    metrics: dict[str, Any] = {}
    for split, rows in by_split.items():
        metrics[split] = {m: float(np.mean([r[m] for r in rows])) for m in ("em", "f1", "contains", "strict")}
        metrics[split].update(n=len(rows), contains_ci=list(qa.bootstrap_ci([r["contains"] for r in rows])),
                              strict_ci=list(qa.bootstrap_ci([r["strict"] for r in rows])),
                              # answers the token budget cut (eval.max_new_tokens): a cut answer may miss its gold
                              budget_hit=float(np.mean([r.get("truncated", False) for r in rows])))
    if with_retrieval:
        rows = [p for p in predictions if p.get("gold_doc")]
        metrics["retrieval"] = {
            f"recall@{k}": recall_at_k([r["retrieved"] for r in rows], [r["gold_doc"] for r in rows], k),
            "mrr": mrr([r["retrieved"] for r in rows], [r["gold_doc"] for r in rows]),
            "n": len(rows),
        }
    return metrics
