"""Contrastive fine-tuning of the embedder on the update: (question-like text, document) pairs,
in-batch negatives (MultipleNegativesRankingLoss), sentence-transformers' own trainer.

The pairs come from the update's training-only question wordings -- ``inject_qa`` (the changed
facts) and ``train_qa`` (demo entities) -- each paired with the KB v1 document that holds its
fact. Evaluation and dev questions never enter: `check_no_eval_questions` enforces it.

The tuned embedder is a copy of the base one with new weights and its own fingerprint (base
fingerprint + pairs + options + seed), so no cache or index can take its vectors for the base
embedder's, or the other way round.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch

from updatelab.data.update import KnowledgeUpdate, Question
from updatelab.progress import on_terminal
from updatelab.retrieval.embedder import Embedder

log = logging.getLogger("updatelab")


@dataclass(frozen=True)
class Pair:
    anchor: str  # a question-like text, as a query is embedded (query prefix included)
    positive: str  # its document, as a document is embedded (doc prefix included)
    source: str  # inject_qa | train_qa
    doc_id: str


@dataclass(kw_only=True)
class TuningOptions:
    # No defaults: the values live in configs/strategy/embedder_ft_reembed.yaml.
    sources: Sequence[str]
    epochs: float
    batch_size: int
    lr: float
    warmup_ratio: float
    scale: float  # MultipleNegativesRankingLoss: 1 / temperature on cosine similarity

    def __post_init__(self) -> None:
        from updatelab.config_rules import refuse_outside
        from updatelab.config_schema import EmbedderFtStrategyConfig

        self.sources = tuple(self.sources)
        # the ranges a composed config is held to (updatelab/config_schema.py), for options built in Python
        refuse_outside(EmbedderFtStrategyConfig, {**{f.name: getattr(self, f.name) for f in fields(TuningOptions)},
                                                  "sources": list(self.sources)}, "strategy.")


class EmbedderLeakError(RuntimeError):
    pass


def training_pairs(update: KnowledgeUpdate, sources: Sequence[str], query_prefix: str = "",
                   doc_prefix: str = "") -> list[Pair]:
    """(question wording, KB v1 document holding its fact) for every training QA pair of the
    chosen sources whose document is known; file order, duplicates dropped."""
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    kb = {d.doc_id: d for d in update.kb_v1}
    for source in sources:
        for p in getattr(update, source):
            if p.doc_id is None or p.doc_id not in kb or (p.question, p.doc_id) in seen:
                continue
            seen.add((p.question, p.doc_id))
            pairs.append(Pair(query_prefix + p.question, doc_prefix + kb[p.doc_id].text, source, p.doc_id))
    return pairs


def check_no_eval_questions(pairs: Sequence[Pair], questions: Sequence[Question]) -> None:
    """No evaluation (or dev) question may occur in any training text."""
    texts = [p.anchor + "\n" + p.positive for p in pairs]
    leaked = [q.question for q in questions if any(q.question in t for t in texts)]
    if leaked:
        raise EmbedderLeakError(f"{len(leaked)} evaluation question(s) occur in the embedder's training pairs, "
                                f"e.g. {leaked[0]!r}")


def tuning_key(base: Embedder, pairs: Sequence[Pair], options: TuningOptions, seed: int) -> str:
    payload = {
        "base": base.fingerprint,
        "pairs": hashlib.sha256(json.dumps([asdict(p) for p in pairs]).encode()).hexdigest(),
        "options": asdict(options) | {"sources": list(options.sources)},
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TuningResult:
    embedder: Embedder
    tokens: int  # real tokens of one pass over the pairs times the epochs run (anchors + positives)
    steps: int
    loss_curve: list[float] = field(default_factory=list)
    key: str = ""
    wall_s: float = 0.0  # the training's own clock (for a reused embedder: when it was trained)
    reused: bool = False

    def stats(self) -> dict:
        return {"tokens": self.tokens, "steps": self.steps, "loss_curve": self.loss_curve, "key": self.key,
                "wall_s": self.wall_s}


def tune_embedder(base: Embedder, pairs: Sequence[Pair], options: TuningOptions, seed: int,
                  progress: bool = False) -> TuningResult:
    """Full fine-tuning of a copy of `base` on `pairs`; `base` itself is left untouched."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers, SentenceTransformerTrainingArguments)

    t0 = time.perf_counter()
    if len(pairs) < 2:
        raise ValueError(f"embedder tuning needs at least 2 (question, document) pairs, the update gives {len(pairs)}")
    model = SentenceTransformer(base.path, device=base.device, local_files_only=True)
    model.max_seq_length = base.max_length
    # Start from exactly the weights the base embedder serves with.
    model[0].auto_model.load_state_dict(base.model.state_dict())
    data = Dataset.from_dict({"anchor": [p.anchor for p in pairs], "positive": [p.positive for p in pairs]})
    with tempfile.TemporaryDirectory(prefix="updatelab-embedder-ft-") as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, num_train_epochs=float(options.epochs), per_device_train_batch_size=int(options.batch_size),
            learning_rate=float(options.lr), seed=int(seed),
            warmup_steps=float(options.warmup_ratio),  # Transformers v5: a float below 1 is a ratio of the steps
            data_seed=int(seed),
            # Two wordings of one fact (or two facts of one document) in a batch would be false negatives.
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            # a bar on a terminal; in a redirected log the trainer prints each logged step as a line
            save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=not (progress and on_terminal()),
            use_cpu=not str(base.device).startswith("cuda"), dataloader_num_workers=0,
        )
        loss = MultipleNegativesRankingLoss(model, scale=float(options.scale))
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
        if not progress:  # without tqdm the trainer prints every logged step instead
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        out = trainer.train()
        curve = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
        steps = int(out.global_step)
    tok = base.tokenizer
    per_epoch = sum(len(ids) for ids in tok([p.anchor for p in pairs] + [p.positive for p in pairs], truncation=True,
                                            max_length=base.max_length)["input_ids"])
    tuned = _with_weights(base, model[0].auto_model.state_dict(), tuning_key(base, pairs, options, seed))
    return TuningResult(embedder=tuned, tokens=int(per_epoch * options.epochs), steps=steps, loss_curve=curve,
                        key=tuned.tuning, wall_s=time.perf_counter() - t0)


def _with_weights(base: Embedder, state: dict, key: str) -> Embedder:
    tuned = copy.copy(base)
    tuned.model = copy.deepcopy(base.model)
    tuned.model.load_state_dict(state)
    tuned.model.eval()
    tuned.tuning = key
    return tuned


def tuned_embedder(base: Embedder, pairs: Sequence[Pair], options: TuningOptions, seed: int, cache_dir: str | Path,
                   progress: bool = False) -> TuningResult:
    """`tune_embedder`, done once per tuning key: both embedder arms of a seed then query with the
    very same tuned embedder (they differ in the index alone), and each books the training's cost."""
    key = tuning_key(base, pairs, options, seed)
    shared = Path(cache_dir) / "embedder_ft" / key
    stats_file = shared / "stats.json"
    if stats_file.exists():
        log.info("reusing tuned embedder %s (identical training already done)", key)
        stats = json.loads(stats_file.read_text())
        state = torch.load(shared / "model.pt", map_location=base.device, weights_only=True)
        return TuningResult(embedder=_with_weights(base, state, key), reused=True,
                            **{k: stats[k] for k in ("tokens", "steps", "loss_curve", "key", "wall_s")})
    result = tune_embedder(base, pairs, options, seed, progress=progress)
    shared.parent.mkdir(parents=True, exist_ok=True)
    # A private folder renamed into place: two cells may finish the identical training at once.
    tmp = Path(tempfile.mkdtemp(prefix=key + ".tmp-", dir=shared.parent))
    try:
        torch.save(result.embedder.model.state_dict(), tmp / "model.pt")
        (tmp / "stats.json").write_text(json.dumps(result.stats()))
        if not stats_file.exists():
            shutil.rmtree(shared, ignore_errors=True)
            try:
                tmp.rename(shared)
            except OSError:
                if not stats_file.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
