"""Evaluation questions never leak into LoRA training data."""

import pytest

from updatelab.data.synthetic import ensure_generated
from updatelab.data.load import load_update
from updatelab.data.update import QAPair
from updatelab.models.lm import PromptBuilder
from updatelab.strategies.lora import LeakError, build_training_examples, check_no_leak

BUILDER = PromptBuilder(system="Reply with only the answer.", rag_user="{context}\n{question}", closed_user="Question: {question}")


class ChatTokenizer:
    """Just enough of a chat tokenizer to render prompts (no model files needed)."""

    eos_token = "<|im_end|>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def update(tmp_path_factory):
    return load_update(ensure_generated(tmp_path_factory.mktemp("data"), seed=0))


@pytest.mark.parametrize("include_unchanged", [False, True])
def test_no_evaluation_question_occurs_in_any_training_text(update, include_unchanged):
    examples = build_training_examples(update, ChatTokenizer(), BUILDER, include_unchanged=include_unchanged)
    texts = [e.prompt + e.completion for e in examples]
    for q in update.questions:
        assert not any(q.question in t for t in texts), q.question


def test_qa_training_is_about_people_never_evaluated(update):
    evaluated = {q.entity for q in update.questions if q.entity}
    assert update.train_qa and not ({qa.entity for qa in update.train_qa} & evaluated)


def test_training_documents_cover_the_update_but_not_unchanged_people_by_default(update):
    examples = build_training_examples(update, ChatTokenizer(), BUILDER)
    docs = [e.completion for e in examples if not e.prompt]
    changed = set(update.changed_entities())
    unchanged = set(update.unchanged_entities())
    assert all(any(name in d for name in changed) for d in docs)
    assert not any(name in d for d in docs for name in unchanged)


def test_an_injected_leak_is_caught(update):
    q = next(q for q in update.questions if q.split == "updated")
    import dataclasses

    leaky = dataclasses.replace(update, train_qa=update.train_qa + (QAPair(q.question, q.answer, "x", "y"),))
    with pytest.raises(LeakError):
        check_no_leak(build_training_examples(leaky, ChatTokenizer(), BUILDER), update.questions)
