"""Confidence intervals for the dashboard: bootstrap over questions, paired over (seed, question).

Accuracy of one arm: the per-question scores of every seed are pooled, and the questions are
resampled with replacement (percentile bootstrap, seeded, so a page is reproducible).

Paired difference between two arms: within each seed both arms answered the same questions
(matched by `qid`), so the per-question difference `score_a - score_b` removes the question's
difficulty. The (seed, question) differences of every seed are pooled and resampled. Constant
differences give a CI that collapses to the point; identical arms give [0, 0].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

DEFAULT_BOOT = 2000


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = DEFAULT_BOOT, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float] | None:
    """(mean, lo, hi): percentile bootstrap of the mean; None for no values."""
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if vals.size == 0:
        return None
    mean = float(vals.mean())
    if vals.size == 1 or np.all(vals == vals[0]):
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    # Resample in chunks: memory stays bounded for large prediction sets.
    means = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // vals.size))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = vals[rng.integers(0, vals.size, size=(stop - start, vals.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # Quantiles of a discrete distribution can land a hair outside the mean; keep lo <= mean <= hi.
    return mean, float(min(lo, mean)), float(max(hi, mean))


def question_scores(record: Mapping[str, Any], split: str, metric: str = "contains") -> dict[str, float]:
    """qid -> score of one record's predictions on one split (rows without a score are skipped)."""
    out: dict[str, float] = {}
    preds = record.get("predictions") if isinstance(record, Mapping) else None
    if not isinstance(preds, list):
        return out
    for i, p in enumerate(preds):
        if not isinstance(p, Mapping) or p.get("split") != split:
            continue
        v = p.get(metric)
        if v is None and metric == "contains" and isinstance(p.get("correct"), bool):
            v = float(p["correct"])
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(v):
            out[str(p.get("qid", f"#{i}"))] = v
    return out


@dataclass
class Estimate:
    """A point estimate with its CI and where it came from."""

    mean: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0  # questions (or (seed, question) pairs) behind it
    n_seeds: int = 0
    source: str = ""  # "bootstrap over questions", "per-seed metrics", ...
    per_seed: dict[Any, float] = field(default_factory=dict)

    @property
    def has_ci(self) -> bool:
        return self.lo is not None and self.hi is not None


def accuracy_estimate(
    records: Sequence[Mapping[str, Any]], split: str, metric: str = "contains", n_boot: int = DEFAULT_BOOT, seed: int = 0
) -> Estimate | None:
    """Accuracy of a group of records (one arm, several seeds) on a split.

    From predictions when any record has them (bootstrap over the pooled questions); otherwise
    the mean over seeds of `metrics.<split>.<metric>`, with the stored CI when there is one seed.
    """
    pooled: list[float] = []
    per_seed: dict[Any, float] = {}
    without = []
    for r in records:
        scores = question_scores(r, split, metric)
        if scores:
            pooled.extend(scores.values())
            per_seed[r.get("seed")] = float(np.mean(list(scores.values())))
        else:
            without.append(r)
    if pooled:
        stored = [(r.get("seed"), _dig(r, "metrics", split, metric)) for r in without]
        stored = [(s, float(v)) for s, v in stored if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if stored:
            # Some seeds have only their stored metric: a bootstrap over the others would leave them out.
            per_seed.update(stored)
            return Estimate(float(np.mean(list(per_seed.values()))), n_seeds=len(per_seed), per_seed=per_seed,
                            source="mean over seeds (some records lack predictions: no CI)")
        m, lo, hi = bootstrap_mean_ci(pooled, n_boot=n_boot, seed=seed)  # type: ignore[misc]
        return Estimate(m, lo, hi, n=len(pooled), n_seeds=len(per_seed), source="bootstrap over questions", per_seed=per_seed)
    vals, cis = [], []
    for r in records:
        m = _dig(r, "metrics", split)
        if isinstance(m, Mapping) and isinstance(m.get(metric), (int, float)):
            vals.append(float(m[metric]))
            per_seed[r.get("seed")] = float(m[metric])
            ci = m.get(f"{metric}_ci")
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
                cis.append((float(ci[0]), float(ci[1])))
    if not vals:
        return None
    mean = float(np.mean(vals))
    if len(vals) == 1 and len(cis) == 1:
        return Estimate(mean, cis[0][0], cis[0][1], n_seeds=1, source="stored CI (no predictions)", per_seed=per_seed)
    return Estimate(mean, n_seeds=len(vals), source="mean over seeds (no predictions, no CI)", per_seed=per_seed)


def matched_differences(
    arm: Iterable[Mapping[str, Any]], baseline: Iterable[Mapping[str, Any]], split: str, metric: str = "contains"
) -> tuple[list[float], dict[Any, int], list[str]]:
    """Per-(seed, question) differences arm - baseline, matched by seed then by qid.

    Returns (differences, pairs per seed, notes). Records of a seed whose data fingerprints
    differ are not paired (they asked different questions).
    """
    notes: list[str] = []
    base_by_seed: dict[Any, list[Mapping[str, Any]]] = {}
    for b in baseline:
        base_by_seed.setdefault(b.get("seed"), []).append(b)
    diffs: list[float] = []
    per_seed: dict[Any, int] = {}
    for a in arm:
        s = a.get("seed")
        for b in base_by_seed.get(s, []):
            fa, fb = a.get("data_fingerprint"), b.get("data_fingerprint")
            if fa and fb and fa != fb:
                notes.append(f"seed {s}: data fingerprints differ ({fa[:8]} vs {fb[:8]}), not paired")
                continue
            sa, sb = question_scores(a, split, metric), question_scores(b, split, metric)
            common = sorted(set(sa) & set(sb))
            diffs.extend(sa[q] - sb[q] for q in common)
            if common:
                per_seed[s] = per_seed.get(s, 0) + len(common)
            break  # one baseline record per seed: the first that matches
    return diffs, per_seed, notes


def paired_difference(
    arm: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    split: str,
    metric: str = "contains",
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Estimate | None:
    """Mean of arm - baseline over matched (seed, question) pairs, with a bootstrap CI over the pairs."""
    diffs, per_seed, _ = matched_differences(arm, baseline, split, metric)
    if not diffs:
        return None
    m, lo, hi = bootstrap_mean_ci(diffs, n_boot=n_boot, seed=seed)  # type: ignore[misc]
    return Estimate(m, lo, hi, n=len(diffs), n_seeds=len(per_seed), source="bootstrap over (seed, question) pairs")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when cost (x) is minimised and accuracy (y) maximised,
    sorted by cost. A point is dominated when another is no costlier and no less accurate, and
    strictly better on one of the two."""
    idx = [i for i, (x, y) in enumerate(points) if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    front = []
    for i in idx:
        xi, yi = points[i]
        dominated = any(
            (points[j][0] <= xi and points[j][1] >= yi) and (points[j][0] < xi or points[j][1] > yi) for j in idx if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d
