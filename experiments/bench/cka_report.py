"""The `cka` comparison: runs experiments/bench/bench_cka.py and folds its JSON into RESULTS.md.

bench_cka.py (minibatch CKA vs full-batch vs ckatorch; its docstring has the details) does the
timing itself: each method in a fresh process, repeats alternated, median reported. This
wrapper only chooses its arguments (full or --quick), records the exact command in the JSON,
and renders the Markdown section with the speed-ups of updatelab's MinibatchCKA over the
other methods (per repetition where both ran, median / min / max).

    python experiments/bench/cka_report.py            # bench_cka.py defaults -> experiments/bench/cka.json
    python experiments/bench/cka_report.py --quick    # 6 layers x 512 probes, 2 repeats, no quiet-wait -> quick/cka.json
    python experiments/bench/cka_report.py --reuse    # fold an existing cka.json without re-running
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

import benchlib as bl

NAME = "cka"
SCRIPT = bl.HERE / "bench_cka.py"


def bench_args(args: argparse.Namespace) -> list[str]:
    # paths relative to the repo root (bench_cka.py runs with cwd = the root), so the recorded command reads as typed
    out = ["--threads", str(args.threads), "--out", str((bl.out_dir(args.quick) / "cka.json").relative_to(bl.ROOT))]
    if args.quick:
        out += ["--layers", "6", "--n", "512", "--batch-size", "128", "--repeats", str(args.repeats or 2)]
    elif args.repeats:
        out += ["--repeats", str(args.repeats)]
    # bench_cka.py waits for a quiet machine itself (default: up to 90 s below 25% CPU); quick: no wait
    wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else None)
    if wait is not None:
        out += ["--quiet-wait", f"{wait:g}"]
    if args.quiet_cpu != 25.0:
        out += ["--quiet-cpu", f"{args.quiet_cpu:g}"]
    return out + list(args.extra or [])


def run(args: argparse.Namespace) -> dict:
    path = bl.out_dir(args.quick) / "cka.json"
    if not args.reuse:
        cmd = [sys.executable, str(SCRIPT), *bench_args(args)]
        print(f"[{NAME}] {shlex.join(['python', str(SCRIPT.relative_to(bl.ROOT)), *bench_args(args)])}", flush=True)
        env = {**os.environ, **bl.WORKER_ENV}
        proc = subprocess.run(cmd, cwd=str(bl.ROOT), env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_cka.py failed (exit {proc.returncode})")
        report = json.loads(path.read_text())
        report["command"] = shlex.join(["python", str(SCRIPT.relative_to(bl.ROOT)), *bench_args(args)])
        report["invoked_by"] = bl.command_line()
        report["quick"] = bool(args.quick)
        path.write_text(json.dumps(report, indent=2) + "\n")
    elif not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run without --reuse")
    return json.loads(path.read_text())


def speedups(report: dict) -> dict:
    """other method's seconds / minibatch's, per repeat where both ran."""
    res = report["results"]
    if "minibatch" not in res:
        return {}
    mb = res["minibatch"]["seconds"]
    out = {}
    for m, r in res.items():
        if m == "minibatch":
            continue
        pairs = [o / b for o, b in zip(r["seconds"], mb) if b > 0]
        if pairs:
            out[m] = {**bl.summarize(pairs), "per_repeat": pairs}
    return out


def markdown(report: dict) -> str:
    c = report["config"]
    quick = report.get("quick", False)
    lines = [f"## CKA: updatelab MinibatchCKA vs full-batch vs ckatorch{' (QUICK)' if quick else ''}", "",
             f"From `bench_cka.py` ({c['layers']} layers × {c['n']} probes × hidden {c['hidden']}, batch "
             f"{c['batch_size']}, {c['threads']} threads; each method in a fresh process, repeats alternated). "
             "Seconds of the CKA step only (activations in memory).", ""]
    rows = []
    for m, r in report["results"].items():
        shape = "x".join(map(str, r["cross_shape"])) if r.get("cross_shape") else "diag"
        fmt = lambda v: "-" if v is None else f"{v:.1e}"  # noqa: E731
        rows.append([m, shape, len(r["seconds"]), f"{r['median_seconds']:.3f}", f"{r['min_seconds']:.3f}",
                     f"{r['median_cpu_seconds']:.3f}", f"{statistics.median(r['others_busy_cores']):.2f}",
                     f"{r['median_peak_extra_mb']:.1f}", fmt(r.get("max_abs_diff_diag_vs_minibatch")),
                     fmt(r.get("max_abs_diff_diag_vs_naive"))])
    lines.append(bl.md_table(["method", "output", "runs", "wall s (median)", "best s", "cpu s", "others", "peak MB",
                              "max abs diff vs minibatch", "max abs diff vs naive"], rows))
    lines.append("")
    sp = speedups(report)
    if sp:
        lines.append("MinibatchCKA speed-up (other method's time / minibatch's, per repeat): " + "; ".join(
            f"{m} {v['median']:.1f}x" + (f" ({v['min']:.1f}–{v['max']:.1f})" if v["n"] > 1 else " (1 run)")
            for m, v in sp.items()) + ". (minibatch computes the full cross-layer matrix; `*_diag` and "
            "`linear_stream` compute the diagonal only.)")
    for m, why in (report.get("skipped") or {}).items():
        lines.append(f"- skipped {m}: {why}")
    if report.get("minibatch_meets_target") is not None:
        secs = report["results"]["minibatch"]["median_seconds"]
        tgt = report["target_seconds"]
        verdict = "meets" if report["minibatch_meets_target"] else f"**MISSES** (by {secs - tgt:.2f} s, {100 * (secs / tgt - 1):.0f}% over)"
        lines.append(f"- target: minibatch ≤ {tgt:g} s on {c['layers']}×{c['n']}×{c['hidden']}: {verdict} "
                     f"(median {secs:.3f} s)" + (" — quick sizes: the target applies to the full size only" if quick else ""))
    lines.append("")
    mach = report.get("machine", {})
    lines.append(f"Machine: {bl.machine_line(mach)}, ckatorch {mach.get('ckatorch')}. Command: "
                 f"`{report.get('command', 'python experiments/bench/bench_cka.py')}`.")
    return "\n".join(lines)


def headline(report: dict) -> list[list[str]]:
    rows = []
    if report.get("minibatch_meets_target") is not None:
        secs, tgt = report["results"]["minibatch"]["median_seconds"], report["target_seconds"]
        rows.append(["CKA step, MinibatchCKA (median s)", f"{secs:.3f} s", f"≤ {tgt:g} s",
                     "met" if report["minibatch_meets_target"] else f"MISSED by {secs - tgt:.2f} s"])
    sp = speedups(report)
    for m in ("naive", "ckatorch_cross"):
        if m in sp:
            rows.append([f"CKA speed-up vs {m}", f"{sp[m]['median']:.1f}x", "-", "-"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bl.common_args(p, default_repeats=3)
    p.add_argument("--reuse", action="store_true", help="do not run bench_cka.py; fold the existing JSON")
    p.add_argument("extra", nargs="*", help="further bench_cka.py arguments (after --)")
    args = p.parse_args()
    report = run(args)
    md = markdown(report)
    bl.update_results_md(NAME, md, args.quick)
    print()
    print(md)


if __name__ == "__main__":
    sys.exit(main())
