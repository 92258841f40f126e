"""The HTML dashboard: sections and plots from realistic records, graceful with partial ones,
correct paired CIs, and a page that a real browser renders (headless Chromium)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ["WANDB_MODE"] = "disabled"

from updatelab.report import aggregate as ag  # noqa: E402
from updatelab.report import dashboard as db  # noqa: E402
from updatelab.report import records as rec  # noqa: E402
from updatelab.report import stats  # noqa: E402
from updatelab.tracking.results import load_results, results_path, write_results  # noqa: E402


def _load_fixture_module():
    path = Path(__file__).parent / "fixtures" / "make_results.py"
    spec = importlib.util.spec_from_file_location("updatelab_fixture_make_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mk = _load_fixture_module()

SECTION_IDS = ("how-to-read", "summary", "differences", "accuracy", "cost-accuracy", "shift", "cost", "runs")
CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"


@pytest.fixture(scope="module")
def records():
    return mk.make_records()  # 4 arms x 2 seeds, 20 questions per split


@pytest.fixture(scope="module")
def fixture_page(records, tmp_path_factory):
    """The dashboard of the fixture records, written once for the tests that only read it."""
    results = tmp_path_factory.mktemp("page") / "results"
    mk.write_records(results, records)
    rc = db.main(["--experiment", "fixture", "--results-dir", str(results), "--n-boot", "400"])
    return rc, results / "fixture" / "dashboard.html"


def _write(tmp_path: Path, recs) -> Path:
    results = tmp_path / "results"
    for r in recs:
        write_results(results_path(results, r["experiment"], r["run_id"]), r)
    assert len(load_results(results, recs[0]["experiment"])) == len({r["run_id"] for r in recs})
    return results


def _dashboard(tmp_path: Path, recs, experiment: str = "fixture", extra=()) -> tuple[int, Path]:
    results = _write(tmp_path, recs)
    rc = db.main(["--experiment", experiment, "--results-dir", str(results), "--n-boot", "400", *extra])
    return rc, results / experiment / "dashboard.html"


def _plots(page: str) -> int:
    return page.count('<figure class="plot"')


# ------------------------------------------------------------------------------------- fixture


def test_fixture_records_look_like_real_ones(records):
    assert sorted({(r["strategy"], r["seed"]) for r in records}) == sorted((s, k) for s in mk.ARMS for k in (0, 1))
    for r in records:
        assert len(r["predictions"]) == 80 and r["metrics"]["updated"]["n"] == 20
        assert abs(r["metrics"]["updated"]["contains"] - np.mean([p["contains"] for p in r["predictions"] if p["split"] == "updated"])) < 1e-12
        lm = r["shift"]["lm"]["cka_per_layer"]
        assert len(lm) == 31 and len(r["shift"]["embedder"]["cka_per_layer"]) == 7
        if r["strategy"] in ("stale", "reembed"):
            assert lm == [1.0] * 31 and not r["shift"]["lm"]["moved"]
        else:
            assert lm[0] == 1.0 and lm[-1] < lm[10] < 1.0
        assert ("retrieval" in r["metrics"]) == (r["strategy"] != "lora")
        c = r["cost"]
        assert c["total"]["wall_s"] == pytest.approx(sum(c[p]["wall_s"] for p in ag.PHASES if p in c))
    # Matched arms of a seed ask the same questions.
    qids = {(r["seed"], r["strategy"]): [p["qid"] for p in r["predictions"]] for r in records}
    assert qids[(0, "stale")] == qids[(0, "lora")] != qids[(1, "lora")]


# ------------------------------------------------------------------------------------- the page


def test_dashboard_has_every_section_and_at_least_five_plots(fixture_page):
    rc, out = fixture_page
    assert rc == 0 and out.exists()
    page = out.read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in page, sid
    assert "How to read this" in page
    assert "python -m updatelab.report.dashboard --experiment fixture --results-dir" in page  # the command
    assert _plots(page) >= 5
    for name in ("accuracy", "pareto", "cka-layers", "cross-layer", "cost-phases", "differences"):
        assert f'data-plot="{name}"' in page, name
    assert "data-skipped" not in page and "data-section-error" not in page
    # Stale and reembed did not move the LM: said plainly.
    assert "exactly 1.0" in page and "LM untouched" in page
    # Self-contained: nothing fetched from the network.
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "<link" not in page
    # The summary has a row per arm with a CI on every split.
    summary = page[page.index('id="summary"'):page.index('id="differences"')]
    for arm in mk.ARMS:
        assert f"<b>{arm}</b>" in summary
    assert summary.count('class="ci">[') == 4 * 4
    assert "recall@3" in summary and "closed-book" in summary


def test_summary_numbers_match_the_records(records):
    a = ag.analyse(records, "fixture", n_boot=400)
    assert [g.label for g in a.groups] == list(mk.ARMS) and a.varied == []
    for g in a.groups:
        assert g.seeds == [0, 1]
        for split in a.splits:
            e = g.acc[split]
            expected = np.mean([r["metrics"][split]["contains"] for r in g.records])  # equal n per seed
            assert e.mean == pytest.approx(expected) and e.lo <= e.mean <= e.hi and e.n == 40
    stale = a.groups[0]
    assert ag.lm_untouched(stale) is True and ag.lm_untouched(a.groups[2]) is False
    # Differences: every arm vs stale, and lora / lora_rag vs reembed (reembed vs stale once, not twice).
    assert [g.strategy for g, _ in a.diffs["stale"]] == ["reembed", "lora", "lora_rag"]
    assert [g.strategy for g, _ in a.diffs["reembed"]] == ["lora", "lora_rag"]
    assert a.splits == ["updated", "paraphrased", "unchanged", "general"]  # the fixture has no `stored` probe
    e = a.diffs["stale"][0][1]["updated"]
    assert e.test == stats.mcnemar(a.groups[1].records, stale.records, "updated") and e.test.n == e.n == 40
    assert ag.total_cost(stale, "seconds") == pytest.approx(stale.mean("cost.serving_per_1k.wall_s"))
    # ... and recall@k, paired by question, for the arms that retrieve (lora answers closed-book: none)
    k = f"recall@{a.top_k}"
    recall = {g.strategy: d.get(k) for g, d in a.diffs["stale"]}
    assert recall["reembed"] == stats.paired_difference(a.groups[1].records, stale.records, stats.RETRIEVAL, k, n_boot=400)
    assert recall["lora"] is None and recall["lora_rag"] is not None


def test_grid_rows_follow_the_varied_config_keys(tmp_path):
    # stale run once; lora over two adapter ranks: stale is one row, lora two, and both pair with that stale.
    recs = mk.make_records(strategies=("stale",)) + mk.make_records(strategies=("lora",), grid={"adapter.r": [8, 16]})
    varied, by_strategy = rec.varied_config_keys(recs)
    assert varied == ["adapter.r"]
    assert "data.generator.seed" not in varied and not any(k.startswith("strategy.") for k in varied)
    a = ag.analyse(recs, "grid", n_boot=200)
    assert [g.label for g in a.groups] == ["stale", "lora · r=8", "lora · r=16"]
    assert [g.label for g, _ in a.diffs["stale"]] == ["lora · r=8", "lora · r=16"]

    # A fully crossed edit_fraction grid: rows per value for every arm, baselines matched per value.
    recs = mk.make_records(experiment="ef", grid={"data.generator.edit_fraction": [0.1, 0.3]})
    a = ag.analyse(recs, "ef", n_boot=200)
    assert a.varied == ["data.generator.edit_fraction"]
    assert len(a.groups) == 8
    for g, _ in a.diffs["stale"]:
        base = ag.baseline_group(g, "stale", a.groups)
        assert base.variant == g.variant
    rc, out = _dashboard(tmp_path, recs, "ef")
    page = out.read_text(encoding="utf-8")
    assert rc == 0 and 'data-plot="sweep"' in page and "edit_fraction=0.3" in page


def test_a_split_no_record_has_gets_no_column_and_no_legend_entry(tmp_path):
    recs = mk.make_records(strategies=("closed_book", "stale", "lora"), experiment="own-data")
    for r in recs:  # a user's own data without general questions
        r["predictions"] = [p for p in r["predictions"] if p["split"] != "general"]
        r["metrics"].pop("general")
    a = ag.analyse(recs, "own-data", n_boot=100)
    assert "general" not in a.splits and "stored" not in a.splits
    # closed_book: the forgetting reference, on what is left of unchanged and general.
    assert [g.strategy for g, _ in a.diffs["closed_book"]] == ["stale", "lora"]
    assert all(list(d) == ["unchanged"] for _, d in a.diffs["closed_book"])
    assert "closed_book" not in [g.strategy for g, _ in a.diffs["stale"]]
    rc, out = _dashboard(tmp_path, recs, "own-data")
    page = out.read_text(encoding="utf-8")
    assert rc == 0 and "data-section-error" not in page
    assert "general" not in page and ">stored<" not in page and "<i>stored</i>" not in page
    assert "McNemar" in page and 'class="ci test"' in page


def test_without_the_forgetting_splits_there_is_no_forgetting_table(tmp_path):
    # Own data with only questions about the changed facts: closed_book is a reference for nothing here.
    recs = mk.make_records(strategies=("closed_book", "stale", "lora"), seeds=(0,), experiment="changed-only")
    for r in recs:
        r["predictions"] = [p for p in r["predictions"] if p["split"] in ("updated", "paraphrased")]
        for split in ("unchanged", "general"):
            r["metrics"].pop(split)
    a = ag.analyse(recs, "changed-only", n_boot=100)
    assert a.splits == ["updated", "paraphrased"] and list(a.diffs) == ["stale"]
    rc, out = _dashboard(tmp_path, recs, "changed-only")
    page = out.read_text(encoding="utf-8")
    assert rc == 0 and "data-section-error" not in page
    assert "general" not in page and "vs <code>closed_book</code>" not in page and "reference for forgetting" not in page
    # `unchanged` the split is nowhere: no column, no legend entry, no axis label, no sentence (the KB drift
    # table's "unchanged docs" are documents, not questions).
    assert not re.search(r"<i>unchanged</i>|unchanged<br>|>unchanged[<\n]|Δ unchanged", page)


def _with_shift_beyond_cka(recs):
    """Hand-written records as the KL / intruder measurements and the embedder arms write them."""
    out = []
    for r in recs:
        r = json.loads(json.dumps(r))
        lm = r["shift"]["lm"]
        moved = r["strategy"] in ("lora", "lora_rag")
        lm["kl_per_layer"] = [0.01 * i * (1 + r["seed"]) if moved else 0.0 for i in range(30)]
        lm["kl_mean"] = lm["kl_per_layer"][-1]
        lm["intruders_per_layer"] = [int(i % 3 == 0) if moved else 0 for i in range(30)]
        lm["intruders_total"] = sum(lm["intruders_per_layer"])
        out.append(r)
        if r["strategy"] == "reembed":  # the embedder arms: retrieval like reembed, recall of their own
            for arm, recall in (("embedder_ft_stale", 0.2), ("embedder_ft_reembed", 0.9)):
                e = json.loads(json.dumps(r))
                e.update(strategy=arm, run_id=r["run_id"].replace("reembed", arm))
                e["metrics"]["retrieval"]["recall@3"] = recall + 0.01 * r["seed"]
                out.append(e)
    return out


def test_panels_beyond_cka_appear_with_their_keys_and_only_then(tmp_path, records, fixture_page):
    page = fixture_page[1].read_text(encoding="utf-8")
    for name in ("kl-layers", "intruders", "recall"):
        assert f'data-plot="{name}"' not in page and f'data-skipped="{name}"' not in page
    assert 'id="recall"' not in page and "intruder" not in page.lower() and "nats/token" not in page

    recs = _with_shift_beyond_cka(records)
    a = ag.analyse(recs, "fixture", n_boot=100)
    assert [g.strategy for g in a.groups] == ["stale", "reembed", "embedder_ft_stale", "embedder_ft_reembed", "lora", "lora_rag"]
    rows = dict((g.strategy, vals) for g, vals in ag.recall_by_arm(a))
    assert rows["embedder_ft_stale"] == pytest.approx([0.2, 0.21]) and "lora" not in rows  # lora is closed-book
    kl = dict((g.strategy, arr) for g, arr in ag.layer_panel(a.groups, "shift.lm.kl_per_layer"))
    assert kl["lora"].shape == (2, 30) and kl["lora"][:, 10] == pytest.approx([0.1, 0.2]) and not kl["stale"].any()

    rc, out = _dashboard(tmp_path, recs)
    page = out.read_text(encoding="utf-8")
    assert rc == 0 and "data-section-error" not in page
    for name in ("kl-layers", "intruders", "recall"):
        assert f'data-plot="{name}"' in page, name
    assert '<a href="#recall">' in page and "Latent shift (CKA, KL, intruder dimensions)" in page
    assert "embedder_ft_stale (mean 0 nats/token)" in page and "lora (total 10)" in page  # legends name the totals
    summary = page[page.index('id="summary"'):page.index('id="differences"')]
    assert "nats/token" in summary and "intruders" in summary
    assert "<code>embedder_ft_stale</code> fine-tunes the embedder" in page


def test_a_panel_needs_its_per_layer_list(tmp_path, records):
    # kl_mean alone (no logit lens for the architecture): a summary column, no panel, no empty figure.
    recs = json.loads(json.dumps(records))
    for r in recs:
        r["shift"]["lm"]["kl_mean"] = 0.0 if r["strategy"] in ("stale", "reembed") else 0.05
    rc, out = _dashboard(tmp_path, recs)
    page = out.read_text(encoding="utf-8")
    assert rc == 0 and "nats/token" in page and 'data-plot="kl-layers"' not in page and "intruders" not in page
    assert "Latent shift (CKA)</h2>" in page


def test_records_missing_shift_and_cost_still_produce_a_page(tmp_path, records):
    results = tmp_path / "results"
    recs = [dict(r) for r in records if r["seed"] == 0]
    for r in recs:
        r.pop("shift")
        r["cost"] = None
    recs[0] = {k: v for k, v in recs[0].items() if k != "predictions"}
    folder = results / "partial"
    folder.mkdir(parents=True)
    for r in recs:  # raw JSON: older records were written before every key existed
        (folder / f"{r['run_id']}.json").write_text(json.dumps(r))
    (folder / "bare.json").write_text(json.dumps({"run_id": "bare", "strategy": "lora_rag", "metrics": None}))
    (folder / "broken.json").write_text("{not json")
    rc = db.main(["--experiment", "partial", "--results-dir", str(results), "--n-boot", "200"])
    page = (folder / "dashboard.html").read_text(encoding="utf-8")
    assert rc == 0
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in page
    assert "data-section-error" not in page
    for name in ("cka-layers", "cross-layer", "cost-phases", "pareto"):
        assert f'data-skipped="{name}"' in page, name
    assert "Plot skipped" in page and "lack latent-shift measurements" in page and "lack cost ledger" in page
    assert "broken.json" in page  # the unreadable file is named, the others still shown
    assert _plots(page) >= 2  # accuracy and differences still drawn from metrics and predictions


def test_records_with_almost_nothing_still_produce_a_page(tmp_path):
    results = tmp_path / "results"
    folder = results / "old"
    folder.mkdir(parents=True)
    rows = [{"run_id": "a", "strategy": "stale", "seed": 0, "metrics": {"updated": {"contains": 0.1, "n": 10}}},
            {"run_id": "b", "strategy": "lora", "metrics": {"updated": {"contains": 0.4, "contains_ci": [0.2, 0.6]}},
             "config": {"adapter": {"r": 8}}, "cost": {"update_total": {"wall_s": None}}, "shift": {"lm": {"cka_per_layer": [1.0, None]}}},
            {"run_id": "c", "strategy": None, "seed": None, "metrics": {"updated": "n/a"}, "cost": "?", "shift": [],
             "predictions": [{"split": "updated"}, "junk", {"qid": 1, "split": "updated", "contains": None, "correct": True}]}]
    for r in rows:
        (folder / f"{r['run_id']}.json").write_text(json.dumps(r))
    assert db.main(["--experiment", "old", "--results-dir", str(results), "--n-boot", "100"]) == 0
    page = (folder / "dashboard.html").read_text(encoding="utf-8")
    assert "data-section-error" not in page and 'id="summary"' in page and "no CI" in page


def test_cli_prints_the_page_path(tmp_path, records, capsys):
    rc, out = _dashboard(tmp_path, records[:2])
    assert rc == 0 and f"dashboard: {out}" in capsys.readouterr().out


def test_no_results_is_an_error_that_names_the_known_experiments(tmp_path, records, capsys):
    results = _write(tmp_path, records[:1])
    assert db.main(["--experiment", "nope", "--results-dir", str(results)]) == 1
    err = capsys.readouterr().err
    assert "no results records" in err and "fixture" in err
    assert not (results / "nope" / "dashboard.html").exists()


def test_out_path_and_png_format(tmp_path, records):
    out = tmp_path / "elsewhere" / "page.html"
    rc, _ = _dashboard(tmp_path, records, extra=["--out", str(out), "--plot-format", "png", "--cost-unit", "usd"])
    page = out.read_text(encoding="utf-8")
    assert rc == 0 and page.count('src="data:image/png;base64,') >= 5
    assert 'data-plot="pareto"' in page


# ------------------------------------------------------------------------------------- statistics


def _rec(seed, scores, strategy="arm", split="updated", fingerprint="fp", order=None):
    qids = list(scores)
    if order is not None:
        qids = [qids[i] for i in order]
    return {"strategy": strategy, "seed": seed, "data_fingerprint": fingerprint,
            "predictions": [{"qid": q, "split": split, "contains": scores[q]} for q in qids]}


def test_paired_difference_of_constant_differences_collapses_to_the_point():
    arm = [_rec(0, {f"q{i}": 0.75 for i in range(10)}), _rec(1, {f"q{i}": 1.0 for i in range(10)})]
    base = [_rec(0, {f"q{i}": 0.5 for i in range(10)}, order=list(range(9, -1, -1))),  # order must not matter
            _rec(1, {f"q{i}": 0.75 for i in range(10)})]
    e = stats.paired_difference(arm, base, "updated", n_boot=500)
    assert (e.mean, e.lo, e.hi) == pytest.approx((0.25, 0.25, 0.25))
    assert e.n == 20 and e.n_seeds == 2
    same = stats.paired_difference(arm, arm, "updated", n_boot=500)
    assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0)


def test_paired_difference_matches_by_seed_and_qid_only():
    arm = [_rec(0, {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}), _rec(1, {"a": 1.0})]
    base = [_rec(0, {"a": 0.0, "b": 1.0, "c": 0.0, "x": 1.0}),  # d unmatched, x unmatched
            _rec(2, {"a": 0.0})]  # seed 2 has no arm record
    diffs, per_seed, _ = stats.matched_differences(arm, base, "updated")
    assert sorted(diffs) == [0.0, 0.0, 1.0] and per_seed == {0: 3}
    e = stats.paired_difference(arm, base, "updated", n_boot=4000, seed=1)
    assert e.mean == pytest.approx(1 / 3) and 0.0 <= e.lo < e.mean < e.hi <= 1.0
    # Different worlds (data fingerprints) are never paired.
    other = [_rec(0, {"a": 0.0, "b": 1.0}, fingerprint="other")]
    diffs, _, notes = stats.matched_differences(arm, other, "updated")
    assert diffs == [] and "fingerprints differ" in notes[0]
    assert stats.paired_difference(arm, other, "updated") is None


def test_paired_difference_ci_is_the_percentile_bootstrap_over_pairs():
    rng = np.random.default_rng(3)
    a_scores = {f"q{i}": float(v) for i, v in enumerate(rng.integers(0, 2, 60))}
    b_scores = {f"q{i}": float(v) for i, v in enumerate(rng.integers(0, 2, 60))}
    e = stats.paired_difference([_rec(0, a_scores)], [_rec(0, b_scores)], "updated", n_boot=3000, seed=7)
    d = np.array([a_scores[q] - b_scores[q] for q in a_scores])
    assert e.mean == pytest.approx(d.mean())
    # Normal approximation as a cross-check of the interval's width.
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert (e.hi - e.lo) / 2 == pytest.approx(half, rel=0.15)
    # Seeded: the same page twice gives the same numbers.
    again = stats.paired_difference([_rec(0, a_scores)], [_rec(0, b_scores)], "updated", n_boot=3000, seed=7)
    assert (again.lo, again.hi) == (e.lo, e.hi)


def test_accuracy_estimate_falls_back_to_stored_metrics():
    recs = [{"seed": 0, "metrics": {"updated": {"contains": 0.4, "contains_ci": [0.2, 0.6]}}}]
    e = stats.accuracy_estimate(recs, "updated")
    assert (e.mean, e.lo, e.hi) == (0.4, 0.2, 0.6) and "stored" in e.source
    recs.append({"seed": 1, "metrics": {"updated": {"contains": 0.6}}})
    e = stats.accuracy_estimate(recs, "updated")
    assert e.mean == pytest.approx(0.5) and not e.has_ci
    assert stats.accuracy_estimate([{"metrics": None}], "updated") is None
    # A seed with predictions and one with only its stored metric: both count, and no CI is claimed.
    mixed = [_rec(0, {"a": 1.0, "b": 0.0}), {"seed": 1, "metrics": {"updated": {"contains": 1.0}}}]
    e = stats.accuracy_estimate(mixed, "updated")
    assert e.mean == pytest.approx(0.75) and not e.has_ci and e.n_seeds == 2


def test_pareto_front():
    pts = [(10.0, 0.5), (1.0, 0.1), (5.0, 0.6), (20.0, 0.6), (2.0, 0.05), (30.0, 0.9)]
    assert ag.pareto_front(pts) == [1, 2, 5]


# ------------------------------------------------------------------------------------- W&B


def test_wandb_is_only_read_when_asked_and_there_are_no_local_files(tmp_path, records, monkeypatch):
    calls = []

    def fake(path, experiment):
        calls.append((path, experiment))
        summary = [{k: v for k, v in r.items() if k in ("experiment", "run_id", "strategy", "seed", "config", "metrics", "cost")}
                   for r in records]
        return summary, ["from W&B"]

    monkeypatch.setattr(db, "load_wandb_records", fake)
    rc, out = _dashboard(tmp_path, records)  # no --wandb: never called
    assert rc == 0 and calls == []
    rc = db.main(["--experiment", "fixture", "--results-dir", str(tmp_path / "results"), "--wandb", "me/proj", "--n-boot", "100"])
    assert rc == 0 and calls == []  # local files exist: W&B not read
    assert "ignored: local results files exist" in out.read_text(encoding="utf-8")
    empty = tmp_path / "empty"
    rc = db.main(["--experiment", "fixture", "--results-dir", str(empty), "--wandb", "me/proj", "--n-boot", "100"])
    assert rc == 0 and calls == [("me/proj", "fixture")]
    page = (empty / "fixture" / "dashboard.html").read_text(encoding="utf-8")
    assert "from W&amp;B" in page and 'data-plot="accuracy"' in page and 'data-skipped="cka-layers"' in page


def test_wandb_runs_become_records(monkeypatch):
    import wandb

    class Summary:
        _json_dict = {"metrics/updated/contains": 0.5, "metrics/retrieval/recall@3": 0.8, "cost/update_total/wall_s": 3.0,
                      "_runtime": 9}

    class Run:
        name, id, job_type, state, summary = "reembed_s0_x", "abc", "reembed", "finished", Summary()
        config = {"seed": 0, "strategy": {"name": "reembed"}}

    class Api:
        def runs(self, path, filters):
            assert path == "ent/proj" and filters == {"group": "exp"}
            return [Run()]

    monkeypatch.setattr(wandb, "Api", Api)
    recs, notes = rec.load_wandb_records("ent/proj", "exp")
    assert recs[0]["strategy"] == "reembed" and recs[0]["seed"] == 0
    assert recs[0]["metrics"] == {"updated": {"contains": 0.5}, "retrieval": {"recall@3": 0.8}}
    assert recs[0]["cost"]["update_total"]["wall_s"] == 3.0 and notes


# ------------------------------------------------------------------------------------- browser


def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail(f"headless Chromium is needed for the dashboard's render test and was not found; install it: {CHROMIUM_INSTALL}")


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
           "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


# The page itself carries no script: this one, added to a copy of it, lets the DOM dump say which
# figures the browser laid out with a real size (and, for PNGs, decoded).
LAYOUT_CHECK_JS = """
window.addEventListener('load', function () {
  var figs = document.querySelectorAll('figure.plot'), ok = 0;
  figs.forEach(function (f) {
    var el = f.querySelector('svg, img');
    if (!el) return;
    var r = el.getBoundingClientRect();
    var loaded = el.tagName.toLowerCase() !== 'img' || (el.complete && el.naturalWidth > 0);
    if (r.width > 50 && r.height > 50 && loaded) { ok++; }
  });
  document.body.setAttribute('data-plots-total', String(figs.length));
  document.body.setAttribute('data-plots-rendered', String(ok));
});
"""


def test_headless_chromium_renders_the_plots(tmp_path, fixture_page):
    from PIL import Image

    binary = _chromium()
    rc, out = fixture_page
    assert rc == 0
    url = out.resolve().as_uri()

    shot = tmp_path / "dashboard.png"
    proc = _run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1400,3000", url)
    assert shot.exists(), f"no screenshot; chromium exit {proc.returncode}:\n{proc.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (3000, 1400)
    non_white = (img.min(axis=2) < 235).mean()
    coloured = int(((img.max(axis=2) - img.min(axis=2)) > 60).sum())  # plots are in colour; text is grey
    assert non_white > 0.03, f"page looks blank: {non_white:.3%} non-white pixels"
    assert coloured > 20_000, f"no plots visible: {coloured} coloured pixels"

    page = out.read_text(encoding="utf-8")
    assert "<script" not in page  # nothing on the page runs
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", f"<script>{LAYOUT_CHECK_JS}</script></body>"), encoding="utf-8")
    proc = _run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", probe.resolve().as_uri())
    dom = proc.stdout
    assert "<body" in dom, f"no DOM dumped; chromium exit {proc.returncode}:\n{proc.stderr[-2000:]}"
    body = re.search(r"<body[^>]*>", dom).group(0)
    total = int(re.search(r'data-plots-total="(\d+)"', body).group(1))
    rendered = int(re.search(r'data-plots-rendered="(\d+)"', body).group(1))
    assert total >= 5 and rendered == total, body  # every figure laid out with a real size
    assert dom.count("<svg") >= 5
    console = [line for line in (proc.stderr.splitlines()) if ":CONSOLE" in line]
    assert not console, "console messages:\n" + "\n".join(console)
