"""The config tree's types and ranges: one dataclass per config group (and the top level), stored in
Hydra's ConfigStore as `schema/<group>`; each YAML option names its schema first in its defaults list
(`- /schema/adapter@_here_`), Hydra's "Structured Config schema" pattern.

The YAML files hold every value (with the comments saying why); a schema holds no second copy of
them: every field is MISSING, so that a group's composed node is exactly its YAML file, key for key
(run ids hash the composed config, and finished cells must keep theirs). What a schema adds:

- types, checked by OmegaConf while Hydra composes (`adapter.r=abc` fails before any model loads);
- ranges and choices, declared once next to the field (`check(ge=1)`) and enforced by
  `updatelab.config_check.validate`, which reads them from here.

Numbers that may be integers or fractions are `Union[int, float]`: a plain `float` field would turn
`alpha: 32` into 32.0 and change every run id hashed before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from omegaconf import MISSING, OmegaConf

Number = Union[int, float]

# The recipe's orders and the embedder tuning's sources live here (those modules import them).
# PRECISIONS and DATA_SOURCES copy Lightning's and data/formats' lists: importing those here would load
# torch before a bad input could be refused (tests/test_bad_inputs.py checks they agree).
ORDERS = ("mixed", "qa_then_docs", "docs_then_qa")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true",
              "64", "transformer-engine", "transformer-engine-float16")
DATA_SOURCES = ("synthetic", "local", "hub", "counterfact", "zsre", "tofu")
AUTOCAST = ("auto", "bfloat16", "float32")
DTYPES = ("float32", "bfloat16", "float16")
EMBEDDER_RUNTIMES = ("torch", "openvino")  # updatelab.retrieval.embedder: who runs the forward pass
TUNING_SOURCES = ("inject_qa", "train_qa")  # embedder_ft's training wordings (retrieval/embedder_tuning.py)


def check(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
          choices: tuple = ()) -> Any:
    """A mandatory field (its value comes from the YAML) with its allowed range or values. With both a
    range and choices (`threads`), a value may be either a number in range or one of the choices; a
    list field with choices takes a non-empty list of them."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if choices:
        meta["choices"] = tuple(choices)
    return field(default=MISSING, metadata=meta)


# ------------------------------------------------------------------------------------------------
# The top level (config.yaml). Not struct: experiments add keys of their own (kb_change, lora_alpha).

@dataclass
class PathsConfig:
    root: str = MISSING
    cache_dir: str = MISSING
    data_dir: str = MISSING
    results_dir: str = MISSING


@dataclass
class Config:
    name: str = MISSING
    seed: int = MISSING
    device: str = MISSING  # cpu, cuda, cuda:N, mps: checked with what this machine has (config_check)
    threads: Optional[Union[int, str]] = check(ge=1, choices=("auto",))
    force: bool = MISSING
    progress: bool = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)


# ------------------------------------------------------------------------------------------------
# model, embedder, index

@dataclass
class ModelConfig:
    name: str = MISSING
    source: str = check(choices=("gguf_package", "hub", "local"))
    package: Optional[str] = MISSING
    gguf_file: Optional[str] = MISSING
    path: Optional[str] = MISSING
    dtype: Optional[str] = check(choices=DTYPES)
    trust_remote_code: bool = MISSING


@dataclass
class EmbedderConfig:
    name: str = MISSING
    source: str = check(choices=("package", "hub", "local"))
    package: Optional[str] = MISSING
    path: Optional[str] = MISSING
    max_length: int = check(ge=1)
    batch_size: int = check(ge=1)
    autocast: str = check(choices=AUTOCAST)
    runtime: str = check(choices=EMBEDDER_RUNTIMES)
    normalize: bool = MISSING
    query_prefix: str = MISSING
    doc_prefix: str = MISSING
    trust_remote_code: bool = MISSING


@dataclass
class IndexConfig:
    kind: str = check(choices=("flat", "hnsw", "ivf"))
    use_gpu: bool = MISSING


@dataclass
class HnswIndexConfig(IndexConfig):
    hnsw_m: int = check(ge=1)
    ef_construction: int = check(ge=1)
    ef_search: int = check(ge=1)


@dataclass
class IvfIndexConfig(IndexConfig):
    nlist: int = check(ge=1)
    nprobe: int = check(ge=1)


# ------------------------------------------------------------------------------------------------
# data: what every source has, then each source's own keys

@dataclass
class DataConfig:
    source: str = check(choices=DATA_SOURCES)
    path: Optional[str] = MISSING  # required unless synthetic: checked in config_check (a cross-field rule)


@dataclass
class GeneratorConfig:
    seed: int = MISSING
    n_people: int = check(ge=1)
    edit_fraction: Number = check(gt=0, le=1)
    n_new: int = check(ge=0)
    eval_fraction: Number = check(gt=0, le=1)
    n_unchanged_questions: int = check(ge=0)
    n_general: int = check(ge=0)
    renderings: int = check(ge=1)
    sentences_per_doc: int = check(ge=1)
    qa_templates: Optional[int] = check(ge=1)
    inject_templates: Optional[int] = check(ge=1)


@dataclass
class SyntheticDataConfig(DataConfig):
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


@dataclass
class HubDataConfig(DataConfig):
    data_files: Dict[str, str] = MISSING


@dataclass
class BenchmarkDataConfig(DataConfig):
    """A published benchmark file (data/formats), from a path or from the hub."""
    hub: bool = MISSING
    hub_config: Optional[str] = MISSING
    hub_split: str = MISSING
    revision: Optional[str] = MISSING
    hub_data_files: Any = MISSING
    sample: Optional[int] = check(ge=1)
    sample_seed: int = MISSING
    n_general: int = check(ge=0)


@dataclass
class CounterfactDataConfig(BenchmarkDataConfig):
    neighborhood_per_edit: Optional[int] = check(ge=0)


@dataclass
class TofuDataConfig(BenchmarkDataConfig):
    new_fraction: Number = check(ge=0, le=1)
    questions_per_author: Optional[int] = check(ge=1)
    qa_per_author: int = check(ge=1)


# ------------------------------------------------------------------------------------------------
# strategy: every arm has a target and a name; the fine-tuning arms add the training-data recipe

@dataclass
class StrategyConfig:
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class RecipeStrategyConfig(StrategyConfig):
    """lora, lora_rag, full_ft (updatelab/training/recipe.py)."""
    include_unchanged: bool = MISSING
    docs: bool = MISSING
    paraphrases: bool = MISSING
    inject_qa: bool = MISSING
    qa_per_fact: Optional[int] = check(ge=1)
    demo_qa: bool = MISSING
    order: str = check(choices=ORDERS)
    replay_ratio: Number = check(ge=0)
    raft: bool = MISSING
    raft_gold_p: Number = check(ge=0, le=1)
    reuse_adapter: bool = MISSING
    adapter_overrides: Optional[Dict[str, Any]] = MISSING  # null = none; adapter keys: checked against AdapterConfig (config_check)


@dataclass
class EmbedderFtStrategyConfig(StrategyConfig):
    sources: List[str] = check(choices=TUNING_SOURCES)
    epochs: Number = check(gt=0)
    batch_size: int = check(ge=2)  # in-batch negatives: one question alone has none
    lr: Number = check(gt=0)
    warmup_ratio: Number = check(ge=0, lt=1)
    scale: Number = check(gt=0)


# ------------------------------------------------------------------------------------------------
# fine-tuning: adapter (optimisation), trainer (Lightning), qa_generator

@dataclass
class AdapterConfig:
    method: str = check(choices=("lora", "full"))
    r: int = check(ge=1)
    alpha: Number = check(gt=0)
    dropout: Number = check(ge=0, le=1)
    target_modules: Any = MISSING  # a list of module names or "all-linear" (PEFT)
    lr: Number = check(gt=0)
    weight_decay: Number = check(ge=0)
    epochs: Optional[Number] = check(gt=0)  # epochs and max_steps both null: refused in config_check
    max_steps: Optional[int] = check(ge=1)
    batch_size: int = check(ge=1)
    max_length: int = check(ge=8)
    warmup_ratio: Number = check(ge=0, le=1)
    scheduler: str = check(choices=("constant", "cosine"))
    min_lr_ratio: Optional[Number] = check(ge=0, le=1)
    pad_to_multiple_of: Optional[int] = check(ge=1)
    select: str = check(choices=("last", "best_dev"))
    dev_every_steps: Optional[int] = check(ge=1)
    patience: Optional[int] = check(ge=1)


@dataclass
class TrainerConfig:
    accelerator: str = check(choices=("cpu", "gpu", "cuda", "mps", "tpu", "auto"))
    devices: Any = MISSING  # Lightning's: a count, a list of ids or "auto"
    strategy: str = MISSING
    precision: Optional[Union[int, str]] = check(choices=PRECISIONS)
    log_every_n_steps: int = check(ge=1)
    checkpoint_every_n_steps: Optional[int] = check(ge=1)
    enable_progress_bar: bool = MISSING
    gradient_clip_val: Optional[Number] = check(ge=0)
    accumulate_grad_batches: int = check(ge=1)
    deterministic: Optional[Union[bool, str]] = MISSING  # Lightning also takes "warn"


@dataclass
class CpuTrainerConfig(TrainerConfig):
    attn_implementation: Optional[str] = check(choices=("eager", "sdpa", "flash_attention_2"))


@dataclass
class DdpTrainerConfig(TrainerConfig):
    num_nodes: int = check(ge=1)


@dataclass
class QaGeneratorConfig:
    name: str = MISSING
    source: str = check(choices=("none", "base_lm", "hub", "local"))
    path: Optional[str] = MISSING
    questions_per_doc: int = check(ge=1)
    max_new_tokens: int = check(ge=1)
    max_answer_words: int = check(ge=1)
    batch_size: int = check(ge=1)
    seed: int = MISSING
    dtype: Optional[str] = check(choices=DTYPES)
    trust_remote_code: bool = MISSING


# ------------------------------------------------------------------------------------------------
# eval, shift, costs, logger

@dataclass
class EvalConfig:
    top_k: int = check(ge=1)
    max_new_tokens: int = check(ge=1)
    batch_size: int = check(ge=1)
    autocast: str = check(choices=AUTOCAST)
    system_prompt: str = MISSING
    rag_system_prompt: str = MISSING
    rag_user: str = MISSING
    closed_user: str = MISSING
    stored_splits: List[str] = MISSING
    stored_max_new_tokens: int = check(ge=1)


@dataclass
class KlConfig:
    enabled: bool = MISSING
    per_layer: bool = MISSING
    lens_tokens: Optional[int] = check(ge=1)
    batch_size: int = check(ge=1)


@dataclass
class IntrudersConfig:
    enabled: bool = MISSING
    top_k: int = check(ge=1)
    epsilon: Number = check(gt=0, le=1)  # a |cos| threshold


@dataclass
class ShiftConfig:
    """Checked only with enabled=true (config_check): a switched-off probe's settings are inert."""
    enabled: bool = MISSING
    pooling: str = check(choices=("mean", "last"))
    batch_size: int = check(ge=4)  # debiased minibatch CKA needs >= 4 rows
    forward_batch_size: int = check(ge=1)
    max_length: int = check(ge=1)
    autocast: str = check(choices=AUTOCAST)
    kl: KlConfig = field(default_factory=KlConfig)
    intruders: IntrudersConfig = field(default_factory=IntrudersConfig)


@dataclass
class CostsConfig:
    cpu_hour: Number = check(ge=0)
    gpu_hour: Number = check(ge=0)


@dataclass
class LoggerConfig:
    enabled: bool = MISSING
    mode: str = check(choices=("offline", "online", "disabled"))
    project: str = MISSING
    entity: Optional[str] = MISSING
    tags: List[str] = MISSING


# ------------------------------------------------------------------------------------------------

# ConfigStore name (schema/<name>) -> schema; a YAML option names one of these in its defaults list.
SCHEMAS: dict[str, type] = {
    "config": Config,
    "model": ModelConfig, "embedder": EmbedderConfig,
    "index": IndexConfig, "index_hnsw": HnswIndexConfig, "index_ivf": IvfIndexConfig,
    "data_synthetic": SyntheticDataConfig, "data_local": DataConfig, "data_hub": HubDataConfig,
    "data_benchmark": BenchmarkDataConfig, "data_counterfact": CounterfactDataConfig, "data_tofu": TofuDataConfig,
    "strategy": StrategyConfig, "strategy_recipe": RecipeStrategyConfig, "strategy_embedder_ft": EmbedderFtStrategyConfig,
    "adapter": AdapterConfig,
    "trainer": TrainerConfig, "trainer_cpu": CpuTrainerConfig, "trainer_ddp": DdpTrainerConfig,
    "qa_generator": QaGeneratorConfig,
    "eval": EvalConfig, "shift": ShiftConfig, "costs": CostsConfig, "logger": LoggerConfig,
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent). The YAML files name them, so this must
    run before anything composes the tree: `updatelab.run` calls it on import, and every composer
    imports CONFIG_DIR from there."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        node = schema
        if schema is Config:
            # open to keys an experiment adds; a typo on the command line is still caught (check_overrides)
            node = OmegaConf.structured(Config)
            OmegaConf.set_struct(node, False)
        cs.store(group="schema", name=name, node=node)
