"""The fine-tuning arms' training data: what each recipe option puts in, in which order, and that
no evaluation question, template or dev question ever reaches training."""

import dataclasses
import re

import pytest

from updatelab.data import synthetic_vocab
from updatelab.data.load import load_update
from updatelab.data.synthetic import ensure_generated, general_qa
from updatelab.models.lm import PromptBuilder
from updatelab.strategies.lora import LeakError, check_no_leak
from updatelab.training.examples import TrainExample
from updatelab.training.recipe import Recipe, build_training_data, raft_context
from updatelab.training.replay import replay_prompts

BUILDER = PromptBuilder(system="Reply with only the answer.", rag_user="Context:\n{context}\n\nQuestion: {question}",
                        closed_user="Question: {question}", rag_system="Use the context.")
REPLAY = [TrainExample(prompt=f"<replay {i}>", completion="answer<|im_end|>", add_eos=False) for i in range(6)]


class ChatTokenizer:
    """Just enough of a chat tokenizer to render prompts (no model files needed)."""

    eos_token = "<|im_end|>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def update(tmp_path_factory):
    return load_update(ensure_generated(tmp_path_factory.mktemp("data"), seed=0, qa_templates=1))


def first_ranked(update):
    """A stand-in retriever: the KB v1 documents in file order, the same for every question."""
    ids = [d.doc_id for d in update.kb_v1]
    return lambda questions: [ids[:3] for _ in questions]


# What each test varies one option of: every training source but demo QA, no replay, no RAFT.
# (The arms' own recipes are in configs/strategy/; `configured` reads lora's.)
BASELINE = dict(docs=True, paraphrases=True, include_unchanged=False, inject_qa=True, qa_per_fact=None, demo_qa=False,
                order="mixed", replay_ratio=0.0, raft=False, raft_gold_p=0.8)


def recipe(**options) -> Recipe:
    return Recipe(**{**BASELINE, **options})


def configured(compose_cfg, **options) -> Recipe:
    arm = compose_cfg("strategy=lora").strategy
    return Recipe(**{**{f.name: arm[f.name] for f in dataclasses.fields(Recipe)}, **options})


def build(update, **options):
    return build_training_data(update, ChatTokenizer(), BUILDER, recipe(**options), replay_pool=REPLAY,
                               retriever=first_ranked(update), top_k=2, seed=0)


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{name}"), ".+") + "$")


# -- leakage ----------------------------------------------------------------------------------

def test_training_templates_are_disjoint_from_evaluation_templates_per_attribute():
    for a in synthetic_vocab.ATTRIBUTES:
        assert len(a.train_questions) >= 4
        assert not set(a.train_questions + a.reverse) & set(a.questions + a.paraphrases), a.name


def test_no_training_question_is_worded_like_an_evaluation_question(update):
    eval_patterns = [_pattern(t) for a in synthetic_vocab.ATTRIBUTES for t in a.questions + a.paraphrases]
    for qa in (*update.inject_qa, *update.train_qa):
        assert not any(p.match(qa.question) for p in eval_patterns), qa.question


@pytest.mark.parametrize("options", [
    {"docs": True, "inject_qa": True, "demo_qa": True, "replay_ratio": 1.0},
    {"include_unchanged": True, "demo_qa": True},
    {"raft": True, "demo_qa": True, "order": "qa_then_docs", "replay_ratio": 0.5},
], ids=["all-sources", "with-unchanged", "raft-pit"])
def test_no_evaluation_or_dev_question_occurs_in_any_training_text(update, options):
    texts = [e.prompt + e.completion for e in build(update, **options).examples]
    for q in (*update.questions, *update.dev):
        assert not any(q.question in t for t in texts), q.question


def test_the_dev_split_shares_no_question_or_entity_with_the_evaluation(update):
    evaluated = {q.entity for q in update.questions if q.entity}
    assert update.dev and not {q.entity for q in update.dev} & evaluated
    assert not {q.question for q in update.dev} & {q.question for q in update.questions}


def test_replay_prompts_are_disjoint_from_the_general_split():
    general = {g["question"].casefold() for g in general_qa()}
    prompts = replay_prompts()
    assert len(prompts) >= 40 and not {p.casefold() for p in prompts} & general


def test_an_injected_leak_is_caught(update):
    q = next(q for q in update.questions if q.split == "updated")
    with pytest.raises(LeakError):
        check_no_leak([TrainExample(prompt=q.question, completion=q.answer)], update.questions)


# -- what goes in ----------------------------------------------------------------------------

def test_injection_qa_covers_every_changed_fact_in_at_least_four_wordings(update):
    changed = {(e["entity"], e["attribute"]) for e in _meta(update)["edits"]}
    new = set(_meta(update)["new_entities"])
    per_fact: dict = {}
    for qa in update.inject_qa:
        if qa.answer != qa.entity:  # the reversed direction answers with the name
            per_fact.setdefault((qa.entity, qa.attribute), set()).add(qa.question)
    assert changed <= set(per_fact)
    assert {e for e, _ in per_fact} == {e for e, _ in changed} | new
    assert all(len(q) >= 4 for q in per_fact.values())


def _meta(update):
    import json
    from pathlib import Path

    return json.loads((Path(update.source) / "meta.json").read_text())


def test_loss_is_on_the_answer_only_for_every_qa_example(update):
    data = build(update, docs=False, demo_qa=True)
    assert data.examples and all(e.prompt and e.completion.endswith("<|im_end|>") for e in data.examples)
    answers = {qa.answer + "<|im_end|>" for qa in (*update.inject_qa, *update.train_qa)} | {r.completion for r in REPLAY}
    assert {e.completion for e in data.examples} <= answers


@pytest.mark.parametrize("order,expected", [
    ("mixed", [{"doc", "qa"}]),
    ("qa_then_docs", [{"qa"}, {"doc", "qa"}]),
    ("docs_then_qa", [{"doc"}, {"qa"}]),
])
def test_order_puts_documents_and_qa_into_stages(update, order, expected):
    data = build(update, order=order)
    kinds = [set() for _ in expected]
    for e in data.examples:
        kinds[e.stage].add("doc" if not e.prompt else "qa")
    assert kinds == expected and data.counts["stages"] == len(expected)


def test_replay_ratio_adds_that_many_replayed_examples_per_stage(update):
    data = build(update, docs=False, replay_ratio=0.5)
    n_qa = data.counts["inject_qa"]
    assert data.counts["replay"] == round(0.5 * n_qa) == sum(e.prompt.startswith("<replay") for e in data.examples)
    assert build(update, docs=False).counts["replay"] == 0


def test_an_option_without_its_file_is_reported_not_silently_recorded(update):
    bare = dataclasses.replace(update, train_qa=(), inject_qa=())
    data = build_training_data(bare, ChatTokenizer(), BUILDER, recipe(demo_qa=True, inject_qa=True))
    assert data.counts["inject_qa"] == data.counts["demo_qa"] == 0
    assert any("inject_qa.jsonl" in n for n in data.notes) and any("train_qa.jsonl" in n for n in data.notes)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="order"):
        recipe(order="sideways")
    with pytest.raises(ValueError, match="replay_ratio"):
        recipe(replay_ratio=-1)


# -- RAFT ------------------------------------------------------------------------------------

def test_raft_context_shows_the_gold_document_or_only_distractors():
    ranked = ["a", "b", "c"]
    assert raft_context(ranked, "b", 2, with_gold=True) == ["a", "b"]
    assert raft_context(ranked, "z", 2, with_gold=True) == ["a", "z"]  # retrieval missed it: it replaces the k-th
    assert raft_context(ranked, "a", 2, with_gold=False) == ["b", "c"]
    assert raft_context(ranked, None, 2, with_gold=True) == ["a", "b"]


def test_raft_examples_carry_passages_with_the_gold_document_at_the_set_rate(update):
    data = build(update, docs=False, raft=True, raft_gold_p=0.8)
    qa = [e for e in data.examples if not e.prompt.startswith("<replay")]
    assert all("Context:" in e.prompt for e in qa)
    rate = data.counts["raft_with_gold"] / len(qa)
    assert 0.7 < rate < 0.9
    by_doc = {d.doc_id: d.text for d in update.kb_v1}
    injected = {qa.question: qa.doc_id for qa in update.inject_qa}
    shown = sum(by_doc[injected[q]] in e.prompt for e in qa for q in [_question_of(e.prompt)] if q in injected)
    assert shown == data.counts["raft_with_gold"]


def _question_of(prompt: str) -> str:
    return prompt.split("Question: ", 1)[1].split("<|im_end|>", 1)[0]


def test_training_documents_cover_the_update_but_not_unchanged_people_by_default(update):
    docs = [e.completion for e in build(update).examples if not e.prompt]
    changed, unchanged = set(update.changed_entities()), set(update.unchanged_entities())
    assert docs and all(any(name in d for name in changed) for d in docs)
    assert not any(name in d for d in docs for name in unchanged)


def test_qa_per_fact_keeps_that_many_wordings_of_each_fact(update):
    one = build(update, docs=False, qa_per_fact=1).counts["inject_qa"]
    facts = {(qa.entity, qa.attribute) for qa in update.inject_qa}
    assert one == len(facts) < build(update, docs=False).counts["inject_qa"]
    with pytest.raises(ValueError, match="qa_per_fact"):
        recipe(qa_per_fact=0)


def test_without_qa_files_the_configured_recipe_trains_on_the_changed_documents_and_says_so(update, compose_cfg):
    own = dataclasses.replace(update, inject_qa=(), train_qa=())
    data = build_training_data(own, ChatTokenizer(), BUILDER, configured(compose_cfg, replay_ratio=0.0))
    assert data.counts["documents"] > 0 and data.counts["inject_qa"] == 0
    assert any("trained on the changed documents instead" in n for n in data.notes)
