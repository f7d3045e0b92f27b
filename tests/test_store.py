import json
import os
import sqlite3
import subprocess
import sys
import unicodedata

import numpy as np
import pandas as pd
import pytest

from feedback_nlp.errors import FeedbackError, InputError
from feedback_nlp.lock import RunLock, lock_path
from feedback_nlp.store import MIGRATIONS, Store, content_hashes, text_hash


def items_frame(**over):
    base = {"item_id": ["a", "b"], "source_file": ["x.csv", "x.csv"], "row": [1, 2],
            "text": ["la fattura è sbagliata", "ottimo servizio"],
            "created_at": pd.to_datetime(["2026-11-01T10:00:00Z", None], utc=True),
            "channel": ["phone", pd.NA], "source": ["survey", "survey"], "segment": [pd.NA, "gen_z"],
            "lang": [pd.NA, "it"], "nps": pd.array([3.0, None], dtype="Float64"),
            "csat": pd.array([None, 5.0], dtype="Float64"), "resolution_hours": pd.array([None, None], dtype="Float64"),
            "fcr": pd.array([True, None], dtype="boolean")}
    base.update(over)
    return pd.DataFrame(base)


def test_store_migrations_are_numbered_recorded_and_applied_once(tmp_path):
    with Store(tmp_path / "s.db") as st:
        assert st.migrations() == [v for v, _, _ in MIGRATIONS]
        names = st.db.execute("SELECT name FROM schema_migrations").fetchall()
        assert names == [(name,) for _, name, _ in MIGRATIONS]
    with Store(tmp_path / "s.db") as st:  # reopening applies nothing again
        assert st.db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_store_newer_schema_or_broken_file_is_refused(tmp_path):
    with Store(tmp_path / "s.db") as st:
        st.db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    with pytest.raises(FeedbackError, match=r"\[E804\].*schema version 99 is newer"):
        Store(tmp_path / "s.db")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all, just bytes" * 100)
    with pytest.raises(FeedbackError, match=r"\[E803\].*junk.db: not a usable feedback_nlp store"):
        Store(tmp_path / "junk.db")
    with pytest.raises(InputError, match=r"\[E802\]"):
        Store(tmp_path)


def test_store_content_hash_follows_content_not_location():
    a = items_frame()
    h = content_hashes(a)
    assert len(set(h)) == 2 and all(len(x) == 64 for x in h)
    moved = items_frame(source_file=["y.jsonl", "y.jsonl"], row=[7, 8])
    assert content_hashes(moved).tolist() == h.tolist()  # same items in another export
    edited = items_frame(text=["la fattura è giusta", "ottimo servizio"])
    assert content_hashes(edited).tolist()[0] != h[0] and content_hashes(edited)[1] == h[1]
    rechannelled = items_frame(channel=["chat", pd.NA])
    assert content_hashes(rechannelled)[0] != h[0]


def test_store_text_hash_normalises_whitespace_and_unicode_form():
    nfd = unicodedata.normalize("NFD", "fattura sbagliata è")
    assert text_hash("  fattura\n sbagliata   è ") == text_hash(nfd) == text_hash("fattura sbagliata è")
    assert text_hash("fattura sbagliata") != text_hash("Fattura sbagliata")


def test_store_embeddings_round_trip_as_float32_per_embedder(tmp_path):
    v = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    with Store(tmp_path / "s.db") as st:
        st.put_embeddings({"h1": v[0], "h2": v[1]}, embedder_id="e1", run_id=1)
        got = st.get_embeddings("e1", ["h2", "h1", "h3"])
        assert set(got) == {"h1", "h2"}
        assert got["h1"].dtype == np.float32 and np.array_equal(got["h1"], v[0])
        assert st.get_embeddings("e2", ["h1"]) == {}  # keyed by embedder
        blob = st.db.execute("SELECT vector FROM embeddings WHERE text_hash = 'h1'").fetchone()[0]
        assert len(blob) == 8 * 4


def test_store_chunk_write_is_one_transaction(tmp_path):
    items = items_frame().assign(content_hash=lambda d: content_hashes(d))
    units = pd.DataFrame({"item_id": ["a"], "unit_idx": [0], "text": ["la fattura è sbagliata"], "lang": ["it"],
                          "start": [0], "end": [22], "content_hash": [items["content_hash"][0]],
                          "text_hash": [text_hash("la fattura è sbagliata")]})  # no prediction columns
    with Store(tmp_path / "s.db") as st:
        with pytest.raises(AttributeError):
            st.write_scored(items, units, {"h": np.zeros(4, np.float32)}, embedder_id="e", pred_key="m", run_id=1)
        for table in ("items", "units", "embeddings", "predictions"):
            assert st.count(table) == 0, table


def test_store_unit_settings_are_recorded_then_enforced(tmp_path):
    from feedback_nlp.config import Settings

    with Store(tmp_path / "s.db") as st:
        st.check_unit_settings(Settings())
        st.check_unit_settings(Settings(chunk_size=7, prior_strength=3))  # do not shape units: fine
        with pytest.raises(InputError, match=r"\[E810\].*min_unit_words: store 4, now 9"):
            st.check_unit_settings(Settings(min_unit_words=9))


def test_store_interrupted_runs_are_marked(tmp_path):
    with Store(tmp_path / "s.db") as st:
        r1 = st.start_run(pid=1, host="h", model_id="m", embedder_id="e", inputs=[{"path": "a", "sha256": "x"}])
        assert st.close_interrupted_runs() == [r1]
        runs = st.runs()
        assert runs["status"].tolist() == ["interrupted"] and runs["ended"].notna().all()
        assert json.loads(runs["inputs"][0]) == [{"path": "a", "sha256": "x"}]
        assert st.close_interrupted_runs() == []


def test_lock_second_holder_is_refused_with_the_holder_named(tmp_path):
    store = tmp_path / "s.db"
    with RunLock(store) as first:
        assert first.stale is None
        with pytest.raises(FeedbackError, match=rf"\[E801\].*another run holds the store lock \(pid {os.getpid()} on host"):
            RunLock(store).acquire()
    assert lock_path(store).read_text() == ""  # a clean release leaves no holder behind
    with RunLock(store) as again:
        assert again.stale is None


def test_lock_left_by_a_killed_process_is_recovered(tmp_path):
    store = tmp_path / "s.db"
    code = ("import os, signal, sys; from feedback_nlp.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)])
    assert proc.wait(60) == -9
    holder = json.loads(lock_path(store).read_text())
    assert holder["pid"] == proc.pid  # the dead process's details are still in the file
    with RunLock(store) as lock:  # but the kernel released its lock
        assert lock.stale == holder
        assert json.loads(lock_path(store).read_text())["pid"] == os.getpid()


def test_store_dump_ignores_run_ids_and_times(tmp_path):
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        a.start_run(pid=1, host="h", model_id="m", embedder_id="e", inputs=[])
        a.put_embeddings({"h": np.ones(3, np.float32)}, embedder_id="e", run_id=5)
        b.put_embeddings({"h": np.ones(3, np.float32)}, embedder_id="e", run_id=9)
        assert a.dump() == b.dump()
        b.put_embeddings({"g": np.ones(3, np.float32)}, embedder_id="e", run_id=9)
        assert a.dump() != b.dump()
    assert sqlite3.connect(tmp_path / "a.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_a_version_1_store_gains_p_feedback_and_keeps_its_rows(tmp_path, monkeypatch):
    import feedback_nlp.store as store_module

    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    with Store(tmp_path / "s.db") as st:
        st.db.execute("INSERT INTO items (item_id, content_hash, first_seen, last_seen) VALUES ('i', 'h', 't', 't')")
        st.db.execute("INSERT INTO predictions (item_id, content_hash, unit_idx, pred_key, model_id, stage, "
                      "stage_confidence, p_stage, p_negative, p_neutral, p_positive, sentiment, sentiment_score, "
                      "touchpoints) VALUES ('i', 'h', 0, 'k', 'm', 'billing', 0.9, '{}', 0.7, 0.2, 0.1, 'negative', "
                      "-0.6, '')")
        assert st.migrations() == [1]
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(tmp_path / "s.db") as st:
        assert st.migrations() == [1, 2]
        assert st.db.execute("SELECT stage, p_feedback FROM predictions").fetchall() == [("billing", 1.0)]
