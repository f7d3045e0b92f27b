"""Pain-point scores per stage, per stage x channel and per stage x segment, with intervals.

Aggregation is split in two so it runs partition by partition: `partial_aggregate` turns a chunk
of classified units into sums per (stage, channel, segment, lang, source), `combine` adds
partials, and `score_table` turns the sums into scores. Memory stays flat however many chunks.

The pain score (0-100) of a cell is the confidence-weighted negative share, shrunk toward its
parent's share:

    w      = sum over the cell's units of the stage probability (confidence weight)
    neg    = sum of (stage probability x negative probability)
    p0     = parent share (all assigned units for a stage; the stage for a stage x channel cell)
    pain   = 100 x (neg + k p0) / (w + k)                 k = prior_strength (mentions)
    interval: 100 x the Beta(neg + k p0, w - neg + k (1 - p0)) quantiles at the chosen level

So 3 negative mentions out of 3 do not outrank 400 out of 1,000: with few mentions the score
stays near the parent's and its interval is wide. Volume is reported beside it
(`share_of_negative`: the cell's part of all negative weight) rather than folded in, so a
stage's score does not change when other stages are added to the map. `unassigned` units are
left out of stage scores and counted apart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import beta

from feedback_nlp.records import STAGE_SCORE, UNASSIGNED

KEYS = ["stage", "channel", "segment", "lang", "source"]
SUMS = ["units", "items", "weight", "neg", "neu", "pos", "nps_sum", "nps_n", "detractors", "promoters",
        "csat_sum", "csat_n"]
NA_KEY = "(none)"


_KEYED_COLS = ["item_id", "stage_confidence", "p_negative", "p_neutral", "p_positive", "nps", "csat", "touchpoints"]


def _keyed(units: pd.DataFrame) -> pd.DataFrame:
    # only the columns sums are made of: a unit chunk carries text and forty more
    df = units[[c for c in (*KEYS, *_KEYED_COLS) if c in units.columns]].copy()
    for k in KEYS:
        df[k] = df[k].astype("string").fillna(NA_KEY).astype(object)
    w = df["stage_confidence"].astype(float)
    df["weight"] = w
    df["neg"] = w * df["p_negative"]
    df["neu"] = w * df["p_neutral"]
    df["pos"] = w * df["p_positive"]
    df["units"] = 1
    return df


def _item_kpis(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """KPI sums counting each item once per group (an item's KPIs are not per unit)."""
    first = df.drop_duplicates(subset=[*keys, "item_id"])
    nps = first["nps"].astype("Float64")
    csat = first["csat"].astype("Float64")
    kp = pd.DataFrame({
        **{k: first[k] for k in keys},
        "items": 1,
        "nps_sum": nps.fillna(0).astype(float),
        "nps_n": nps.notna().astype(int),
        "detractors": (nps <= 6).fillna(False).astype(int),
        "promoters": (nps >= 9).fillna(False).astype(int),
        "csat_sum": csat.fillna(0).astype(float),
        "csat_n": csat.notna().astype(int),
    })
    return kp.groupby(keys, sort=False).sum().reset_index()


def partial_aggregate(units: pd.DataFrame) -> pd.DataFrame:
    """Classified UNIT chunk -> sums per (stage, channel, segment, lang, source)."""
    if units.empty:
        return pd.DataFrame(columns=[*KEYS, *SUMS])
    df = _keyed(units)
    unit_sums = df.groupby(KEYS, sort=False)[["units", "weight", "neg", "neu", "pos"]].sum().reset_index()
    return unit_sums.merge(_item_kpis(df, KEYS), on=KEYS, how="left")


def touchpoint_partial(units: pd.DataFrame) -> pd.DataFrame:
    """Sums per (touchpoint, stage) for units that mention touchpoints."""
    cols = ["touchpoint", "stage", *SUMS]
    if units.empty:
        return pd.DataFrame(columns=cols)
    df = units[units["touchpoints"].fillna("").astype(str) != ""]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = _keyed(df)
    df["touchpoint"] = df["touchpoints"].astype(str).str.split(";")
    df = df.explode("touchpoint")
    keys = ["touchpoint", "stage"]
    unit_sums = df.groupby(keys, sort=False)[["units", "weight", "neg", "neu", "pos"]].sum().reset_index()
    return unit_sums.merge(_item_kpis(df, keys), on=keys, how="left")


def combine(partials: list[pd.DataFrame], keys: list[str] = KEYS) -> pd.DataFrame:
    frames = [p for p in partials if not p.empty]
    if not frames:
        return pd.DataFrame(columns=[*keys, *SUMS])
    return pd.concat(frames, ignore_index=True).groupby(keys, sort=False)[SUMS].sum().reset_index()


def _shrunk(neg: np.ndarray, w: np.ndarray, p0: np.ndarray, k: float, level: float):
    a = neg + k * p0
    b = np.maximum(w - neg, 0) + k * (1 - p0)
    share = np.where(a + b > 0, a / np.maximum(a + b, 1e-12), p0)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    with np.errstate(invalid="ignore"):
        low = np.where(a + b > 0, beta.ppf(lo_q, np.maximum(a, 1e-9), np.maximum(b, 1e-9)), 0.0)
        high = np.where(a + b > 0, beta.ppf(hi_q, np.maximum(a, 1e-9), np.maximum(b, 1e-9)), 1.0)
    return 100 * share, 100 * low, 100 * high


def _rows(g: pd.DataFrame, stage_col: str, breakdown: str, key_col: str | None, p0: np.ndarray,
          total_neg: float, k: float, level: float) -> pd.DataFrame:
    w = g["weight"].to_numpy(float)
    neg = g["neg"].to_numpy(float)
    pain, low, high = _shrunk(neg, w, p0, k, level)
    safe_w = np.where(w > 0, w, 1)
    out = pd.DataFrame({
        "stage": g[stage_col].astype(str).to_numpy(),
        "breakdown": breakdown,
        "key": g[key_col].astype(str).to_numpy() if key_col else "",
        "units": g["units"].astype(int).to_numpy(),
        "items": g["items"].astype(int).to_numpy(),
        "weight": w,
        "negative_share": np.where(w > 0, neg / safe_w, np.nan),
        "neutral_share": np.where(w > 0, g["neu"].to_numpy(float) / safe_w, np.nan),
        "positive_share": np.where(w > 0, g["pos"].to_numpy(float) / safe_w, np.nan),
        "pain": pain,
        "pain_low": low,
        "pain_high": high,
        "share_of_negative": neg / total_neg if total_neg > 0 else 0.0,
    })
    out["nps_mean"] = np.where(g["nps_n"] > 0, g["nps_sum"] / g["nps_n"].where(g["nps_n"] > 0, 1), np.nan)
    out["nps"] = np.where(g["nps_n"] > 0, 100 * (g["promoters"] - g["detractors"]) / g["nps_n"].where(g["nps_n"] > 0, 1),
                          np.nan)
    out["csat_mean"] = np.where(g["csat_n"] > 0, g["csat_sum"] / g["csat_n"].where(g["csat_n"] > 0, 1), np.nan)
    out["nps_responses"] = g["nps_n"].astype(int).to_numpy()
    return out


def score_table(partial: pd.DataFrame, tp_partial: pd.DataFrame, *, prior_strength: float,
                interval_level: float, min_cell_units: int) -> pd.DataFrame:
    """Scores per stage, then per stage x channel, segment, language, source and touchpoint."""
    assigned = partial[partial["stage"] != UNASSIGNED]
    cols = list(STAGE_SCORE.columns) + ["nps_mean", "nps", "csat_mean", "nps_responses"]
    if assigned.empty:
        return pd.DataFrame(columns=cols)
    total_w = assigned["weight"].sum()
    total_neg = assigned["neg"].sum()
    overall = total_neg / total_w if total_w > 0 else 0.0
    k, lvl = prior_strength, interval_level

    stages = assigned.groupby("stage", sort=False)[SUMS].sum().reset_index()
    out = [_rows(stages, "stage", "", None, np.full(len(stages), overall), total_neg, k, lvl)]
    stage_share = dict(zip(out[0]["stage"], out[0]["pain"] / 100))
    for dim in ("channel", "segment", "lang", "source"):
        g = assigned.groupby(["stage", dim], sort=False)[SUMS].sum().reset_index()
        g = g[g["units"] >= min_cell_units]
        if g.empty:
            continue
        p0 = g["stage"].map(stage_share).to_numpy(float)
        out.append(_rows(g, "stage", dim, dim, p0, total_neg, k, lvl))
    tp = tp_partial[tp_partial["stage"] != UNASSIGNED] if not tp_partial.empty else tp_partial
    if not tp.empty:
        g = tp.groupby(["stage", "touchpoint"], sort=False)[SUMS].sum().reset_index()
        g = g[g["units"] >= min_cell_units]
        if not g.empty:
            p0 = g["stage"].map(stage_share).to_numpy(float)
            out.append(_rows(g, "stage", "touchpoint", "touchpoint", p0, total_neg, k, lvl))
        g = tp.groupby(["touchpoint"], sort=False)[SUMS].sum().reset_index()
        g = g[g["units"] >= min_cell_units]
        if not g.empty:
            g["stage"] = "*"
            out.append(_rows(g, "stage", "touchpoint", "touchpoint", np.full(len(g), overall), total_neg, k, lvl))
    table = pd.concat(out, ignore_index=True)
    return table[cols]


def top_quotes(units: pd.DataFrame, n: int, existing: pd.DataFrame | None = None) -> pd.DataFrame:
    """The most telling negative units per stage (one per item), kept across chunks."""
    cols = ["stage", "item_id", "unit_idx", "text", "lang", "channel", "segment", "source", "p_negative", "strength"]
    if units.empty:
        cand = pd.DataFrame(columns=cols)
    else:
        mask = (units["sentiment"] == "negative") & (units["stage"] != UNASSIGNED)
        cand = units.loc[mask, [c for c in cols if c != "strength"] + ["stage_confidence"]]
        cand = cand.assign(strength=cand["stage_confidence"] * cand["p_negative"])[cols]
    return merge_quotes(existing, cand, n)


def merge_quotes(a: pd.DataFrame | None, b: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """The best `n` quotes per stage of two `top_quotes` results: the same whatever the order
    the chunks were seen in (ties broken by item and unit)."""
    cols = ["stage", "item_id", "unit_idx", "text", "lang", "channel", "segment", "source", "p_negative", "strength"]
    frames = [f for f in (a, b) if f is not None and not f.empty]
    if not frames:
        return pd.DataFrame(columns=cols)
    cand = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    cand = cand.sort_values(["stage", "strength", "item_id", "unit_idx"], ascending=[True, False, True, True],
                            kind="mergesort")
    cand = cand.drop_duplicates(subset=["stage", "item_id"])
    return cand.groupby("stage", sort=False).head(n).reset_index(drop=True)
