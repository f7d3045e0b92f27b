"""The one place that knows the order of the steps: read -> clean -> language -> segment ->
embed -> classify -> score -> merge -> write.

`process_chunk` is a pure function of a chunk of items (given loaded models), so a distributed
engine can map it over partitions; `run_batch` streams chunks through it (in worker processes,
workers.py, from `workers_min_chunks` x `chunk_size` rows on), keeps only running sums, and writes every
output into a temporary folder that replaces `out_dir` at the very end, so a failed run leaves
no half-written output.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from feedback_nlp import __version__
from feedback_nlp.aggregate import Accumulator, Aggregates, Counts
from feedback_nlp.classify import Model, classify_chunk, label_units
from feedback_nlp.clean import clean_chunk, clean_text, has_content
from feedback_nlp.config import ColumnMap, JourneyMap, Settings
from feedback_nlp.errors import Reason
from feedback_nlp.language import language_chunk
from feedback_nlp.read import discover, drop_duplicate_ids, map_columns, quarantine_frame, read_raw_chunks
from feedback_nlp.records import QUARANTINED, unit_keys
from feedback_nlp.effort import effort_chunk
from feedback_nlp.segment import segment_chunk
from feedback_nlp.shift import PriorSample, Priors, estimate, train_priors
from feedback_nlp.shift import apply as apply_priors
from feedback_nlp.workers import ChunkJob, ChunkPool, can_spawn, resolve_workers, threads_per_worker
from feedback_nlp.zeroshot import (StagePrototypes, TouchpointPrototypes, build_prototypes,
                                   build_touchpoint_prototypes)


class EmbedderLike:  # the interface process_chunk needs (embed.Embedder or a test double)
    id: str

    def encode(self, texts: list[str], *, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray: ...


class StepClock:
    """Wall and CPU seconds per step, summed over calls; a chunk's clock travels back from its
    worker and adds into the run's (`merge`), so run.json says where the time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - t0
            self.cpu[step] = self.cpu.get(step, 0.0) + time.process_time() - c0

    def merge(self, other: "StepClock") -> None:
        for mine, theirs in ((self.seconds, other.seconds), (self.cpu, other.cpu)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0.0) + v


def prepare_chunk(items: pd.DataFrame, settings: Settings,
                  clock: StepClock | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The text steps: items (raw text) -> (units with effort signals, quarantine rows for items
    with nothing left after cleaning). Needs no model."""
    clock = clock or StepClock()
    with clock("clean"):
        items = clean_chunk(items)
        empty = ~items["text"].map(has_content)
        q = quarantine_frame([
            {"source_file": r.source_file, "row": int(r.row), "field": "text",
             "reason": Reason.NO_CONTENT_AFTER_CLEANING.value,
             "detail": "nothing left after removing markup, links and mentions", "text_preview": str(r.text)[:200]}
            for r in items[empty].itertuples(index=False)
        ])
        items = items[~empty]
    with clock("language"):
        items = language_chunk(items, detect_languages=settings.detect_languages, supported=settings.languages,
                               min_confidence=settings.language_min_confidence,
                               max_chars=settings.language_max_chars,
                               low_accuracy_min_chars=settings.language_low_accuracy_min_chars)
    with clock("segment"):
        units = segment_chunk(items, split_min_chars=settings.split_min_chars, min_unit_words=settings.min_unit_words)
    with clock("effort"):
        units = effort_chunk(units)
    return units, q


def embed_and_classify(units: pd.DataFrame, *, settings: Settings, journey: JourneyMap, model: Model,
                       embedder: EmbedderLike, prototypes: StagePrototypes | None = None,
                       touchpoint_prototypes: TouchpointPrototypes | None = None,
                       progress: Callable[[int], None] | None = None,
                       clock: StepClock | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Units -> (units with predictions and probabilities, their embeddings)."""
    clock = clock or StepClock()
    with clock("embed"):
        emb = embedder.encode(units["text"].astype(str).tolist(), batch_size=settings.embed_batch_size,
                              progress=progress)
    with clock("classify"):
        units = classify_chunk(units, emb, model, stage_ids=journey.stage_ids,
                               stage_min_confidence=settings.stage_min_confidence,
                               touchpoint_min_probability=settings.touchpoint_min_probability,
                               feedback_min_probability=settings.feedback_min_probability,
                               feedback_sources=settings.feedback_sources,
                               prototypes=prototypes, touchpoint_prototypes=touchpoint_prototypes)
    return units, emb


def process_chunk(items: pd.DataFrame, *, settings: Settings, journey: JourneyMap, model: Model,
                  embedder: EmbedderLike, prototypes: StagePrototypes | None = None,
                  touchpoint_prototypes: TouchpointPrototypes | None = None,
                  progress: Callable[[int], None] | None = None,
                  on_units: Callable[[int], None] | None = None,
                  clock: StepClock | None = None) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Items (raw text) -> (classified units, their embeddings, quarantine rows for items with
    nothing left after cleaning): `prepare_chunk` then `embed_and_classify`. What a worker
    process (workers.py), or a distributed engine, maps over chunks."""
    units, q = prepare_chunk(items, settings, clock)
    if on_units is not None:
        on_units(len(units))
    units, emb = embed_and_classify(units, settings=settings, journey=journey, model=model, embedder=embedder,
                                    prototypes=prototypes, touchpoint_prototypes=touchpoint_prototypes,
                                    progress=progress, clock=clock)
    return units, emb, q


def read_items(files: list[Path], settings: Settings, columns: ColumnMap,
               counts: Counts) -> Iterator[tuple[Path, pd.DataFrame, tuple[pd.DataFrame, ...]]]:
    """(file, items, the read's quarantine frames) per chunk of every file, in input order; an
    id read twice in the run keeps its first row (the later ones are quarantined)."""
    seen: dict[str, str] = {}
    for path in files:
        for raw, bad in read_raw_chunks(path, settings.chunk_size):
            counts.rows_read += len(raw) + len(bad)
            mapped = map_columns(raw, path, columns, max_text_chars=settings.max_text_chars)
            counts.add_blanked(mapped.blanked)
            items, dup_q = drop_duplicate_ids(mapped.items, seen)
            yield path, items, (quarantine_frame(bad), mapped.quarantine, dup_q)


@dataclass
class RunResult:
    out_dir: Path
    journey_map: dict[str, Any]
    scores: pd.DataFrame
    counts: Counts
    workers: int = 0
    steps: StepClock = field(default_factory=StepClock)  # the chunk steps, summed over workers


class Outputs:
    """Incremental writers into a temporary folder, moved into place by `commit`."""

    def __init__(self, out_dir: Path, write_csv: bool) -> None:
        self.out_dir = out_dir
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.write_csv = write_csv
        self._parquet = None
        self._schema = None
        self._csv_header = True
        self._q_header = True

    def units(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:
            self._schema = pa.Schema.from_pandas(df, preserve_index=False)
            self._parquet = pq.ParquetWriter(self.tmp / "units.parquet", self._schema)
        self._parquet.write_table(pa.Table.from_pandas(df, schema=self._schema, preserve_index=False))
        if self.write_csv:
            df.to_csv(self.tmp / "units.csv", mode="a", header=self._csv_header, index=False)
            self._csv_header = False

    def quarantine(self, df: pd.DataFrame) -> None:
        df = df.copy()
        df["text_preview"] = df["text_preview"].fillna("").astype(str).map(clean_text)
        df.to_csv(self.tmp / "quarantine.csv", mode="a", header=self._q_header, index=False)
        self._q_header = False

    def json(self, name: str, obj: Any) -> None:
        (self.tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n",
                                     encoding="utf-8")

    def text(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text, encoding="utf-8")

    def close(self, empty_units: pd.DataFrame) -> None:
        if self._parquet is None:
            empty_units.to_parquet(self.tmp / "units.parquet", index=False)
        else:
            self._parquet.close()
        if self._q_header:
            QUARANTINED.empty().to_csv(self.tmp / "quarantine.csv", index=False)

    def commit(self) -> None:
        old = None
        if self.out_dir.exists():
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}"
            os.replace(self.out_dir, old)
        os.replace(self.tmp, self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        _close_quietly(self._parquet)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_batch(inputs: Iterable[str | Path], *, journey: JourneyMap, settings: Settings, columns: ColumnMap,
              model: Model, embedder: EmbedderLike, out_dir: str | Path, write_csv: bool = False,
              quiet: bool = False) -> RunResult:
    """Score a dump: every file read in chunks, outputs written atomically into `out_dir`."""
    started = time.time()
    files = discover(inputs)
    model.check_embedder(embedder.id)
    prototypes = stage_prototypes(journey, model, embedder, settings)
    tp_prototypes = touchpoint_prototypes_for(journey, model, embedder, settings)
    acc = Accumulator(settings)
    acc.counts.files = len(files)
    out = Outputs(Path(out_dir), write_csv)
    bar = _progress_bar(quiet)
    clock = StepClock()
    n_workers = resolve_workers(settings.workers, threads=settings.threads,
                                device=getattr(embedder, "device", "cpu")) if can_spawn(embedder) else 0
    per_worker = threads_per_worker(settings.threads, n_workers)
    pool = ChunkPool(n_workers, ChunkJob(settings.replace(threads=per_worker), journey, model, embedder.args,
                                         prototypes, tp_prototypes), per_worker) if n_workers else None
    order: deque = deque()  # quarantine rows of the read, per chunk submitted to the pool, in order
    held: list = []         # chunks read before the workers start: a small input never starts them
    held_rows = 0           # rows, not chunks: a dump of many small files makes many short chunks
    empty_units = None
    warmer = _Warmer()
    shift = ShiftPass(out.tmp, settings, model, max_candidates=CANDIDATES_PER_SAMPLED * acc.max_negative_units) \
        if settings.label_shift else None

    def finish(units: pd.DataFrame, emb: np.ndarray, empty_q: pd.DataFrame, read_q: tuple) -> None:
        nonlocal empty_units
        q = pd.concat([df for df in (*read_q, empty_q) if len(df)] or [QUARANTINED.empty()], ignore_index=True)
        if len(q):
            out.quarantine(q)
            acc.counts.add_quarantine(q)
        if not len(units):
            if empty_units is None:
                empty_units = units
        elif shift is not None:
            shift.add(units, emb)
            return
        else:
            out.units(units)
        acc.add(units, emb)

    def in_process(items: pd.DataFrame, read_q: tuple) -> None:
        units, emb, empty_q = process_chunk(
            items, settings=settings, journey=journey, model=model, embedder=embedder, prototypes=prototypes,
            touchpoint_prototypes=tp_prototypes, progress=bar.update, clock=clock,
            on_units=lambda n: setattr(bar, "total", (bar.total or 0) + n))
        finish(units, emb, empty_q, read_q)

    def collect() -> None:
        units, emb, empty_q, chunk_clock = pool.next()
        warmer.add(units["lang"].unique() if len(units) else ())
        clock.merge(chunk_clock)
        bar.total = (bar.total or 0) + len(units)
        bar.update(len(units))
        finish(units, emb, empty_q, order.popleft())

    try:
        for path, items, read_q in read_items(files, settings, columns, acc.counts):
            if not order:  # once workers run, reading is ahead of the scoring: the bar says workers
                bar.set_description(f"{path.name}")
            if pool is None:
                in_process(items, read_q)
                continue
            held.append((items, read_q))
            held_rows += len(items) + sum(len(q) for q in read_q)
            if not order and held_rows < settings.workers_min_chunks * settings.chunk_size:
                continue  # not started yet (once started, `order` is never empty until the end)
            if not order:
                bar.set_description(f"{n_workers} workers")
            for chunk_items, chunk_q in held:
                pool.submit(chunk_items)
                order.append(chunk_q)
            held.clear()
            while pool.full():
                collect()
        for chunk_items, chunk_q in held:  # a small input, read whole: the bar names each chunk's file
            if len(chunk_items):
                bar.set_description(Path(str(chunk_items["source_file"].iloc[0])).name)
            in_process(chunk_items, chunk_q)
        while order:
            collect()
        used_workers = n_workers if pool is not None and pool.started else 0
        if pool is not None:
            pool.close()
        warmer.close()
        bar.close()
        priors = Priors()
        if shift is not None:  # every unit is known: estimate the run's class mix, then label and sum
            priors = shift.estimate()
            for units, emb, embedded in shift.replay(priors, stage_ids=journey.stage_ids):
                out.units(units)
                acc.add(units, emb, embedded=embedded)
            shift.close()
        out.close(empty_units if empty_units is not None else pd.DataFrame())
        agg = acc.finish()
        run = run_record(started=started, files=files, model=model, embedder=embedder, journey=journey,
                         prototypes=prototypes, tp_prototypes=tp_prototypes, settings=settings, counts=agg.counts,
                         priors=priors, workers=used_workers, clock=clock)
        jm = write_outputs(out, journey, agg, run)
        out.commit()
    except BaseException:
        warmer.close(abort=True)
        if pool is not None:
            pool.close(abort=True)
        if shift is not None:
            shift.close()
        bar.close()
        out.abort()
        raise
    return RunResult(Path(out_dir), jm, agg.scores, agg.counts, used_workers, clock)


# With label shift on, which units are negative is known only after the run's class mix: the
# embeddings kept for the themes' sample are those of a uniform sample (bottom-k unit keys) of
# CANDIDATES_PER_SAMPLED x max_negative_units units whose raw negative probability reaches
# CANDIDATE_MIN_NEGATIVE. Both engines keep the same ones (cluster.py).
CANDIDATE_MIN_NEGATIVE = 0.1
CANDIDATES_PER_SAMPLED = 2


class ShiftPass:
    """A run with label shift on labels its units twice: as chunks come back they are written,
    with their raw probabilities, to a scratch Parquet file in the temporary output folder, and a
    bounded sample of those probabilities is kept (shift.PriorSample); once every unit is known
    the run's class priors are estimated, and `replay` reads the chunks back corrected and
    relabelled for the real outputs and the sums. That second pass reads and writes Parquet
    only: nothing is embedded or classified again.

    Themes need the embeddings of negative units, but which units are negative is only known
    after the correction; a uniform sample (bottom-k random keys) of at most `max_candidates`
    units whose raw negative probability reaches `candidate_min_negative` keeps theirs, and the
    Accumulator samples the run's negative units among those.
    """

    def __init__(self, folder: Path, settings: Settings, model: Model, *, max_candidates: int,
                 candidate_min_negative: float = CANDIDATE_MIN_NEGATIVE) -> None:
        self.path = folder / ".units.raw.parquet"
        self.settings = settings
        self.trained = train_priors(model)
        self.max_candidates = max_candidates
        self.candidate_min_negative = candidate_min_negative
        self.sample = PriorSample()
        self._writer: Any = None
        self._schema: Any = None
        self._row = 0                                   # units written so far
        self._cand_rows: list[np.ndarray] = []          # their row numbers in the scratch file
        self._cand_keys: list[np.ndarray] = []
        self._cand_emb: list[np.ndarray] = []

    def add(self, units: pd.DataFrame, emb: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._schema = pa.Schema.from_pandas(units, preserve_index=False)
            self._writer = pq.ParquetWriter(self.path, self._schema)
        self._writer.write_table(pa.Table.from_pandas(units, schema=self._schema, preserve_index=False))
        self.sample.add(units)
        idx = np.flatnonzero(units["p_negative"].to_numpy() >= self.candidate_min_negative)
        if len(idx):
            self._cand_rows.append(self._row + idx)
            self._cand_keys.append(unit_keys(units)[idx])
            self._cand_emb.append(np.asarray(emb)[idx])
            if sum(len(k) for k in self._cand_keys) > self.max_candidates * 3 // 2:
                self._cut()
        self._row += len(units)

    def _cut(self) -> None:
        keys = np.concatenate(self._cand_keys)
        if len(keys) <= self.max_candidates:
            return
        keep = np.sort(np.argpartition(keys, self.max_candidates - 1)[:self.max_candidates])
        self._cand_rows = [np.concatenate(self._cand_rows)[keep]]
        self._cand_emb = [np.vstack(self._cand_emb)[keep]]
        self._cand_keys = [keys[keep]]

    def estimate(self) -> Priors:
        return estimate_priors(self.sample, self.trained, self.settings)

    def replay(self, priors: Priors, *, stage_ids: list[str]):
        """(units corrected and relabelled, embeddings, which rows have one) per chunk, in order."""
        import pyarrow.parquet as pq

        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        self._cut()
        rows = np.concatenate(self._cand_rows) if self._cand_rows else np.zeros(0, dtype=np.int64)
        vecs = np.vstack(self._cand_emb) if self._cand_emb else np.zeros((0, 0), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        rows, vecs = rows[order], vecs[order]
        start = 0
        s = self.settings
        pf = pq.ParquetFile(self.path)
        for group in range(pf.num_row_groups):  # one per chunk written: whole items (they are counted per chunk)
            units = pf.read_row_group(group).to_pandas()
            stop = start + len(units)
            lo, hi = np.searchsorted(rows, [start, stop])
            emb = np.zeros((len(units), vecs.shape[1] if len(vecs) else 0), dtype=np.float32)
            embedded = np.zeros(len(units), dtype=bool)
            emb[rows[lo:hi] - start] = vecs[lo:hi]
            embedded[rows[lo:hi] - start] = True
            yield relabel(units, priors, self.trained, s, stage_ids), emb, embedded
            start = stop

    def close(self) -> None:
        _close_quietly(self._writer)
        self._writer = None
        self.path.unlink(missing_ok=True)


def relabel(units: pd.DataFrame, priors: Priors, trained: dict, settings: Settings,
            stage_ids: list[str]) -> pd.DataFrame:
    """Raw probabilities -> corrected for the run's class mix, and labelled."""
    s = settings
    units = apply_priors(units, priors, trained, feedback_min_probability=s.feedback_min_probability,
                         feedback_sources=s.feedback_sources)
    return label_units(units, stage_ids=stage_ids, stage_min_confidence=s.stage_min_confidence,
                       feedback_min_probability=s.feedback_min_probability, feedback_sources=s.feedback_sources)


def estimate_priors(sample: PriorSample, trained: dict, settings: Settings) -> Priors:
    s = settings
    return estimate(sample.frame(), trained, heads=s.label_shift, min_units=s.label_shift_min_units,
                    feedback_min_probability=s.feedback_min_probability, feedback_sources=s.feedback_sources)


def run_record(*, started: float, files: list[Path], model: Model, embedder: EmbedderLike, journey: JourneyMap,
               prototypes: StagePrototypes | None, tp_prototypes: TouchpointPrototypes | None, settings: Settings,
               counts: Counts, priors: Priors, workers: int, clock: StepClock, engine: str = "local",
               **extra: Any) -> dict[str, Any]:
    """run.json: what produced the outputs (the same for every engine)."""
    return {
        "feedback_nlp_version": __version__,
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 2),
        "inputs": [str(f) for f in files],
        "model_id": model.model_id,
        "embedder_id": embedder.id,
        "journey_map": journey.path,
        "zero_shot_stages": list(prototypes.zero_shot) if prototypes else [],
        "zero_shot_touchpoints": list(tp_prototypes.ids) if tp_prototypes else [],
        "settings": settings.to_dict(),
        "counts": counts.__dict__,
        "label_shift": priors.to_dict() if priors else None,
        "engine": engine,
        "workers": workers,
        "step_seconds": {k: round(v, 2) for k, v in clock.seconds.items()},  # summed over workers
        **extra,
    }


def _close_quietly(writer: Any) -> None:
    """Close a Parquet writer on the way out of a failed run; its error would hide the run's."""
    if writer is not None:
        try:
            writer.close()
        except Exception:
            pass


class _Warmer:
    """Loads the themes step's language resources (`themes.warm_up`) in one thread, as the
    workers' chunks bring new languages, while the main process waits for them; `close` waits
    for it. A failure here is left for the themes step itself to raise."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._seen: set[str] = set()

    def add(self, langs: Iterable[Any]) -> None:
        new = {str(v) for v in langs} - self._seen
        if not new:
            return
        self._seen |= new
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="themes-warm-up")
        from feedback_nlp.themes import warm_up

        self._pool.submit(warm_up, new)

    def close(self, abort: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=abort)
            self._pool = None


def stage_prototypes(journey: JourneyMap, model: Model, embedder: EmbedderLike,
                     settings: Settings) -> StagePrototypes | None:
    """Prototypes for the map's stages when some have no trained class (else None)."""
    if not model.untrained_stages(journey.stage_ids):
        return None
    return build_prototypes(journey, lambda texts: embedder.encode(texts), list(model.stage.classes_),
                            settings.zero_shot_temperature)


def touchpoint_prototypes_for(journey: JourneyMap, model: Model, embedder: EmbedderLike,
                              settings: Settings) -> TouchpointPrototypes | None:
    """Prototypes for the map's touchpoints the touchpoint head has no label for (else None)."""
    trained = list(model.touchpoints.labels_) if model.touchpoints is not None else []
    return build_touchpoint_prototypes(journey, lambda texts: embedder.encode(texts), trained,
                                       settings.touchpoint_zero_shot_min_cosine)


def write_outputs(out: "Outputs", journey: JourneyMap, agg: Aggregates, run: dict[str, Any], *,
                  decorate: Callable[[dict[str, Any]], Any] | None = None,
                  previous: Aggregates | None = None) -> dict[str, Any]:
    """Everything derived from the aggregates: the scored map, score table, summaries.
    `decorate` may add to the merged map before it is written (incremental.py adds trends)."""
    from feedback_nlp.html_report import render_html
    from feedback_nlp.merge import merge_map, themes_and_drivers
    from feedback_nlp.report import markdown_summary

    themes, drivers = themes_and_drivers(journey, agg, run["settings"], previous=previous)
    jm = merge_map(journey, agg.scores, agg.quotes, run, themes=themes, drivers=drivers, effort=agg.effort,
                   tp_quotes=agg.touchpoint_quotes)
    if decorate is not None:
        decorate(jm)
    out.json("journey_map.json", jm)
    out.json("run.json", run)
    agg.scores.to_csv(out.tmp / "scores.csv", index=False)
    agg.partial.to_csv(out.tmp / "cells.csv", index=False)  # score sums: report.html's filters
    out.text("summary.md", markdown_summary(jm))
    out.text("report.html", render_html(jm, agg.partial))
    return jm


def _progress_bar(quiet: bool):
    from tqdm import tqdm

    return tqdm(total=0, unit="unit", desc="embedding", file=sys.stderr, disable=quiet, dynamic_ncols=True,
                leave=False)
