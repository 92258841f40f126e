"""The frozen base weights of a LoRA model held in bf16 while it trains under bf16 autocast.

Under ``bf16-mixed`` autocast casts every fp32 weight to bf16 at every forward, so the adapted
linear layers compute with bf16 copies of their frozen weights anyway; holding those copies for the
whole fit spares the casts (on CPUs whose bf16 matmuls are fast, the casts are a large share of a
step). The matmuls see the same bf16 values as under autocast. The fp32 parameters are put back
afterwards (the very same tensors: nothing is rounded), and `original()` puts them back for a while
(the dev scorer generates at its own precision, which may be fp32).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def adapted_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The frozen `nn.Linear` base layers under PEFT LoRA layers (what autocast would cast)."""
    out = []
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if (hasattr(module, "lora_A") and isinstance(base, torch.nn.Linear)
                and not base.weight.requires_grad and base.weight.dtype == torch.float32):
            out.append(base)
    return out


class FrozenWeightsCast:
    """Swaps the adapted layers' frozen fp32 weights for `dtype` copies; `restore()` undoes it."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.layers = adapted_linears(model)
        self.originals = [layer.weight for layer in self.layers]
        self.copies = [torch.nn.Parameter(w.detach().to(dtype), requires_grad=False) for w in self.originals]
        self.active = False

    def __len__(self) -> int:
        return len(self.layers)

    def _put(self, weights: list[torch.nn.Parameter]) -> None:
        for layer, w in zip(self.layers, weights):
            layer.weight = w

    def apply(self) -> None:
        self._put(self.copies)
        self.active = True

    def restore(self) -> None:
        self._put(self.originals)
        self.active = False

    @contextmanager
    def original(self) -> Iterator[None]:
        """The fp32 weights for the duration (then the copies again, if they were in place)."""
        was = self.active
        self.restore()
        try:
            yield
        finally:
            if was:
                self.apply()


@contextmanager
def frozen_weights_in(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16,
                      enabled: bool = True) -> Iterator[FrozenWeightsCast | None]:
    """Hold the adapted layers' frozen weights in `dtype` inside the block (restored on any exit)."""
    if not enabled:
        yield None
        return
    cast = FrozenWeightsCast(model, dtype)
    cast.apply()
    try:
        yield cast
    finally:
        cast.restore()
