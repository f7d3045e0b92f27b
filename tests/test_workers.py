"""Chunks scored in worker processes (workers.py) give the in-process run's outputs, in order;
small inputs never start workers; a worker that dies stops the run cleanly."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from click.testing import CliRunner

from feedback_nlp.config import project_root
from feedback_nlp.errors import FeedbackError
from feedback_nlp.pipeline import run_batch
from feedback_nlp.workers import resolve_workers, threads_per_worker

SURVEYS = project_root() / "corpora" / "examples" / "surveys.csv"


def _run(tmp_path, name, settings, columns, journey, model, embedder, **changes):
    out = tmp_path / name
    res = run_batch([SURVEYS], journey=journey, settings=settings.replace(**changes), columns=columns, model=model,
                    embedder=embedder, out_dir=out, quiet=True)
    return out, res


def test_workers_give_the_outputs_of_the_in_process_run(tmp_path, settings, columns, journey, model, embedder):
    a_dir, a = _run(tmp_path, "w0", settings, columns, journey, model, embedder, chunk_size=25, workers=0)
    b_dir, b = _run(tmp_path, "w2", settings, columns, journey, model, embedder, chunk_size=25, workers=2,
                    threads=2, workers_min_chunks=2)
    assert (a.workers, b.workers) == (0, 2)
    assert json.loads((b_dir / "run.json").read_text())["workers"] == 2
    ua, ub = (pd.read_parquet(d / "units.parquet") for d in (a_dir, b_dir))
    assert len(ua) > 100
    # Same rows in the same order; labels identical, probabilities equal up to BLAS summation
    # order (one thread per worker against two in process).
    pd.testing.assert_frame_equal(ua, ub, check_exact=False, rtol=0, atol=1e-6)
    for col in ("item_id", "unit_idx", "stage", "sentiment", "touchpoints", "lang"):
        assert ua[col].tolist() == ub[col].tolist()
    assert (a_dir / "quarantine.csv").read_text() == (b_dir / "quarantine.csv").read_text()
    sa, sb = (pd.read_csv(d / "scores.csv") for d in (a_dir, b_dir))
    pd.testing.assert_frame_equal(sa, sb, check_exact=False, rtol=1e-9)
    # Every chunk step was timed in the workers and added up in the main process.
    assert set(b.steps.seconds) == {"clean", "language", "segment", "effort", "embed", "classify"}
    assert b.steps.seconds["embed"] > 0


def test_the_main_process_never_loads_the_model_its_workers_use(tmp_path, settings, columns, journey, model):
    """Loading USE in the main process (about 5 s) would only delay the workers' start."""
    from feedback_nlp.embed import Embedder

    fresh = Embedder("use-m3", threads=2)
    _, res = _run(tmp_path, "out", settings, columns, journey, model, fresh, chunk_size=25, workers=2, threads=2,
                  workers_min_chunks=2)
    assert res.workers == 2 and res.counts.units > 100
    assert fresh._model is None
    assert fresh.dim == 512 and fresh._model is not None  # and loads when asked


def test_small_input_never_starts_workers(tmp_path, settings, columns, journey, model, embedder):
    out, res = _run(tmp_path, "out", settings, columns, journey, model, embedder, chunk_size=25, workers=2,
                    workers_min_chunks=1000)
    assert res.workers == 0
    assert json.loads((out / "run.json").read_text())["workers"] == 0
    assert res.steps.seconds["embed"] > 0


def test_workers_wait_for_enough_rows_not_enough_chunks(tmp_path, settings, columns, journey, model, embedder):
    """Two files of 181 and 120 lines make four chunks of at most 100 rows: fewer rows than
    four full chunks, so no worker starts."""
    social = SURVEYS.parent / "social.jsonl"
    out = tmp_path / "out"
    res = run_batch([SURVEYS, social], journey=journey, columns=columns, model=model, embedder=embedder, out_dir=out,
                    settings=settings.replace(chunk_size=100, workers=2, threads=2, workers_min_chunks=4), quiet=True)
    assert res.workers == 0
    assert res.counts.rows_read < 400


class DyingArgs:
    """Embedder args whose build kills the worker process, as the kernel's OOM killer would."""

    def build(self, threads: int):
        os._exit(3)


class DyingInWorkers:
    def __init__(self, real) -> None:
        self.real, self.id, self.device, self.args = real, real.id, "cpu", DyingArgs()

    def encode(self, texts, **kw):
        return self.real.encode(texts, **kw)


def test_a_dead_worker_stops_the_run_with_E910_and_writes_nothing(tmp_path, settings, columns, journey, model,
                                                                    embedder):
    with pytest.raises(FeedbackError, match="E910"):
        _run(tmp_path, "out", settings, columns, journey, model, DyingInWorkers(embedder), chunk_size=25, workers=2,
             workers_min_chunks=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class FailingArgs:
    """Embedder args whose build fails as a model that cannot be loaded offline does."""

    def build(self, threads: int):
        raise FeedbackError("E201", "embedder 'x' could not be loaded offline: no such file")


class FailingInWorkers(DyingInWorkers):
    def __init__(self, real) -> None:
        super().__init__(real)
        self.args = FailingArgs()


def test_an_error_in_a_worker_reaches_the_main_process_with_its_code(tmp_path, settings, columns, journey, model,
                                                                     embedder):
    import pickle

    from feedback_nlp.errors import InputError

    again = pickle.loads(pickle.dumps(InputError("E200", "bad embedder")))
    assert type(again) is InputError and again.code == "E200" and str(again) == "[E200] bad embedder"
    with pytest.raises(FeedbackError, match="E201") as caught:
        _run(tmp_path, "out", settings, columns, journey, model, FailingInWorkers(embedder), chunk_size=25,
             workers=2, workers_min_chunks=2)
    assert caught.value.code == "E201" and "could not be loaded offline" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resolve_workers():
    assert resolve_workers("auto", threads=2, cpu_count=2) == 2
    assert resolve_workers("auto", threads=2, cpu_count=16) == 2
    assert resolve_workers("auto", threads=16, cpu_count=16) == 4
    assert resolve_workers("auto", threads=8, cpu_count=1) == 0   # one core: nothing to share
    assert resolve_workers("auto", threads=1, cpu_count=8) == 0   # a one-thread budget: in process
    assert resolve_workers("auto", threads=2, device="cuda", cpu_count=8) == 0
    assert resolve_workers(3, threads=2, cpu_count=2) == 3
    assert threads_per_worker(2, 2) == 1 and threads_per_worker(8, 3) == 2 and threads_per_worker(2, 0) == 2


def test_cli_workers_option_is_checked():
    from feedback_nlp.cli import main

    res = CliRunner().invoke(main, ["run", str(SURVEYS), "--workers", "two"])
    assert res.exit_code == 2
    assert "--workers" in res.output and "'auto'" in res.output


def test_sigterm_inside_sigterm_raises_is_an_error_and_the_handler_is_restored():
    import signal
    import time

    from feedback_nlp.errors import sigterm_raises

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(FeedbackError, match="E912"):
        with sigterm_raises("E912", "terminated by SIGTERM; no output was written"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) is before
