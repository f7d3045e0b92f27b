import numpy as np
import pandas as pd
import pytest
from scipy import stats

from feedback_nlp.aggregate import Accumulator
from feedback_nlp.drivers import combine_drivers, driver_partial, key_drivers, newcombe_interval

STAGES = ["delivery", "billing", "support"]


def _units(seed=0, n_items=300):
    """Items with NPS; billing complaints go with lower scores, delivery complaints do not."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for i in range(n_items):
        billing_neg = rng.random() < 0.3
        delivery_neg = rng.random() < 0.3
        nps = float(np.clip(round(rng.normal(7.5 - 3.0 * billing_neg, 1.5)), 0, 10))
        nps_value = np.nan if i % 17 == 0 else nps  # some items have no NPS
        csat = float(np.clip(round(rng.normal(4.2 - 1.5 * billing_neg, 0.6)), 1, 5))
        units = [("billing", "negative" if billing_neg else "positive"),
                 ("delivery", "negative" if delivery_neg else "neutral")]
        if i % 5 == 0:
            units.append(("billing", "negative" if billing_neg else "neutral"))  # a second unit, same stage
        if i % 7 == 0:
            units.append(("unassigned", "negative"))
        for j, (stage, sentiment) in enumerate(units):
            rows.append({"item_id": f"i{i}", "unit_idx": j, "stage": stage, "sentiment": sentiment,
                         "nps": nps_value, "csat": csat})
        truth.append({"item_id": f"i{i}", "nps": nps_value, "csat": csat, "billing": billing_neg,
                      "delivery": delivery_neg})
    df = pd.DataFrame(rows)
    df["nps"] = df["nps"].astype("Float64")
    df["csat"] = df["csat"].astype("Float64")
    return df, pd.DataFrame(truth)


def test_drivers_match_welch_on_the_raw_items():
    units, truth = _units()
    kd = key_drivers(driver_partial(units), stages=STAGES)
    rows = {r["stage"]: r for r in kd["nps"]["stages"]}
    t = truth.dropna(subset=["nps"])
    for stage in ("billing", "delivery"):
        with_, without = t.loc[t[stage], "nps"], t.loc[~t[stage], "nps"]
        res = stats.ttest_ind(with_, without, equal_var=False)
        ci = res.confidence_interval(0.95)
        r = rows[stage]
        assert r["items_with"] == len(with_) and r["items_without"] == len(without)
        assert r["difference"] == pytest.approx(with_.mean() - without.mean(), abs=1e-3)
        assert r["difference_low"] == pytest.approx(ci.low, abs=1e-3)
        assert r["difference_high"] == pytest.approx(ci.high, abs=1e-3)
        assert r["low_share_with"] == pytest.approx((with_ <= 6).mean(), abs=1e-3)
        assert r["impact"] == pytest.approx(len(with_) / len(t) * (without.mean() - with_.mean()), abs=1e-3)
    assert kd["nps"]["items"] == len(t)


def test_drivers_rank_the_stage_that_goes_with_lower_scores_first():
    units, _ = _units()
    kd = key_drivers(driver_partial(units), stages=STAGES, min_items=5)
    for kpi in ("nps", "csat"):
        ranked = kd[kpi]["stages"]
        assert ranked[0]["stage"] == "billing" and ranked[0]["rank"] == 1
        assert ranked[0]["difference_high"] < 0  # clearly lower
        delivery = next(r for r in ranked if r["stage"] == "delivery")
        assert delivery["difference_low"] < 0 < delivery["difference_high"]  # no real effect
        support = next(r for r in ranked if r["stage"] == "support")  # never negative: not ranked
        assert support["rank"] is None and support["items_with"] == 0
    assert kd["csat"]["low_means"] == "not satisfied (below 4)"


def test_drivers_sums_over_chunks_equal_one_pass():
    units, _ = _units(seed=1)
    items = units["item_id"].unique()
    chunks = [units[units["item_id"].isin(items[i::3])] for i in range(3)]  # an item stays in one chunk
    whole = key_drivers(driver_partial(units), stages=STAGES)
    parts = key_drivers(combine_drivers([driver_partial(c) for c in chunks]), stages=STAGES)
    assert parts == whole


def test_drivers_accumulator_keeps_running_sums(settings):
    units, truth = _units(seed=2, n_items=60)
    for c in ("lang", "channel", "segment", "source", "touchpoints", "text"):
        units[c] = "x"
    units["stage_confidence"] = 0.9
    units["p_negative"] = (units["sentiment"] == "negative").astype(float)
    units["p_neutral"] = (units["sentiment"] == "neutral").astype(float)
    units["p_positive"] = (units["sentiment"] == "positive").astype(float)
    acc = Accumulator(settings)
    half = units["item_id"].isin(units["item_id"].unique()[:30])
    acc.add(units[half].reset_index(drop=True))
    acc.add(units[~half].reset_index(drop=True))
    agg = acc.finish()
    total = agg.drivers[(agg.drivers["kpi"] == "nps") & (agg.drivers["stage"] == "*")]
    assert int(total["n"].iloc[0]) == truth["nps"].notna().sum()
    assert float(total["sum"].iloc[0]) == pytest.approx(truth["nps"].sum())


def test_drivers_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 vs 48/80 -> 0.0524 to 0.3339
    lo, hi = newcombe_interval(56, 70, 48, 80, 0.95)
    assert lo == pytest.approx(0.0524, abs=5e-4) and hi == pytest.approx(0.3339, abs=5e-4)


def test_drivers_without_scores_are_empty():
    units, _ = _units(n_items=20)
    units["nps"] = pd.NA
    units["csat"] = pd.NA
    assert key_drivers(driver_partial(units)) == {}
    assert key_drivers(driver_partial(units.drop(columns=["nps", "csat"]))) == {}
    assert key_drivers(driver_partial(units.iloc[:0])) == {}
