"""Chunks in parallel: worker processes each run the whole chunk pipeline (`pipeline.process_chunk`:
text steps, embedding, classification) with one thread, while the main process reads, writes
and aggregates in input order.

Why whole chunks in single-threaded processes: USE's numpy forward pass gains only 1.3x from a
second BLAS thread, and its threads slow down ~12x when another process competes for the
cores; the text steps (spaCy, lingua, regular expressions) are single-threaded Python. Two
processes of one thread each keep both cores of a small machine busy all the time, the
embedding at its single-thread efficiency (docs/performance.md has the figures). It is also
the partition-by-partition shape a Dask or Spark engine would map over.

Nothing is lost or reordered: results come back in submission order, a worker's exception is
re-raised in the main process (which then removes its half-written output), and a worker that
dies (killed for memory) stops the run with E910. This module imports nothing heavy at the top,
so a spawned worker can limit its thread pools before numpy, torch or lingua start theirs.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")
MAX_AUTO_WORKERS = 4
WATCH_SECONDS = 2.0  # how often a wait for a chunk checks that the workers are alive


@dataclass
class ChunkJob:
    """What every chunk needs besides its rows; pickled once, loaded once per worker."""

    settings: Any            # config.Settings, with `threads` already set per worker
    journey: Any             # config.JourneyMap
    model: Any               # classify.Model
    embedder_args: Any       # embed.EmbedderArgs, or any picklable object with build(threads)
    prototypes: Any = None
    touchpoint_prototypes: Any = None


def resolve_workers(setting: int | str, *, threads: int, device: str = "cpu", cpu_count: int | None = None) -> int:
    """`auto`: one worker per thread of the `threads` budget, at most the cores and
    MAX_AUTO_WORKERS, and none when the embedder runs on a GPU (one process feeds it best)
    or only one core is there."""
    if setting != "auto":
        return int(setting)
    if device != "cpu":
        return 0
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    n = min(threads, cores, MAX_AUTO_WORKERS)
    return n if n >= 2 else 0


def threads_per_worker(threads: int, workers: int) -> int:
    return max(1, threads // max(1, workers))


# --- inside a worker process ------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _start(threads: int) -> None:
    # Before anything imports numpy, torch or lingua: each reads its thread count once.
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    _STATE["threads"] = threads
    import threading

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # A main process killed outright (SIGKILL, or SIGTERM outside the CLI) cannot stop its
    # workers, and they would wait for chunks for ever, holding their memory.
    import time

    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)


def _run(token: str, blob: bytes, items: Any) -> Any:
    # The job travels with every chunk (a few MB, pickled once by the main process): through
    # the initializer it would go down the spawn pipe, where CPython blocks for ever if the
    # child dies before reading it.
    if _STATE.get("token") != token:
        import pickle

        job = pickle.loads(blob)  # bytes this run's own main process pickled, never a user's file
        _STATE.update(token=token, job=job, embedder=job.embedder_args.build(_STATE["threads"]))
    from feedback_nlp.pipeline import StepClock, process_chunk

    job: ChunkJob = _STATE["job"]
    clock = StepClock()
    units, emb, q = process_chunk(items, settings=job.settings, journey=job.journey, model=job.model,
                                  embedder=_STATE["embedder"], prototypes=job.prototypes,
                                  touchpoint_prototypes=job.touchpoint_prototypes, clock=clock)
    return units, emb, q, clock


# --- in the main process ----------------------------------------------------------------------


class ChunkPool:
    """Submit chunks, get results back in order; `workers` processes, spawned on first use.

    `in_flight` bounds how many chunks are submitted and not yet collected (memory stays bounded
    by chunk_size x in_flight). Use as a context manager, or call `close`.
    """

    def __init__(self, workers: int, job: ChunkJob, threads: int) -> None:
        self.workers = workers
        self.in_flight = workers + 1
        self._job = job
        self._threads = threads
        self._pool = None
        self._blob = b""
        self._token = ""
        self._pending: deque = deque()

    def _ensure(self):
        if self._pool is None:
            import multiprocessing
            import pickle
            from concurrent.futures import ProcessPoolExecutor

            if getattr(multiprocessing.current_process(), "_inheriting", False):
                # A worker re-running the caller's main script: fail at once rather than hang.
                raise _died("run_batch was called while a worker process was starting")

            self._blob = pickle.dumps(self._job, protocol=pickle.HIGHEST_PROTOCOL)
            self._token = f"{os.getpid()}-{id(self)}"
            # spawn: a fork would copy the main process's embedder threads and locks
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start, initargs=(self._threads,))
        return self._pool

    def submit(self, items: Any) -> None:
        pool = self._ensure()
        self._pending.append(pool.submit(_run, self._token, self._blob, items))

    @property
    def started(self) -> bool:
        return self._token != ""

    def full(self) -> bool:
        return len(self._pending) >= self.in_flight

    def __len__(self) -> int:
        return len(self._pending)

    def next(self) -> tuple[Any, Any, Any, Any]:
        """The oldest chunk's (units, embeddings, quarantine, StepClock), waiting for it."""
        from concurrent.futures import TimeoutError
        from concurrent.futures.process import BrokenProcessPool

        fut = self._pending.popleft()
        while True:
            try:
                return fut.result(timeout=WATCH_SECONDS)
            except BrokenProcessPool as e:
                raise _died(str(e)) from e
            except TimeoutError:
                # The executor notices a worker killed mid-chunk, not one that died while starting
                # (a script without `if __name__ == "__main__":`): it would wait for ever.
                dead = [p.exitcode for p in getattr(self._pool, "_processes", {}).values() if p.exitcode is not None]
                if dead:
                    raise _died(f"exit codes {dead}") from None

    def close(self, abort: bool = False) -> None:
        """Stop the workers; `abort` (after an error) kills them instead of waiting for them."""
        if self._pool is not None:
            if abort:
                for p in list(getattr(self._pool, "_processes", {}).values()):
                    p.terminate()
            # after terminate() the wait is short: the executor sees its workers gone and cleans up
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def __enter__(self) -> "ChunkPool":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(abort=exc_type is not None)


def _died(detail: str) -> Exception:
    from feedback_nlp.errors import FeedbackError

    return FeedbackError("E910", "a worker process died before finishing its chunk (killed for memory? a script "
                                 "calling run_batch without `if __name__ == \"__main__\":`?); run again with "
                                 f"--workers 0, or fewer workers or a smaller chunk_size in the run settings ({detail})")


def can_spawn(embedder: Any) -> bool:
    """Workers rebuild the embedder from its `args`; a test double or a wrapper without them
    runs in process."""
    return callable(getattr(getattr(embedder, "args", None), "build", None))

