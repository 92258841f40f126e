"""CounterFact (Meng et al., ROME, 2022; MIT) as a knowledge update.

Published shape: ``counterfact.json``, a JSON list of records (the same records as JSON Lines,
parquet, or the hub dataset ``azhx/counterfact``)::

    {"case_id": 0, "pararel_idx": 2796,
     "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                           "target_new": {"str": "English", "id": "Q1860"},
                           "target_true": {"str": "French", "id": "Q150"},
                           "subject": "Danielle Darrieux"},
     "paraphrase_prompts": [...2], "neighborhood_prompts": [...10],
     "attribute_prompts": [...], "generation_prompts": [...]}

Per sampled edit: one KB document stating the fact ("The mother tongue of Danielle Darrieux is
French." in KB v0, "... is English." in KB v1, same doc_id); ``updated`` asks the rewrite prompt,
``paraphrased`` the paraphrase prompts (answer ``target_new``); every neighbourhood prompt used
becomes an unchanged document ("The mother tongue of Léon Blum is French.") in both KBs and an
``unchanged`` question (answer ``target_true``). Prompts stay completions, verbatim (the README
says why). ``attribute_prompts`` and ``generation_prompts`` are not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from updatelab.data.formats.common import Converted, RecordProblem, get, parse_all, record_error, sample_indices, statement


@dataclass(frozen=True)
class Edit:
    case_id: int
    subject: str
    prompt: str  # the rewrite prompt with the subject filled in
    relation_id: str
    target_new: str
    target_true: str
    paraphrases: tuple[str, ...]
    neighbours: tuple[str, ...]


def parse(rec: Mapping[str, Any]) -> Edit:
    template = get(rec, "requested_rewrite.prompt")
    if "{}" not in template:
        raise RecordProblem("requested_rewrite.prompt", "has no '{}' where the subject goes")
    subject = get(rec, "requested_rewrite.subject")
    new, true = get(rec, "requested_rewrite.target_new.str"), get(rec, "requested_rewrite.target_true.str")
    return Edit(
        case_id=get(rec, "case_id", "int"),
        subject=subject,
        prompt=template.replace("{}", subject),  # not str.format: subjects and prompts may hold braces
        relation_id=get(rec, "requested_rewrite.relation_id"),
        target_new=new,
        target_true=true,
        paraphrases=tuple(get(rec, "paraphrase_prompts", "str_list")),
        neighbours=tuple(get(rec, "neighborhood_prompts", "str_list")),
    )


class _Mentions:
    """Does a text mention one of many subjects? (word-aligned, indexed by first word, so that a
    full CounterFact sample of 20k subjects stays linear in the text length)."""

    def __init__(self, subjects: Sequence[str]):
        self.by_first: dict[str, list[str]] = {}
        for s in subjects:
            self.by_first.setdefault(s.split()[0], []).append(s)

    def __call__(self, text: str) -> bool:
        words = text.split()
        for i, w in enumerate(words):
            for s in self.by_first.get(w, ()):
                if " ".join(words[i:i + len(s.split())]).startswith(s):
                    return True
        return False


def convert(records: Sequence[Any], *, label: str, sample: int | None = 100, sample_seed: int = 0,
            neighborhood_per_edit: int | None = 2, n_general: int = 40) -> Converted:
    """`sample` edits (records) drawn with `sample_seed` (None = all); the first
    `neighborhood_per_edit` usable neighbourhood prompts of each (None = all 10)."""
    if neighborhood_per_edit is not None and (not isinstance(neighborhood_per_edit, int) or neighborhood_per_edit < 0):
        raise ValueError(f"data.neighborhood_per_edit must be an integer >= 0 or null, got {neighborhood_per_edit!r}")
    edits = parse_all(records, parse, label)
    first: dict[int, int] = {}
    for i, e in enumerate(edits):
        if e.case_id in first:
            raise record_error(label, i, f"duplicate case_id {e.case_id} (first in record {first[e.case_id]})")
        first[e.case_id] = i

    out = Converted(meta={"format": "counterfact", "records": len(edits)})
    chosen, seen = [], set()
    for i in sample_indices(len(edits), sample, sample_seed):
        e = edits[i]
        if (e.subject, e.relation_id) in seen:  # two rewrites of one fact would contradict each other
            out.dropped["edits: same subject and relation as an earlier edit"] += 1
        elif e.target_new == e.target_true:
            out.dropped["edits: target_new equals target_true"] += 1
        else:
            seen.add((e.subject, e.relation_id))
            chosen.append(e)
    # A neighbourhood prompt about another sampled edit's subject would have two gold answers.
    edited = _Mentions([e.subject for e in chosen])

    for e in chosen:
        doc = out.doc(f"cf{e.case_id}", statement(e.prompt, e.target_true), statement(e.prompt, e.target_new), e.subject)
        out.ask(f"cf{e.case_id}-rewrite", "updated", e.prompt, [e.target_new], doc, e.subject, e.relation_id)
        for j, p in enumerate(e.paraphrases):
            out.ask(f"cf{e.case_id}-para{j}", "paraphrased", p, [e.target_new], doc, e.subject, e.relation_id)
        used = 0
        for j, p in enumerate(e.neighbours):
            if neighborhood_per_edit is not None and used >= neighborhood_per_edit:
                break
            if edited(p):
                out.dropped["unchanged: prompt about an edited subject"] += 1
                continue
            text = statement(p, e.target_true)
            ndoc = f"cf{e.case_id}-n{j}"
            if out.ask(ndoc, "unchanged", p, [e.target_true], ndoc, None, e.relation_id):
                out.doc(ndoc, text, text)
                used += 1
    out.add_general(n_general)
    out.meta["edits"] = len(chosen)
    return out
