"""report.html: the journey map as a page a CX team reads, in one self-contained file.

CX teams read journey maps as pictures: stages left to right, the hot ones in colour, what hurts
in the customers' own words. The page is one file with everything inline (Plotly's bundled
script, styles, data), so it opens from a mail attachment or a shared drive with no network.

Untrusted customer text reaches the page in two ways, both escaped: as HTML through Jinja2 with
autoescape on, and as data through Jinja2's `tojson` (which escapes `<`, `>`, `&` and `'`, so a
quote containing `</script>` cannot end the data block), read by `JSON.parse`, never evaluated;
the page's script writes text with `textContent` only.

Filters (language, channel, segment, source) recompute scores in the browser from the score
sums per (stage, channel, segment, language, source) that the run keeps (`cells.csv`), with the
same shrunk score as score.py; under a filter the intervals use a normal approximation of the
Beta posterior (the page says so). Themes and key drivers are for all the data.
"""

from __future__ import annotations

import datetime as dt
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from feedback_nlp.errors import FeedbackError

# The pain colour scale is centred on the run's overall negative share (a stage at the average
# is neutral yellow) and saturates this many points above or below it: scores are shrunk toward
# the average, so a fixed 0-100 scale would paint every stage the same orange.
COLOUR_SPAN = 15.0
COLOUR_STEPS = 31
COLOURSCALE = "RdYlGn_r"
LANGUAGE_NAMES = {"it": "Italian", "pt": "Portuguese", "en": "English", "es": "Spanish", "fr": "French",
                  "de": "German", "und": "undetermined"}
CELL_KEYS = ["stage", "channel", "segment", "lang", "source"]
CELL_SUMS = ["units", "weight", "neg", "neu", "pos"]
NA_KEY = "(none)"


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@lru_cache(maxsize=1)
def colour_table() -> list[str]:
    """COLOUR_STEPS colours from "better than average" to "worse than average"."""
    from plotly.colors import sample_colorscale

    return sample_colorscale(COLOURSCALE, [i / (COLOUR_STEPS - 1) for i in range(COLOUR_STEPS)])


def pain_colour(pain: float | None, centre: float) -> str:
    if pain is None:
        return "#e5e7eb"
    x = min(max((pain - centre) / COLOUR_SPAN, -1.0), 1.0)
    return colour_table()[round((x + 1) / 2 * (COLOUR_STEPS - 1))]


def text_colour(rgb: str) -> str:
    """Black or white, whichever reads better on the background (WCAG relative luminance)."""
    try:
        r, g, b = (int(c) / 255 for c in rgb[rgb.index("(") + 1: rgb.index(")")].split(","))
    except ValueError:
        return "#111827"

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    return "#111827" if lum > 0.3 else "#ffffff"


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """Plotly's bundled, minified script, checked to be safe to inline in a <script> element."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    if "</script" in js.lower():  # never expected; would end the element early
        js = js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return js


def _cells_payload(cells: pd.DataFrame | None) -> dict[str, Any]:
    """Score sums in a compact form: distinct values per key, rows of indices and sums."""
    if cells is None or cells.empty or not set(CELL_KEYS + CELL_SUMS) <= set(cells.columns):
        return {"keys": CELL_KEYS, "values": {k: [] for k in CELL_KEYS}, "rows": []}
    df = cells[CELL_KEYS + CELL_SUMS].copy()
    values: dict[str, list[str]] = {}
    for k in CELL_KEYS:
        col = df[k].astype("string").fillna(NA_KEY).astype(str)
        cats = pd.Categorical(col)
        values[k] = [str(c) for c in cats.categories]
        df[k] = cats.codes
    for c in CELL_SUMS:
        df[c] = pd.to_numeric(df[c], errors="coerce").fillna(0).astype(float).round(5)
    rows = df.to_numpy().tolist()
    rows = [[int(x) for x in r[:len(CELL_KEYS)]] + [float(x) for x in r[len(CELL_KEYS):]] for r in rows]
    return {"keys": CELL_KEYS, "values": values, "rows": rows}


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _fmt(x: Any, nd: int = 0, signed: bool = False) -> str:
    if x is None:
        return "-"
    s = f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"
    return s.replace("-", "\u2212")


def _overall_share(jm: dict[str, Any], cells: pd.DataFrame | None) -> float:
    """The run's overall negative share in points (score.py's shrinkage target): negative weight
    over all assigned weight; from the map's stages when the score sums are missing."""
    if cells is not None and not cells.empty and {"stage", "weight", "neg"} <= set(cells.columns):
        a = cells[cells["stage"].astype(str) != "unassigned"]
        w = pd.to_numeric(a["weight"], errors="coerce").sum()
        if w > 0:
            return float(100 * pd.to_numeric(a["neg"], errors="coerce").sum() / w)
    w = neg = 0.0
    for st in jm["stages"]:
        s = st["scores"]
        if s.get("negative_share") is not None and s.get("units"):
            # weight is not in the map; units x negative share is close enough for the colour centre
            w += s["units"]
            neg += s["units"] * s["negative_share"]
    return 100 * neg / w if w else 50.0


def _trend(st: dict[str, Any]) -> dict[str, Any] | None:
    t = st.get("trend") or {}
    if t.get("change") is None:
        return None
    flag = t.get("flag")
    arrow = "\u25b2" if t["change"] > 0 else ("\u25bc" if t["change"] < 0 else "\u25b6")
    return {"arrow": arrow, "change": _fmt(t["change"], 0, signed=True), "flag": flag or "",
            "previous": _fmt(t.get("pain_previous")),
            "title": (f"pain {_fmt(t.get('pain'))} vs {_fmt(t.get('pain_previous'))} in the previous period"
                      + ("; a significant change" if flag else "; not a significant change"))}


def _stage_view(st: dict[str, Any], centre: float, kpi: str | None, themes_shown: int) -> dict[str, Any]:
    s = st["scores"]
    pain = s.get("pain")
    colour = pain_colour(pain, centre)
    themes = [t for t in st.get("themes", []) if t["id"].split(".")[-1] != "other"]
    other = next((t for t in st.get("themes", []) if t["id"].split(".")[-1] == "other"), None)
    driver = (st.get("drivers") or {}).get(kpi) if kpi else None
    return {
        "id": st["id"],
        "name": st["name"],
        "description": st.get("description", ""),
        "rank": st.get("rank"),
        "pain": pain,
        "pain_text": _fmt(pain),
        "interval": f"{_fmt(s.get('pain_low'))}\u2013{_fmt(s.get('pain_high'))}" if pain is not None else "",
        "colour": colour,
        "text_colour": text_colour(colour),
        "units": s.get("units", 0),
        "share_of_negative": _pct(s.get("share_of_negative")),
        "neg": round(100 * (s.get("negative_share") or 0), 1),
        "neu": round(100 * (s.get("neutral_share") or 0), 1),
        "pos": round(100 * (s.get("positive_share") or 0), 1),
        "nps": _fmt(s.get("nps")) if s.get("nps") is not None else None,
        "trend": _trend(st),
        "driver": driver,
        "driver_text": (_fmt(driver["difference"], 1, signed=True)
                        if driver and driver.get("difference") is not None else None),
        "driver_interval": (f"{_fmt(driver['difference_low'], 1)} to {_fmt(driver['difference_high'], 1)}"
                            if driver and driver.get("difference_low") is not None else None),
        "top_themes": themes[:themes_shown],
        "themes": themes,
        "other": other,
        "quotes": st.get("quotes", []),
        "effort": _effort_view(st.get("effort") or {}),
    }


def _duration(minutes: float | None) -> str:
    if minutes is None:
        return "-"
    for unit, size in (("d", 1440), ("h", 60)):
        if minutes >= size:
            return f"{minutes / size:.1f}".rstrip("0").rstrip(".") + " " + unit
    return f"{minutes:.0f} min"


def _effort_view(e: dict[str, Any]) -> dict[str, Any] | None:
    """Effort figures read from the text (effort.py) as display strings."""
    if not e or not e.get("units"):
        return None
    return {"wait_share": _pct(e.get("wait_share")), "median_wait": _duration(e.get("median_wait_minutes")),
            "repeat_share": _pct(e.get("repeat_share")), "transfer_share": _pct(e.get("transfer_share")),
            "unresolved_share": _pct(e.get("unresolved_share")), "units_with_wait": e.get("units_with_wait", 0)}


def _touchpoints_view(jm: dict[str, Any], centre: float) -> list[dict[str, Any]]:
    """Touchpoints mentioned in the text, worst first: volume, pain, effort, a quote."""
    rows = []
    for tp in jm.get("touchpoints", []):
        s = tp.get("scores") or {}
        if not s.get("units"):
            continue
        colour = pain_colour(s.get("pain"), centre)
        rows.append({"name": tp["name"], "units": s["units"], "pain": _fmt(s.get("pain")),
                     "interval": f"{_fmt(s.get('pain_low'))}\u2013{_fmt(s.get('pain_high'))}",
                     "colour": colour, "text_colour": text_colour(colour), "sort": s.get("pain") or 0,
                     "effort": _effort_view(tp.get("effort") or {}), "quotes": (tp.get("quotes") or [])[:1]})
    return sorted(rows, key=lambda r: -r["sort"])


def _drivers_view(jm: dict[str, Any]) -> dict[str, Any] | None:
    kd = jm.get("key_drivers") or {}
    kpi = "nps" if "nps" in kd else ("csat" if "csat" in kd else None)
    if kpi is None:
        return None
    names = {st["id"]: st["name"] for st in jm["stages"]}
    d = kd[kpi]
    rows = [{**r, "name": names.get(r["stage"], r["stage"])} for r in d["stages"]]
    return {"kpi": kpi, "label": kpi.upper(), "n_items": d["items"], "mean": d["mean"],
            "low_share": d["low_share"], "low_means": d["low_means"], "level": d["level"],
            "min_items": d["min_items"], "rows": rows, "other_kpis": [k.upper() for k in kd if k != kpi]}


def report_context(jm: dict[str, Any], cells: pd.DataFrame | None = None, *, themes_shown: int = 3,
                   generated: str | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain values (no customer text is marked safe)."""
    from scipy.stats import norm

    run = jm.get("run", {})
    settings = run.get("settings", {})
    counts = run.get("counts", {})
    centre = _overall_share(jm, cells)
    drivers = _drivers_view(jm)
    kpi = drivers["kpi"] if drivers else None
    stages = [_stage_view(st, centre, kpi, themes_shown) for st in jm["stages"]]
    level = float(settings.get("interval_level", 0.95))
    units = counts.get("units", 0) or 0
    langs = counts.get("languages", {}) or {}
    channel_names = {c["id"]: c["name"] for c in jm.get("channels", [])}
    data = _clean({
        "stages": [{"id": s["id"], "name": s["name"], "pain": s["pain"], "interval": s["interval"],
                    "units": s["units"], "share_of_negative": s["share_of_negative"],
                    "neg": s["neg"], "neu": s["neu"], "pos": s["pos"]} for s in stages],
        "names": {"channel": channel_names, "lang": LANGUAGE_NAMES,
                  "source": {"survey": "Survey", "case_note": "Case note", "blog": "Blog", "social": "Social post"}},
        "cells": _cells_payload(cells),
        "k": float(settings.get("prior_strength", 30)),
        "z": float(norm.ppf(0.5 + level / 2)),
        "min_cell_units": int(settings.get("min_cell_units", 5)),
        "centre": centre,
        "span": COLOUR_SPAN,
        "colours": colour_table(),
        "colourscale": [[i / (COLOUR_STEPS - 1), c] for i, c in enumerate(colour_table())],
        "drivers": drivers,
    })
    return {
        "title": jm["journey"]["name"],
        "journey": jm["journey"],
        "generated": generated or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "stages": stages,
        "touchpoints": _touchpoints_view(jm, centre),
        "drivers": drivers,
        "centre": _fmt(centre),
        "span": _fmt(COLOUR_SPAN),
        "legend": [pain_colour(centre + COLOUR_SPAN * x, centre) for x in (-1, -0.5, 0, 0.5, 1)],
        "level": f"{100 * level:g}%",
        "counts": {
            "rows_read": counts.get("rows_read", 0), "rows_used": counts.get("rows_used", 0),
            "rows_quarantined": counts.get("rows_quarantined", 0),
            "quarantine_reasons": counts.get("quarantine_reasons", {}) or {},
            "units": units, "units_unassigned": counts.get("units_unassigned", 0),
            "unassigned_share": _pct((counts.get("units_unassigned", 0) / units) if units else None),
            "units_not_feedback": counts.get("units_not_feedback", 0),
            "not_feedback_share": _pct((counts.get("units_not_feedback", 0) / units) if units else None),
            "blanked_values": counts.get("blanked_values", {}) or {},
        },
        "languages": sorted(langs.items(), key=lambda kv: -kv[1]),
        "language_names": LANGUAGE_NAMES,
        "run": {"model_id": run.get("model_id", "-"), "embedder_id": run.get("embedder_id", "-"),
                "version": run.get("feedback_nlp_version", "-"), "started": run.get("started", "-"),
                "journey_map": Path(str(run.get("journey_map", "-"))).name, "scope": run.get("scope"),
                "inputs": len(run.get("inputs", []) or [])},
        "trend": jm.get("trend"),
        "class_mix": _class_mix(run.get("label_shift")),
        "has_cells": bool(data["cells"]["rows"]),
        "data": data,
        "plotly_js": plotly_js(),
    }


def render_html(jm: dict[str, Any], cells: pd.DataFrame | None = None, *, generated: str | None = None) -> str:
    """The report page for a scored journey map (`merge.merge_map`) and its score sums."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("feedback_nlp", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**report_context(jm, cells, generated=generated))


def read_cells(path: Path) -> pd.DataFrame | None:
    """cells.csv of a run folder (keys kept as text: a segment called "NA" stays "NA")."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype={k: str for k in CELL_KEYS}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise FeedbackError("E701", f"{path}: unreadable score sums ({e}); re-run `feedback-nlp run`") from e


def _class_mix(shift: dict[str, Any] | None) -> list[str]:
    """The run's estimated class mix (label shift) as short lines, e.g. 'sentiment: negative 62%, ...'."""
    if not shift:
        return []
    out = []
    for head in ("feedback", "sentiment"):
        block = shift.get(head)
        if not block:
            continue
        mix = block.get("all", {})
        names = {"yes": "feedback", "no": "not feedback"} if head == "feedback" else {}
        out.append(f"{head}: " + ", ".join(f"{names.get(k, k)} {_pct(v)}" for k, v in mix.items())
                   + (f" (per language: {', '.join(sorted(block.get('per_language', {})))})"
                      if block.get("per_language") else ""))
    return out
