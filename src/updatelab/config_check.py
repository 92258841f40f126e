"""Friendlier errors for command-line overrides, before Hydra composes the config.

Hydra already lists valid options for an unknown group value (`strategy=foo`), but for an
unknown key (`eval.topk=5`) it only says the key is not in struct mode. We compose once
without key overrides and, for a key that does not exist, name the valid keys at that level.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class UnknownConfigKey(SystemExit):
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
            raise UnknownConfigKey(
                f"error: unknown config key '{key}'. Valid keys in {where}: {valid}.\n"
                f"(To add a new key on purpose, use '+{key}=...'.)"
            )
