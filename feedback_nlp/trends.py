"""Period over period: each stage's and touchpoint's pain in the latest period and the one before,
the change, and whether a rise is more than noise.

Periods are calendar periods in UTC of the items' `created_at` (when the customer wrote, not
when the export ran): a day, an ISO week (Monday to Sunday) or a month. The latest period is the
one holding the newest item in the store, or `--as-of DATE`.

Significance: a one-sided two-proportion z-test on the confidence-weighted negative share,

    p1 = neg1 / w1 (latest), p0 = neg0 / w0 (previous), p = (neg1 + neg0) / (w1 + w0)
    z  = (p1 - p0) / sqrt(p (1 - p) (1 / w1 + 1 / w0))

with each period's summed stage probabilities `w` as its sample size (a unit the classifier is
half sure belongs to the stage counts as half a mention). A change is flagged `up` (or `down`)
only when all three hold: the one-sided p-value is below `trend_alpha`, the pain score moved by
at least `trend_min_change_points` points in the same direction, and both periods have at least
`trend_min_units` units. The first keeps noise out, the second keeps out changes too small to
act on (with thousands of mentions a 1-point move is "significant"), the third keeps the
normal approximation honest. With about 40 cells tested per night, some false flags at
alpha = 0.01 are expected now and then: read a flag as "look here", not as proof.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from feedback_nlp.config import JourneyMap

PERIODS = {"day": "D", "week": "W-SUN", "month": "M"}
PHRASE = {"day": "today", "week": "this week", "month": "this month"}
TREND_COLUMNS = ["stage", "breakdown", "key", "units", "pain", "negative_share", "units_previous",
                 "pain_previous", "negative_share_previous", "change", "z", "p_value", "flag", "tested"]


@dataclass(frozen=True)
class Window:
    """A calendar period, [start, end) in UTC."""

    period: str
    start: pd.Timestamp
    end: pd.Timestamp
    label: str

    def contains(self, created_at: pd.Series) -> np.ndarray:
        ts = pd.to_datetime(created_at, utc=True)
        return ((ts >= self.start) & (ts < self.end)).fillna(False).to_numpy(dtype=bool)

    def to_dict(self) -> dict[str, str]:
        return {"label": self.label, "start": self.start.isoformat(), "end": self.end.isoformat()}


def _label(p: pd.Period, period: str) -> str:
    if period == "day":
        return str(p)
    if period == "week":
        iso = p.start_time.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    return str(p)


def windows(period: str, as_of: pd.Timestamp) -> tuple[Window, Window]:
    """The period holding `as_of`, and the one before it."""
    ts = pd.Timestamp(as_of)
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    cur = ts.to_period(PERIODS[period])
    out = []
    for p in (cur, cur - 1):
        start = p.start_time.tz_localize("UTC")
        end = (p + 1).start_time.tz_localize("UTC")
        out.append(Window(period, start, end, _label(p, period)))
    return out[0], out[1]


def compare(current: pd.DataFrame, previous: pd.DataFrame, *, alpha: float, min_change_points: float,
            min_units: int) -> pd.DataFrame:
    """Score tables (score.score_table) of two periods -> one row per stage and touchpoint cell."""
    keys = ["stage", "breakdown", "key"]
    cols = [*keys, "units", "weight", "negative_share", "pain"]

    def cells(t: pd.DataFrame) -> pd.DataFrame:
        if t is None or t.empty:
            return pd.DataFrame(columns=cols)
        return t[t["breakdown"].isin(["", "touchpoint"])][cols]

    cur, prev = cells(current), cells(previous)
    if cur.empty and prev.empty:
        return pd.DataFrame(columns=TREND_COLUMNS)
    m = cur.merge(prev, on=keys, how="outer", suffixes=("", "_previous"))
    w1 = m["weight"].astype(float).fillna(0).to_numpy()
    w0 = m["weight_previous"].astype(float).fillna(0).to_numpy()
    n1 = m["negative_share"].astype(float).fillna(0).to_numpy() * w1
    n0 = m["negative_share_previous"].astype(float).fillna(0).to_numpy() * w0
    m["units"] = m["units"].fillna(0).astype(int)
    m["units_previous"] = m["units_previous"].fillna(0).astype(int)
    pooled = np.divide(n1 + n0, w1 + w0, out=np.zeros_like(w1), where=(w1 + w0) > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(pooled * (1 - pooled) * (1 / w1 + 1 / w0))
        z = np.where((se > 0) & np.isfinite(se), (n1 / w1 - n0 / w0) / se, np.nan)
    tested = (m["units"] >= min_units).to_numpy() & (m["units_previous"] >= min_units).to_numpy() & np.isfinite(z)
    change = (m["pain"].astype(float) - m["pain_previous"].astype(float)).to_numpy()
    p_value = np.where(np.isfinite(z), norm.sf(np.abs(np.nan_to_num(z))), np.nan)
    up = tested & (z > 0) & (p_value < alpha) & (change >= min_change_points)
    down = tested & (z < 0) & (p_value < alpha) & (change <= -min_change_points)
    m["change"] = change
    m["z"] = z
    m["p_value"] = p_value
    m["flag"] = np.where(up, "up", np.where(down, "down", ""))
    m["tested"] = tested
    return m[TREND_COLUMNS].sort_values(keys, kind="mergesort").reset_index(drop=True)


def _num(v: Any, digits: int = 4) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    return round(float(v), digits)


def _entry(row: pd.Series | None) -> dict[str, Any]:
    if row is None:
        return {"pain": None, "pain_previous": None, "change": None, "flag": None, "tested": False}
    return {
        "pain": _num(row["pain"], 2), "pain_previous": _num(row["pain_previous"], 2), "change": _num(row["change"], 2),
        "negative_share": _num(row["negative_share"]), "negative_share_previous": _num(row["negative_share_previous"]),
        "units": _num(row["units"]), "units_previous": _num(row["units_previous"]), "z": _num(row["z"], 3),
        "p_value": _num(row["p_value"], 5), "flag": row["flag"] or None, "tested": bool(row["tested"]),
    }


def attach(jm: dict[str, Any], trends: pd.DataFrame, current: Window | None, previous: Window | None, *,
           alpha: float, min_change_points: float, min_units: int) -> dict[str, Any]:
    """Add `trend` to the map, to every stage, to every stage's touchpoints and to the map's
    touchpoints: the latest period's pain, the previous period's, the change and the flag."""
    index = {(r.stage, r.breakdown, r.key): r for r in trends.itertuples(index=False)} if len(trends) else {}

    def get(stage: str, breakdown: str, key: str) -> pd.Series | None:
        r = index.get((stage, breakdown, key))
        return None if r is None else pd.Series(r._asdict())

    jm["trend"] = {
        "period": current.period if current else None,
        "current": current.to_dict() if current else None,
        "previous": previous.to_dict() if previous else None,
        "test": "one-sided two-proportion z-test on the confidence-weighted negative share; flagged when "
                "p < alpha, |change in pain| >= min_change_points and both periods have >= min_units units",
        "alpha": alpha, "min_change_points": min_change_points, "min_units": min_units,
    }
    for st in jm["stages"]:
        st["trend"] = _entry(get(st["id"], "", ""))
        for tp in st.get("touchpoints", []):
            tp["trend"] = _entry(get(st["id"], "touchpoint", tp["id"]))
    for tp in jm.get("touchpoints", []):
        tp["trend"] = _entry(get("*", "touchpoint", tp["id"]))
    return jm


def headlines(trends: pd.DataFrame, journey: JourneyMap, current: Window | None,
              previous: Window | None) -> list[str]:
    """One sentence per flagged cell, stages first, biggest move first:
    "Billing pain up 12 points this week (2026-W47: 43 vs 31 in 2026-W46; p = 0.003, 120 units)"."""
    if current is None or previous is None or trends.empty:
        return []
    names = {s.id: s.name for s in journey.stages}
    tp_names = {t.id: t.name for t in journey.touchpoints}
    flagged = trends[trends["flag"] != ""].copy()
    flagged["order"] = (flagged["breakdown"] != "").astype(int)
    flagged["size"] = -flagged["change"].abs()
    lines = []
    for r in flagged.sort_values(["order", "size", "stage", "key"], kind="mergesort").itertuples(index=False):
        if r.breakdown == "":
            what = names.get(r.stage, r.stage)
        elif r.stage == "*":
            what = tp_names.get(r.key, r.key)
        else:
            what = f"{names.get(r.stage, r.stage)} / {tp_names.get(r.key, r.key)}"
        lines.append(f"{what} pain {r.flag} {abs(r.change):.0f} points {PHRASE[current.period]} "
                     f"({current.label}: {r.pain:.0f} vs {r.pain_previous:.0f} in {previous.label}; "
                     f"p = {r.p_value:.3g}, {r.units} units)")
    return lines
