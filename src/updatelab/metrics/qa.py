"""Answer scoring, defined once (SQuAD-style normalisation), used by every arm and the report."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

from updatelab.report.stats import ALPHA, DEFAULT_BOOT, bootstrap_mean_ci

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, squeeze white space (SQuAD v1.1 evaluate.py)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(g).split()) for g in golds)


def contains(prediction: str, golds: Sequence[str]) -> float:
    """Gold string inside the normalised prediction, on word boundaries.

    Small instruct models answer in sentences ("Lorna was born in Oslo."), which exact match
    scores as wrong; this is the headline accuracy, with EM and F1 reported beside it.
    """
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in pred for g in golds))


_CLAUSE_END = (". ", "! ", "? ", "; ", "\n", " and ")  # a comma often sits inside one answer ("Paris, France")


def first_clause(prediction: str, gold: str) -> str:
    """The prediction up to its first clause boundary ("Ferre and the mayor is Olsen" -> "Ferre").
    A boundary that occurs in the gold answer itself ("Paris, France", "St. Louis") does not cut."""
    text, gold = prediction.strip(), gold.lower()
    cuts = [text.lower().find(sep) for sep in _CLAUSE_END if sep not in gold]
    cuts = [c for c in cuts if c >= 0]
    return text[: min(cuts)] if cuts else text


def strict(prediction: str, golds: Sequence[str]) -> float:
    """`contains`, on the answer's first clause only: a gold value copied later from a neighbouring
    passage ("... is Ludmila Ferre. The mayor is Jan Olsen") is not credited."""
    return float(any(contains(first_clause(prediction, g), [g]) for g in golds))


def score(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    return {"em": exact_match(prediction, golds), "f1": token_f1(prediction, golds),
            "contains": contains(prediction, golds), "strict": strict(prediction, golds)}


def bootstrap_ci(values: Sequence[float], n_boot: int = DEFAULT_BOOT, alpha: float = ALPHA, seed: int = 0) -> tuple[float, float]:
    """(lo, hi): percentile bootstrap over questions for the mean of per-question scores, the
    report's one bootstrap (`updatelab.report.stats`) so that stored and reported CIs agree; NaNs for no values."""
    est = bootstrap_mean_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
    return (float("nan"), float("nan")) if est is None else est[1:]
