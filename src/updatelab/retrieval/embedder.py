"""A frozen sentence embedder with a content-addressed cache, so re-embedding is incremental.

We run the transformer ourselves rather than through `SentenceTransformer.encode` because
the hot path needs two things it does not do by default: the faster of fp32 and bf16 autocast
on the machine at hand (``autocast: auto``, measured once per machine by
`updatelab.hardware.choose`; bf16 keeps cosine to fp32 >= 0.9999) and a cache keyed by the
hash of each text.
Pooling follows the model folder's sentence-transformers config, so the vectors are the
model's own (mean pooling + L2 normalisation for all-MiniLM-L6-v2). ``runtime: openvino`` runs the
forward pass in OpenVINO instead (`updatelab.retrieval.openvino_runtime`), for large knowledge bases.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from updatelab.config_schema import EMBEDDER_RUNTIMES as RUNTIMES
from updatelab.models.batching import mean_pool, pad_batch
from updatelab.models.lm import autocast_context
from updatelab.progress import steps
from updatelab.retrieval import openvino_runtime


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pooling_mode(path: str) -> str:
    cfg_file = Path(path) / "1_Pooling" / "config.json"
    if not cfg_file.exists():
        return "mean"
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


class Embedder:
    def __init__(
        self,
        path: str,
        name: str,
        max_length: int = 256,
        batch_size: int = 64,
        autocast: str | None = "auto",
        normalize: bool = True,
        device: str = "cpu",
        trust_remote_code: bool = False,
        query_prefix: str = "",
        doc_prefix: str = "",
        runtime: str = "torch",
    ):
        from transformers import AutoModel, AutoTokenizer

        if runtime not in RUNTIMES:
            raise ValueError(f"embedder.runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if runtime == "openvino":
            if torch.device(device).type != "cpu":
                raise ValueError(f"embedder.runtime=openvino runs on the CPU, not on device {device!r}")
            openvino_runtime.require()
        self.runtime = runtime

        self.name, self.path = name, path
        self.max_length, self.batch_size = max_length, batch_size
        self.autocast, self.normalize, self.device = autocast, normalize, device
        self.query_prefix, self.doc_prefix = query_prefix, doc_prefix
        self.pooling = _pooling_mode(path)
        self.tuning = ""  # set when the weights are fine-tuned (retrieval.embedder_tuning): another latent space
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code).to(device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.precision = self._choose_precision(autocast)
        if autocast == "auto":
            self.autocast = self.precision.precision  # the fingerprint names what produced the vectors

    def _choose_precision(self, requested: str | None):
        """`updatelab.hardware.choose` for phase ``embed``: "auto" times one real batch (this
        embedder's batch size, at most 32 texts of 48 words) in fp32 and under bf16 autocast."""
        from updatelab import hardware

        texts = hardware.sample_texts(min(self.batch_size, 32), 48)

        def measure(candidate: str) -> None:
            kept, self.autocast = self.autocast, candidate
            try:
                self.encode(texts)
            finally:
                self.autocast = kept

        model = f"{self.name}:{self.n_params}p" + ("" if self.runtime == "torch" else f":{self.runtime}")
        return hardware.choose("embed", requested, measure=measure, model=model, device=self.device)

    @property
    def fingerprint(self) -> str:
        """What produced a vector: a cached vector is valid only for the same fingerprint."""
        parts = [self.name, self.pooling, self.max_length, self.autocast, self.normalize, self.doc_prefix]
        # Only a tuned embedder adds its tuning key, and only another runtime its name, so the base
        # embedder's cached vectors stay valid.
        extra = ([self.tuning] if self.tuning else []) + ([f"runtime={self.runtime}"] if self.runtime != "torch" else [])
        key = json.dumps(parts + extra, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress: bool = False, desc: str = "embed") -> tuple[np.ndarray, int]:
        """Vectors (float32, n x dim) in input order, and the number of real tokens processed."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, 0
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        # Sorting by length keeps padding (wasted compute) small.
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        tokens = 0
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in steps(batches, desc, progress):
            ids, mask = pad_batch(self.tokenizer, [enc[i] for i in batch])
            tokens += int(mask.sum())
            if self.runtime == "openvino":
                hidden = openvino_runtime.last_hidden_state(self.model, ids, mask, self.autocast)
            else:
                with autocast_context(self.device, self.autocast):
                    hidden = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            hidden = hidden.float()
            m = mask.to(hidden.device).unsqueeze(-1).float()
            if self.pooling == "cls":
                vec = hidden[:, 0]
            elif self.pooling == "max":
                vec = hidden.masked_fill(m == 0, -1e9).max(dim=1).values
            else:
                vec = mean_pool(hidden, mask)
            if self.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out[batch] = vec.cpu().numpy()
        return out, tokens

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encode([self.query_prefix + q for q in queries])[0]


class EmbeddingFingerprintError(ValueError):
    """Vectors of one embedder asked for (or offered) under another's fingerprint."""


class EmbeddingCache:
    """Vectors keyed by (embedder fingerprint, sha256 of text), stored as atomic npz shards.

    Shards (one per write) let concurrent sweep cells add vectors without locks: a shard
    appears whole via rename or not at all. Each shard also stores its fingerprint, and a cache
    refuses (raises) rather than hand out vectors of another embedder: after the embedder is
    tuned, the same text hash names a point of a different latent space.
    """

    def __init__(self, root: str | Path, fingerprint: str):
        self.fingerprint = fingerprint
        self.dir = Path(root) / "embeddings" / fingerprint
        self._mem: dict[str, np.ndarray] | None = None

    def _check(self, fingerprint: str | None, what: str) -> None:
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise EmbeddingFingerprintError(
                f"{what} vectors of embedder {fingerprint} in the cache of embedder {self.fingerprint}: "
                "another embedder's vectors live in another latent space (open the cache with its fingerprint)")

    def _load(self) -> dict[str, np.ndarray]:
        if self._mem is None:
            self._mem = {}
            if self.dir.exists():
                for shard in sorted(self.dir.glob("*.npz")):
                    with np.load(shard) as z:
                        if "fingerprint" in z.files:  # older shards: only the folder names the fingerprint
                            self._check(str(z["fingerprint"]), f"shard {shard.name} holds")
                        for h, v in zip(z["hashes"], z["vectors"]):
                            self._mem[str(h)] = v
        return self._mem

    def get(self, hashes: Sequence[str], fingerprint: str | None = None) -> dict[str, np.ndarray]:
        """Cached vectors by hash; `fingerprint`: the embedder asking (refused unless it is the cache's)."""
        self._check(fingerprint, "asked for")
        mem = self._load()
        return {h: mem[h] for h in hashes if h in mem}

    def put(self, hashes: Sequence[str], vectors: np.ndarray, fingerprint: str | None = None) -> None:
        self._check(fingerprint, "offered")
        if not len(hashes):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()[:20]
        fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=self.dir)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, hashes=np.array(list(hashes)), vectors=vectors.astype(np.float32),
                     fingerprint=np.array(self.fingerprint))
        os.replace(tmp, self.dir / f"{name}.npz")
        mem = self._load()
        for h, v in zip(hashes, vectors):
            mem[h] = v


@dataclass
class EmbedStats:
    n_docs: int
    n_embedded: int  # computed now
    n_cached: int  # taken from the cache
    tokens: int
    wall_s: float


def embed_documents(
    embedder: Embedder,
    cache: EmbeddingCache | None,
    texts: Sequence[str],
    progress: bool = True,
    desc: str = "embed",
    known: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Embed only texts whose content hash is not already known; reuse the rest.

    `known` (hash -> vector) is what the system already holds — for an update, the vectors of
    the current index — and, when given, is the only source of reuse: the update then pays for
    exactly the documents it changed, whatever earlier runs left in the cache. Without it the
    shared cache is the source (building the base system once for all matched arms).
    """
    t0 = time.perf_counter()
    fingerprint = getattr(embedder, "fingerprint", None)
    texts = [embedder.doc_prefix + t for t in texts]
    hashes = [text_hash(t) for t in texts]
    if known is not None:
        known = {h: known[h] for h in hashes if h in known}
    else:
        known = cache.get(hashes, fingerprint) if cache is not None else {}
    missing = sorted({h: i for i, h in enumerate(hashes) if h not in known}.values())
    fresh, tokens = embedder.encode([texts[i] for i in missing], progress=progress, desc=desc)
    if cache is not None:
        cache.put([hashes[i] for i in missing], fresh, fingerprint)
    by_hash = dict(known)
    by_hash.update({hashes[i]: fresh[j] for j, i in enumerate(missing)})
    vectors = np.stack([by_hash[h] for h in hashes]).astype(np.float32) if texts else np.zeros((0, embedder.dim), np.float32)
    stats = EmbedStats(len(texts), len(missing), len(texts) - len(missing), tokens, time.perf_counter() - t0)
    return vectors, stats


def build_embedder(path: str, cfg: Mapping[str, Any], device: str = "cpu") -> Embedder:
    return Embedder(
        path,
        name=cfg["name"],
        max_length=cfg.get("max_length", 256),
        batch_size=cfg.get("batch_size", 64),
        autocast=cfg.get("autocast", "auto"),
        normalize=cfg.get("normalize", True),
        device=device,
        trust_remote_code=cfg.get("trust_remote_code", False),
        query_prefix=cfg.get("query_prefix", ""),
        doc_prefix=cfg.get("doc_prefix", ""),
        runtime=cfg.get("runtime", "torch"),
    )
