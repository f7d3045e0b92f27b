import json
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import ROOT, write
from feedback_nlp.cli import main

EXAMPLES = ROOT / "corpora" / "examples"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_help_lists_commands_and_is_fast():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("run", "train", "evaluate", "report"):
        assert cmd in res.output
    proc = subprocess.run([sys.executable, "-m", "feedback_nlp", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--map" in proc.stdout
    # heavy libraries stay unimported for --help (time itself is a benchmark matter, not a test)
    code = "import sys, feedback_nlp.cli; print(any(m in sys.modules for m in ('torch', 'spacy', 'lingua', 'sklearn')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("content, name, code, message", [
    ("id,body_x\n1,x\n", "a.csv", "E110", "a.csv, field 'text': no text column"),
    ("", "a.csv", "E103", "a.csv: file is empty"),
    ("whatever", "a.xlsx", "E101", "unknown file type '.xlsx'"),
])
def test_cli_bad_input_exits_2_with_file_and_field(tmp_path, content, name, code, message):
    p = write(tmp_path / name, content)
    res = CliRunner().invoke(main, ["run", str(p), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2, res.output
    assert f"[{code}]" in res.output and message in res.output
    assert not (tmp_path / "out").exists()


def test_cli_unknown_option_is_a_usage_error():
    res = CliRunner().invoke(main, ["run", "--nope"])
    assert res.exit_code == 2


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    res = CliRunner().invoke(main, ["run", str(EXAMPLES), "--out", str(out), "--csv"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, res


def test_cli_run_example_dump_writes_every_output(example_run):
    out, res = example_run
    for name in ("journey_map.json", "units.parquet", "units.csv", "scores.csv", "quarantine.csv", "run.json",
                 "summary.md"):
        assert (out / name).is_file(), name
    assert "pain [CI]" in res.output and "rows read" in res.output


def test_cli_run_example_counts_add_up_and_cover_six_languages(example_run):
    out, _ = example_run
    run = json.loads((out / "run.json").read_text())
    c = run["counts"]
    assert c["rows_read"] >= 400
    assert c["rows_read"] == c["rows_used"] + c["rows_quarantined"]
    q = pd.read_csv(out / "quarantine.csv")
    assert len(q) == c["rows_quarantined"] and set(q["reason"]) <= {
        "empty_text", "duplicate_id", "no_content_after_cleaning", "malformed_json", "invalid_utf8", "text_too_long"}
    for lang in ("it", "pt", "en", "es", "fr", "de"):
        assert c["languages"].get(lang, 0) >= 30, c["languages"]


def test_cli_run_example_units_are_redacted_and_classified(example_run):
    out, _ = example_run
    units = pd.read_parquet(out / "units.parquet")
    text = " ".join(units["text"])
    assert "@example.com" not in text and "4111" not in text
    assert "[EMAIL]" in text
    assert units["item_id"].nunique() < len(units)  # long texts were split into several units
    assert set(units["stage"]) - {"unassigned"} <= {"awareness", "purchase", "delivery", "onboarding", "usage",
                                                   "billing", "support", "renewal"}
    assert len(set(units["stage"])) >= 8
    p = units[["p_negative", "p_neutral", "p_positive"]].sum(axis=1)
    assert ((p - 1).abs() < 1e-6).all()
    assert ((units["stage"] == "unassigned") == (units["stage_confidence"] < 0.45)).all() or \
        (units.loc[units["stage_confidence"] < 0.45, "stage"] == "unassigned").all()
    csv_units = pd.read_csv(out / "units.csv")
    assert len(csv_units) == len(units)


def test_cli_run_example_journey_map_has_scores_breakdowns_and_quotes(example_run):
    out, _ = example_run
    jm = json.loads((out / "journey_map.json").read_text())
    stages = {s["id"]: s for s in jm["stages"]}
    assert list(stages) == ["awareness", "purchase", "delivery", "onboarding", "usage", "billing", "support", "renewal"]
    for s in stages.values():
        sc = s["scores"]
        assert sc["units"] > 0
        assert 0 <= sc["pain_low"] <= sc["pain"] <= sc["pain_high"] <= 100
        assert s["by_channel"], s["id"]
    assert sorted(s["rank"] for s in stages.values()) == list(range(1, 9))
    assert any(s["by_segment"] for s in stages.values())
    assert any(s["quotes"] for s in stages.values())
    for s in stages.values():
        for q in s["quotes"]:
            assert "@" not in q["text"]
    assert any(t["scores"]["units"] for t in jm["touchpoints"])
    # the stage with the most negative weight is not the calmest one
    support = stages["support"]["scores"]["pain"]
    awareness = stages["awareness"]["scores"]["pain"]
    assert support > awareness


def test_cli_report_rerenders_markdown_with_escaping(example_run, tmp_path):
    out, _ = example_run
    res = invoke("report", out, "--format", "md")
    assert res.exit_code == 0 and res.output.startswith("# ")
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "[E600]" in res.output


def test_cli_run_example_reads_effort_and_touchpoints_from_the_text(example_run):
    out, _ = example_run
    jm = json.loads((out / "journey_map.json").read_text())
    support = next(s for s in jm["stages"] if s["id"] == "support")
    e = support["effort"]
    assert e["units_with_wait"] > 0 and 0 < e["wait_share"] <= 1
    assert e["median_wait_minutes"] is not None and e["median_wait_minutes"] < 24 * 60  # waits on the phone
    ivr = next(t for t in jm["touchpoints"] if t["id"] == "ivr")
    assert ivr["scores"]["units"] > 0 and ivr["effort"]["units"] == ivr["scores"]["units"]
    assert ivr["quotes"] and all("@" not in q["text"] for q in ivr["quotes"])
    units = pd.read_parquet(out / "units.parquet")
    for col in ("wait_minutes", "repeat_contact", "transfer", "unresolved", "effort_score", "touchpoints", "channel"):
        assert col in units.columns
    waits = units[units["wait_minutes"].notna()]
    assert len(waits) and waits["wait_span"].notna().all()


def test_cli_evaluate_reports_per_language_per_class_and_touchpoints(tmp_path):
    data = ROOT / "corpora" / "effort_test" / "pt.jsonl"
    res = invoke("evaluate", ROOT / "models" / "CURRENT", data, "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert "stage: n=94" in res.output and "  pt: n=94" in res.output
    assert "confusion (rows true, columns predicted)" in res.output
    assert "touchpoints: micro-F1" in res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m) == {"stage", "sentiment", "touchpoints", "feedback"}
    assert "labelled units judged not feedback" in res.output
    assert 0 <= m["stage"]["macro_f1"] <= 1 and m["stage"]["calibration"]["bins"]
