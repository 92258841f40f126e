"""End to end on a tiny knowledge update, the fine-tuning arms: lora trains an adapter and moves
the latent space, lora_rag reuses an identical training or trains to read, and the two are
matched. (A file of its own: its cells run in another test worker than test_pipeline.py's.)"""

import json

import pytest

from conftest import TINY_CELL as TINY, TINY_KL, own_cache
from updatelab.run import run_cell


# lora_rag's options set back to lora's: the two cells then train identically.
SAME_RECIPE_AS_LORA = ("strategy.raft=false", "strategy.qa_per_fact=null", "strategy.adapter_overrides=null", *TINY_KL)


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
    cfg = _tiny_lora_cfg(root, "lora", *TINY_KL)
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


def test_lora_moves_the_latent_space_and_the_next_token_distribution(tiny_lora):
    lm = tiny_lora[0]["shift"]["lm"]
    assert lm["cka_per_layer"][0] == 1.0  # the embedding output: LoRA adapts no embedding
    assert min(lm["cka_per_layer"][1:]) < 1.0
    # against the adapter-disabled model: the base weights, checked by fingerprint
    assert lm["kl_mean"] > 0 and len(lm["kl_per_layer"]) == 30 and min(lm["kl_per_layer"]) > 0


def test_lora_answers_closed_book(tiny_lora):
    rec = tiny_lora[0]
    assert "retrieval" not in rec["metrics"] and "retrieve" not in rec["cost"]
    assert all("retrieved" not in p for p in rec["predictions"])


def test_lora_rag_trained_to_read_sees_retrieved_passages_and_trains_its_own_adapter(tiny_lora):
    lora, root = tiny_lora
    # its training is the subject: no latent-shift measurement
    rag = run_cell(_tiny_lora_cfg(root, "lora_rag", "adapter.max_steps=2", "shift.enabled=false"), out_dir=root / "out_raft")
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
