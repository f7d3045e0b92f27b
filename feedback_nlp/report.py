"""Human-readable views of a scored map: the terminal summary, a Markdown summary, and the
re-rendering of a run folder's report (`feedback-nlp report RUN_DIR`; the page is html_report.py).

Customer text is untrusted: every quote and label that reaches Markdown is escaped, so a post
containing `<script>`, a link or table syntax renders as text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from feedback_nlp.errors import FeedbackError

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~])")


def md_escape(text: str) -> str:
    """Escape Markdown syntax and HTML so untrusted text renders literally, on one line."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"\s+", " ", text)
    return _MD_SPECIAL.sub(r"\\\1", text)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _score(s: dict[str, Any]) -> str:
    if s.get("pain") is None:
        return "-"
    return f"{s['pain']:.0f} [{s['pain_low']:.0f}-{s['pain_high']:.0f}]"


def summary_rows(jm: dict[str, Any]) -> list[list[str]]:
    rows = []
    for st in jm["stages"]:
        s = st["scores"]
        worst = st["by_channel"][0]["id"] if st["by_channel"] else "-"
        rows.append([
            str(st["rank"] or "-"), st["id"], _score(s), str(s.get("units", 0)),
            _pct(s.get("negative_share")), _pct(s.get("share_of_negative")), worst,
        ])
    return rows


def summary_table(jm: dict[str, Any]) -> str:
    """The stages in journey order with score, interval, volume and worst channel."""
    header = ["rank", "stage", "pain [CI]", "units", "neg", "of all neg", "worst channel"]
    rows = [header, *summary_rows(jm)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    run = jm["run"]["counts"]
    lines.append("")
    lines.append(
        f"rows read {run['rows_read']}, used {run['rows_used']}, quarantined {run['rows_quarantined']}; "
        f"units {run['units']} ({run['units_unassigned']} unassigned, {run.get('units_not_feedback', 0)} not feedback); "
        "languages "
        + ", ".join(f"{k} {v}" for k, v in run["languages"].items())
    )
    return "\n".join(lines)


def markdown_summary(jm: dict[str, Any]) -> str:
    """A Markdown summary for e-mail or chat: the table, then the worst stages' quotes."""
    out = [f"# {md_escape(jm['journey']['name'])}: journey pain", ""]
    out += ["| rank | stage | pain [CI] | units | negative | of all negative | worst channel |",
            "|---|---|---|---|---|---|---|"]
    for st, row in zip(jm["stages"], summary_rows(jm)):
        cells = [row[0], md_escape(st["name"]), *row[2:6], md_escape(row[6])]
        out.append("| " + " | ".join(cells) + " |")
    ranked = sorted((s for s in jm["stages"] if s["rank"]), key=lambda s: s["rank"])[:3]
    for st in ranked:
        out += ["", f"## {md_escape(st['name'])} (pain {_score(st['scores'])})", ""]
        themes = [t for t in st.get("themes", []) if not t["id"].endswith(".other")][:3]
        for t in themes:
            out.append(f"- **{md_escape(t['name'])}** ({_pct(t['share'])} of the stage's negative feedback, "
                       f"{t['units']} units)")
            for q in t["quotes"][:1]:
                out.append(f"  - \u201c{md_escape(q['text'])}\u201d ({md_escape(q['lang'])}, {md_escape(str(q['channel']))})")
        if not themes:
            for q in st["quotes"][:3]:
                out.append(f"- \u201c{md_escape(q['text'])}\u201d ({md_escape(q['lang'])}, {md_escape(str(q['channel']))})")
    out += _drivers_md(jm)
    c = jm["run"]["counts"]
    out += ["", f"Rows read {c['rows_read']}, used {c['rows_used']}, quarantined {c['rows_quarantined']}; "
            f"units {c['units']}, unassigned {c['units_unassigned']}, not feedback {c.get('units_not_feedback', 0)} "
            f"(left out of every score); model `{md_escape(jm['run']['model_id'])}`."]
    mix = (jm["run"].get("label_shift") or {}).get("sentiment", {}).get("all")
    if mix:
        out.append("Sentiment mix estimated from this run's own units (probabilities corrected to it): "
                   + ", ".join(f"{md_escape(k)} {100 * v:.0f}%" for k, v in mix.items()) + ".")
    out.append("")
    return "\n".join(out)


def _drivers_md(jm: dict[str, Any]) -> list[str]:
    kd = jm.get("key_drivers") or {}
    kpi = "nps" if "nps" in kd else ("csat" if "csat" in kd else None)
    if kpi is None:
        return []
    d = kd[kpi]
    names = {st["id"]: st["name"] for st in jm["stages"]}
    rows = [r for r in d["stages"] if r.get("rank")][:3]
    if not rows:
        return []
    out = ["", f"## Key drivers ({kpi.upper()}, {d['items']} items)", ""]
    for r in rows:
        ci = (f" [{r['difference_low']:+.1f}, {r['difference_high']:+.1f}]"
              if r.get("difference_low") is not None else "")
        out.append(f"{r['rank']}. {md_escape(names.get(r['stage'], r['stage']))}: mean {kpi.upper()} "
                   f"{r['difference']:+.1f}{ci} with negative feedback there ({r['items_with']} items)")
    return out


def load_map(run_dir: Path) -> dict[str, Any]:
    """journey_map.json of a run folder, with errors that say what to do."""
    path = run_dir / "journey_map.json"
    if not path.is_file():
        raise FeedbackError("E600", f"{path}: not found; is {run_dir} the output folder of `feedback-nlp run`?")
    try:
        jm = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeedbackError("E702", f"{path}: not valid JSON ({e}); re-run `feedback-nlp run`") from e
    if not isinstance(jm, dict) or not isinstance(jm.get("stages"), list) or "journey" not in jm:
        raise FeedbackError("E703", f"{path}, field 'stages': not a journey map written by `feedback-nlp run`")
    return jm


def render_run(run_dir: Path, fmt: str, out: Path | None = None) -> tuple[str, Path | None]:
    """Re-render a run folder's report: html (to RUN_DIR/report.html unless `out`), md or table.

    Returns the text and the file written (None when the text is for stdout).
    """
    jm = load_map(run_dir)
    if fmt == "html":
        from feedback_nlp.html_report import read_cells, render_html

        text = render_html(jm, read_cells(run_dir / "cells.csv"))
        target = out or run_dir / "report.html"
    elif fmt == "md":
        text, target = markdown_summary(jm), out
    elif fmt == "table":
        text, target = summary_table(jm), out
    else:
        raise FeedbackError("E704", f"unknown report format {fmt!r}; use html, md or table")
    if target is not None:
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as e:
            raise FeedbackError("E705", f"{target}: cannot write the report ({e.strerror})") from e
    return text, target
