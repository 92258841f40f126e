"""Bad inputs as one line, `error: <key>: <problem>` (exit 2), before any model loads.

`check_overrides`: an unknown key (`eval.topk=5`) names the valid keys at its level (Hydra only says
the key is not in struct mode; it lists valid options for an unknown group value itself).
`check_config`: each cell of the command line composed -- a wrong type fails there, against the
schema (updatelab/config_schema.py) -- and `validate`d: what the schema declares, then the rules
that span keys or ask the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from updatelab.config_rules import allowed, describe
from updatelab.config_schema import DATA_SOURCES, PRECISIONS  # noqa: F401  (PRECISIONS: the tests' name)


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
# Checks of the composed config, before any model loads (issue 14: bad inputs end in one line).
# Types are OmegaConf's, at compose time; ranges and choices are declared next to each field in
# updatelab/config_schema.py and applied here to whatever schema a node was composed with. Only the
# rules that span keys or ask the machine (device, paths, data.path, epochs/max_steps) are code.

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


def check_declared(cfg: DictConfig, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Every field of every schema-typed node under `cfg` is set and within what its schema declares."""
    import dataclasses

    schema = OmegaConf.get_type(cfg)
    declared = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for name in cfg.keys():
        key = f"{prefix}{name}"
        if key in skip:
            continue
        if OmegaConf.is_missing(cfg, name):
            if name in declared:
                raise ConfigError(key, f"has no value (???); set it, e.g. {key}=...")
            continue
        v = _get(cfg, name)
        if not OmegaConf.is_interpolation(cfg, name) and OmegaConf.is_dict(cfg[name]):
            check_declared(cfg[name], f"{key}.", skip)
        elif name in declared and not allowed(schema, name, v):
            raise ConfigError(key, f"must be {describe(schema, name)}, got {v!r}")


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


def _device(cfg: DictConfig) -> None:
    """`device` names a device kind this code drives, and this machine has it."""
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


def _data_path(cfg: DictConfig) -> None:
    source = _get(cfg, "data.source")
    if source == "synthetic":
        return
    if OmegaConf.is_missing(cfg.data, "path") if "path" in cfg.data.keys() else True:
        raise ConfigError("data.path", f"required with data={source} (e.g. data.path=/abs/dir)")
    p = _get(cfg, "data.path")
    if source == "local" and not Path(str(p)).is_dir():
        raise ConfigError("data.path", f"{p} is not a folder" if Path(str(p)).exists() else f"{p} does not exist")


def _adapter_overrides(cfg: DictConfig) -> dict:
    """A fine-tuning arm's own adapter keys (full_ft: method, lr), held to the adapter schema."""
    import dataclasses

    from updatelab.config_schema import AdapterConfig

    overrides = _get(cfg, "strategy.adapter_overrides")
    if not isinstance(overrides, dict):
        return {}
    valid = [f.name for f in dataclasses.fields(AdapterConfig)]
    for name, v in overrides.items():
        key = f"strategy.adapter_overrides.{name}"
        if name not in valid:
            raise ConfigError(key, f"not an adapter key. Valid keys: {', '.join(sorted(valid))}")
        if not allowed(AdapterConfig, name, v):
            raise ConfigError(key, f"must be {describe(AdapterConfig, name)}, got {v!r}")
    return overrides


def validate(cfg: DictConfig) -> None:
    """Refuse a composed config that would fail later (or silently do the wrong thing)."""
    for part in ("model", "embedder"):
        _source_path(cfg, part)
    _source_path(cfg, "qa_generator", " (a hub id or a folder)")
    if _get(cfg, "data.source") in DATA_SOURCES:
        _data_path(cfg)
    # a switched-off probe's settings are inert, whatever they say
    check_declared(cfg, skip=() if _get(cfg, "shift.enabled") else ("shift",))
    overrides = _adapter_overrides(cfg)
    _device(cfg)
    adapter = _get(cfg, "adapter")
    adapter = {**(adapter if isinstance(adapter, dict) else {}), **overrides}  # what the arm trains with
    if adapter.get("epochs") is None and adapter.get("max_steps") is None:
        raise ConfigError("adapter.epochs", "set adapter.epochs or adapter.max_steps (both are null)")
    _writable("paths.results_dir", str(_get(cfg, "paths.results_dir")))


def _omegaconf_error(err: Exception) -> ConfigError | None:
    """What OmegaConf refused while Hydra composed -- a value of the wrong type for a schema field, a
    key the schema lacks (in an option file) -- as one line naming the key; None when `err` is not that."""
    import dataclasses
    import re

    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    cause = err
    while cause is not None and not isinstance(cause, (ValidationError, ConfigKeyError)):
        cause = cause.__cause__ or cause.__context__
    if cause is None or not isinstance(cause, OmegaConfBaseException) or not getattr(cause, "full_key", None):
        return None
    schema, leaf = getattr(cause, "object_type", None), str(cause.key)
    fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
    if isinstance(cause, ConfigKeyError):
        where = re.match(r"In '([^']+)'", str(err))
        return ConfigError(cause.full_key, f"unknown config key{f' in {where.group(1)}.yaml' if where else ''}"
                                           + (f". Valid keys: {', '.join(sorted(fields))}" if fields else ""))
    m = re.search(r"Value '(.*?)'", str(cause.msg))
    got = f", got {m.group(1)!r}" if m else ""
    if leaf in fields:
        return ConfigError(cause.full_key, f"must be {describe(schema, leaf)}{got}")
    return ConfigError(cause.full_key, str(cause.msg).splitlines()[0])


def _hydra_error(arg: str | None, err: Exception) -> ConfigError:
    """Hydra's multi-line composition errors as one line."""
    import re

    refused = _omegaconf_error(err)
    if refused is not None:
        return refused
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


# Hydra's flags that take a value as the next argument (`--cfg job`, `-cn other`): the value is not an override.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                "--experimental-rerun"}


def _without_flag_values(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        skip = a in _VALUE_FLAGS
        out.append(a)
    return out


def cells(argv: list[str] | None = None, limit: int = 200) -> list[list[str]]:
    """The overrides of every cell a command line runs (a sweep's grid, at most `limit` cells);
    Hydra's own flags and `hydra.*` overrides are left out. Parse errors are ConfigErrors."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = _without_flag_values(list(sys.argv[1:] if argv is None else argv))
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
