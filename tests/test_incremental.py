"""Scheduled scoring (`feedback-nlp score`): only new work, nothing lost, nothing half-written.

Most tests use the conftest FakeEmbedder (hashed bag of words) with a *keyword model*: heads
whose weights sit on the hashed dimensions of a few words ("invoice" -> billing, "bad" ->
negative), so every label in these tests follows from the text, and nothing is hard-coded.

Run as a script, this file is the worker the kill tests start and SIGKILL:
`python tests/test_incremental.py STORE OUT PAUSE INPUT...`, where PAUSE is `embed:N` (inside
the N-th embedding call), `transaction:N` (inside the N-th chunk's transaction, after its items
and units are written) or `outputs` (between moving the old output aside and the new one in).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import FakeEmbedder, write  # noqa: E402
from feedback_nlp.classify import LinearHead, Model, MultiLabelHead  # noqa: E402
from feedback_nlp.config import load_journey_map, load_settings, load_column_map  # noqa: E402
from feedback_nlp.incremental import score  # noqa: E402
from feedback_nlp.records import SENTIMENTS  # noqa: E402
from feedback_nlp.store import Store  # noqa: E402

STAGE_WORDS = {"billing": ["invoice", "refund"], "support": ["agent", "hold"], "delivery": ["courier", "parcel"],
               "usage": ["internet", "outage"]}
TOUCHPOINT_WORDS = {"invoice": ["invoice"], "refund": ["refund"], "phone_agent": ["agent"], "courier": ["courier"],
                    "network": ["internet", "outage"]}
SENTIMENT_WORDS = {"negative": ["bad", "awful"], "positive": ["good", "great"]}
DIM = 512


def _dim(word: str) -> int:  # the FakeEmbedder's hashing
    return int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little") % DIM


def keyword_model(model_id: str, journey, *, weight: float = 8.0) -> Model:
    """Heads for the FakeEmbedder: each keyword pushes its class; no keyword -> unassigned/neutral."""
    stages = journey.stage_ids
    coef = np.zeros((len(stages), DIM))
    for j, s in enumerate(stages):
        for w in STAGE_WORDS.get(s, []):
            coef[j, _dim(w)] += weight
    stage = LinearHead.from_arrays(stages, {"coef": coef, "intercept": np.zeros(len(stages))})
    coef = np.zeros((3, DIM))
    for j, s in enumerate(SENTIMENTS):
        for w in SENTIMENT_WORDS.get(s, []):
            coef[j, _dim(w)] += weight
    sentiment = LinearHead.from_arrays(list(SENTIMENTS), {"coef": coef, "intercept": np.array([0.0, 1.0, 0.0])})
    tps = [t.id for t in journey.touchpoints]
    coef = np.zeros((len(tps), DIM))
    for j, t in enumerate(tps):
        for w in TOUCHPOINT_WORDS.get(t, []):
            coef[j, _dim(w)] += weight
    touchpoints = MultiLabelHead.from_arrays(tps, {"coef": coef, "intercept": np.full(len(tps), -2.0)})
    return Model(model_id, "fake.v1", stage, sentiment, touchpoints)


def make_inputs(folder: Path, n: int = 48, *, light: bool = False) -> list[Path]:
    """Two files of items over two weeks, a long multi-topic note, an empty and a duplicate row.

    `light`: no long note and the language given, so a worker process never loads spaCy or
    lingua (the kill tests are about the store, not about those steps)."""
    words = [("invoice", "bad"), ("agent", "good"), ("courier", "awful"), ("internet", "great"), ("refund", "bad"),
             ("hold", "bad"), ("parcel", "good"), ("outage", "awful")]
    rows = []
    for i in range(n):
        topic, feel = words[i % len(words)]
        day = pd.Timestamp("2026-11-02") + pd.Timedelta(days=i % 14)
        rows.append({"id": f"S{i:03d}", "created_at": f"{day.date()}T10:{i % 60:02d}:00Z",
                     "channel": ["phone", "email", "chat"][i % 3], "segment": ["gen_z", "boomer"][i % 2],
                     "text": f"The {topic} number {i} was {feel} for me"})
        if light:
            rows[-1]["language"] = "en"
    note = ("The courier lost my parcel twice and it was awful for the whole family. "
            "Then the invoice charged me twice, a really bad surprise this month. "
            "In the end the agent on the phone was good and fixed everything quickly.")
    if not light:
        rows.append({"id": "NOTE1", "created_at": "2026-11-14T09:00:00Z", "channel": "phone", "segment": "gen_x",
                     "text": note})
    half = len(rows) // 2
    a = pd.DataFrame(rows[:half] + [{"id": "EMPTY", "created_at": "2026-11-03", "channel": "chat", "segment": "",
                                     "text": ""}])
    pa = folder / "a.csv"
    folder.mkdir(parents=True, exist_ok=True)
    a.to_csv(pa, index=False)
    pb = folder / "b.jsonl"
    with open(pb, "w", encoding="utf-8") as fh:
        for r in rows[half:] + [rows[0]]:  # the last line repeats an id: quarantined as a duplicate
            fh.write(json.dumps(r) + "\n")
    return [pa, pb]


def _settings(chunk_size: int = 2000):
    return load_settings().replace(chunk_size=chunk_size)


def run_score(tmp: Path, inputs, *, model=None, embedder=None, out="out", store="s.db", period="week", **kw):
    journey = load_journey_map(_settings().journey_map)
    settings = kw.pop("settings", _settings(kw.pop("chunk_size", 2000)))
    return score(inputs, store=tmp / store, journey=journey, settings=settings,
                 columns=load_column_map(settings.columns), model=model or keyword_model("kw-a", journey),
                 embedder=embedder or FakeEmbedder(), out_dir=tmp / out, period=period, quiet=True, **kw)


def outputs_signature(out: Path) -> dict:
    """Everything in an output folder except what describes the run itself (ids, times)."""
    sig = {}
    for folder in (out, out / "week"):  # period "week" in these tests
        jm = json.loads((folder / "journey_map.json").read_text())
        jm.pop("run")
        sig[f"{folder.name}/journey_map"] = jm
        for name in ("scores.csv", "summary.md", "trends.csv"):
            sig[f"{folder.name}/{name}"] = (folder / name).read_text()
    sig["quarantine"] = (out / "quarantine.csv").read_text()
    sig["units"] = pd.read_parquet(out / "units.parquet").to_json(date_format="iso")
    return sig


def store_dump(path: Path) -> dict:
    with Store(path) as st:
        return st.dump()


@pytest.fixture
def inputs(tmp_path):
    return make_inputs(tmp_path / "in")


# --- in-process behaviour ------------------------------------------------------------------


def test_incremental_first_run_scores_everything_and_counts_add_up(tmp_path, inputs):
    res = run_score(tmp_path, inputs)
    assert res.exit_code == 3 and res.status == "partial"  # an empty and a duplicate row were quarantined
    assert res.read.quarantine_reasons == {"empty_text": 1, "duplicate_id": 1}
    assert res.stats.items_new == 49 and res.stats.items_unchanged == 0
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert units.groupby("item_id").size()["NOTE1"] == 3  # the long note became three units
    assert units.set_index("item_id").loc["S000", "stage"] == "billing"
    assert units.set_index("item_id").loc["S000", "sentiment"] == "negative"
    assert units.set_index("item_id").loc["S001", "stage"] == "support"
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["rows_read"] == 51 and run["counts"]["rows_used"] == 49
    assert (tmp_path / "out" / "week" / "journey_map.json").is_file()
    with Store(tmp_path / "s.db") as st:
        assert st.count("items") == 49 and st.count("units") == len(units)
        assert st.count("predictions") == len(units)
        assert st.runs()["status"].tolist() == ["partial"]


def test_incremental_rerun_embeds_nothing_and_changes_nothing(tmp_path, inputs):
    emb = FakeEmbedder()
    run_score(tmp_path, inputs, embedder=emb)
    calls, before, sig = emb.calls, store_dump(tmp_path / "s.db"), outputs_signature(tmp_path / "out")
    assert calls > 0
    mtime = (tmp_path / "out" / "journey_map.json").stat().st_mtime_ns
    log: dict = {}
    res = run_score(tmp_path, inputs, embedder=emb, log=log)
    assert emb.calls == calls
    assert res.stats.items_unchanged == 49 and res.stats.items_new == 0 and res.stats.texts_embedded == 0
    assert store_dump(tmp_path / "s.db") == before
    # nothing the outputs depend on changed: they are left in place, not rebuilt
    assert log["outputs"] == "unchanged: written by run 1"
    assert (tmp_path / "out" / "journey_map.json").stat().st_mtime_ns == mtime
    assert outputs_signature(tmp_path / "out") == sig
    assert res.exit_code == 3 and res.journey_map["stages"][0]["trend"] is not None
    # ...until something they depend on changes, here the period
    run_score(tmp_path, inputs, embedder=emb, log=log, period="month")
    assert log["outputs"] == "rewritten" and (tmp_path / "out" / "month" / "journey_map.json").is_file()


def test_incremental_new_items_only_embed_their_own_units(tmp_path, inputs):
    emb = FakeEmbedder()
    run_score(tmp_path, inputs, embedder=emb)
    extra = write(tmp_path / "in2" / "c.csv", "id,created_at,text\nN1,2026-11-15,The refund 901 was awful\n"
                  "N2,2026-11-15,The refund 902 was awful\n")
    res = run_score(tmp_path, [*inputs, extra], embedder=emb)
    assert res.stats.items_new == 2 and res.stats.items_unchanged == 49
    assert res.stats.texts_embedded == 2
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"]["rows_used"] == 51


def test_incremental_edited_item_is_rescored_and_old_prediction_retired(tmp_path, inputs):
    run_score(tmp_path, inputs)
    with Store(tmp_path / "s.db") as st:
        n_units, n_pred = st.count("units"), st.count("predictions")
    a = pd.read_csv(inputs[0], keep_default_na=False)
    a.loc[a["id"] == "S000", "text"] = "The agent was great on the phone today"  # billing/negative -> support/positive
    a.to_csv(inputs[0], index=False)
    res = run_score(tmp_path, inputs)
    assert res.stats.items_edited == 1 and res.stats.items_new == 0 and res.stats.items_unchanged == 48
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    s0 = units[units["item_id"] == "S000"]
    assert len(s0) == 1 and s0["text"].iloc[0].startswith("The agent")
    assert s0["stage"].iloc[0] == "support" and s0["sentiment"].iloc[0] == "positive"
    assert not units.duplicated(["item_id", "unit_idx"]).any()
    with Store(tmp_path / "s.db") as st:
        assert st.count("units") == n_units  # replaced, not added
        assert st.count("predictions") == n_pred + 1  # the old one kept for history...
        assert st.count("predictions", "WHERE retired_run IS NOT NULL") == 1  # ...but retired
        assert st.count("items") == 49
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["rows_used"] == 49


def test_incremental_model_change_reclassifies_without_reembedding(tmp_path, inputs):
    journey = load_journey_map(_settings().journey_map)
    emb = FakeEmbedder()
    first = run_score(tmp_path, inputs, embedder=emb, model=keyword_model("kw-a", journey))
    calls = emb.calls
    res = run_score(tmp_path, inputs, embedder=emb, model=keyword_model("kw-b", journey, weight=5.0))
    assert emb.calls == calls, "a model change must not re-embed"
    assert res.stats.texts_embedded == 0
    assert res.stats.units_reclassified == first.stats.units_scored
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert set(units["model_id"]) == {"kw-b"}
    with Store(tmp_path / "s.db") as st:
        keys = {k for (k,) in st.db.execute("SELECT DISTINCT model_id FROM predictions")}
        assert keys == {"kw-a", "kw-b"}
    # going back to the first model costs nothing: its predictions are still stored
    back = run_score(tmp_path, inputs, embedder=emb, model=keyword_model("kw-a", journey))
    assert back.stats.units_reclassified == 0 and emb.calls == calls


def test_incremental_threshold_change_reclassifies_from_stored_embeddings(tmp_path, inputs):
    emb = FakeEmbedder()
    first = run_score(tmp_path, inputs, embedder=emb)
    calls = emb.calls
    res = run_score(tmp_path, inputs, embedder=emb, settings=_settings().replace(stage_min_confidence=0.99))
    assert emb.calls == calls and res.stats.units_reclassified == first.stats.units_scored
    assert set(pd.read_parquet(tmp_path / "out" / "units.parquet")["stage"]) == {"unassigned"}


def test_incremental_model_id_reused_for_other_weights_is_refused(tmp_path, inputs):
    from feedback_nlp.errors import FeedbackError

    journey = load_journey_map(_settings().journey_map)
    run_score(tmp_path, inputs)
    with pytest.raises(FeedbackError, match=r"\[E811\].*'kw-a' was used before with other files"):
        run_score(tmp_path, inputs, model=keyword_model("kw-a", journey, weight=3.0))
    with Store(tmp_path / "s.db") as st:
        assert st.runs()["status"].tolist() == ["partial", "failed"]


def test_incremental_unit_settings_change_is_refused(tmp_path, inputs):
    from feedback_nlp.errors import InputError

    run_score(tmp_path, inputs)
    with pytest.raises(InputError, match=r"\[E810\].*split_min_chars: store 100, now 50"):
        run_score(tmp_path, inputs, settings=_settings().replace(split_min_chars=50))


def test_incremental_trend_flags_a_rise_in_the_latest_week(tmp_path):
    rows = ["id,created_at,text"]
    for i in range(30):  # week 1: few complaints about invoices; week 2: mostly complaints
        rows.append(f"W1-{i},2026-11-0{2 + i % 5},The invoice {i} was {'bad' if i < 5 else 'good'}")
        rows.append(f"W2-{i},2026-11-{9 + i % 5:02d},The invoice {i} was {'bad' if i < 25 else 'good'}")
    p = write(tmp_path / "in" / "t.csv", "\n".join(rows) + "\n")
    res = run_score(tmp_path, [p])
    assert res.exit_code == 0
    billing = res.trends[(res.trends["stage"] == "billing") & (res.trends["breakdown"] == "")].iloc[0]
    assert billing["flag"] == "up" and billing["change"] > 20
    jm = json.loads((tmp_path / "out" / "week" / "journey_map.json").read_text())
    st = {s["id"]: s for s in jm["stages"]}
    assert st["billing"]["trend"]["flag"] == "up"
    assert st["billing"]["trend"]["pain_previous"] < st["billing"]["trend"]["pain"]
    assert jm["trend"]["current"]["label"] == "2026-W46" and jm["trend"]["previous"]["label"] == "2026-W45"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Billing pain up" in summary and "this week" in summary


def test_incremental_items_without_dates_count_in_the_all_time_map_only(tmp_path):
    p = write(tmp_path / "in" / "t.csv", "id,text\n1,The invoice was bad\n2,The agent was good\n")
    res = run_score(tmp_path, [p], period="month")
    assert res.exit_code == 0 and res.headlines == []
    jm = json.loads((tmp_path / "out" / "journey_map.json").read_text())
    assert jm["run"]["counts"]["rows_used"] == 2 and jm["trend"]["current"] is None
    month = json.loads((tmp_path / "out" / "month" / "journey_map.json").read_text())
    assert month["run"]["counts"]["rows_used"] == 0
    assert "No dated items" in (tmp_path / "out" / "summary.md").read_text()


def test_incremental_as_of_picks_the_period(tmp_path, inputs):
    res = run_score(tmp_path, inputs, as_of="2026-11-05")
    jm = json.loads((tmp_path / "out" / "week" / "journey_map.json").read_text())
    assert jm["trend"]["current"]["label"] == "2026-W45" and jm["trend"]["previous"]["label"] == "2026-W44"
    n = pd.read_parquet(tmp_path / "out" / "units.parquet")
    in_week = n[(n["created_at"] >= "2026-11-02") & (n["created_at"] < "2026-11-09")]
    assert jm["run"]["counts"]["units"] == len(in_week) < res.journey_map["run"]["counts"]["units"]
    from feedback_nlp.errors import InputError

    with pytest.raises(InputError, match=r"\[E806\]"):
        run_score(tmp_path, inputs, as_of="last tuesday")


# --- killed runs and concurrent runs (subprocesses) ----------------------------------------


def _start_worker(tmp: Path, pause: str, inputs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, str(tmp / "s.db"), str(tmp / "out"), pause,
                             *map(str, inputs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_pause(proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "PAUSED":
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"worker ended before pausing: {proc.stderr.read()[-3000:]}")
    raise AssertionError("worker did not pause in time")


@pytest.mark.parametrize("pause", ["embed:3", "transaction:3", "outputs"])
def test_incremental_killed_run_then_clean_run_equals_uninterrupted(tmp_path, pause):
    inputs = make_inputs(tmp_path / "in", light=True)
    ref = tmp_path / "ref"
    run_score(ref, inputs, chunk_size=10)
    work = tmp_path / "work"
    work.mkdir()
    if pause == "outputs":  # a previous output exists, and the kill lands while it is moved aside
        run_score(work, inputs[:1], chunk_size=10)
    proc = _start_worker(work, pause, inputs)
    try:
        _wait_for_pause(proc)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    with Store(work / "s.db") as st:
        runs = st.runs()
        assert runs["status"].iloc[-1] == "running"
        n_items = st.count("items")
        # whatever was committed is whole: every stored item has units, every unit a prediction
        assert st.db.execute("SELECT COUNT(*) FROM items i WHERE NOT EXISTS "
                             "(SELECT 1 FROM units u WHERE u.item_id = i.item_id)").fetchone()[0] == 0
        assert st.db.execute("SELECT COUNT(*) FROM units u WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE "
                             "p.item_id = u.item_id AND p.unit_idx = u.unit_idx)").fetchone()[0] == 0
    if pause.startswith(("embed", "transaction")):
        assert n_items == 20  # chunks 1 and 2 committed (10 rows each), chunk 3 lost whole
    res = run_score(work, inputs, chunk_size=10)
    with Store(work / "s.db") as st:
        assert st.runs()["status"].tolist()[-2:] == ["interrupted", "partial"]
    if pause.startswith(("embed", "transaction")):
        assert res.stats.items_unchanged == 20 and res.stats.items_new == 28  # resumed, nothing redone
    assert store_dump(work / "s.db") == store_dump(ref / "s.db")
    assert outputs_signature(work / "out") == outputs_signature(ref / "out")
    leftovers = [p.name for p in work.iterdir() if p.name.startswith(".out")]
    assert leftovers == []


def test_incremental_second_concurrent_run_is_refused_and_stale_lock_recovered(tmp_path):
    inputs = make_inputs(tmp_path / "in", light=True)
    from click.testing import CliRunner

    from feedback_nlp.cli import main

    proc = _start_worker(tmp_path, "embed:1", inputs)
    try:
        _wait_for_pause(proc)
        res = CliRunner().invoke(main, ["score", *map(str, inputs), "--store", str(tmp_path / "s.db"),
                                        "--out", str(tmp_path / "out2"), "-q"])
        assert res.exit_code == 1, res.output
        assert "[E801]" in res.output and f"pid {proc.pid} on host" in res.output
        log = json.loads([ln for ln in res.stderr.splitlines() if ln.startswith("{")][0])
        assert log["status"] == "locked" and log["exit_code"] == 1
        assert not (tmp_path / "out2").exists()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    log: dict = {}
    res = run_score(tmp_path, inputs, log=log)  # the dead worker's lock is recovered
    assert log["recovered_lock"]["pid"] == proc.pid
    assert log["interrupted_runs"] == [1]
    assert res.exit_code == 3


# --- command line -------------------------------------------------------------------------


def test_incremental_cli_exit_codes_and_json_log_line(tmp_path, settings):
    from click.testing import CliRunner

    from feedback_nlp.cli import main
    from feedback_nlp.embed import embedder_id
    from feedback_nlp.persist import save_model

    journey = load_journey_map(settings.journey_map)
    m = keyword_model("kw-cli", journey)
    m.embedder_id = embedder_id("use-m3")  # the real embedder runs; only the labels are arbitrary
    save_model(m, tmp_path / "model")
    good = write(tmp_path / "in" / "a.csv", "id,created_at,text\n1,2026-11-02,La fattura è sbagliata\n"
                 "2,2026-11-03,O técnico não apareceu\n")
    args = ["score", "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "out"), "--model",
            str(tmp_path / "model"), "--log", str(tmp_path / "runs.log"), "-q"]
    res = CliRunner().invoke(main, [*args[:1], str(good), *args[1:]])
    assert res.exit_code == 0, res.output
    bad_row = write(tmp_path / "in" / "b.csv", "id,text\n3,\n")
    res = CliRunner().invoke(main, [*args[:1], str(good), str(bad_row), *args[1:]])
    assert res.exit_code == 3, res.output
    no_text = write(tmp_path / "in3" / "c.csv", "id,body_x\n1,hello\n")
    res = CliRunner().invoke(main, [*args[:1], str(no_text), *args[1:]])
    assert res.exit_code == 2 and "[E110]" in res.output
    lines = [json.loads(x) for x in (tmp_path / "runs.log").read_text().splitlines()]
    assert [(x["status"], x["exit_code"]) for x in lines] == [("ok", 0), ("partial", 3), ("bad_input", 2)]
    assert lines[0]["counts"]["run"]["items_new"] == 2
    assert lines[1]["counts"]["run"]["items_unchanged"] == 2 and lines[1]["counts"]["run"]["texts_embedded"] == 0
    assert lines[0]["inputs"][0]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert lines[2]["error"]["code"] == "E110"


def test_incremental_cli_store_path_from_env(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from feedback_nlp.cli import main

    monkeypatch.setenv("FEEDBACK_NLP_STORE", str(tmp_path / "from_env.db"))
    p = write(tmp_path / "a.csv", "id,text\n1,ciao\n")
    res = CliRunner().invoke(main, ["score", str(p), "--period", "year"])
    assert res.exit_code == 2  # usage error before anything runs
    res = CliRunner().invoke(main, ["score", str(p), "--model", str(tmp_path / "nope"), "-q",
                                    "--out", str(tmp_path / "out")])
    log = json.loads([ln for ln in res.stderr.splitlines() if ln.startswith("{")][0])
    assert log["store"] == str(tmp_path / "from_env.db")
    assert res.exit_code == 2 and log["error"]["code"] == "E400"


# --- the worker ---------------------------------------------------------------------------


def _worker(store: str, out: str, pause: str, inputs: list[str]) -> None:
    import feedback_nlp.pipeline as pipeline
    import feedback_nlp.store as store_mod

    what, _, n = pause.partition(":")
    count = {"embed": 0, "transaction": 0}

    def stop() -> None:
        print("PAUSED", flush=True)
        time.sleep(120)

    class PausingEmbedder(FakeEmbedder):
        def encode(self, texts, **kw):
            count["embed"] += 1
            if what == "embed" and count["embed"] == int(n):
                stop()
            return super().encode(texts, **kw)

    if what == "transaction":
        real = store_mod.Store._insert_embeddings

        def insert(db, embeddings, embedder_id, run_id):
            count["transaction"] += 1
            if count["transaction"] == int(n):
                stop()
            return real(db, embeddings, embedder_id, run_id)

        store_mod.Store._insert_embeddings = staticmethod(insert)
    if what == "outputs":
        real_replace = os.replace

        def replace(src, dst):
            if Path(src).name.startswith(f".{Path(out).name}.tmp-"):  # old output already moved aside
                stop()
            return real_replace(src, dst)

        pipeline.os.replace = replace
    journey = load_journey_map(_settings().journey_map)
    settings = _settings(10)
    score(inputs, store=store, journey=journey, settings=settings, columns=load_column_map(settings.columns),
          model=keyword_model("kw-a", journey), embedder=PausingEmbedder(), out_dir=out, period="week")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])


def test_incremental_period_map_gives_themes_their_trend(tmp_path):
    """The period map compares each pain-point theme with the period before (share then, change)."""
    import json as _json

    from click.testing import CliRunner

    from conftest import ROOT
    from feedback_nlp.cli import main

    res = CliRunner().invoke(main, ["score", str(ROOT / "corpora" / "examples"), "--store", str(tmp_path / "f.db"),
                                    "--out", str(tmp_path / "out"), "--period", "month", "-q"])
    assert res.exit_code == 3, res.output  # the example has quarantined rows
    jm = _json.loads((tmp_path / "out" / "month" / "journey_map.json").read_text())
    themes = [t for s in jm["stages"] for t in s["themes"]]
    with_trend = [t for t in themes if t.get("trend")]
    assert with_trend, "no theme trend in the period map"
    for t in with_trend:
        assert t["trend"]["previous_units"] > 0
        assert abs(t["share"] - t["trend"]["previous_share"] - t["trend"]["change"]) < 1e-3


def test_incremental_score_corrects_each_scope_to_its_own_mix_and_leaves_out_what_is_not_feedback(tmp_path):
    journey = load_journey_map(_settings().journey_map)
    model = keyword_model("kw-fb", journey)
    coef = np.zeros((1, DIM))
    coef[0, _dim("football")] -= 30.0
    model.feedback = LinearHead.from_arrays(["no", "yes"], {"coef": coef, "intercept": np.array([4.0])})
    inputs = make_inputs(tmp_path / "in", light=True)
    extra = pd.DataFrame([{"id": f"FB{i}", "created_at": "2026-11-14T12:00:00Z", "channel": "chat", "segment": "",
                           "language": "en", "text": f"The football game {i} was great"} for i in range(6)])
    extra.to_csv(tmp_path / "in" / "c.csv", index=False)
    res = run_score(tmp_path, [*inputs, tmp_path / "in" / "c.csv"], model=model)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["units_not_feedback"] == 6
    assert run["label_shift"]["sentiment"]["all"]["negative"] > 0.5  # the store's own mix
    week = json.loads((tmp_path / "out" / "week" / "run.json").read_text())
    assert week["label_shift"] == run["label_shift"]  # under 300 units in the week: the all-time mix
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert units.loc[units["item_id"].str.startswith("FB"), "feedback"].eq(False).all()
    assert res.exit_code == 3  # quarantined rows as before
    with Store(tmp_path / "s.db") as st:  # stored raw: the correction is made when the maps are built
        p = st.db.execute("SELECT MIN(p_feedback), MAX(p_feedback) FROM predictions").fetchone()
    assert p[0] < 0.1 and p[1] > 0.9
