"""Friendlier errors for command-line overrides, before Hydra composes the config.

Hydra already lists valid options for an unknown group value (`strategy=foo`), but for an
unknown key (`eval.topk=5`) it only says the key is not in struct mode. We compose once
without key overrides and, for a key that does not exist, name the valid keys at that level.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(SystemExit):
    """A bad input: `error: <key>: <problem>` on stderr and exit status 2 (`updatelab.run.main`)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(2)

    def __str__(self) -> str:
        return f"error: {self.key}: {self.problem}"


class UnknownConfigKey(ConfigError):
    pass


def _is_group(key: str) -> bool:
    from updatelab.run import CONFIG_DIR

    return (Path(CONFIG_DIR) / key).is_dir()


def _key_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    groups, keys = [], []
    for a in args:
        if a.startswith("-") or "=" not in a or a.startswith(("+", "~", "hydra.", "hydra/")):
            continue
        key = a.split("=", 1)[0]
        (keys if "." in key or not _is_group(key) else groups).append(a)
    return groups, keys


def check_overrides(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-m" in args or "--multirun" in args or any(a.startswith("--") for a in args):
        # Sweeps ("a=1,2") and Hydra flags are left to Hydra; check only the first value.
        args = [a.split(",")[0] if "=" in a else a for a in args if a not in ("-m", "--multirun")]
    groups, keys = _key_overrides(args)
    if not keys:
        return
    from hydra import compose, initialize_config_dir

    from updatelab.run import CONFIG_DIR

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=groups)
    except Exception:
        return  # Hydra will report group errors itself, with the valid options
    for a in keys:
        key = a.split("=", 1)[0]
        parent_path, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
        # `.keys()`, not `in parent`: OmegaConf's `in` is False for a mandatory key whose value is still ???
        if isinstance(parent, DictConfig) and leaf not in parent.keys():
            valid = ", ".join(sorted(str(k) for k in parent.keys()))
            where = f"'{parent_path}'" if parent_path else "the top level"
            raise UnknownConfigKey(key, f"unknown config key. Valid keys in {where}: {valid} "
                                        f"(to add a new key on purpose, use '+{key}=...')")


# ------------------------------------------------------------------------------------------------
# Typed checks of the composed config, before any model loads (issue 14: bad inputs end in one line).

# Copies of the recipe's and Lightning's option lists: importing those modules here would load
# torch before a bad input could be refused (tests/test_bad_inputs.py checks they agree).
ORDERS = ("mixed", "qa_then_docs", "docs_then_qa")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true",
              "64", "transformer-engine", "transformer-engine-float16")
DATA_SOURCES = ("synthetic", "local", "hub", "counterfact", "zsre", "tofu")
_MISSING = object()


def _get(cfg: DictConfig, key: str) -> Any:
    """The value at `key`, resolved; _MISSING when absent, ConfigError when it cannot be resolved."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    except OmegaConfBaseException as err:
        raise ConfigError(key, str(err).splitlines()[0]) from None
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(cfg, key, lo: int | None = None, nullable: bool = False) -> None:
    v = _get(cfg, key)
    if v is _MISSING or (v is None and nullable):
        return
    if not _is_int(v) or (lo is not None and v < lo):
        want = f"an integer >= {lo}" if lo is not None else "an integer"
        raise ConfigError(key, f"must be {want}{' or null' if nullable else ''}, got {v!r}")


def _source_path(cfg, part: str, hint: str = "") -> None:
    """`<part>.path` is required with `<part>.source` hub or local, and must exist for local."""
    source = _get(cfg, f"{part}.source")
    if source not in ("hub", "local"):
        return
    p = _get(cfg, f"{part}.path")
    if p in (None, _MISSING, "???"):
        raise ConfigError(f"{part}.path", f"required with {part}.source={source}{hint}")
    if source == "local" and not Path(str(p)).exists():
        raise ConfigError(f"{part}.path", f"{p} does not exist")


def _num(cfg, key, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         nullable: bool = False) -> None:
    v = _get(cfg, key)
    if v is _MISSING or (v is None and nullable):
        return
    bad = not _is_num(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi)
    if bad:
        rng = (f"> {lo}" if lo_open else f">= {lo}") if lo is not None else ""
        if hi is not None:
            rng = f"in {'(' if lo_open else '['}{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ConfigError(key, f"must be a number {rng}{' or null' if nullable else ''}, got {v!r}".replace("  ", " "))


def _choice(cfg, key, options: tuple, nullable: bool = False) -> None:
    v = _get(cfg, key)
    if v is _MISSING or (v is None and nullable):
        return
    if v not in options:
        raise ConfigError(key, f"must be one of {', '.join(map(str, options))}, got {v!r}")


def _writable(key: str, path: str) -> None:
    """`path` is (or can be created as) a writable directory: probed with a temporary folder in the
    nearest existing ancestor, which is removed again (nothing is left behind)."""
    import tempfile

    p = Path(path).expanduser()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(key, f"{p} cannot be created: {probe} is not a directory")
    try:
        Path(tempfile.mkdtemp(prefix=".updatelab-write-test-", dir=probe)).rmdir()
        if probe != p:
            # e.g. /proc lets root create nothing although access() says W_OK
            test = probe / p.relative_to(probe).parts[0]
            test.mkdir()
            test.rmdir()
    except OSError as err:
        raise ConfigError(key, f"{p} is not writable ({err.strerror or err})") from None


def validate(cfg: DictConfig) -> None:
    """Refuse a composed config that would fail later (or silently do the wrong thing)."""
    _int(cfg, "seed")
    v = _get(cfg, "threads")
    if not (v is None or v == "auto" or (_is_int(v) and v >= 1)):
        raise ConfigError("threads", f"must be an integer >= 1, auto or null, got {v!r}")
    device = _get(cfg, "device")
    if not isinstance(device, str) or not (device == "cpu" or device.split(":")[0] in ("cuda", "mps")):
        raise ConfigError("device", f"must be cpu, cuda, cuda:N or mps, got {device!r}")
    if device != "cpu":
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", f"{device} requested but no CUDA GPU is usable here "
                                        f"(torch {torch.__version__}); use device=cpu")
        if device == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("device", "mps requested but not available here; use device=cpu")

    # model / embedder
    _choice(cfg, "model.source", ("gguf_package", "hub", "local"))
    _choice(cfg, "model.dtype", ("float32", "bfloat16", "float16"), nullable=True)
    _choice(cfg, "embedder.source", ("package", "hub", "local"))
    for part in ("model", "embedder"):
        _source_path(cfg, part)

    # data
    _choice(cfg, "data.source", DATA_SOURCES)
    source = _get(cfg, "data.source")
    if source != "synthetic":
        if OmegaConf.is_missing(cfg.data, "path") if "path" in cfg.data.keys() else True:
            raise ConfigError("data.path", f"required with data={source} (e.g. data.path=/abs/dir)")
        p = _get(cfg, "data.path")
        if source == "local" and not Path(str(p)).is_dir():
            raise ConfigError("data.path", f"{p} is not a folder" if Path(str(p)).exists() else f"{p} does not exist")
    else:
        g = "data.generator"
        _int(cfg, f"{g}.seed")
        _int(cfg, f"{g}.n_people", 1)
        _num(cfg, f"{g}.edit_fraction", 0, 1, lo_open=True)
        _int(cfg, f"{g}.n_new", 0)
        _num(cfg, f"{g}.eval_fraction", 0, 1, lo_open=True)
        _int(cfg, f"{g}.n_unchanged_questions", 0)
        _int(cfg, f"{g}.n_general", 0)
        _int(cfg, f"{g}.renderings", 1)
        _int(cfg, f"{g}.sentences_per_doc", 1)
        _int(cfg, f"{g}.qa_templates", 1, nullable=True)
        _int(cfg, f"{g}.inject_templates", 1, nullable=True)

    # retrieval and evaluation
    _int(cfg, "eval.top_k", 1)
    _int(cfg, "eval.max_new_tokens", 1)
    _int(cfg, "eval.batch_size", 1)
    _int(cfg, "eval.stored_max_new_tokens", 1)
    _choice(cfg, "eval.autocast", ("auto", "bfloat16", "float32"))
    _choice(cfg, "embedder.autocast", ("auto", "bfloat16", "float32"))
    _int(cfg, "embedder.batch_size", 1)
    _int(cfg, "embedder.max_length", 1)
    _choice(cfg, "index.kind", ("flat", "hnsw", "ivf"))
    if _get(cfg, "shift.enabled"):
        _int(cfg, "shift.batch_size", 4)  # debiased minibatch CKA needs >= 4 rows
        _int(cfg, "shift.forward_batch_size", 1)
        _int(cfg, "shift.max_length", 1)
        _choice(cfg, "shift.pooling", ("mean", "last"))
        _choice(cfg, "shift.autocast", ("auto", "bfloat16", "float32"))
        _int(cfg, "shift.kl.lens_tokens", 1, nullable=True)
        _int(cfg, "shift.kl.batch_size", 1)

    # the fine-tuning recipe (lora, lora_rag, full_ft)
    s = "strategy"
    _choice(cfg, f"{s}.order", ORDERS)
    _num(cfg, f"{s}.replay_ratio", 0)
    _int(cfg, f"{s}.qa_per_fact", 1, nullable=True)
    _num(cfg, f"{s}.raft_gold_p", 0, 1)
    g = "qa_generator"  # inject_qa written by a model when the data has none (data/qa_generation.py)
    _choice(cfg, f"{g}.source", ("none", "base_lm", "hub", "local"))
    _source_path(cfg, g, " (a hub id or a folder)")
    for key in ("questions_per_doc", "max_new_tokens", "max_answer_words", "batch_size"):
        _int(cfg, f"{g}.{key}", 1)
    _int(cfg, f"{g}.seed")
    a = "adapter"
    _choice(cfg, f"{a}.method", ("lora", "full"))
    _int(cfg, f"{a}.r", 1)
    _num(cfg, f"{a}.alpha", 0, lo_open=True)
    _num(cfg, f"{a}.dropout", 0, 1)
    _num(cfg, f"{a}.lr", 0, lo_open=True)
    _num(cfg, f"{a}.weight_decay", 0)
    _num(cfg, f"{a}.epochs", 0, lo_open=True, nullable=True)
    _int(cfg, f"{a}.max_steps", 1, nullable=True)
    if _get(cfg, f"{a}.epochs") is None and _get(cfg, f"{a}.max_steps") is None:
        raise ConfigError(f"{a}.epochs", "set adapter.epochs or adapter.max_steps (both are null)")
    _int(cfg, f"{a}.batch_size", 1)
    _int(cfg, f"{a}.max_length", 8)
    _num(cfg, f"{a}.warmup_ratio", 0, 1)
    _choice(cfg, f"{a}.scheduler", ("constant", "cosine"))
    _num(cfg, f"{a}.min_lr_ratio", 0, 1, nullable=True)
    _int(cfg, f"{a}.pad_to_multiple_of", 1, nullable=True)
    _choice(cfg, f"{a}.select", ("last", "best_dev"))
    _int(cfg, f"{a}.dev_every_steps", 1, nullable=True)
    _int(cfg, f"{a}.patience", 1, nullable=True)
    t = "trainer"
    prec = _get(cfg, f"{t}.precision")
    if prec is not _MISSING and prec is not None and str(prec) not in PRECISIONS:
        raise ConfigError(f"{t}.precision", f"must be one of {', '.join(PRECISIONS)} or null, got {prec!r}")
    _choice(cfg, f"{t}.accelerator", ("cpu", "gpu", "cuda", "mps", "tpu", "auto"))
    _int(cfg, f"{t}.checkpoint_every_n_steps", 1, nullable=True)
    _int(cfg, f"{t}.log_every_n_steps", 1)
    _int(cfg, f"{t}.accumulate_grad_batches", 1)
    _num(cfg, f"{t}.gradient_clip_val", 0, nullable=True)
    _choice(cfg, f"{t}.attn_implementation", ("eager", "sdpa", "flash_attention_2"), nullable=True)

    # tracking and outputs
    _choice(cfg, "logger.mode", ("offline", "online", "disabled"))
    _writable("paths.results_dir", str(_get(cfg, "paths.results_dir")))


def _hydra_error(arg: str | None, err: Exception) -> ConfigError:
    """Hydra's multi-line composition errors as one line."""
    import re

    text = str(err).strip()
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        opts = re.findall(r"^\t(\S+)$", text, flags=re.M)
        valid = f"; valid: {', '.join(opts)}" if opts else ""
        return ConfigError(group.replace("/", "."), f"unknown option '{option}'{valid}")
    first = next((ln for ln in text.splitlines() if ln.strip()), type(err).__name__)
    key = arg.split("=", 1)[0].lstrip("+~") if arg else "overrides"
    return ConfigError(key, f"{first}" + (f" (in '{arg}')" if arg else ""))


def cells(argv: list[str] | None = None, limit: int = 200) -> list[list[str]]:
    """The overrides of every cell a command line runs (a sweep's grid, at most `limit` cells);
    Hydra's own flags and `hydra.*` overrides are left out. Parse errors are ConfigErrors."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = list(sys.argv[1:] if argv is None else argv)
    multirun = "-m" in args or "--multirun" in args
    args = [a for a in args if not a.startswith("-") and not a.startswith(("hydra.", "hydra/", "+hydra", "++hydra"))]
    parser = OverridesParser.create()
    parsed = []
    for a in args:
        try:
            parsed += parser.parse_overrides([a])
        except Exception as err:
            raise _hydra_error(a, err) from None
    if not multirun:
        return [args]
    grid = [cell for batch in BasicSweeper.split_arguments(parsed, None) for cell in batch]
    return grid[:limit]


def check_config(argv: list[str] | None = None) -> None:
    """Compose each cell of the command line and `validate` it; Hydra's errors become one line."""
    from hydra import compose, initialize_config_dir

    from updatelab.run import CONFIG_DIR

    for overrides in cells(argv):
        try:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose("config", overrides=overrides)
        except Exception as err:
            raise _hydra_error(_culprit(overrides, err), err) from None
        validate(cfg)


def _culprit(overrides: list[str], err: Exception) -> str | None:
    text = str(err)
    for a in overrides:
        key = a.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" in text or f"'{a}'" in text:
            return a
    return None
