"""Human-readable views of a scored map: the terminal summary and a Markdown summary.

Customer text is untrusted: every quote and label that reaches Markdown is escaped, so a post
containing `<script>`, a link or table syntax renders as text.
"""

from __future__ import annotations

import re
from typing import Any

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
        f"units {run['units']} ({run['units_unassigned']} unassigned); languages "
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
        for q in st["quotes"][:3]:
            out.append(f"- \u201c{md_escape(q['text'])}\u201d ({md_escape(q['lang'])}, {md_escape(str(q['channel']))})")
    c = jm["run"]["counts"]
    out += ["", f"Rows read {c['rows_read']}, used {c['rows_used']}, quarantined {c['rows_quarantined']}; "
            f"units {c['units']}, unassigned {c['units_unassigned']}; model `{md_escape(jm['run']['model_id'])}`.", ""]
    return "\n".join(out)
