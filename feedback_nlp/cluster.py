"""The Dask engine (`--engine dask`): the very same chunk steps (`pipeline.process_chunk`) on a
Dask cluster, a `LocalCluster` on this machine or any scheduler given by `--scheduler`.

The shape of a run (`run_batch_dask`):

1. every input is split into blocks of about `chunk_size` records (read.plan_blocks), which
   the workers read themselves, so a task is a few bytes and a lost one is simply read again;
2. ids: each block's item ids come back (cheap: read and map only), and the client, going
   through them in input order, tells each block which of its ids an earlier block already
   had: the local engine's duplicate rule, exactly;
3. partitions: each block is read, mapped and scored by `process_chunk` with the model and
   embedder its worker loaded once (`JobPlugin`); its units are written by the worker into the
   run's temporary output folder (`units/part-NNNNN.parquet`, written under a temporary name
   and renamed), and it returns an `aggregate.Accumulator` of its units plus its quarantine
   rows. With label shift on, this pass writes raw probabilities to scratch files instead and
   returns the partition's prior sample; the client estimates the run's class mix from the
   merged samples, and a second pass relabels each partition (reading only its scratch file)
   before writing and accumulating it, as the local engine's ShiftPass does;
4. the partitions' accumulators are merged in a tree on the cluster (`split_every` at a time,
   in input order); themes, drivers, the map and the report are built once, on the client,
   from the merged state, and the outputs are moved into place as by the local engine.

The output folder must be on storage every worker can write (the same disk for a LocalCluster;
NFS or another shared mount for a cluster of hosts): the client checks, and says so if not.
Sampling is by a hash of each unit (records.unit_keys), so the merged samples, quotes and
counts are the local engine's; sums may differ in their last bits (summation order), below the
map's four decimals.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from feedback_nlp.aggregate import Accumulator, Counts
from feedback_nlp.config import ColumnMap, JourneyMap, Settings
from feedback_nlp.errors import FeedbackError, InputError, Reason
from feedback_nlp.read import (Block, discover, drop_duplicate_ids, map_columns, plan_blocks, quarantine_frame,
                               read_block, row_location)
from feedback_nlp.records import QUARANTINED, unit_keys
from feedback_nlp.workers import threads_per_worker

try:
    from distributed import WorkerPlugin
except ImportError:  # the engine is an extra: `pip install -e '.[dask]'`
    WorkerPlugin = object  # type: ignore[misc,assignment]

PLUGIN = "feedback-nlp-job"
SPLIT_EVERY = 8            # accumulators merged per reduction task


def require_dask() -> None:
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise FeedbackError("E920", "--engine dask needs Dask: pip install -e '.[dask]' (dask and distributed)")


# --- what every worker holds ------------------------------------------------------------------


@dataclass
class ClusterJob:
    """What every partition needs besides its block; pickled once by the client, sent once to
    each worker (also to workers that join or restart later) by the plugin."""

    chunk: Any          # workers.ChunkJob: settings, journey, model, embedder args, prototypes
    columns: ColumnMap
    embed_threads: int = 1


class JobPlugin(WorkerPlugin):  # type: ignore[misc,valid-type]
    """Holds the run's job on a worker and builds its embedder once, on first use."""

    name = PLUGIN

    def __init__(self, blob: bytes, token: str) -> None:
        self.blob = blob
        self.token = token
        self._job: ClusterJob | None = None
        self._embedder: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"blob": self.blob, "token": self.token}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["blob"], state["token"])  # type: ignore[misc]

    def setup(self, worker: Any = None) -> None:
        self._job = pickle.loads(self.blob)  # bytes this run's own client pickled, never a user's file
        if worker is not None:  # a worker of an external cluster: stop its statistical profiler (WORKER_CONFIG)
            for name in ("profile", "profile-cycle"):
                callback = getattr(worker, "periodic_callbacks", {}).get(name)
                if callback is not None:
                    callback.stop()

    @property
    def job(self) -> ClusterJob:
        if self._job is None:
            self.setup()
        assert self._job is not None
        return self._job

    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                self._embedder = self.job.chunk.embedder_args.build(self.job.embed_threads)
            return self._embedder


def _plugin(token: str) -> JobPlugin:
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN)
    if plugin is None or plugin.token != token:
        raise RuntimeError("this worker does not hold the run's job (another run replaced it?)")
    return plugin


# --- the tasks (each a plain function of its inputs, testable without a cluster) --------------


@dataclass
class PartOut:
    """What a partition sends back to the client: small, whatever the partition's size."""

    part: int
    quarantine: pd.DataFrame
    counts: Counts                 # rows read, blanked values, quarantine (the read's counts)
    clock: Any                     # pipeline.StepClock
    units: int = 0
    empty_units: pd.DataFrame | None = None  # the units' columns, for a run that has none at all
    state: Any = None              # Accumulator, or ShiftState with label shift on
    failed: str | None = None
    languages: tuple[str, ...] = ()  # of its units: the client loads the themes step's resources meanwhile


@dataclass
class ShiftState:
    """Pass one's mergeable state with label shift on: the prior sample and the smallest
    sampling keys of the units that may turn out negative (their embeddings are kept)."""

    sample: Any                                   # shift.PriorSample
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0))
    max_keys: int = 40000

    def merge(self, other: "ShiftState") -> "ShiftState":
        self.sample.merge(other.sample)
        self.keys = np.sort(np.concatenate([self.keys, other.keys]))[:self.max_keys]
        return self


def block_ids(block: Block, columns: ColumnMap, settings: Settings) -> tuple[list[str], list[str]]:
    """The block's item ids and where each is, in order (the read and mapping only)."""
    ids: list[str] = []
    where: list[str] = []
    for raw, _ in read_block(block, settings.chunk_size):
        items = map_columns(raw, Path(block.path), columns, max_text_chars=settings.max_text_chars).items
        ids += items["item_id"].astype(str).tolist()
        where += [row_location(s, r) for s, r in zip(items["source_file"], items["row"])]
    return ids, where


def earlier_ids(blocks_ids: Iterable[tuple[list[str], list[str]]]) -> Iterable[dict[str, str]]:
    """For each block in input order (its ids and where each is), the ids an earlier block
    already had, with where they were first read: what `read.drop_duplicate_ids` needs to
    quarantine exactly the rows the local engine quarantines. Lazy: block i's answer is ready
    as soon as blocks 0..i are known. Memory: one entry per distinct id, as in the local engine."""
    seen: dict[str, tuple[int, str]] = {}
    for i, (ids, where) in enumerate(blocks_ids):
        earlier: dict[str, str] = {}
        for item_id, loc in zip(ids, where):
            first = seen.get(item_id)
            if first is None:
                seen[item_id] = (i, loc)
            elif first[0] < i:
                earlier[item_id] = first[1]
        yield earlier


def score_block(block: Block, part: int, earlier: dict[str, str], *, job: ClusterJob, embedder: Any,
                folder: Path, shift: bool, max_negative_units: int) -> PartOut:
    """Read, map and score one block; write its units (or, with label shift, its scratch file)."""
    from feedback_nlp.pipeline import CANDIDATE_MIN_NEGATIVE, CANDIDATES_PER_SAMPLED, StepClock, process_chunk
    from feedback_nlp.shift import PriorSample

    settings: Settings = job.chunk.settings
    clock = StepClock()
    counts = Counts()
    with clock("read"):
        raws = list(read_block(block, settings.chunk_size))  # an unreadable file raises its InputError
    frames, qs = [], []
    seen = dict(earlier)  # ids of earlier blocks, then this block's own as they come
    for raw, bad in raws:
        counts.rows_read += len(raw) + len(bad)
        mapped = map_columns(raw, Path(block.path), job.columns, max_text_chars=settings.max_text_chars)
        counts.add_blanked(mapped.blanked)
        items, dup_q = drop_duplicate_ids(mapped.items, seen)
        frames.append(items)
        qs += [quarantine_frame(bad), mapped.quarantine, dup_q]
    n_candidates = CANDIDATES_PER_SAMPLED * max_negative_units
    items = pd.concat(frames, ignore_index=True) if frames else None
    try:
        if items is None:
            raise InputError("E108", f"{block.path}: block {block.name} holds no rows")
        units, emb, empty_q = process_chunk(items, settings=settings, journey=job.chunk.journey, model=job.chunk.model,
                                            embedder=embedder, prototypes=job.chunk.prototypes,
                                            touchpoint_prototypes=job.chunk.touchpoint_prototypes, clock=clock)
    except InputError:
        raise
    except Exception as e:  # the partition's data broke a step: its rows are quarantined, the run goes on
        q = pd.concat([*(x for x in qs if len(x)), _failed_rows(items, e)], ignore_index=True)
        counts.add_quarantine(q)
        return PartOut(part, q, counts, clock,
                       state=ShiftState(PriorSample(), max_keys=n_candidates) if shift
                       else Accumulator(settings, max_negative_units=max_negative_units),
                       failed=f"{type(e).__name__}: {e}")
    q = pd.concat([x for x in (*qs, empty_q) if len(x)] or [QUARANTINED.empty()], ignore_index=True)
    counts.add_quarantine(q)
    out = PartOut(part, q, counts, clock, units=len(units), empty_units=units.iloc[:0],
                  languages=tuple(str(x) for x in units["lang"].unique()) if len(units) else ())
    with clock("write"):
        if shift:
            sample = PriorSample()
            sample.add(units)
            keys = unit_keys(units)
            cand = np.flatnonzero(units["p_negative"].to_numpy() >= CANDIDATE_MIN_NEGATIVE) if len(units) else \
                np.zeros(0, dtype=np.int64)
            cand = cand[np.argsort(keys[cand], kind="stable")[:n_candidates]]
            if len(units):
                _write_parquet(units, folder / ".shift" / f"part-{part:05d}.parquet")
                _write_npz(np.asarray(emb, dtype=np.float32)[np.sort(cand)], np.sort(cand),
                           folder / ".shift" / f"part-{part:05d}.npz")
            out.state = ShiftState(sample, np.sort(keys[cand]), max_keys=n_candidates)
        else:
            if len(units):
                _write_parquet(units, folder / "units" / f"part-{part:05d}.parquet")
            acc = Accumulator(settings, max_negative_units=max_negative_units)
            acc.add(units, emb)
            out.state = acc
    return out


def relabel_part(part: int, priors: Any, key_cut: float, *, job: ClusterJob, folder: Path,
                 max_negative_units: int) -> Accumulator:
    """Pass two with label shift: the partition's raw units corrected, labelled, written, summed."""
    from feedback_nlp.pipeline import relabel
    from feedback_nlp.shift import train_priors

    settings: Settings = job.chunk.settings
    units = pd.read_parquet(folder / ".shift" / f"part-{part:05d}.parquet")
    with np.load(folder / ".shift" / f"part-{part:05d}.npz") as z:
        vecs, rows = z["vecs"], z["rows"]
    keys = unit_keys(units)
    keep = keys[rows] <= key_cut
    rows, vecs = rows[keep], vecs[keep]
    emb = np.zeros((len(units), vecs.shape[1] if vecs.ndim == 2 and len(vecs) else 0), dtype=np.float32)
    embedded = np.zeros(len(units), dtype=bool)
    emb[rows] = vecs
    embedded[rows] = True
    units = relabel(units, priors, train_priors(job.chunk.model), settings, job.chunk.journey.stage_ids)
    _write_parquet(units, folder / "units" / f"part-{part:05d}.parquet")
    acc = Accumulator(settings, max_negative_units=max_negative_units)
    acc.add(units, emb, embedded=embedded)
    return acc


def merge_states(*states: Any) -> Any:
    """Merge partition states (Accumulators, or ShiftStates) left to right: input order kept."""
    first = copy.deepcopy(states[0])  # inputs are other tasks' results: a retried merge must find them intact
    for s in states[1:]:
        first = first.merge(s)
    return first


def _failed_rows(items: pd.DataFrame, e: Exception) -> pd.DataFrame:
    detail = f"the partition's steps failed on its data: {type(e).__name__}: {e}"[:500]
    return quarantine_frame([
        {"source_file": r.source_file, "row": int(r.row), "field": "text", "reason": Reason.PARTITION_FAILED.value,
         "detail": detail, "text_preview": str(r.text)[:200]} for r in items.itertuples(index=False)])


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Written under a temporary name and renamed: a retried partition overwrites a whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _write_npz(vecs: np.ndarray, rows: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.npz")
    np.savez(tmp, vecs=vecs, rows=rows)
    os.replace(tmp, path)


# --- task wrappers: the same functions, with the job from the worker's plugin ------------------


def _ids_task(token: str, block: Block) -> tuple[list[str], list[str]]:
    job = _plugin(token).job
    return block_ids(block, job.columns, job.chunk.settings)


def _score_task(token: str, block: Block, part: int, earlier: dict[str, str], folder: str, shift: bool,
                max_negative_units: int) -> PartOut:
    plugin = _plugin(token)
    return score_block(block, part, earlier, job=plugin.job, embedder=plugin.embedder(), folder=Path(folder),
                       shift=shift, max_negative_units=max_negative_units)


def _relabel_task(token: str, part: int, priors: Any, key_cut: float, folder: str,
                  max_negative_units: int) -> Accumulator:
    return relabel_part(part, priors, key_cut, job=_plugin(token).job, folder=Path(folder),
                        max_negative_units=max_negative_units)


def _info(out: PartOut) -> PartOut:
    """The partition's result without its state (which stays on the cluster for the tree)."""
    return PartOut(out.part, out.quarantine, out.counts, out.clock, out.units, out.empty_units, None, out.failed,
                   out.languages)


def _state(out: PartOut) -> Any:
    return out.state


class OrderedTree:
    """Merge futures in a tree as they are pushed, `split_every` at a time, input order kept;
    only about `split_every` x log(n) partial states wait on the cluster at any time."""

    def __init__(self, client: Any, split_every: int = SPLIT_EVERY) -> None:
        self.client = client
        self.split_every = split_every
        self.levels: list[list[Any]] = []

    def push(self, fut: Any, level: int = 0) -> None:
        while len(self.levels) <= level:
            self.levels.append([])
        self.levels[level].append(fut)
        if len(self.levels[level]) == self.split_every:
            group, self.levels[level] = self.levels[level], []
            self.push(self.client.submit(merge_states, *group, pure=False), level + 1)

    def result(self) -> Any:
        rest = [f for level in reversed(self.levels) for f in level]  # older (higher) levels first
        if not rest:
            return None
        while len(rest) > 1:
            rest = [self.client.submit(merge_states, *rest[i:i + self.split_every], pure=False) if
                    len(rest[i:i + self.split_every]) > 1 else rest[i] for i in range(0, len(rest), self.split_every)]
        return rest[0].result()


# --- the client's side -------------------------------------------------------------------------


def connect(scheduler: str | None, *, workers: int, threads: int, memory_limit: str | None = None,
            quiet: bool = True) -> tuple[Any, Any]:
    """(client, cluster): the scheduler at `scheduler`, or a LocalCluster of `workers` processes
    with one task thread each (cluster is None for an external scheduler)."""
    require_dask()
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as e:
            raise FeedbackError("E921", f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})") from e
    import dask

    with dask.config.set(WORKER_CONFIG | {"distributed.nanny.pre-spawn-environ":
                                          worker_environ(threads_per_worker(threads, workers))}):
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit=memory_limit or "auto",
                               silence_logs=logging.ERROR if quiet else logging.WARNING)
    return Client(cluster), cluster


# Dask's statistical profiler samples every worker's task thread every 10 ms; over steps that
# are mostly Python holding the GIL (segmentation, effort, the embedder's glue) it made every
# step 1.4-1.6x slower here (docs/scaling.md). The job plugin stops it on an external cluster's workers.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


def worker_environ(threads: int) -> dict[str, Any]:
    """The environment a worker process starts with: Dask's own, with every thread pool sized to
    the worker's share of the cores, lingua's Rust pool (RAYON_NUM_THREADS) included, as workers.py
    does for the local engine's processes, and without the MALLOC_TRIM_THRESHOLD_ Dask's nanny
    sets: glibc then hands memory back after every large temporary array, which cost 14-18 s of
    system time per 20,000 items here (docs/scaling.md)."""
    import dask

    from feedback_nlp.workers import THREAD_VARS

    env = {**dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}),
           **{var: str(threads) for var in THREAD_VARS}}
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def run_batch_dask(inputs: Iterable[str | Path], *, journey: JourneyMap, settings: Settings, columns: ColumnMap,
                   model: Any, embedder: Any, out_dir: str | Path, write_csv: bool = False, quiet: bool = False,
                   scheduler: str | None = None, client: Any = None,
                   split_every: int = SPLIT_EVERY, on_progress: Callable[[int], None] | None = None) -> Any:
    """`pipeline.run_batch` on a Dask cluster: the same outputs, in the same temporary-folder way.
    `client`: an existing distributed.Client to use (it is left open)."""
    from feedback_nlp.pipeline import (Outputs, RunResult, StepClock, _progress_bar, _Warmer, estimate_priors,
                                       run_record, stage_prototypes, touchpoint_prototypes_for, write_outputs)
    from feedback_nlp.shift import Priors, train_priors
    from feedback_nlp.workers import ChunkJob, can_spawn, resolve_workers

    require_dask()
    started = time.time()
    files = discover(inputs)
    model.check_embedder(embedder.id)
    if not can_spawn(embedder):
        raise FeedbackError("E922", "--engine dask: this embedder cannot be rebuilt on a worker (no `args`)")
    prototypes = stage_prototypes(journey, model, embedder, settings)
    tp_prototypes = touchpoint_prototypes_for(journey, model, embedder, settings)
    blocks = [b for f in files for b in plan_blocks(f, settings.chunk_size)]
    n_workers = max(1, resolve_workers(settings.workers, threads=settings.threads) or 1)
    own = client is None
    cluster = None
    if own:
        client, cluster = connect(scheduler, workers=n_workers, threads=settings.threads, quiet=quiet)
    embed_threads = threads_per_worker_for(scheduler, settings.threads, n_workers)
    job = ClusterJob(ChunkJob(settings.replace(threads=embed_threads), journey, model, embedder.args, prototypes,
                              tp_prototypes), columns, embed_threads)
    token = uuid.uuid4().hex
    out = Outputs(Path(out_dir), write_csv)
    folder = str(out.tmp.resolve())
    max_neg = Accumulator(settings).max_negative_units
    shift = bool(settings.label_shift)
    bar = _progress_bar(quiet)
    bar.unit, bar.total = "partition", len(blocks) * (2 if shift else 1)
    clock = StepClock()
    read_counts = Counts(files=len(files))
    warmer = _Warmer()
    try:
        client.register_plugin(JobPlugin(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL), token), name=PLUGIN)
        bar.set_description(f"dask: {len(client.scheduler_info().get('workers', {}))} workers")
        id_futs = client.map(_ids_task, [token] * len(blocks), blocks, pure=False)
        tree = OrderedTree(client, split_every)
        infos = []

        def ids_in_order():
            for fut in id_futs:
                yield fut.result()
                fut.release()

        for i, earlier in enumerate(earlier_ids(ids_in_order())):
            res = client.submit(_score_task, token, blocks[i], i, earlier, folder, shift, max_neg, pure=False)
            infos.append(client.submit(_info, res, pure=False))
            tree.push(client.submit(_state, res, pure=False))
            del res
        parts_with_units: list[int] = []
        empty_units = None
        failed = 0
        for fut in infos:  # in input order: quarantine.csv lists rows as the local engine does
            info: PartOut = fut.result()
            fut.release()
            clock.merge(info.clock)
            read_counts.merge(info.counts)
            if len(info.quarantine):
                out.quarantine(info.quarantine)
            if info.units:
                parts_with_units.append(info.part)
            elif empty_units is None and info.empty_units is not None:
                empty_units = info.empty_units
            failed += info.failed is not None
            warmer.add(info.languages)
            bar.update(1)
            if on_progress is not None:
                on_progress(info.part)
        state = tree.result()
        priors = Priors()
        if shift:
            trained = train_priors(model)
            priors = estimate_priors(state.sample, trained, settings)
            cut = float(state.keys[-1]) if len(state.keys) >= state.max_keys else float("inf")
            tree = OrderedTree(client, split_every)
            for part in parts_with_units:
                tree.push(client.submit(_relabel_task, token, part, priors, cut, folder, max_neg, pure=False))
            rel = tree.result()
            bar.update(len(blocks))
            state = rel if rel is not None else Accumulator(settings)
            shutil.rmtree(Path(folder) / ".shift", ignore_errors=True)
        acc: Accumulator = state if state is not None else Accumulator(settings)
        bar.close()
        warmer.close()
        with clock("write"):
            _check_parts(Path(folder), parts_with_units)
            n_units = _single_file(Path(folder), parts_with_units, empty_units, write_csv,
                                   settings.units_single_file_max)
        acc.counts.merge(read_counts)
        agg = acc.finish()
        workers_used = len(client.scheduler_info().get("workers", {}))
        run = run_record(started=started, files=files, model=model, embedder=embedder, journey=journey,
                         prototypes=prototypes, tp_prototypes=tp_prototypes, settings=settings, counts=agg.counts,
                         priors=priors, workers=workers_used, clock=clock, engine="dask",
                         dask={"scheduler": scheduler or "LocalCluster", "partitions": len(blocks),
                               "partitions_failed": int(failed), "units_files": len(parts_with_units),
                               "units_single_file": n_units is not None})
        jm = write_outputs(out, journey, agg, run)
        out.commit()
    except BaseException:
        warmer.close(abort=True)
        bar.close()
        out.abort()
        raise
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return RunResult(Path(out_dir), jm, agg.scores, agg.counts, workers_used, clock)


class ClusterSession:
    """`score --engine dask`: a connection to the cluster that scores chunks of items sent by
    the client (which keeps the store) and returns (units, embeddings, quarantine, clock)."""

    def __init__(self, scheduler: str | None, *, workers: int, threads: int, quiet: bool = True,
                 client: Any = None) -> None:
        self.own = client is None
        self.client, self.cluster = connect(scheduler, workers=workers, threads=threads, quiet=quiet) \
            if client is None else (client, None)
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        self.in_flight = 2 * self.workers + 1
        self.embed_threads = threads_per_worker_for(scheduler, threads, self.workers)
        self.token = ""

    def start(self, chunk_job: Any, columns: Any = None) -> None:
        """Send the job (model, map, settings, prototypes) to every worker, once."""
        job = ClusterJob(chunk_job, columns, self.embed_threads)
        self.token = uuid.uuid4().hex
        self.client.register_plugin(JobPlugin(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL), self.token),
                                    name=PLUGIN)

    def submit(self, items: pd.DataFrame) -> Any:
        return self.client.submit(_items_task, self.token, items, pure=False)

    def close(self) -> None:
        if self.own:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()


def threads_per_worker_for(scheduler: str | None, threads: int, workers: int) -> int:
    """The embedder's threads in each worker: the `threads` budget split among a LocalCluster's
    workers; one on an external cluster (its workers run one task thread per core)."""
    return 1 if scheduler else threads_per_worker(threads, workers)


def _items_task(token: str, items: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, Any]:
    from feedback_nlp.pipeline import StepClock, process_chunk

    plugin = _plugin(token)
    job = plugin.job.chunk
    clock = StepClock()
    units, emb, q = process_chunk(items, settings=job.settings, journey=job.journey, model=job.model,
                                  embedder=plugin.embedder(), prototypes=job.prototypes,
                                  touchpoint_prototypes=job.touchpoint_prototypes, clock=clock)
    return units, np.asarray(emb, dtype=np.float32), q, clock


def _check_parts(folder: Path, parts: list[int]) -> None:
    missing = [p for p in parts if not (folder / "units" / f"part-{p:05d}.parquet").is_file()]
    if missing:
        raise FeedbackError("E923", f"{len(missing)} partition file(s) the workers wrote are not in {folder}/units "
                                    "as this machine sees it: with a cluster of several hosts, --out must be on "
                                    "storage every worker and this machine share (NFS or another shared mount)")


def _single_file(folder: Path, parts: list[int], empty_units: pd.DataFrame | None, write_csv: bool,
                 max_units: int) -> int | None:
    """units.parquet (and units.csv) as one file, as the local engine writes it, when the run
    has at most `max_units` units; the partitioned dataset in units/ is always there. Returns
    the units written, or None when the dataset was too large for one file."""
    import pyarrow.parquet as pq

    (folder / "units").mkdir(exist_ok=True)
    files = [folder / "units" / f"part-{p:05d}.parquet" for p in parts]
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if total > max_units:
        return None
    if not files:
        (empty_units if empty_units is not None else pd.DataFrame()).to_parquet(folder / "units.parquet", index=False)
        if write_csv:
            (empty_units if empty_units is not None else pd.DataFrame()).to_csv(folder / "units.csv", index=False)
        return 0
    writer = None
    try:
        for i, f in enumerate(files):
            table = pq.read_table(f)
            if writer is None:
                writer = pq.ParquetWriter(folder / "units.parquet", table.schema)
            elif table.schema != writer.schema:
                table = table.cast(writer.schema)
            writer.write_table(table)
            if write_csv:
                table.to_pandas().to_csv(folder / "units.csv", mode="a", header=i == 0, index=False)
    finally:
        if writer is not None:
            writer.close()
    return total
