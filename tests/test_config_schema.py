"""The config schema (updatelab/config_schema.py): every group's options are typed, a schema changes
no composed value (finished cells keep their run ids), and what it declares is what is enforced."""

from __future__ import annotations

import copy
import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from updatelab import config_schema
from updatelab.config_check import ConfigError, check_config, validate
from updatelab.config_rules import describe
from updatelab.config_schema import AdapterConfig, Config, EmbedderFtStrategyConfig, TrainerConfig
from updatelab.run import CONFIG_DIR, run_id_for

UNTYPED = {"experiment", "hydra"}  # an experiment's keys land in the typed groups; hydra/ is Hydra's own
OPTIONS = sorted((d.name, f.stem) for d in Path(CONFIG_DIR).iterdir() if d.is_dir() and d.name not in UNTYPED
                 for f in d.glob("*.yaml"))
# Options needing a value the YAML leaves open (???): composing does not need it, running would.
NEEDS = {("data", o): [f"data.path=/tmp/{o}"] for o in ("local", "hub", "counterfact", "zsre", "tofu")}
NEEDS[("qa_generator", "hub")] = ["qa_generator.path=org/model"]


def _overrides(group: str, option: str) -> list[str]:
    arm = [] if group == "strategy" else ["strategy=lora"]  # the arm that reads every group
    return [*arm, f"{group}={option}", *NEEDS.get((group, option), [])]


@contextmanager
def schemas_emptied():
    """The config tree as it composed before it had schemas: every schema/<name> an empty node."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    try:
        for name in config_schema.SCHEMAS:
            cs.store(group="schema", name=name, node={})
        yield
    finally:
        config_schema.register()


def test_every_option_of_every_group_is_typed_by_a_schema(compose_cfg):
    assert len(OPTIONS) > 30
    untyped = [f"{g}={o}" for g, o in OPTIONS
               if not dataclasses.is_dataclass(OmegaConf.get_type(compose_cfg(*_overrides(g, o))[g]))]
    assert untyped == []
    assert OmegaConf.get_type(compose_cfg()) is Config


@pytest.mark.parametrize("overrides", [
    *(_overrides(g, o) for g, o in OPTIONS),
    *([f"strategy={arm}", f"data={d}", *NEEDS.get(("data", d), [])] for arm in ("stale", "lora_rag", "embedder_ft_stale")
      for d in ("tiny", "tofu")),
    ["strategy=lora", "experiment=lora_rank", "adapter.r=4"], ["strategy=lora", "experiment=kb_change"],
    ["strategy=lora", "adapter.alpha=8", "adapter.epochs=1.5", "strategy.replay_ratio=0", "trainer.precision=32"],
], ids=" ".join)
def test_a_schema_changes_no_composed_value_and_no_run_id(compose_cfg, overrides):
    typed = compose_cfg(*overrides)
    with schemas_emptied():
        plain = compose_cfg(*overrides)
    as_dict = lambda c: OmegaConf.to_container(c, resolve=True, throw_on_missing=False)  # noqa: E731
    assert as_dict(typed) == as_dict(plain)
    # int stays int (32, not 32.0): the run id hashes the JSON of these values; key order may differ
    assert json.dumps(as_dict(typed), sort_keys=True) == json.dumps(as_dict(plain), sort_keys=True)
    assert run_id_for(typed) == run_id_for(plain)


def _declared(cfg, prefix=""):
    """(key, schema, field) of every field with a range or choices under the typed nodes of `cfg`."""
    schema = OmegaConf.get_type(cfg)
    for f in dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ():
        if f.metadata:
            yield f"{prefix}{f.name}", schema, f
    for name in cfg.keys():
        if not OmegaConf.is_interpolation(cfg, name) and not OmegaConf.is_missing(cfg, name) \
                and OmegaConf.is_dict(cfg[name]):
            yield from _declared(cfg[name], f"{prefix}{name}.")


def _outside(schema, f):
    """A value just outside what the field declares."""
    m = f.metadata
    if describe(schema, f.name).startswith("a non-empty list"):
        return ["not-one-of-them"]
    if "lt" in m:
        return m["lt"]
    if "ge" in m:
        return m["ge"] - (1 if "integer" in describe(schema, f.name) else 0.5)
    if "gt" in m:
        return m["gt"]
    if "le" in m:
        return m["le"] + 1
    return "not-one-of-them"


# Between them, every schema of config_schema.SCHEMAS (data_local and data_hub declare no range of their own).
TYPED_CELLS = [
    ["strategy=lora", "index=hnsw", "trainer=ddp_cpu"],
    ["strategy=embedder_ft_stale", "index=ivf", "trainer=cpu", "data=tofu", "data.path=/tmp/tofu.json"],
    ["strategy=full_ft", "trainer=gpu", "data=counterfact", "data.path=/tmp/cf.json"],
    ["strategy=stale", "data=zsre", "data.path=/tmp/zsre.json", "qa_generator=base_lm"],
]


@pytest.mark.parametrize("overrides", TYPED_CELLS, ids=" ".join)
def test_every_declared_range_and_choice_is_enforced_naming_the_key(compose_cfg, overrides):
    base = compose_cfg(*overrides)
    validate(base)
    declared = list(_declared(base))
    assert len(declared) > 40
    for key, schema, f in declared:
        at_bound = {k: f.metadata[k] for k in ("ge", "le") if k in f.metadata}
        for value in at_bound.values():  # a bound itself is allowed
            cfg = copy.deepcopy(base)
            OmegaConf.update(cfg, key, value)
            validate(cfg)
        cfg = copy.deepcopy(base)
        OmegaConf.update(cfg, key, _outside(schema, f))
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert err.value.key == key and err.value.problem.startswith(f"must be {describe(schema, f.name)}, got ")


def test_a_switched_off_probe_is_not_checked(compose_cfg):
    validate(compose_cfg("shift.enabled=false", "shift.batch_size=2"))
    with pytest.raises(ConfigError, match="shift.batch_size"):
        validate(compose_cfg("shift.batch_size=2"))


TYPE_ERRORS = [
    ("adapter.r=abc", "adapter.r", "must be an integer >= 1, got 'abc'"),
    ("adapter.dropout=x", "adapter.dropout", "must be a number in [0, 1], got 'x'"),
    ("force=maybe", "force", "must be true or false, got 'maybe'"),
    ("shift.kl.batch_size=many", "shift.kl.batch_size", "must be an integer >= 1, got 'many'"),
    ("data.generator.edit_fraction=lots", "data.generator.edit_fraction", "must be a number in (0, 1], got 'lots'"),
]


@pytest.mark.parametrize("override,key,problem", TYPE_ERRORS, ids=[c[0] for c in TYPE_ERRORS])
def test_a_wrong_type_fails_at_compose_time_naming_the_key(tmp_path, override, key, problem):
    with pytest.raises(ConfigError) as err:
        check_config([f"paths.root={tmp_path}", "strategy=lora", override])
    assert (err.value.key, err.value.problem) == (key, problem)


def test_an_arms_adapter_overrides_are_held_to_the_adapter_schema(compose_cfg):
    validate(compose_cfg("strategy=full_ft"))
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("strategy=full_ft", "strategy.adapter_overrides.lr=-1"))
    assert err.value.key == "strategy.adapter_overrides.lr" and "> 0" in err.value.problem
    with pytest.raises(ConfigError, match="not an adapter key"):
        validate(compose_cfg("strategy=full_ft", "+strategy.adapter_overrides.rank=4"))
    # lora_rag trains 3 epochs whatever adapter.epochs says: its own key counts
    validate(compose_cfg("strategy=lora_rag", "adapter.epochs=null"))


def test_describe_words_what_a_field_accepts():
    assert describe(AdapterConfig, "r") == "an integer >= 1"
    assert describe(AdapterConfig, "dropout") == "a number in [0, 1]"
    assert describe(AdapterConfig, "epochs") == "a number > 0 or null"
    assert describe(AdapterConfig, "scheduler") == "one of constant, cosine"
    assert describe(EmbedderFtStrategyConfig, "warmup_ratio") == "a number in [0, 1)"
    assert describe(EmbedderFtStrategyConfig, "sources") == "a non-empty list of inject_qa, train_qa"
    assert describe(Config, "threads") == "an integer >= 1, auto or null"
    assert describe(TrainerConfig, "precision").startswith("one of auto, ")
    assert describe(TrainerConfig, "precision").endswith(" or null")


@pytest.mark.parametrize("body,key,problem", [
    ("r: abc", "adapter.r", "must be an integer >= 1, got 'abc'"),
    ("rr: 3", "adapter.rr", "unknown config key in adapter/mine.yaml. Valid keys: alpha, "),
], ids=["wrong-type", "unknown-key"])
def test_an_option_file_is_held_to_its_schema_at_compose_time(tmp_path, monkeypatch, body, key, problem):
    import shutil

    from hydra import compose, initialize_config_dir

    from updatelab.config_check import _hydra_error

    conf = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / "adapter" / "mine.yaml").write_text(f"defaults:\n  - lora\n  - _self_\n{body}\n")
    monkeypatch.setenv("UPDATELAB_ROOT", str(tmp_path))
    with pytest.raises(Exception) as err, initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        compose("config", overrides=["adapter=mine"])
    one_line = _hydra_error(None, err.value)
    assert one_line.key == key and one_line.problem.startswith(problem)
