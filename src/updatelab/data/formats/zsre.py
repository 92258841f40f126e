"""zsRE as KnowEdit distributes it (Zhang et al., 2024; ``zjunlp/KnowEdit``, MIT) as a knowledge update.

Published shape: ``ZsRE-test-all.json``, a JSON list of records::

    {"subject": "Epaspidoceras", "target_new": "Noctuidae",
     "prompt": "Which family does Epaspidoceras belong to?", "ground_truth": ["Aspidoceratidae"],
     "rephrase_prompt": "What family are Epaspidoceras?", "cond": "...",
     "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is",
                                            "ground_truth": ["genus"]}, ...]},
     "portability": {"Reasoning": [{"prompt": "What is the common name for the family
                                    Epaspidoceras belongs to?", "ground_truth": "Owlet moths"}]}}

``ground_truth`` may be a string, a list of strings or a list of alias lists (KnowEdit uses all
three); the first answer is the gold, the rest are aliases. Per sampled edit: one KB document
"<prompt> <answer>." (``ground_truth`` in KB v0, ``target_new`` in KB v1, same doc_id); ``updated``
asks ``prompt``, ``paraphrased`` asks ``rephrase_prompt`` (answer ``target_new``); each locality
prompt becomes an unchanged document in both KBs and an ``unchanged`` question; each portability
prompt becomes a ``portability`` question whose gold document is the edit's (it needs the new
fact plus what the model knows). ``cond`` is not used. ``locality``/``portability`` may be absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from updatelab.data.formats.common import Converted, check, get, parse_all, sample_indices, statement
from updatelab.metrics.qa import normalize_answer

Probe = tuple[str, str, tuple[str, ...]]  # (kind, prompt, answers), kind e.g. "Relation_Specificity"


@dataclass(frozen=True)
class Edit:
    subject: str
    prompt: str
    target_new: str
    ground_truth: tuple[str, ...]
    rephrase: str
    locality: tuple[Probe, ...]
    portability: tuple[Probe, ...]


def _probes(rec: Mapping[str, Any], key: str) -> tuple[Probe, ...]:
    out = []
    for kind, items in (get(rec, key, "dict", optional=True) or {}).items():
        if items is None:  # `datasets` fills a probe kind other records have with null
            continue
        for i, item in enumerate(check(items, f"{key}.{kind}", "list")):
            at = f"{key}.{kind}[{i}]"
            check(item, at, "dict")
            out.append((kind, get(item, "prompt", at=at), get(item, "ground_truth", "answers", at=at)))
    return tuple(out)


def parse(rec: Mapping[str, Any]) -> Edit:
    return Edit(
        subject=get(rec, "subject"),
        prompt=get(rec, "prompt"),
        target_new=get(rec, "target_new"),
        ground_truth=get(rec, "ground_truth", "answers"),
        rephrase=get(rec, "rephrase_prompt"),
        locality=_probes(rec, "locality"),
        portability=_probes(rec, "portability"),
    )


def convert(records: Sequence[Any], *, label: str, sample: int | None = 100, sample_seed: int = 0,
            n_general: int = 40) -> Converted:
    """`sample` edits (records) drawn with `sample_seed` (None = all)."""
    edits = parse_all(records, parse, label)
    out = Converted(meta={"format": "zsre", "records": len(edits)})
    seen: set[tuple[str, str]] = set()
    n = 0
    for i in sample_indices(len(edits), sample, sample_seed):
        e = edits[i]
        if normalize_answer(e.target_new) in {normalize_answer(g) for g in e.ground_truth}:
            out.dropped["edits: target_new is a ground_truth answer"] += 1
            continue
        if (e.subject, e.prompt) in seen:  # two rewrites of one fact would contradict each other
            out.dropped["edits: same subject and prompt as an earlier edit"] += 1
            continue
        seen.add((e.subject, e.prompt))
        n += 1
        doc = out.doc(f"zsre{i}", statement(e.prompt, e.ground_truth[0]), statement(e.prompt, e.target_new), e.subject)
        out.ask(f"zsre{i}-edit", "updated", e.prompt, [e.target_new], doc, e.subject)
        out.ask(f"zsre{i}-rephrase", "paraphrased", e.rephrase, [e.target_new], doc, e.subject)
        for j, (kind, prompt, golds) in enumerate(e.locality):
            ldoc = f"zsre{i}-loc{j}"
            if out.ask(ldoc, "unchanged", prompt, golds, ldoc, None, kind):
                text = statement(prompt, golds[0])
                out.doc(ldoc, text, text)
        for j, (kind, prompt, golds) in enumerate(e.portability):
            out.ask(f"zsre{i}-port{j}", "portability", prompt, golds, doc, e.subject, kind)
    out.add_general(n_general)
    out.meta["edits"] = n
    return out
