"""End to end on a tiny knowledge update with the real packaged models: the arms are matched,
the re-embed arm leaves the LM bit-identical, and a finished cell is never run twice."""

import json

import pytest

from conftest import own_cache
from updatelab.run import run_cell

TINY = ["data=tiny", "eval.max_new_tokens=12", "shift.batch_size=8", "threads=1"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """stale and reembed cells of one tiny matched experiment (run once for the module)."""
    from hydra import compose, initialize_config_dir

    from conftest import SHARED_CACHE
    from updatelab.run import CONFIG_DIR

    root = tmp_path_factory.mktemp("exp")
    mp = pytest.MonkeyPatch()
    mp.setenv("UPDATELAB_ROOT", str(root))
    records, cfgs = {}, {}
    for arm in ("stale", "reembed"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.cache_dir={SHARED_CACHE}", f"paths.data_dir={root / 'data'}",
                                                "logger=none", "progress=false", f"strategy={arm}", *TINY])
        cfgs[arm] = cfg
        records[arm] = run_cell(cfg, out_dir=root / "out" / arm)
    yield records, cfgs, root
    mp.undo()


def test_results_file_holds_the_required_keys(tiny_runs):
    records, cfgs, root = tiny_runs
    path = root / "results" / "default" / f"{records['reembed']['run_id']}.json"
    data = json.loads(path.read_text())
    for key in ("experiment", "run_id", "strategy", "seed", "config", "metrics", "cost", "predictions", "shift"):
        assert key in data
    assert set(data["metrics"]) >= {"updated", "paraphrased", "unchanged", "general", "retrieval"}
    assert {"em", "f1", "contains", "strict", "budget_hit", "n"} <= set(data["metrics"]["updated"])
    assert {f"recall@{data['config']['eval']['top_k']}", "mrr"} <= set(data["metrics"]["retrieval"])
    assert {"split", "question", "gold", "prediction", "correct", "strict", "truncated"} <= set(data["predictions"][0])


def test_matched_arms_share_data_seed_questions_and_config(tiny_runs):
    records, _, _ = tiny_runs
    stale, reembed = records["stale"], records["reembed"]
    assert stale["data_fingerprint"] == reembed["data_fingerprint"]
    assert stale["seed"] == reembed["seed"]
    assert [(p["qid"], p["question"]) for p in stale["predictions"]] == [(p["qid"], p["question"]) for p in reembed["predictions"]]
    differing = {k for k in stale["config"] if stale["config"][k] != reembed["config"][k]}
    assert differing == {"strategy"}


def test_the_stored_probe_reads_the_lm_weights_only(tiny_runs):
    # stale and reembed share the base LM bit for bit; retrieval must not reach the cloze prompts.
    records, _, _ = tiny_runs
    cloze = {arm: [(p["qid"], p["question"], p["prediction"]) for p in r["predictions"] if p["split"] == "stored"]
             for arm, r in records.items()}
    n_updated = records["stale"]["metrics"]["updated"]["n"]
    assert records["stale"]["metrics"]["stored"]["n"] == len(cloze["stale"]) == n_updated
    assert cloze["stale"] == cloze["reembed"]


def test_reembed_embeds_only_the_changed_documents(tiny_runs):
    records, _, _ = tiny_runs
    embed = records["reembed"]["cost"]["embed"]
    from updatelab.pipeline import load_knowledge_update

    cfg = tiny_runs[1]["reembed"]
    update = load_knowledge_update(cfg.data, cfg.paths.data_dir)
    assert embed["n_embedded"] == len(update.changed_doc_ids())
    assert embed["n_cached"] == len(update.kb_v1) - len(update.changed_doc_ids())


def test_reembed_leaves_the_lm_bit_identical_and_its_latent_space_unmoved(tiny_runs):
    lm = tiny_runs[0]["reembed"]["shift"]["lm"]
    assert lm["base_weights_untouched"] and not lm["has_adapter"]
    assert lm["cka_per_layer"] == [1.0] * len(lm["cka_per_layer"])
    assert len(lm["cka_per_layer"]) == 31  # embedding output + 30 blocks


def test_stale_arm_does_not_pay_for_an_update(tiny_runs):
    cost = tiny_runs[0]["stale"]["cost"]
    assert "embed" not in cost and "train" not in cost
    assert cost["update_total"]["wall_s"] == 0.0


def test_phases_add_up_to_the_total(tiny_runs):
    for rec in tiny_runs[0].values():
        cost = rec["cost"]
        phases = [k for k in ("embed", "index", "train", "retrieve", "generate") if k in cost]
        assert cost["total"]["wall_s"] == pytest.approx(sum(cost[p]["wall_s"] for p in phases))


def test_a_finished_cell_is_skipped_on_rerun(tiny_runs):
    records, cfgs, root = tiny_runs
    path = root / "results" / "default" / f"{records['stale']['run_id']}.json"
    before = path.stat().st_mtime_ns
    assert run_cell(cfgs["stale"], out_dir=root / "out" / "again") is None
    assert path.stat().st_mtime_ns == before


# lora_rag's options set back to lora's: the two cells then train identically.
SAME_RECIPE_AS_LORA = ("strategy.raft=false", "strategy.qa_per_fact=null", "~strategy.adapter_overrides")


def _tiny_lora_cfg(root, strategy: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from updatelab.run import CONFIG_DIR

    # A few steps at a high learning rate, no replay, no dev selection: the recipe's options have
    # their own tests (test_recipe.py, test_training.py); these check the arms end to end.
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"paths.cache_dir={root / 'cache'}", f"paths.data_dir={root / 'data'}",
                                             "logger=none", "progress=false", f"strategy={strategy}", "adapter.max_steps=3",
                                             "adapter.lr=1e-2", "adapter.batch_size=8", "trainer.enable_progress_bar=false",
                                             "adapter.select=last", "adapter.patience=null", "strategy.replay_ratio=0",
                                             "model.name=smollm2-135m-instruct", *TINY, *overrides])


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory, converted_lm):
    """A lora cell trained for a few steps at a high learning rate: enough to move the model."""
    root = tmp_path_factory.mktemp("lora")
    mp = pytest.MonkeyPatch()
    mp.setenv("UPDATELAB_ROOT", str(root))
    cfg = _tiny_lora_cfg(root, "lora")
    own_cache(root)
    rec = run_cell(cfg, out_dir=root / "out")
    yield rec, root
    mp.undo()


def test_lora_rag_reuses_the_identical_training_and_keeps_its_own_adapter_copy(tiny_lora):
    from pathlib import Path

    lora, root = tiny_lora
    rag = run_cell(_tiny_lora_cfg(root, "lora_rag", *SAME_RECIPE_AS_LORA), out_dir=root / "out_rag")
    train = rag["cost"]["train"]
    assert train["reused_adapter"] and train["adapter_key"] == lora["cost"]["train"]["adapter_key"]
    assert train["wall_s"] == lora["cost"]["train"]["wall_s"]  # the training's cost is booked, not this load's
    assert rag["train_loss_curve"] == lora["train_loss_curve"] and len(lora["train_loss_curve"]) == 3
    own = Path(rag["artifacts"]["adapter"]["path"])
    assert own.parent.parent == root / "results" / "default" / rag["run_id"]  # next to the cell's results file
    mine = (own / "adapter_model.safetensors").read_bytes()
    assert mine == (Path(lora["artifacts"]["adapter"]["path"]) / "adapter_model.safetensors").read_bytes()
    assert rag["metrics"]["retrieval"][f"recall@{rag['config']['eval']['top_k']}"] > 0  # and it answers with retrieval


def test_lora_trains_an_adapter_and_leaves_base_weights_untouched(tiny_lora):
    rec, root = tiny_lora
    lm = rec["shift"]["lm"]
    assert lm["has_adapter"] and lm["base_weights_untouched"]
    assert rec["cost"]["train"]["steps"] == 3 and rec["cost"]["train"]["adapter_bytes"] > 0
    from pathlib import Path

    assert (Path(rec["artifacts"]["adapter"]["path"]) / "adapter_model.safetensors").exists()


def test_lora_moves_the_latent_space(tiny_lora):
    cka = tiny_lora[0]["shift"]["lm"]["cka_per_layer"]
    assert cka[0] == 1.0  # the embedding output: LoRA adapts no embedding
    assert min(cka[1:]) < 1.0


def test_lora_answers_closed_book(tiny_lora):
    rec = tiny_lora[0]
    assert "retrieval" not in rec["metrics"] and "retrieve" not in rec["cost"]
    assert all("retrieved" not in p for p in rec["predictions"])


def test_lora_rag_trained_to_read_sees_retrieved_passages_and_trains_its_own_adapter(tiny_lora):
    lora, root = tiny_lora
    rag = run_cell(_tiny_lora_cfg(root, "lora_rag", "adapter.max_steps=2"), out_dir=root / "out_raft")
    training = rag["training"]
    assert training["recipe"]["raft"] and training["counts"]["raft_with_gold"] > 0
    assert not rag["cost"]["train"]["reused_adapter"]
    assert rag["cost"]["train"]["adapter_key"] != lora["cost"]["train"]["adapter_key"]


def test_fine_tuning_arms_are_matched_with_each_other(tiny_lora):
    from updatelab.run import run_id_for
    from updatelab.tracking.results import results_path

    lora, root = tiny_lora
    cfg = _tiny_lora_cfg(root, "lora_rag", *SAME_RECIPE_AS_LORA)
    # Run here, or already run by the reuse test (then the cell is skipped and its file read).
    rag = run_cell(cfg, out_dir=root / "out_rag") or json.loads(
        results_path(cfg.paths.results_dir, cfg.name, run_id_for(cfg)).read_text())
    assert lora["data_fingerprint"] == rag["data_fingerprint"] and lora["seed"] == rag["seed"]
    assert [p["qid"] for p in lora["predictions"]] == [p["qid"] for p in rag["predictions"]]
    assert {k for k in lora["config"] if lora["config"][k] != rag["config"][k]} == {"strategy"}
    assert lora["training"]["recipe"]["inject_qa"] and lora["training"]["counts"]["inject_qa"] > 0
