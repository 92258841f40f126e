"""Glue between the pipeline and `metrics.shift`: which models, which probe, which cache."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from updatelab import hardware
from updatelab.data.update import KnowledgeUpdate
from updatelab.metrics import kl as klm
from updatelab.metrics import shift as sh
from updatelab.metrics import weight_delta as wd
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
        self.general = sh.probe_texts([])  # the general text alone: what the next-token KL is taken on
        t0 = time.perf_counter()
        self.base_lm_fp = weights_fingerprint(base.lm)
        # Kept for the KL and ΔW of a plain (non-PEFT) arm: full fine-tuning trains a copy, so this
        # stays the base model; `measure` checks that before using it.
        self.base_model = base.lm
        self.autocast = self._resolve_autocast(base.lm, base.tokenizer)
        # The CKA states depend on the CKA keys and the precision that ran, not on the KL/ΔW options.
        cka_cfg = {k: v for k, v in OmegaConf.to_container(self.s, resolve=True).items()
                   if k not in ("kl", "intruders", "autocast")}
        key = lambda what, autocast: [what, OmegaConf.to_container(cfg.model if what == "lm" else cfg.embedder, resolve=True),
                                      cka_cfg, self.texts, autocast]
        self.base_lm = sh.cached_states(cfg.paths.cache_dir, key("lm", self.autocast),
                                        lambda: self._lm_states(base.lm, base.tokenizer, "probe base LM"))
        self.base_emb = sh.cached_states(cfg.paths.cache_dir, key("embedder", base.embedder.autocast),
                                         lambda: self._emb_states(base))
        self.base_docs, self.base_vectors = list(base.docs), base.vectors
        self.setup_s = time.perf_counter() - t0

    def _resolve_autocast(self, lm, tokenizer) -> str:
        """`hardware.choose` for phase ``shift``: "auto" times one probe batch of the base LM in fp32
        and under bf16 autocast, once per machine (bf16 is slower on CPUs without AMX)."""
        sample = self.texts[: self.s.forward_batch_size]

        def measure(candidate: str) -> None:
            sh.pooled_hidden_states(lm, tokenizer, sample, len(sample), self.s.pooling, candidate, self.s.max_length)

        return hardware.choose("shift", self.s.autocast, measure=measure if sample else None,
                               model=hardware.model_id(lm), device=next(lm.parameters()).device).precision

    def _lm_states(self, lm, tokenizer, desc: str) -> torch.Tensor:
        return sh.pooled_hidden_states(lm, tokenizer, self.texts, self.s.forward_batch_size, self.s.pooling,
                                       self.autocast, self.s.max_length, progress=self.cfg.progress, desc=desc)

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
        out: dict[str, Any] = {"lm": {**_rounded(lm), **self._beyond_cka(updated, lm["base_weights_untouched"])},
                               "embedder": _rounded(emb)}
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

    def _beyond_cka(self, updated: System, base_weights_untouched: bool) -> dict[str, Any]:
        """Next-token KL on the general text and the weight-space ΔW keys, for every arm.

        The base side: a PEFT model with its adapter disabled (its base weights are the base
        model's, checked by fingerprint), else the kept base model; an arm whose LM is the base
        object itself is compared with itself, which gives exactly 0 by computation.
        """
        model, out = updated.lm, {}
        same = model is self.base_model
        if hasattr(model, "peft_config"):
            base_side = klm.LMSide(model, model.disable_adapter) if base_weights_untouched else None
            why = "the adapter's base weights differ from the base model's"
        else:
            # A LoRA injected into the kept model in place would change its forward unseen by the
            # fingerprint (adapter tensors are excluded from it).
            intact = not any("lora_" in n for n, _ in self.base_model.named_parameters()) and (
                same or weights_fingerprint(self.base_model) == self.base_lm_fp)
            base_side = klm.LMSide(self.base_model) if intact else None
            why = "the kept base model was modified"
        kl_cfg = self.s.get("kl") or {}
        if kl_cfg.get("enabled", True):
            t0 = time.perf_counter()
            if base_side is None:
                out.update(kl_mean=None, kl_note=why)
            else:
                out.update(klm.next_token_kl(
                    base_side, None if same else klm.LMSide(model), updated.tokenizer, self.general,
                    batch_size=int(kl_cfg.get("batch_size", 4)), max_length=self.s.max_length,
                    autocast=self.autocast, per_layer=bool(kl_cfg.get("per_layer", True)),
                    lens_tokens=kl_cfg.get("lens_tokens")))
            out["kl_wall_s"] = time.perf_counter() - t0
        icfg = self.s.get("intruders") or {}
        if icfg.get("enabled", True):
            t0 = time.perf_counter()
            if base_side is None:
                out.update(delta=None, intruders_total=None, delta_note=why)
            else:
                inner = model.get_base_model() if hasattr(model, "get_base_model") else model
                out.update(wd.summarise(self.base_model, model, int(inner.config.num_hidden_layers),
                                        top_k=int(icfg.get("top_k", 10)), epsilon=float(icfg.get("epsilon", 0.5))))
            out["delta_wall_s"] = time.perf_counter() - t0
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
