"""The one training-data builder of the fine-tuning arms (`lora`, `full_ft`, `lora_rag`).

A recipe is a set of options, not a new arm (../shared/DESIGN.md): what to train on, in which
order, with how much replay. The options follow what made fine-tuning learn facts in the
literature (../shared/anchors.md):

- ``docs`` / ``paraphrases``: the changed documents, in several renderings (Allen-Zhu & Li 3.1:
  one phrasing is stored but not extractable);
- ``inject_qa``: QA about the changed facts themselves, in training-only wordings (Jiang et al.
  2024, Mecklenburg et al. 2024); ``qa_per_fact`` caps the wordings per fact (null: all);
- ``demo_qa``: QA about never-evaluated demo entities, which teaches the answer format;
- ``order``: ``mixed``, ``qa_then_docs`` (PIT: QA first, then QA mixed with documents) or
  ``docs_then_qa`` (continued pre-training, then QA);
- ``replay_ratio``: replayed examples of the base model's own answers per other example in a
  stage (self-generated rehearsal against forgetting);
- ``raft``: QA examples carry retrieved passages -- the gold document with probability
  ``raft_gold_p``, distractors otherwise (RAFT, Zhang et al. 2024) -- so that a model that
  answers with retrieval keeps reading them.

The loss is on answer tokens only: a QA example's prompt is context (`TrainExample.prompt`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

from updatelab.data.update import KnowledgeUpdate, QAPair
from updatelab.models.lm import PromptBuilder
from updatelab.training.examples import TrainExample
from updatelab.training.replay import take_cyclic


Retriever = Callable[[Sequence[str]], list[list[str]]]
"""Questions -> ranked doc_ids of KB v1 for each (at least top_k + 1 of them)."""


@dataclass(kw_only=True)
class Recipe:
    # No defaults: the values live in the config tree (configs/strategy/lora.yaml and the arms
    # built on it); a recipe built in Python names every option.
    docs: bool
    paraphrases: bool
    include_unchanged: bool
    inject_qa: bool
    qa_per_fact: int | None
    demo_qa: bool
    order: str
    replay_ratio: float
    raft: bool
    raft_gold_p: float

    def __post_init__(self) -> None:
        from updatelab.config_rules import refuse_outside
        from updatelab.config_schema import RecipeStrategyConfig

        # the ranges a composed config is held to (updatelab/config_schema.py), for a Recipe built in Python
        refuse_outside(RecipeStrategyConfig, {f.name: getattr(self, f.name) for f in fields(Recipe)}, "strategy.")


@dataclass
class TrainingData:
    examples: list[TrainExample]
    counts: dict[str, int] = field(default_factory=dict)  # what actually went in, by source
    notes: list[str] = field(default_factory=list)  # options that had nothing to work on
    # Where the update's inject_qa came from: "file" (the user's or the generator's inject_qa.jsonl),
    # "generated:<model>" (updatelab.data.qa_generation: `inject_qa_generation` says what it kept
    # and dropped) or "none".
    inject_qa_source: str = "none"
    inject_qa_generation: dict | None = None

    def record(self, recipe: Recipe) -> dict:
        """What ran, for the results file: the options and the example counts they produced."""
        out = {"recipe": asdict(recipe), "counts": dict(self.counts), "notes": list(self.notes),
               "inject_qa_source": self.inject_qa_source}
        if self.inject_qa_generation is not None:
            out["inject_qa_generation"] = dict(self.inject_qa_generation)
        return out


def document_texts(update: KnowledgeUpdate, recipe: Recipe) -> list[str]:
    changed = set(update.changed_entities())
    if recipe.paraphrases and update.train_docs:
        return [d.text for d in update.train_docs if recipe.include_unchanged or d.entity in changed]
    # Users' own data may have no renderings: train on the KB v1 documents themselves.
    changed_ids = set(update.changed_doc_ids())
    return [d.text for d in update.kb_v1 if recipe.include_unchanged or d.doc_id in changed_ids]


def per_fact(pairs: Sequence[QAPair], n: int | None) -> list[QAPair]:
    """The first `n` QA pairs (file order) of each fact (entity, attribute); all of them for None.
    Pairs without an entity or attribute are each their own fact."""
    if n is None:
        return list(pairs)
    seen: dict[tuple, int] = {}
    out = []
    for i, p in enumerate(pairs):
        key = (p.entity, p.attribute) if p.entity and p.attribute else ("#", i)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= n:
            out.append(p)
    return out


def raft_context(ranked: Sequence[str], gold: str | None, k: int, with_gold: bool) -> list[str]:
    """The k doc_ids a RAFT example shows: the gold one among the top k (it replaces the k-th if
    retrieval missed it), or -- for the examples that must learn to cope without it -- the top k
    without it. Without a known gold document, the top k as retrieved."""
    if gold is None:
        return list(ranked[:k])
    others = [d for d in ranked if d != gold]
    if not with_gold:
        return others[:k]
    top = list(ranked[:k])
    if gold not in top:
        top = others[: k - 1] + [gold]
    return top


def qa_examples(pairs: Sequence[QAPair], tokenizer, builder: PromptBuilder, update: KnowledgeUpdate, recipe: Recipe,
                retriever: Retriever | None, top_k: int, seed: int) -> tuple[list[TrainExample], int]:
    """Chat-rendered QA examples (loss on the answer only); with RAFT, passages in the prompt.
    Returns (examples, how many RAFT examples show the gold document)."""
    end = tokenizer.eos_token or ""
    contexts: list[list[str] | None] = [None] * len(pairs)
    n_gold = 0
    if recipe.raft:
        if retriever is None:
            raise ValueError("strategy.raft needs retrieval (an arm that answers with passages)")
        rng = random.Random(f"updatelab.raft/seed={seed}")
        ranked = retriever([p.question for p in pairs])
        for i, (p, r) in enumerate(zip(pairs, ranked)):
            with_gold = rng.random() < recipe.raft_gold_p
            ids = raft_context(r, p.doc_id, top_k, with_gold)
            n_gold += int(p.doc_id in ids)
            contexts[i] = [update.doc(d).text for d in ids]
    examples = [TrainExample(prompt=builder.render(tokenizer, p.question, c), completion=p.answer + end, add_eos=False)
                for p, c in zip(pairs, contexts)]
    return examples, n_gold


def build_training_data(update: KnowledgeUpdate, tokenizer, builder: PromptBuilder, recipe: Recipe, *,
                        replay_pool: Sequence[TrainExample] = (), retriever: Retriever | None = None,
                        top_k: int = 2, seed: int = 0) -> TrainingData:
    notes: list[str] = []
    pairs: list[QAPair] = []
    if recipe.inject_qa:
        if update.inject_qa:
            pairs += per_fact(update.inject_qa, recipe.qa_per_fact)
        else:
            notes.append("inject_qa is on but the update has no inject_qa.jsonl: no injection QA trained")
    if recipe.demo_qa:
        if update.train_qa:
            pairs += update.train_qa
        else:
            notes.append("demo_qa is on but the update has no train_qa.jsonl: no demo QA trained")
    pairs = list(dict.fromkeys(pairs))  # a demo fact can be in both files
    qa, n_gold = qa_examples(pairs, tokenizer, builder, update, recipe, retriever, top_k, seed)
    use_docs = recipe.docs
    if not qa and not use_docs and recipe.inject_qa and not update.inject_qa:
        # Your own data without QA: the changed documents are what there is to learn from.
        use_docs = True
        notes.append("no QA to train on: trained on the changed documents instead (as strategy.docs=true)")
    docs = [TrainExample(prompt="", completion=t) for t in document_texts(update, recipe)] if use_docs else []
    if recipe.replay_ratio > 0 and not replay_pool:
        notes.append("replay_ratio > 0 but no replay examples could be made: no replay trained")
    if not qa and not docs:
        raise ValueError("the recipe leaves nothing to train on (no documents, no QA): check strategy.docs, "
                         "strategy.inject_qa, strategy.demo_qa and the update's files")

    if recipe.order == "mixed" or not qa or not docs:
        stages = [docs + qa]
        if recipe.order != "mixed":
            notes.append(f"order={recipe.order} needs both documents and QA: trained as one mixed stage")
    elif recipe.order == "qa_then_docs":
        stages = [qa, docs + qa]
    else:
        stages = [docs, qa]
    examples: list[TrainExample] = []
    n_replay = 0
    for s, stage in enumerate(stages):
        replay = take_cyclic(replay_pool, round(recipe.replay_ratio * len(stage)))
        n_replay += len(replay)
        examples += [TrainExample(e.prompt, e.completion, e.add_eos, stage=s) for e in stage + replay]
    injected, demo = set(update.inject_qa), set(update.train_qa)
    counts = {"documents": len(docs), "inject_qa": sum(p in injected for p in pairs) if recipe.inject_qa else 0,
              "demo_qa": sum(p in demo for p in pairs) if recipe.demo_qa else 0,
              "replay": n_replay, "replay_distinct": len(replay_pool) if recipe.replay_ratio > 0 else 0,
              "raft_with_gold": n_gold if recipe.raft else 0, "stages": len(stages), "examples": len(examples)}
    return TrainingData(examples, counts, notes, inject_qa_source="file" if update.inject_qa else "none")
