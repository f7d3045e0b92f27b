"""Labelled training data in the layouts its publishers use, read into one frame of rows.

A training recipe (recipe.py) mixes the project's own corpora with real data written by others
(UMSAB tweets, Banking77 requests, GermEval rail feedback). Those sets are read where they lie,
under a benchmarks folder (default `../shared/benchmarks`), at training time: nothing is copied
into the repository. Every reader returns the same columns (`ROWS`), with empty strings for the
labels a set does not have, so each head trains on the rows that carry its label:

- `stage`: a stage of the map, or `stage::detail` when the set has finer labels (a Banking77
  intent): the stage head learns the details as subclasses (classify.LinearHead);
- `sentiment`: negative, neutral or positive;
- `feedback`: `yes` (the text is feedback on a customer's journey) or `no`;
- `touchpoints`: touchpoint ids separated by `;`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from feedback_nlp.clean import clean_text, has_content
from feedback_nlp.config import project_root, resolve
from feedback_nlp.errors import InputError, MissingDataError, where
from feedback_nlp.records import SENTIMENTS

ROWS = ["source", "file", "row", "text", "lang", "stage", "sentiment", "feedback", "touchpoints"]
SUBCLASS_SEP = "::"
BENCHMARKS_ENV = "FEEDBACK_NLP_BENCHMARKS"
UMSAB_LANGS = {"arabic": "ar", "english": "en", "french": "fr", "german": "de", "hindi": "hi", "italian": "it",
               "portuguese": "pt", "spanish": "es"}
UMSAB_LABELS = ("negative", "neutral", "positive")  # 0, 1, 2 in the published files


def benchmarks_root(explicit: str | Path | None = None) -> Path:
    """--benchmarks, else $FEEDBACK_NLP_BENCHMARKS, else `../shared/benchmarks` beside the project."""
    value = explicit or os.environ.get(BENCHMARKS_ENV)
    return Path(value).expanduser().resolve() if value else (project_root().parent / "shared" / "benchmarks")


def require(path: Path, what: str, root: Path) -> Path:
    """`path`, or a MissingDataError (exit 3) saying what is missing and how to point at it."""
    if not path.exists():
        hint = (f"the benchmarks folder {root} does not exist" if not root.exists()
                else f"{path.relative_to(root) if path.is_relative_to(root) else path} is not in {root}")
        raise MissingDataError(
            "E530", f"{what} not found: {hint}. The recipe reads real labelled data at training time and never "
            f"copies it into the repository; put the benchmarks beside the project (../shared/benchmarks), or pass "
            f"--benchmarks DIR or set {BENCHMARKS_ENV}")
    return path


def _frame(rows: dict[str, Any], source: str) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["source"] = source
    for c in ROWS:
        if c not in df.columns:
            df[c] = ""
    df["text"] = df["text"].astype(str).map(clean_text)
    df = df[df["text"].map(has_content)]
    return df[ROWS].reset_index(drop=True)


def read_umsab(root: Path, *, split: str, languages: Iterable[str], source: str = "umsab",
               feedback: str = "") -> pd.DataFrame:
    """UMSAB (cardiffnlp/xlm-t): `<language>/<split>_{text,labels}.txt`, labels 0/1/2."""
    frames = []
    for name in languages:
        folder = require(root / name, f"UMSAB language folder {name!r}", root)
        t_path = require(folder / f"{split}_text.txt", f"UMSAB {name} {split} texts", root)
        texts = t_path.read_text(encoding="utf-8").splitlines()
        labels = (folder / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()
        if len(texts) != len(labels):
            raise InputError("E531", f"{t_path}: {len(texts)} texts but {len(labels)} labels")
        try:
            sent = [UMSAB_LABELS[int(v)] for v in labels]
        except (ValueError, IndexError) as e:
            raise InputError("E531", f"{folder / f'{split}_labels.txt'}: labels are 0, 1 or 2 ({e})") from e
        frames.append(_frame({"file": str(t_path), "row": np.arange(1, len(texts) + 1), "text": texts,
                              "lang": UMSAB_LANGS.get(name, name), "sentiment": sent, "feedback": feedback}, source))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROWS)


def load_mapping(path: str | Path, known_stages: Iterable[str]) -> dict[str, Any]:
    """A mapping file (configs/mappings/): {stages: {stage: [label, ...]}, subcategories, left_out}.
    Every stage must be one of the map's; a label listed twice is an error."""
    p = resolve(path)
    try:
        raw = __import__("yaml").safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise InputError("E532", f"{p}: cannot read the mapping file ({e})") from e
    stages = raw.get("stages") or {}
    known = set(known_stages)
    label_to_stage: dict[str, str] = {}
    for stage, labels in stages.items():
        if stage not in known:
            raise InputError("E532", f"{where(p, field='stages')}: {stage!r} is not a stage of the map {sorted(known)}")
        for label in labels or []:
            if label in label_to_stage:
                raise InputError("E532", f"{where(p, field='stages')}: {label!r} is mapped twice")
            label_to_stage[str(label)] = stage
    subs = {str(k): str(v) for k, v in (raw.get("subcategories") or {}).items()}
    for k, v in subs.items():
        if v not in known:
            raise InputError("E532", f"{where(p, field='subcategories')}: {k}: {v!r} is not a stage of the map")
    return {"path": str(p), "stages": label_to_stage, "subcategories": subs,
            "left_out": [str(x) for x in raw.get("left_out") or []]}


def read_banking77(root: Path, *, mapping: dict[str, Any], file: str = "banking77/train.csv",
                   source: str = "banking77") -> pd.DataFrame:
    """Banking77 (PolyAI): `train.csv` (text, category). Stage labels `stage::intent` from the
    mapping; intents the mapping leaves out keep no stage. Every request is feedback."""
    path = require(root / file, "Banking77 train.csv", root)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"text", "category"} <= set(df.columns):
        raise InputError("E531", f"{path}: expected columns text, category; found {list(df.columns)}")
    unknown = sorted(set(df["category"]) - set(mapping["stages"]) - set(mapping["left_out"]))
    if unknown:
        raise InputError("E533", f"{mapping['path']}: Banking77 intents {unknown} are neither mapped nor left out")
    stage = [f"{mapping['stages'][c]}{SUBCLASS_SEP}{c}" if c in mapping["stages"] else "" for c in df["category"]]
    return _frame({"file": str(path), "row": np.arange(1, len(df) + 1), "text": df["text"], "lang": "en",
                   "stage": stage, "feedback": "yes"}, source)


def germeval_stage(aspects: str, mapping: dict[str, Any]) -> str:
    """The stage all of a GermEval document's mapped aspects agree on, else ''."""
    found = set()
    for a in aspects.split():
        cat_sub = a.rsplit(":", 1)[0]
        stage = mapping["subcategories"].get(cat_sub) or mapping["stages"].get(cat_sub.split("#", 1)[0])
        if stage:
            found.add(stage)
    return found.pop() if len(found) == 1 else ""


def read_germeval(root: Path, *, mapping: dict[str, Any] | None, file: str = "germeval2017/dev.tsv",
                  source: str = "germeval2017") -> pd.DataFrame:
    """GermEval 2017: TSV of URL, text, relevance, sentiment, aspects. Lines with fewer than 4
    fields (a fragment with an embedded newline in the published file) are skipped."""
    path = require(root / file, f"GermEval 2017 {Path(file).name}", root)
    rows: dict[str, list] = {"row": [], "text": [], "sentiment": [], "feedback": [], "stage": []}
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                continue
            sentiment = parts[3].strip().lower()
            if sentiment not in SENTIMENTS:
                raise InputError("E531", f"{where(path, i, 'sentiment')}: {parts[3]!r} is not one of {list(SENTIMENTS)}")
            rows["row"].append(i)
            rows["text"].append(parts[1])
            rows["sentiment"].append(sentiment)
            rows["feedback"].append("yes" if parts[2].strip().lower() == "true" else "no")
            rows["stage"].append(germeval_stage(parts[4], mapping) if mapping and len(parts) > 4 else "")
    return _frame({**rows, "file": str(path), "lang": "de"}, source)


def read_social(path: str | Path, *, stage_ids: Iterable[str], source: str = "social") -> pd.DataFrame:
    """The project's social corpus (corpora/social/<lang>.csv): text, feedback (yes/no), stage
    (feedback rows only), sentiment, industry."""
    known = set(stage_ids)
    frames = []
    files = sorted(Path(resolve(path)).glob("*.csv")) if Path(resolve(path)).is_dir() else [Path(resolve(path))]
    for f in files:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        need = {"text", "feedback", "stage", "sentiment"}
        if not need <= set(df.columns):
            raise InputError("E534", f"{f}: expected columns {sorted(need)}; found {list(df.columns)}")
        for i, r in enumerate(df.itertuples(index=False), start=1):
            if r.feedback not in ("yes", "no"):
                raise InputError("E534", f"{where(f, i, 'feedback')}: {r.feedback!r} is not yes or no")
            if r.sentiment not in SENTIMENTS:
                raise InputError("E534", f"{where(f, i, 'sentiment')}: {r.sentiment!r} is not one of {list(SENTIMENTS)}")
            if (r.feedback == "yes") != (r.stage in known) or (r.feedback == "no" and r.stage):
                raise InputError("E534", f"{where(f, i, 'stage')}: {r.stage!r}: feedback rows take a stage of the map, "
                                 "other rows none")
        frames.append(_frame({"file": str(f), "row": np.arange(1, len(df) + 1), "text": df["text"], "lang": f.stem,
                              "stage": df["stage"], "sentiment": df["sentiment"], "feedback": df["feedback"]}, source))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROWS)


def read_labelled_corpus(paths: Iterable[str | Path], *, columns: Any, settings: Any, source: str = "seed"
                         ) -> pd.DataFrame:
    """Files in the project's labelling format (text, stage, sentiment, touchpoints), strictly
    (train.read_labelled): every row is feedback."""
    from feedback_nlp.train import read_labelled

    df = read_labelled([resolve(p) for p in paths], columns, settings)
    return _frame({"file": df["source_file"].astype(str), "row": df["row"].astype(int), "text": df["text"],
                   "lang": df["lang"].astype(str), "stage": df["stage"], "sentiment": df["sentiment"],
                   "feedback": "yes", "touchpoints": df["touchpoints"].fillna("").astype(str)}, source)


def describe(df: pd.DataFrame) -> dict[str, Any]:
    """Rows per label kind, for the model card."""
    return {"rows": int(len(df)),
            "with_stage": int((df["stage"] != "").sum()),
            "with_sentiment": int((df["sentiment"] != "").sum()),
            "with_feedback": int((df["feedback"] != "").sum()),
            "languages": {k: int(v) for k, v in df["lang"].value_counts().sort_index().items()}}
