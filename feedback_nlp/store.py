"""The SQLite store behind scheduled scoring: what was scored, from which text, with what, when.

Why SQLite: one file and no server for an operator to run, and transactions. Every chunk of
items is written in one transaction (item rows, their units, new embeddings, predictions), so a
run killed at any moment leaves the store as it was after the last committed chunk, and the next
run resumes by skipping what is there. The schema is created by numbered migrations recorded in
`schema_migrations`, so an older store is upgraded in place and never guessed at.

Tables:

- `items`: one row per item id: the content hash of the version scored, its context (channel,
  segment, dates, KPIs), the file and row it was read from, first and last seen.
- `units`: the units of each item's current version: redacted text, language, span, and the
  hash of the normalised text that keys its embedding.
- `embeddings`: float32 vectors keyed by (embedder id, normalised-text hash): a text is embedded
  once per embedder, whichever item it came from.
- `predictions`: per unit version and prediction key (model id plus the thresholds that turn
  probabilities into labels); an edited item's old predictions are retired, not deleted.
- `models`: model id, its embedder and a fingerprint of its files, so an id reused for other
  weights is refused instead of silently mixing predictions.
- `runs`: start, end, status, counts, model, and the input files with their SHA-256.
- `store_meta`: the settings that decide how texts become units; a run with other ones is refused.

Only redacted text is stored (clean.py runs before anything is written); the raw text is kept
only as a SHA-256 content hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from feedback_nlp.errors import FeedbackError, InputError
from feedback_nlp.records import ITEM_CONTEXT, UNIT

# Numbered migrations: (version, name, SQL). Append only; never edit a released one.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema", """
        CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE models (
            model_id TEXT PRIMARY KEY, embedder_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
            first_run INTEGER, first_used TEXT NOT NULL);
        CREATE TABLE runs (
            run_id INTEGER PRIMARY KEY AUTOINCREMENT,
            started TEXT NOT NULL, ended TEXT,
            status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'partial', 'failed', 'interrupted')),
            pid INTEGER, host TEXT, model_id TEXT, embedder_id TEXT,
            inputs TEXT NOT NULL DEFAULT '[]', counts TEXT NOT NULL DEFAULT '{}', error TEXT);
        CREATE TABLE items (
            item_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL,
            source_file TEXT, "row" INTEGER,
            created_at TEXT, channel TEXT, source TEXT, segment TEXT, lang TEXT,
            nps REAL, csat REAL, resolution_hours REAL, fcr INTEGER,
            first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
            first_run INTEGER, last_run INTEGER, scored_run INTEGER);
        CREATE INDEX items_created_at ON items (created_at);
        CREATE TABLE units (
            item_id TEXT NOT NULL REFERENCES items (item_id) ON DELETE CASCADE,
            unit_idx INTEGER NOT NULL, content_hash TEXT NOT NULL,
            text TEXT NOT NULL, text_hash TEXT NOT NULL, lang TEXT, start INTEGER, "end" INTEGER,
            PRIMARY KEY (item_id, unit_idx));
        CREATE INDEX units_text_hash ON units (text_hash);
        CREATE TABLE embeddings (
            embedder_id TEXT NOT NULL, text_hash TEXT NOT NULL, dim INTEGER NOT NULL,
            vector BLOB NOT NULL, run_id INTEGER,
            PRIMARY KEY (embedder_id, text_hash));
        CREATE TABLE predictions (
            item_id TEXT NOT NULL REFERENCES items (item_id) ON DELETE CASCADE,
            content_hash TEXT NOT NULL, unit_idx INTEGER NOT NULL,
            pred_key TEXT NOT NULL, model_id TEXT NOT NULL,
            stage TEXT NOT NULL, stage_confidence REAL NOT NULL, p_stage TEXT NOT NULL,
            p_negative REAL NOT NULL, p_neutral REAL NOT NULL, p_positive REAL NOT NULL,
            sentiment TEXT NOT NULL, sentiment_score REAL NOT NULL, touchpoints TEXT NOT NULL,
            run_id INTEGER, retired_run INTEGER,
            PRIMARY KEY (item_id, content_hash, unit_idx, pred_key));
        CREATE INDEX predictions_retired ON predictions (retired_run);
    """),
    # the feedback head's probability (models without one: 1.0, every unit is feedback)
    (2, "predictions.p_feedback", """
        ALTER TABLE predictions ADD COLUMN p_feedback REAL NOT NULL DEFAULT 1.0;
    """),
]

# Settings that decide how an item becomes units: a store holds units made one way only.
UNIT_SETTINGS = ("languages", "detect_languages", "language_min_confidence", "split_min_chars", "min_unit_words")
_HASHED_FIELDS = ("text", "created_at", "channel", "source", "segment", "lang", "nps", "csat",
                  "resolution_hours", "fcr")
_IN_BATCH = 500  # ids per `IN (...)` query, well under SQLite's variable limit
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width, so text order is time order


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def normalise_unit_text(text: str) -> str:
    """The form a unit is embedded and keyed in: NFC, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFC", str(text)).split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise_unit_text(text).encode("utf-8", "surrogatepass")).hexdigest()


def _canon(v: Any) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, pd.Timestamp):
        return v.strftime(_TS_FORMAT)
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def content_hashes(items: pd.DataFrame) -> pd.Series:
    """SHA-256 per item of its raw text and every field that reaches a score.

    The file and row it was read from are left out: the same item in tomorrow's export, or in
    two overlapping exports, is the same item and is not scored again.
    """
    cols = [items[f].astype(object).tolist() for f in _HASHED_FIELDS]
    out = []
    for values in zip(*cols):
        joined = "\x1f".join(_canon(v) for v in values)
        out.append(hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest())
    return pd.Series(out, index=items.index, dtype=object)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def unpack(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def _ts(v: Any) -> str | None:
    return None if v is None or v is pd.NaT or pd.isna(v) else pd.Timestamp(v).strftime(_TS_FORMAT)


def _num(v: Any) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def _batches(seq: list, n: int = _IN_BATCH) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Store:
    """An open store. Use `Store(path)` (created and migrated as needed), then `close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise InputError("E802", f"{self.path}: the store path is a folder; give a file path, e.g. feedback.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise FeedbackError("E803", f"{self.path}: not a usable feedback_nlp store: {e}. Restore it from a "
                                "backup (docs/scheduling.md) or give another --store path") from e

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; anything raised inside rolls the whole block back."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- schema ---------------------------------------------------------------------------

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        done = {v for (v,) in self.db.execute("SELECT version FROM schema_migrations")}
        newest = max(v for v, _, _ in MIGRATIONS)
        if done and max(done) > newest:
            raise FeedbackError("E804", f"{self.path}: store schema version {max(done)} is newer than this "
                                f"feedback_nlp knows ({newest}); upgrade feedback_nlp")
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            with self.transaction() as db:
                for stmt in (s.strip() for s in sql.split(";")):
                    if stmt:
                        db.execute(stmt)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now_iso()))

    def migrations(self) -> list[int]:
        return [v for (v,) in self.db.execute("SELECT version FROM schema_migrations ORDER BY version")]

    # --- settings and models --------------------------------------------------------------

    def check_unit_settings(self, settings: Any) -> None:
        """Record, or check against, the settings that decide how texts become units."""
        wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                  ((k, getattr(settings, k)) for k in UNIT_SETTINGS)}
        row = self.db.execute("SELECT value FROM store_meta WHERE key = 'unit_settings'").fetchone()
        if row is None:
            with self.transaction() as db:
                db.execute("INSERT INTO store_meta VALUES ('unit_settings', ?)", (json.dumps(wanted, sort_keys=True),))
            return
        stored = json.loads(row[0])
        diff = {k: (stored.get(k), wanted[k]) for k in wanted if stored.get(k) != wanted[k]}
        if diff:
            desc = "; ".join(f"{k}: store {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise InputError("E810", f"{self.path}: these settings change how texts are split into units and "
                             f"differ from the ones the store was built with ({desc}). Use the store's settings, "
                             "or start a new store (docs/scheduling.md, 'Changing settings')")

    def register_model(self, model_id: str, embedder_id: str, fingerprint: str, run_id: int | None) -> None:
        row = self.db.execute("SELECT embedder_id, fingerprint FROM models WHERE model_id = ?", (model_id,)).fetchone()
        if row is None:
            with self.transaction() as db:
                db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?)",
                           (model_id, embedder_id, fingerprint, run_id, now_iso()))
        elif row[1] != fingerprint:
            raise FeedbackError("E811", f"{self.path}: model id {model_id!r} was used before with other files "
                                f"(fingerprint {row[1][:12]}, now {fingerprint[:12]}); model versions must never be "
                                "overwritten: give the new model a new id (feedback-nlp train --out models/NEW)")

    # --- runs -----------------------------------------------------------------------------

    def close_interrupted_runs(self) -> list[int]:
        """Runs still `running` when the lock is free died mid-way: mark them `interrupted`."""
        ids = [r for (r,) in self.db.execute("SELECT run_id FROM runs WHERE status = 'running'")]
        if ids:
            with self.transaction() as db:
                db.execute("UPDATE runs SET status = 'interrupted', ended = COALESCE(ended, ?), "
                           "error = COALESCE(error, 'the process ended before the run finished') "
                           "WHERE status = 'running'", (now_iso(),))
        return ids

    def start_run(self, *, pid: int, host: str, model_id: str, embedder_id: str, inputs: list[dict]) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO runs (started, status, pid, host, model_id, embedder_id, inputs) "
                             "VALUES (?, 'running', ?, ?, ?, ?, ?)",
                             (now_iso(), pid, host, model_id, embedder_id, json.dumps(inputs)))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str, counts: Mapping[str, Any], error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, ended = ?, counts = ?, error = ? WHERE run_id = ?",
                       (status, now_iso(), json.dumps(counts, default=str), error, run_id))

    def runs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", self.db)

    # --- items ----------------------------------------------------------------------------

    def known_hashes(self, item_ids: Iterable[str]) -> dict[str, str]:
        """item id -> content hash of the version stored, for the ids that are stored."""
        out: dict[str, str] = {}
        for batch in _batches(list(item_ids)):
            q = f"SELECT item_id, content_hash FROM items WHERE item_id IN ({','.join('?' * len(batch))})"
            out.update(self.db.execute(q, batch).fetchall())
        return out

    def touch(self, item_ids: list[str], run_id: int) -> None:
        """Items seen again unchanged: only `last_seen` moves."""
        if not item_ids:
            return
        now = now_iso()
        with self.transaction() as db:
            db.executemany("UPDATE items SET last_seen = ?, last_run = ? WHERE item_id = ?",
                           [(now, run_id, i) for i in item_ids])

    def write_scored(self, items: pd.DataFrame, units: pd.DataFrame, embeddings: Mapping[str, np.ndarray], *,
                     embedder_id: str, pred_key: str, run_id: int) -> None:
        """One chunk, one transaction: item rows, their units, new embeddings, predictions.

        `items` carry `content_hash`; `units` are classified units with `text_hash`. An item
        stored before under another content hash loses its old units, and its old predictions
        are retired (kept, marked with this run), so it is never counted twice.
        """
        now = now_iso()
        ids = items["item_id"].astype(str).tolist()
        item_rows = [
            (r.item_id, r.content_hash, r.source_file, int(r.row), _ts(r.created_at), _none(r.channel),
             _none(r.source), _none(r.segment), _none(r.lang), _num(r.nps), _num(r.csat), _num(r.resolution_hours),
             None if pd.isna(r.fcr) else int(bool(r.fcr)), now, now, run_id, run_id, run_id)
            for r in items.itertuples(index=False)
        ]
        unit_rows = [
            (r.item_id, int(r.unit_idx), r.content_hash, str(r.text), r.text_hash, _none(r.lang), int(r.start),
             int(r.end))
            for r in units.itertuples(index=False)
        ]
        with self.transaction() as db:
            for batch in _batches(ids):
                marks = ",".join("?" * len(batch))
                db.execute(f"DELETE FROM units WHERE item_id IN ({marks})", batch)
            db.executemany(
                "UPDATE predictions SET retired_run = ? WHERE item_id = ? AND content_hash != ? AND retired_run IS NULL",
                [(run_id, i, h) for i, h in zip(ids, items["content_hash"])])
            db.executemany(
                'INSERT INTO items (item_id, content_hash, source_file, "row", created_at, channel, source, segment, '
                "lang, nps, csat, resolution_hours, fcr, first_seen, last_seen, first_run, last_run, scored_run) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (item_id) DO UPDATE SET content_hash = excluded.content_hash, "
                'source_file = excluded.source_file, "row" = excluded."row", created_at = excluded.created_at, '
                "channel = excluded.channel, source = excluded.source, segment = excluded.segment, "
                "lang = excluded.lang, nps = excluded.nps, csat = excluded.csat, "
                "resolution_hours = excluded.resolution_hours, fcr = excluded.fcr, last_seen = excluded.last_seen, "
                "last_run = excluded.last_run, scored_run = excluded.scored_run", item_rows)
            db.executemany('INSERT INTO units (item_id, unit_idx, content_hash, text, text_hash, lang, start, "end") '
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", unit_rows)
            self._insert_embeddings(db, embeddings, embedder_id, run_id)
            self._insert_predictions(db, units, pred_key, run_id)

    # --- embeddings -----------------------------------------------------------------------

    def get_embeddings(self, embedder_id: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for batch in _batches(sorted(set(hashes))):
            q = (f"SELECT text_hash, vector FROM embeddings WHERE embedder_id = ? AND "
                 f"text_hash IN ({','.join('?' * len(batch))})")
            out.update((h, unpack(v)) for h, v in self.db.execute(q, [embedder_id, *batch]))
        return out

    def put_embeddings(self, embeddings: Mapping[str, np.ndarray], *, embedder_id: str, run_id: int) -> None:
        with self.transaction() as db:
            self._insert_embeddings(db, embeddings, embedder_id, run_id)

    @staticmethod
    def _insert_embeddings(db: sqlite3.Connection, embeddings: Mapping[str, np.ndarray], embedder_id: str,
                           run_id: int) -> None:
        db.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?, ?)",
                       [(embedder_id, h, int(len(v)), pack(v), run_id) for h, v in embeddings.items()])

    # --- predictions ----------------------------------------------------------------------

    @staticmethod
    def _insert_predictions(db: sqlite3.Connection, units: pd.DataFrame, pred_key: str, run_id: int) -> None:
        p_cols = [c for c in units.columns if c.startswith("p_stage_")]
        p_stage = units[p_cols].to_numpy(float) if p_cols else np.zeros((len(units), 0))
        names = [c[len("p_stage_"):] for c in p_cols]
        p_feedback = units["p_feedback"].to_numpy(float) if "p_feedback" in units.columns else np.ones(len(units))
        rows = [
            (r.item_id, r.content_hash, int(r.unit_idx), pred_key, str(r.model_id), str(r.stage),
             float(r.stage_confidence), json.dumps(dict(zip(names, map(float, p)))), float(r.p_negative),
             float(r.p_neutral), float(r.p_positive), str(r.sentiment), float(r.sentiment_score),
             str(r.touchpoints or ""), run_id, float(fb))
            for r, p, fb in zip(units.itertuples(index=False), p_stage, p_feedback)
        ]
        db.executemany("INSERT OR REPLACE INTO predictions (item_id, content_hash, unit_idx, pred_key, model_id, "
                       "stage, stage_confidence, p_stage, p_negative, p_neutral, p_positive, sentiment, "
                       "sentiment_score, touchpoints, run_id, retired_run, p_feedback) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)", rows)
        # every write that can change a map goes through here, inside its transaction
        db.execute("INSERT INTO store_meta VALUES ('data_version', '1') ON CONFLICT (key) DO UPDATE "
                   "SET value = CAST(value AS INTEGER) + 1")

    def units_without_predictions(self, pred_key: str, limit: int) -> pd.DataFrame:
        """Current units with no prediction under `pred_key` (a new model, or new thresholds)."""
        q = ('SELECT u.item_id, u.unit_idx, u.content_hash, u.text, u.text_hash, u.lang, u.start, u."end" '
             "FROM units u WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.item_id = u.item_id "
             "AND p.content_hash = u.content_hash AND p.unit_idx = u.unit_idx AND p.pred_key = ?) "
             "ORDER BY u.item_id, u.unit_idx LIMIT ?")
        return pd.read_sql_query(q, self.db, params=(pred_key, limit))

    def write_predictions(self, units: pd.DataFrame, embeddings: Mapping[str, np.ndarray], *, embedder_id: str,
                          pred_key: str, run_id: int) -> None:
        with self.transaction() as db:
            self._insert_embeddings(db, embeddings, embedder_id, run_id)
            self._insert_predictions(db, units, pred_key, run_id)

    # --- reading for the map --------------------------------------------------------------

    def content_version(self) -> dict[str, Any]:
        """Changes whenever what the maps are built from changes: the write counter, plus row
        counts and the newest date, so rows deleted by hand (retention) count as a change too."""
        (v,) = self.db.execute("SELECT value FROM store_meta WHERE key = 'data_version'").fetchone() or (None,)
        counts = {t: self.count(t) for t in ("items", "units", "predictions")}
        (latest,) = self.db.execute("SELECT MAX(created_at) FROM items").fetchone()
        return {"data_version": v, **counts, "latest": latest}

    def latest_created_at(self) -> pd.Timestamp | None:
        (v,) = self.db.execute("SELECT MAX(created_at) FROM items").fetchone()
        return None if v is None else pd.Timestamp(v)

    def scored_units(self, pred_key: str, *, chunk_size: int, embedder_id: str | None = None,
                     relabel: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                     needs_embedding: Callable[[pd.DataFrame], np.ndarray] | None = None
                     ) -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
        """Every current unit with its item's context and its prediction under `pred_key`,
        in item order, in chunks that never split an item (so per-item counts stay right).

        `relabel` turns a chunk as stored into the chunk the caller wants (label-shift correction,
        the feedback label). With `embedder_id`, also the embeddings of the rows `needs_embedding`
        marks (default: the negative, assigned units of the relabelled chunk, the only ones an
        Accumulator samples for themes); other rows are zeros.
        """
        q = ('SELECT u.item_id, u.unit_idx, u.text, u.lang, u.start, u."end", i.source_file, i."row", '
             "i.created_at, i.channel, i.source, i.segment, i.nps, i.csat, i.resolution_hours, i.fcr, "
             "p.stage, p.stage_confidence, p.p_stage, p.p_negative, p.p_neutral, p.p_positive, p.p_feedback, "
             "p.sentiment, p.sentiment_score, p.touchpoints, p.model_id, u.text_hash "
             "FROM units u JOIN items i ON i.item_id = u.item_id "
             "JOIN predictions p ON p.item_id = u.item_id AND p.content_hash = u.content_hash "
             "AND p.unit_idx = u.unit_idx AND p.pred_key = ? "
             "ORDER BY u.item_id, u.unit_idx")
        cur = self.db.execute(q, (pred_key,))
        names = [d[0] for d in cur.description]
        pending: list[tuple] = []
        while True:
            rows = cur.fetchmany(chunk_size)
            if not rows:
                break
            pending.extend(rows)
            last = pending[-1][0]
            cut = len(pending)
            while cut > 0 and pending[cut - 1][0] == last:
                cut -= 1
            if cut == 0:  # one item larger than a chunk: wait for the next fetch
                continue
            yield self._frame(pending[:cut], names, embedder_id, relabel, needs_embedding)
            pending = pending[cut:]
        if pending:
            yield self._frame(pending, names, embedder_id, relabel, needs_embedding)

    def _frame(self, rows: list[tuple], names: list[str], embedder_id: str | None,
               relabel: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
               needs_embedding: Callable[[pd.DataFrame], np.ndarray] | None = None
               ) -> tuple[pd.DataFrame, np.ndarray | None]:
        df = pd.DataFrame.from_records(rows, columns=names)
        p_stage = pd.DataFrame([json.loads(s) for s in df.pop("p_stage")], index=df.index)
        p_stage.columns = [f"p_stage_{c}" for c in p_stage.columns]
        hashes = df.pop("text_hash")
        df["created_at"] = pd.to_datetime(df["created_at"], utc=True, format="ISO8601")
        df["fcr"] = df["fcr"].astype("Float64").astype("boolean")
        for c in ("nps", "csat", "resolution_hours"):
            df[c] = df[c].astype("Float64")
        for c in ("item_id", "text", "lang", "source_file", "channel", "source", "segment", "stage", "sentiment",
                  "touchpoints", "model_id"):
            df[c] = df[c].astype("string")
        for c in ("unit_idx", "start", "end", "row"):
            df[c] = df[c].astype("int64")
        head = [*UNIT.columns, *ITEM_CONTEXT, "stage", "stage_confidence"]
        tail = ["p_negative", "p_neutral", "p_positive", "p_feedback", "sentiment", "sentiment_score", "touchpoints",
                "model_id"]
        df = pd.concat([df[head], p_stage, df[tail]], axis=1)
        if relabel is not None:
            df = relabel(df)
        emb = None
        if embedder_id is not None:
            neg = needs_embedding(df) if needs_embedding is not None else \
                ((df["sentiment"] == "negative") & (df["stage"] != "unassigned")).to_numpy()
            found = self.get_embeddings(embedder_id, hashes[neg]) if neg.any() else {}
            dim = len(next(iter(found.values()))) if found else 0
            emb = np.zeros((len(df), dim), dtype=np.float32)
            for i in np.flatnonzero(neg):
                v = found.get(hashes.iloc[i])
                if v is not None:
                    emb[i] = v
        return df, emb

    # --- inspection -----------------------------------------------------------------------

    def dump(self) -> dict[str, list[tuple]]:
        """The store's content without run ids and times, in a fixed order: two stores that
        scored the same data the same way dump equal, however their runs were interrupted."""
        q = {
            "items": 'SELECT item_id, content_hash, source_file, "row", created_at, channel, source, segment, lang, '
                     "nps, csat, resolution_hours, fcr FROM items ORDER BY item_id",
            "units": 'SELECT item_id, unit_idx, content_hash, text, text_hash, lang, start, "end" FROM units '
                     "ORDER BY item_id, unit_idx",
            "embeddings": "SELECT embedder_id, text_hash, dim, hex(vector) FROM embeddings "
                          "ORDER BY embedder_id, text_hash",
            "predictions": "SELECT item_id, content_hash, unit_idx, pred_key, model_id, stage, stage_confidence, "
                           "p_stage, p_negative, p_neutral, p_positive, p_feedback, sentiment, sentiment_score, touchpoints, "
                           "retired_run IS NOT NULL FROM predictions ORDER BY item_id, content_hash, unit_idx, "
                           "pred_key",
            "models": "SELECT model_id, embedder_id, fingerprint FROM models ORDER BY model_id",
            "store_meta": "SELECT key, value FROM store_meta WHERE key != 'data_version' ORDER BY key",
        }
        return {name: self.db.execute(sql).fetchall() for name, sql in q.items()}

    def count(self, table: str, where: str = "") -> int:
        if table not in {"items", "units", "embeddings", "predictions", "runs", "models"}:
            raise ValueError(table)
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0])


def _none(v: Any) -> Any:
    return None if v is None or v is pd.NA or (not isinstance(v, str) and pd.isna(v)) else v
