"""Key drivers: how much negative feedback at a stage goes with lower NPS or CSAT.

A stage can be painful and still not move the score customers give (complaints about ads rarely
cost promoters); another can be quieter and cost a lot. For every item with an NPS (or CSAT)
value, the item is "negative at stage s" when one of its units is classified at s with negative
sentiment. Per stage we compare items WITH negative feedback there against items WITHOUT:

- difference in mean score, with a Welch interval (unequal variances, Welch-Satterthwaite
  degrees of freedom);
- difference in the share of low scores (NPS detractors 0-6; CSAT below `csat_satisfied_min`),
  with a Newcombe (hybrid Wilson score) interval;
- impact: how many points the overall mean would gain if the items negative at the stage scored
  like the others (share of items with x the mean gap), the "what if we fixed it" figure.

Stages are ranked by the difference in mean (largest drop first) among those with at least
`min_items` items on both sides. This is association, not cause: a customer angry about billing
also complains about support.

Everything comes from running sums per chunk (`driver_partial`, `combine_drivers`), so millions
of items cost a few rows of memory. All units of an item are in the same chunk (items are
segmented within a chunk), so "negative at s" is decided once per item.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from feedback_nlp.records import UNASSIGNED

KPIS = ("nps", "csat")
ALL = "*"  # the row holding every item with a value
DRIVER_KEYS = ["kpi", "stage"]
DRIVER_SUMS = ["n", "sum", "sumsq", "low"]
NPS_DETRACTOR_MAX = 6  # the NPS definition: detractors answer 0-6
_FIGURES = ("mean_with", "mean_without", "difference", "difference_low", "difference_high", "low_share_with",
            "low_share_without", "low_share_difference", "low_share_difference_low", "low_share_difference_high",
            "impact")


def driver_partial(units: pd.DataFrame, *, csat_satisfied_min: float = 4) -> pd.DataFrame:
    """Classified UNIT chunk -> sums of score, squared score and low scores per (kpi, stage)
    over items negative at that stage, plus a `*` row over all items with a value."""
    cols = [*DRIVER_KEYS, *DRIVER_SUMS]
    if units.empty:
        return pd.DataFrame(columns=cols)
    neg = units[(units["sentiment"] == "negative") & (units["stage"] != UNASSIGNED)]
    neg_pairs = neg[["item_id", "stage"]].drop_duplicates()
    items = units.drop_duplicates("item_id").set_index("item_id")
    rows = []
    for kpi in KPIS:
        if kpi not in items:
            continue
        v = pd.to_numeric(items[kpi], errors="coerce").astype(float).dropna()
        if v.empty:
            continue
        low = (v <= NPS_DETRACTOR_MAX) if kpi == "nps" else (v < csat_satisfied_min)
        per_item = pd.DataFrame({"n": 1, "sum": v, "sumsq": v * v, "low": low.astype(int)})
        rows.append(pd.DataFrame([{"kpi": kpi, "stage": ALL, **per_item.sum().to_dict()}]))
        pairs = neg_pairs[neg_pairs["item_id"].isin(per_item.index)]
        if len(pairs):
            g = per_item.loc[pairs["item_id"]].assign(stage=pairs["stage"].to_numpy())
            g = g.groupby("stage", sort=False)[DRIVER_SUMS].sum().reset_index()
            g.insert(0, "kpi", kpi)
            rows.append(g)
    if not rows:
        return pd.DataFrame(columns=cols)
    return combine_drivers(rows)


def combine_drivers(partials: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [p for p in partials if p is not None and not p.empty]
    if not frames:
        return pd.DataFrame(columns=[*DRIVER_KEYS, *DRIVER_SUMS])
    out = pd.concat(frames, ignore_index=True)
    out[DRIVER_SUMS] = out[DRIVER_SUMS].astype(float)
    return out.groupby(DRIVER_KEYS, sort=False)[DRIVER_SUMS].sum().reset_index()


def _mean_var(n: float, s: float, ss: float) -> tuple[float, float]:
    mean = s / n
    var = max(ss - s * s / n, 0.0) / (n - 1) if n > 1 else float("nan")
    return mean, var


def welch_interval(m1: float, v1: float, n1: float, m0: float, v0: float, n0: float,
                   level: float) -> tuple[float, float]:
    """Interval for m1 - m0 (Welch: unequal variances)."""
    d = m1 - m0
    a, b = v1 / n1, v0 / n0
    se = math.sqrt(a + b)
    if not math.isfinite(se):
        return float("nan"), float("nan")
    if se == 0:
        return d, d
    df = (a + b) ** 2 / ((a * a / (n1 - 1) if a else 0.0) + (b * b / (n0 - 1) if b else 0.0))
    q = float(student_t.ppf(0.5 + level / 2, df))
    return d - q * se, d + q * se


def wilson(k: float, n: float, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def newcombe_interval(k1: float, n1: float, k0: float, n0: float, level: float) -> tuple[float, float]:
    """Interval for p1 - p0 (Newcombe 1998, method 10: hybrid of two Wilson intervals)."""
    z = float(norm.ppf(0.5 + level / 2))
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson(k1, n1, z)
    l0, u0 = wilson(k0, n0, z)
    d = p1 - p0
    return (d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2))


def _r(x: float, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def key_drivers(partial: pd.DataFrame, *, stages: list[str] | None = None, level: float = 0.95,
                min_items: int = 5, csat_satisfied_min: float = 4) -> dict[str, Any]:
    """Per KPI present: every stage's with/without comparison, ranked by the drop in mean.

    Returns {kpi: {"items": n, "mean": m, "low_share": p, "stages": [...]}} with stages in rank
    order (unranked ones, too few items, last, `rank` null).
    """
    out: dict[str, Any] = {}
    if partial is None or partial.empty:
        return out
    for kpi in KPIS:
        p = partial[partial["kpi"] == kpi].set_index("stage")
        if ALL not in p.index or p.loc[ALL, "n"] < 2:
            continue
        tot = p.loc[ALL]
        m_all, _ = _mean_var(tot["n"], tot["sum"], tot["sumsq"])
        ids = stages if stages is not None else [s for s in p.index if s != ALL]
        rows = []
        for stage in ids:
            w = p.loc[stage] if stage in p.index else pd.Series({k: 0.0 for k in DRIVER_SUMS})
            n1 = float(w["n"])
            n0 = float(tot["n"] - n1)
            row: dict[str, Any] = {"stage": stage, "items_with": int(n1), "items_without": int(n0),
                                   **{k: None for k in _FIGURES}}
            if n1 >= 1 and n0 >= 1:
                m1, v1 = _mean_var(n1, w["sum"], w["sumsq"])
                m0, v0 = _mean_var(n0, tot["sum"] - w["sum"], tot["sumsq"] - w["sumsq"])
                row.update(mean_with=_r(m1), mean_without=_r(m0), difference=_r(m1 - m0),
                           low_share_with=_r(w["low"] / n1), low_share_without=_r((tot["low"] - w["low"]) / n0),
                           low_share_difference=_r(w["low"] / n1 - (tot["low"] - w["low"]) / n0),
                           impact=_r(n1 / tot["n"] * (m0 - m1)))
                if n1 >= 2 and n0 >= 2:
                    lo, hi = welch_interval(m1, v1, n1, m0, v0, n0, level)
                    row.update(difference_low=_r(lo), difference_high=_r(hi))
                    lo, hi = newcombe_interval(w["low"], n1, tot["low"] - w["low"], n0, level)
                    row.update(low_share_difference_low=_r(lo), low_share_difference_high=_r(hi))
            row["ranked"] = n1 >= min_items and n0 >= min_items and row.get("difference") is not None
            rows.append(row)
        ranked = sorted((r for r in rows if r["ranked"]), key=lambda r: (r["difference"], r["stage"]))
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
        rest = [r for r in rows if not r["ranked"]]
        for r in rest:
            r["rank"] = None
        for r in rows:
            del r["ranked"]
        out[kpi] = {
            "items": int(tot["n"]),
            "mean": _r(m_all),
            "low_share": _r(tot["low"] / tot["n"]),
            "low_means": f"detractors (0-{NPS_DETRACTOR_MAX})" if kpi == "nps"
            else f"not satisfied (below {csat_satisfied_min:g})",
            "level": level,
            "min_items": min_items,
            "stages": ranked + rest,
        }
    return out


def drivers_by_stage(drivers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{stage: {kpi: row}} for attaching to the journey map's stages."""
    out: dict[str, dict[str, Any]] = {}
    for kpi, d in drivers.items():
        for r in d["stages"]:
            out.setdefault(r["stage"], {})[kpi] = r
    return out

