"""Statistics of the report, defined once: the splits and arms it shows, and CIs and tests that
respect how the data were drawn.

Each seed draws a fictional world (its people, its edits, its questions), and each world asks its
own questions. The questions of one world are not independent of each other in the way two
worlds are, so an interval over pooled questions says nothing about how much the result would
move in another world. Every CI here is a two-stage (hierarchical) percentile bootstrap: resample
the worlds with replacement, then the questions within each resampled world. With one seed it is
the ordinary bootstrap over questions. Seeded, so a page or a table is reproducible. Resampling
both stages counts each world's question noise twice (it is also in the spread of the world
means), so with few questions per world the intervals lean wide: the safe side for "does this arm
beat the baseline". With few seeds the world stage has few distinct draws (two seeds: three).

Accuracy of one arm: the per-question scores of each world. Paired difference arm - baseline:
within each world both arms answered the same questions (matched by seed, then `qid`), so the
per-question difference removes the question's difficulty; the differences are resampled as above.
Constant differences give a CI that collapses to the point; identical arms give [0, 0].

The exact McNemar test counts the discordant (seed, question) pairs: b (arm right, baseline wrong)
and c (arm wrong, baseline right); under "no difference" b ~ Binomial(b + c, 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from updatelab.data.schema import SPLITS
from updatelab.report.records import dig

DEFAULT_BOOT = 2000
"""Bootstrap resamples behind every CI the project reports (results files, table, dashboard)."""
ALPHA = 0.05  # 95% intervals

STORED = "stored"  # not a question split: the cloze probe of the updated facts (`updatelab.metrics.stored`)


def _with_stored(splits: Sequence[str]) -> tuple[str, ...]:
    # The probe reads best beside the split whose facts it probes.
    out = list(splits)
    out.insert(out.index("updated") + 1 if "updated" in out else len(out), STORED)
    return tuple(out)


REPORT_SPLITS: tuple[str, ...] = _with_stored(SPLITS)
"""Every split a report may show, in report order: the question splits of the data schema, plus `stored`."""

EMBEDDER_ARMS: tuple[str, ...] = ("embedder_ft_stale", "embedder_ft_reembed")
"""The arms that tune the embedder, keeping the old index or re-embedding the knowledge base with the tuned one."""

ARM_ORDER: tuple[str, ...] = ("closed_book", "stale", "reembed", *EMBEDDER_ARMS, "lora", "full_ft", "lora_rag")
"""Arms in report order (every report module sorts by :func:`arm_rank`); an arm not listed comes after these, by name."""

FORGETTING_REFERENCE = "closed_book"
FORGETTING_SPLITS: tuple[str, ...] = ("unchanged", "general")
"""The splits on which `closed_book` (the base LM, untouched) is the reference an update must not fall below."""


def arm_rank(strategy: str) -> tuple[int, str]:
    """Sort key putting arms in :data:`ARM_ORDER`."""
    return (ARM_ORDER.index(strategy) if strategy in ARM_ORDER else len(ARM_ORDER), str(strategy))


# ------------------------------------------------------------------------------------ bootstrap


def _finite(values: Iterable[Any]) -> np.ndarray:
    vals = [v for v in values if v is not None]
    arr = np.asarray(vals, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def _resampled_sums(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sums of k independent resamples (with replacement, of size len(values)) of `values`.

    Drawing n indices uniformly is the same as drawing how often each distinct value is picked
    from a multinomial: 0/1 scores and -1/0/1 differences then cost k x 3 numbers, not k x n.
    """
    uniq, counts = np.unique(values, return_counts=True)
    n = values.size
    out = np.empty(k)
    chunk = max(1, 4_000_000 // uniq.size)  # bounded memory for continuous scores (F1) of large splits
    for start in range(0, k, chunk):
        stop = min(k, start + chunk)
        out[start:stop] = rng.multinomial(n, counts / n, size=stop - start) @ uniq
    return out


def hierarchical_bootstrap(
    worlds: Sequence[Sequence[float]], n_boot: int = DEFAULT_BOOT, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float, float] | None:
    """(mean, lo, hi): the mean of every value, with a two-stage percentile bootstrap CI.

    `worlds` holds one sequence of per-question values per world (seed). Each resample draws as
    many worlds as there are, with replacement, then within each drawn world as many values as it
    has, with replacement; its statistic is the mean of all values drawn, so that a question
    weighs the same in every world, as in the point estimate. None when there are no values.
    (Not `scipy.stats.bootstrap`: it resamples one level, and the worlds are a level of their own.)
    """
    arrays = [a for a in (_finite(w) for w in worlds) if a.size]
    if not arrays:
        return None
    pooled = np.concatenate(arrays)
    mean = float(pooled.mean())
    if np.all(pooled == pooled[0]):
        return mean, mean, mean  # every resample is this value; skip the float noise of summing it
    rng = np.random.default_rng(seed)
    n_worlds = len(arrays)
    picks = rng.multinomial(n_worlds, np.full(n_worlds, 1 / n_worlds), size=n_boot)  # (n_boot, worlds): times drawn
    sums = np.zeros(n_boot)
    for w, values in enumerate(arrays):
        owner = np.repeat(np.arange(n_boot), picks[:, w])  # the resample each draw of world w belongs to
        sums += np.bincount(owner, weights=_resampled_sums(values, owner.size, rng), minlength=n_boot)
    means = sums / (picks @ np.array([a.size for a in arrays]))
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # Quantiles of a discrete distribution can land a hair outside the mean; keep lo <= mean <= hi.
    return mean, float(min(lo, mean)), float(max(hi, mean))


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = DEFAULT_BOOT, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float, float] | None:
    """(mean, lo, hi) of values from one world: the bootstrap over questions; None for no values."""
    return hierarchical_bootstrap([values], n_boot=n_boot, alpha=alpha, seed=seed)


# ------------------------------------------------------------------------------- what was measured


RETRIEVAL = "retrieval"  # not a split: every question with a gold document, as metrics.retrieval counts them


def _hit(p: Mapping[str, Any], metric: str) -> float | None:
    """`recall@k` of one prediction: its gold document among the first k it retrieved (None when it
    has no gold document or retrieved nothing)."""
    gold, got = p.get("gold_doc"), p.get("retrieved")
    if gold is None or not isinstance(got, list):
        return None
    return float(gold in got[: int(metric[len("recall@"):])])


def question_scores(record: Mapping[str, Any], split: str, metric: str = "contains") -> dict[str, float]:
    """qid -> score of one record's predictions on one split (rows without a score are skipped).
    `split` RETRIEVAL with `metric` ``recall@k``: the retrieval hit of every question with a gold document."""
    out: dict[str, float] = {}
    preds = record.get("predictions") if isinstance(record, Mapping) else None
    if not isinstance(preds, list):
        return out
    for i, p in enumerate(preds):
        if not isinstance(p, Mapping) or (p.get("split") != split and split != RETRIEVAL):
            continue
        v = _hit(p, metric) if metric.startswith("recall@") else p.get(metric)
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


def _stored_metric(record: Mapping[str, Any], split: str, metric: str = "contains") -> float | None:
    v = dig(record, f"metrics.{split}.{metric}")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None


def has_split(record: Mapping[str, Any], split: str, metric: str = "contains") -> bool:
    """Whether the record measured `split`: scored predictions, or at least a stored metric."""
    return bool(question_scores(record, split, metric)) or _stored_metric(record, split, metric) is not None


def present_splits(records: Sequence[Mapping[str, Any]], splits: Sequence[str] = REPORT_SPLITS) -> list[str]:
    """The splits (in report order) some record measured: a split nobody has gets no column, no legend entry."""
    return [s for s in splits if any(has_split(r, s) for r in records)]


def questions_per_world(records: Sequence[Mapping[str, Any]], split: str) -> dict[Any, int]:
    """Seed -> questions on `split` (from the predictions, else `metrics.<split>.n`); seeds with neither are left out.
    Matched arms of a world ask the same questions, so the largest count of the seed's records is its size."""
    out: dict[Any, int] = {}
    for r in records:
        n = len(question_scores(r, split))
        stored_n = dig(r, f"metrics.{split}.n")
        if not n and isinstance(stored_n, int) and not isinstance(stored_n, bool):
            n = stored_n
        if n:
            out[r.get("seed")] = max(n, out.get(r.get("seed"), 0))
    return out


def _by_seed(items: Mapping[Any, Any]) -> list[Any]:
    # A fixed world order, whatever order the files were read in: the bootstrap draws are the same.
    return sorted(items, key=lambda s: (s is None, str(type(s)), s if isinstance(s, (int, float)) else str(s)))


# ------------------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test over matched (seed, question) pairs."""

    b: int  # arm right, baseline wrong
    c: int  # arm wrong, baseline right
    n: int  # matched pairs, concordant ones included
    p: float  # two-sided exact p-value


@dataclass
class Estimate:
    """A point estimate with its CI and where it came from."""

    mean: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0  # questions (or (seed, question) pairs) behind it
    n_seeds: int = 0
    source: str = ""  # "hierarchical bootstrap ...", "per-seed metrics", ...
    per_seed: dict[Any, float] = field(default_factory=dict)
    test: McNemar | None = None  # paired differences only

    @property
    def has_ci(self) -> bool:
        return self.lo is not None and self.hi is not None


HIERARCHICAL = "hierarchical bootstrap (seeds, then questions within each seed)"


def accuracy_estimate(
    records: Sequence[Mapping[str, Any]], split: str, metric: str = "contains", n_boot: int = DEFAULT_BOOT, seed: int = 0
) -> Estimate | None:
    """Accuracy of a group of records (one arm, several seeds) on a split.

    From predictions when any record has them (hierarchical bootstrap over seeds and their
    questions); otherwise the mean over seeds of `metrics.<split>.<metric>`, with the stored CI
    when there is one seed.
    """
    worlds: dict[Any, list[float]] = {}
    without = []
    for r in records:
        scores = question_scores(r, split, metric)
        if scores:
            worlds.setdefault(r.get("seed"), []).extend(scores.values())
        else:
            without.append(r)
    per_seed = {s: float(np.mean(worlds[s])) for s in _by_seed(worlds)}
    if worlds:
        stored = [(r.get("seed"), _stored_metric(r, split, metric)) for r in without]
        stored = [(s, v) for s, v in stored if v is not None]
        if stored:
            # Some seeds have only their stored metric: a bootstrap over the others would leave them out.
            per_seed.update(stored)
            return Estimate(float(np.mean(list(per_seed.values()))), n_seeds=len(per_seed), per_seed=per_seed,
                            source="mean over seeds (some records lack predictions: no CI)")
        m, lo, hi = hierarchical_bootstrap([worlds[s] for s in per_seed], n_boot=n_boot, seed=seed)  # type: ignore[misc]
        return Estimate(m, lo, hi, n=sum(map(len, worlds.values())), n_seeds=len(worlds), source=HIERARCHICAL, per_seed=per_seed)
    return _stored_estimate(records, split, metric)


def _stored_estimate(records: Sequence[Mapping[str, Any]], split: str, metric: str) -> Estimate | None:
    """Accuracy from `metrics.<split>` alone (records without predictions)."""
    vals, cis, per_seed = [], [], {}
    for r in records:
        m = dig(r, f"metrics.{split}")
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


def matched_pairs(
    arm: Iterable[Mapping[str, Any]], baseline: Iterable[Mapping[str, Any]], split: str, metric: str = "contains"
) -> tuple[dict[Any, np.ndarray], list[str]]:
    """Seed -> array of (arm score, baseline score) rows, one per question both answered, matched
    by seed then by qid; and notes. Records of a seed whose data fingerprints differ are not
    paired (they asked different questions)."""
    notes: list[str] = []
    base_by_seed: dict[Any, list[Mapping[str, Any]]] = {}
    for b in baseline:
        base_by_seed.setdefault(b.get("seed"), []).append(b)
    rows: dict[Any, list[tuple[float, float]]] = {}
    for a in arm:
        s = a.get("seed")
        for b in base_by_seed.get(s, []):
            fa, fb = a.get("data_fingerprint"), b.get("data_fingerprint")
            if fa and fb and fa != fb:
                notes.append(f"seed {s}: data fingerprints differ ({fa[:8]} vs {fb[:8]}), not paired")
                continue
            sa, sb = question_scores(a, split, metric), question_scores(b, split, metric)
            common = sorted(set(sa) & set(sb))
            if common:
                rows.setdefault(s, []).extend((sa[q], sb[q]) for q in common)
            break  # one baseline record per seed: the first that matches
    return {s: np.asarray(rows[s], dtype=float) for s in _by_seed(rows)}, notes


def matched_differences(
    arm: Iterable[Mapping[str, Any]], baseline: Iterable[Mapping[str, Any]], split: str, metric: str = "contains"
) -> tuple[list[float], dict[Any, int], list[str]]:
    """(per-(seed, question) differences arm - baseline, pairs per seed, notes); see :func:`matched_pairs`."""
    pairs, notes = matched_pairs(arm, baseline, split, metric)
    diffs = [float(d) for p in pairs.values() for d in p[:, 0] - p[:, 1]]
    return diffs, {s: len(p) for s, p in pairs.items()}, notes


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts; 1.0 when there are none."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest  # imported here: evaluation imports this module and needs no scipy

    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


def mcnemar_test(pairs: Iterable[np.ndarray]) -> McNemar:
    """Exact McNemar test over (arm, baseline) score rows, pooled over seeds.

    b and c count the pairs where the arm scored higher / lower: for 0/1 scores exactly "arm
    right, baseline wrong" and the reverse (for graded scores it is the exact sign test)."""
    rows = [np.asarray(p, dtype=float).reshape(-1, 2) for p in pairs]
    both = np.concatenate(rows) if rows else np.empty((0, 2))
    b, c = int((both[:, 0] > both[:, 1]).sum()), int((both[:, 0] < both[:, 1]).sum())
    return McNemar(b, c, len(both), mcnemar_p(b, c))


def mcnemar(
    arm: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], split: str, metric: str = "contains"
) -> McNemar | None:
    """Exact McNemar test of arm vs baseline on the matched (seed, question) pairs of a split; None without pairs."""
    pairs, _ = matched_pairs(arm, baseline, split, metric)
    return mcnemar_test(pairs.values()) if pairs else None


def paired_difference(
    arm: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    split: str,
    metric: str = "contains",
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Estimate | None:
    """Mean of arm - baseline over matched (seed, question) pairs, with a hierarchical bootstrap CI
    (seeds, then pairs within each seed) and the exact McNemar test (`Estimate.test`)."""
    pairs, _ = matched_pairs(arm, baseline, split, metric)
    if not pairs:
        return None
    diffs = {s: p[:, 0] - p[:, 1] for s, p in pairs.items()}
    m, lo, hi = hierarchical_bootstrap(list(diffs.values()), n_boot=n_boot, seed=seed)  # type: ignore[misc]
    return Estimate(m, lo, hi, n=sum(map(len, diffs.values())), n_seeds=len(diffs), source=HIERARCHICAL + ", paired",
                    per_seed={s: float(d.mean()) for s, d in diffs.items()}, test=mcnemar_test(pairs.values()))


def compare(
    arm: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    splits: Sequence[str],
    metric: str = "contains",
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> dict[str, Estimate | None]:
    """Split -> :func:`paired_difference` of arm vs baseline (None where they share no pairs)."""
    return {s: paired_difference(arm, baseline, s, metric, n_boot=n_boot, seed=seed) for s in splits}


def reference_splits(baseline: str, splits: Sequence[str]) -> list[str]:
    """The splits on which `baseline` is a reference: every split, but only the forgetting
    splits for the forgetting reference (closed_book has nothing to say about updated facts)."""
    return [s for s in splits if baseline != FORGETTING_REFERENCE or s in FORGETTING_SPLITS]


def recall_difference(
    arm: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], baseline_name: str, k: int,
    n_boot: int = DEFAULT_BOOT, seed: int = 0,
) -> dict[str, Estimate | None]:
    """``{"recall@k": paired difference of per-question retrieval hits}`` when `baseline_name` is a
    reference for retrieval; ``{}`` for the forgetting reference (closed_book retrieves nothing)."""
    if baseline_name == FORGETTING_REFERENCE:
        return {}
    key = f"recall@{k}"
    return {key: paired_difference(arm, baseline, RETRIEVAL, key, n_boot=n_boot, seed=seed)}


# --------------------------------------------------------------------------------------- other


def fmt_p(p: float) -> str:
    """A p-value as the table and the dashboard print it: two significant digits, "<0.001" below."""
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def fmt_sizes(per_world: Mapping[Any, int]) -> str:
    """Questions per seed as a report states n: "15", or "14–16" when the worlds differ; "?" when unknown."""
    ns = sorted(set(per_world.values()))
    return "?" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
