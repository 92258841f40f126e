"""Shift beyond CKA (issue 17): next-token KL (metrics.kl), intruder dimensions and ΔW
(metrics.weight_delta), and their wiring into the shift record (measure_shift.ShiftProbe).

Known answers on tiny seeded inputs: an analytic KL, exactly 0 for a model against itself,
one intruder for a large rank-1 perturbation. Models are tiny random Llamas; no network."""

import copy
import math
import time
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from updatelab.metrics import kl as klm
from updatelab.metrics import weight_delta as wd

N_BLOCKS = 3
TEXTS = ["the cat sat on the mat", "a b c", "rivers flow to the sea and the sea is wide", "one"]


class CharTokenizer:
    """Characters as tokens (ids 1..63), 0 = padding: the shape of a Hugging Face tokenizer's call."""

    pad_token_id = 0

    def __call__(self, texts, truncation=True, max_length=128, add_special_tokens=True):
        ids = [[1 + ord(c) % 63 for c in t][:max_length] for t in texts]
        return {"input_ids": ids}

    def pad(self, batch, padding=True, padding_side="right", return_tensors="pt"):
        rows = batch["input_ids"]
        width = max(map(len, rows))
        fill = [[0] * (width - len(r)) for r in rows]
        join = (lambda f, r: f + r) if padding_side == "left" else (lambda f, r: r + f)
        return {"input_ids": torch.tensor([join(f, list(r)) for f, r in zip(fill, rows)]),
                "attention_mask": torch.tensor([join([0] * len(f), [1] * len(r)) for f, r in zip(fill, rows)])}


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=N_BLOCKS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def with_lora(model, r: int = 4, zero_b: bool = True):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "down_proj"]))
    if not zero_b:  # a trained adapter: B away from its zero initialisation
        g = torch.Generator().manual_seed(1)
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.data = torch.randn(p.shape, generator=g) * 0.5
    return peft.eval()


# ------------------------------------------------------------------------------ KL, pure


def test_kl_of_a_known_distribution_pair_is_the_analytic_value():
    p = torch.tensor([[0.5, 0.5], [0.1, 0.9]], dtype=torch.float64)
    q = torch.tensor([[0.9, 0.1], [0.1, 0.9]], dtype=torch.float64)
    got = klm.kl_from_logits(p.log(), q.log())
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert got[0].item() == pytest.approx(expected, abs=1e-12)
    assert got[1].item() == 0.0
    # logits are defined up to a constant per row
    assert klm.kl_from_logits(p.log() + 3.0, q.log() - 7.0)[0].item() == pytest.approx(expected, abs=1e-12)
    # a three-way pair against torch's own KL
    a, b = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    ref = torch.nn.functional.kl_div(b.log().double(), a.log().double(), log_target=True, reduction="sum")
    assert klm.kl_from_logits(a.log()[None], b.log()[None]).item() == pytest.approx(ref.item(), abs=1e-12)


def test_kl_of_identical_logits_is_exactly_zero_and_never_negative():
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0)) * 10
    assert torch.equal(klm.kl_from_logits(x, x.clone()), torch.zeros(5, dtype=torch.float64))
    assert (klm.kl_from_logits(x, x + 1e-7 * torch.randn_like(x)) >= 0).all()


# ------------------------------------------------------------------------------ KL, models


def test_next_token_kl_of_a_model_with_itself_is_exactly_zero():
    m, tok = tiny_llama(), CharTokenizer()
    same = klm.next_token_kl(klm.LMSide(m), None, tok, TEXTS, batch_size=2)
    assert same["kl_mean"] == 0.0 and same["kl_per_layer"] == [0.0] * N_BLOCKS
    assert same["kl_n_tokens"] == sum(len(t) for t in TEXTS)  # every real token, no padding
    twin = klm.next_token_kl(klm.LMSide(m), klm.LMSide(copy.deepcopy(m)), tok, TEXTS, batch_size=2)
    assert twin["kl_mean"] == 0.0 and twin["kl_per_layer"] == [0.0] * N_BLOCKS  # two objects, same weights


def test_next_token_kl_matches_a_direct_computation_and_ignores_padding():
    base, other, tok = tiny_llama(0), tiny_llama(1), CharTokenizer()
    got = klm.next_token_kl(klm.LMSide(base), klm.LMSide(other), tok, TEXTS, batch_size=3)
    # one text at a time (no padding at all), KL from torch's kl_div, the lens written out by hand
    total, per_block, n = 0.0, [0.0] * N_BLOCKS, 0
    with torch.no_grad():
        for t in TEXTS:
            ids = torch.tensor(tok([t])["input_ids"])
            ob, ou = base(input_ids=ids, output_hidden_states=True), other(input_ids=ids, output_hidden_states=True)

            def kl(lb, lu):
                return torch.nn.functional.kl_div(torch.log_softmax(lu.double(), -1), torch.log_softmax(lb.double(), -1),
                                                  log_target=True, reduction="sum").item()

            total += kl(ob.logits[0], ou.logits[0])
            for i in range(N_BLOCKS - 1):
                lens_b = base.lm_head(base.model.norm(ob.hidden_states[i + 1][0]))
                lens_u = other.lm_head(other.model.norm(ou.hidden_states[i + 1][0]))
                per_block[i] += kl(lens_b, lens_u)
            per_block[-1] += kl(ob.logits[0], ou.logits[0])
            n += ids.shape[1]
    assert got["kl_mean"] > 0 and got["kl_mean"] == pytest.approx(total / n, rel=1e-5)
    assert got["kl_per_layer"] == pytest.approx([v / n for v in per_block], rel=1e-5)
    assert got["kl_per_layer"][-1] == pytest.approx(got["kl_mean"], rel=1e-12)  # the last block's reading is the output


def test_the_logit_lens_on_a_token_subset_reads_every_kth_real_token_and_the_mean_stays_exact():
    base, other, tok = tiny_llama(0), tiny_llama(1), CharTokenizer()
    full = klm.next_token_kl(klm.LMSide(base), klm.LMSide(other), tok, TEXTS, batch_size=3)
    n = sum(len(t) for t in TEXTS)
    k = -(-n // 5)
    sub = klm.next_token_kl(klm.LMSide(base), klm.LMSide(other), tok, TEXTS, batch_size=3, lens_tokens=5)
    assert sub["kl_mean"] == pytest.approx(full["kl_mean"], rel=1e-9) and sub["kl_n_tokens"] == n
    assert sub["kl_lens_tokens"] == len(range(0, n, k)) <= 5
    # the same positions one text at a time: token j of the concatenated texts is read iff j % k == 0
    per_block, j = [0.0] * N_BLOCKS, 0
    with torch.no_grad():
        for t in TEXTS:
            ids = torch.tensor(tok([t])["input_ids"])
            ob, ou = base(input_ids=ids, output_hidden_states=True), other(input_ids=ids, output_hidden_states=True)
            keep = [p for p in range(ids.shape[1]) if (j + p) % k == 0]
            j += ids.shape[1]
            for i in range(N_BLOCKS):
                hb = ob.hidden_states[i + 1][0, keep]
                hu = ou.hidden_states[i + 1][0, keep]
                lb = ob.logits[0, keep] if i == N_BLOCKS - 1 else base.lm_head(base.model.norm(hb))
                lu = ou.logits[0, keep] if i == N_BLOCKS - 1 else other.lm_head(other.model.norm(hu))
                per_block[i] += klm.kl_from_logits(lb, lu).sum().item()
    assert sub["kl_per_layer"] == pytest.approx([v / sub["kl_lens_tokens"] for v in per_block], rel=1e-5)


def test_a_fresh_lora_gives_exactly_zero_kl_and_a_trained_one_does_not():
    tok = CharTokenizer()
    fresh = with_lora(tiny_llama())  # B = 0: the adapter adds exactly nothing
    got = klm.next_token_kl(klm.LMSide(fresh, fresh.disable_adapter), klm.LMSide(fresh), tok, TEXTS)
    assert got["kl_mean"] == 0.0 and got["kl_per_layer"] == [0.0] * N_BLOCKS
    trained = with_lora(tiny_llama(), zero_b=False)
    got = klm.next_token_kl(klm.LMSide(trained, trained.disable_adapter), klm.LMSide(trained), tok, TEXTS)
    assert got["kl_mean"] > 0 and got["kl_per_layer"][0] > 0  # block 0 holds an adapted module
    # the base side really is the base model
    base = tiny_llama()
    assert klm.next_token_kl(klm.LMSide(base), klm.LMSide(trained, trained.disable_adapter), tok, TEXTS)["kl_mean"] == 0.0


# ------------------------------------------------------------------------------ weight space, pure


def spectrum(singular_values, m=48, n=24, seed=0):
    """An m x n weight with the given singular values and random orthonormal singular vectors."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, m, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    s = torch.tensor(singular_values, dtype=torch.float32)
    return (u[:, : len(s)] * s) @ v[:, : len(s)].T, u, v


def test_effective_rank_known_values():
    assert wd.effective_rank(torch.tensor([2.0, 2.0, 2.0, 2.0])) == pytest.approx(4.0, abs=1e-12)
    assert wd.effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0, abs=1e-12)
    assert wd.effective_rank(torch.zeros(3)) == 0.0
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, so the effective rank is 2^1.5
    assert wd.effective_rank(torch.tensor([0.5, 0.25, 0.25]) * 7) == pytest.approx(2 ** 1.5, abs=1e-12)


def test_a_large_rank_one_perturbation_gives_exactly_one_intruder():
    # Full rank, well separated singular values 24..1; the perturbation's left vector lies outside
    # the column space and its right vector is the weakest row direction (singular value 1), so the
    # updated weight's top singular vector is the new direction, tilted by ~1/1000 only.
    w, u, v = spectrum([float(24 - i) for i in range(24)])
    delta = 1000.0 * torch.outer(u[:, 30], v[:, 23])
    d = wd.module_delta(w, w + delta, top_k=10, epsilon=0.5)
    assert d["intruders"] == 1
    assert d["eff_rank"] == pytest.approx(1.0, abs=1e-4)
    assert d["fro"] == pytest.approx(1000.0, rel=1e-5) and d["spectral"] == pytest.approx(1000.0, rel=1e-5)
    n, cos = wd.intruder_dimensions(w, w + delta, top_k=10, epsilon=0.5)
    assert n == 1 and cos[0] < 1e-2 and min(cos[1:]) > 0.9  # the new top direction is the intruder


def test_a_rank_one_perturbation_of_a_random_square_weight_gives_one_intruder():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 64, generator=g) / 8
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    delta = 50.0 * torch.outer(a / a.norm(), b / b.norm())
    d = wd.module_delta(w, w + delta)
    assert d["intruders"] == 1 and d["eff_rank"] == pytest.approx(1.0, abs=1e-4)


def test_identical_weights_give_no_intruders_and_zero_norms():
    w, _, _ = spectrum([3.0, 2.0, 1.0, 0.5])
    assert wd.module_delta(w, w.clone()) == {"intruders": 0, "fro": 0.0, "spectral": 0.0, "eff_rank": 0.0}
    g = torch.Generator().manual_seed(0)
    full = torch.randn(32, 16, generator=g)
    assert wd.intruder_dimensions(full, full.clone())[0] == 0  # the SVD route says the same


def test_block_index_reads_the_module_name():
    assert wd.block_index("model.layers.12.mlp.down_proj") == 12
    assert wd.block_index("base_model.model.model.layers.0.self_attn.q_proj") == 0
    assert wd.block_index("transformer.h.3.attn.c_attn") == 3
    assert wd.block_index("lm_head") is None


# ------------------------------------------------------------------------------ weight space, models


def test_lora_delta_is_b_a_times_scale_and_the_merged_weight():
    peft = with_lora(tiny_llama(), r=4, zero_b=False)
    merged = copy.deepcopy(peft).merge_and_unload()
    found = {name: (wb, wu) for name, wb, wu in wd.changed_weights(None, peft)}
    assert len(found) == 3 * N_BLOCKS  # q_proj, v_proj, down_proj of every block
    layer = peft.base_model.model.model.layers[1].self_attn.q_proj
    wb, wu = found["model.layers.1.self_attn.q_proj"]
    by_hand = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
    assert torch.allclose(wu - wb, by_hand, atol=1e-6)
    assert torch.allclose(wu, merged.model.layers[1].self_attn.q_proj.weight, atol=1e-6)
    s = wd.summarise(None, peft, N_BLOCKS)
    assert all(0 < d["eff_rank"] <= 4 + 1e-6 and d["fro"] > 0 for d in s["delta"].values())
    assert s["intruders_total"] == sum(s["intruders_per_layer"]) == sum(d["intruders"] for d in s["delta"].values())
    assert s["delta_fro_total"] == pytest.approx(math.sqrt(sum(d["fro"] ** 2 for d in s["delta"].values())))


def test_a_fresh_lora_lists_its_modules_with_zero_delta():
    s = wd.summarise(None, with_lora(tiny_llama()), N_BLOCKS)
    assert len(s["delta"]) == 3 * N_BLOCKS
    assert s["intruders_total"] == 0 and s["delta_fro_total"] == 0.0 and s["intruders_per_layer"] == [0] * N_BLOCKS


def test_full_fine_tuning_lists_only_the_changed_modules():
    base = tiny_llama()
    tuned = copy.deepcopy(base)
    assert wd.summarise(base, tuned, N_BLOCKS)["delta"] == {}
    assert wd.summarise(base, base, N_BLOCKS)["delta"] == {}  # the very same object: compared, nothing changed
    w = tuned.model.layers[2].mlp.up_proj.weight
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)
    with torch.no_grad():
        w += 20.0 * torch.outer(a / a.norm(), b / b.norm())
    s = wd.summarise(base, tuned, N_BLOCKS)
    assert list(s["delta"]) == ["model.layers.2.mlp.up_proj"]
    assert s["delta"]["model.layers.2.mlp.up_proj"]["eff_rank"] == pytest.approx(1.0, abs=1e-4)
    assert s["delta_fro_total"] == pytest.approx(20.0, rel=1e-5)
    assert s["intruders_per_layer"][:2] == [0, 0] and s["intruders_total"] == s["intruders_per_layer"][2]


# ------------------------------------------------------------------------------ the shift record


def probe_for(base_model, autocast="float32"):
    from updatelab.measure_shift import ShiftProbe, weights_fingerprint

    probe = ShiftProbe.__new__(ShiftProbe)  # the wiring alone: no data, embedder or CKA states
    probe.s = OmegaConf.load("configs/shift/default.yaml")
    probe.s.intruders.enabled = True  # opt-in by default (cost); these tests are about what it computes
    probe.base_model, probe.base_lm_fp = base_model, weights_fingerprint(base_model)
    probe.general, probe.autocast = TEXTS, autocast
    return probe


KEYS = {"kl_mean", "kl_per_layer", "intruders_total", "intruders_per_layer", "delta", "delta_fro_total"}


def test_every_arm_records_kl_and_intruders_zero_where_the_lm_is_the_base():
    base, tok = tiny_llama(), CharTokenizer()
    probe = probe_for(base)
    same = probe._beyond_cka(SimpleNamespace(lm=base, tokenizer=tok), True)  # stale, reembed, closed_book
    assert KEYS <= set(same)
    assert same["kl_mean"] == 0.0 and same["kl_per_layer"] == [0.0] * N_BLOCKS
    assert same["intruders_total"] == 0 and same["delta"] == {} and same["delta_fro_total"] == 0.0
    assert same["intruders_per_layer"] == [0] * N_BLOCKS

    full = copy.deepcopy(base)  # full fine-tuning trains a copy
    with torch.no_grad():
        full.model.layers[0].self_attn.o_proj.weight.mul_(1.5)
    rec = probe._beyond_cka(SimpleNamespace(lm=full, tokenizer=tok), False)
    assert rec["kl_mean"] > 0 and list(rec["delta"]) == ["model.layers.0.self_attn.o_proj"]

    lora = with_lora(base, zero_b=False)  # LoRA wraps the base model in place
    rec = probe._beyond_cka(SimpleNamespace(lm=lora, tokenizer=tok), True)
    assert rec["kl_mean"] > 0 and len(rec["delta"]) == 3 * N_BLOCKS and rec["delta_fro_total"] > 0
    assert len(rec["intruders_per_layer"]) == N_BLOCKS and rec["intruders_total"] == sum(rec["intruders_per_layer"])
    # the kept model now holds LoRA layers: a plain arm's KL against it would be wrong, so none is given
    rec = probe._beyond_cka(SimpleNamespace(lm=copy.deepcopy(full), tokenizer=tok), False)
    assert rec["kl_mean"] is None and rec["delta"] is None and "kl_note" in rec


def test_the_summary_carries_the_new_scalars():
    from updatelab.pipeline import _shift_summary

    shift = {"lm": {"cka_mean": 0.9, "kl_mean": 0.25, "intruders_total": 3, "delta_fro_total": 1.5, "delta": {}}}
    lm = _shift_summary(shift)["lm"]
    assert (lm["kl_mean"], lm["intruders_total"], lm["delta_fro_total"]) == (0.25, 3, 1.5) and "delta" not in lm


def test_shift_autocast_auto_is_measured_and_recorded(tmp_path, monkeypatch):
    from updatelab import hardware

    monkeypatch.setattr(hardware, "_cache_dir", tmp_path / "cache")
    hardware.reset_recorded()
    base, tok = tiny_llama(), CharTokenizer()
    probe = probe_for(base)
    probe.texts = TEXTS
    probe.s.autocast = "auto"

    def slow_bf16(module, args):
        if torch.is_autocast_enabled("cpu"):
            time.sleep(0.1)

    handle = base.register_forward_pre_hook(slow_bf16)
    try:
        assert probe._resolve_autocast(base, tok) == "float32"
    finally:
        handle.remove()
    rec = hardware.recorded()["shift"]
    assert rec["source"] == "measured" and set(rec["timings_s"]) == {"float32", "bfloat16"}
    probe.s.autocast = "bfloat16"  # explicit values pass through
    assert probe._resolve_autocast(base, tok) == "bfloat16"
    hardware.reset_recorded()


def test_lora_singular_values_from_the_factors_equal_those_of_the_product():
    g = torch.Generator().manual_seed(1)
    b, a = torch.randn(40, 4, generator=g), torch.randn(4, 30, generator=g)
    assert torch.allclose(wd.lowrank_singular_values(b, a), torch.linalg.svdvals(b @ a)[:4], rtol=1e-4)


@pytest.mark.parametrize("shape", [(48, 24), (24, 48), (30, 30)])
def test_singular_vectors_from_the_gram_matrix_match_the_svd(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    ref = torch.linalg.svd(w.double(), full_matrices=False).U
    got = wd.left_singular_vectors(w)
    assert got.shape == ref.shape
    assert torch.allclose((got.double().T @ ref).abs().diagonal(), torch.ones(min(shape), dtype=torch.float64), atol=1e-4)
    assert torch.allclose(got.T @ got, torch.eye(min(shape)), atol=1e-5)
    assert torch.equal(wd.left_singular_vectors(w, 5), got[:, :5])


def test_the_base_singular_vectors_are_computed_once_per_weight():
    w = torch.randn(20, 12, generator=torch.Generator().manual_seed(2))
    assert wd.base_left_singular_vectors(w) is wd.base_left_singular_vectors(w.clone())
    assert wd.base_left_singular_vectors(w) is not wd.base_left_singular_vectors(w + 1)
