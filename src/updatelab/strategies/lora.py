"""Knowledge injection by fine-tuning (LoRA through PEFT, or every weight) inside Lightning.

The three fine-tuning arms share one training-data builder (`updatelab.training.recipe`); their
options are the recipe's -- what to train on, in which order, with how much replay, RAFT
passages or not -- plus checkpoint selection on the dev split (`adapter.select`). `lora` and
`full_ft` answer closed-book; `lora_rag` answers with retrieval over the re-embedded KB v1.
Evaluation questions never enter training; `check_no_leak` enforces it at run time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from updatelab.data.update import KnowledgeUpdate, Question
from updatelab.metrics import qa
from updatelab.metrics.cost import lora_train_flops, non_embedding_params
from updatelab.models.lm import PromptBuilder, generate
from updatelab.strategies.base import RunContext, Strategy, System, index_documents, nearest_documents
from updatelab.training.examples import TrainExample, TrainStats
from updatelab.training.recipe import Recipe, TrainingData, build_training_data
from updatelab.training.replay import rehearsal_examples

log = logging.getLogger("updatelab")


class LeakError(RuntimeError):
    pass


def check_no_leak(examples: Sequence[TrainExample], questions: Sequence[Question]) -> None:
    """No evaluation (or dev) question may appear verbatim in any training text."""
    texts = [e.prompt + "\n" + e.completion for e in examples]
    leaked = [q.question for q in questions if any(q.question in t for t in texts)]
    if leaked:
        raise LeakError(f"{len(leaked)} evaluation question(s) occur in the training data, e.g. {leaked[0]!r}")


def ranked_doc_ids(system: System, texts: Sequence[str], k: int) -> list[list[str]]:
    """Top-k KB doc_ids of `system`'s index for each text (training-time retrieval: not serving cost)."""
    hits, _ = nearest_documents(system, texts, k)
    return [[system.docs[i].doc_id for i in row] for row in hits]


def dev_scorer(dev: Sequence[Question], tokenizer, prompts: Sequence[str], eval_cfg: Any):
    """model -> accuracy (`contains`) on the dev questions, from their prompts as the evaluation
    renders them, decoded as the evaluation decodes."""

    def score(model) -> float:
        answers, _ = generate(model, tokenizer, prompts, max_new_tokens=int(eval_cfg.max_new_tokens),
                              batch_size=int(eval_cfg.batch_size), autocast=eval_cfg.autocast, progress=False)
        return float(np.mean([qa.contains(a, q.answers) for q, a in zip(dev, answers)]))

    return score


@dataclass(kw_only=True)
class Lora(Recipe, Strategy):
    """The recipe's options (`Recipe`: docs, inject_qa, order, replay_ratio, raft, ...) are this
    arm's config keys, validated when Hydra instantiates it; like them, the two below have their
    values in the config tree only (configs/strategy/lora.yaml)."""

    name: str = "lora"
    reuse_adapter: bool  # an identical training (same data, config, seed) is done once per cache
    adapter_overrides: dict | None  # adapter keys this arm sets (full_ft: method, lr); null = none

    # qa_generator: part of the cell only when it names a model (updatelab.run.cell_config).
    config_groups: ClassVar[tuple[str, ...]] = ("adapter", "trainer", "qa_generator")

    def recipe(self) -> Recipe:
        return Recipe(**{f.name: getattr(self, f.name) for f in fields(Recipe)})

    def adapter_cfg(self, ctx: RunContext) -> dict[str, Any]:
        overrides = self.adapter_overrides
        if isinstance(overrides, DictConfig):
            overrides = OmegaConf.to_container(overrides, resolve=True)
        return {**OmegaConf.to_container(ctx.cfg.adapter, resolve=True), **dict(overrides or {})}

    def _training_key(self, ctx: RunContext, acfg: dict, examples: Sequence[TrainExample],
                      dev_prompts: Sequence[str]) -> str:
        payload = {
            "model": OmegaConf.to_container(ctx.cfg.model, resolve=True),
            "adapter": acfg,
            "trainer": OmegaConf.to_container(ctx.cfg.trainer, resolve=True),
            "seed": ctx.seed,
            "examples": hashlib.sha256(json.dumps([asdict(e) for e in examples]).encode()).hexdigest(),
            "dev": hashlib.sha256(json.dumps(list(dev_prompts)).encode()).hexdigest() if dev_prompts else None,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def training_data(self, base: System, update: KnowledgeUpdate, ctx: RunContext, builder: PromptBuilder,
                      reader: System | None) -> TrainingData:
        """The recipe's examples; `reader` (a system with a KB v1 index) supplies passages for a
        retrieval arm's replay and RAFT examples. An update without inject_qa gets the QA that
        ``qa_generator`` writes about its changed documents (none by default; only these arms pay)."""
        recipe = self.recipe()
        qa_source: dict[str, Any] = {"source": "file" if update.inject_qa else "none"}
        if recipe.inject_qa and not update.inject_qa:
            from updatelab.data.qa_generation import with_inject_qa

            update, qa_source = with_inject_qa(update, ctx.cfg, base.lm, base.tokenizer)
        generated = qa_source.get("generation")
        if generated is not None and not recipe.docs:
            # Generated QA covers what its model chose to ask: it adds to the changed documents the
            # arm would train on without it (the fallback below), it does not replace them.
            recipe = replace(recipe, docs=True)
        k = int(ctx.cfg.eval.top_k)
        retrieve = (lambda texts: ranked_doc_ids(reader, texts, k + 1)) if reader is not None else None
        pool: list[TrainExample] = []
        if recipe.replay_ratio > 0:
            def passages_for(questions: list[str]) -> list[list[str]] | None:
                return [[update.doc(d).text for d in r[:k]] for r in retrieve(questions)] if retrieve else None

            pool, cached = rehearsal_examples(
                base.lm, base.tokenizer, builder, ctx.cfg.eval, ctx.cfg.paths.cache_dir,
                model_key=json.dumps(OmegaConf.to_container(ctx.cfg.model, resolve=True), sort_keys=True),
                passages_for=passages_for, progress=ctx.progress)
            log.info("replay: %d self-generated answers of the base model%s", len(pool), " (cached)" if cached else "")
        data = build_training_data(update, base.tokenizer, builder, recipe, replay_pool=pool, retriever=retrieve,
                                   top_k=k, seed=ctx.seed)
        data.inject_qa_source = qa_source["source"]
        if (gen := generated) is not None:
            data.inject_qa_generation = gen
            if recipe.docs and not self.docs:
                data.notes.append(f"inject_qa generated by {gen['model']}: the changed documents are trained on as "
                                  "well (as strategy.docs=true)")
            if not gen["kept"]:
                data.notes.append(f"qa_generator {gen['model']} kept none of its {gen['parsed']} parsed QA pairs "
                                  f"(dropped: {gen['dropped_by_reason'] or 'nothing parsed'})")
        for note in data.notes:
            log.warning("%s", note)
        return data

    def train(self, base: System, update: KnowledgeUpdate, ctx: RunContext, reader: System | None = None):
        from updatelab.evaluation import prompt_builder
        from updatelab.pipeline import is_rank_zero
        from updatelab.training.train import train_lora

        builder = prompt_builder(ctx.cfg.eval)
        data = self.training_data(base, update, ctx, builder, reader)
        check_no_leak(data.examples, (*update.questions, *update.dev))
        acfg = self.adapter_cfg(ctx)
        full = acfg.get("method") == "full"
        if not update.dev and (acfg.get("select") == "best_dev" or acfg.get("patience")):
            data.notes.append("adapter.select=best_dev but the update has no dev.jsonl: trained to the last step")
            log.warning("%s", data.notes[-1])
            acfg.update(select="last", patience=None)
        dev_score, dev_prompts = None, []
        if update.dev and (acfg.get("select") == "best_dev" or acfg.get("patience")):
            k = int(ctx.cfg.eval.top_k)
            ranked = ranked_doc_ids(reader, [q.question for q in update.dev], k) if reader is not None else None
            passages = [[update.doc(d).text for d in r] for r in ranked] if ranked else [None] * len(update.dev)
            dev_prompts = [builder.render(base.tokenizer, q.question, p) for q, p in zip(update.dev, passages)]
            dev_score = dev_scorer(update.dev, base.tokenizer, dev_prompts, ctx.cfg.eval)
        key = self._training_key(ctx, acfg, data.examples, dev_prompts)
        reuse = self.reuse_adapter and not full  # a full model is too big to keep a second copy of
        shared = Path(ctx.cfg.paths.cache_dir) / "adapters" / key
        stats_file = shared / "train_stats.json"
        train_dir = (ctx.artifact_dir or ctx.out_dir) / "train"
        with ctx.ledger.phase("train") as ph:
            if reuse and stats_file.exists():
                from peft import PeftModel

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
                lm = copy.deepcopy(base.lm) if full else base.lm  # full fine-tuning must leave the base intact
                model, stats = train_lora(
                    lm, base.tokenizer, data.examples, acfg, OmegaConf.to_container(ctx.cfg.trainer, resolve=True),
                    out_dir=train_dir, seed=ctx.seed, logger=ctx.logger, progress=ctx.progress, dev_score=dev_score,
                )
                if reuse and is_rank_zero():  # DDP: rank 0 alone saved the adapter
                    self._publish(shared, stats)
                reused = False
        n_base = non_embedding_params(base.lm.get_base_model() if hasattr(base.lm, "get_base_model") else base.lm)
        # The training's own clock (it spans resumed attempts; for a reused adapter it is what the
        # identical training cost when it ran), not this call's.
        ph.wall_s = stats.wall_s
        ph.tokens = stats.tokens
        # FLOPs of the positions that ran (a batch's shared prefix once); a training recorded before
        # the prefix was shared ran every token.
        computed = stats.computed_tokens or stats.tokens
        ph.flops = lora_train_flops(n_base, stats.trainable_params, computed)
        ph.extra.update({
                "examples": len(data.examples), "steps": stats.steps, "epochs": stats.epochs,
                "trained_tokens": stats.trained_tokens, "computed_tokens": computed, "tokens_per_s": stats.tokens_per_s,
                "final_loss": stats.final_loss, "trainable_params": stats.trainable_params,
                "total_params": stats.total_params, "adapter_bytes": stats.adapter_bytes, "reused_adapter": reused,
                "adapter_key": key, "method": stats.method, "selected_step": stats.selected_step,
            })
        ctx.notes.setdefault("artifacts", {})["adapter"] = {"path": stats.adapter_path, "bytes": stats.adapter_bytes}
        ctx.notes["train_loss_curve"] = stats.loss_curve
        ctx.notes["training"] = {**data.record(self.recipe()), "dev": stats.dev, "selected_step": stats.selected_step,
                                 "steps": stats.steps,  # what ran: the adapter keys after this arm's overrides
                                 "adapter": {k: acfg.get(k) for k in ("method", "lr", "epochs", "max_steps", "select",
                                                                      "patience")}}
        return model

    @staticmethod
    def _publish(shared: Path, stats: TrainStats) -> None:
        """Store the adapter in the shared cache. A private temporary folder: concurrent cells
        (lora and lora_rag of one seed in a job array) may finish the identical training at once."""
        shared.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=shared.name + ".tmp-", dir=shared.parent))
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        stats_file = shared / "train_stats.json"
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

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        return base.with_(lm=self.train(base, update, ctx), use_retrieval=False, docs=(), index=None)


@dataclass(kw_only=True)
class FullFt(Lora):
    """Full fine-tuning on the same data: the reference LoRA is compared to (Biderman et al. 2024)."""

    name: str = "full_ft"


@dataclass(kw_only=True)
class LoraRag(Lora):
    """The fine-tuned LM answering with retrieval over the re-embedded KB v1."""

    name: str = "lora_rag"

    def apply(self, base: System, update: KnowledgeUpdate, ctx: RunContext) -> System:
        # The index first: RAFT examples, replay and dev prompts show passages retrieved from it.
        reader = index_documents(base, update.kb_v1, ctx, kb_version="v1", incremental_from=base)
        return reader.with_(lm=self.train(base, update, ctx, reader=reader), use_retrieval=True)
