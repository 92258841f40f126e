"""Standard benchmarks as data sources: each converter on a fixture in its exact published shape,
one-line errors naming file, record and field, the conversion cache, and one end-to-end multirun
of stale + reembed on all three formats through the real CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from updatelab.data.formats import counterfact, tofu, zsre
from updatelab.data.formats.convert import ensure_converted
from updatelab.data.formats.read import local_source, parse_local
from updatelab.data.load import load_update
from updatelab.data.schema import DatasetSchemaError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
REPO = Path(__file__).resolve().parents[1]
FILES = {"counterfact": FIXTURES / "counterfact.json", "zsre": FIXTURES / "zsre.json", "tofu": FIXTURES / "tofu.json"}
CONVERTERS = {"counterfact": counterfact.convert, "zsre": zsre.convert, "tofu": tofu.convert}
# The splits each format provides (plus the packaged `general` probe).
PROVIDED = {"counterfact": {"updated", "paraphrased", "unchanged", "general"},
            "zsre": {"updated", "paraphrased", "portability", "unchanged", "general"},
            "tofu": {"updated", "paraphrased", "unchanged", "general"}}


def records(fmt: str) -> list:
    source, raw = local_source(FILES[fmt])
    return parse_local(source, raw)


def convert(fmt: str, recs=None, **params):
    return CONVERTERS[fmt](records(fmt) if recs is None else recs, label=FILES[fmt].name, **{"n_general": 2, **params})


def by_split(c) -> dict:
    out: dict = {}
    for q in c.questions:
        out.setdefault(q.split, []).append(q)
    return out


@pytest.mark.parametrize("fmt", list(FILES))
def test_converted_fixture_loads_with_every_split_the_format_provides(fmt, tmp_path):
    folder, name = ensure_converted(fmt, tmp_path, str(FILES[fmt]), sample=None, sample_seed=0, n_general=2)
    update = load_update(source="local", path=folder, name=name)  # the ordinary path, schema rules included
    splits = {s: len(qs) for s, qs in update.splits().items() if qs}
    assert set(splits) == PROVIDED[fmt] and all(n > 0 for n in splits.values())
    changed = set(update.changed_doc_ids())
    for q in update.questions:
        if q.split in ("updated", "paraphrased", "portability"):
            assert q.doc_id in changed
        elif q.split == "unchanged":
            assert q.doc_id not in changed


def test_counterfact_fields_go_to_their_splits():
    c = convert("counterfact", neighborhood_per_edit=2)
    s = by_split(c)
    assert [len(s[k]) for k in ("updated", "paraphrased", "unchanged")] == [4, 8, 8]
    q = s["updated"][0]
    assert (q.question, q.answer, q.doc_id) == ("The mother tongue of Danielle Darrieux is", "English", "cf0")
    v0, v1 = ({d.doc_id: d.text for d in kb} for kb in (c.kb_v0, c.kb_v1))
    assert v0["cf0"] == "The mother tongue of Danielle Darrieux is French."
    assert v1["cf0"] == "The mother tongue of Danielle Darrieux is English."
    n = s["unchanged"][0]  # a neighbourhood prompt, answered by the true object, its own unchanged document
    assert (n.question, n.answer) == ("The mother tongue of Léon Blum is", "French")
    assert v0[n.doc_id] == v1[n.doc_id] == "The mother tongue of Léon Blum is French."
    assert len(by_split(convert("counterfact", neighborhood_per_edit=None))["unchanged"]) == 13


def test_counterfact_drops_questions_that_contain_their_answer_or_name_another_edit():
    recs = records("counterfact")
    recs[0]["neighborhood_prompts"] = ["Toko Yasuda's mother tongue is", "French cinema's best-known native", "Jean Gabin, a native"]
    s = by_split(c := convert("counterfact", recs, neighborhood_per_edit=None))
    cf0 = [q.question for q in s["unchanged"] if q.qid.startswith("cf0-")]
    assert cf0 == ["Jean Gabin, a native"]  # Toko Yasuda is edited (two gold answers); "French" echoes the answer
    assert c.dropped == {"unchanged: prompt about an edited subject": 1, "unchanged: answer in the prompt": 1}


def test_counterfact_json_jsonl_and_parquet_give_the_same_update(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = records("counterfact")
    (tmp_path / "cf.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "cf.parquet")
    contents = []
    for path in (FILES["counterfact"], tmp_path / "cf.jsonl", tmp_path / "cf.parquet"):
        folder, _ = ensure_converted("counterfact", tmp_path / "data", str(path), sample=None, sample_seed=0, n_general=2)
        contents.append([(folder / f).read_text() for f in ("kb_v0.jsonl", "kb_v1.jsonl", "questions.jsonl")])
    assert contents[0] == contents[1] == contents[2]


def test_zsre_fields_go_to_their_splits():
    c = convert("zsre")
    s = by_split(c)
    assert [len(s[k]) for k in ("updated", "paraphrased", "unchanged", "portability")] == [4, 4, 4, 4]
    assert (s["updated"][0].question, s["updated"][0].answer) == ("Which country is Lake Ohrid located in?", "Portugal")
    assert s["paraphrased"][0].question == "In which country can Lake Ohrid be found?"
    port = s["portability"][0]
    assert (port.answer, port.doc_id, port.attribute) == ("Lisbon", "zsre0", "Reasoning")  # gold doc: the edit's
    achebe = [q for q in s["unchanged"] if q.entity is None and q.answer == "novelist"][0]
    assert achebe.aliases == ("writer",)  # a list of alias lists, as KnowEdit writes some ground truths
    assert s["updated"][3].answer == "Finnish" and {d.text for d in c.kb_v0} >= {"What is the native language of Chinua Achebe? Igbo."}
    # "The instance of Lake Ohrid is" -> "lake": the prompt holds the answer, so it is not asked.
    assert c.dropped == {"unchanged: answer in the prompt": 1}


def test_tofu_new_authors_are_added_and_known_authors_unchanged():
    c = convert("tofu", sample=None, sample_seed=0, questions_per_author=4)
    s = by_split(c)
    assert (c.meta["new_authors"], c.meta["known_authors"]) == (2, 2)
    assert [len(s[k]) for k in ("updated", "paraphrased", "unchanged")] == [8, 8, 8]
    v0_entities = {d.entity for d in c.kb_v0}
    assert len(c.kb_v1) == 80 and len(c.kb_v0) == 40
    assert all(q.entity not in v0_entities for q in s["updated"] + s["paraphrased"])
    assert all(q.entity in v0_entities for q in s["unchanged"])
    q = s["updated"][0]
    rows = records("tofu")
    row = next(r for r in rows if r["question"] == q.question)
    assert q.answer == row["answer"] and q.aliases == (row["paraphrased_answer"],)
    # Without the perturbed configs' columns there is no paraphrased split.
    plain = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    assert "paraphrased" not in by_split(convert("tofu", plain, sample=None))


def test_tofu_rejects_a_file_that_is_not_whole_authors():
    with pytest.raises(DatasetSchemaError, match=r"tofu\.json: 79 rows is not a multiple of qa_per_author=20"):
        convert("tofu", records("tofu")[:79])


@pytest.mark.parametrize("fmt", list(FILES))
def test_sample_is_seeded(fmt):
    def asked(seed):
        return [q.qid for q in convert(fmt, sample=2, sample_seed=seed).questions if q.split != "general"]

    assert asked(1) == asked(1)
    assert {asked(s)[0] for s in range(6)} != {asked(1)[0]}  # another seed, another sample


@pytest.mark.parametrize("fmt, index, drop, field", [
    ("counterfact", 3, ("requested_rewrite", "target_new", "str"), "requested_rewrite.target_new.str"),
    ("counterfact", 1, ("neighborhood_prompts",), "neighborhood_prompts"),
    ("zsre", 2, ("rephrase_prompt",), "rephrase_prompt"),
    ("zsre", 1, ("locality", "Relation_Specificity", 1, "ground_truth"), "locality.Relation_Specificity[1].ground_truth"),
    ("tofu", 5, ("answer",), "answer"),
])
def test_a_missing_field_stops_naming_file_record_and_field(fmt, index, drop, field, tmp_path):
    recs = records(fmt)
    node = recs[index]
    for key in drop[:-1]:
        node = node[key]
    del node[drop[-1]]
    bad = tmp_path / FILES[fmt].name
    if fmt == "tofu":
        bad.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    else:
        bad.write_text(json.dumps(recs, indent=2), encoding="utf-8")
    with pytest.raises(DatasetSchemaError) as err:
        ensure_converted(fmt, tmp_path / "data", str(bad), sample=1, sample_seed=0, n_general=0)
    assert str(err.value) == f"{bad}: record {index}: missing field '{field}'"
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing cached


def test_a_field_of_the_wrong_type_is_named():
    recs = records("counterfact")
    recs[2]["paraphrase_prompts"] = "one prompt, not a list"
    with pytest.raises(DatasetSchemaError, match=r"^counterfact\.json: record 2: field 'paraphrase_prompts' must be a list"):
        convert("counterfact", recs)
    recs = records("counterfact")
    recs[1]["requested_rewrite"]["prompt"] = "The official religion of Edwin is"
    with pytest.raises(DatasetSchemaError, match=r"record 1: field 'requested_rewrite.prompt' has no '\{\}'"):
        convert("counterfact", recs)


def test_conversion_is_cached_by_content_and_parameters(tmp_path):
    path = str(FILES["zsre"])
    a, _ = ensure_converted("zsre", tmp_path, path, sample=None, sample_seed=0, n_general=2)
    stamp = (a / "questions.jsonl").stat().st_mtime_ns
    b, _ = ensure_converted("zsre", tmp_path, path, sample=None, sample_seed=0, n_general=2)
    c, _ = ensure_converted("zsre", tmp_path, path, sample=None, sample_seed=0, n_general=3)
    assert a == b and (a / "questions.jsonl").stat().st_mtime_ns == stamp and c != a
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, c.name])  # no temporary leftovers
    meta = json.loads((a / "meta.json").read_text())
    assert meta["source"] == path and meta["questions"]["portability"] == 4


def test_a_mandatory_path_is_accepted_and_a_typo_is_not():
    from updatelab.config_check import UnknownConfigKey, check_overrides

    for fmt in FILES:
        check_overrides([f"data={fmt}", "data.path=/x"])  # `path: ???` is a key, not an absent one
    check_overrides(["data=local", "data.path=/x"])
    with pytest.raises(UnknownConfigKey, match="data.paht"):
        check_overrides(["data=counterfact", "data.paht=/x"])


def _cli(args, cwd, **kw):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "updatelab.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, **kw)


def test_cli_prints_a_malformed_record_as_one_line_and_writes_no_results(tmp_path):
    recs = records("counterfact")
    del recs[3]["requested_rewrite"]["target_new"]["str"]
    bad = tmp_path / "counterfact.json"
    bad.write_text(json.dumps(recs), encoding="utf-8")
    proc = _cli(["strategy=stale", "data=counterfact", f"data.path={bad}", f"paths.root={tmp_path}",
                 "logger.mode=disabled"], cwd=tmp_path, timeout=240)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {bad}: record 3: missing field 'requested_rewrite.target_new.str'"
    assert not (tmp_path / "results").exists()


def test_stale_and_reembed_run_on_all_three_formats_through_the_cli(tmp_path, converted_lm):
    """One multirun, 6 cells: data.path follows data.source, so one sweep covers all three fixtures."""
    from conftest import SHARED_CACHE
    from updatelab.report import table

    proc = _cli(["-m", "strategy=stale,reembed", "data=counterfact,zsre,tofu", f"data.path={FIXTURES}/${{data.source}}.json",
                 f"paths.root={tmp_path}", f"paths.cache_dir={SHARED_CACHE}", f"paths.data_dir={tmp_path / 'data'}",
                 # `++`: before sweeping, Hydra composes the sweep with the default data group (synthetic)
                 "logger.mode=disabled", "++data.n_general=2", "++data.sample=2", "shift.enabled=false", "eval.max_new_tokens=12",
                 "progress=false", "threads=1"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in (tmp_path / "results" / "default").glob("*.json")]
    assert sorted((r["config"]["data"]["source"], r["strategy"]) for r in recs) == sorted(
        (f, s) for f in FILES for s in ("stale", "reembed"))
    for r in recs:
        fmt = r["config"]["data"]["source"]
        measured = {s for s, m in r["metrics"].items() if s != "retrieval" and isinstance(m, dict) and m.get("n", 0) > 0}
        assert measured >= PROVIDED[fmt] | {"stored"}, (fmt, measured)
        assert not measured & ({"portability"} - PROVIDED[fmt])
    for fmt in FILES:  # matched arms: the same converted update
        assert len({r["data_fingerprint"] for r in recs if r["config"]["data"]["source"] == fmt}) == 1
    printed = _table_output(table, tmp_path / "results")
    assert "portability" in printed


def _table_output(table, results_dir) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        table.main(["--experiment", "default", "--results-dir", str(results_dir)])
    return buf.getvalue()
