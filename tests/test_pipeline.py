"""End to end on a tiny knowledge update with the real packaged models: the arms are matched,
the re-embed arm leaves the LM bit-identical, and a finished cell is never run twice."""

import json

import pytest

from conftest import TINY_CELL as TINY, run_matched_arms
from updatelab.run import run_cell


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """stale and reembed cells of one tiny matched experiment (run once for the module)."""
    root = tmp_path_factory.mktemp("exp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPDATELAB_ROOT", str(root))
        records, cfgs = run_matched_arms(root, ("stale", "reembed"), *TINY)
        yield records, cfgs, root


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
