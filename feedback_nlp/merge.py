"""Merge scores into the journey map: the input map, written back with figures attached.

Besides the scores, each stage carries its named pain points (`themes`, themes.py) and, when the
dump has NPS or CSAT, its key-driver figures (`drivers`, drivers.py); the ranked key drivers are
also kept whole under `key_drivers`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from feedback_nlp.config import JourneyMap

_FIGURES = ["units", "items", "negative_share", "neutral_share", "positive_share", "pain", "pain_low",
            "pain_high", "share_of_negative", "nps_mean", "nps", "csat_mean", "nps_responses"]


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


def _figures(row: pd.Series | None) -> dict[str, Any]:
    if row is None:
        return {"units": 0, "items": 0, "pain": None}
    return {k: _clean(row[k]) for k in _FIGURES if k in row.index}


def _breakdown(table: pd.DataFrame, stage: str, dim: str) -> list[dict[str, Any]]:
    rows = table[(table["stage"] == stage) & (table["breakdown"] == dim)].sort_values("pain", ascending=False)
    return [{"id": r["key"], **_figures(r)} for _, r in rows.iterrows()]


_EFFORT_FIGURES = ["units", "units_with_wait", "wait_share", "median_wait_minutes", "repeat_share", "transfer_share",
                   "unresolved_share", "effort_mean", "resolution_hours_mean", "fcr_rate"]


def _effort_tables(effort: pd.DataFrame | None):
    """Effort figures per stage, per (stage, touchpoint) and per touchpoint (all stages)."""
    if effort is None or effort.empty:
        return {}, {}, {}
    from feedback_nlp.effort import effort_summary

    def figs(r: pd.Series) -> dict[str, Any]:
        return {k: _clean(r[k]) for k in _EFFORT_FIGURES if k in r.index}

    by_stage = {r["stage"]: figs(r) for _, r in effort_summary(effort, ["stage"]).iterrows()}
    by_stage_tp = {(r["stage"], r["touchpoint"]): figs(r)
                   for _, r in effort_summary(effort, ["stage", "touchpoint"]).iterrows()}
    by_tp = {r["touchpoint"]: figs(r) for _, r in effort_summary(effort, ["touchpoint"]).iterrows()}
    return by_stage, by_stage_tp, by_tp


def merge_map(journey: JourneyMap, table: pd.DataFrame, quotes: pd.DataFrame, run: dict[str, Any], *,
              themes: dict[str, list[dict[str, Any]]] | None = None,
              drivers: dict[str, Any] | None = None, effort: pd.DataFrame | None = None,
              tp_quotes: pd.DataFrame | None = None) -> dict[str, Any]:
    """The journey map as a dict, every stage and touchpoint with its scores (and, when given,
    its themes and key-driver figures)."""
    from feedback_nlp.drivers import drivers_by_stage

    themes = themes or {}
    drivers = drivers or {}
    eff_stage, eff_stage_tp, eff_tp = _effort_tables(effort)
    stage_drivers = drivers_by_stage(drivers)
    whole = table[table["breakdown"] == ""].set_index("stage") if not table.empty else pd.DataFrame()
    tp_all = table[(table["breakdown"] == "touchpoint") & (table["stage"] == "*")].set_index("key") \
        if not table.empty else pd.DataFrame()
    ranked = whole["pain"].sort_values(ascending=False).index.tolist() if len(whole) else []
    stages = []
    for stage in journey.stages:
        row = whole.loc[stage.id] if stage.id in whole.index else None
        stage_tps = {r["id"]: r for r in _breakdown(table, stage.id, "touchpoint")} if not table.empty else {}
        q = quotes[quotes["stage"] == stage.id] if not quotes.empty else quotes
        stages.append({
            "id": stage.id,
            "name": stage.name,
            "description": stage.description,
            "channels": list(stage.channels),
            "kpis": list(stage.kpis),
            "rank": ranked.index(stage.id) + 1 if stage.id in ranked else None,
            "scores": _figures(row),
            "by_channel": _breakdown(table, stage.id, "channel") if not table.empty else [],
            "by_segment": _breakdown(table, stage.id, "segment") if not table.empty else [],
            "by_language": _breakdown(table, stage.id, "lang") if not table.empty else [],
            "by_source": _breakdown(table, stage.id, "source") if not table.empty else [],
            "effort": eff_stage.get(stage.id, {}),
            "touchpoints": [
                {"id": t, "scores": stage_tps[t] if t in stage_tps else {"units": 0, "pain": None},
                 "effort": eff_stage_tp.get((stage.id, t), {})}
                for t in stage.touchpoints
            ],
            "quotes": [
                {"text": r["text"], "lang": r["lang"], "item_id": r["item_id"], "channel": _clean(r["channel"]),
                 "segment": _clean(r["segment"]), "p_negative": _clean(float(r["p_negative"]))}
                for _, r in q.iterrows()
            ],
            "themes": themes.get(stage.id, []),
            "drivers": stage_drivers.get(stage.id, {}),
        })
    touchpoints = []
    for tp in journey.touchpoints:
        row = tp_all.loc[tp.id] if tp.id in tp_all.index else None
        q = tp_quotes[tp_quotes["stage"] == tp.id] if tp_quotes is not None and not tp_quotes.empty else None
        touchpoints.append({
            "id": tp.id, "name": tp.name, "scores": _figures(row), "effort": eff_tp.get(tp.id, {}),
            "quotes": [] if q is None else [
                {"text": r["text"], "lang": r["lang"], "item_id": r["item_id"], "channel": _clean(r["channel"]),
                 "p_negative": _clean(float(r["p_negative"]))} for _, r in q.iterrows()],
        })
    return {
        "journey": {"id": journey.id, "name": journey.name, "version": journey.version,
                    "description": journey.description},
        "channels": [{"id": c.id, "name": c.name} for c in journey.channels],
        "stages": stages,
        "touchpoints": touchpoints,
        "scoring": {
            "pain": "100 x confidence-weighted negative share, shrunk toward the parent share with a "
                    "Beta prior worth `prior_strength` mentions; interval = Beta posterior interval",
            "prior_strength": run["settings"]["prior_strength"],
            "interval_level": run["settings"]["interval_level"],
            "min_cell_units": run["settings"]["min_cell_units"],
        },
        "key_drivers": drivers,
        # the run's class mix estimated from its own units (shift.py); None when the correction is off
        "label_shift": run.get("label_shift"),
        "run": run,
    }


def _negative_by_stage(agg: Any) -> dict[str, Any] | None:
    """An earlier period's negative-unit embeddings per stage (themes' trends)."""
    units = getattr(agg, "negative_units", None)
    emb = getattr(agg, "negative_embeddings", None)
    if units is None or len(units) == 0 or emb is None or len(emb) != len(units):
        return None
    stages = units["stage"].astype(str).to_numpy()
    return {s: emb[stages == s] for s in sorted(set(stages))}


def themes_and_drivers(journey: JourneyMap, agg: Any, settings: Mapping[str, Any], previous: Any = None
                       ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Named pain points and key drivers of a run's aggregates (aggregate.Aggregates), with the
    run's settings (run.json's `settings`; a missing key takes the Settings default). With the
    previous period's aggregates, each theme gets its trend (its share then and the change)."""
    from feedback_nlp.config import Settings
    from feedback_nlp.drivers import key_drivers
    from feedback_nlp.themes import find_themes, themes_to_json

    def opt(key: str) -> Any:
        return settings.get(key, getattr(Settings, key))

    themes = find_themes(agg.negative_units, agg.negative_embeddings,
                         distance_threshold=opt("theme_distance_threshold"), min_units=opt("theme_min_units"),
                         min_share=opt("theme_min_share"), max_units=opt("theme_max_units"),
                         quotes=opt("theme_quotes"), keywords=opt("theme_keywords"),
                         previous=_negative_by_stage(previous))
    drivers = key_drivers(getattr(agg, "drivers", None), stages=journey.stage_ids, level=opt("interval_level"),
                          min_items=opt("driver_min_items"), csat_satisfied_min=opt("csat_satisfied_min"))
    return themes_to_json(themes), drivers
