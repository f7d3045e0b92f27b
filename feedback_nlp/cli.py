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
from feedback_nlp.errors import FeedbackError

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
                     help="'use-m3' (default) or a sentence-transformers model folder on disk."),
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
@common_options
@handle_errors
def run(inputs: tuple[str, ...], map_path: str | None, out_dir: str, model_path: str | None, write_csv: bool,
        chunk_size: int | None, stage_min_confidence: float | None, config_path: str | None,
        columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """Score feedback files (CSV, TSV, JSONL, Parquet; files or folders) onto a journey map.

    Writes into OUT: journey_map.json (the map with scores), units.parquet (every unit with
    language, stage, sentiment and probabilities), scores.csv (all score cells), quarantine.csv
    (rows that could not be used, with the reason), summary.md and run.json.
    """
    from feedback_nlp.config import load_journey_map
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import load_model
    from feedback_nlp.pipeline import run_batch
    from feedback_nlp.read import discover
    from feedback_nlp.report import summary_table

    settings, columns = _setup(config_path, columns_path, column_overrides, chunk_size=chunk_size,
                               stage_min_confidence=stage_min_confidence, embedder=embedder)
    discover(inputs)  # bad paths fail before models load
    journey = load_journey_map(map_path or settings.journey_map)
    model = load_model(model_path or settings.model)
    emb = Embedder(settings.embedder, threads=settings.threads)
    result = run_batch(inputs, journey=journey, settings=settings, columns=columns, model=model, embedder=emb,
                       out_dir=out_dir, write_csv=write_csv, quiet=quiet)
    if not quiet:
        click.echo(summary_table(result.journey_map))
        c = result.counts
        if c.rows_quarantined:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.quarantine_reasons.items()))
            click.echo(f"{c.rows_quarantined} rows quarantined ({reasons}): see {Path(out_dir) / 'quarantine.csv'}",
                       err=True)
        click.echo(f"outputs in {out_dir}/", err=True)


@main.command(context_settings=CONTEXT)
@click.argument("labels", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Model folder to write, e.g. models/seed-v2.")
@click.option("--id", "model_id", default=None, help="Model id (default: the folder name).")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Journey map whose touchpoints the touchpoint head learns.")
@click.option("--test-size", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Share of rows held out for the model card's metrics.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--promote", is_flag=True, help="Point models/CURRENT at the new model.")
@common_options
@handle_errors
def train(labels: tuple[str, ...], out_dir: str, model_id: str | None, map_path: str | None, test_size: float,
          seed: int, promote: bool, config_path: str | None, columns_path: str | None,
          column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """Train stage, sentiment and touchpoint heads on labelled files (columns text, stage,
    sentiment, optional touchpoints separated by ';').

    Metrics in the model card come from a stratified held-out split, never from training rows.
    """
    from feedback_nlp.config import load_journey_map, resolve
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import POINTER, save_model
    from feedback_nlp.train import model_card, read_labelled
    from feedback_nlp.train import train as train_model

    settings, columns = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FeedbackError("E510", f"{out} exists and is not empty; model versions are never overwritten")
    journey = load_journey_map(map_path or settings.journey_map)
    df = read_labelled(labels, columns, settings)
    emb = Embedder(settings.embedder, threads=settings.threads)
    from tqdm import tqdm

    with tqdm(total=len(df), unit="unit", desc="embedding", file=sys.stderr, disable=quiet, leave=False) as bar:
        X = emb.encode(df["text"].tolist(), batch_size=settings.embed_batch_size, progress=bar.update)
    model, metrics = train_model(df, X, model_id=model_id or out.name, embedder_id=emb.id,
                                 embedder_desc=emb.info.description, test_size=test_size, seed=seed,
                                 tp_labels=[t.id for t in journey.touchpoints], sources=[str(p) for p in labels])
    md, js = model_card(model)
    save_model(model, out, {"card.md": md, "card.json": js})
    if promote:
        pointer = resolve(settings.model) if Path(settings.model).name == POINTER else out.parent / POINTER
        pointer.write_text(out.resolve().name + "\n", encoding="utf-8")
    if not quiet:
        for head in ("stage", "sentiment"):
            click.echo(f"{head}: held-out accuracy {metrics[head]['accuracy']:.3f}, macro-F1 {metrics[head]['macro_f1']:.3f}")
        click.echo(f"model written to {out}" + (" and promoted" if promote else ""))


@main.command(context_settings=CONTEXT)
@click.argument("model_path")
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write metrics JSON here.")
@common_options
@handle_errors
def evaluate(model_path: str, data: tuple[str, ...], json_out: str | None, config_path: str | None,
             columns_path: str | None, column_overrides: tuple[str, ...], embedder: str | None, quiet: bool) -> None:
    """Evaluate MODEL on labelled DATA it was not trained on: accuracy, macro-F1, per class,
    per language, confusion matrix."""
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import load_model
    from feedback_nlp.train import evaluate_model, read_labelled

    settings, columns = _setup(config_path, columns_path, column_overrides, embedder=embedder)
    model = load_model(model_path)
    emb = Embedder(settings.embedder, threads=settings.threads)
    model.check_embedder(emb.id)
    df = read_labelled(data, columns, settings)
    X = emb.encode(df["text"].tolist(), batch_size=settings.embed_batch_size)
    metrics = evaluate_model(model, X, df, touchpoint_threshold=settings.touchpoint_min_probability)
    for head in ("stage", "sentiment"):
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
    if json_out:
        Path(json_out).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


@main.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "table"]), default="table", show_default=True)
@handle_errors
def report(run_dir: str, fmt: str) -> None:
    """Re-render a summary from an existing output folder (journey_map.json)."""
    from feedback_nlp.report import markdown_summary, summary_table

    path = Path(run_dir) / "journey_map.json"
    if not path.is_file():
        raise FeedbackError("E600", f"{path}: not found; is {run_dir} the output folder of `feedback-nlp run`?")
    jm = json.loads(path.read_text(encoding="utf-8"))
    click.echo(markdown_summary(jm) if fmt == "md" else summary_table(jm))
