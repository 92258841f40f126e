"""The report's statistics: the hierarchical (seeds, then questions) bootstrap, the exact McNemar
test, and the one definition of the splits and arms a report shows. Known answers only."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["WANDB_MODE"] = "disabled"

from updatelab.data.schema import SPLITS  # noqa: E402
from updatelab.metrics import qa  # noqa: E402
from updatelab.report import stats  # noqa: E402


def _rec(seed, scores, strategy="arm", split="updated"):
    """A record whose predictions on `split` have these scores (qid -> 0/1)."""
    return {"strategy": strategy, "seed": seed, "data_fingerprint": f"world-{seed}",
            "predictions": [{"qid": q, "split": split, "contains": float(v)} for q, v in scores.items()]}


def _scores(values, prefix="q"):
    return {f"{prefix}{i}": v for i, v in enumerate(values)}


# ------------------------------------------------------------------------------------- McNemar


def test_mcnemar_p_known_answers():
    assert stats.mcnemar_p(10, 0) == pytest.approx(2 * 0.5**10)
    assert stats.mcnemar_p(0, 10) == pytest.approx(2 * 0.5**10)
    assert stats.mcnemar_p(7, 7) == pytest.approx(1.0)
    assert stats.mcnemar_p(0, 0) == 1.0
    # b=1, c=5: 2 * P(X <= 1 | n=6) = 2 * 7/64.
    assert stats.mcnemar_p(1, 5) == pytest.approx(14 / 64)


def test_mcnemar_counts_the_discordant_pairs_of_every_seed():
    # seed 0: 3 arm-only right, 1 baseline-only right, 2 both right; seed 1: 2 arm-only right, 1 both wrong.
    arm = [_rec(0, _scores([1, 1, 1, 0, 1, 1])), _rec(1, _scores([1, 1, 0]))]
    base = [_rec(0, _scores([0, 0, 0, 1, 1, 1])), _rec(1, _scores([0, 0, 0]))]
    t = stats.mcnemar(arm, base, "updated")
    assert (t.b, t.c, t.n) == (5, 1, 9)
    assert t.p == pytest.approx(stats.mcnemar_p(5, 1))
    e = stats.paired_difference(arm, base, "updated", n_boot=200)
    assert e.test == t and e.n == 9 and e.n_seeds == 2
    assert stats.mcnemar(arm, base, "general") is None


def test_identical_arms_give_zero_difference_with_a_point_ci_and_p_one():
    arm = [_rec(s, _scores(np.random.default_rng(s).integers(0, 2, 30))) for s in (0, 1, 2)]
    e = stats.paired_difference(arm, arm, "updated")
    assert (e.mean, e.lo, e.hi) == (0.0, 0.0, 0.0)
    assert (e.test.b, e.test.c, e.test.n, e.test.p) == (0, 0, 90, 1.0)


# ----------------------------------------------------------------------------------- bootstrap


def test_world_variance_shows_in_the_hierarchical_ci():
    # Two worlds, one where every answer is wrong and one where every answer is right. Within a world
    # nothing varies, so all the uncertainty is which worlds were drawn: resampling the two worlds gives
    # {0, 0}, {0, 1} or {1, 1}, i.e. accuracy 0, 0.5 or 1, and the 95% interval is [0, 1].
    split_worlds = [[0.0] * 50, [1.0] * 50]
    mean, lo, hi = stats.hierarchical_bootstrap(split_worlds, seed=0)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)
    # Pooling the 100 questions as if they were one world claims far more certainty.
    _, plo, phi = stats.bootstrap_mean_ci(split_worlds[0] + split_worlds[1], seed=0)
    assert 0.35 < plo < 0.5 < phi < 0.65
    # Worlds that agree (each 25 of 50 right) leave only the question noise: as narrow as the pooled one.
    agree = [[0.0, 1.0] * 25, [1.0, 0.0] * 25]
    _, alo, ahi = stats.hierarchical_bootstrap(agree, seed=0)
    assert ahi - alo < 0.3 < (hi - lo) / 2
    assert ahi - alo == pytest.approx(phi - plo, abs=0.05)


def test_one_world_is_the_ordinary_bootstrap_over_questions():
    values = np.random.default_rng(5).integers(0, 2, 80).astype(float)
    assert stats.hierarchical_bootstrap([values], seed=3) == stats.bootstrap_mean_ci(values, seed=3)
    # The multinomial draw is the index resampling: same quantiles as the textbook version.
    rng = np.random.default_rng(11)
    means = values[rng.integers(0, values.size, size=(20000, values.size))].mean(axis=1)
    textbook = np.quantile(means, [0.025, 0.975])
    _, lo, hi = stats.bootstrap_mean_ci(values, n_boot=20000, seed=3)
    assert (lo, hi) == pytest.approx(tuple(textbook), abs=0.0126)  # one question is 1/80


def test_one_world_agrees_with_scipys_percentile_bootstrap():
    # scipy.stats.bootstrap has no two-stage design, so the report keeps one implementation; with one
    # world it is the same percentile bootstrap as scipy's (its own random stream: equal up to one question).
    from scipy.stats import bootstrap

    values = np.random.default_rng(8).integers(0, 2, 60).astype(float)
    ref = bootstrap((values,), np.mean, n_resamples=20000, method="percentile", random_state=np.random.default_rng(1))
    _, lo, hi = stats.bootstrap_mean_ci(values, n_boot=20000, seed=2)
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=1 / 60 + 1e-9)
    assert qa.bootstrap_ci(values, n_boot=20000, seed=2) == (lo, hi)  # the stored per-split CI is this one


def test_hierarchical_bootstrap_is_the_two_stage_resampling():
    rng = np.random.default_rng(2)
    worlds = [(rng.random(n) < p).astype(float) for n, p in ((12, 0.2), (30, 0.5), (20, 0.8))]  # unequal sizes too
    # Textbook two stages, one resample at a time: draw worlds, then questions within each.
    means = []
    for _ in range(6000):
        drawn = [worlds[i] for i in rng.integers(0, len(worlds), len(worlds))]
        means.append(np.concatenate([w[rng.integers(0, w.size, w.size)] for w in drawn]).mean())
    textbook = np.quantile(means, [0.025, 0.975])
    mean, lo, hi = stats.hierarchical_bootstrap(worlds, n_boot=6000, seed=4)
    assert mean == pytest.approx(np.concatenate(worlds).mean())
    assert (lo, hi) == pytest.approx(tuple(textbook), abs=0.03)


def test_bootstrap_is_seeded_and_ignores_record_order():
    arm = [_rec(s, _scores(np.random.default_rng(10 + s).integers(0, 2, 25))) for s in (0, 1, 2)]
    base = [_rec(s, _scores(np.random.default_rng(20 + s).integers(0, 2, 25))) for s in (0, 1, 2)]
    e = stats.paired_difference(arm, base, "updated", seed=7)
    again = stats.paired_difference(arm[::-1], base[::-1], "updated", seed=7)
    assert (again.mean, again.lo, again.hi) == (e.mean, e.lo, e.hi)
    acc = stats.accuracy_estimate(arm, "updated")
    assert acc.n == 75 and acc.n_seeds == 3 and acc.lo < acc.mean < acc.hi
    assert (acc.mean, acc.lo, acc.hi) == stats.hierarchical_bootstrap(
        [list(stats.question_scores(r, "updated").values()) for r in arm])


def test_the_stored_per_split_ci_is_the_report_bootstrap():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    assert qa.bootstrap_ci(values) == stats.bootstrap_mean_ci(values)[1:]
    assert all(np.isnan(qa.bootstrap_ci([])))


# ------------------------------------------------------------------------------- definitions


def test_report_splits_follow_the_schema_with_the_stored_probe_after_updated():
    assert [s for s in stats.REPORT_SPLITS if s != stats.STORED] == list(SPLITS)
    assert stats.REPORT_SPLITS.index(stats.STORED) == stats.REPORT_SPLITS.index("updated") + 1
    # A split a newer schema adds is reported where the schema puts it.
    assert stats._with_stored(("updated", "portability", "general")) == ("updated", "stored", "portability", "general")


def test_present_splits_leave_out_what_no_record_measured():
    recs = [_rec(0, _scores([1, 0])), {"seed": 1, "metrics": {"unchanged": {"contains": 0.5, "n": 4}, "general": "n/a"}}]
    assert stats.present_splits(recs) == ["updated", "unchanged"]
    assert stats.questions_per_world(recs, "updated") == {0: 2}
    assert stats.questions_per_world(recs, "unchanged") == {1: 4}


def test_arm_order_puts_the_embedder_arms_after_reembed_and_full_ft_after_lora():
    arms = ["lora_rag", "my_arm", "full_ft", "embedder_ft_reembed", "stale", "lora", "closed_book", "embedder_ft_stale", "reembed"]
    assert sorted(arms, key=stats.arm_rank) == ["closed_book", "stale", "reembed", "embedder_ft_stale", "embedder_ft_reembed",
                                                "lora", "full_ft", "lora_rag", "my_arm"]


def test_every_report_module_takes_splits_and_arm_order_from_stats():
    import pathlib
    import re

    import updatelab.report as report

    for path in pathlib.Path(report.__file__).parent.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name != "stats.py":
            assert not re.search(r"^(SPLITS|REPORT_SPLITS|ARM_ORDER)\s*[:=]", text, re.M), path.name
            assert "data.schema" not in text, path.name  # the schema's splits reach the report through stats only


def test_closed_book_is_a_reference_for_forgetting_splits_only():
    assert stats.reference_splits("closed_book", stats.REPORT_SPLITS) == list(stats.FORGETTING_SPLITS)
    assert stats.reference_splits("stale", ["updated", "general"]) == ["updated", "general"]
