"""The training loss: causal-LM cross-entropy on the labelled (answer) tokens only, computed with
as little work as gives the same loss.

Two savings, each exact up to floating-point summation order:

- the vocabulary projection and its float32 log-softmax only where a label is: prompt tokens
  (a QA row's chat template and question) carry no loss, yet the HF forward projects every
  position onto the 49k-token vocabulary;
- a **shared prefix** once per batch: QA rows start with the same chat-template tokens (system
  turn, "Question: "), and under causal attention those positions have the same hidden states
  in every row. The prefix runs once (batch 1), its keys and values are repeated for every row,
  and the rows run only their own tokens on top. The prefix's gradient is the sum of every
  row's, as in the full computation, because the repeat's backward sums the copies.

Rows share a prefix only where it carries no loss, is unpadded in every row, and no dropout is
active (rows computed separately draw separate dropout masks; one shared prefix would not).
"""

from __future__ import annotations

import inspect

import torch

from updatelab.training.datamodule import IGNORE_INDEX

# A prefix shorter than this costs a second forward call for little saving.
MIN_SHARED_PREFIX = 4


def shared_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """Leading positions identical and unpadded in every row, whose targets (positions 1..P)
    are all unlabelled: the prefix that can run once. 0 when shorter than MIN_SHARED_PREFIX."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if ids.shape[0] < 2:
        return 0
    same = ((ids == ids[:1]) & (mask == 1)).all(0)
    unlabelled = (labels[:, 1:] == IGNORE_INDEX).all(0)  # [j] is the target predicted at position j
    n_same = int(same.long().cumprod(0).sum())
    n_unlabelled = int(unlabelled.long().cumprod(0).sum())
    prefix = min(n_same, n_unlabelled, ids.shape[1] - 1)
    return prefix if prefix >= MIN_SHARED_PREFIX else 0


def _cache_argument(decoder: torch.nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` in later transformers 5 releases, before that
    ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _dropout_active(model: torch.nn.Module) -> bool:
    return model.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _projection_parts(model: torch.nn.Module):
    """(base model, decoder, head) when the head is a plain linear projection, else None (models
    with more than that, e.g. logit soft-capping, take the HF forward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "get_decoder", lambda: None)()
    head = base.get_output_embeddings()
    if decoder is None or not isinstance(head, torch.nn.Linear) or getattr(base.config, "final_logit_softcapping", None):
        return None
    return base, decoder, head


def prefix_to_share(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """The prefix `labelled_positions_loss` runs once for this batch (0: none)."""
    if _projection_parts(model) is None or _dropout_active(model):
        return 0
    return shared_prefix_length(batch)


def computed_tokens(batch: dict[str, torch.Tensor], prefix: int) -> int:
    """Token positions the model runs for the batch: the real tokens, the shared prefix once."""
    return int(batch["attention_mask"].sum()) - prefix * (batch["input_ids"].shape[0] - 1 if prefix else 0)


def labelled_positions_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], prefix: int | None = None) -> torch.Tensor:
    """Causal-LM loss (mean over target tokens), equal to the HF forward's `loss`; `prefix`:
    the positions to run once (None: `prefix_to_share`; 0: none)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    parts = _projection_parts(model)
    if parts is None:
        return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    base, decoder, head = parts
    prefix = prefix_to_share(model, batch) if prefix is None else prefix
    if prefix:
        from transformers import DynamicCache

        cache = DynamicCache(config=base.config)
        name = _cache_argument(decoder)
        decoder(input_ids=ids[:1, :prefix], use_cache=True, **{name: cache})  # fills the cache in place
        cache.batch_repeat_interleave(ids.shape[0])
        hidden = decoder(input_ids=ids[:, prefix:], attention_mask=mask, use_cache=True, **{name: cache}).last_hidden_state
    else:
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    targets = labels[:, prefix + 1 :]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep])
