"""The embedder's transformer run by OpenVINO's CPU plugin (`embedder.runtime: openvino`).

The same weights as the torch module, converted in memory with `openvino.convert_model`; the
Embedder keeps its own tokenisation, batching and pooling, so only the forward pass changes.
OpenVINO's inference precision follows the embedder's precision choice (bf16 where bf16 autocast
was chosen, f32 otherwise). Conversions are kept per torch module and precision, so a tuned copy
of the embedder (another module) is converted again and never answers with the base weights.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

INSTALL_HINT = "embedder.runtime=openvino needs the openvino package: pip install 'updatelab[openvino]'"
_compiled: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, int], Any]]" = weakref.WeakKeyDictionary()


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise RuntimeError(INSTALL_HINT)


class LastHidden(torch.nn.Module):
    """A transformer encoder as a module of (input_ids, attention_mask) -> last hidden state: the
    signature a graph export (OpenVINO, ONNX) traces."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _infer_request(model: torch.nn.Module, precision: str | None):
    import openvino as ov

    hint, threads = ("bf16" if precision == "bfloat16" else "f32"), torch.get_num_threads()
    per_model = _compiled.setdefault(model, {})
    if (hint, threads) not in per_model:
        example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
        graph = ov.convert_model(LastHidden(model).eval(), example_input=example,
                                 input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])
        compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        per_model[(hint, threads)] = compiled.create_infer_request()
    return per_model[(hint, threads)]


def last_hidden_state(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      precision: str | None) -> torch.Tensor:
    """The module's last hidden state (float32) for one padded batch, computed by OpenVINO."""
    request = _infer_request(model, precision)
    out = request.infer({0: input_ids.numpy().astype(np.int64), 1: attention_mask.numpy().astype(np.int64)})[0]
    return torch.from_numpy(np.array(out, dtype=np.float32))
