"""Train and evaluate the heads on labelled units; write a model folder with its card.

Metrics always come from rows the heads did not see: a stratified held-out split at training
time, or another labelled file with `evaluate`. The shipped heads are then refit on all rows,
and the card says so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.model_selection import train_test_split

from feedback_nlp import __version__
from feedback_nlp.classify import KernelMap, LinearHead, Model, MultiLabelHead
from feedback_nlp.clean import clean_text
from feedback_nlp.config import ColumnMap, Settings, TrainSettings
from feedback_nlp.errors import InputError, where
from feedback_nlp.language import language_chunk
from feedback_nlp.read import ROW, discover, map_columns, read_raw_chunks
from feedback_nlp.records import SENTIMENTS


MAP_SOURCE = "map"  # `source` of rows made from the journey map's own phrases
LABEL_COLUMNS = ["source_file", "row", "text", "lang", "stage", "sentiment", "touchpoints", "channel", "source"]


def _read_label_rows(inputs: Iterable[str | Path], columns: ColumnMap,
                     settings: Settings) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """All labelled rows as read (labels unchecked), and the rows that could not be read."""
    frames, issues = [], []
    for path in discover(inputs):
        for raw, bad in read_raw_chunks(path, settings.chunk_size):
            issues.extend({"source_file": str(path), "row": b["row"], "field": b["field"] or "",
                           "problem": b["reason"], "detail": b["detail"]} for b in bad)
            if raw.columns.tolist() == [ROW]:
                continue
            lower = {c.lower(): c for c in raw.columns}
            if "stage" not in lower and "sentiment" not in lower:
                raise InputError("E501", f"{where(path, field='stage')}: labelled data needs a `stage` or a "
                                 f"`sentiment` column (or both); found {[c for c in raw.columns if c != ROW]}")
            mapped = map_columns(raw, path, columns, max_text_chars=settings.max_text_chars)
            issues.extend({"source_file": r.source_file, "row": int(r.row), "field": r.field,
                           "problem": r.reason, "detail": r.detail} for r in mapped.quarantine.itertuples())
            items = mapped.items.copy()
            by_row = raw.set_index(ROW)
            for label in ("stage", "sentiment"):  # a missing column: every row leaves that label empty
                col = lower.get(label)
                if col is None:
                    items[label] = ""
                    continue
                values = by_row.loc[items["row"], col].fillna("").astype(str).str.strip()
                items[label] = (values.str.lower() if label == "sentiment" else values).to_numpy()
            tp = lower.get("touchpoints")
            items["touchpoints"] = by_row.loc[items["row"], tp].map(_touchpoint_list).to_numpy() if tp else ""
            frames.append(items)
    if not frames:
        return pd.DataFrame(columns=LABEL_COLUMNS), issues
    df = pd.concat(frames, ignore_index=True)
    df["text"] = df["text"].map(clean_text)
    df = language_chunk(df, detect_languages=settings.detect_languages, supported=settings.languages,
                        min_confidence=settings.language_min_confidence,
                           max_chars=settings.language_max_chars,
                           low_accuracy_min_chars=settings.language_low_accuracy_min_chars)
    return df[LABEL_COLUMNS], issues


def read_labelled(inputs: Iterable[str | Path], columns: ColumnMap, settings: Settings, *,
                  partial: bool = False) -> pd.DataFrame:
    """Labelled units, strictly: the first bad row is an error naming file, row and field.
    With `partial`, a row may leave its stage or its sentiment empty (not both)."""
    df, issues = _read_label_rows(inputs, columns, settings)
    if issues:
        i = issues[0]
        raise InputError("E502", f"{where(i['source_file'], i['row'], i['field'] or None)}: {i['problem']}: {i['detail']}")
    if partial:
        both = df[(df["stage"] == "") & (df["sentiment"] == "")]
        if len(both):
            r = both.iloc[0]
            raise InputError("E504", f"{where(r['source_file'], int(r['row']), 'stage')}: stage and sentiment are "
                             "both empty")
    bad_sent = df[~df["sentiment"].isin([*SENTIMENTS, *([""] if partial else [])])]
    if len(bad_sent):
        r = bad_sent.iloc[0]
        raise InputError("E503", f"{where(r['source_file'], int(r['row']), 'sentiment')}: "
                         f"{r['sentiment']!r} is not one of {list(SENTIMENTS)}")
    empty_stage = df[df["stage"] == ""]
    if len(empty_stage) and not partial:
        r = empty_stage.iloc[0]
        raise InputError("E504", f"{where(r['source_file'], int(r['row']), 'stage')}: stage is empty")
    return df


def load_labels(sources: list[list[str | Path]], columns: ColumnMap, settings: Settings,
                stage_ids: list[str], *, sentiment_only: Iterable[int] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge labelled sources in order (later sources win on the same unit text) and validate.

    A row may leave its stage or its sentiment empty: it trains the other head only (a few stage
    labels for a new map need no sentiment). The source groups listed in `sentiment_only` were
    labelled for another journey map: their stages are dropped, their sentiment kept.

    Returns (usable rows, issues). Every row left out is in `issues` with file, row, field and
    the problem: unreadable, empty text, no label, unknown stage or sentiment, conflicting
    duplicates within one source (all copies left out), or overridden by a later source.
    """
    issues: list[dict[str, Any]] = []
    kept: list[pd.DataFrame] = []
    other_map = set(sentiment_only)
    for rank, group in enumerate(sources):
        df, read_issues = _read_label_rows(group, columns, settings)
        issues.extend(read_issues)
        if rank in other_map:
            df["stage"] = ""
        none = (df["stage"] == "") & (df["sentiment"] == "")
        for r in df[none].itertuples():
            issues.append({"source_file": r.source_file, "row": int(r.row), "field": "stage,sentiment",
                           "problem": "no_label", "detail": "neither a stage nor a sentiment"})
        df = df[~none]
        bad_stage = ~df["stage"].isin([*stage_ids, ""])
        bad_sent = ~df["sentiment"].isin([*SENTIMENTS, ""])
        for r in df[bad_stage].itertuples():
            issues.append({"source_file": r.source_file, "row": int(r.row), "field": "stage",
                           "problem": "unknown_stage", "detail": f"{r.stage!r} is not one of {stage_ids}"})
        for r in df[bad_sent & ~bad_stage].itertuples():
            issues.append({"source_file": r.source_file, "row": int(r.row), "field": "sentiment",
                           "problem": "unknown_sentiment", "detail": f"{r.sentiment!r} is not one of {list(SENTIMENTS)}"})
        df = df[~bad_stage & ~bad_sent].copy()
        df["key"] = df["text"].str.strip().str.lower()
        labels = df.groupby("key")[["stage", "sentiment"]].nunique()
        conflicted = set(labels[(labels["stage"] > 1) | (labels["sentiment"] > 1)].index)
        for r in df[df["key"].isin(conflicted)].itertuples():
            issues.append({"source_file": r.source_file, "row": int(r.row), "field": "stage,sentiment",
                           "problem": "conflicting_duplicate",
                           "detail": "the same text has different labels in this source; fix one copy"})
        df = df[~df["key"].isin(conflicted)].drop_duplicates("key", keep="last")
        df["rank"] = rank
        kept.append(df)
    merged = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=[*LABEL_COLUMNS, "key", "rank"])
    later = merged.duplicated("key", keep="last")
    for r in merged[later].itertuples():
        issues.append({"source_file": r.source_file, "row": int(r.row), "field": "",
                       "problem": "overridden", "detail": "a later label file labels the same text"})
    merged = merged[~later].drop(columns=["key", "rank"]).reset_index(drop=True)
    cols = ["source_file", "row", "field", "problem", "detail"]
    return merged, pd.DataFrame(issues, columns=cols)


def _touchpoint_list(value: object) -> str:
    """`a;b` (CSV) or a JSON list `["a", "b"]` (JSONL) -> `a;b`."""
    text = str(value or "").strip()
    if text.startswith("["):
        try:
            return ";".join(str(x) for x in json.loads(text))
        except json.JSONDecodeError:
            pass
    return text


def fingerprint(df: pd.DataFrame) -> str:
    """Order-independent hash of the labelled rows that matter for training."""
    rows = sorted("\x1f".join(map(str, r)) for r in df[["text", "stage", "sentiment", "touchpoints"]].itertuples(index=False))
    return hashlib.sha256("\x1e".join(rows).encode("utf-8")).hexdigest()


def touchpoint_matrix(values: pd.Series, labels: list[str]) -> np.ndarray:
    index = {t: j for j, t in enumerate(labels)}
    Y = np.zeros((len(values), len(labels)), dtype=int)
    for i, v in enumerate(values.fillna("").astype(str)):
        for t in filter(None, (x.strip() for x in v.split(";"))):
            if t in index:
                Y[i, index[t]] = 1
    return Y


def classification_metrics(y_true: Iterable[str], y_pred: Iterable[str], langs: Iterable[str],
                           labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1, per-language figures, confusion matrix."""
    y_true, y_pred, langs = np.asarray(list(y_true)), np.asarray(list(y_pred)), np.asarray(list(langs))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_lang = {}
    for lang in sorted(set(langs)):
        m = langs == lang
        per_lang[lang] = {
            "n": int(m.sum()),
            "accuracy": float(accuracy_score(y_true[m], y_pred[m])),
            "macro_f1": float(f1_score(y_true[m], y_pred[m], labels=[lb for lb in labels if lb in set(y_true[m])],
                                       average="macro", zero_division=0)),
        }
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {lb: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, lb in enumerate(labels)},
        "per_language": per_lang,
        "confusion": {"labels": labels, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
    }


def multilabel_metrics(Y_true: np.ndarray, Y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    if Y_true.size == 0 or not labels:
        return {"labels": 0}
    p, r, f, s = precision_recall_fscore_support(Y_true, Y_pred, average=None, zero_division=0)
    return {
        "micro_f1": float(f1_score(Y_true, Y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(Y_true, Y_pred, average="macro", zero_division=0)),
        "per_label": {lb: {"precision": float(p[i]), "recall": float(r[i]), "support": int(s[i])}
                      for i, lb in enumerate(labels)},
    }


def labelled(df: pd.DataFrame, label: str) -> np.ndarray:
    """Rows that carry `label` (partial rows leave stage or sentiment empty)."""
    return (df[label].astype(str) != "").to_numpy()


def check_labels(df: pd.DataFrame) -> None:
    """Each head needs two classes among the rows that label it."""
    for label, hint in (("stage", "stage labels for the map"),
                        ("sentiment", "sentiment labels: `--labels FILE` merges yours over the seed corpus, "
                                      "whose sentiment labels serve any map")):
        found = sorted(set(df[label][labelled(df, label)]))
        if len(found) < 2:
            raise InputError("E514", f"the {label} head needs rows of at least two {label}s; found {found}. "
                             f"Give {hint}")


def fit_model(X: np.ndarray, df: pd.DataFrame, *, model_id: str, embedder_id: str, seed: int = 0,
              tp_labels: list[str] | None = None, ts: TrainSettings | None = None, adapter: bool = False) -> Model:
    """Heads on embeddings X of the rows `df`; with `adapter`, first a contrastive adapter
    (`ts.fine_tune`, finetune.py) trained on these rows, and the heads on its output."""
    ts = ts or TrainSettings()
    features = None
    fitted_adapter = None
    if adapter:
        from feedback_nlp.finetune import ContrastiveAdapter

        ft = ts.fine_tune
        fitted_adapter = ContrastiveAdapter(
            hidden=ft.adapter_hidden, epochs=ft.adapter_epochs, lr=ft.adapter_lr,
            pairs_per_unit=ft.adapter_pairs_per_unit, batch_size=ft.adapter_batch_size,
            weight_decay=ft.adapter_weight_decay, random_state=seed,
        ).fit(X, df[list(ft.labels)].to_numpy())
        X = fitted_adapter.transform(X)
    F = X
    if ts.kernel_components:
        features = KernelMap(n_components=ts.kernel_components, gamma=ts.kernel_gamma, random_state=seed).fit(X)
        F = features.transform(X)
    has_stage, has_sent = labelled(df, "stage"), labelled(df, "sentiment")
    stage = LinearHead(C=ts.C, random_state=seed).fit(F[has_stage], df["stage"].to_numpy()[has_stage])
    sentiment = LinearHead(C=ts.C, random_state=seed).fit(F[has_sent], df["sentiment"].to_numpy()[has_sent])
    touch = None
    if tp_labels:  # touchpoints are annotated with the journey stage: rows with a stage
        Y = touchpoint_matrix(df["touchpoints"][has_stage], tp_labels)
        if Y.sum():
            touch = MultiLabelHead(C=ts.touchpoint_C, min_positive=ts.touchpoint_min_positive,
                                   random_state=seed).fit(F[has_stage], Y, labels=tp_labels)
    return Model(model_id=model_id, embedder_id=embedder_id, stage=stage, sentiment=sentiment, touchpoints=touch,
                 features=features, adapter=fitted_adapter)


def reliability(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability table of the top-class probability, and the expected calibration error."""
    conf = proba.max(axis=1)
    correct = (classes[proba.argmax(axis=1)] == np.asarray(y_true)).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if not m.any():
            continue
        gap = abs(conf[m].mean() - correct[m].mean())
        ece += m.mean() * gap
        rows.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": int(m.sum()), "confidence": float(conf[m].mean()),
                     "accuracy": float(correct[m].mean())})
    return {"ece": float(ece), "bins": rows}


def evaluate_model(model: Model, X: np.ndarray, df: pd.DataFrame, *, touchpoint_threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of `model` on labelled rows `df` with embeddings `X`."""
    has = {h: labelled(df, h) for h in ("stage", "sentiment")}
    stage_labels = sorted(set(df["stage"][has["stage"]]) | set(model.stage.classes_))
    probs = model.probabilities(X, df["text"].astype(str).tolist())
    proba = {"stage": probs.stage, "sentiment": probs.sentiment}
    pred = {h: getattr(model, h).classes_[proba[h].argmax(axis=1)] for h in proba}
    # a head no row labels (stage-only or sentiment-only data) has no figures
    out = {h: classification_metrics(df[h][has[h]], pred[h][has[h]], df["lang"][has[h]], labels)
           for h, labels in (("stage", stage_labels), ("sentiment", list(SENTIMENTS))) if has[h].any()}
    for head in out:
        out[head]["calibration"] = reliability(df[head].to_numpy()[has[head]], proba[head][has[head]],
                                               getattr(model, head).classes_)
    if model.touchpoints is not None:
        labels = list(model.touchpoints.labels_)
        Y_true = touchpoint_matrix(df["touchpoints"][has["stage"]], labels)
        Y_pred = (probs.touchpoints[has["stage"]] >= touchpoint_threshold).astype(int)
        out["touchpoints"] = multilabel_metrics(Y_true, Y_pred, labels)
    if probs.feedback is not None:  # labelled rows are feedback: how many would be left out of scores
        out["feedback"] = {"n": int(len(df)), "judged_not_feedback": int((probs.feedback < 0.5).sum()),
                           "share_judged_not_feedback": float((probs.feedback < 0.5).mean()) if len(df) else 0.0}
    return out


def map_phrase_rows(journey: Any) -> pd.DataFrame:
    """The map's own words (each stage's name, description and examples) as stage-labelled rows:
    for a map no corpus labels, they are as many labels again as a user's first handful."""
    from feedback_nlp.zeroshot import stage_texts

    rows = [{"source_file": str(journey.path), "row": 0, "text": text, "lang": "und", "stage": stage.id,
             "sentiment": "", "touchpoints": "", "channel": "", "source": MAP_SOURCE}
            for stage in journey.stages for text in stage_texts(stage)]
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)


def split_indices(df: pd.DataFrame, *, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split `train` uses: stratified by stage and language. The map's own phrases
    (`map_phrase_rows`) always train: they are not what a run will classify."""
    always = ((df["source"].astype(str) == MAP_SOURCE).to_numpy(dtype=bool) if "source" in df
              else np.zeros(len(df), dtype=bool))
    rest = df[~always]
    strat = rest["stage"].astype(str) + "|" + rest["lang"].astype(str)
    counts = strat.value_counts()
    # rare stage|language pairs (e.g. a few `und` rows) join their stage's largest pair
    largest = strat.groupby(rest["stage"].astype(str).to_numpy()).agg(lambda s: s.value_counts().index[0])
    strat = strat.where(strat.map(counts) >= 2, rest["stage"].astype(str).map(largest))
    idx_train, idx_test = train_test_split(np.flatnonzero(~always), test_size=test_size, random_state=seed,
                                           stratify=strat)
    return np.sort(np.concatenate([idx_train, np.flatnonzero(always)])) if always.any() else idx_train, idx_test


def train(df: pd.DataFrame, X: np.ndarray | None, *, model_id: str, embedder_id: str, embedder_desc: str,
          test_size: float = 0.2, seed: int = 0, tp_labels: list[str] | None = None,
          sources: list[str] | None = None, ts: TrainSettings | None = None, fine_tune: str | None = None,
          encoder: str | None = None, encoder_out: str | Path | None = None,
          threads: int = 2, device: str = "cpu",
          progress: Any = None) -> tuple[Model, dict[str, Any], np.ndarray]:
    """Held-out metrics from a stratified split, then heads refit on every row.

    `fine_tune` (`train --fine-tune`): None trains heads on the frozen embeddings X; `adapter`
    puts a contrastive adapter under the heads; `encoder` fine-tunes the sentence-transformers
    folder `encoder` (whose frozen embeddings X are not used) and saves it to `encoder_out`,
    which the model then carries. Whatever adapts to the labels is fit on the training rows
    only for the held-out metrics, and refit on every row for the shipped model. Fine-tuning
    use-m3 runs on `device` and calls `progress(n)` after each batch of n texts.
    """
    ts = ts or TrainSettings()
    ft = ts.fine_tune
    from feedback_nlp.finetune import Timer

    check_labels(df)

    timer = Timer()
    idx_train, idx_test = split_indices(df, test_size=test_size, seed=seed)
    common = dict(model_id=model_id, seed=seed, tp_labels=tp_labels, ts=ts, adapter=fine_tune == "adapter")
    is_use_encoder = False
    if fine_tune == "encoder":
        from feedback_nlp.embed import Embedder
        from feedback_nlp.finetune import encode, fine_tune_encoder, fine_tune_use, is_use, save_encoder, use_options

        if not encoder or encoder_out is None:
            raise ValueError("fine_tune='encoder' needs the encoder folder and encoder_out")
        texts = df["text"].astype(str).tolist()
        is_use_encoder = is_use(encoder)
        if is_use_encoder:
            if X is None:
                raise ValueError("fine-tuning use-m3 needs its frozen embeddings X (the anchors)")
            heads = {name: df[name].to_numpy() for name in ft.labels}
            if ft.use_touchpoints and tp_labels and "touchpoints" in df:
                Y = touchpoint_matrix(df["touchpoints"], tp_labels)
                if Y.sum():
                    heads["touchpoints"] = Y
            opts = dict(use_options(ft), random_state=seed, threads=threads)

            def tune(rows: np.ndarray) -> Any:
                return fine_tune_use([texts[i] for i in rows], {k: v[rows] for k, v in heads.items()},
                                     anchors=X[rows], device=device, progress=progress, **opts)
        else:
            if not all(labelled(df, lb).all() for lb in ft.labels):
                raise InputError("E515", "fine-tuning a sentence-transformers folder (SetFit pairs) needs every "
                                 f"row labelled with {list(ft.labels)}; some rows leave one empty")
            labels = df[list(ft.labels)].to_numpy()
            opts = dict(epochs=ft.encoder_epochs, pairs_per_unit=ft.encoder_pairs_per_unit,
                        batch_size=ft.encoder_batch_size, lr=ft.encoder_lr, warmup=ft.encoder_warmup,
                        max_seq_length=ft.encoder_max_seq_length, random_state=seed, threads=threads)

            def tune(rows: np.ndarray) -> Any:
                return fine_tune_encoder(encoder, [texts[i] for i in rows], labels[rows], **opts)
        with timer("held_out"):
            enc = tune(idx_train)
            X_held = encode(enc, texts)
            held = fit_model(X_held[idx_train], df.iloc[idx_train], embedder_id=embedder_id, **common)
            metrics = evaluate_model(held, X_held[idx_test], df.iloc[idx_test])
        with timer("final"):
            if ft.encoder_refit:  # else ship the encoder the held-out figures describe: half the time
                del enc
                enc = tune(np.arange(len(df)))
            save_encoder(enc, encoder_out, base_id=embedder_id,
                         info={"model_id": model_id, "rows": len(df) if ft.encoder_refit else len(idx_train)})
            del enc
            tuned = Embedder(str(encoder_out), threads=threads)
            model = fit_model(tuned.encode(texts), df, embedder_id=tuned.id, **common)
            model.embedder_folder = str(encoder_out)
        embedder_meta = {"id": tuned.id, "description": f"{embedder_desc}, fine-tuned on these labels "
                         "(train --fine-tune); carried in the model folder", "base_id": embedder_id}
    else:
        if X is None:
            raise ValueError("train needs the embeddings X unless fine_tune='encoder'")
        with timer("held_out"):
            held = fit_model(X[idx_train], df.iloc[idx_train], embedder_id=embedder_id, **common)
            metrics = evaluate_model(held, X[idx_test], df.iloc[idx_test])
        with timer("final"):
            model = fit_model(X, df, embedder_id=embedder_id, **common)
        embedder_meta = {"id": embedder_id, "description": embedder_desc}
    mode = fine_tune or "fast"
    prefix = "use_" if fine_tune == "encoder" and is_use_encoder else f"{fine_tune}_"
    settings_used = {k: v for k, v in dataclasses.asdict(ft).items()
                     if k in ("mode", "labels") or k.startswith(prefix)} if fine_tune else {}
    model.meta = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "feedback_nlp_version": __version__,
        "embedder": embedder_meta,
        "training": {"mode": mode, "fine_tune": settings_used,
                     "seconds": {**timer.seconds, "total": round(sum(timer.seconds.values()), 3)}},
        "training_data": {
            "files": sources or [],
            "rows": int(len(df)),
            "fingerprint": fingerprint(df),
            "per_language": {k: int(v) for k, v in df["lang"].value_counts().sort_index().items()},
            "per_stage": {k: int(v) for k, v in df["stage"].value_counts().sort_index().items()},
            "per_sentiment": {k: int(v) for k, v in df["sentiment"].value_counts().sort_index().items()},
        },
        "evaluation": {
            "method": f"stratified held-out split (test_size={test_size}, seed={seed}); heads trained on "
                      "the rest; shipped heads refit on all rows" + {
                          "adapter": " (the contrastive adapter too: fit on the training rows only for the "
                                     "held-out figures, refit on all rows)",
                          "encoder": " (the encoder too: fine-tuned on the training rows only for the "
                                     "held-out figures, " + ("fine-tuned again on all rows)" if ft.encoder_refit
                                                             else "and shipped as it is: encoder_refit false)")
                      }.get(mode, ""),
            "held_out_rows": int(len(idx_test)),
            "metrics": metrics,
        },
        "seed": seed,
        "train_settings": dataclasses.asdict(ts),
    }
    return model, metrics, idx_test


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _training_line(training: dict[str, Any] | None) -> str:
    """The card's line on how the representation was trained (older cards have no record)."""
    if not training:
        return "- Training mode: not recorded"
    sec = training.get("seconds", {})
    took = (f"; {sec.get('total', 0):.1f} s wall (held-out fit {sec.get('held_out', 0):.1f} s, "
            f"final fit {sec.get('final', 0):.1f} s)") if sec else ""
    mode = training.get("mode", "fast")
    what = {
        "fast": "fast (heads on the frozen embeddings)",
        "adapter": "`--fine-tune`: contrastive adapter (SetFit pairs, residual network, numpy "
                   "forward) on the frozen embeddings, under the heads",
        "encoder": ("`--fine-tune`: USE-m-v3 fine-tuned end to end (torch) on classification heads, "
                    "anchored to the frozen embeddings, carried in `embedder/`"
                    if "use_epochs" in training.get("fine_tune", {}) else
                    "`--fine-tune`: encoder fine-tuned on SetFit pairs (CosineSimilarityLoss), carried in `embedder/`"),
    }.get(mode, mode)
    settings = training.get("fine_tune") or {}
    shown = ", ".join(f"{k} {v if not isinstance(v, (list, tuple)) else '+'.join(v)}" for k, v in settings.items())
    return f"- Training mode: {what}{took}" + (f"; settings: {shown}" if shown else "")


def model_card(model: Model) -> tuple[str, str]:
    """(card.md, card.json) for a trained model."""
    meta = model.meta
    m = meta["evaluation"]["metrics"]
    lines = [
        f"# Model card: {model.model_id}",
        "",
        f"- Created: {meta['created']} with feedback_nlp {meta['feedback_nlp_version']}",
        f"- Embedder: `{model.embedder_id}` ({meta['embedder']['description']})",
        "- Heads: multinomial logistic regression (stage, sentiment), one-vs-rest logistic "
        "regression (touchpoints), balanced class weights, on "
        + (f"an RBF-kernel Nystroem feature map ({model.features.n_components} landmarks, gamma "
           f"{model.features.gamma})" if model.features is not None else "the raw embeddings")
        + "; stored as plain arrays (no pickle)",
        _training_line(meta.get("training")),
        f"- Training data: {meta['training_data']['rows']} labelled units from "
        f"{', '.join(meta['training_data']['files']) or 'n/a'}; fingerprint "
        f"`{meta['training_data']['fingerprint'][:16]}`",
        f"- Evaluation: {meta['evaluation']['method']} ({meta['evaluation']['held_out_rows']} held-out units)",
        "",
        "## Held-out metrics",
        "",
        "| head | accuracy | macro-F1 |",
        "|---|---|---|",
    ]
    for head in ("stage", "sentiment"):
        lines.append(f"| {head} | {_fmt(m[head]['accuracy'])} | {_fmt(m[head]['macro_f1'])} |")
    if "touchpoints" in m and "micro_f1" in m["touchpoints"]:
        lines.append(f"| touchpoints (micro / macro F1) | | {_fmt(m['touchpoints']['micro_f1'])} / "
                     f"{_fmt(m['touchpoints']['macro_f1'])} |")
    for head in ("stage", "sentiment"):
        lines += ["", f"### {head}: per language", "", "| language | n | accuracy | macro-F1 |", "|---|---|---|---|"]
        for lang, v in m[head]["per_language"].items():
            lines.append(f"| {lang} | {v['n']} | {_fmt(v['accuracy'])} | {_fmt(v['macro_f1'])} |")
        lines += ["", f"### {head}: per class", "", "| class | precision | recall | support |", "|---|---|---|---|"]
        for cls, v in m[head]["per_class"].items():
            lines.append(f"| {cls} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {v['support']} |")
    lines += ["", "## Calibration (held-out, top-class probability)", ""]
    for head in ("stage", "sentiment"):
        cal = m[head].get("calibration")
        if not cal:
            continue
        lines += [f"### {head}: expected calibration error {_fmt(cal['ece'])}", "",
                  "| confidence bin | n | mean confidence | accuracy |", "|---|---|---|---|"]
        for b in cal["bins"]:
            lines.append(f"| {b['bin']} | {b['n']} | {_fmt(b['confidence'])} | {_fmt(b['accuracy'])} |")
        lines.append("")
    lines += [
        "",
        "## Limits",
        "",
        "The seed corpus was written for this project; held-out figures on it say how well the heads "
        "separate its stages, not how they transfer to another company's feedback. Measure on your own "
        "labelled sample with `feedback-nlp evaluate` before trusting the scores.",
        "",
    ]
    card_json = json.dumps({"model_id": model.model_id, "embedder_id": model.embedder_id, **meta}, indent=2,
                           ensure_ascii=False) + "\n"
    return "\n".join(lines), card_json
