"""The config tree: composes, names its valid options, and keeps matched arms matched."""

import pytest
from omegaconf import OmegaConf

from updatelab.config_check import UnknownConfigKey, check_overrides
from updatelab.run import cell_config, run_id_for

ARMS = ["stale", "reembed", "lora", "lora_rag", "closed_book"]


def test_default_config_composes_and_resolves(compose_cfg):
    cfg = compose_cfg()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["strategy"]["name"] == "reembed"
    assert resolved["data"]["generator"]["seed"] == resolved["seed"]


@pytest.mark.parametrize("arm", ARMS)
def test_matched_arms_differ_only_in_strategy(compose_cfg, arm):
    base = OmegaConf.to_container(compose_cfg("strategy=stale"), resolve=True)
    other = OmegaConf.to_container(compose_cfg(f"strategy={arm}"), resolve=True)
    differing = {k for k in base if base[k] != other[k]}
    assert differing <= {"strategy"}


def test_run_id_is_deterministic_and_names_strategy_and_seed(compose_cfg):
    a, b = compose_cfg("strategy=reembed", "seed=3"), compose_cfg("strategy=reembed", "seed=3")
    assert run_id_for(a) == run_id_for(b)
    assert run_id_for(a).startswith("reembed_s3_")
    assert run_id_for(a) != run_id_for(compose_cfg("strategy=reembed", "seed=4"))


def test_run_id_ignores_logging_and_paths(compose_cfg):
    assert run_id_for(compose_cfg("logger=wandb")) == run_id_for(compose_cfg("logger=none", "progress=true"))


def test_rag_only_arms_ignore_adapter_settings(compose_cfg):
    # Changing the LoRA rank must not invalidate finished stale/reembed cells of a grid.
    assert run_id_for(compose_cfg("strategy=reembed")) == run_id_for(compose_cfg("strategy=reembed", "adapter.r=4"))
    assert "adapter" not in cell_config(compose_cfg("strategy=reembed"))


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UnknownConfigKey) as err:
        check_overrides(["eval.topk=5"])
    assert "eval.topk" in str(err.value) and "top_k" in str(err.value)


def test_known_key_passes():
    check_overrides(["eval.top_k=5", "strategy=stale", "-m", "seed=1,2"])


def test_unknown_strategy_lists_valid_ones(compose_cfg):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_cfg("strategy=finetune")
    for arm in ARMS:
        assert arm in str(err.value)


def test_a_generator_change_gives_synthetic_cells_new_run_ids(compose_cfg, monkeypatch):
    from updatelab.data import synthetic

    before = run_id_for(compose_cfg("strategy=reembed"))
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert run_id_for(compose_cfg("strategy=reembed")) != before  # the old results file is not "done"
