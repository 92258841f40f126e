"""What this machine runs fastest: the precision of each phase (the thread count: updatelab.threads).

`choose`: CPUs of the same kind of machine differ in which precision is faster:
some run bf16 matmuls much faster than fp32, others (bf16 instructions but no AMX) slower. So
``auto`` is decided by measurement, not by CPU flags: for each phase (``train``, ``embed``,
``generate``, ``shift``) the caller passes a callable that runs one real step of the configured model in a
given precision; `choose` times it in fp32 and in bf16 (warm-up calls, then timed repeats
alternating between the two, median; one round when it is decisive) and takes the faster. The choice is cached once per machine
in ``<cache_dir>/precision/<key>.json``, the key naming the CPU model (with its bf16/AMX flags),
the torch version, the model and the phase. Explicit values are returned unchanged; on a GPU the
rule is bf16 where supported. Every choice made in a cell is kept (`recorded`) for the results
file and the W&B config.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from updatelab import threads
from updatelab.io import file_lock

log = logging.getLogger("updatelab")

AUTO = "auto"
# The two candidates of each phase, in the phase's own vocabulary (Lightning precision strings for
# training, torch dtype names for autocast). The first one wins a tie.
CANDIDATES: dict[str, tuple[str, str]] = {
    "train": ("32-true", "bf16-mixed"),
    "embed": ("float32", "bfloat16"),
    "generate": ("float32", "bfloat16"),
    "shift": ("float32", "bfloat16"),  # the latent-shift probe's forward passes (hidden states, logits)
}
_AUTOCAST_NAMES = {"none": "float32", "fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                   "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}
_GPU_FALLBACK = {"train": "16-mixed", "embed": "float16", "generate": "float16", "shift": "float16"}
# CPU flags that decide bf16 speed; part of the cache key, since virtual machines often report a
# generic model name ("Intel(R) Xeon(R) Processor") for CPUs of different generations.
_ISA_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni")


@dataclass
class PrecisionChoice:
    phase: str  # train | embed | generate | shift
    precision: str  # what the phase runs with ("32-true", "bf16-mixed", "float32", "bfloat16", ...)
    timings_s: dict[str, float] = field(default_factory=dict)  # median seconds per timed step, by candidate
    cached: bool = False  # taken from the per-machine cache file (no measurement this time)
    key: str = ""
    requested: str = AUTO
    source: str = "measured"  # measured | cache | explicit | gpu | default

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- machine identity


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str], str]:
    """(model name, flags, generation) of the first processor in /proc/cpuinfo's text; the generation
    is x86's "family F model M", since one model name ("AMD EPYC") can stand for CPU generations of
    different bf16 speed."""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    fam, num = re.search(r"^cpu family\s*:\s*(\d+)$", text, re.M), re.search(r"^model\s*:\s*(\d+)$", text, re.M)
    return (m.group(1).strip() if m else "", frozenset(f.group(1).split()) if f else frozenset(),
            f"family {fam.group(1)} model {num.group(1)}" if fam and num else "")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str], str]:
    try:
        model, flags, generation = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags, generation = "", frozenset(), ""
    if not model:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
            m = re.search(r"^Model name:\s*(.+)$", out, re.M)
            model = m.group(1).strip() if m else ""
        except (OSError, subprocess.SubprocessError):
            pass
    return model or platform.processor() or platform.machine() or "unknown-cpu", flags, generation


def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo, else lscpu)."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's flags (/proc/cpuinfo), empty where there is none."""
    return _cpuinfo()[1]


def cpu_generation() -> str:
    """x86 family and model numbers ("family 26 model 2"), or "" where /proc/cpuinfo has none."""
    return _cpuinfo()[2]


def cpu_signature(info: tuple[str, frozenset[str], str] | None = None) -> str:
    """CPU model name, generation and the ISA flags that decide bf16 speed (of this machine, or of
    `parse_cpuinfo`'s result), e.g. ``AMD EPYC (family 25 model 17) [avx512f,avx512_bf16]``."""
    model, flags, generation = info or _cpuinfo()
    return f"{model}{f' ({generation})' if generation else ''} [{','.join(f for f in _ISA_FLAGS if f in flags)}]"


_SAMPLE_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
                 "born works city company studied plays river north music").split()


def sample_texts(n: int, words: int) -> list[str]:
    """`n` fixed texts of `words` words each: a measurement batch that does not depend on the data."""
    return [" ".join(_SAMPLE_WORDS[(i + j) % len(_SAMPLE_WORDS)] for j in range(words)) for i in range(n)]


def precision_key(phase: str, model_id: str) -> str:
    return f"{cpu_signature()} | torch {torch.__version__} | {model_id} | {phase}"


def _key_file(root: Path, key: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:120]
    return root / "precision" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"


def model_id(model: Any, trainable: bool = False, adapter: bool = True) -> str:
    """A model's identity for the cache key: its name, parameter count and (training) trainable count.

    `adapter` False: an unmerged LoRA adapter's tensors are not counted. Where the base model's
    matmuls decide which precision is faster (generation: the adapter adds rank-r products to
    each of them), an arm with an adapter shares the base model's measurement instead of
    repeating it."""
    config = getattr(model, "config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = Path(str(getattr(config, "_name_or_path", "") or type(base).__name__)).name
    named = [(n, p) for n, p in model.named_parameters() if adapter or "lora_" not in n]
    out = f"{name}:{sum(p.numel() for _, p in named)}p"
    if trainable:
        out += f":{sum(p.numel() for _, p in named if p.requires_grad)}t"
    return out


# --------------------------------------------------------------------------- cache dir, record

_cache_dir: Path | None = None
_choices: dict[str, PrecisionChoice] = {}
_logged: set[tuple[str, str]] = set()
_measuring = 0  # > 0 while a measurement runs: the steps it times choose explicitly, unrecorded


def set_cache_dir(path: str | Path | None) -> None:
    """Where `choose` keeps its per-machine files (the pipeline sets ``cfg.paths.cache_dir``)."""
    global _cache_dir
    _cache_dir = Path(path) if path else None


def default_cache_dir() -> Path:
    if _cache_dir is not None:
        return _cache_dir
    return Path(os.environ.get("UPDATELAB_ROOT") or os.getcwd()) / ".cache" / "updatelab"


def reset_recorded() -> None:
    """Forget the choices of the previous cell (called at the start of each cell)."""
    _choices.clear()
    _logged.clear()


def recorded() -> dict[str, dict[str, Any]]:
    """phase -> the choice made in this cell (as a dict), for the results file and W&B."""
    return {phase: c.as_dict() for phase, c in _choices.items()}


def _record(choice: PrecisionChoice) -> PrecisionChoice:
    """Keep the cell's first choice per (phase, key): a later call that reads the cache the first
    one wrote does not turn "measured" into "cached"."""
    if _measuring:
        return choice
    if (choice.phase, choice.key) not in _logged:
        _choices[choice.phase] = choice
        _logged.add((choice.phase, choice.key))
        times = ", ".join(f"{c} {t:.3f} s" for c, t in choice.timings_s.items())
        log.info("precision %s: %s (%s%s)", choice.phase, choice.precision, choice.source,
                 f"; median step {times}" if times else "")
    return choice


# --------------------------------------------------------------------------- measurement


# A first round whose slower candidate took this many times the faster's decides on its own:
# timing noise on a quiet machine is far smaller, and further rounds would repeat the verdict.
DECISIVE_RATIO = 1.25


def time_candidates(measure: Callable[[str], Any], candidates: Sequence[str], warmup: int = 1,
                    repeats: int = 3, decisive: float | None = DECISIVE_RATIO) -> dict[str, list[float]]:
    """Seconds per call of ``measure(candidate)``: warm-up calls first, then timed rounds
    alternating between the candidates (so that a transient load hits both alike), up to
    `repeats` rounds; after the first round, none more if it was `decisive` (None: always all)."""
    for c in candidates:
        for _ in range(warmup):
            measure(c)
    samples: dict[str, list[float]] = {c: [] for c in candidates}
    for round_ in range(max(1, repeats)):
        for c in candidates:
            t0 = time.perf_counter()
            measure(c)
            samples[c].append(time.perf_counter() - t0)
        first = [samples[c][0] for c in candidates]
        if round_ == 0 and decisive is not None and max(first) >= decisive * min(first):
            break
    return samples


def faster(samples: Mapping[str, Sequence[float]], candidates: Sequence[str]) -> str:
    """The candidate with the smaller median; the first candidate (fp32) wins a tie."""
    return min(candidates, key=lambda c: (statistics.median(samples[c]), candidates.index(c)))


def _read(path: Path, candidates: Sequence[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("precision") in candidates else None


def _write(path: Path, data: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    os.replace(tmp, path)


def choose(
    phase: str,
    requested: Any = AUTO,
    *,
    measure: Callable[[str], Any] | None = None,
    model: str = "",
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> PrecisionChoice:
    """The precision `phase` runs with.

    `requested`: ``"auto"`` decides; anything else is returned unchanged. `measure(candidate)`
    runs one real step in that candidate precision (``CANDIDATES[phase]``); it is called only when
    the cache has no entry for this machine, torch version, `model` (see `model_id`) and phase.
    Without `measure` and without a cached entry, CPU ``auto`` falls back to fp32.
    """
    global _measuring
    if phase not in CANDIDATES:
        raise ValueError(f"unknown precision phase {phase!r}; valid: {', '.join(CANDIDATES)}")
    candidates = CANDIDATES[phase]
    key = precision_key(phase, model)
    if requested != AUTO:
        value = str(requested)
        if phase != "train":  # autocast names: no autocast is fp32
            value = _AUTOCAST_NAMES.get(value.lower() if requested else "none", value)
        return _record(PrecisionChoice(phase, value, key=key, requested=str(requested), source="explicit"))
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0].lower()
    kind = "cuda" if kind == "gpu" else kind
    if kind == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return _record(PrecisionChoice(phase, candidates[1] if bf16 else _GPU_FALLBACK[phase], key=key, source="gpu"))
    if kind != "cpu":
        return _record(PrecisionChoice(phase, candidates[0], key=key, source="default"))

    path = _key_file(Path(cache_dir) if cache_dir else default_cache_dir(), key)
    data = _read(path, candidates)
    if data is None and measure is not None:
        with file_lock(path.with_suffix(".lock")):  # concurrent cells: one measures, the others read it
            data = _read(path, candidates)  # another process may have measured while we waited
            if data is None:
                _measuring += 1
                try:
                    samples = time_candidates(measure, candidates, warmup=warmup, repeats=repeats)
                finally:
                    _measuring -= 1
                data = {
                    "key": key, "phase": phase, "precision": faster(samples, candidates),
                    "timings_s": {c: statistics.median(s) for c, s in samples.items()}, "samples_s": samples,
                    "cpu": cpu_signature(), "torch": torch.__version__, "model": model,
                    "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
                    "decisive_ratio": DECISIVE_RATIO,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "threads_choice": threads.current().as_dict() if threads.current() else None,
                }
                _write(path, data)
                chosen = threads.current()
                if chosen is not None and chosen.source == "auto" and chosen.threads < chosen.usable_cores:
                    log.warning("precision %s measured on a busy machine (threads auto: %d of %d cores free); delete "
                                "%s to measure again when it is quiet", phase, chosen.threads,
                                chosen.usable_cores, path)
                return _record(PrecisionChoice(phase, data["precision"], dict(data["timings_s"]), False, key))
    if data is None:
        return _record(PrecisionChoice(phase, candidates[0], key=key, source="default"))
    return _record(PrecisionChoice(phase, data["precision"], dict(data.get("timings_s") or {}), True, key,
                                   source="cache"))
