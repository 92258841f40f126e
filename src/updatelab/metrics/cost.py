"""The cost ledger: what each phase of an arm paid, so arms can be compared on cost too.

Phases split into the one-off update (embed, index, train) and serving (retrieve, generate);
the totals are sums over phases, never measured separately, so they always add up.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

import psutil
import torch

UPDATE_PHASES = ("embed", "index", "train")
SERVING_PHASES = ("retrieve", "generate")


@dataclass
class Phase:
    wall_s: float = 0.0
    tokens: int = 0
    flops: float = 0.0
    peak_mem_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class _PeakMemory:
    """Peak memory during a block: CUDA max allocated on GPU, else sampled process RSS.

    `ru_maxrss` is a lifetime maximum and cannot attribute a peak to a phase, so a thread
    samples RSS every 20 ms instead.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "_PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated()

    @property
    def mb(self) -> float:
        return self.peak / 2**20


class CostLedger:
    def __init__(self, prices: Mapping[str, float] | None = None, device: str = "cpu"):
        self.phases: dict[str, Phase] = {}
        self.prices = dict(prices or {})
        self.device = device
        self.info: dict[str, Any] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        ph = self.phases.setdefault(name, Phase())
        t0 = time.perf_counter()
        with _PeakMemory() as mem:
            yield ph
        ph.wall_s += time.perf_counter() - t0
        ph.peak_mem_mb = max(ph.peak_mem_mb, mem.mb)

    def _dollars(self, seconds: float) -> float:
        per_hour = self.prices.get("gpu_hour" if self.device.startswith("cuda") else "cpu_hour", 0.0)
        return per_hour * seconds / 3600.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, ph in self.phases.items():
            d = asdict(ph)
            d.update(d.pop("extra"))
            d["usd"] = self._dollars(ph.wall_s)
            out[name] = d

        def total(names) -> dict[str, float]:
            sel = [self.phases[n] for n in names if n in self.phases]
            wall = sum(p.wall_s for p in sel)
            return {
                "wall_s": wall,
                "tokens": sum(p.tokens for p in sel),
                "flops": sum(p.flops for p in sel),
                "peak_mem_mb": max((p.peak_mem_mb for p in sel), default=0.0),
                "usd": self._dollars(wall),
            }

        out["update_total"] = total(UPDATE_PHASES)
        out["serving_total"] = total(SERVING_PHASES)
        out["total"] = total(self.phases)
        out.update(self.info)
        return out


def forward_flops(n_params: int, tokens: int) -> float:
    """~2 FLOPs per parameter per token for a forward pass (Kaplan et al. 2020)."""
    return 2.0 * n_params * tokens


def lora_train_flops(n_base: int, n_adapter: int, tokens: int) -> float:
    """What a LoRA step computes: forward through base + adapter (2N + 2Na), backward for
    activation gradients through every layer (2N + 2Na), weight gradients for the adapter
    only (2Na); the frozen base needs no weight gradients, which is LoRA's saving over 6N."""
    return float(tokens) * (4.0 * n_base + 6.0 * n_adapter)


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters that cost FLOPs per token (lookup tables are free; a tied LM head is not)."""
    n = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        n -= emb.weight.numel()
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if out is not None and out.weight is emb.weight:
            n += emb.weight.numel()  # tied: the head's matmul is still paid for every token
    return n


def add_serving_per_1k(ledger: CostLedger, n_queries: int) -> None:
    """Serving cost per 1,000 queries: RAG pays for its context tokens on every query."""
    if n_queries <= 0:
        return
    scale = 1000.0 / n_queries
    gen = ledger.phases.get("generate")
    serving = [ledger.phases[p] for p in SERVING_PHASES if p in ledger.phases]
    wall = sum(p.wall_s for p in serving) * scale
    ledger.info["serving_per_1k"] = {
        "wall_s": wall,
        "tokens": sum(p.tokens for p in serving) * scale,
        "flops": sum(p.flops for p in serving) * scale,
        "prompt_tokens": (gen.extra.get("prompt_tokens", 0) * scale) if gen else 0.0,
        "usd": ledger._dollars(wall),
    }
