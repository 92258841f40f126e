"""FAISS indexes over normalised embeddings (inner product = cosine)."""

from __future__ import annotations

from typing import Any, Mapping

import faiss
import numpy as np

KINDS = ("flat", "hnsw", "ivf")


def build_index(vectors: np.ndarray, cfg: Mapping[str, Any]) -> faiss.Index:
    kind = cfg.get("kind", "flat")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(cfg.get("hnsw_m", 32)), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(cfg.get("ef_construction", 80))
        index.hnsw.efSearch = int(cfg.get("ef_search", 64))
    elif kind == "ivf":
        # FAISS wants ~39 training points per centroid; a small KB gets fewer lists.
        nlist = max(1, min(int(cfg.get("nlist", 256)), n // 39 or 1))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(int(cfg.get("nprobe", 16)), nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
    index.add(vectors)
    if cfg.get("use_gpu", False) and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def index_bytes(index: faiss.Index) -> int:
    if hasattr(faiss, "index_gpu_to_cpu") and not isinstance(index, (faiss.IndexFlat, faiss.IndexHNSW, faiss.IndexIVF)):
        try:
            index = faiss.index_gpu_to_cpu(index)
        except Exception:  # already a CPU index of another type
            pass
    return int(faiss.serialize_index(index).nbytes)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
