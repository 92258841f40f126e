"""Tokenize once, bucket by length, pad per batch, resume mid-epoch.

- Tokenization happens once in `LoraDataModule.__init__` (fast tokenizers batch it in Rust);
  epochs only reshuffle the order of precomputed batches.
- Length bucketing: sequences are sorted by length and cut into batches of `batch_size`, so
  each batch holds similar lengths; the *order* of the batches is shuffled every epoch by a
  generator seeded with ``seed + epoch`` (the sampler counts epochs itself). Batches are
  right-padded to their own longest sequence, which keeps padding to a few percent on
  mixed-length data (random batching pads every sequence to the longest of its batch).
- Stages (curricula such as QA first, then documents): with examples of several stages, the whole
  run is laid out up front as one ordered list of batches -- each stage's own length buckets,
  reshuffled for each of its epochs -- and Lightning sees it as a single long epoch, so
  resuming, checkpointing and step counting work unchanged.
- Mid-epoch resume: the train `DataLoader` implements ``state_dict``/``load_state_dict``, which
  Lightning saves in checkpoints and restores before iterating (`_Stateful` loaders), so a
  resumed run skips the batches of the current epoch that were already trained on instead of
  restarting the epoch. Batches are counted in `on_before_batch_transfer`, i.e. when the loop
  consumes them, not when a loader pre-fetches them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from updatelab.training.examples import TrainExample

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: torch.Tensor  # int64 [T]
    labels: torch.Tensor  # int64 [T], IGNORE_INDEX on prompt tokens
    stage: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def trained_tokens(self) -> int:
        # HF causal-LM losses shift labels left by one: position 0 is never a target.
        return int((self.labels[1:] != IGNORE_INDEX).sum())


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether `tokenizer(text)` prepends BOS by default (Llama-2/3 do, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def tokenize_examples(
    tokenizer, examples: Sequence[TrainExample], max_length: int
) -> tuple[list[TokenizedExample], dict[str, int]]:
    """Tokenize prompt and completion separately; mask the prompt; truncate to `max_length`.

    Returns the kept examples and counts: ``truncated`` (cut at max_length) and ``dropped``
    (no trained token left, e.g. a prompt longer than max_length or an empty completion).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else None
    prompts = [ex.prompt for ex in examples]
    completions = [ex.completion for ex in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if any(prompts) else [[] for _ in prompts]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    out: list[TokenizedExample] = []
    truncated = dropped = 0
    for ex, p, c in zip(examples, p_ids, c_ids):
        p = list(p) if ex.prompt else []
        c = list(c)
        if bos is not None and not (p[:1] == [bos] or (not p and c[:1] == [bos])):
            p = [bos] + p
        add_eos = ex.add_eos if ex.add_eos is not None else (not ex.prompt and (not c or c[-1] != eos))
        if add_eos:
            if eos is None:
                raise ValueError("add_eos needs a tokenizer with an eos_token")
            c = c + [eos]
        ids = p + c
        labels = [IGNORE_INDEX] * len(p) + c
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        item = TokenizedExample(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), ex.stage)
        if item.trained_tokens == 0:
            dropped += 1
            continue
        out.append(item)
    if truncated:
        log.warning("%d/%d training sequences were truncated to max_length=%d", truncated, len(examples), max_length)
    if dropped:
        log.warning("%d/%d training sequences had no trained token left and were dropped", dropped, len(examples))
    return out, {"truncated": truncated, "dropped": dropped}


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (stable), cut into consecutive batches of `batch_size`."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def staged_schedule(stages: Sequence[int], lengths: Sequence[int], batch_size: int, epochs: float,
                    seed: int) -> list[list[int]]:
    """All batches of a staged run, in training order.

    Stage by stage (ascending), the stage's examples are length-bucketed and the buckets are
    shuffled once per epoch (seeded by seed, stage and epoch); a fractional last epoch takes the
    first part of its shuffled order.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    out: list[list[int]] = []
    for stage in sorted(set(stages)):
        idx = [i for i, s in enumerate(stages) if s == stage]
        buckets = [[idx[j] for j in b] for b in length_buckets([lengths[i] for i in idx], batch_size)]
        for epoch in range(math.ceil(epochs)):
            g = torch.Generator().manual_seed(seed + 1000 * stage + epoch)
            order = torch.randperm(len(buckets), generator=g).tolist()
            if epoch + 1 > epochs:
                order = order[: max(1, round((epochs - epoch) * len(buckets)))]
            out += [buckets[b] for b in order]
    return out


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Plain shuffled batching (the baseline that bucketing is compared against)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Padded positions / all positions when every batch is padded to its longest sequence."""
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 0.0 if total == 0 else 1.0 - real / total


class BucketOrderSampler(Sampler[int]):
    """Yields batch (bucket) indices: a seeded permutation per epoch, sliced per DDP rank.

    The sampler counts epochs itself (every new iteration is the next epoch; no `set_epoch`)
    and its state (`epoch`, `consumed`) travels in checkpoints, so a resumed run continues
    with the very next batch, also from a checkpoint taken at the last batch of an epoch
    (where Lightning's restored epoch counter and the saved position disagree about whether
    the epoch is over).

    With several replicas each rank takes every `num_replicas`-th batch of the same
    permutation; the remainder is dropped so that all ranks step in lockstep.
    """

    def __init__(self, num_batches: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if num_replicas > 1 and num_batches < num_replicas:
            raise ValueError(f"{num_batches} batches cannot feed {num_replicas} ranks; lower batch_size")
        self.num_batches = num_batches
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch handed to the training loop
        self._started = False
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.num_batches // self.num_replicas if self.num_replicas > 1 else self.num_batches

    def epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_batches, generator=g).tolist()
        else:
            order = list(range(self.num_batches))
        if self.num_replicas > 1:
            order = order[: len(self) * self.num_replicas][self.rank :: self.num_replicas]
        return order

    def __iter__(self) -> Iterator[int]:
        # A generator: this body runs at the first `next`, so an iterator that Lightning
        # creates but never advances does not count as an epoch.
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if skip >= len(self):  # saved at the last batch of an epoch
                epoch, skip = epoch + 1, 0
        elif self._started:
            epoch, skip = self.epoch + 1, 0
        else:
            epoch, skip = self.epoch, 0
        self._started = True
        self.epoch, self.consumed = epoch, skip
        yield from self.epoch_order(epoch)[skip:]

    def mark_consumed(self) -> None:
        self.consumed += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["consumed"]))


class BucketBatchSampler(Sampler[list[int]]):
    """Maps the bucket indices of `order_sampler` to lists of example indices."""

    def __init__(self, buckets: list[list[int]], order_sampler: BucketOrderSampler):
        self.buckets = buckets
        self.order_sampler = order_sampler

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.order_sampler:
            yield self.buckets[b]

    def __len__(self) -> int:
        return len(self.order_sampler)


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning treats as stateful (mid-epoch resume)."""

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.order_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.order_sampler.load_state_dict(state)


class _ListDataset(Dataset):
    def __init__(self, items: list[TokenizedExample]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> TokenizedExample:
        return self.items[i]


class PadCollator:
    """Right-pads a batch to its longest sequence (optionally to a multiple of N)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        width = max(it.length for it in items)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            n = it.length
            ids[row, :n] = it.input_ids
            labels[row, :n] = it.labels
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class LoraDataModule(pl.LightningDataModule):
    """Train-only data module for `train_lora` (see the module docstring)."""

    def __init__(
        self,
        tokenizer,
        examples: Sequence[TrainExample],
        batch_size: int,
        max_length: int,
        seed: int,
        shuffle: bool = True,
        pad_to_multiple_of: int | None = None,
        epochs: float = 1.0,
    ):
        """`epochs` matters only for staged examples (one Lightning epoch is then the whole run);
        otherwise Lightning's epochs are the data's epochs."""
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.items, counts = tokenize_examples(tokenizer, examples, self.max_length)
        if not self.items:
            raise ValueError("no training example has a trained token (empty completions or prompts >= max_length)")
        self.num_truncated = counts["truncated"]
        self.num_dropped = counts["dropped"]
        self.lengths = [it.length for it in self.items]
        self.staged = len({it.stage for it in self.items}) > 1
        if self.staged:
            self.buckets = staged_schedule([it.stage for it in self.items], self.lengths, self.batch_size,
                                           float(epochs), self.seed)
            self.shuffle = False  # the schedule is already in training order
        else:
            self.buckets = length_buckets(self.lengths, self.batch_size)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.collator = PadCollator(pad, pad_to_multiple_of)
        self.num_replicas = 1
        self.rank = 0
        self.order_sampler: BucketOrderSampler | None = None

    # -- sizes and token counts (one epoch, all ranks) ------------------------------------
    @property
    def num_sequences(self) -> int:
        return len(self.items)

    @property
    def tokens_per_epoch(self) -> int:
        """Tokens of one pass over every distinct example (a staged run passes several times)."""
        return sum(self.lengths)

    @property
    def trained_tokens_per_epoch(self) -> int:
        return sum(it.trained_tokens for it in self.items)

    @property
    def padding_fraction(self) -> float:
        return padding_fraction(self.buckets, self.lengths)

    def batches_per_epoch(self, num_replicas: int = 1) -> int:
        """Micro-batches one rank sees per Lightning epoch (a staged run: the whole run)."""
        n = len(self.buckets)
        return n // num_replicas if num_replicas > 1 else n

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.order_sampler is not None:
            return
        trainer = self.trainer
        if trainer is not None:
            self.num_replicas, self.rank = int(trainer.world_size), int(trainer.global_rank)
        self.order_sampler = BucketOrderSampler(
            len(self.buckets), self.seed, self.shuffle, self.num_replicas, self.rank
        )

    def train_dataloader(self) -> ResumableDataLoader:
        if self.order_sampler is None:
            self.setup("fit")
        return ResumableDataLoader(
            _ListDataset(self.items),
            batch_sampler=BucketBatchSampler(self.buckets, self.order_sampler),
            collate_fn=self.collator,
            num_workers=0,  # data is tokenized in memory; collation is microseconds
            # Each DataLoader iterator draws a base seed; a private generator keeps that draw
            # off the global RNG, which then only feeds dropout (exact resume across epochs).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called when the training loop takes the batch (after any pre-fetching).
        if self.order_sampler is not None:
            self.order_sampler.mark_consumed()
        return batch
