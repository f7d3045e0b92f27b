import numpy as np
import pandas as pd
import pytest

from feedback_nlp.score import combine, partial_aggregate, score_table, top_quotes, touchpoint_partial


def units(stage, n, n_neg, *, channel="phone", segment="gen_x", conf=1.0, start=0, nps=None, tps=""):
    neg = np.r_[np.ones(n_neg), np.zeros(n - n_neg)]
    return pd.DataFrame({
        "item_id": [f"{stage}{channel}{start + i}" for i in range(n)], "unit_idx": 0,
        "text": [f"t{i}" for i in range(n)], "stage": stage, "stage_confidence": conf,
        "channel": channel, "segment": segment, "lang": "it", "source": "survey",
        "p_negative": neg, "p_neutral": 0.0, "p_positive": 1 - neg,
        "sentiment": np.where(neg > 0, "negative", "positive"), "nps": nps, "csat": None, "touchpoints": tps,
    })


def table_of(df, **kw):
    opts = dict(prior_strength=30, interval_level=0.95, min_cell_units=1) | kw
    return score_table(partial_aggregate(df), touchpoint_partial(df), **opts)


def whole(t):
    return t[t["breakdown"] == ""].set_index("stage")


def test_score_small_samples_do_not_outrank_large_ones():
    df = pd.concat([units("billing", 3, 3), units("support", 1000, 400), units("usage", 1000, 100)])
    w = whole(table_of(df))
    assert w.loc["billing", "negative_share"] == 1.0
    assert w.loc["support", "pain"] > w.loc["billing", "pain"]
    # the small stage's interval is the wide one
    width = w["pain_high"] - w["pain_low"]
    assert width["billing"] > 3 * width["support"]
    assert (w["pain_low"] <= w["pain"]).all() and (w["pain"] <= w["pain_high"]).all()


def test_score_without_prior_is_the_weighted_negative_share():
    df = pd.concat([units("billing", 10, 4), units("support", 10, 1)])
    w = whole(table_of(df, prior_strength=0))
    assert w.loc["billing", "pain"] == pytest.approx(40.0)
    assert w.loc["support", "pain"] == pytest.approx(10.0)
    assert w["share_of_negative"].sum() == pytest.approx(1.0)


def test_score_is_weighted_by_stage_confidence():
    confident = units("billing", 10, 0, conf=1.0)
    doubtful = units("billing", 10, 10, conf=0.1, start=10)
    w = whole(table_of(pd.concat([confident, doubtful]), prior_strength=0))
    assert w.loc["billing", "negative_share"] == pytest.approx(1 / 11)


def test_score_leaves_unassigned_out():
    df = pd.concat([units("billing", 10, 5), units("unassigned", 50, 50)])
    w = whole(table_of(df, prior_strength=0))
    assert list(w.index) == ["billing"]
    assert w.loc["billing", "pain"] == pytest.approx(50.0)


def test_score_partials_combine_to_the_same_table_as_one_pass():
    df = pd.concat([units("billing", 40, 10, channel="phone"), units("billing", 30, 20, channel="chat"),
                    units("support", 50, 5, segment="boomer", nps=3.0)]).reset_index(drop=True)
    one = table_of(df)
    parts = [df.iloc[:25], df.iloc[25:70], df.iloc[70:]]
    combined = score_table(combine([partial_aggregate(p) for p in parts]),
                           combine([touchpoint_partial(p) for p in parts], ["touchpoint", "stage"]),
                           prior_strength=30, interval_level=0.95, min_cell_units=1)
    key = ["stage", "breakdown", "key"]
    pd.testing.assert_frame_equal(one.sort_values(key).reset_index(drop=True),
                                  combined.sort_values(key).reset_index(drop=True))


def test_score_breakdowns_shrink_toward_their_stage_and_hide_small_cells():
    df = pd.concat([units("billing", 100, 50, channel="phone"), units("billing", 3, 3, channel="chat")])
    t = table_of(df, min_cell_units=5)
    ch = t[t["breakdown"] == "channel"].set_index("key")
    assert list(ch.index) == ["phone"]  # chat has 3 units < 5
    t = table_of(df, min_cell_units=1)
    ch = t[t["breakdown"] == "channel"].set_index("key")
    stage_pain = whole(t).loc["billing", "pain"]
    assert stage_pain < ch.loc["chat", "pain"] < 100


def test_score_kpis_count_items_once_and_nps_is_standard():
    df = units("support", 4, 4, nps=None)
    df["nps"] = [0.0, 6.0, 9.0, 10.0]
    twice = pd.concat([df, df.assign(unit_idx=1)])  # two units per item
    w = whole(table_of(twice))
    assert w.loc["support", "items"] == 4 and w.loc["support", "units"] == 8
    assert w.loc["support", "nps"] == pytest.approx(0.0)  # 2 promoters - 2 detractors
    assert w.loc["support", "nps_mean"] == pytest.approx(6.25)


def test_score_touchpoints_from_mentions():
    df = pd.concat([units("support", 10, 8, tps="ivr;phone_agent"), units("support", 10, 0, tps="", start=10)])
    t = table_of(df, prior_strength=0)
    tp = t[(t["breakdown"] == "touchpoint") & (t["stage"] == "*")].set_index("key")
    assert set(tp.index) == {"ivr", "phone_agent"}
    assert tp.loc["ivr", "pain"] == pytest.approx(80.0)


def test_score_quotes_keep_the_strongest_negative_per_stage_one_per_item():
    df = units("billing", 6, 6)
    df["p_negative"] = [0.9, 0.8, 0.95, 0.7, 0.6, 0.99]
    q = top_quotes(df.iloc[:3], 2)
    q = top_quotes(df.iloc[3:], 2, q)
    assert q["p_negative"].tolist() == [0.99, 0.95]
