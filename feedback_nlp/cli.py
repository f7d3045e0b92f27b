"""The command line: each command parses options and calls one function.

Exit codes: 0 ok, 1 failed (FeedbackError), 2 bad input or usage (InputError, click usage).
Heavy libraries (torch, sentence-transformers, spaCy, lingua) are imported inside commands, so
`--help` answers at once.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from feedback_nlp import __version__
from feedback_nlp.errors import FeedbackError, InputError, sigterm_raises

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(e: FeedbackError) -> None:
    click.echo(f"Error: {e}", err=True)
    sys.exit(e.exit_code)


def handle_errors(fn: Callable) -> Callable:
    """FeedbackError -> message and its exit code (1, or 2 for bad input), no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeedbackError as e:
            _fail(e)

    return wrapper


def engine_options(fn: Callable) -> Callable:
    """--engine and --scheduler, for the commands that score (run, score)."""
    fn = click.option("--scheduler", default=None, metavar="ADDRESS",
                      help="With --engine dask: an existing scheduler (tcp://host:8786); without it, a "
                           "LocalCluster of --workers processes on this machine.")(fn)
    return click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True,
                        help="local: this process and its worker processes; dask: the same steps on a Dask "
                             "cluster (pip install -e '.[dask]'; docs/scaling.md).")(fn)


def common_options(fn: Callable) -> Callable:
    """Options shared by commands that read feedback files."""
    decorators = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="Run settings YAML (default: configs/run.yaml)."),
        click.option("--columns", "columns_path", type=click.Path(dir_okay=False), default=None,
                     help="Column-mapping YAML: for each field, the column names to try "
                          "(default: configs/columns/default.yaml)."),
        click.option("-c", "--column", "column_overrides", multiple=True, metavar="FIELD=COLUMN",
                     help="Map one field to a column, e.g. -c text=comment -c segment=age_band. "
                          "Fields: text, id, created_at, channel, source, language, segment, nps, csat, "
                          "resolution_hours, fcr. Repeatable."),
        click.option("--embedder", default=None,
                     help="'use-m3' (default), 'use-m3-torch' (the same embeddings in torch: faster, GPU-able), "
                          "'use-m3-onnx', 'use-m3-static' or a sentence-transformers "
                          "model folder on disk."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary on stderr/stdout."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _setup(config_path: str | None, columns_path: str | None, column_overrides: tuple[str, ...], **overrides: Any):
    from feedback_nlp.config import load_column_map, load_settings, parse_column_overrides

    settings = load_settings(config_path).replace(**overrides)
    columns = load_column_map(columns_path or settings.columns, parse_column_overrides(column_overrides))
    return settings, columns


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="feedback-nlp")
def main() -> None:
    """Turn multilingual customer feedback into a scored customer-journey map, offline.

    Start with `feedback-nlp run corpora/examples` and open out/journey_map.json and
    out/summary.md.
    """


def _workers_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"{value!r}: give a number of processes (0 or more) or 'auto'")


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Journey map YAML (default: configs/journeys/contact_centre.yaml).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out", show_default=True,
              help="Output folder; replaced only when the run succeeds.")
@click.option("--model", "model_path", default=None,
              help="Model folder, or a pointer file naming one (default: models/CURRENT).")
@click.option("--csv", "write_csv", is_flag=True, help="Also write units.csv next to units.parquet.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Rows per chunk (memory bound).")
@click.option("--threshold", "stage_min_confidence", type=click.FloatRange(0, 1), default=None,
              help="Stage confidence below which a unit is 'unassigned' (default 0.45).")
@click.option("--fast", is_flag=True,
              help="Static embedder distilled from use-m3 (about 10x faster, less accurate: "
                   "docs/performance.md), with its own heads; built into FEEDBACK_NLP_CACHE on first use.")
@click.option("--device", default=None, metavar="auto|cpu|cuda[:N]",
              help="Where a torch embedder (--fast, a sentence-transformers folder) runs (default: auto, "
                   "a GPU when one is visible).")
@click.option("--workers", default=None, metavar="N|auto", callback=_workers_option,
              help="Processes scoring chunks in parallel, one thread each (default: auto, one per thread of "
                   "`threads` in the run settings; 0: all in this process). With --engine dask: the "
                   "LocalCluster's worker processes.")
@engine_options
@common_options
@handle_errors
def run(inputs: tuple[str, ...], map_path: str | None, out_dir: str, model_path: str | None, write_csv: bool,
        chunk_size: int | None, stage_min_confidence: float | None, fast: bool, device: str | None,
        workers: int | str | None, engine: str, scheduler: str | None, config_path: str | None,
        columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """Score feedback files (CSV, TSV, JSONL, Parquet; files or folders) onto a journey map.

    Writes into OUT: journey_map.json (the map with scores), units.parquet (every unit with
    language, stage, sentiment and probabilities), scores.csv (all score cells), quarantine.csv
    (rows that could not be used, with the reason), summary.md, report.html (the journey map as
    a self-contained page), cells.csv (the score sums its filters use) and run.json.
    """
    from feedback_nlp.config import load_journey_map
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import embedder_spec, load_model
    from feedback_nlp.pipeline import run_batch
    from feedback_nlp.read import discover
    from feedback_nlp.report import summary_table

    settings, columns = _setup(config_path, columns_path, column_overrides, chunk_size=chunk_size,
                               stage_min_confidence=stage_min_confidence, embedder=embedder)
    if workers is not None:
        settings = settings.replace(workers=workers)
    if scheduler and engine != "dask":
        raise click.UsageError("--scheduler needs --engine dask")
    if engine == "dask":
        from feedback_nlp.cluster import require_dask

        require_dask()
    discover(inputs)  # bad paths fail before models load
    journey = load_journey_map(map_path or settings.journey_map)
    from feedback_nlp.distill import select_tier

    settings, model_dir = select_tier(settings, columns, journey, fast=fast, embedder_option=embedder,
                                      model_option=model_path, device=device,
                                      notify=None if quiet else lambda m: click.echo(m, err=True))
    model = load_model(model_dir)
    settings = settings.replace(embedder=embedder_spec(model, settings.embedder,
                                                       explicit=embedder or (settings.embedder if fast else None)))
    emb = Embedder(settings.embedder, threads=settings.threads, device=settings.device,
                   dedup=settings.embed_dedup, gpu_batch_size=settings.gpu_batch_size,
                   fast_batch_size=settings.fast_batch_size, cache_size=settings.embed_cache_size)
    with sigterm_raises("E912", "terminated by SIGTERM; no output was written"):
        if engine == "dask":
            from feedback_nlp.cluster import run_batch_dask

            result = run_batch_dask(inputs, journey=journey, settings=settings, columns=columns, model=model,
                                    embedder=emb, out_dir=out_dir, write_csv=write_csv, quiet=quiet,
                                    scheduler=scheduler)
        else:
            result = run_batch(inputs, journey=journey, settings=settings, columns=columns, model=model, embedder=emb,
                               out_dir=out_dir, write_csv=write_csv, quiet=quiet)
    zero_shot = result.journey_map["run"].get("zero_shot_stages") or []
    if zero_shot:
        click.echo(f"zero-shot stages (no labelled data; classified from the map's descriptions and examples): "
                   f"{', '.join(zero_shot)}", err=True)
    if not quiet:
        click.echo(summary_table(result.journey_map))
        c = result.counts
        if c.rows_quarantined:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.quarantine_reasons.items()))
            click.echo(f"{c.rows_quarantined} rows quarantined ({reasons}): see {Path(out_dir) / 'quarantine.csv'}",
                       err=True)
        click.echo(f"outputs in {out_dir}/", err=True)


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--store", "store_path", envvar="FEEDBACK_NLP_STORE", type=click.Path(dir_okay=False), default=None,
              help="SQLite store (default: `store` in the config, feedback.db; env FEEDBACK_NLP_STORE).")
@click.option("--period", type=click.Choice(["day", "week", "month"]), default="day", show_default=True,
              help="Period written to OUT/PERIOD/ and compared with the one before (trends).")
@click.option("--as-of", "as_of", default=None, metavar="DATE",
              help="Latest period is the one holding DATE (default: the newest item's created_at).")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Journey map YAML (default: configs/journeys/contact_centre.yaml).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out", show_default=True,
              help="Output folder; replaced only when the run succeeds.")
@click.option("--model", "model_path", default=None, help="Model folder or pointer file (default: models/CURRENT).")
@click.option("--csv", "write_csv", is_flag=True, help="Also write units.csv next to units.parquet.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Rows per chunk and per transaction.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Append the run's JSON log line to this file instead of stderr.")
@engine_options
@click.option("--workers", default=None, metavar="N|auto", callback=_workers_option,
              help="With --engine dask and no --scheduler: the LocalCluster's worker processes (default: auto).")
@common_options
@handle_errors
def score(inputs: tuple[str, ...], store_path: str | None, period: str, as_of: str | None, map_path: str | None,
          out_dir: str, model_path: str | None, write_csv: bool, chunk_size: int | None, log_path: str | None,
          engine: str, scheduler: str | None, workers: int | str | None,
          config_path: str | None, columns_path: str | None, column_overrides: tuple[str, ...],
          embedder: str | None, quiet: bool) -> None:
    """Scheduled scoring: score only what is new in INPUTS into a store, then rewrite OUT.

    Items already scored (same id, same content) are skipped; an edited item is re-scored and
    its old prediction retired; a new model re-classifies stored embeddings. OUT holds the
    all-time map, OUT/PERIOD/ the latest period's, both with trends against the period before.
    One run at a time per store. Exit codes: 0 ok, 1 failed, 2 bad input, 3 some rows
    quarantined. One JSON log line per run on stderr (or --log). See docs/scheduling.md; with
    --engine dask only new and edited items go to the cluster (docs/scaling.md).
    """
    from feedback_nlp.incremental import score_command
    from feedback_nlp.report import summary_table

    if scheduler and engine != "dask":
        raise click.UsageError("--scheduler needs --engine dask")
    result = score_command(inputs, store_path=store_path, map_path=map_path, out_dir=out_dir, model_path=model_path,
                           period=period, as_of=as_of, log_path=log_path, write_csv=write_csv, chunk_size=chunk_size,
                           config_path=config_path, columns_path=columns_path, column_overrides=column_overrides,
                           embedder=embedder, quiet=quiet, engine=engine, scheduler=scheduler, workers=workers)
    if not quiet:
        click.echo(summary_table(result.journey_map))
        for line in result.headlines:
            click.echo(line)
        s = result.stats
        click.echo(f"new {s.items_new}, edited {s.items_edited}, unchanged {s.items_unchanged}; embedded "
                   f"{s.texts_embedded} texts, reused {s.texts_reused}, re-classified {s.units_reclassified}; "
                   f"quarantined {result.read.rows_quarantined}; outputs in {out_dir}/", err=True)
    sys.exit(result.exit_code)


@main.command(context_settings=CONTEXT)
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--labels", "new_labels", multiple=True, type=click.Path(),
              help="New labelled files, merged over the seed corpus and the base model's labels "
                   "(later files win on the same text). Repeatable.")
@click.option("--base", "base", default=None,
              help="Model whose training labels are merged in (default: models/CURRENT when --labels is given).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Model folder to write (default: models/v<N+1>).")
@click.option("--id", "model_id", default=None, help="Model id (default: the folder name).")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Journey map whose stages and touchpoints the heads learn.")
@click.option("--test-size", type=click.FloatRange(0.05, 0.5), default=None,
              help="Share of rows held out for the model card's metrics (default 0.2, configs/train.yaml).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0, configs/train.yaml).")
@click.option("--train-config", type=click.Path(dir_okay=False), default=None,
              help="Training settings YAML (default: configs/train.yaml).")
@click.option("--promote/--no-promote", default=True, show_default=True,
              help="Point models/CURRENT at the new version if it is not worse than the current one.")
@click.option("--force", is_flag=True, help="Promote even if the new version is worse.")
@click.option("--benchmarks", "benchmarks", type=click.Path(file_okay=False), default=None,
              help="With --labels on a model built by a recipe (build-model): the benchmarks folder the recipe "
                   "reads (default: $FEEDBACK_NLP_BENCHMARKS, else ../shared/benchmarks).")
@click.option("--fine-tune", "fine_tune", is_flag=True,
              help="Also adapt the representation to the labels. use-m3 is fine-tuned end to end (its torch twin, "
                   "anchored to the frozen embeddings) and a sentence-transformers folder embedder on SetFit pairs; "
                   "either is saved into the model folder (embedder/), which run, score and evaluate then use. The "
                   "ONNX and static tiers get a small adapter network under the heads. Minutes instead of seconds; "
                   "settings under `fine_tune:` in configs/train.yaml. Measured in docs/accuracy.md.")
@common_options
@handle_errors
def train(files: tuple[str, ...], new_labels: tuple[str, ...], base: str | None, out_dir: str | None,
          model_id: str | None, map_path: str | None, test_size: float | None, seed: int | None,
          train_config: str | None, promote: bool, force: bool, benchmarks: str | None, fine_tune: bool,
          config_path: str | None, columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None,
          quiet: bool) -> None:
    """Train stage, sentiment and touchpoint heads on labelled files (columns text, stage,
    sentiment, optional touchpoints separated by ';'). A row may leave stage or sentiment empty
    (or the file lack that column): it trains the other head only.

    A new journey map (--map) needs only stage labels, a handful per stage: `train --labels
    FILE --map MAP --out models/mine`. The seed corpus, labelled for the default map, then trains
    the sentiment head only; such a model is never promoted over one for other stages.

    FILES are used as they are (e.g. `train corpora/seed`). With --labels, the new files are
    merged over the seed corpus and the labels the base model was trained on. Rows that cannot be
    used (unknown stage or sentiment, empty text, conflicting duplicates) are reported with file
    and row and written to label_issues.csv in the model folder. Metrics come from a stratified
    held-out split; the new version is compared with the current one on the same held-out rows
    and promoted only if macro-F1 does not drop (overall and per language) beyond
    `promote_tolerance`, unless --force. With --fine-tune the representation is adapted too
    (fit on the training rows only for the held-out metrics).

    When the base model was built by a recipe (build-model, as the default model is), --labels
    rebuilds that recipe with the new files (and the labels the base already had) as one more
    source weighted like the seed corpus, so the real data it learnt from stays; the benchmarks
    folder must be there (exit 3 otherwise), and the gate compares per source on held-out rows.
    """
    import shutil

    import pandas as pd

    from feedback_nlp import registry
    from feedback_nlp.config import load_journey_map, load_train_settings, resolve
    from feedback_nlp.embed import TORCH_EMBEDDER, Embedder, resolve_device
    from feedback_nlp.finetune import is_use, resolve_mode
    from feedback_nlp.persist import EMBEDDER_DIR, POINTER, load_model, resolve_model_folder, save_model
    from feedback_nlp.train import evaluate_model, load_labels, map_phrase_rows, model_card
    from feedback_nlp.train import train as train_model

    settings, columns = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    ts = load_train_settings(train_config).replace(test_size=test_size, seed=seed)
    mode = resolve_mode(ts.fine_tune.mode, settings.embedder) if fine_tune else None
    journey = load_journey_map(map_path or settings.journey_map)
    # the seed corpus (and a base model's files) are labelled for the default map: under another
    # map their stages mean nothing, their sentiment still trains the sentiment head
    other_map = set(journey.stage_ids) != set(load_journey_map(settings.journey_map).stage_ids)
    root = _models_root(settings.model)
    if not files and not new_labels:
        raise InputError("E512", "give labelled FILES, or --labels FILE (merged over the seed corpus)")
    sources: list[list[str]] = []
    if files:
        sources.append(list(files))
    if new_labels:
        if not files:
            sources.append([str(resolve(ts.seed_corpus))])
        base_dir = resolve_model_folder(base) if base else (root / POINTER if (root / POINTER).is_file() else None)
        base_meta = load_model(base_dir).meta if base_dir is not None else {}
        if base_meta.get("recipe") and not files and not mode and not other_map:
            from feedback_nlp import recipe as rcp

            earlier = [f for f in base_meta.get("sources", {}).get("labels", {}).get("files", [])
                       if resolve(f).exists() and str(resolve(f)) not in {str(resolve(x)) for x in new_labels}]
            recipe = rcp.with_labels(rcp.load_recipe(base_meta["recipe"]["path"]), [*earlier, *new_labels])
            out = Path(out_dir) if out_dir else root / f"v{len(registry.versions(root)) + 1 if root.is_dir() else 1}"
            if not quiet:
                click.echo(f"{base_meta['recipe']['path']} (the base model's recipe) with {len(earlier) + len(new_labels)} "
                           "label file(s) as one more source", err=True)
            _build_recipe(recipe, benchmarks=benchmarks, out_dir=str(out), model_id=model_id, map_path=map_path,
                          promote=promote, force=force, settings=settings, columns=columns, embedder=embedder,
                          quiet=quiet)
            return
        if base_dir is not None:
            base_files = base_meta.get("training_data", {}).get("files", [])
            seen = {str(Path(f)) for group in sources for f in group}
            sources.extend([f] for f in base_files if str(Path(f)) not in seen and Path(f).exists())
        sources.append(list(new_labels))
    out = Path(out_dir) if out_dir else root / f"v{len(registry.versions(root)) + 1 if root.is_dir() else 1}"
    if out.exists() and any(out.iterdir()):
        raise FeedbackError("E510", f"{out} exists and is not empty; model versions are never overwritten")
    yours = {len(sources) - 1} | ({0} if files else set())  # FILES and --labels: labelled for this map
    inherited = [i for i in range(len(sources)) if other_map and i not in yours]
    if inherited and not quiet:
        click.echo(f"{map_path}: not the map the seed corpus is labelled for; its rows train the sentiment head "
                   "only, stages come from your labels", err=True)
    df, issues = load_labels(sources, columns, settings, journey.stage_ids, sentiment_only=inherited)
    if other_map:  # no corpus labels this map: its own phrases are examples of their stages too
        df = pd.concat([df, map_phrase_rows(journey)], ignore_index=True)
    if len(issues):
        counts = issues["problem"].value_counts().to_dict()
        click.echo(f"{len(issues)} labelled rows not used: " + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)
        for r in issues.head(10).itertuples():
            click.echo(f"  {r.source_file}, row {r.row}, field '{r.field}': {r.problem}: {r.detail}", err=True)
    if len(df) < 20:
        raise InputError("E511", f"only {len(df)} usable labelled rows; at least 20 are needed")
    emb = Embedder(settings.embedder, threads=settings.threads)
    from tqdm import tqdm

    with tqdm(total=len(df), unit="unit", desc="embedding", file=sys.stderr, disable=quiet, leave=False) as bar:
        X = emb.encode(df["text"].tolist(), batch_size=settings.embed_batch_size, progress=bar.update)
    files_used = [f for group in sources for f in group]
    if mode and not quiet:
        click.echo(f"fine-tuning ({mode}): fit on the training rows for the held-out figures, then on all "
                   f"{len(df)} rows" + (" (the encoder: minutes on a CPU)" if mode == "encoder" else ""),
                   err=True)
    tuning_use = mode == "encoder" and is_use(settings.embedder)
    ft = ts.fine_tune
    # texts the fine-tuning passes over: epochs x (training rows, then every row again when refit)
    total = ft.use_epochs * (len(df) - int(round(ts.test_size * len(df))) + (len(df) if ft.encoder_refit else 0))
    try:
        with tqdm(total=total, unit="text", desc="fine-tuning", file=sys.stderr, leave=False,
                  disable=quiet or not tuning_use) as bar:
            model, metrics, held_out = train_model(
                df, X, model_id=model_id or out.name, embedder_id=emb.id, embedder_desc=emb.info.description,
                test_size=ts.test_size, seed=ts.seed, tp_labels=[t.id for t in journey.touchpoints],
                sources=files_used, ts=ts, fine_tune=mode, encoder=settings.embedder if mode == "encoder" else None,
                encoder_out=out / EMBEDDER_DIR if mode == "encoder" else None, threads=settings.threads,
                device=resolve_device(TORCH_EMBEDDER, settings.device) if tuning_use else "cpu",
                progress=bar.update if tuning_use else None)
    except BaseException:
        shutil.rmtree(out / EMBEDDER_DIR, ignore_errors=True)  # no half-written version left behind
        raise
    md, js = model_card(model)
    extra = {"card.md": md, "card.json": js}
    if len(issues):
        extra["label_issues.csv"] = issues.to_csv(index=False)
    save_model(model, out, extra)
    if not quiet:
        for head in ("stage", "sentiment"):
            click.echo(f"{head}: held-out accuracy {metrics[head]['accuracy']:.3f}, macro-F1 {metrics[head]['macro_f1']:.3f}")
        if mode:
            click.echo(f"fine-tuned ({mode}) in {model.meta['training']['seconds']['total']:.0f} s")
        click.echo(f"model written to {out}")
    if not promote:
        return
    current = registry.current_id(out.parent)
    reason = "first version"
    if current and current != out.name and not force:
        old = load_model(out.parent / current)
        if set(old.stage.classes_) != set(model.stage.classes_):
            click.echo(f"not promoted: its stages differ from current {current}'s (another journey map?), so the "
                       "two cannot be compared; keep it in its own models folder, or `feedback-nlp models promote` "
                       "(or --force)", err=True)
            return
        if old.embedder_id == emb.id:
            X_old = X[held_out]
        elif old.embedder_folder:  # it carries its own (fine-tuned) encoder: embed the held-out rows with it
            X_old = Embedder(old.embedder_folder, threads=settings.threads).encode(
                df["text"].iloc[held_out].tolist(), batch_size=settings.embed_batch_size)
        else:
            click.echo(f"not promoted: current {current} uses embedder {old.embedder_id}; compare by hand and use "
                       "`feedback-nlp models promote` (or --force)", err=True)
            return
        old_metrics = evaluate_model(old, X_old, df.iloc[held_out])
        worse = registry.compare(metrics, old_metrics, ts.promote_tolerance)
        if worse:
            click.echo(f"not promoted: worse than {current} on the same held-out rows: " + "; ".join(worse), err=True)
            return
        reason = (f"held-out macro-F1 stage {metrics['stage']['macro_f1']:.3f} vs {old_metrics['stage']['macro_f1']:.3f}, "
                  f"sentiment {metrics['sentiment']['macro_f1']:.3f} vs {old_metrics['sentiment']['macro_f1']:.3f}")
    elif force:
        reason = "forced"
    registry.promote(out.parent, out.name, reason)
    if not quiet:
        click.echo(f"promoted {out.name} ({reason})")


@main.command("build-model", context_settings=CONTEXT)
@click.argument("recipe_path", metavar="RECIPE", default="configs/recipes/default.yaml", required=False)
@click.option("--benchmarks", "benchmarks", type=click.Path(file_okay=False), default=None,
              help="Folder holding the benchmark sets the recipe reads (default: $FEEDBACK_NLP_BENCHMARKS, else "
                   "../shared/benchmarks beside the project). Read at training time, never copied.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Model folder to write (default: models/<recipe id>).")
@click.option("--id", "model_id", default=None, help="Model id (default: the recipe's id).")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Journey map whose stages and touchpoints the heads learn (default: configs/run.yaml's).")
@click.option("--promote/--no-promote", default=False, show_default=True,
              help="Point models/CURRENT at the new model if it is not worse than the current one on the recipe's "
                   "held-out rows (per source, head and language, within promote_tolerance).")
@click.option("--force", is_flag=True, help="Promote even if the new model is worse.")
@common_options
@handle_errors
def build_model(recipe_path: str, benchmarks: str | None, out_dir: str | None, model_id: str | None,
                map_path: str | None, promote: bool, force: bool, config_path: str | None, columns_path: str | None,
                column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """Build a model from a training RECIPE (configs/recipes/*.yaml): the project's corpora plus
    real labelled data written by others (UMSAB, Banking77, GermEval), read from the benchmarks
    folder at training time.

    Every row is embedded once; heads are fit on the rows the recipe does not hold out and
    measured on the held-out rows (the model card's figures, per source), then refit on every row
    the recipe ships. The card lists each source with its licence, the rows used and its weight;
    the same recipe and data rebuild the same files. Exit codes: 0 ok, 1 failed, 2 bad recipe or
    mapping, 3 the benchmarks folder (or a set in it) is missing.
    """
    from feedback_nlp import recipe as rcp

    settings, columns = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    _build_recipe(rcp.load_recipe(recipe_path), benchmarks=benchmarks, out_dir=out_dir, model_id=model_id,
                  map_path=map_path, promote=promote, force=force, settings=settings, columns=columns,
                  embedder=embedder, quiet=quiet)


def _build_recipe(recipe: Any, *, benchmarks: str | None, out_dir: str | None, model_id: str | None,
                  map_path: str | None, promote: bool, force: bool, settings: Any, columns: Any,
                  embedder: str | None, quiet: bool) -> Path:
    """build-model's work (also `train --labels` on a recipe-built base): build, card, save, and
    promote when asked and not worse than the current model on the same held-out rows."""
    import time

    from tqdm import tqdm

    from feedback_nlp import recipe as rcp
    from feedback_nlp import registry
    from feedback_nlp.config import load_journey_map, load_train_settings
    from feedback_nlp.embed import Embedder
    from feedback_nlp.errors import MissingDataError
    from feedback_nlp.persist import load_model, save_model
    from feedback_nlp.sources import benchmarks_root

    started = time.time()
    root = benchmarks_root(benchmarks)
    needs_benchmarks = any(s.reader in ("umsab", "banking77", "germeval") for s in recipe.sources.values())
    if needs_benchmarks and not root.is_dir():
        raise MissingDataError("E530", f"the benchmarks folder {root} does not exist. The recipe {recipe.path} "
                               "reads real labelled data (UMSAB, Banking77, GermEval) at training time and never "
                               "copies it into the repository; put it beside the project (../shared/benchmarks), or "
                               "pass --benchmarks DIR or set FEEDBACK_NLP_BENCHMARKS")
    journey = load_journey_map(map_path or settings.journey_map)
    models_root = _models_root(settings.model)
    out = Path(out_dir) if out_dir else models_root / (model_id or recipe.id)
    if out.exists() and any(out.iterdir()):
        raise FeedbackError("E510", f"{out} exists and is not empty; model versions are never overwritten")
    emb = Embedder(embedder or recipe.embedder, threads=settings.threads)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))

    def encode(texts: list[str]) -> Any:
        with tqdm(total=len(texts), unit="text", desc="embedding", file=sys.stderr, disable=quiet, leave=False) as bar:
            return emb.encode(texts, batch_size=settings.embed_batch_size, progress=bar.update)

    rows = rcp.load_rows(recipe, root, settings=settings, columns=columns, stage_ids=journey.stage_ids)
    model, metrics, held_model = rcp.build(recipe, root, settings=settings, columns=columns, stage_ids=journey.stage_ids,
                               tp_labels=[t.id for t in journey.touchpoints], encode=encode, embedder_id=emb.id,
                               embedder_desc=emb.info.description, model_id=model_id or out.name, log=log, rows=rows)
    md, js = rcp.recipe_card(model)
    save_model(model, out, {"card.md": md, "card.json": js})
    if not quiet:
        for source, res in metrics.items():
            figures = ", ".join(f"{h} macro-F1 {res[h]['macro_f1']:.3f}" for h in ("stage", "sentiment") if h in res)
            fb = res.get("feedback")
            if fb:
                figures += (", " if figures else "") + f"judged feedback {fb['share_predicted']:.1%} (truly {fb['share_true']:.1%})"
            click.echo(f"{source}: held out {res['rows']}: {figures}")
        click.echo(f"model written to {out} in {time.time() - started:.0f} s")
    if not promote:
        return out
    current = registry.current_id(out.parent)
    reason = "first version"
    if current and current != out.name and not force:
        old = load_model(out.parent / current)
        if old.embedder_id != emb.id:
            click.echo(f"not promoted: current {current} uses embedder {old.embedder_id}; compare by hand and use "
                       "`feedback-nlp models promote` (or --force)", err=True)
            return out
        # only rows the current model never learnt from: the seed corpus's held-out rows are in
        # seed-v1's training data, and a model always wins on rows it has seen
        seen = rcp.trained_files(old.meta, root)
        held = rows["held_out"].to_numpy() & ~rows["file"].map(lambda f: str(Path(f).resolve()) in seen).to_numpy()
        if not held.any():
            click.echo(f"not promoted: {current} learnt from every file the held-out rows come from, so they cannot "
                       "compare the two; compare by hand (`feedback-nlp evaluate`, benchmarks/real_data.py) and use "
                       "`feedback-nlp models promote` (or --force)", err=True)
            return out
        X_held = emb.encode(rows.loc[held, "text"].tolist(), batch_size=settings.embed_batch_size)
        new_metrics = rcp.evaluate_rows(held_model, rows[held], X_held)  # heads that never saw these rows either
        old_metrics = rcp.evaluate_rows(old, rows[held], X_held)
        worse = registry.compare_sources(new_metrics, old_metrics, load_train_settings().promote_tolerance)
        if worse:
            click.echo(f"not promoted: worse than {current} on the held-out rows it never learnt from: "
                       + "; ".join(worse), err=True)
            return out
        reason = (f"not worse than {current} on {int(held.sum())} held-out rows it never learnt from ("
                  + ", ".join(sorted(set(rows.loc[held, 'source']))) + ")")
    elif force:
        reason = "forced"
    registry.promote(out.parent, out.name, reason)
    if not quiet:
        click.echo(f"promoted {out.name} ({reason})")
    return out


@main.command(context_settings=CONTEXT)
@click.option("--from", "run_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="Output folder of `run` or `score` (reads units.parquet).")
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True, help="Units to pick.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="to_label.csv", show_default=True)
@click.option("--model", "model_path", default=None, help="Model whose training data counts as seen (default: CURRENT).")
@click.option("--seed", type=int, default=0, show_default=True)
@common_options
@handle_errors
def sample(run_dir: str, n: int, out_path: str, model_path: str | None, seed: int, config_path: str | None,
           columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """Pick units worth labelling from a run: low confidence, head and stage prototypes
    disagreeing, languages the model has seen least; spread over languages and stages, with
    the current predictions as suggestions and empty stage/sentiment/touchpoints columns."""
    import pandas as pd

    from feedback_nlp.active import priority, select_for_labelling
    from feedback_nlp.config import load_journey_map
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import load_model
    from feedback_nlp.zeroshot import build_prototypes, prototype_proba

    settings, _ = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    path = Path(run_dir) / "units.parquet"
    if not path.is_file():
        raise InputError("E520", f"{path}: not found; --from takes the output folder of `feedback-nlp run`")
    units = pd.read_parquet(path)
    model = load_model(model_path or settings.model)
    journey = load_journey_map(settings.journey_map)
    emb = Embedder(settings.embedder, threads=settings.threads)
    protos = build_prototypes(journey, emb.encode, [], settings.zero_shot_temperature)
    X = emb.encode(units["text"].astype(str).tolist(), batch_size=settings.embed_batch_size)
    proto_stage = pd.Series(list(protos.stage_ids), dtype=object).iloc[prototype_proba(X, protos).argmax(axis=1)]
    seen = model.meta.get("training_data", {}).get("per_language", {})
    sheet = select_for_labelling(priority(units, proto_stage.reset_index(drop=True), seen), n, seed=seed)
    sheet.to_csv(out_path, index=False)
    if not quiet:
        click.echo(f"{len(sheet)} units written to {out_path}: " + ", ".join(
            f"{k} {v}" for k, v in sheet["lang"].value_counts().sort_index().items()))


@main.command("audit-labels", context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--top", type=int, default=30, show_default=True, help="Rows listed on the terminal.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write every row, ranked, as CSV.")
@common_options
@handle_errors
def audit_labels(files: tuple[str, ...], top: int, out_path: str | None, config_path: str | None,
                 columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """List labelled units whose label disagrees most with cross-validated predictions (5 folds),
    for a second look."""
    from feedback_nlp.active import audit
    from feedback_nlp.classify import LinearHead
    from feedback_nlp.embed import Embedder
    from feedback_nlp.train import read_labelled

    settings, columns = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    df = read_labelled(files, columns, settings)
    emb = Embedder(settings.embedder, threads=settings.threads)
    X = emb.encode(df["text"].tolist(), batch_size=settings.embed_batch_size)
    ranked = audit(X, df, lambda: LinearHead(C=4.0))
    if out_path:
        ranked.to_csv(out_path, index=False)
    for r in ranked.head(top).itertuples():
        click.echo(f"{r.source_file}, row {r.row}: labelled {r.stage}/{r.sentiment}, cross-validated "
                   f"{r.cv_stage}/{r.cv_sentiment} (p of label {min(r.p_stage_label, r.p_sentiment_label):.2f}): "
                   f"{r.text[:90]}")


@main.group(context_settings=CONTEXT)
def models() -> None:
    """The model registry: list, show, promote, roll back and compare versions under models/."""


def _models_root(model_setting: str | None = None) -> Path:
    """The registry folder: $FEEDBACK_NLP_MODELS, else the folder of the configured pointer."""
    import os

    from feedback_nlp.config import load_settings, resolve
    from feedback_nlp.persist import POINTER

    if os.environ.get("FEEDBACK_NLP_MODELS"):
        return Path(os.environ["FEEDBACK_NLP_MODELS"])
    model = model_setting or load_settings().model
    return resolve(model).parent if Path(model).name == POINTER else resolve("models")


@models.command("list", context_settings=CONTEXT)
@handle_errors
def models_list() -> None:
    """Versions with creation time, training rows and held-out macro-F1; * marks the current one."""
    from feedback_nlp import registry

    for v in registry.versions(_models_root()):
        f1 = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        click.echo(f"{'*' if v.current else ' '} {v.id:<16} {v.created:<26} rows {v.rows:>6}  "
                   f"stage F1 {f1(v.stage_f1)}  sentiment F1 {f1(v.sentiment_f1)}")


@models.command("show", context_settings=CONTEXT)
@click.argument("version")
@handle_errors
def models_show(version: str) -> None:
    """Print a version's model card."""
    from feedback_nlp import registry

    folder = registry._version_folder(_models_root(), version)
    card = folder / "card.md"
    click.echo(card.read_text(encoding="utf-8") if card.is_file() else f"{folder}: no card.md")


@models.command("promote", context_settings=CONTEXT)
@click.argument("version")
@click.option("--reason", default="promoted by hand", show_default=True,
              help="Why, for models/HISTORY.jsonl (e.g. the figures that decided it).")
@handle_errors
def models_promote(version: str, reason: str) -> None:
    """Make VERSION the current model."""
    from feedback_nlp import registry

    registry.promote(_models_root(), version, reason)
    click.echo(f"current model: {version}")


@models.command("rollback", context_settings=CONTEXT)
@handle_errors
def models_rollback() -> None:
    """Make the version that was current before the last promotion current again."""
    from feedback_nlp import registry

    click.echo(f"current model: {registry.rollback(_models_root())}")


@models.command("diff", context_settings=CONTEXT)
@click.argument("version_a")
@click.argument("version_b")
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--limit", type=int, default=20, show_default=True, help="Units listed.")
@common_options
@handle_errors
def models_diff(version_a: str, version_b: str, data: tuple[str, ...], limit: int, config_path: str | None,
                columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """How predictions on DATA (feedback files) change from VERSION_A to VERSION_B: which units
    moved stage or sentiment."""
    import tempfile

    import pandas as pd

    from feedback_nlp import registry
    from feedback_nlp.config import load_journey_map
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import embedder_spec, load_model
    from feedback_nlp.pipeline import run_batch

    settings, columns = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    root = _models_root()
    journey = load_journey_map(settings.journey_map)
    embedders: dict[str, Embedder] = {}
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, v in enumerate((version_a, version_b)):
            model = load_model(registry._version_folder(root, v))
            spec = embedder_spec(model, settings.embedder)  # a fine-tuned model brings its own; --embedder: the other
            if spec not in embedders:
                embedders[spec] = Embedder(spec, threads=settings.threads)
            emb = embedders[spec]
            run_batch(data, journey=journey, settings=settings, columns=columns, model=model, embedder=emb,
                      out_dir=Path(tmp) / str(i), quiet=True)
            frames.append(pd.read_parquet(Path(tmp) / str(i) / "units.parquet"))
    d = registry.diff_predictions(*frames)
    n = len(frames[0])
    click.echo(f"{len(d)} of {n} units changed stage or sentiment from {version_a} to {version_b}")
    for r in registry.moves_table(d).itertuples():
        click.echo(f"  {r._1:<12} -> {r.to:<12} {r.units}")
    for r in d.head(limit).itertuples():
        click.echo(f"  [{r.stage_a}/{r.sentiment_a} -> {r.stage_b}/{r.sentiment_b}] {r.text[:100]}")


@main.command(context_settings=CONTEXT)
@click.argument("model_path")
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write metrics JSON here.")
@common_options
@handle_errors
def evaluate(model_path: str, data: tuple[str, ...], json_out: str | None, config_path: str | None,
             columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """Evaluate MODEL on labelled DATA it was not trained on: accuracy, macro-F1, per class,
    per language, confusion matrix. A row may leave stage or sentiment empty (stage-only labels
    for a new map): each head is measured on the rows that label it."""
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import embedder_spec, load_model
    from feedback_nlp.train import evaluate_model, read_labelled

    settings, columns = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    model = load_model(model_path)
    emb = Embedder(embedder_spec(model, settings.embedder, explicit=embedder), threads=settings.threads)
    model.check_embedder(emb.id)
    df = read_labelled(data, columns, settings, partial=True)
    X = emb.encode(df["text"].tolist(), batch_size=settings.embed_batch_size)
    metrics = evaluate_model(model, X, df, touchpoint_threshold=settings.touchpoint_min_probability)
    for head in ("stage", "sentiment"):
        if head not in metrics:
            click.echo(f"{head}: no row of DATA labels it")
            continue
        m = metrics[head]
        click.echo(f"{head}: n={m['n']} accuracy {m['accuracy']:.3f} macro-F1 {m['macro_f1']:.3f}")
        for lang, v in m["per_language"].items():
            click.echo(f"  {lang}: n={v['n']} accuracy {v['accuracy']:.3f} macro-F1 {v['macro_f1']:.3f}")
        click.echo("  class         precision recall support")
        for cls, v in m["per_class"].items():
            click.echo(f"  {cls:<13} {v['precision']:.3f}     {v['recall']:.3f}  {v['support']}")
        labels = m["confusion"]["labels"]
        click.echo("  confusion (rows true, columns predicted): " + " ".join(lb[:5] for lb in labels))
        for lb, row in zip(labels, m["confusion"]["matrix"]):
            click.echo(f"  {lb[:12]:<12} " + " ".join(f"{x:>5}" for x in row))
    tp = metrics.get("touchpoints")
    if tp and "micro_f1" in tp:
        click.echo(f"touchpoints: micro-F1 {tp['micro_f1']:.3f} macro-F1 {tp['macro_f1']:.3f}")
        click.echo("  touchpoint          precision recall support")
        for label, v in tp["per_label"].items():
            if v["support"]:
                click.echo(f"  {label:<19} {v['precision']:.3f}     {v['recall']:.3f}  {v['support']}")
    fb = metrics.get("feedback")
    if fb:
        click.echo(f"feedback: {fb['judged_not_feedback']} of {fb['n']} labelled units judged not feedback "
                   f"({fb['share_judged_not_feedback']:.1%}) before any run's own feedback prior")
    if json_out:
        Path(json_out).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


@main.command(context_settings=CONTEXT)
@click.option("--tier", type=click.Choice(["use-m3-static", "use-m3-onnx"]), default="use-m3-static",
              show_default=True, help="use-m3-static: the --fast tier; use-m3-onnx: needs feedback_nlp[onnx].")
@click.option("--force", is_flag=True, help="Rebuild even if the cache already holds the tier.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Run settings YAML (default: configs/run.yaml).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the folder.")
@handle_errors
def distill(tier: str, force: bool, config_path: str | None, quiet: bool) -> None:
    """Build a fast tier into the cache (FEEDBACK_NLP_CACHE, default ~/.cache/feedback_nlp).

    use-m3-static: one vector per SentencePiece piece, distilled from use-m3 (PCA, SIF weights),
    saved as a sentence-transformers StaticEmbedding folder. Either tier gets its own heads,
    trained on corpora/seed; the card's held-out metrics are printed. `run --fast` does the
    same on first use.
    """
    import shutil

    from feedback_nlp.config import load_journey_map
    from feedback_nlp.distill import ensure_tier, tier_dir

    settings, columns = _setup(config_path, None, ())
    journey = load_journey_map(settings.journey_map)
    if force:
        shutil.rmtree(tier_dir(tier), ignore_errors=True)
    folder = ensure_tier(tier, settings=settings, columns=columns, journey=journey, quiet=quiet)
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    if not quiet:
        m = card["evaluation"]["metrics"]
        for head in ("stage", "sentiment"):
            click.echo(f"{head}: held-out accuracy {m[head]['accuracy']:.3f}, macro-F1 {m[head]['macro_f1']:.3f}")
    click.echo(f"{card['embedder_id']}: embedder and heads in {tier_dir(tier)}")


@main.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["html", "md", "table"]), default="html", show_default=True,
              help="html: re-render report.html; md: a Markdown summary for e-mail or chat (stdout); "
                   "table: the terminal table.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write here instead (default: RUN_DIR/report.html for html, stdout for md and table).")
@handle_errors
def report(run_dir: str, fmt: str, out_path: str | None) -> None:
    """Re-render the report from an existing output folder (journey_map.json, cells.csv)."""
    from feedback_nlp.report import render_run

    text, written = render_run(Path(run_dir), fmt, Path(out_path) if out_path else None)
    click.echo(f"report written to {written}" if written else text)
