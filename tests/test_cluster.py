"""The Dask engine (cluster.py): inputs read as blocks exactly as the local reader reads whole
files; partition states merge into the one-pass state; on a 2-worker LocalCluster, `run` and
`score` give the local engine's units and map, also when a worker is killed mid-run; a
partition whose data breaks a step is quarantined, not fatal."""

from __future__ import annotations

import json
import math
import os
import signal
import threading

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from feedback_nlp.aggregate import Accumulator
from feedback_nlp.cluster import ClusterJob, PartOut, merge_states, score_block
from feedback_nlp.config import project_root
from feedback_nlp.pipeline import run_batch
from feedback_nlp.read import discover, plan_blocks, read_block, read_raw_chunks
from feedback_nlp.shift import PriorSample
from feedback_nlp.workers import ChunkJob
from tests.conftest import write

EXAMPLES = project_root() / "corpora" / "examples"
SURVEYS = EXAMPLES / "surveys.csv"
RUN_KEYS = ("started", "seconds", "engine", "workers", "step_seconds", "dask", "store", "this_run", "outputs_key")


# --- blocks: the same rows, row numbers and quarantine as one pass over the file ---------------


def _whole(path, chunk=10**6):
    raws, bad = [], []
    for r, b in read_raw_chunks(path, chunk):
        raws.append(r)
        bad += b
    return pd.concat(raws, ignore_index=True), bad


def _blocks(path, rows):
    raws, bad = [], []
    for block in plan_blocks(path, rows):
        for r, b in read_block(block, 10**6):
            raws.append(r)
            bad += b
    return pd.concat(raws, ignore_index=True), bad


@pytest.mark.parametrize("rows", [1, 2, 3, 50])
def test_csv_blocks_split_on_records_not_on_lines(tmp_path, rows):
    text = ('id,text,nps\n1,"first line\nsecond, with comma",9\n2,plain,3\n\n3,"quoted ""inner""\nmore\nlines",1\n'
            '4,a 5" screen,2\n').encode() + b"5,bad \xff byte,4\n6,last,7\n"
    path = write(tmp_path / "d.csv", text)
    (a, bad_a), (b, bad_b) = _whole(path), _blocks(path, rows)
    pd.testing.assert_frame_equal(a, b[a.columns])
    assert bad_a == bad_b and len(bad_a) == 1 and bad_a[0]["row"] == 6
    assert b["text"].tolist()[0] == "first line\nsecond, with comma"


def test_tsv_jsonl_and_parquet_blocks_read_as_the_whole_file(tmp_path):
    tsv = write(tmp_path / "d.tsv", "id\ttext\n" + "".join(f"{i}\ttext {i}\n" for i in range(23)))
    jsonl = write(tmp_path / "d.jsonl", "".join(
        [json.dumps({"id": i, "text": f"t {i}"}) + "\n" if i % 7 else "\n" if i % 14 else "{bad json\n"
         for i in range(30)]))
    pq_path = tmp_path / "d.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [str(i) for i in range(57)], "text": [f"p {i}" for i in range(57)]}), pq_path,
                   row_group_size=10)
    for path in (tsv, jsonl, pq_path):
        for rows in (4, 10, 100):
            (a, bad_a), (b, bad_b) = _whole(path), _blocks(path, rows)
            pd.testing.assert_frame_equal(a, b[a.columns])
            assert bad_a == bad_b
    assert len(plan_blocks(pq_path, 10)) == 6 and len(plan_blocks(jsonl, 10)) == 3


def test_globs_expand_sorted_and_a_pattern_without_files_is_an_error(tmp_path):
    from feedback_nlp.errors import InputError

    for name in ("b.csv", "a.csv", "sub/c.jsonl", "notes.txt"):
        write(tmp_path / name, "text\nx\n")
    assert [p.name for p in discover([str(tmp_path / "*.csv")])] == ["a.csv", "b.csv"]
    assert [p.name for p in discover([str(tmp_path / "**" / "*.jsonl")])] == ["c.jsonl"]
    with pytest.raises(InputError, match="matches no"):
        discover([str(tmp_path / "*.parquet")])


# --- merging partition states ------------------------------------------------------------------


def _units(start, n, rng):
    ids = [f"i{k // 3}" for k in range(start, start + n)]
    return pd.DataFrame({
        "item_id": ids, "unit_idx": [k % 3 for k in range(start, start + n)], "text": [f"u{k}" for k in range(n)],
        "lang": rng.choice(["it", "de"], n), "channel": "phone", "segment": "consumer", "source": "survey",
        "stage": rng.choice(["billing", "support", "unassigned"], n),
        "sentiment": rng.choice(["negative", "neutral", "positive"], n),
        "stage_confidence": rng.random(n), "p_negative": rng.random(n), "p_neutral": 0.2, "p_positive": 0.1,
        "sentiment_score": rng.random(n), "feedback": True, "touchpoints": rng.choice(["", "ivr", "email;chat"], n),
        "nps": rng.integers(0, 11, n).astype(float), "csat": np.nan, "resolution_hours": np.nan, "fcr": pd.NA,
    })


def test_partition_states_merge_into_the_one_pass_state(settings):
    """Accumulators of 6 partitions merged in a tree (order kept) give the single pass's
    counts, quotes, negative sample (bottom-k by unit hash) and, to the last bits, its sums."""
    rng = np.random.default_rng(0)
    chunks = [_units(k * 300, 300, rng) for k in range(6)]
    embs = [rng.random((300, 4)).astype(np.float32) for _ in chunks]
    one = Accumulator(settings, max_negative_units=50)
    parts = []
    for u, e in zip(chunks, embs):
        one.add(u, e)
        acc = Accumulator(settings, max_negative_units=50)
        acc.add(u, e)
        parts.append(acc)
    merged = merge_states(merge_states(*parts[:4]), merge_states(*parts[4:]))
    a, b = one.finish(), merged.finish()
    assert a.counts == b.counts and a.counts.units == 1800
    pd.testing.assert_frame_equal(a.quotes, b.quotes)
    pd.testing.assert_frame_equal(a.touchpoint_quotes, b.touchpoint_quotes)
    pd.testing.assert_frame_equal(a.negative_units, b.negative_units)
    assert len(a.negative_units) == 50
    np.testing.assert_array_equal(a.negative_embeddings, b.negative_embeddings)
    pd.testing.assert_frame_equal(a.scores, b.scores, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(a.drivers, b.drivers, check_exact=False, rtol=1e-12)
    # the inputs of a merge are left intact: a retried merge task finds them as they were
    assert parts[0].counts.units == 300


def test_prior_samples_merge_into_the_one_pass_sample():
    rng = np.random.default_rng(1)
    one, parts = PriorSample(cap=40), []
    for k in range(5):
        u = _units(k * 100, 100, rng).assign(p_feedback=rng.random(100))
        one.add(u)
        p = PriorSample(cap=40)
        p.add(u)
        parts.append(p)
    pd.testing.assert_frame_equal(one.frame(), merge_states(*parts).frame())
    assert one.frame()["lang"].value_counts().max() == 40


# --- duplicate ids across blocks: the first row wins, as in the local engine ---------------------


def test_an_id_read_in_an_earlier_block_is_quarantined_as_the_local_engine_does(tmp_path, settings, columns, journey,
                                                                               model):
    from conftest import FakeEmbedder

    from feedback_nlp.cluster import block_ids, earlier_ids
    from feedback_nlp.pipeline import read_items
    from feedback_nlp.aggregate import Counts

    rows = ["id,text"] + [f"{i},the invoice {i} was wrong and nobody called me back" for i in (1, 2, 3, 4, 2, 6, 1, 8)]
    path = write(tmp_path / "d.csv", "\n".join(rows) + "\n")
    local_q = pd.concat([q for _, _, qs in read_items([path], settings, columns, Counts()) for q in qs if len(q)])
    blocks = plan_blocks(path, 3)
    earlier = list(earlier_ids(block_ids(b, columns, settings) for b in blocks))
    assert earlier[0] == {} and set(earlier[1]) == {"2"} and set(earlier[2]) == {"1"}
    job = ClusterJob(ChunkJob(settings, journey, model, None), columns)
    outs = [score_block(b, i, earlier[i], job=job, embedder=FakeEmbedder(), folder=tmp_path / "o", shift=False,
                        max_negative_units=100) for i, b in enumerate(blocks)]
    q = pd.concat([o.quarantine for o in outs if len(o.quarantine)], ignore_index=True)
    pd.testing.assert_frame_equal(q.reset_index(drop=True), local_q.reset_index(drop=True))
    assert q["row"].tolist() == [5, 7] and "already read at" in q["detail"].iloc[0]
    assert sum(o.state.counts.rows_used for o in outs) == 6


# --- a partition whose data breaks a step --------------------------------------------------------


class _Broken:
    id = "use-m3.v1@0.2.1"

    def encode(self, texts, **kw):
        raise ValueError("cannot embed this")


def test_a_partition_that_fails_for_its_data_quarantines_its_rows(tmp_path, settings, columns, journey, model):
    block = plan_blocks(SURVEYS, 10)[1]
    job = ClusterJob(ChunkJob(settings, journey, model, None), columns)
    out: PartOut = score_block(block, 1, {}, job=job, embedder=_Broken(), folder=tmp_path, shift=False,
                               max_negative_units=100)
    assert out.failed and "cannot embed this" in out.failed
    assert out.quarantine["row"].tolist() == list(range(11, 21))
    assert set(out.quarantine["reason"]) == {"partition_failed"}
    assert out.counts.rows_read == 10 and out.counts.rows_quarantined == 10
    assert out.state.counts.units == 0 and not (tmp_path / "units").exists()


def test_scheduler_without_the_dask_engine_is_a_usage_error():
    from feedback_nlp.cli import main

    res = CliRunner().invoke(main, ["run", str(SURVEYS), "--scheduler", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "--engine dask" in res.output


# --- on a LocalCluster ---------------------------------------------------------------------------

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def cfg_embedder(settings):
    """The configured embedder, which the cluster's workers build too (like for like)."""
    from feedback_nlp.embed import Embedder

    return Embedder(settings.embedder, threads=settings.threads)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, settings, columns, journey, _model, cfg_embedder):
    out = tmp_path_factory.mktemp("local") / "out"
    run_batch([SURVEYS], journey=journey, settings=settings.replace(chunk_size=25), columns=columns,
              model=_model, embedder=cfg_embedder, out_dir=out, quiet=True)
    return out


def _same_figures(a, b, path=""):
    """Equal, the map's floats to one step of its 4 decimals: the engines' probabilities differ by
    summation order (one thread per worker against two) and sums by merge order."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same_figures(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_figures(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        # one step of the map's 4-decimal rounding: a figure a hair from x.xxxx5 may round either way
        assert math.isclose(a, b, rel_tol=0, abs_tol=1.01e-4) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, path


def _assert_same_outputs(a_dir, b_dir):
    ua, ub = (pd.read_parquet(d / "units.parquet") for d in (a_dir, b_dir))
    assert len(ua) > 250
    # probabilities to 1e-5: torch sums in float32 in an order that depends on its thread count
    # (one per worker against two here), about 1e-6 on a probability
    pd.testing.assert_frame_equal(ua, ub, check_exact=False, rtol=0, atol=1e-5)
    for col in ("item_id", "unit_idx", "stage", "sentiment", "touchpoints", "feedback", "lang"):
        assert ua[col].tolist() == ub[col].tolist(), col
    ja, jb = (json.loads((d / "journey_map.json").read_text()) for d in (a_dir, b_dir))
    for j in (ja, jb):
        for k in RUN_KEYS:
            j["run"].pop(k, None)
    _same_figures(ja, jb)
    assert (a_dir / "quarantine.csv").read_text() == (b_dir / "quarantine.csv").read_text()


def test_dask_engine_gives_the_local_engines_outputs(tmp_path, client, local_run, settings, columns, journey, model,
                                                     cfg_embedder):
    from feedback_nlp.cluster import run_batch_dask

    out = tmp_path / "dask"
    res = run_batch_dask([SURVEYS], journey=journey, settings=settings.replace(chunk_size=25), columns=columns,
                         model=model, embedder=cfg_embedder, out_dir=out, quiet=True, client=client, split_every=3)
    _assert_same_outputs(local_run, out)
    run = json.loads((out / "run.json").read_text())
    assert run["engine"] == "dask" and run["dask"]["partitions"] == 8 and res.workers == 2
    assert len(list((out / "units").glob("part-*.parquet"))) == 8
    assert not list(out.parent.glob(".dask.tmp-*"))
    assert set(res.steps.seconds) >= {"read", "embed", "classify"}


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(tmp_path, client, local_run, settings, columns, journey,
                                                           model, cfg_embedder):
    """One of the two workers is killed (SIGKILL, as the OOM killer would) once the first
    partition is back; Dask re-runs what it held and the outputs are the undisturbed run's."""
    from feedback_nlp.cluster import run_batch_dask

    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = threading.Event()

    def kill_once(part):
        if not killed.is_set():
            os.kill(victim, signal.SIGKILL)
            killed.set()

    out = tmp_path / "killed"
    run_batch_dask([SURVEYS], journey=journey, settings=settings.replace(chunk_size=25), columns=columns,
                   model=model, embedder=cfg_embedder, out_dir=out, quiet=True, client=client, on_progress=kill_once)
    assert killed.is_set()
    client.wait_for_workers(2, timeout=120)
    assert victim not in client.run(os.getpid).values()
    _assert_same_outputs(local_run, out)


def test_score_on_the_cluster_stores_what_the_local_engine_stores(tmp_path, client, settings, columns, journey, model,
                                                                  cfg_embedder):
    from feedback_nlp.cluster import ClusterSession
    from feedback_nlp.incremental import score
    from feedback_nlp.store import Store

    s = settings.replace(chunk_size=40)
    kw = dict(journey=journey, settings=s, columns=columns, model=model, embedder=cfg_embedder, quiet=True)
    a = score([SURVEYS], store=tmp_path / "a.db", out_dir=tmp_path / "a", **kw)
    session = ClusterSession(None, workers=2, threads=2, client=client)
    b = score([SURVEYS], store=tmp_path / "b.db", out_dir=tmp_path / "b", session=session, **kw)
    assert (a.stats.items_new, a.stats.units_scored) == (b.stats.items_new, b.stats.units_scored)
    assert b.stats.items_new > 150
    _assert_same_outputs(tmp_path / "a", tmp_path / "b")
    with Store(tmp_path / "b.db") as st:  # embeddings came back: a new model re-classifies without embedding
        n = st.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    assert n >= b.stats.units_scored * 0.9
    again = score([SURVEYS], store=tmp_path / "b.db", out_dir=tmp_path / "b", session=session, **kw)
    assert again.stats.items_new == 0 and again.stats.items_unchanged == b.stats.items_new


def test_run_on_an_existing_scheduler_from_the_command_line(tmp_path, client, local_run):
    """`--scheduler ADDRESS`: the job reaches workers the run did not start (its plugin stops
    their profiler), and the outputs are the local engine's."""
    from feedback_nlp.cli import main

    out = tmp_path / "ext"
    res = CliRunner().invoke(main, ["run", str(SURVEYS), "--out", str(out), "--engine", "dask", "--scheduler",
                                    client.scheduler.address, "--chunk-size", "25", "-q"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["engine"] == "dask" and run["dask"]["scheduler"] == client.scheduler.address
    _assert_same_outputs(local_run, out)

    def profiling(dask_worker):
        return dask_worker.periodic_callbacks["profile"].is_running()

    assert not any(client.run(profiling).values())
