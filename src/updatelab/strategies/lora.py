"""Knowledge injection by LoRA fine-tuning (PEFT inside Lightning); answers closed-book.

Training data follow what is known to make facts extractable at this scale (Allen-Zhu & Li,
Physics of LMs 3.1): several renderings of every changed person's bio (paraphrase
augmentation), plus QA pairs about *demo* people who are never evaluated, in the exact chat
format of the evaluation, to teach the extraction format. Evaluation questions never enter
training; `check_no_leak` enforces it at run time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from omegaconf import OmegaConf

from updatelab.data.update import KnowledgeUpdate, Question
from updatelab.metrics.cost import lora_train_flops, non_embedding_params
from updatelab.models.lm import PromptBuilder
from updatelab.strategies.base import RunContext, Strategy, System, index_documents
from updatelab.training.examples import TrainExample, TrainStats

log = logging.getLogger("updatelab")


class LeakError(RuntimeError):
    pass


def build_training_examples(
    update: KnowledgeUpdate,
    tokenizer,
    builder: PromptBuilder,
    include_unchanged: bool = False,
    paraphrases: bool = True,
    qa_mixing: bool = True,
) -> list[TrainExample]:
    changed = update.changed_entities()
    keep = (lambda e: True) if include_unchanged else (lambda e: e in changed)
    if paraphrases and update.train_docs:
        docs = [d.text for d in update.train_docs if keep(d.entity)]
    else:
        # Users' own data may have no renderings: train on the KB v1 documents themselves.
        changed_ids = update.changed_doc_ids()
        docs = [d.text for d in update.kb_v1 if include_unchanged or d.doc_id in changed_ids]
    examples = [TrainExample(prompt="", completion=t) for t in docs]
    if qa_mixing:
        end = tokenizer.eos_token or ""
        for qa in update.train_qa:
            examples.append(TrainExample(prompt=builder.render(tokenizer, qa.question, None), completion=qa.answer + end, add_eos=False))
    return examples


def check_no_leak(examples: Sequence[TrainExample], questions: Sequence[Question]) -> None:
    """No evaluation question may appear verbatim in any training text."""
    texts = [e.prompt + "\n" + e.completion for e in examples]
    leaked = [q.question for q in questions if any(q.question in t for t in texts)]
    if leaked:
        raise LeakError(f"{len(leaked)} evaluation question(s) occur in the training data, e.g. {leaked[0]!r}")


@dataclass
class Lora(Strategy):
    name: str = "lora"
    include_unchanged: bool = False  # train on changed/new people only: the update, not a re-train
    paraphrases: bool = True
    qa_mixing: bool = True
    reuse_adapter: bool = True  # an identical training (same data, config, seed) is done once per cache

    config_groups: ClassVar[tuple[str, ...]] = ("adapter", "trainer")

    def _training_key(self, ctx: RunContext, update: KnowledgeUpdate, examples: Sequence[TrainExample]) -> str:
        payload = {
            "model": OmegaConf.to_container(ctx.cfg.model, resolve=True),
            "adapter": OmegaConf.to_container(ctx.cfg.adapter, resolve=True),
            "trainer": OmegaConf.to_container(ctx.cfg.trainer, resolve=True),
            "seed": ctx.seed,
            "examples": hashlib.sha256(json.dumps([asdict(e) for e in examples]).encode()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def train(self, base: System, update: KnowledgeUpdate, ctx: RunContext):
        from peft import PeftModel

        from updatelab.evaluation import prompt_builder
        from updatelab.pipeline import is_rank_zero
        from updatelab.training.train import train_lora

        examples = build_training_examples(
            update, base.tokenizer, prompt_builder(ctx.cfg.eval), self.include_unchanged, self.paraphrases, self.qa_mixing
        )
        check_no_leak(examples, update.questions)
        key = self._training_key(ctx, update, examples)
        shared = Path(ctx.cfg.paths.cache_dir) / "adapters" / key
        stats_file = shared / "train_stats.json"
        train_dir = (ctx.artifact_dir or ctx.out_dir) / "train"
        with ctx.ledger.phase("train") as ph:
            if self.reuse_adapter and stats_file.exists():
                # Deterministic training with identical inputs gives the identical adapter: load it,
                # and book the cost it took when it was trained.
                log.info("reusing adapter %s (identical training already done)", key)
                model = PeftModel.from_pretrained(base.lm, shared / "adapter").eval()
                stats = TrainStats(**json.loads(stats_file.read_text()))
                # Every cell keeps its own adapter next to its results file, reused or not.
                if is_rank_zero():
                    shutil.copytree(shared / "adapter", train_dir / "adapter", dirs_exist_ok=True)
                stats.adapter_path = str(train_dir / "adapter")
                if ctx.logger is not None:  # this cell's W&B run shows the loss curve of the training it uses
                    for step, loss in enumerate(stats.loss_curve):  # Lightning logs step k's loss at step k-1
                        ctx.logger.log_metrics({"train/loss": loss}, step=step)
                reused = True
            else:
                model, stats = train_lora(
                    base.lm, base.tokenizer, examples, OmegaConf.to_container(ctx.cfg.adapter, resolve=True),
                    OmegaConf.to_container(ctx.cfg.trainer, resolve=True), out_dir=train_dir, seed=ctx.seed,
                    logger=ctx.logger, progress=ctx.progress,
                )
                if self.reuse_adapter and is_rank_zero():  # DDP: rank 0 alone saved the adapter
                    # A private temporary folder: concurrent cells (lora and lora_rag of one seed in a
                    # job array) may finish the identical training at the same time.
                    shared.parent.mkdir(parents=True, exist_ok=True)
                    tmp = Path(tempfile.mkdtemp(prefix=shared.name + ".tmp-", dir=shared.parent))
                    tmp.chmod(0o755)  # mkdtemp makes it 0700
                    try:
                        shutil.copytree(stats.adapter_path, tmp / "adapter")
                        (tmp / "train_stats.json").write_text(json.dumps(stats.to_dict()))
                        if not stats_file.exists():  # else another cell stored the identical adapter first
                            shutil.rmtree(shared, ignore_errors=True)
                            try:
                                tmp.rename(shared)
                            except OSError:  # ... in between
                                if not stats_file.exists():
                                    raise
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
                reused = False
        n_base = non_embedding_params(base.lm.get_base_model() if hasattr(base.lm, "get_base_model") else base.lm)
        # The training's own clock (it spans resumed attempts; for a reused adapter it is what the
        # identical training cost when it ran), not this call's.
        ph.wall_s = stats.wall_s
        ph.tokens = stats.tokens
        ph.flops = lora_train_flops(n_base, stats.trainable_params, stats.tokens)
        ph.extra.update({
                "examples": len(examples), "steps": stats.steps, "epochs": stats.epochs, "trained_tokens": stats.trained_tokens,
                "tokens_per_s": stats.tokens_per_s, "final_loss": stats.final_loss, "trainable_params": stats.trainable_params,
                "total_params": stats.total_params, "adapter_bytes": stats.adapter_bytes, "reused_adapter": reused,
                "adapter_key": key,
            })
        ctx.notes.setdefault("artifacts", {})["adapter"] = {"path": stats.adapter_path, "bytes": stats.adapter_bytes}
        ctx.notes["train_loss_curve"] = stats.loss_curve
        return model

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        return base.with_(lm=self.train(base, update, ctx), use_retrieval=False, docs=(), index=None)


@dataclass
class LoraRag(Lora):
    """The fine-tuned LM answering with retrieval over the re-embedded KB v1."""

    name: str = "lora_rag"

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        tuned = base.with_(lm=self.train(base, update, ctx))
        return index_documents(tuned, update.kb_v1, ctx, kb_version="v1", incremental_from=base).with_(use_retrieval=True)
