"""Run the side-by-side benchmarks and regenerate experiments/bench/RESULTS.md (what `make bench` runs).

    python experiments/bench/run_all.py                     # every comparison, full size
    python experiments/bench/run_all.py --quick             # small sizes, 2 repeats: a smoke test (-> quick/)
    python experiments/bench/run_all.py --only embed_throughput --only cka
    python experiments/bench/run_all.py --render            # only rebuild RESULTS.md from the JSON files

Comparisons (each is also runnable alone: ``python experiments/bench/<module>.py [--quick]``):

  lora_throughput      LoRA training tokens/s: updatelab train_lora vs HF Trainer + PEFT (goal >= 2x)
  embed_throughput     embedding docs/s: updatelab Embedder vs SentenceTransformer.encode (goal >= 2.5x,
                       top-10 overlap >= 0.99, cosine >= 0.999)
  embed_levers         embedding levers against the configured Embedder: batch 128, bf16 weights,
                       torch.compile, ONNX Runtime fp32 / int8 (speed and retrieval agreement)
  rag_generation       batched RAG answers/s: updatelab generate vs one model.generate per question
                       (goal >= 4x the faster of fp32 / bf16)
  incremental_reembed  incremental vs full re-embed + index rebuild at 1/10/50% changed
                       (goal: <= 1.2 x fraction x full + fixed overhead)
  cka                  bench_cka.py: MinibatchCKA vs full-batch vs ckatorch (target <= 3 s)
  make_run_phases      wall time of `make run` by phase and arm, from results/default/*.json

Every comparison runs its sides alternately in fresh processes and writes
``<name>.json`` (figures, exact command, machine); RESULTS.md is rebuilt whole from all the JSON
files present, so `--only` refreshes one section and keeps the others. A failing comparison is
reported and the others still run (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

import benchlib as bl

# name -> (module, JSON file written by it)
BENCHES: dict[str, tuple[str, str]] = {
    "lora_throughput": ("lora_throughput", "lora_throughput.json"),
    "embed_throughput": ("embed_throughput", "embed_throughput.json"),
    "embed_levers": ("embed_levers", "embed_levers.json"),
    "rag_generation": ("rag_generation", "rag_generation.json"),
    "incremental_reembed": ("incremental_reembed", "incremental_reembed.json"),
    "cka": ("cka_report", "cka.json"),
    "make_run_phases": ("make_run_phases", "make_run_phases.json"),
}


def run_one(name: str, args: argparse.Namespace) -> tuple[bool, float]:
    module, _ = BENCHES[name]
    cmd = [sys.executable, str(bl.HERE / f"{module}.py")]
    if args.quick:
        cmd.append("--quick")
    if args.repeats and name != "make_run_phases":
        cmd += ["--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.quiet_wait is not None and name != "make_run_phases":
        cmd += ["--quiet-wait", f"{args.quiet_wait:g}"]
    shown = " ".join(["python", str((bl.HERE / f"{module}.py").relative_to(bl.ROOT)), *cmd[2:]])
    print(f"\n=== {name}: {shown}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, **bl.WORKER_ENV, "UPDATELAB_BENCH_PARENT": bl.command_line()}
    proc = subprocess.run(cmd, cwd=str(bl.ROOT), env=env, check=False)
    dt = time.perf_counter() - t0
    print(f"=== {name}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'} in {dt:.0f} s", flush=True)
    return proc.returncode == 0, dt


def machine_of(report: dict) -> str:
    """The CPU a result was measured on (the JSON files of one summary may come from different machines)."""
    m = report.get("machine")
    if not isinstance(m, dict) or "cpu_model" not in m:
        return "not recorded"
    details = [d for d in (m.get("cpu_generation"), "AMX" if "amx_bf16" in m.get("cpu_flags", []) else "") if d]
    described = f"{m.get('cpu_model', '?')} ({', '.join(details)})" if details else m.get("cpu_model", "?")
    return f"{described}, {m.get('cores_usable', '?')} cores"


def render(quick: bool, status: dict[str, str] | None = None) -> str:
    """Rebuild RESULTS.md whole from the JSON files present; returns the summary table."""
    d = bl.out_dir(quick)
    sections, summary = [], []
    for name, (module, json_name) in BENCHES.items():
        mod = importlib.import_module(module)
        path = d / json_name
        if not path.exists():
            sections.append((name, f"## {name}\n\nNot run yet (`python experiments/bench/run_all.py "
                                   f"{'--quick ' if quick else ''}--only {name}`)."))
            summary.append([name, "not run yet", "-", "-", "-", "-"])
            continue
        try:
            report = json.loads(path.read_text())
            sections.append((name, mod.markdown(report)))
            summary += [[name, *row, machine_of(report)] for row in mod.headline(report)]
        except Exception as e:  # a stale JSON of an older format must not stop the others
            sections.append((name, f"## {name}\n\nCould not render {path.name}: {type(e).__name__}: {e}"))
            summary.append([name, "unreadable JSON", "-", "-", str(e)[:80], "-"])
        if status and status.get(name) == "failed":
            summary.append([name, "this run FAILED (figures above, if any, are from an older JSON)", "-", "-", "-", "-"])
    table = bl.md_table(["benchmark", "comparison", "result (median, min–max)", "goal", "verdict", "machine"], summary)
    body = "## Summary\n\n" + table + "\n\nMissed goals say by how much; the sections below have the figures."
    bl.write_results_md([("summary", body), *sections], quick)
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, fewer repeats; results go to experiments/bench/quick/")
    p.add_argument("--only", action="append", choices=list(BENCHES), help="run only this comparison (repeatable)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per side for every comparison")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default: usable cores)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="longest wait (s) for a quiet machine (< 25%% CPU) before each timed run "
                        "(default: 60 s, bench_cka 90 s; quick: 0)")
    p.add_argument("--render", action="store_true", help="run nothing; rebuild RESULTS.md from the JSON files")
    args = p.parse_args()

    names = args.only or list(BENCHES)
    status: dict[str, str] = {}
    t0 = time.perf_counter()
    if not args.render:
        for name in names:
            ok, _ = run_one(name, args)
            status[name] = "ok" if ok else "failed"
    table = render(args.quick, status)
    out = bl.out_dir(args.quick) / "RESULTS.md"
    print(f"\n{'QUICK MODE (smoke test, not a measurement)' if args.quick else 'Benchmarks'}: summary "
          f"({time.perf_counter() - t0:.0f} s)\n")
    print(table)
    print(f"\nwrote {out}")
    failed = [n for n, s in status.items() if s != "ok"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
