"""Training recipes: the default model built from the seed corpus and real data written by others.

A recipe (configs/recipes/*.yaml) names its sources (the project's corpora, and benchmark sets
read from `../shared/benchmarks` at training time, never copied here), which heads learn from
which sources and with what weight, and the kernel map's landmarks. `build` reads them, embeds
every row once, fits heads on the rows not held out and measures them on the held-out rows (the
model card's figures), then refits on the rows the recipe ships and writes the model folder. Same
recipe, same data, same machine: the same bytes (seeds are fixed; tests check it).

Weights: within a source a head's labels are balanced (each label, or subclass, the same total
weight), and each source weighs what the recipe says against the others; a head's weights are
then scaled to mean 1 so `C` keeps its meaning. The classes' resulting shares are the prior the
head's probabilities assume (`LinearHead.class_prior_`), which label-shift correction (shift.py)
starts from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import train_test_split

from feedback_nlp import __version__
from feedback_nlp.classify import (FEEDBACK, NOT_FEEDBACK, KernelMap, LexicalMap, LinearHead, Model, MultiLabelHead,
                                   fold_model, round_weights)
from feedback_nlp.config import _check_keys, _read_yaml, resolve
from feedback_nlp.errors import InputError
from feedback_nlp.records import SENTIMENTS
from feedback_nlp import sources as src

READERS = ("labelled", "social", "umsab", "banking77", "germeval")
HEADS = ("stage", "sentiment", "sentiment_other", "feedback", "touchpoints")
ROW_FILTERS = ("all", "feedback", "other")
LEXICAL_MODES = ("none", "joint", "expert")
SUBCLASS_MODES = ("none", "label", "source")


@dataclass(frozen=True)
class SourceSpec:
    """One source of labelled rows and what a model card must say about it."""

    name: str
    reader: str
    licence: str
    origin: str
    commercial_use: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # reader arguments (paths, split, mapping...)
    held_out: str = "split"  # "split": a stratified share of the rows; "val": the set's validation split


@dataclass(frozen=True)
class HeadSpec:
    """Which sources a head learns from, with what weight, and its regularisation."""

    sources: dict[str, float]
    C: float = 16.0
    subclasses: str = "label"  # label: keep `stage::detail` labels as subclasses; source: one per source; none
    min_positive: int = 5      # touchpoints: labels with fewer positives are not learnt
    rows: str = "all"          # all, or only rows labelled feedback / not feedback (the sentiment experts)
    # the texts' pieces (the recipe's `lexicon:`): `joint`, one regression on kernel features and
    # pieces; `expert`, a second regression on the pieces alone, over the classes (not subclasses),
    # multiplied in with `lexical_weight` (stage: 85 subclasses x 65,536 pieces would be 45 MB)
    lexical: str = "none"
    lexical_weight: float = 0.5


@dataclass(frozen=True)
class Recipe:
    path: str
    id: str
    description: str
    embedder: str
    seed: int
    test_size: float
    kernel_gamma: float
    landmarks: dict[str, int]
    heads: dict[str, HeadSpec]
    sources: dict[str, SourceSpec]
    lexicon: dict[str, Any] | None = None  # LexicalMap parameters, when a head is lexical

    @property
    def commercial_use(self) -> bool:
        return all(s.commercial_use for s in self.sources.values())


def load_recipe(path: str | Path) -> Recipe:
    """configs/recipes/<name>.yaml -> Recipe; unknown keys, readers, heads and sources are errors."""
    p = resolve(path)
    raw = _read_yaml(p) or {}
    top = {"id", "description", "embedder", "seed", "test_size", "kernel", "lexicon", "heads", "sources"}
    _check_keys(p, "a recipe", raw, top)
    sources: dict[str, SourceSpec] = {}
    for name, spec in (raw.get("sources") or {}).items():
        spec = dict(spec or {})
        reader = spec.pop("reader", None)
        if reader not in READERS:
            raise InputError("E540", f"{p}: source {name!r}: reader {reader!r} is not one of {list(READERS)}")
        meta = {k: spec.pop(k) for k in ("licence", "origin", "commercial_use", "held_out") if k in spec}
        if "licence" not in meta or "origin" not in meta:
            raise InputError("E540", f"{p}: source {name!r} needs `licence:` and `origin:` (the model card lists them)")
        sources[name] = SourceSpec(name=name, reader=reader, options=spec, **meta)
    heads: dict[str, HeadSpec] = {}
    for name, spec in (raw.get("heads") or {}).items():
        if name not in HEADS:
            raise InputError("E541", f"{p}: unknown head {name!r}; heads are {list(HEADS)}")
        _check_keys(p, f"head {name!r}", spec, {f.name for f in dataclasses.fields(HeadSpec)})
        hs = HeadSpec(**{**spec, "sources": {str(k): float(v) for k, v in (spec.get("sources") or {}).items()}})
        unknown = sorted(set(hs.sources) - set(sources))
        if unknown or not hs.sources or any(v <= 0 for v in hs.sources.values()) or hs.subclasses not in SUBCLASS_MODES \
                or hs.rows not in ROW_FILTERS or hs.lexical not in LEXICAL_MODES \
                or (hs.lexical == "expert" and name != "stage") or not 0 < hs.lexical_weight < 1:
            raise InputError("E541", f"{p}: head {name!r}: sources must be a mapping of the recipe's sources to "
                             f"weights above 0 (unknown: {unknown}); subclasses one of {list(SUBCLASS_MODES)}; "
                             f"rows one of {list(ROW_FILTERS)}; lexical one of {list(LEXICAL_MODES)} (expert: "
                             "the stage head only); lexical_weight between 0 and 1")
        heads[name] = hs
    for required in ("stage", "sentiment"):
        if required not in heads:
            raise InputError("E541", f"{p}: a recipe needs a `{required}` head")
    if "sentiment_other" in heads and "feedback" not in heads:
        raise InputError("E541", f"{p}: `sentiment_other` is weighted by the feedback head: add a `feedback` head")
    lexicon = raw.get("lexicon")
    if lexicon is not None:
        _check_keys(p, "`lexicon:`", lexicon, {"n_features", "weight"})
    if any(h.lexical != "none" for h in heads.values()) and lexicon is None:
        raise InputError("E541", f"{p}: a head is `lexical: true` but the recipe has no `lexicon:`")
    kernel = raw.get("kernel") or {}
    _check_keys(p, "`kernel:`", kernel, {"gamma", "landmarks"})
    landmarks = {str(k): int(v) for k, v in (kernel.get("landmarks") or {}).items()}
    if set(landmarks) - set(sources) or any(v < 0 for v in landmarks.values()) or not sum(landmarks.values()):
        raise InputError("E542", f"{p}: kernel.landmarks maps the recipe's sources to how many of their rows "
                         f"are landmarks; got {landmarks}")
    test_size = float(raw.get("test_size", 0.2))
    if not 0 < test_size < 1:
        raise InputError("E542", f"{p}: test_size must be between 0 and 1, got {test_size}")
    return Recipe(path=str(p), id=str(raw.get("id") or p.stem), description=str(raw.get("description", "")),
                  embedder=str(raw.get("embedder", "use-m3")), seed=int(raw.get("seed", 0)), test_size=test_size,
                  kernel_gamma=float(kernel.get("gamma", 1.0)), landmarks=landmarks, heads=heads, sources=sources,
                  lexicon=lexicon)


# --- rows ------------------------------------------------------------------------------------


def read_source(spec: SourceSpec, root: Path, *, settings: Any, columns: Any, stage_ids: list[str]) -> pd.DataFrame:
    """The rows of one source (sources.ROWS columns)."""
    o = spec.options
    if spec.reader == "labelled":
        return src.read_labelled_corpus(o.get("paths", []), columns=columns, settings=settings, source=spec.name)
    if spec.reader == "social":
        return src.read_social(o["path"], stage_ids=stage_ids, source=spec.name)
    if spec.reader == "umsab":
        return src.read_umsab(root / o.get("folder", "umsab"), split=o.get("split", "train"),
                              languages=o["languages"], source=spec.name, feedback=str(o.get("feedback", "")))
    if spec.reader == "banking77":
        mapping = src.load_mapping(o["mapping"], stage_ids)
        return src.read_banking77(root, mapping=mapping, file=o.get("file", "banking77/train.csv"), source=spec.name)
    mapping = src.load_mapping(o["mapping"], stage_ids) if o.get("mapping") else None
    return src.read_germeval(root, mapping=mapping, file=o.get("file", "germeval2017/dev.tsv"), source=spec.name)


def load_rows(recipe: Recipe, root: Path, *, settings: Any, columns: Any, stage_ids: list[str]) -> pd.DataFrame:
    """Every row of the recipe, with `held_out` (measured in the card, not learnt by the card's
    fit) and `final` (learnt by the shipped heads). A source whose held-out rows are its set's
    validation split (`held_out: val`) ships without them; the others ship with all their rows."""
    frames = []
    for spec in recipe.sources.values():
        rows = read_source(spec, root, settings=settings, columns=columns, stage_ids=stage_ids)
        rows["final"] = True
        rows["held_out"] = False
        if spec.held_out == "val":
            val = read_source(dataclasses.replace(spec, options={**spec.options, "split": "val"}), root,
                              settings=settings, columns=columns, stage_ids=stage_ids)
            val["final"] = False
            val["held_out"] = True
            rows = pd.concat([rows, val], ignore_index=True)
        elif spec.held_out == "split" and len(rows) >= 10:
            rows.loc[_split(rows, recipe.test_size, recipe.seed), "held_out"] = True
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def _split(rows: pd.DataFrame, test_size: float, seed: int) -> np.ndarray:
    """Held-out positions, stratified by the row's most specific label and its language."""
    label = rows["stage"].where(rows["stage"] != "", rows["sentiment"]).where(
        lambda s: s != "", rows["feedback"]).astype(str) + "|" + rows["lang"].astype(str)
    counts = label.map(label.value_counts())
    label = label.where(counts >= 2, "rare")
    if (label == "rare").sum() == 1:
        label = label.where(label != "rare", label[label != "rare"].iloc[0])
    _, test = train_test_split(np.arange(len(rows)), test_size=test_size, random_state=seed, stratify=label)
    return np.sort(test)


# --- heads -----------------------------------------------------------------------------------


def head_labels(rows: pd.DataFrame, head: str, spec: HeadSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row mask, training labels, weights) of one head over `rows`."""
    column = {"sentiment_other": "sentiment", "touchpoints": "stage"}.get(head, head)
    mask = rows["source"].isin(list(spec.sources)).to_numpy() & (rows[column] != "").to_numpy()
    if spec.rows != "all":
        mask &= (rows["feedback"] == ("yes" if spec.rows == "feedback" else "no")).to_numpy()
    y = rows.loc[mask, column].astype(str).to_numpy()
    if head == "feedback":
        y = np.where(y == "yes", FEEDBACK, NOT_FEEDBACK)
    if spec.subclasses == "none":
        y = np.asarray([v.split(src.SUBCLASS_SEP, 1)[0] for v in y], dtype=object)
    elif spec.subclasses == "source":
        y = np.asarray([f"{v.split(src.SUBCLASS_SEP, 1)[0]}{src.SUBCLASS_SEP}{s}"
                        for v, s in zip(y, rows.loc[mask, "source"])], dtype=object)
    w = source_weights(rows.loc[mask, "source"].to_numpy(), y, spec.sources)
    return mask, y, w


def source_weights(source: np.ndarray, y: np.ndarray, shares: dict[str, float]) -> np.ndarray:
    """Each source's labels balanced within it, the source's total weight its share; mean 1."""
    w = np.zeros(len(y), dtype=np.float64)
    for s, share in shares.items():
        m = source == s
        if not m.any():
            continue
        labels, inverse, counts = np.unique(y[m], return_inverse=True, return_counts=True)
        w[m] = share / (len(labels) * counts[inverse])
    return w * (len(w) / w.sum()) if w.sum() > 0 else w


def landmark_rows(rows: pd.DataFrame, recipe: Recipe) -> np.ndarray:
    """Positions of the kernel map's landmarks: so many rows of each source, drawn at random, so
    that a large source (14,712 tweets) does not crowd out the seed corpus's region."""
    rng = np.random.default_rng(recipe.seed)
    picked = []
    for name, n in recipe.landmarks.items():
        pool = np.flatnonzero(rows["source"].to_numpy() == name)
        if n and len(pool):
            picked.append(np.sort(rng.choice(pool, min(n, len(pool)), replace=False)))
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def fit_heads(rows: pd.DataFrame, X: np.ndarray, recipe: Recipe, *, model_id: str, embedder_id: str,
              tp_labels: list[str] | None = None) -> Model:
    """All the recipe's heads on `rows` (embeddings X), on one kernel map."""
    from scipy.sparse import csr_matrix, hstack

    rows = rows.reset_index(drop=True)
    features = KernelMap(n_components=10**9, gamma=recipe.kernel_gamma, random_state=recipe.seed).fit(
        X[landmark_rows(rows, recipe)])
    F = features.transform(X)
    lexicon = None
    if any(h.lexical != "none" for h in recipe.heads.values()):
        lexicon = LexicalMap(**(recipe.lexicon or {})).fit(rows["text"].tolist())
    heads: dict[str, Any] = {}
    for name in ("stage", "sentiment", "sentiment_other", "feedback"):
        spec = recipe.heads.get(name)
        if spec is None:
            continue
        mask, y, w = head_labels(rows, name, spec)
        inputs = F[mask]
        Z = lexicon.transform(rows.loc[mask, "text"].tolist()) if spec.lexical != "none" else None
        if spec.lexical == "joint":
            inputs = hstack([csr_matrix(inputs), Z]).tocsr()
        heads[name] = LinearHead(C=spec.C, class_weight=None, subclass_sep=src.SUBCLASS_SEP,
                                 random_state=recipe.seed).fit(inputs, y, sample_weight=w)
        if spec.lexical == "expert":  # the same labels and weights, without subclasses, on the pieces alone
            coarse = np.asarray([v.split(src.SUBCLASS_SEP, 1)[0] for v in y], dtype=object)
            heads[f"{name}_lexical"] = LinearHead(C=spec.C, class_weight=None, random_state=recipe.seed).fit(
                Z, coarse, sample_weight=w)
    touch = None
    spec = recipe.heads.get("touchpoints")
    if spec is not None and tp_labels:
        from feedback_nlp.train import touchpoint_matrix

        mask = rows["source"].isin(list(spec.sources)).to_numpy()
        Y = touchpoint_matrix(rows.loc[mask, "touchpoints"], tp_labels)
        if Y.sum():
            touch = MultiLabelHead(C=spec.C, min_positive=spec.min_positive, random_state=recipe.seed).fit(
                F[mask], Y, labels=tp_labels)
    features.n_components = len(features.components_)
    folded = fold_model(Model(model_id=model_id, embedder_id=embedder_id, stage=heads["stage"],
                              sentiment=heads["sentiment"], touchpoints=touch, features=features,
                              feedback=heads.get("feedback"), lexicon=lexicon,
                              sentiment_other=heads.get("sentiment_other"), stage_lexical=heads.get("stage_lexical"),
                              stage_lexical_weight=recipe.heads["stage"].lexical_weight))
    for name in folded.HEADS:  # float32 weights: half the folder, the same predictions once loaded
        if getattr(folded, name) is not None:
            round_weights(getattr(folded, name))
    return folded


# --- measuring -------------------------------------------------------------------------------


def calibration(model: Model, rows: pd.DataFrame, X: np.ndarray) -> dict[str, dict[str, Any]]:
    """Bias-corrected temperature scaling (Alexandari et al. 2020) per head, fit on held-out rows.

    Heads fit with balanced weights and a strong penalty come out under-confident (stage: held-out
    accuracy 0.74 at a stated 0.45), which sends good units to `unassigned` and misleads
    label-shift correction, whose EM assumes calibrated probabilities. Each head gets a temperature
    (and, except for stages, whose mix differs by source, a bias per class) that minimises its
    log-loss on its own held-out rows, weighted so every class counts alike: the calibrated head
    still assumes the class prior it was trained under. Rounded to 4 decimals.
    """
    from scipy.optimize import minimize

    out: dict[str, dict[str, Any]] = {}
    experts = {"sentiment": "feedback", "sentiment_other": "other"}
    for name in ("stage", "sentiment", "sentiment_other", "feedback"):
        head = getattr(model, name)
        if head is None:
            continue
        column = {"sentiment_other": "sentiment"}.get(name, name)
        truth = rows[column].astype(str).str.split(src.SUBCLASS_SEP).str[0].to_numpy()
        has = truth != ""
        if name in experts:
            has &= (rows["feedback"] == ("yes" if experts[name] == "feedback" else "no")).to_numpy()
        if name == "feedback":
            truth = np.where(truth == "yes", FEEDBACK, NOT_FEEDBACK)
        if has.sum() < 30:
            continue
        p = _head_raw(model, name, X[has], rows.loc[has, "text"].tolist())
        classes = list(head.classes_)
        y = np.asarray([classes.index(t) for t in truth[has]])
        counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
        w = (len(y) / (len(classes) * np.maximum(counts, 1)))[y]
        logp = np.log(np.maximum(p, 1e-12))
        with_bias = name != "stage"

        def nll(params: np.ndarray) -> float:
            z = logp / np.exp(params[0])
            if with_bias:
                z = z + np.r_[params[1:], 0.0]
            z = z - z.max(axis=1, keepdims=True)
            z = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            return float(-(w * z[np.arange(len(y)), y]).sum() / w.sum())

        x0 = np.zeros(len(classes) if with_bias else 1)
        fit = minimize(nll, x0, method="L-BFGS-B")
        spec: dict[str, Any] = {"temperature": round(float(np.exp(fit.x[0])), 4)}
        if with_bias:
            spec["bias"] = [round(float(b), 4) for b in np.r_[fit.x[1:], 0.0]]
        out[name] = spec
    return out


def _head_raw(model: Model, name: str, X: np.ndarray, texts: list[str]) -> np.ndarray:
    """One head's uncalibrated probabilities (the sentiment experts apart, not mixed)."""
    import copy

    m = copy.copy(model)
    m.calibration = {}
    m._folded = None
    if name in ("sentiment", "sentiment_other"):
        m.sentiment = getattr(model, name)
        m.sentiment_other = None
        m.feedback = None
        return m.probabilities(X, texts).sentiment
    p = m.probabilities(X, texts)
    if name == "feedback":
        return np.column_stack([1.0 - p.feedback, p.feedback]) if list(model.feedback.classes_) == [NOT_FEEDBACK, FEEDBACK] \
            else np.column_stack([p.feedback, 1.0 - p.feedback])
    return p.stage


def evaluate_rows(model: Model, rows: pd.DataFrame, X: np.ndarray) -> dict[str, Any]:
    """Per source: stage and sentiment accuracy and macro-F1 (overall and per language), and how
    well the feedback head separates feedback from the rest (where a source has both, or says
    which it is)."""
    from feedback_nlp.train import classification_metrics

    rows = rows.reset_index(drop=True)
    probs = model.probabilities(X, rows["text"].tolist()) if len(rows) else None
    out: dict[str, Any] = {}
    for source, idx in rows.groupby("source", sort=True).indices.items():
        r = rows.iloc[idx]
        res: dict[str, Any] = {"rows": int(len(r))}
        stage_true = r["stage"].astype(str).str.split(src.SUBCLASS_SEP).str[0].to_numpy()
        m = stage_true != ""
        if m.any():
            pred = model.stage.classes_[probs.stage[idx][m].argmax(axis=1)]
            labels = sorted(set(stage_true[m]))  # macro-F1 over the stages the source has (Banking77: no support)
            res["stage"] = _brief(classification_metrics(stage_true[m], pred, r["lang"].to_numpy()[m], labels))
        m = (r["sentiment"] != "").to_numpy()
        if m.any():
            pred = model.sentiment.classes_[probs.sentiment[idx][m].argmax(axis=1)]
            res["sentiment"] = _brief(classification_metrics(r["sentiment"].to_numpy()[m], pred,
                                                             r["lang"].to_numpy()[m], list(SENTIMENTS)))
        m = (r["feedback"] != "").to_numpy()
        if m.any() and probs.feedback is not None:
            truth = r["feedback"].to_numpy()[m] == "yes"
            p = probs.feedback[idx][m]
            res["feedback"] = {"n": int(m.sum()), "share_true": float(truth.mean()),
                               "share_predicted": float((p >= 0.5).mean()),
                               "accuracy": float(((p >= 0.5) == truth).mean())}
            if 0 < truth.mean() < 1:
                res["feedback"]["auc"] = float(roc_auc_score(truth, p))
                res["feedback"]["macro_f1"] = float(f1_score(truth, p >= 0.5, average="macro"))
        out[source] = res
    return out


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    return {"n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "per_language": m["per_language"], "per_class": m["per_class"]}


# --- building ----------------------------------------------------------------------------------


def fingerprint_files(paths: list[Path], root: Path | None = None) -> dict[str, str]:
    """SHA-256 of each file, keyed by its name under the benchmarks folder or the project (so two
    machines that build from the same data record the same names)."""
    return {_rel(p, root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(set(paths)) if p.is_file()}


def _created() -> str:
    """Build time; SOURCE_DATE_EPOCH (the reproducible-builds convention) pins it, so two builds
    of the same recipe on the same data are the same bytes, card and config included."""
    import os

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return when.isoformat(timespec="seconds")


def build(recipe: Recipe, root: Path, *, settings: Any, columns: Any, stage_ids: list[str], tp_labels: list[str],
          encode: Callable[[list[str]], np.ndarray], embedder_id: str, embedder_desc: str,
          model_id: str | None = None, log: Callable[[str], None] = lambda _: None,
          rows: pd.DataFrame | None = None) -> tuple[Model, dict[str, Any], Model]:
    """Read, embed, measure on the held-out rows, refit on the shipped rows: (model, metrics,
    the heads behind the metrics, which never saw the held-out rows)."""
    model_id = model_id or recipe.id
    rows = load_rows(recipe, root, settings=settings, columns=columns, stage_ids=stage_ids) if rows is None else rows
    unused = sorted(set(recipe.sources) - {s for h in recipe.heads.values() for s in h.sources})
    if unused:
        raise InputError("E541", f"{recipe.path}: sources {unused} feed no head")
    log(f"{len(rows)} rows from {len(recipe.sources)} sources; embedding")
    X = encode(rows["text"].tolist())
    train_part = ~rows["held_out"].to_numpy()
    log("heads for the held-out figures")
    held_model = fit_heads(rows[train_part], X[train_part], recipe, model_id=model_id, embedder_id=embedder_id,
                           tp_labels=tp_labels)
    held_model.calibration = calibration(held_model, rows[~train_part], X[~train_part])
    metrics = evaluate_rows(held_model, rows[~train_part], X[~train_part])
    log("heads on every shipped row")
    final = rows["final"].to_numpy()
    model = fit_heads(rows[final], X[final], recipe, model_id=model_id, embedder_id=embedder_id, tp_labels=tp_labels)
    model.calibration = held_model.calibration
    files = [Path(recipe.path), *(Path(resolve(s.options["mapping"])) for s in recipe.sources.values()
                                  if s.options.get("mapping"))]
    data_files = sorted({Path(f) for f in rows["file"].unique()})
    model.meta = {
        "created": _created(),
        "feedback_nlp_version": __version__,
        "embedder": {"id": embedder_id, "description": embedder_desc},
        "recipe": {"id": recipe.id, "path": _rel(recipe.path), "description": recipe.description,
                   "files": fingerprint_files(files),
                   "commercial_use": recipe.commercial_use},
        "sources": {name: _source_card(spec, rows[rows["source"] == name], recipe, root) for name, spec in
                    recipe.sources.items()},
        "training": {"mode": "recipe", "landmarks": recipe.landmarks, "kernel_gamma": recipe.kernel_gamma,
                     "calibration": model.calibration,
                     "heads": {h: {"C": s.C, "subclasses": s.subclasses, "sources": s.sources,
                                   "rows": s.rows, "lexical": s.lexical}
                               for h, s in recipe.heads.items()}},
        "training_data": {
            "files": [],
            "rows": int(final.sum()),
            "fingerprint": hashlib.sha256("".join(f"{k}={v}" for k, v in fingerprint_files(data_files, root).items())
                                          .encode()).hexdigest(),
            "per_language": {k: int(v) for k, v in rows.loc[final, "lang"].value_counts().sort_index().items()},
        },
        "evaluation": {"method": "rows held out per source (a stratified share, or the set's own validation "
                                 f"split), test_size {recipe.test_size}, seed {recipe.seed}; heads trained on the rest; "
                                 "the shipped heads are refit on every shipped row",
                       "held_out_rows": int((~train_part).sum()), "per_source": metrics,
                       "metrics": summary_metrics(metrics)},
        "seed": recipe.seed,
    }
    return model, metrics, held_model


def _rel(path: str | Path, root: Path | None = None) -> str:
    """A file's name for a card: `benchmarks/<path under the benchmarks folder>`, else its path in
    the project, else the absolute path."""
    from feedback_nlp.config import project_root

    p = Path(path).resolve()
    if root is not None and p.is_relative_to(root.resolve()):
        return "benchmarks/" + p.relative_to(root.resolve()).as_posix()
    return p.relative_to(project_root()).as_posix() if p.is_relative_to(project_root()) else str(p)


def _source_card(spec: SourceSpec, rows: pd.DataFrame, recipe: Recipe, root: Path) -> dict[str, Any]:
    shipped = rows[rows["final"]]
    files = sorted({_rel(f, root) for f in shipped["file"].unique()})
    return {"reader": spec.reader, "licence": spec.licence, "origin": spec.origin,
            "commercial_use": spec.commercial_use, "files": files,
            "rows_used": int(len(shipped)), "held_out_rows": int(rows["held_out"].sum()),
            "held_out": spec.held_out, **{k: v for k, v in src.describe(shipped).items() if k != "rows"},
            "weights": {h: s.sources[spec.name] for h, s in recipe.heads.items() if spec.name in s.sources},
            "landmarks": recipe.landmarks.get(spec.name, 0)}


def summary_metrics(per_source: dict[str, Any]) -> dict[str, Any]:
    """The figures `models list` and the promotion gate compare across versions: the seed
    corpus's held-out rows (the one source every version is measured on)."""
    seed = per_source.get("seed", {})
    return {h: seed[h] for h in ("stage", "sentiment") if h in seed}


def recipe_card(model: Model) -> tuple[str, str]:
    """(card.md, card.json) of a recipe-built model: sources with licences, rows and weights,
    held-out figures per source."""
    import json

    meta = model.meta
    f = lambda x: f"{x:.3f}"  # noqa: E731
    rec = meta["recipe"]
    lines = [
        f"# Model card: {model.model_id}",
        "",
        f"- Created: {meta['created']} with feedback_nlp {meta['feedback_nlp_version']}, by the recipe "
        f"`{rec['path']}` (`feedback-nlp build-model {rec['path']}`)",
        f"- {rec['description']}",
        f"- Embedder: `{model.embedder_id}` ({meta['embedder']['description']})",
        f"- Commercial use: {'yes' if rec['commercial_use'] else 'NO: a source is licensed for non-commercial use only'}",
        f"- Kernel map: {len(model.features.components_)} landmarks ({', '.join(f'{k} {v}' for k, v in meta['training']['landmarks'].items())}), "
        f"gamma {meta['training']['kernel_gamma']}; heads are logistic regressions stored folded (plain arrays, no pickle)"
        + ("; stage and sentiment heads also read the texts' SentencePiece pieces (hashed, TF-IDF)" if model.lexicon is not None else "")
        + (f"; stage probabilities are the product of the kernel head and a lexical head (weight "
           f"{model.stage_lexical_weight:g})" if model.stage_lexical is not None else ""),
        "- Calibration (bias-corrected temperature scaling on the held-out rows): " + ("; ".join(
            f"{h} T {c['temperature']:g}" + (f", bias {', '.join(f'{b:+.2f}' for b in c['bias'])}" if c.get("bias") else "")
            for h, c in model.calibration.items()) or "none"),
        "",
        "## Sources",
        "",
        "| source | origin | licence | rows used | held out | labels | weight per head |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in meta["sources"].items():
        labels = ", ".join(k[5:] for k in ("with_stage", "with_sentiment", "with_feedback") if s.get(k))
        weights = ", ".join(f"{h} {w:g}" for h, w in s["weights"].items())
        held = f"{s['held_out_rows']} ({'validation split' if s['held_out'] == 'val' else 'share of rows'})"
        lines.append(f"| {name} | {s['origin']} | {s['licence']} | {s['rows_used']} | {held} | {labels} | {weights} |")
    lines += ["", "Heads: " + "; ".join(
        f"`{h}` C {v['C']:g}, subclasses {v['subclasses']}" for h, v in meta["training"]["heads"].items()), "",
        "## Held-out figures", "",
        f"{meta['evaluation']['method']}.", "",
        "| source | head | n | accuracy | macro-F1 |", "|---|---|---|---|---|"]
    for source, res in meta["evaluation"]["per_source"].items():
        for head in ("stage", "sentiment"):
            if head in res:
                r = res[head]
                lines.append(f"| {source} | {head} | {r['n']} | {f(r['accuracy'])} | {f(r['macro_f1'])} |")
    lines += ["", "### Per language (macro-F1)", "", "| source | head | " + " | ".join(["language", "n", "macro-F1"]) + " |",
              "|---|---|---|---|---|"]
    for source, res in meta["evaluation"]["per_source"].items():
        for head in ("stage", "sentiment"):
            for lang, v in res.get(head, {}).get("per_language", {}).items():
                lines.append(f"| {source} | {head} | {lang} | {v['n']} | {f(v['macro_f1'])} |")
    lines += ["", "### Feedback or not", "", "| source | n | truly feedback | judged feedback | accuracy | AUC |",
              "|---|---|---|---|---|---|"]
    for source, res in meta["evaluation"]["per_source"].items():
        fb = res.get("feedback")
        if fb:
            lines.append(f"| {source} | {fb['n']} | {fb['share_true']:.1%} | {fb['share_predicted']:.1%} | "
                         f"{f(fb['accuracy'])} | {f(fb['auc']) if 'auc' in fb else '-'} |")
    lines += ["", "## Limits", "",
              "Held-out rows come from the same sets the heads learnt from. Transfer to other data, and the "
              "blind and real-data figures, are in docs/accuracy.md (`benchmarks/real_data.py`). Measure on your "
              "own labelled sample with `feedback-nlp evaluate` before trusting the scores.", ""]
    card_json = json.dumps({"model_id": model.model_id, "embedder_id": model.embedder_id, **meta}, indent=2,
                           ensure_ascii=False) + "\n"
    return "\n".join(lines), card_json


def with_labels(recipe: Recipe, files: list[str], *, weight_of: str = "seed") -> Recipe:
    """The recipe plus newly labelled files (`train --labels` on a recipe-built model): a source
    `labels` that every head learning from `weight_of` also learns from, with the same weight,
    so a week's labels join the real data instead of replacing it."""
    spec = SourceSpec(name="labels", reader="labelled", licence="the labeller's (train --labels)",
                      origin="labelled samples: " + ", ".join(files), options={"paths": list(files)})
    heads = {h: dataclasses.replace(s, sources={**s.sources, "labels": s.sources[weight_of]})
             if weight_of in s.sources else s for h, s in recipe.heads.items()}
    return dataclasses.replace(recipe, sources={**recipe.sources, "labels": spec}, heads=heads)


def trained_files(meta: dict[str, Any], root: Path) -> set[str]:
    """Absolute paths of every file a model learnt from, by its card: a recipe model's sources
    (`benchmarks/...` under `root`), or a `train` model's files and folders (every file in them)."""
    from feedback_nlp.config import project_root

    def absolute(name: str) -> Path:
        if name.startswith("benchmarks/"):
            return (root / name[len("benchmarks/"):]).resolve()
        p = Path(name)
        return (p if p.is_absolute() else project_root() / p).resolve()

    names = [f for s in meta.get("sources", {}).values() for f in s.get("files", [])]
    names += list(meta.get("training_data", {}).get("files", []))
    out: set[str] = set()
    for name in names:
        p = absolute(name)
        out |= {str(f.resolve()) for f in p.rglob("*") if f.is_file()} if p.is_dir() else {str(p)}
    return out
