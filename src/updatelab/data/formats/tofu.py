"""TOFU's fictitious authors (Maini et al., 2024; ``locuslab/TOFU``) as a knowledge update.

Published shape: JSON Lines rows (the hub's ``full.json``, ``forget10.json``, ... are JSON Lines
despite the suffix)::

    {"question": "...", "answer": "..."}

and in the ``*_perturbed`` configs also ``paraphrased_answer``, ``perturbed_answer`` (a list of
wrong answers) and, where present, ``paraphrased_question``. Rows carry no author field: TOFU
lists each author's ``qa_per_author`` (20) QA pairs consecutively, so row ``k * 20 + j`` is pair
``j`` of author ``k`` -- a file whose row count is not a multiple of that is rejected.

The authors are invented, so they are *new* knowledge. Of the `sample` authors drawn, a
`new_fraction` are added by the update (their QA pairs become KB v1 documents, absent from KB v0)
and the others are already known (documents in both KBs). Each document is one QA pair,
"<question> <answer>" (TOFU publishes its facts only as QA, and the question names the author
or their defining details, so the pair stands on its own). `questions_per_author` pairs per
author are asked: ``updated`` (new authors, ``paraphrased_answer`` accepted too), ``paraphrased``
(their ``paraphrased_question`` when the file has it), ``unchanged`` (known authors).
``perturbed_answer`` is not used (it serves TOFU's truth ratio, a likelihood metric).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from updatelab.data.formats.common import Converted, check_sample, get, parse_all, record_error, sample_indices


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    paraphrased_answer: str | None
    paraphrased_question: str | None


def parse(rec: Mapping[str, Any]) -> Pair:
    return Pair(get(rec, "question"), get(rec, "answer"), get(rec, "paraphrased_answer", optional=True),
                get(rec, "paraphrased_question", optional=True))


def convert(records: Sequence[Any], *, label: str, sample: int | None = 20, sample_seed: int = 0,
            new_fraction: float = 0.5, questions_per_author: int | None = 4, qa_per_author: int = 20,
            n_general: int = 40) -> Converted:
    """`sample` authors (None = all) drawn with `sample_seed`; see the module docstring."""
    if not isinstance(qa_per_author, int) or qa_per_author < 1:
        raise ValueError(f"data.qa_per_author must be a positive integer, got {qa_per_author!r}")
    if not isinstance(new_fraction, (int, float)) or not 0 < new_fraction < 1:
        raise ValueError(f"data.new_fraction must be strictly between 0 and 1, got {new_fraction!r}")
    if questions_per_author is not None and (not isinstance(questions_per_author, int) or questions_per_author < 1):
        raise ValueError(f"data.questions_per_author must be a positive integer or null (all), got {questions_per_author!r}")
    check_sample(sample, sample_seed)
    pairs = parse_all(records, parse, label)
    if len(pairs) % qa_per_author:
        raise record_error(label, None, f"{len(pairs)} rows is not a multiple of qa_per_author={qa_per_author} "
                           "(TOFU lists each author's QA pairs consecutively)")
    n_authors = len(pairs) // qa_per_author
    chosen = sample_indices(n_authors, sample, sample_seed)
    if len(chosen) < 2:
        raise ValueError(f"TOFU needs at least 2 authors (one added by the update, one already known); "
                         f"{label} has {n_authors}, data.sample={sample}")
    rng = random.Random(sample_seed)
    n_new = min(max(1, round(len(chosen) * new_fraction)), len(chosen) - 1)
    order = rng.sample(chosen, len(chosen))
    new = set(order[:n_new])

    out = Converted(meta={"format": "tofu", "records": len(pairs), "authors": n_authors,
                          "new_authors": n_new, "known_authors": len(chosen) - n_new})
    for a in chosen:
        entity = f"tofu-author-{a:03d}"
        own = pairs[a * qa_per_author:(a + 1) * qa_per_author]
        k = qa_per_author if questions_per_author is None else min(questions_per_author, qa_per_author)
        asked = set(rng.sample(range(qa_per_author), k))
        for j, p in enumerate(own):
            text = f"{p.question} {p.answer}"
            doc = out.doc(f"tofu{a:03d}-{j:02d}", None if a in new else text, text, entity)
            if j not in asked:
                continue
            if a not in new:
                out.ask(f"{doc}-q", "unchanged", p.question, [p.answer], doc, entity)
                continue
            golds = [p.answer] + ([p.paraphrased_answer] if p.paraphrased_answer else [])
            out.ask(f"{doc}-q", "updated", p.question, golds, doc, entity)
            if p.paraphrased_question:
                out.ask(f"{doc}-pq", "paraphrased", p.paraphrased_question, golds, doc, entity)
    out.add_general(n_general)
    return out
