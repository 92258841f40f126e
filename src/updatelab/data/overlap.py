"""Near-copies of evaluation questions among one's own training questions (template leakage).

An exact copy of an evaluation question in a training file is refused (`schema.check_update`);
a near copy -- the evaluation's wording with another name, or one word changed -- is what
"training templates disjoint from evaluation templates" forbids, and only a person can judge
it. So it warns, naming the pairs: word n-grams of both questions, the entity's own words
replaced by one placeholder, compared by Jaccard similarity.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

log = logging.getLogger("updatelab")

_WORD = re.compile(r"[a-z0-9]+")
EVAL_SPLITS = ("updated", "paraphrased", "unchanged", "portability")  # questions about entities


def template_ngrams(question: str, entity: str | None, n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the question with the entity's words as one `<e>` token."""
    words = _WORD.findall(question.lower())
    name = _WORD.findall((entity or "").lower())
    out: list[str] = []
    i = 0
    while i < len(words):
        if name and words[i : i + len(name)] == name:
            out.append("<e>")
            i += len(name)
        else:
            out.append(words[i])
            i += 1
    if len(out) < n:
        return frozenset([tuple(out)])
    return frozenset(tuple(out[j : j + n]) for j in range(len(out) - n + 1))


def near_copies(train: Sequence[Mapping], evaluation: Sequence[Mapping], threshold: float = 0.5,
                n: int = 3) -> list[tuple[int, int, float]]:
    """(train index, evaluation index, Jaccard) of every pair at or above `threshold`."""
    eval_grams = [template_ngrams(q["question"], q.get("entity"), n) for q in evaluation]
    by_gram: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for j, grams in enumerate(eval_grams):
        for g in grams:
            by_gram[g].append(j)
    pairs = []
    for i, row in enumerate(train):
        grams = template_ngrams(row["question"], row.get("entity"), n)
        for j in sorted({j for g in grams for j in by_gram.get(g, ())}):
            sim = len(grams & eval_grams[j]) / len(grams | eval_grams[j])
            if sim >= threshold:
                pairs.append((i, j, sim))
    return pairs


def warn_near_copies(rows: Mapping[str, Iterable], keys: Sequence[str] = ("inject_qa", "train_qa"),
                     threshold: float = 0.5, shown: int = 5) -> list[str]:
    """Log one warning per training file that holds near copies of evaluation questions, with the
    first `shown` pairs; returns the warnings (for the results file and tests)."""
    evaluation = [r for r in rows.get("questions") or () if r.get("split") in EVAL_SPLITS]
    warnings = []
    for key in keys:
        train = list(rows.get(key) or ())
        pairs = near_copies(train, evaluation, threshold) if train and evaluation else []
        if not pairs:
            continue
        listed = "; ".join(f"{train[i]['question']!r} ~ {evaluation[j]['question']!r} ({sim:.2f})"
                           for i, j, sim in pairs[:shown])
        more = f" (and {len(pairs) - shown} more)" if len(pairs) > shown else ""
        warnings.append(f"{key}.jsonl: {len(pairs)} question(s) worded like an evaluation question "
                        f"(3-gram Jaccard >= {threshold}, names masked): {listed}{more}")
        log.warning("%s", warnings[-1])
    return warnings
