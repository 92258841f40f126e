"""Benchmark: CKA between two models' hidden states, 30 layers x 2,048 probes x 576 wide.

Acceptance target: the CKA step (everything after the forward passes) takes <= 3 s on a
2-core CPU. The activations are synthetic but shaped and typed like pooled LM hidden
states: float32, in memory, a shared low-rank signal that drifts with depth, a large
common offset in a few "massive activation" dimensions, and a model B that departs from
model A more in deeper layers (as a fine-tune does).

Methods (each timed in a fresh subprocess, so peak RSS is the method's own):

  minibatch      updatelab MinibatchCKA: full 30x30 cross matrix + diagonal, unbiased HSIC
                 per batch (Nguyen et al. 2021)
  minibatch_f32  the same with gram_dtype=torch.float32 (Gram products in float32)
  linear_stream  updatelab LinearCKAAccumulator: exact full-data *biased* linear CKA, diagonal
  naive          what a user would write: one n x n Gram per layer held in memory, Song et
                 al.'s unbiased HSIC per pair, full 30x30 cross matrix
  ckatorch_diag  ckatorch.cka_batch (same minibatch estimator) for the 30 diagonal pairs
  ckatorch_cross ckatorch.cka_batch for all 900 pairs

Repeats alternate between methods (rotating the order) and the median is reported, with
the best run and CPU time beside it. The dev machines are shared: each run first waits
(up to --quiet-wait s) for the CPU to be quiet, and records how many cores other
processes kept busy meanwhile ("others"); read wall times with that column.

ckatorch is optional (``pip install ckatorch``: it pulls in matplotlib and seaborn but
leaves torch alone); without it those rows are skipped and the reason is recorded.

    python experiments/bench/bench_cka.py                    # everything, 3 repeats
    python experiments/bench/bench_cka.py --methods minibatch --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
from pathlib import Path

import numpy as np
import torch

import benchlib as bl

METHODS = ["minibatch", "minibatch_f32", "linear_stream", "naive", "ckatorch_diag", "ckatorch_cross"]
WORKER_PARAMS = ("layers", "n", "hidden", "batch_size", "threads", "seed")


# --------------------------------------------------------------------------------------
# Synthetic activations
# --------------------------------------------------------------------------------------


def make_activations(layers: int, n: int, hidden: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, n, hidden) float32 for model A and model B, built layer by layer.

    Filled in place with per-layer temporaries only, so generating the data never peaks
    far above the data's own size and the RSS baseline for the timed method is honest.
    """
    g = torch.Generator().manual_seed(seed)
    rank = 48
    z = torch.randn(n, rank, generator=g)
    z_new = torch.randn(n, rank, generator=g)
    mix = torch.randn(rank, hidden, generator=g) / rank**0.5
    offset = torch.zeros(hidden)
    offset[torch.randperm(hidden, generator=g)[:4]] = 60.0  # a few massive-activation dims
    a = torch.empty(layers, n, hidden)
    b = torch.empty(layers, n, hidden)
    for layer in range(layers):
        mix += 0.25 * torch.randn(rank, hidden, generator=g) / rank**0.5  # residual-stream drift
        a[layer] = z @ mix + 0.5 * torch.randn(n, hidden, generator=g) + offset
        # The update perturbs deeper layers more: from 2% of the signal scale at the bottom
        # to 200% at the top; half of it is structure the base model lacks (its own
        # latent factors, the "new knowledge"), half noise.
        depth = layer / max(layers - 1, 1)
        strength = 0.02 + 1.98 * depth**2
        delta = z_new @ (torch.randn(rank, hidden, generator=g) / rank**0.5) + torch.randn(n, hidden, generator=g)
        b[layer] = a[layer] + strength * delta
    return a, b


# --------------------------------------------------------------------------------------
# Methods: each returns {"diagonal": (L,) array, "cross": (L, L) array or None}
# --------------------------------------------------------------------------------------


def run_minibatch(a: torch.Tensor, b: torch.Tensor, batch_size: int, gram_dtype=torch.float64) -> dict:
    from updatelab.metrics.cka_streaming import MinibatchCKA

    acc = MinibatchCKA(gram_dtype=gram_dtype)
    for start in range(0, a.shape[1], batch_size):
        rows = slice(start, start + batch_size)
        # A list of (b, d) tensors, as a model's hidden_states tuple gives them.
        acc.update([h[rows] for h in a], [h[rows] for h in b])
    out = acc.compute()
    return {"diagonal": out["diagonal"].numpy(), "cross": out["cross"].numpy()}


def run_minibatch_f32(a: torch.Tensor, b: torch.Tensor, batch_size: int) -> dict:
    return run_minibatch(a, b, batch_size, gram_dtype=torch.float32)


def run_linear_stream(a: torch.Tensor, b: torch.Tensor, batch_size: int) -> dict:
    from updatelab.metrics.cka_streaming import LinearCKAAccumulator

    acc = LinearCKAAccumulator(pairs="diagonal")
    for start in range(0, a.shape[1], batch_size):
        rows = slice(start, start + batch_size)
        acc.update([h[rows] for h in a], [h[rows] for h in b])
    return {"diagonal": acc.compute()["diagonal"].numpy(), "cross": None}


def run_naive(a: torch.Tensor, b: torch.Tensor, batch_size: int) -> dict:
    """Full-batch debiased CKA the straightforward way (Song et al. 2012's HSIC_1 per pair)."""
    del batch_size
    n = a.shape[1]

    def prepare(h: torch.Tensor):
        x = h.double()
        k = x @ x.T
        k.fill_diagonal_(0)
        row = k.sum(dim=1)
        return k.reshape(-1), row, row.sum()

    def hsic(p, q):
        (k, rk, sk), (l, rl, sl) = p, q
        return (torch.dot(k, l) + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * torch.dot(rk, rl)) / (n * (n - 3))

    grams_a = [prepare(h) for h in a]
    grams_b = [prepare(h) for h in b]
    self_a = torch.stack([hsic(p, p) for p in grams_a])
    self_b = torch.stack([hsic(q, q) for q in grams_b])
    cross = torch.empty(len(grams_a), len(grams_b), dtype=torch.float64)
    for i, p in enumerate(grams_a):
        for j, q in enumerate(grams_b):
            cross[i, j] = hsic(p, q) / torch.sqrt(self_a[i] * self_b[j])
    return {"diagonal": cross.diagonal().numpy().copy(), "cross": cross.numpy()}


def _ckatorch_batched(h: torch.Tensor, batch_size: int) -> torch.Tensor:
    n, d = h.shape
    if n % batch_size:
        raise ValueError(f"ckatorch.cka_batch needs n ({n}) divisible by the batch size ({batch_size})")
    return h.reshape(n // batch_size, batch_size, d)


def run_ckatorch_diag(a: torch.Tensor, b: torch.Tensor, batch_size: int) -> dict:
    from ckatorch import cka_batch

    diag = [float(cka_batch(_ckatorch_batched(x, batch_size), _ckatorch_batched(y, batch_size))) for x, y in zip(a, b)]
    return {"diagonal": np.array(diag), "cross": None}


def run_ckatorch_cross(a: torch.Tensor, b: torch.Tensor, batch_size: int) -> dict:
    from ckatorch import cka_batch

    cross = np.array(
        [[float(cka_batch(_ckatorch_batched(x, batch_size), _ckatorch_batched(y, batch_size))) for y in b] for x in a]
    )
    return {"diagonal": cross.diagonal().copy(), "cross": cross}


RUNNERS = {
    "minibatch": run_minibatch,
    "minibatch_f32": run_minibatch_f32,
    "linear_stream": run_linear_stream,
    "naive": run_naive,
    "ckatorch_diag": run_ckatorch_diag,
    "ckatorch_cross": run_ckatorch_cross,
}


# --------------------------------------------------------------------------------------
# Worker: one method, one fresh process (benchlib's --worker/--params protocol)
# --------------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(method: str, p: dict) -> dict:
    bl.set_threads(p["threads"])
    a, b = make_activations(p["layers"], p["n"], p["hidden"], p["seed"])
    run = RUNNERS[method]
    # Warm-up on a slice: thread pools and kernels initialise outside the timed region.
    warm = min(p["n"], 2 * p["batch_size"])
    run(a[:2, :warm].clone(), b[:2, :warm].clone(), p["batch_size"])

    rss_before, max_before = rss_mb(), max_rss_mb()
    load_before = os.getloadavg()[0]
    with bl.timed() as t:
        out = run(a, b, p["batch_size"])
    max_after = max_rss_mb()
    return {
        "method": method,
        "seconds": t.wall_s,
        # CPU time of all threads: less sensitive than wall time to other work on
        # a shared machine; with --threads 2 and no contention, wall ~ cpu / 2.
        "cpu_seconds": t.cpu_s,
        # Cores' worth of other processes' work while this method ran (0 = it had the machine
        # to itself, 2 = full contention). Always a number, unlike t.others_busy_cores: the
        # report takes its median; on runs shorter than bl.MIN_CONTENTION_WALL_S it is noise.
        "others_busy_cores": t.others_busy_s / t.wall_s,
        # Peak resident memory above what the process held when the method started.
        # If the method never exceeded the earlier peak (data generation), this is
        # an upper bound; max_rss_before_mb - rss_before_mb shows that slack.
        "peak_extra_mb": max(0.0, max(max_after, max_before) - rss_before),
        "rss_before_mb": rss_before,
        "max_rss_before_mb": max_before,
        "loadavg_1min_before": load_before,
        "diagonal": [float(v) for v in out["diagonal"]],
        "cross_shape": list(out["cross"].shape) if out["cross"] is not None else None,
    }


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def reference_biased_diagonal(args: argparse.Namespace) -> np.ndarray:
    """Full-batch biased linear CKA per layer with the plain cka() function."""
    from updatelab.metrics.cka import cka

    torch.set_num_threads(args.threads)
    a, b = make_activations(args.layers, args.n, args.hidden, args.seed)
    return np.array([cka(x, y) for x, y in zip(a, b)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--n", type=int, default=2048, help="probe sequences")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--slow-repeats", type=int, default=1,
        help="repeats for ckatorch_cross (~200 s a run here: 900 separate cka_batch calls)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    p.add_argument("--target-seconds", type=float, default=3.0)
    p.add_argument("--quiet-cpu", type=float, default=25.0, help="start a run only below this machine CPU %%")
    p.add_argument("--quiet-wait", type=float, default=90.0, help="longest wait for --quiet-cpu, seconds")
    p.add_argument("--out", type=Path, default=bl.HERE / "cka.json")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        bl.emit(worker(args.worker, json.loads(args.params)))
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}")
    why = ("ckatorch is not installed in this environment" if importlib.util.find_spec("ckatorch") is None
           else "ckatorch.cka_batch needs n divisible by the batch size" if args.n % args.batch_size else None)
    skipped = {m: why for m in ("ckatorch_diag", "ckatorch_cross") if why and m in methods}
    methods = [m for m in methods if m not in skipped]

    machine = {**bl.machine_info(args.threads), "ckatorch": bl._version("ckatorch")}
    params = {k: getattr(args, k) for k in WORKER_PARAMS}
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    slow = {"ckatorch_cross"}
    for rep, m in bl.alternate(methods, args.repeats):
        if m in slow and rep >= args.slow_repeats:
            continue
        busy = bl.wait_for_quiet(args.quiet_cpu, args.quiet_wait)
        r = bl.run_worker(Path(__file__).resolve(), m, params)
        r["machine_cpu_percent_at_start"] = busy
        runs[m].append(r)
        print(
            f"  repeat {rep + 1}/{args.repeats}  {m:<15} {r['seconds']:8.3f} s  cpu {r['cpu_seconds']:8.3f} s"
            f"  peak +{r['peak_extra_mb']:7.1f} MB"
            f"  (other processes: {r['others_busy_cores']:.2f} cores)",
            flush=True,
        )

    diagonals = {m: np.array(rs[0]["diagonal"]) for m, rs in runs.items()}
    reference_biased = reference_biased_diagonal(args) if "linear_stream" in methods else None

    def max_diff(m: str, ref: str) -> float | None:
        if ref not in diagonals or m == ref:
            return None
        return float(np.abs(diagonals[m] - diagonals[ref]).max())

    results = {}
    for m, rs in runs.items():
        secs = bl.summarize(r["seconds"] for r in rs)
        results[m] = {
            "median_seconds": secs["median"],
            "seconds": [r["seconds"] for r in rs],
            # Best of the runs: the least contaminated by other work on the shared machine.
            "min_seconds": secs["min"],
            "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
            "cpu_seconds": [r["cpu_seconds"] for r in rs],
            "median_peak_extra_mb": statistics.median(r["peak_extra_mb"] for r in rs),
            **{k: [r[k] for r in rs] for k in ("peak_extra_mb", "loadavg_1min_before", "others_busy_cores",
                                                "machine_cpu_percent_at_start")},
            **{k: rs[0][k] for k in ("rss_before_mb", "max_rss_before_mb", "cross_shape")},
            # Diagonals must agree across repeats bit for bit (deterministic inputs).
            "deterministic": all(r["diagonal"] == rs[0]["diagonal"] for r in rs),
            "max_abs_diff_diag_vs_minibatch": max_diff(m, "minibatch"),
            "max_abs_diff_diag_vs_naive": max_diff(m, "naive"),
            "diagonal": rs[0]["diagonal"],
        }
    if reference_biased is not None:
        results["linear_stream"]["max_abs_diff_diag_vs_full_batch_biased_cka"] = float(
            np.abs(diagonals["linear_stream"] - reference_biased).max()
        )

    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "params", "out")},
        "machine": machine,
        "target_seconds": args.target_seconds,
        "minibatch_meets_target": (
            results["minibatch"]["median_seconds"] <= args.target_seconds if "minibatch" in results else None
        ),
        "results": results,
        "skipped": skipped,
        "notes": {
            "timing": "wall time of the CKA step only (activations already in memory), median over repeats "
            "run alternately, each in a fresh process after a warm-up on a slice",
            "memory": "peak RSS above the process's RSS when the method started (getrusage max RSS)",
            "contention": "the machine is shared; others_busy_cores is how many cores other processes kept "
            "busy during each timed run (median shown in the table as 'others'); each run waits up to "
            "--quiet-wait s for the machine to be quiet first; best s is the least contaminated run",
            "estimators": "minibatch, ckatorch_*: unbiased HSIC summed over batches of --batch-size; naive: "
            "full-batch unbiased HSIC; linear_stream: full-data biased linear CKA (a different quantity, "
            "compared with cka(x, y) instead)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"CKA, {args.layers} layers x {args.n} probes x hidden {args.hidden}, batch {args.batch_size}, "
          f"{args.threads} threads, median over runs")  # fmt: skip
    header = (
        f"{'method':<15} {'output':>8} {'runs':>4} {'wall s':>8} {'best s':>8} {'cpu s':>8} {'others':>6} "
        f"{'peak MB':>9} "
        f"{'|diag-minibatch|':>17} {'|diag-naive|':>13}"
    )
    print(header)
    print("-" * len(header))
    for m, r in results.items():
        shape = "x".join(map(str, r["cross_shape"])) if r["cross_shape"] else "diag"
        fmt = lambda v: "-" if v is None else f"{v:.1e}"  # noqa: E731
        print(
            f"{m:<15} {shape:>8} {len(r['seconds']):>4} {r['median_seconds']:8.3f} {r['min_seconds']:8.3f} "
            f"{r['median_cpu_seconds']:8.3f} {statistics.median(r['others_busy_cores']):6.2f} "
            f"{r['median_peak_extra_mb']:9.1f} "
            f"{fmt(r['max_abs_diff_diag_vs_minibatch']):>17} {fmt(r['max_abs_diff_diag_vs_naive']):>13}"
        )
    if "linear_stream" in results and reference_biased is not None:
        print(
            "linear_stream vs full-batch biased cka(): max |diff| = "
            f"{results['linear_stream']['max_abs_diff_diag_vs_full_batch_biased_cka']:.1e}"
        )
    for m, why in skipped.items():
        print(f"skipped {m}: {why}")
    if "minibatch" in results:
        verdict = "meets" if report["minibatch_meets_target"] else "MISSES"
        secs = results["minibatch"]["median_seconds"]
        print(f"minibatch {verdict} the {args.target_seconds:g} s target (median wall {secs:.3f} s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
