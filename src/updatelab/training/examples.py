"""What a strategy hands to `train_lora`, and what it gets back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainExample:
    """One training sequence: `prompt` is context (no loss), `completion` is trained on.

    - a knowledge document: ``TrainExample(prompt="", completion=doc_text)``; EOS is appended
      so the model also learns where a document ends;
    - a QA pair: ``TrainExample(prompt=chat_rendered_question_up_to_assistant_turn,
      completion=answer + end_of_turn_token)``.

    Both strings are tokenized with ``add_special_tokens=False`` (chat-rendered prompts already
    hold their special tokens as text, as in `updatelab.models.lm.generate`); a BOS token is
    prepended only when the tokenizer adds one by default and the text does not start with it.

    `add_eos`: None (default) appends the tokenizer's EOS when the prompt is empty (a document)
    and the completion does not already end with EOS; True/False force it.

    `stage`: training runs its stages in order (0, 1, ...), each for the configured epochs; one
    stage (the default) is plain mixed training. An example wanted in two stages is listed twice.
    """

    prompt: str
    completion: str
    add_eos: bool | None = None
    stage: int = 0


@dataclass
class TrainStats:
    """Summary of one `train_lora` call.

    Everything covers the whole training run, including the part done before a resume (the
    counters and the elapsed wall time travel in the checkpoint), so that a resumed or
    re-called run reports what it cost to produce this adapter. Work done after the last
    checkpoint of an interrupted session is redone, and only the redo is counted.
    """

    steps: int  # optimizer steps (global step at the end)
    epochs: float  # micro-batches processed / micro-batches per epoch
    tokens: int  # real (non-padding) tokens processed, prompt included, summed over epochs
    trained_tokens: int  # tokens that carried loss (label != -100 after the causal shift)
    wall_s: float  # training wall time: `trainer.fit` of this call + earlier sessions up to their checkpoint
    tokens_per_s: float  # tokens / wall_s
    final_loss: float  # mean loss of the last <=10 optimizer steps (nan if no step)
    loss_curve: list[float] = field(default_factory=list)  # one mean loss per optimizer step
    trainable_params: int = 0
    total_params: int = 0
    adapter_bytes: int = 0  # size of adapter_model.safetensors
    adapter_path: str = ""  # folder loadable with PeftModel.from_pretrained(base, adapter_path)
    resumed_from_step: int = 0  # global step the call started from (0 = fresh start)
    padding_fraction: float = 0.0  # padded positions / all positions of one epoch's batches
    method: str = "lora"  # lora | full
    computed_tokens: int = 0  # token positions run through the model (a batch's shared prefix once: training.loss)
    dev: dict[str, Any] | None = None  # dev-split history: [[step, score]], best_step, best_score, stopped_early
    selected_step: int = 0  # the optimizer step whose weights were returned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
