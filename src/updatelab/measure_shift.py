"""Glue between the pipeline and `metrics.shift`: which models, which probe, which cache."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from updatelab.data.update import KnowledgeUpdate
from updatelab.metrics import shift as sh
from updatelab.strategies.base import RunContext, System


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the base model's parameters (adapter tensors excluded), in name order."""
    h = hashlib.sha256()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    items = sorted((n.replace(".base_layer", ""), n, p) for n, p in base.state_dict().items())
    for _, name, p in items:
        if "lora_" in name:
            continue
        # PEFT wraps each adapted Linear, renaming its weight `...base_layer.weight`.
        h.update(name.replace(".base_layer", "").encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ShiftProbe:
    """Base-model probe states, computed (or loaded from cache) before the strategy runs."""

    def __init__(self, cfg: DictConfig, base: System, update: KnowledgeUpdate):
        self.cfg, self.s = cfg, cfg.shift
        self.texts = sh.probe_texts(update.questions)
        t0 = time.perf_counter()
        self.base_lm_fp = weights_fingerprint(base.lm)
        key = lambda what: [what, OmegaConf.to_container(cfg.model if what == "lm" else cfg.embedder, resolve=True),
                            OmegaConf.to_container(self.s, resolve=True), self.texts]
        self.base_lm = sh.cached_states(cfg.paths.cache_dir, key("lm"), lambda: self._lm_states(base.lm, base.tokenizer, "probe base LM"))
        self.base_emb = sh.cached_states(cfg.paths.cache_dir, key("embedder"), lambda: self._emb_states(base))
        self.base_docs, self.base_vectors = list(base.docs), base.vectors
        self.setup_s = time.perf_counter() - t0

    def _lm_states(self, lm, tokenizer, desc: str) -> torch.Tensor:
        return sh.pooled_hidden_states(lm, tokenizer, self.texts, self.s.forward_batch_size, self.s.pooling,
                                       self.s.autocast, self.s.max_length, progress=self.cfg.progress, desc=desc)

    def _emb_states(self, system: System) -> torch.Tensor:
        e = system.embedder
        return sh.pooled_hidden_states(e.model, e.tokenizer, self.texts, self.s.forward_batch_size, "mean",
                                       e.autocast, e.max_length, progress=False)

    def measure(self, updated: System, update: KnowledgeUpdate, ctx: RunContext) -> dict[str, Any]:
        t0 = time.perf_counter()
        lm = sh.compare(self.base_lm, self._lm_states(updated.lm, updated.tokenizer, "probe updated LM"), self.s.batch_size)
        lm["base_weights_untouched"] = weights_fingerprint(updated.lm) == self.base_lm_fp
        lm["has_adapter"] = hasattr(updated.lm, "peft_config")
        lm["moved"] = lm["has_adapter"] or not lm["base_weights_untouched"]  # LoRA, or full fine-tuning
        emb = sh.compare(self.base_emb, self._emb_states(updated), self.s.batch_size)
        out: dict[str, Any] = {"lm": _rounded(lm), "embedder": _rounded(emb)}
        if updated.kb_version == "v1" and updated.vectors is not None and self.base_vectors is not None:
            out["kb_drift"] = sh.kb_drift(
                {d.doc_id: v for d, v in zip(self.base_docs, self.base_vectors)},
                {d.doc_id: v for d, v in zip(updated.docs, updated.vectors)},
                set(update.changed_doc_ids()),
            )
        else:
            out["kb_drift"] = {"applied": False, "note": f"this arm's index holds KB {updated.kb_version or 'none'}"}
        out["wall_s"] = time.perf_counter() - t0 + self.setup_s
        return out


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    """CKA of identical states is 1 up to float rounding (1 - 1e-16); 10 decimals say it plainly."""
    def r(v):
        if isinstance(v, float):
            return round(v, 10)
        if isinstance(v, list):
            return [r(x) for x in v]
        return v
    return {k: r(v) for k, v in d.items()}
