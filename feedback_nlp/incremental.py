"""`feedback-nlp score`: scheduled scoring into a store, costing in proportion to what is new.

A nightly run over the day's exports must not redo yesterday's work, must survive being killed
at any moment, and must never count an item twice. This module only decides *which* items need
work; the work itself is `pipeline.process_chunk`, the same steps in the same order as `run`:

1. lock the store (lock.py); runs that died mid-way are marked `interrupted`; this run is
   recorded with its input files' SHA-256;
2. every input is read in chunks (read.py). An item whose content hash is stored is only
   touched (`last_seen`). New and edited items go through `process_chunk` with an embedder that
   looks each unit's normalised text up in the store and embeds only what is missing. Each
   chunk is written in one transaction, so a killed run leaves whole chunks and the next run
   carries on from them;
3. units with no prediction under the current model and thresholds (after a model change) are
   classified from their stored embeddings, in chunks, one transaction each: nothing is
   re-embedded;
4. one ordered pass over the store feeds three `aggregate.Accumulator`s: all time, the latest
   period and the one before; trends.py compares the last two;
5. outputs are written into a temporary folder and moved into place (`pipeline.Outputs`); only
   then is the run marked finished.

Exit codes: 0 ok, 1 failed, 2 bad input or usage, 3 ok but some rows quarantined. Every
invocation writes one JSON line (status, counts, timings, flags) to stderr or a log file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from feedback_nlp import __version__
from feedback_nlp.aggregate import Accumulator, Counts
from feedback_nlp.classify import Model, classify_chunk, label_units
from feedback_nlp.config import JourneyMap, Settings
from feedback_nlp.errors import FeedbackError, InputError
from feedback_nlp.lock import RunLock, pid_alive
from feedback_nlp.pipeline import (EmbedderLike, Outputs, _progress_bar, process_chunk, read_items, stage_prototypes,
                                   touchpoint_prototypes_for, write_outputs)
from feedback_nlp.zeroshot import StagePrototypes, TouchpointPrototypes
from feedback_nlp.read import discover
from feedback_nlp.records import ITEM_CONTEXT, QUARANTINED, UNASSIGNED, UNIT
from feedback_nlp.shift import PriorSample, Priors, estimate, train_priors
from feedback_nlp.shift import apply as apply_priors
from feedback_nlp.report import md_escape
from feedback_nlp.store import Store, content_hashes, file_sha256, normalise_unit_text, text_hash
from feedback_nlp import trends as tr

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_QUARANTINED = 0, 1, 2, 3


@dataclass
class RunStats:
    """What this run did (the map's own counts describe what it covers)."""

    items_new: int = 0
    items_edited: int = 0
    items_unchanged: int = 0
    units_scored: int = 0        # units of new and edited items
    texts_embedded: int = 0      # distinct unit texts sent to the embedder
    texts_reused: int = 0        # distinct unit texts whose embedding was in the store
    units_reclassified: int = 0  # units classified from stored embeddings (new model or thresholds)
    timings: dict[str, float] = field(default_factory=dict)

    def time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = round(self.timings.get(phase, 0.0) + seconds, 3)


@dataclass
class ScoreResult:
    run_id: int
    status: str  # ok | partial
    exit_code: int
    out_dir: Path
    journey_map: dict[str, Any]
    read: Counts
    stats: RunStats
    trends: pd.DataFrame
    headlines: list[str]


class LazyEmbedder:
    """The configured embedder, loaded on first use: a night with nothing new to embed never
    imports torch. Its id is known without loading (embed.embedder_id)."""

    def __init__(self, spec: str, *, threads: int) -> None:
        from feedback_nlp.embed import embedder_id

        self.spec = spec
        self.threads = threads
        self.id = embedder_id(spec)
        self._inner: Any = None

    def load(self) -> float:
        """Load the model if not loaded yet; the seconds it took (0 when it was loaded)."""
        if self._inner is not None:
            return 0.0
        from feedback_nlp.embed import Embedder

        t0 = time.perf_counter()
        self._inner = Embedder(self.spec, threads=self.threads)
        return time.perf_counter() - t0

    def encode(self, texts: list[str], *, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        self.load()
        return self._inner.encode(texts, batch_size=batch_size, progress=progress)


class StoreEmbedder:
    """Embeds through the store: a unit text this embedder embedded before (for any item) is
    read back; only the rest reach the model. New vectors wait in `pending` until the chunk's
    transaction writes them, so a killed run never leaves a vector without its units."""

    def __init__(self, store: Store, inner: EmbedderLike, stats: RunStats) -> None:
        self.store = store
        self.inner = inner
        self.id = inner.id
        self.stats = stats
        self.pending: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], *, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        hashes = [text_hash(t) for t in texts]
        found = self.store.get_embeddings(self.id, hashes)
        found.update({h: v for h, v in self.pending.items() if h in set(hashes)})
        todo: dict[str, str] = {}
        for t, h in zip(texts, hashes):
            if h not in found and h not in todo:
                todo[h] = normalise_unit_text(t)
        self.stats.texts_reused += len(set(hashes) - set(todo))
        if todo:
            load = getattr(self.inner, "load", None)
            if load is not None:
                self.stats.time("embedder_load", load())
            t0 = time.perf_counter()
            vecs = np.asarray(self.inner.encode(list(todo.values()), batch_size=batch_size), dtype=np.float32)
            self.stats.time("embed", time.perf_counter() - t0)
            self.stats.texts_embedded += len(todo)
            new = dict(zip(todo, vecs))
            self.pending.update(new)
            found.update(new)
        if progress is not None:
            progress(len(texts))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.vstack([found[h] for h in hashes]).astype(np.float32, copy=False)


def model_fingerprint(model: Model) -> str:
    """SHA-256 of a model's labels and arrays: the same id with other weights is another model."""
    h = hashlib.sha256(model.embedder_id.encode())
    for name in ("adapter", "features", "stage", "sentiment", "touchpoints"):
        part = getattr(model, name, None)
        if part is None:
            continue
        labels = getattr(part, "labels_", getattr(part, "classes_", []))
        h.update(json.dumps([name, [str(x) for x in labels]]).encode())
        for key, arr in sorted(part.to_arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Prototypes:
    """Zero-shot prototypes of a run: map stages and touchpoints the model has no class for."""

    stages: StagePrototypes | None = None
    touchpoints: TouchpointPrototypes | None = None


def prediction_key(model: Model, settings: Settings, journey: JourneyMap, prototypes: Prototypes | None = None) -> str:
    """What a stored prediction depends on besides the embedding: the model, the thresholds
    that turn probabilities into labels, the map's stages (a stage outside the map is
    `unassigned`) and, for stages and touchpoints the model was not trained on, their
    prototypes. Change any and units are re-classified from stored embeddings."""
    h = hashlib.sha256(",".join(journey.stage_ids).encode())
    stages = prototypes.stages if prototypes is not None else None
    touchpoints = prototypes.touchpoints if prototypes is not None else None
    if stages is not None:
        h.update(np.ascontiguousarray(stages.vectors, dtype="<f8").tobytes())
        h.update(f"{stages.temperature!r}".encode())
    if touchpoints is not None:
        h.update(",".join(touchpoints.ids).encode())
        h.update(np.ascontiguousarray(touchpoints.vectors, dtype="<f8").tobytes())
        h.update(f"{touchpoints.min_cosine!r}".encode())
    return (f"{model.model_id}|stage>={settings.stage_min_confidence:g}|tp>={settings.touchpoint_min_probability:g}"
            f"|map={h.hexdigest()[:8]}")


def _prototypes(st: Store, run_id: int, journey: JourneyMap, model: Model, embedder: EmbedderLike,
                settings: Settings) -> Prototypes:
    """Prototypes for map stages and touchpoints the model has no class for (as in `run`),
    their phrases embedded through the store, so a rerun does not load the embedder for them."""
    cached = StoreEmbedder(st, embedder, RunStats())
    prototypes = Prototypes(stage_prototypes(journey, model, cached, settings),
                            touchpoint_prototypes_for(journey, model, cached, settings))
    if cached.pending:
        st.put_embeddings(cached.pending, embedder_id=embedder.id, run_id=run_id)
    return prototypes


def _recover_outputs(out_dir: Path) -> None:
    """Clear what a killed run left beside the output folder: its temporary folder, and put
    back the previous output if it was killed between the two renames of `Outputs.commit`."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for kind in ("tmp", "old"):
        for p in sorted(parent.glob(f".{out_dir.name}.{kind}-*")):
            try:
                pid = int(p.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if pid != os.getpid() and pid_alive(pid):
                continue
            if kind == "old" and not out_dir.exists():
                os.replace(p, out_dir)
            else:
                shutil.rmtree(p, ignore_errors=True)


def score(inputs: Iterable[str | Path], *, store: str | Path, journey: JourneyMap, settings: Settings,
          columns: Any, model: Model, embedder: EmbedderLike, out_dir: str | Path, period: str = "day",
          as_of: str | pd.Timestamp | None = None, write_csv: bool = False, quiet: bool = True,
          log: dict[str, Any] | None = None, lock: RunLock | None = None, session: Any = None) -> ScoreResult:
    """Score what is new in `inputs` into `store`, then rewrite the outputs from the store.

    `log`, when given, is filled as the run goes (run id, counts, timings), so a caller can
    write a run log line even when the run fails. `lock`: the store's lock, already held by the
    caller (score_command takes it before loading models, so a refused run costs nothing);
    without it, the lock is taken and released here.
    """
    log = log if log is not None else {}
    files = discover(inputs)
    if period not in tr.PERIODS:
        raise InputError("E805", f"--period {period!r}: expected one of {list(tr.PERIODS)}")
    as_of_ts = _parse_as_of(as_of)
    model.check_embedder(embedder.id)
    log.update(model_id=model.model_id, embedder_id=embedder.id, period=period)
    own_lock = lock is None
    lock = RunLock(store).acquire() if lock is None else lock
    try:
        if lock.stale:
            log["recovered_lock"] = lock.stale
        st = Store(store)
        try:
            st.check_unit_settings(settings)
            interrupted = st.close_interrupted_runs()
            if interrupted:
                log["interrupted_runs"] = interrupted
            inputs_info = [{"path": str(f), "sha256": file_sha256(f), "bytes": f.stat().st_size} for f in files]
            log["inputs"] = inputs_info
            run_id = st.start_run(pid=os.getpid(), host=socket.gethostname(), model_id=model.model_id,
                                  embedder_id=embedder.id, inputs=inputs_info)
            log["run_id"] = run_id
            try:
                st.register_model(model.model_id, model.embedder_id, model_fingerprint(model), run_id)
                prototypes = _prototypes(st, run_id, journey, model, embedder, settings)
                pred_key = prediction_key(model, settings, journey, prototypes)
                if session is not None:  # --engine dask: new items are scored on the cluster
                    session.start(_cluster_job(settings, journey, model, prototypes, session.embed_threads))
                result = _run(files, st, run_id, inputs_info, journey=journey, settings=settings, columns=columns,
                              model=model, embedder=embedder, prototypes=prototypes, pred_key=pred_key,
                              out_dir=Path(out_dir), session=session,
                              period=period, as_of=as_of_ts, write_csv=write_csv, quiet=quiet, log=log)
            except BaseException as e:
                try:
                    st.finish_run(run_id, "failed", log.get("counts", {}), error=f"{type(e).__name__}: {e}")
                except Exception:  # the store itself failing must not hide the first error
                    pass
                raise
        finally:
            st.close()
    finally:
        if own_lock:
            lock.release()
    return result


def _cluster_job(settings: Settings, journey: JourneyMap, model: Model, prototypes: Prototypes, threads: int) -> Any:
    from feedback_nlp.embed import EmbedderArgs
    from feedback_nlp.workers import ChunkJob

    s = settings.replace(threads=threads)
    args = EmbedderArgs(s.embedder, s.device, s.embed_dedup, s.gpu_batch_size, s.fast_batch_size, s.embed_cache_size)
    return ChunkJob(s, journey, model, args, prototypes.stages, prototypes.touchpoints)


def _parse_as_of(as_of: str | pd.Timestamp | None) -> pd.Timestamp | None:
    if as_of is None or as_of == "":
        return None
    try:
        ts = pd.Timestamp(as_of)
    except (ValueError, TypeError) as e:
        raise InputError("E806", f"--as-of {as_of!r}: not a date; expected e.g. 2026-11-22") from e
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _run(files: list[Path], st: Store, run_id: int, inputs_info: list[dict], *, journey: JourneyMap,
         settings: Settings, columns: Any, model: Model, embedder: EmbedderLike, prototypes: Prototypes, pred_key: str,
         out_dir: Path, period: str, as_of: pd.Timestamp | None, write_csv: bool, quiet: bool, log: dict[str, Any],
         session: Any = None) -> ScoreResult:
    started = time.time()
    stats = RunStats()
    read = Counts(files=len(files))
    log["counts"] = {"read": _read_counts(read), "run": stats.__dict__}
    _recover_outputs(out_dir)
    out = Outputs(out_dir, write_csv)
    try:
        _ingest(files, st, run_id, settings=settings, columns=columns, journey=journey, model=model,
                embedder=embedder, prototypes=prototypes, pred_key=pred_key, out=out, read=read, stats=stats,
                quiet=quiet, session=session)
        t0 = time.perf_counter()
        _backfill(st, run_id, settings=settings, journey=journey, model=model, embedder=embedder,
                  prototypes=prototypes, pred_key=pred_key, stats=stats)
        stats.time("backfill", time.perf_counter() - t0)

        key = _outputs_key(st, pred_key=pred_key, period=period, as_of=as_of, settings=settings, journey=journey,
                           inputs_info=inputs_info, write_csv=write_csv)
        current = _current_outputs(out_dir, key, period)
        if current is not None:  # nothing the maps depend on changed: the outputs in place are right
            out.abort()
            log["outputs"] = f"unchanged: written by run {current[0]['run_id']}"
            return _finish(st, run_id, read, stats, log, started, out_dir, *current)

        t0 = time.perf_counter()
        latest = as_of if as_of is not None else st.latest_created_at()
        cur_w, prev_w = tr.windows(period, latest) if latest is not None else (None, None)
        windows = {"current": cur_w, "previous": prev_w}
        priors = scope_priors(st, pred_key, settings, model, windows) if settings.label_shift else {}
        trained = train_priors(model)

        def relabel(units: pd.DataFrame, scope: str = "all") -> pd.DataFrame:
            units = units.copy()
            if priors.get(scope):
                apply_priors(units, priors[scope], trained, feedback_min_probability=settings.feedback_min_probability,
                             feedback_sources=settings.feedback_sources)
            return label_units(units, stage_ids=journey.stage_ids, stage_min_confidence=settings.stage_min_confidence,
                               feedback_min_probability=settings.feedback_min_probability,
                               feedback_sources=settings.feedback_sources)

        def needs_embedding(units: pd.DataFrame) -> np.ndarray:
            """Negative, assigned feedback units in any scope's labels: the themes samples."""
            need = np.zeros(len(units), dtype=bool)
            for scope in {"all", *(k for k, w in windows.items() if w is not None)}:
                u = units if scope == "all" else relabel(units, scope)
                need |= ((u["sentiment"] == "negative") & (u["stage"] != UNASSIGNED) & u["feedback"]).to_numpy()
            return need

        acc = {"all": Accumulator(settings), "current": Accumulator(settings), "previous": Accumulator(settings)}
        empty_units = None
        # the stored rows are raw predictions: relabel("all") is the all-time scope's correction
        for units, emb in st.scored_units(pred_key, chunk_size=settings.chunk_size, embedder_id=embedder.id,
                                          relabel=relabel, needs_embedding=needs_embedding):
            if empty_units is None:
                empty_units = units.iloc[:0]
            out.units(units)
            acc["all"].add(units, emb)
            for name, w in windows.items():
                if w is None:
                    continue
                m = w.contains(units["created_at"])
                if m.any():
                    part = units[m].reset_index(drop=True)
                    if priors.get(name) is not priors.get("all"):
                        part = relabel(part, name)
                    acc[name].add(part, None if emb is None else emb[m])
        out.close(empty_units if empty_units is not None else _empty_units())
        aggs = {k: a.finish() for k, a in acc.items()}
        stats.time("aggregate", time.perf_counter() - t0)

        t0 = time.perf_counter()
        trend = tr.compare(aggs["current"].scores, aggs["previous"].scores, alpha=settings.trend_alpha,
                           min_change_points=settings.trend_min_change_points, min_units=settings.trend_min_units)
        lines = tr.headlines(trend, journey, cur_w, prev_w)

        def decorate(jm: dict[str, Any]) -> None:
            tr.attach(jm, trend, cur_w, prev_w, alpha=settings.trend_alpha,
                      min_change_points=settings.trend_min_change_points, min_units=settings.trend_min_units)

        run = {
            "feedback_nlp_version": __version__,
            "run_id": run_id,
            "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
            "inputs": inputs_info,
            "store": str(st.path),
            "model_id": model.model_id,
            "embedder_id": embedder.id,
            "prediction_key": pred_key,
            "journey_map": journey.path,
            "zero_shot_stages": list(prototypes.stages.zero_shot) if prototypes.stages else [],
            "zero_shot_touchpoints": list(prototypes.touchpoints.ids) if prototypes.touchpoints else [],
            "settings": settings.to_dict(),
            "scope": "all time",
            "period": {"kind": period, "current": cur_w.to_dict() if cur_w else None,
                       "previous": prev_w.to_dict() if prev_w else None},
            "counts": _map_counts(aggs["all"].counts, read),
            "label_shift": priors["all"].to_dict() if priors.get("all") else None,
            "this_run": {**_read_counts(read), **asdict(stats)},
            "flags": lines,
            "outputs_key": key,
        }
        jm = write_outputs(out, journey, aggs["all"], run, decorate=decorate)
        trend.to_csv(out.tmp / "trends.csv", index=False)
        _add_trend_section(out.tmp / "summary.md", lines, cur_w, prev_w)
        sub = Outputs(out.tmp / period, write_csv=False)
        run_p = {**run, "scope": f"{period} {cur_w.label}" if cur_w else f"{period} (no dated items)",
                 "counts": _map_counts(aggs["current"].counts, read),
                 "label_shift": priors["current"].to_dict() if priors.get("current") else None}
        write_outputs(sub, journey, aggs["current"], run_p, decorate=decorate, previous=aggs["previous"])
        trend.to_csv(sub.tmp / "trends.csv", index=False)
        _add_trend_section(sub.tmp / "summary.md", lines, cur_w, prev_w)
        sub.commit()
        out.commit()
        stats.time("outputs", time.perf_counter() - t0)
    except BaseException:
        out.abort()
        log["counts"] = {"read": _read_counts(read), "run": asdict(stats)}
        raise
    log["outputs"] = "rewritten"
    return _finish(st, run_id, read, stats, log, started, out_dir, run, jm, trend)


def _finish(st: Store, run_id: int, read: Counts, stats: RunStats, log: dict[str, Any], started: float,
            out_dir: Path, run: dict[str, Any], jm: dict[str, Any], trend: pd.DataFrame) -> ScoreResult:
    status = "partial" if read.rows_quarantined else "ok"
    stats.time("total", time.time() - started)
    log["counts"] = {"read": _read_counts(read), "run": asdict(stats), "map": {
        k: v for k, v in run["counts"].items() if k in ("rows_used", "units", "units_unassigned")}}
    log["flags"] = run.get("flags", [])
    st.finish_run(run_id, status, log["counts"])
    return ScoreResult(run_id, status, EXIT_QUARANTINED if status == "partial" else EXIT_OK, out_dir, jm, read,
                       stats, trend, run.get("flags", []))


_OUTPUT_FILES = ("journey_map.json", "run.json", "scores.csv", "summary.md", "trends.csv", "quarantine.csv",
                 "units.parquet")


def _outputs_key(st: Store, *, pred_key: str, period: str, as_of: pd.Timestamp | None, settings: Settings,
                 journey: JourneyMap, inputs_info: list[dict], write_csv: bool) -> str:
    """Everything the outputs are a function of. Tonight's inputs count (by checksum) because
    quarantine.csv lists their bad rows; the store counts by its content version."""
    parts = {"version": __version__, "store": st.content_version(), "pred_key": pred_key, "period": period,
             "as_of": None if as_of is None else as_of.isoformat(), "settings": settings.to_dict(),
             "journey": journey.to_dict(), "inputs": [(i["path"], i["sha256"]) for i in inputs_info],
             "csv": write_csv}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _current_outputs(out_dir: Path, key: str, period: str) -> tuple[dict, dict, pd.DataFrame] | None:
    """(run.json, journey map, trends) of the output in place when it was built from exactly
    this state; None when it must be rebuilt (other state, a file missing or unreadable)."""
    files = [out_dir / f for f in _OUTPUT_FILES] + [out_dir / period / "journey_map.json"]
    if not all(f.is_file() for f in files):
        return None
    try:
        run = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
        if run.get("outputs_key") != key:
            return None
        jm = json.loads((out_dir / "journey_map.json").read_text(encoding="utf-8"))
        trend = pd.read_csv(out_dir / "trends.csv")
    except (OSError, ValueError):
        return None
    trend["flag"] = trend["flag"].astype(object).fillna("")
    return run, jm, trend


def _changed(files: list[Path], st: Store, run_id: int, *, settings: Settings, columns: Any, read: Counts,
             stats: RunStats, bar: Any):
    """Per chunk of the inputs: (items new or edited since stored, their content hashes, the
    hashes stored for them, the read's quarantine frames); unchanged items are only touched."""
    t0 = time.perf_counter()
    for path, items, read_q in read_items(files, settings, columns, read):
        bar.set_description(path.name)
        hashes = content_hashes(items)
        known = st.known_hashes(items["item_id"].astype(str))
        stored = items["item_id"].astype(str).map(known)
        unchanged = (stored == hashes).to_numpy(dtype=bool)
        st.touch(items.loc[unchanged, "item_id"].astype(str).tolist(), run_id)
        stats.items_unchanged += int(unchanged.sum())
        stats.time("read", time.perf_counter() - t0)
        yield items[~unchanged], hashes[~unchanged], stored[~unchanged], list(read_q)
        t0 = time.perf_counter()


def _quarantine(out: Outputs, read: Counts, frames: list[pd.DataFrame]) -> None:
    q = [df for df in frames if len(df)]
    if q:
        qdf = pd.concat(q, ignore_index=True)
        out.quarantine(qdf)
        read.add_quarantine(qdf)


def _ingest(files: list[Path], st: Store, run_id: int, *, settings: Settings, columns: Any, journey: JourneyMap,
            model: Model, embedder: EmbedderLike, prototypes: Prototypes, pred_key: str, out: Outputs, read: Counts,
            stats: RunStats, quiet: bool, session: Any = None) -> None:
    """Read every input; score new and edited items, one transaction per chunk (on the Dask
    cluster of `session` when given: `_ingest_on_cluster`)."""
    bar = _progress_bar(quiet)
    try:
        chunks = _changed(files, st, run_id, settings=settings, columns=columns, read=read, stats=stats, bar=bar)
        if session is not None:
            _ingest_on_cluster(chunks, st, run_id, session=session, embedder_id=embedder.id, pred_key=pred_key,
                               out=out, read=read, stats=stats, bar=bar)
            return
        for todo, hashes, stored, read_q in chunks:
            empty_q = QUARANTINED.empty()
            if len(todo):
                t1 = time.perf_counter()
                cached = StoreEmbedder(st, embedder, stats)
                units, _, empty_q = process_chunk(
                    todo, settings=settings, journey=journey, model=model, embedder=cached,
                    prototypes=prototypes.stages, touchpoint_prototypes=prototypes.touchpoints,
                    progress=bar.update, on_units=lambda n: setattr(bar, "total", (bar.total or 0) + n))
                stats.time("process", time.perf_counter() - t1)
                t1 = time.perf_counter()
                _write_chunk(st, run_id, todo, hashes, stored, units, cached, pred_key, stats)
                stats.time("store", time.perf_counter() - t1)
            _quarantine(out, read, [*read_q, empty_q])
    finally:
        bar.close()


@dataclass
class _Returned:
    """What `_write_chunk` reads of an embedder: the vectors to store and their embedder's id."""

    id: str
    pending: dict[str, np.ndarray]


def _ingest_on_cluster(chunks: Iterable, st: Store, run_id: int, *, session: Any, embedder_id: str, pred_key: str,
                       out: Outputs, read: Counts, stats: RunStats, bar: Any) -> None:
    """New and edited items go to the cluster chunk by chunk (reading runs ahead by
    `session.in_flight` chunks); each chunk's units and embeddings come back and are written in
    input order, one transaction each, so a client killed mid-run keeps every chunk written and
    the next run does the rest. Every unit text is embedded on the cluster (the local engine
    reads texts it embedded before from the store); only vectors the store lacks are stored."""
    from collections import deque

    waiting: deque = deque()

    def write_oldest() -> None:
        todo, hashes, stored, read_q, fut = waiting.popleft()
        empty_q = QUARANTINED.empty()
        if fut is not None:
            t1 = time.perf_counter()
            units, emb, empty_q, _clock = fut.result()
            fut.release()
            stats.time("process", time.perf_counter() - t1)
            t1 = time.perf_counter()
            vecs: dict[str, np.ndarray] = {}
            for text, vec in zip(units["text"].astype(str), np.asarray(emb, dtype=np.float32)):
                vecs.setdefault(text_hash(text), vec)
            stats.texts_embedded += len(vecs)
            have = st.get_embeddings(embedder_id, list(vecs))
            new = {h: v for h, v in vecs.items() if h not in have}
            _write_chunk(st, run_id, todo, hashes, stored, units, _Returned(embedder_id, new), pred_key, stats)
            stats.time("store", time.perf_counter() - t1)
            bar.total = (bar.total or 0) + len(units)
            bar.update(len(units))
        _quarantine(out, read, [*read_q, empty_q])

    for todo, hashes, stored, read_q in chunks:
        waiting.append((todo, hashes, stored, read_q, session.submit(todo) if len(todo) else None))
        while len(waiting) > session.in_flight:
            write_oldest()
    while waiting:
        write_oldest()


def _write_chunk(st: Store, run_id: int, todo: pd.DataFrame, hashes: pd.Series, stored: pd.Series,
                 units: pd.DataFrame, cached: StoreEmbedder, pred_key: str, stats: RunStats) -> None:
    if units.empty:
        return
    scored = todo["item_id"].astype(str).isin(set(units["item_id"].astype(str))).to_numpy()
    items = todo[scored].copy()
    items["content_hash"] = hashes[scored].to_numpy()
    lang = units.drop_duplicates("item_id").set_index("item_id")["lang"]
    items["lang"] = items["item_id"].map(lang).astype("string")
    was = stored[scored]
    stats.items_new += int(was.isna().sum())
    stats.items_edited += int(was.notna().sum())
    stats.units_scored += len(units)
    units = units.copy()
    units["content_hash"] = units["item_id"].map(dict(zip(items["item_id"], items["content_hash"])))
    units["text_hash"] = units["text"].map(text_hash)
    st.write_scored(items, units, cached.pending, embedder_id=cached.id, pred_key=pred_key, run_id=run_id)
    cached.pending.clear()


def _backfill(st: Store, run_id: int, *, settings: Settings, journey: JourneyMap, model: Model,
              embedder: EmbedderLike, prototypes: Prototypes, pred_key: str, stats: RunStats) -> None:
    """Classify stored units that have no prediction under `pred_key`, from stored embeddings."""
    last_first: tuple | None = None
    while True:
        todo = st.units_without_predictions(pred_key, settings.chunk_size)
        if todo.empty:
            return
        first = (todo["item_id"].iloc[0], int(todo["unit_idx"].iloc[0]))
        if first == last_first:  # nothing was written: never loop forever
            raise FeedbackError("E807", f"{st.path}: could not store predictions for unit {first}")
        last_first = first
        cached = StoreEmbedder(st, embedder, stats)
        emb = cached.encode(todo["text"].tolist(), batch_size=settings.embed_batch_size)
        units = todo[list(UNIT.columns)].astype(dict(UNIT.columns))
        out = classify_chunk(units, emb, model, stage_ids=journey.stage_ids,
                             stage_min_confidence=settings.stage_min_confidence,
                             touchpoint_min_probability=settings.touchpoint_min_probability,
                             feedback_min_probability=settings.feedback_min_probability,
                             feedback_sources=settings.feedback_sources,
                             prototypes=prototypes.stages, touchpoint_prototypes=prototypes.touchpoints)
        out["content_hash"] = todo["content_hash"].to_numpy()
        st.write_predictions(out, cached.pending, embedder_id=embedder.id, pred_key=pred_key, run_id=run_id)
        stats.units_reclassified += len(out)


def scope_priors(st: Store, pred_key: str, settings: Settings, model: Model,
                 windows: dict[str, Any]) -> dict[str, Priors]:
    """Label-shift priors for the all-time map and for each period's map, each from its own
    units (one read of the stored probabilities). A period with fewer than
    `label_shift_min_units` units uses the all-time priors: a quiet day says little about its mix."""
    samples = {"all": PriorSample(), **{k: PriorSample() for k, w in windows.items() if w is not None}}
    for units, _ in st.scored_units(pred_key, chunk_size=settings.chunk_size):
        samples["all"].add(units)
        for name, w in windows.items():
            if w is not None:
                m = w.contains(units["created_at"])
                if m.any():
                    samples[name].add(units[m])
    trained = train_priors(model)
    out: dict[str, Priors] = {}
    for name, sample in samples.items():
        frame = sample.frame()
        if name != "all" and len(frame) < settings.label_shift_min_units:
            out[name] = out["all"]
            continue
        out[name] = estimate(frame, trained, heads=settings.label_shift, min_units=settings.label_shift_min_units,
                             feedback_min_probability=settings.feedback_min_probability,
                             feedback_sources=settings.feedback_sources)
    return out


def _empty_units() -> pd.DataFrame:
    cols = [*UNIT.columns, *ITEM_CONTEXT, "stage", "stage_confidence", "p_negative", "p_neutral", "p_positive",
            "p_feedback", "sentiment", "sentiment_score", "feedback", "touchpoints", "model_id"]
    return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})


_READ_KEYS = ("files", "rows_read", "rows_quarantined", "quarantine_reasons", "blanked_values")


def _read_counts(read: Counts) -> dict[str, Any]:
    return {k: getattr(read, k) for k in _READ_KEYS}


def _map_counts(map_counts: Counts, read: Counts) -> dict[str, Any]:
    """Counts for merge/report: rows read and quarantined by this run; items, units and
    languages of what the map covers (which, for a store, is more than tonight's input)."""
    return {**map_counts.__dict__, **_read_counts(read)}


def _add_trend_section(path: Path, lines: list[str], cur: tr.Window | None, prev: tr.Window | None) -> None:
    """Put the flagged changes right under the summary's title, where a reader looks first."""
    if cur is None or prev is None:
        section = ["## Changes", "", "No dated items: no period to compare."]
    else:
        section = [f"## Changes: {md_escape(cur.label)} vs {md_escape(prev.label)}", ""]
        section += [f"- {md_escape(line)}" for line in lines] or ["No significant change (see trends.csv)."]
    text = path.read_text(encoding="utf-8")
    title, _, rest = text.partition("\n\n")
    path.write_text(f"{title}\n\n" + "\n".join(section) + f"\n\n{rest}", encoding="utf-8")


# --- command-line entry -----------------------------------------------------------------------


def score_command(inputs: tuple[str, ...], *, store_path: str | None, map_path: str | None, out_dir: str,
                  model_path: str | None, period: str, as_of: str | None, log_path: str | None, write_csv: bool,
                  chunk_size: int | None, config_path: str | None, columns_path: str | None,
                  column_overrides: tuple[str, ...], embedder: str | None, quiet: bool, engine: str = "local",
                  scheduler: str | None = None, workers: int | str | None = None) -> ScoreResult:
    """Load settings, map, model and embedder; score; always write one JSON log line.

    SIGTERM (systemd stop, a scheduler's timeout) ends the run like an error: the open chunk
    is rolled back, the run is marked failed, the log line is written, exit code 1.
    """
    from feedback_nlp.config import load_column_map, load_journey_map, load_settings, parse_column_overrides
    from feedback_nlp.persist import embedder_spec, load_model

    t0 = time.time()
    log: dict[str, Any] = {"event": "feedback_nlp.score", "started": _iso(t0), "pid": os.getpid(),
                           "host": socket.gethostname(), "out": out_dir, "period": period}
    previous = _on_sigterm()
    status, code, error = "failed", EXIT_FAILED, None
    try:
        settings = load_settings(config_path).replace(chunk_size=chunk_size, embedder=embedder)
        cols = load_column_map(columns_path or settings.columns, parse_column_overrides(column_overrides))
        store = store_path or settings.store
        log["store"] = str(store)
        discover(inputs)  # bad paths fail before models load
        with RunLock(store) as lock:  # so does a store another run holds
            journey = load_journey_map(map_path or settings.journey_map)
            model = load_model(model_path or settings.model)
            # a model fine-tuned with `train --fine-tune` may carry its own encoder: use it
            settings = settings.replace(embedder=embedder_spec(model, settings.embedder, explicit=embedder))
            emb = LazyEmbedder(settings.embedder, threads=settings.threads)
            session = None
            log["engine"] = engine
            if engine == "dask":
                from feedback_nlp.cluster import ClusterSession
                from feedback_nlp.workers import resolve_workers

                n = resolve_workers(workers if workers is not None else settings.workers, threads=settings.threads)
                session = ClusterSession(scheduler, workers=max(1, n), threads=settings.threads, quiet=quiet)
            try:
                result = score(inputs, store=store, journey=journey, settings=settings, columns=cols, model=model,
                               embedder=emb, out_dir=out_dir, period=period, as_of=as_of, write_csv=write_csv,
                               quiet=quiet, log=log, lock=lock, session=session)
            finally:
                if session is not None:
                    session.close()
        status, code = result.status, result.exit_code
        return result
    except FeedbackError as e:
        code = e.exit_code
        status = "bad_input" if code == EXIT_BAD_INPUT else ("locked" if e.code == "E801" else "failed")
        error = {"code": e.code, "message": str(e)}
        raise
    except BaseException as e:
        error = {"code": None, "message": f"{type(e).__name__}: {e}"}
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        log.update(status=status, exit_code=code, error=error, ended=_iso(time.time()),
                   seconds=round(time.time() - t0, 3))
        _write_log(log, log_path)


class Terminated(FeedbackError):
    """SIGTERM during a run."""


def _on_sigterm() -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated("E809", "terminated by SIGTERM; the open chunk was rolled back, the next run resumes")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _write_log(log: dict[str, Any], log_path: str | None) -> None:
    line = json.dumps(log, ensure_ascii=False, default=str, separators=(",", ":"))
    if log_path:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    else:
        print(line, file=sys.stderr, flush=True)
