"""Accuracy on real labelled data written by others: every figure of docs/accuracy.md's first table.

Reads ../shared/benchmarks (or --benchmarks / FEEDBACK_NLP_BENCHMARKS) at run time and never
copies it into the repository; only train and validation splits are there, so the figures are
validation splits (UMSAB), the whole dev set of a set the model never saw (GermEval, for the
default model) and cross-validation (Banking77 stages; GermEval for the non-commercial model).

    .venv/bin/python benchmarks/real_data.py                       # everything (about 30 min on 2 cores)
    .venv/bin/python benchmarks/real_data.py --only umsab,effort   # sections: umsab germeval banking77
                                                                   #   effort shift feedback
    .venv/bin/python benchmarks/real_data.py --model models/real-v1 --before models/seed-v1
    .venv/bin/python benchmarks/real_data.py --only umsab_ft,banking77_ft   # `train --fine-tune` of use-m3
                                          # (configs/train.yaml's use_* settings) against its frozen heads

`--model` is the model measured (default: the current one), `--before` the one it replaces;
cross-validated figures refit the recipe the model was built by (`--recipe`, and
`--nc-recipe` for the non-commercial model) on the folds. Embeddings are cached in
FEEDBACK_NLP_CACHE/benchmarks so a second run skips the encoder. Exits 3 with a message when the
data is not there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import StratifiedKFold

from feedback_nlp import recipe as rcp
from feedback_nlp import shift, sources
from feedback_nlp.classify import Model
from feedback_nlp.clean import clean_text
from feedback_nlp.config import load_column_map, load_journey_map, load_settings, project_root
from feedback_nlp.errors import MissingDataError
from feedback_nlp.persist import load_model
from feedback_nlp.records import SENTIMENTS

SECTIONS = ("umsab", "germeval", "banking77", "effort", "shift", "feedback", "umsab_ft", "banking77_ft")
SIX = ("it", "pt", "en", "es", "fr", "de")
CLS = np.asarray(SENTIMENTS)


class Cache:
    """Embeddings by text hash, kept in FEEDBACK_NLP_CACHE/benchmarks/<embedder>.npz."""

    def __init__(self, embedder_spec: str, threads: int) -> None:
        from feedback_nlp.distill import cache_dir
        from feedback_nlp.embed import Embedder

        self.emb = Embedder(embedder_spec, threads=threads)
        self.path = cache_dir() / "benchmarks" / f"{self.emb.id.replace('/', '_')}.npz"
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                self.vectors = dict(zip(z["keys"].tolist(), z["X"]))

    def __call__(self, texts: list[str]) -> np.ndarray:
        keys = [hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in self.vectors}
        if todo:
            print(f"  embedding {len(todo)} texts", file=sys.stderr)
            for k, v in zip(todo, self.emb.encode(list(todo.values()))):
                self.vectors[k] = v
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self.path, keys=np.asarray(list(self.vectors)), X=np.stack(list(self.vectors.values())))
        return np.stack([self.vectors[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 512), np.float32)


def sentiment_of(model: Model, X: np.ndarray, texts: list[str]) -> np.ndarray:
    p = model.probabilities(X, texts).sentiment
    have = list(model.sentiment.classes_)
    return np.column_stack([p[:, have.index(c)] for c in CLS])


def run_shift(model: Model, X: np.ndarray, texts: list[str], langs: list[str], settings: Any,
              heads: tuple[str, ...] | None = None) -> np.ndarray:
    """Sentiment probabilities corrected the way `run` corrects them (shift.py), whole texts as
    units: the feedback head first, then sentiment over the units that are feedback. With
    heads=("sentiment",) every unit counts (the method alone, on a set that is all one kind)."""
    probs = model.probabilities(X, texts)
    units = pd.DataFrame({"lang": langs, "p_feedback": probs.feedback if probs.feedback is not None else 1.0})
    sent = sentiment_of(model, X, texts)
    for j, c in enumerate(CLS):
        units[f"p_{c}"] = sent[:, j]
    trained = shift.train_priors(model)
    heads = settings.label_shift if heads is None else heads
    priors = shift.estimate(units, trained, heads=heads, min_units=settings.label_shift_min_units,
                            feedback_min_probability=settings.feedback_min_probability if "feedback" in heads else 0.0)
    units = shift.apply(units, priors, trained,
                        feedback_min_probability=settings.feedback_min_probability if "feedback" in heads else 0.0)
    return units[[f"p_{c}" for c in CLS]].to_numpy()


def macro(y: Any, P: np.ndarray) -> float:
    return 100 * f1_score(y, CLS[P.argmax(axis=1)], average="macro")


# --- sections --------------------------------------------------------------------------------


def umsab(ctx: dict[str, Any]) -> dict[str, Any]:
    val = sources.read_umsab(ctx["root"] / "umsab", split="val", languages=list(sources.UMSAB_LANGS))
    X = ctx["embed"](val["text"].tolist())
    out: dict[str, Any] = {}
    for name, model in ctx["models"].items():
        P = sentiment_of(model, X, val["text"].tolist())
        out[name] = {lang: macro(val["sentiment"][m], P[m.to_numpy()]) for lang, m in
                     ((lang, val["lang"] == lang) for lang in sorted(set(val["lang"])))}
    print("\n## UMSAB val, sentiment macro-F1 x 100 (324 tweets per language; never trained on)")
    print("| model | " + " | ".join(SIX) + " | ar | hi |")
    print("|---|" + "---|" * 8)
    for name, r in out.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in (*SIX, "ar", "hi")) + " |")
    return out


def germeval(ctx: dict[str, Any]) -> dict[str, Any]:
    journey, settings = ctx["journey"], ctx["settings"]
    mapping = sources.load_mapping("configs/mappings/germeval2017.yaml", journey.stage_ids)
    ge = sources.read_germeval(ctx["root"], mapping=mapping)
    texts = ge["text"].tolist()
    X = ctx["embed"](texts)
    y = ge["sentiment"].to_numpy()
    out: dict[str, Any] = {"n": len(ge), "always_neutral": accuracy_score(y, np.full(len(y), "neutral"))}
    for name, model in ctx["models"].items():
        raw = sentiment_of(model, X, texts)
        shifted = run_shift(model, X, texts, ge["lang"].tolist(), settings)
        out[name] = {"raw": accuracy_score(y, CLS[raw.argmax(1)]), "label_shift": accuracy_score(y, CLS[shifted.argmax(1)])}
        staged = (ge["stage"] != "").to_numpy()
        p = model.probabilities(X[staged], [t for t, s in zip(texts, staged) if s])
        out[name]["stage_accuracy"] = accuracy_score(ge["stage"][staged], model.stage.classes_[p.stage.argmax(1)])
        out[name]["stage_n"] = int(staged.sum())
    if ctx["nc_recipe"] is not None:
        out["nc_cv"] = germeval_cv(ctx, ge, X)
    print(f"\n## GermEval 2017 dev, document sentiment micro-F1 ({len(ge)} documents; always 'neutral' "
          f"{out['always_neutral']:.3f})")
    print("| model | as classified | with label shift (as `run`) | stage accuracy (mapped aspects) |")
    print("|---|---|---|---|")
    for name in ctx["models"]:
        r = out[name]
        print(f"| {name} | {r['raw']:.3f} | {r['label_shift']:.3f} | {r['stage_accuracy']:.3f} (n={r['stage_n']}) |")
    if "nc_cv" in out:
        r = out["nc_cv"]
        print(f"| non-commercial recipe, {ctx['folds']}-fold CV on dev | {r['raw']:.3f} | {r['label_shift']:.3f} | "
              f"{r['stage_accuracy']:.3f} |")
    return out


def fold_model(ctx: dict[str, Any], recipe: rcp.Recipe, rows: pd.DataFrame, X: np.ndarray, source: str,
               test: np.ndarray) -> Model:
    """The recipe's model for one fold of `source`: heads on every other source's rows the recipe
    does not hold out plus the source's rows outside the fold, calibrated on the other sources'
    held-out rows (as `build` calibrates on held-out rows)."""
    own = (rows["source"] == source).to_numpy()
    train = (~own & ~rows["held_out"].to_numpy()) | own
    train[test] = False
    model = rcp.fit_heads(rows[train], X[train], recipe, model_id="cv", embedder_id=ctx["embedder_id"])
    cal = ~own & rows["held_out"].to_numpy()
    model.calibration = rcp.calibration(model, rows[cal], X[cal])
    return model


def germeval_cv(ctx: dict[str, Any], ge: pd.DataFrame, X_ge: np.ndarray) -> dict[str, float]:
    """The non-commercial recipe refit with GermEval dev in folds: each fold's documents are
    classified by heads that never saw them."""
    recipe = rcp.load_recipe(ctx["nc_recipe"])
    rows = ctx["rows"](recipe)
    X = ctx["embed"](rows["text"].tolist())
    is_ge = (rows["source"] == "germeval").to_numpy()
    ge_idx = np.flatnonzero(is_ge)
    y = rows["sentiment"].to_numpy()
    pred_raw = np.empty(len(ge_idx), dtype=object)
    pred_shift = np.empty(len(ge_idx), dtype=object)
    stage_hits: list[bool] = []
    folds = StratifiedKFold(ctx["folds"], shuffle=True, random_state=0)
    for k, (a, b) in enumerate(folds.split(ge_idx, y[ge_idx])):
        t0 = time.time()
        model = fold_model(ctx, recipe, rows, X, "germeval", ge_idx[b])
        test = rows.iloc[ge_idx[b]]
        texts = test["text"].tolist()
        Xt = X[ge_idx[b]]
        pred_raw[b] = CLS[sentiment_of(model, Xt, texts).argmax(1)]
        pred_shift[b] = CLS[run_shift(model, Xt, texts, test["lang"].tolist(), ctx["settings"]).argmax(1)]
        staged = (test["stage"] != "").to_numpy()
        if staged.any():
            p = model.probabilities(Xt[staged], [t for t, s in zip(texts, staged) if s]).stage
            stage_hits += list(model.stage.classes_[p.argmax(1)] == test["stage"].to_numpy()[staged])
        print(f"  GermEval fold {k + 1}/{ctx['folds']}: {time.time() - t0:.0f} s", file=sys.stderr)
    truth = y[ge_idx]
    return {"raw": accuracy_score(truth, pred_raw), "label_shift": accuracy_score(truth, pred_shift),
            "stage_accuracy": float(np.mean(stage_hits)) if stage_hits else float("nan")}


def banking77(ctx: dict[str, Any]) -> dict[str, Any]:
    """Stages of Banking77 requests, cross-validated: the recipe refit with Banking77 in folds."""
    recipe = rcp.load_recipe(ctx["recipe"])
    rows = ctx["rows"](recipe)
    X = ctx["embed"](rows["text"].tolist())
    is_b = (rows["source"] == "banking77").to_numpy()
    b_idx = np.flatnonzero(is_b)
    intents = rows["stage"].to_numpy()[b_idx]
    truth = np.asarray([s.split(sources.SUBCLASS_SEP)[0] for s in intents])
    pred = np.empty(len(b_idx), dtype=object)
    judged = np.zeros(len(b_idx))
    folds = StratifiedKFold(ctx["folds"], shuffle=True, random_state=0)
    for k, (a, b) in enumerate(folds.split(b_idx, intents)):
        t0 = time.time()
        model = fold_model(ctx, recipe, rows, X, "banking77", b_idx[b])
        test = rows.iloc[b_idx[b]]
        p = model.probabilities(X[b_idx[b]], test["text"].tolist())
        pred[b] = model.stage.classes_[p.stage.argmax(1)]
        judged[b] = p.feedback if p.feedback is not None else 1.0
        print(f"  Banking77 fold {k + 1}/{ctx['folds']}: {time.time() - t0:.0f} s", file=sys.stderr)
    before = {}
    for name, m in ctx["models"].items():  # models that never learnt from Banking77: every request is unseen
        if "banking77" not in m.meta.get("sources", {}):
            texts = rows["text"].to_numpy()[b_idx].tolist()
            p = m.probabilities(X[b_idx], texts).stage
            before[name] = accuracy_score(truth, m.stage.classes_[p.argmax(1)])
    out = {"n": int(len(b_idx)), "accuracy": accuracy_score(truth, pred), "models_without_banking77": before,
           "macro_f1": f1_score(truth, pred, labels=sorted(set(truth)), average="macro"),  # no support in Banking77
           "per_stage": {s: float((pred[truth == s] == s).mean()) for s in sorted(set(truth))},
           "judged_feedback": float((judged >= 0.5).mean())}
    print(f"\n## Banking77 stages, {ctx['folds']}-fold CV on train ({len(b_idx)} requests, "
          "configs/mappings/banking77.yaml)")
    print(f"accuracy {out['accuracy']:.4f}, macro-F1 {out['macro_f1']:.4f}; recall per stage: "
          + ", ".join(f"{s} {v:.3f}" for s, v in out["per_stage"].items())
          + f"; judged feedback {out['judged_feedback']:.1%}"
          + "".join(f"; {k} (never saw Banking77), every request: accuracy {v:.4f}" for k, v in before.items()))
    return out


# --- USE-m-v3 fine-tuned end to end (train --fine-tune), against heads on the frozen encoder ------


def _heads(X: np.ndarray, y: np.ndarray) -> Any:
    """The heads `train` fits (configs/train.yaml: kernel map, logistic head), on embeddings X."""
    from feedback_nlp.classify import KernelMap, LinearHead
    from feedback_nlp.config import load_train_settings

    ts = load_train_settings()
    km = KernelMap(n_components=ts.kernel_components, gamma=ts.kernel_gamma, random_state=ts.seed).fit(X)
    head = LinearHead(C=ts.C, random_state=ts.seed).fit(km.transform(X), y)
    return lambda V: head.classes_[head.predict_proba(km.transform(V)).argmax(axis=1)]


def _fine_tune(texts: list[str], labels: dict[str, np.ndarray], anchors: np.ndarray, threads: int) -> Any:
    from feedback_nlp.config import load_train_settings
    from feedback_nlp.finetune import fine_tune_use, use_options

    ft = load_train_settings().fine_tune
    t0 = time.time()
    model = fine_tune_use(texts, labels, anchors=anchors, threads=threads, **use_options(ft))
    model.seconds = time.time() - t0
    model.settings = {k: v for k, v in dataclasses.asdict(ft).items() if k.startswith("use_")}
    return model


def _frozen_vs_tuned(ctx: dict[str, Any], train_texts: list[str], y: np.ndarray, test_texts: list[str],
                     head: str) -> tuple[Any, dict[str, np.ndarray]]:
    """Fine-tune on (train_texts, y); predictions on test_texts of the frozen encoder's heads, of
    the heads `train` would fit on the fine-tuned embeddings, and of the fine-tune's own head."""
    from feedback_nlp.finetune import encode

    X0, V0 = ctx["embed"](train_texts), ctx["embed"](test_texts)
    tuned = _fine_tune(train_texts, {head: y}, X0, ctx["settings"].threads)
    V = encode(tuned, test_texts)
    W, bias = tuned.heads[head]
    return tuned, {"frozen encoder, kernel heads": _heads(X0, y)(V0),
                   "fine-tuned, kernel heads (what train ships)": _heads(encode(tuned, train_texts), y)(V),
                   "fine-tuned, its own linear head": tuned.head_classes[head][(V @ W.T + bias).argmax(axis=1)]}


def translation_retrieval(encode: Any) -> dict[str, float]:
    """corpora/parallel: share of IT/PT/ES/FR/DE sentences whose nearest English sentence (cosine,
    among all 200) is their translation. Written by the team: a check that fine-tuning keeps the
    languages aligned, not an accuracy figure."""
    par = pd.read_csv(project_root() / "corpora" / "parallel" / "feedback_6lang.csv", dtype=str)
    E = encode(par["en"].tolist())
    out = {}
    for lang in ("it", "pt", "es", "fr", "de"):
        S = encode(par[lang].tolist())
        out[lang] = 100 * float(((S @ E.T).argmax(axis=1) == np.arange(len(par))).mean())
    return out


def umsab_ft(ctx: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuned on UMSAB train (8 languages, 14,712 tweets), measured on val, against the same
    heads on the frozen encoder trained on the same tweets; translation retrieval before and after."""
    from feedback_nlp.finetune import encode

    langs = list(sources.UMSAB_LANGS)
    tr = sources.read_umsab(ctx["root"] / "umsab", split="train", languages=langs)
    va = sources.read_umsab(ctx["root"] / "umsab", split="val", languages=langs)
    tuned, preds = _frozen_vs_tuned(ctx, tr["text"].tolist(), tr["sentiment"].to_numpy(), va["text"].tolist(),
                                    "sentiment")
    out: dict[str, Any] = {"train_seconds": tuned.seconds, "settings": tuned.settings, "macro_f1": {}}
    for name, pred in preds.items():
        out["macro_f1"][name] = {lang: 100 * f1_score(va["sentiment"][m], pred[m.to_numpy()], average="macro")
                                 for lang, m in ((lang, va["lang"] == lang) for lang in sorted(set(va["lang"])))}
    frozen_enc = ctx["embed"]
    out["retrieval"] = {"frozen": translation_retrieval(frozen_enc),
                        "fine-tuned": translation_retrieval(lambda t: encode(tuned, t))}
    print(f"\n## UMSAB val after fine-tuning on UMSAB train ({len(tr)} tweets, {tuned.seconds:.0f} s on "
          f"{ctx['settings'].threads} threads; {tuned.settings})")
    print("| encoder, heads | " + " | ".join(SIX) + " | ar | hi |")
    print("|---|" + "---|" * 8)
    for name, r in out["macro_f1"].items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in (*SIX, "ar", "hi")) + " |")
    print("translation retrieval X -> EN, % right of 200 (corpora/parallel): " + "; ".join(
        f"{k}: " + ", ".join(f"{lang} {v:.1f}" for lang, v in r.items()) for k, r in out["retrieval"].items()))
    return out


def banking77_ft(ctx: dict[str, Any]) -> dict[str, Any]:
    """Banking77's 77 intents: a stratified 80/20 split of train (the test split is held back),
    frozen encoder vs fine-tuned on the 80%."""
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(sources.require(ctx["root"] / "banking77" / "train.csv", "Banking77 train", ctx["root"]))
    a, b = train_test_split(np.arange(len(df)), test_size=0.2, random_state=0, stratify=df["category"])
    tr, te = df.iloc[a], df.iloc[b]
    truth = te["category"].to_numpy()
    tuned, preds = _frozen_vs_tuned(ctx, tr["text"].tolist(), tr["category"].to_numpy(), te["text"].tolist(),
                                    "intent")
    out = {"n_train": len(tr), "n_test": len(te), "train_seconds": tuned.seconds,
           "accuracy": {k: 100 * accuracy_score(truth, p) for k, p in preds.items()}}
    print(f"\n## Banking77, 77 intents, stratified 80/20 split of train ({len(tr)} / {len(te)}; fine-tuning "
          f"{tuned.seconds:.0f} s)")
    print("; ".join(f"{k}: accuracy {v:.2f}" for k, v in out["accuracy"].items()))
    return out


def effort(ctx: dict[str, Any]) -> dict[str, Any]:
    """The blind team-written set corpora/effort_test (stage and sentiment labels)."""
    frames = []
    for f in sorted((project_root() / "corpora" / "effort_test").glob("*.jsonl")):
        d = pd.read_json(f, lines=True)
        d["lang"] = f.stem
        frames.append(d[["text", "stage", "sentiment", "lang"]])
    et = pd.concat(frames, ignore_index=True)
    et["text"] = et["text"].map(clean_text)
    X = ctx["embed"](et["text"].tolist())
    out = {}
    for name, model in ctx["models"].items():
        p = model.probabilities(X, et["text"].tolist())
        stage = model.stage.classes_[p.stage.argmax(1)]
        sent = CLS[sentiment_of(model, X, et["text"].tolist()).argmax(1)]
        out[name] = {"stage": f1_score(et["stage"], stage, average="macro"),
                     "sentiment": f1_score(et["sentiment"], sent, average="macro"),
                     "judged_not_feedback": float((p.feedback < 0.5).mean()) if p.feedback is not None else 0.0,
                     "judged_not_feedback_run": judged_not_feedback_as_run(model, p, et, ctx["settings"])}
    print(f"\n## corpora/effort_test (blind, team-written, {len(et)} units): macro-F1")
    print("| model | stage | sentiment | judged not feedback | ... with the run's own feedback prior |")
    print("|---|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['stage']:.3f} | {r['sentiment']:.3f} | {r['judged_not_feedback']:.1%} | "
              f"{r['judged_not_feedback_run']:.1%} |")
    return out


def judged_not_feedback_as_run(model: Model, probs: Any, d: pd.DataFrame, settings: Any) -> float:
    """Share of units left out as not feedback once the feedback head is corrected to the set's
    own mix, as a run over this set alone would do."""
    if probs.feedback is None:
        return 0.0
    units = pd.DataFrame({"lang": d["lang"].to_numpy(), "p_feedback": probs.feedback})
    for c in CLS:
        units[f"p_{c}"] = 1.0 / 3
    trained = shift.train_priors(model)
    priors = shift.estimate(units, trained, heads=("feedback",), min_units=settings.label_shift_min_units,
                            feedback_min_probability=settings.feedback_min_probability)
    p = shift.apply(units, priors, trained)["p_feedback"].to_numpy()
    return float((p < settings.feedback_min_probability).mean())


def label_shift(ctx: dict[str, Any]) -> dict[str, Any]:
    """What the correction does where the class mix is not the training mix: UMSAB val resampled
    to 80% neutral and to 70% negative, and GermEval dev as it is. Pain error = the corrected mean
    negative probability minus the true negative share, in points (what a stage's pain reads)."""
    settings = ctx["settings"]
    model = ctx["models"]["after"]
    val = sources.read_umsab(ctx["root"] / "umsab", split="val", languages=[n for n, c in sources.UMSAB_LANGS.items()
                                                                         if c in SIX])
    Xv = ctx["embed"](val["text"].tolist())
    rng = np.random.default_rng(0)
    sets = {}
    for label, mix in (("UMSAB val, 80% neutral", (0.1, 0.8, 0.1)), ("UMSAB val, 70% negative", (0.7, 0.2, 0.1)),
                       ("UMSAB val as published (balanced)", None)):
        if mix is None:
            idx = np.arange(len(val))
        else:
            parts = []
            for lang in SIX:  # each language resampled to the mix: 600 tweets, drawn with replacement
                for c, share in zip(CLS, mix):
                    pool = np.flatnonzero(((val["lang"] == lang) & (val["sentiment"] == c)).to_numpy())
                    parts.append(rng.choice(pool, int(round(600 * share)), replace=True))
            idx = np.concatenate(parts)
        sets[label] = (val.iloc[idx], Xv[idx])
    ge = sources.read_germeval(ctx["root"], mapping=None)
    sets["GermEval dev"] = (ge, ctx["embed"](ge["text"].tolist()))
    out = {}
    print("\n## Label shift: the run's own class mix (EM, shift.py) against none")
    print("| data | true negative share | correction | accuracy | macro-F1 | negative share read | pain error (points) |")
    print("|---|---|---|---|---|---|---|")
    for label, (d, X) in sets.items():
        texts, y = d["text"].tolist(), d["sentiment"].to_numpy()
        true_neg = float((y == "negative").mean())
        res = {}
        corrections = [("none", sentiment_of(model, X, texts)),
                       ("EM per language, every unit", run_shift(model, X, texts, d["lang"].tolist(), settings,
                                                                 heads=("sentiment",)))]
        if label.startswith("GermEval"):
            corrections.append(("as `run`: feedback, then sentiment of feedback units",
                                run_shift(model, X, texts, d["lang"].tolist(), settings)))
        for corr, P in corrections:
            pred = CLS[P.argmax(1)]
            read = float(P[:, 0].mean())
            res[corr] = {"accuracy": accuracy_score(y, pred), "macro_f1": f1_score(y, pred, average="macro"),
                         "negative_read": read, "error_points": 100 * (read - true_neg)}
            print(f"| {label} | {true_neg:.3f} | {corr} | {res[corr]['accuracy']:.3f} | {res[corr]['macro_f1']:.3f} | "
                  f"{read:.3f} | {res[corr]['error_points']:+.1f} |")
        out[label] = res
    return out


def feedback(ctx: dict[str, Any]) -> dict[str, Any]:
    """Is it feedback at all: GermEval's relevance flag (is the document about Deutsche Bahn),
    and the share of UMSAB tweets (mostly politics, TV, daily life) judged not feedback."""
    model = ctx["models"]["after"]
    if model.feedback is None:
        return {}
    ge = sources.read_germeval(ctx["root"], mapping=None)
    X = ctx["embed"](ge["text"].tolist())
    p = model.probabilities(X, ge["text"].tolist()).feedback
    relevant = (ge["feedback"] == "yes").to_numpy()
    judged = p >= 0.5
    val = sources.read_umsab(ctx["root"] / "umsab", split="val", languages=list(sources.UMSAB_LANGS))
    pv = model.probabilities(ctx["embed"](val["text"].tolist()), val["text"].tolist()).feedback
    from sklearn.metrics import roc_auc_score

    out = {"germeval": {"n": len(ge), "relevant_share": float(relevant.mean()), "auc": roc_auc_score(relevant, p),
                        "irrelevant_judged_not_feedback": float((~judged[~relevant]).mean()),
                        "relevant_judged_feedback": float(judged[relevant].mean()),
                        "precision_not_feedback": precision_score(~relevant, ~judged, zero_division=0),
                        "recall_not_feedback": recall_score(~relevant, ~judged, zero_division=0)},
           "umsab_val_judged_not_feedback": float((pv < 0.5).mean())}
    g = out["germeval"]
    print("\n## Feedback or not")
    print(f"GermEval dev relevance ({g['n']} documents, {g['relevant_share']:.1%} about Deutsche Bahn): AUC "
          f"{g['auc']:.3f}; irrelevant judged not feedback {g['irrelevant_judged_not_feedback']:.1%}, relevant "
          f"judged feedback {g['relevant_judged_feedback']:.1%} (precision / recall of 'not feedback' against "
          f"'irrelevant': {g['precision_not_feedback']:.3f} / {g['recall_not_feedback']:.3f}); UMSAB val judged not "
          f"feedback {out['umsab_val_judged_not_feedback']:.1%}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    ap.add_argument("--model", default=None, help="the model measured (default: models/CURRENT)")
    ap.add_argument("--before", default="models/seed-v1", help="the model it replaces ('' for none)")
    ap.add_argument("--recipe", default="configs/recipes/default.yaml", help="recipe refit for cross-validation")
    ap.add_argument("--nc-recipe", default="configs/recipes/noncommercial.yaml",
                    help="non-commercial recipe cross-validated on GermEval ('' to skip)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--benchmarks", default=None)
    ap.add_argument("--json", default=None, help="also write every figure here")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    root = sources.benchmarks_root(args.benchmarks)
    if not root.is_dir():
        print(f"the benchmarks folder {root} does not exist: nothing measured (pass --benchmarks DIR or set "
              f"{sources.BENCHMARKS_ENV})", file=sys.stderr)
        sys.exit(3)
    settings = load_settings()
    columns = load_column_map(settings.columns)
    journey = load_journey_map(settings.journey_map)
    models = {"after": load_model(args.model or settings.model)}
    if args.before:
        models = {"before": load_model(args.before), **models}
    embed = Cache(settings.embedder, settings.threads)
    for m in models.values():
        m.check_embedder(embed.emb.id)
    rows_cache: dict[str, pd.DataFrame] = {}

    def rows(recipe: rcp.Recipe) -> pd.DataFrame:
        if recipe.path not in rows_cache:
            rows_cache[recipe.path] = rcp.load_rows(recipe, root, settings=settings, columns=columns,
                                                    stage_ids=journey.stage_ids)
        return rows_cache[recipe.path]

    ctx = {"root": root, "settings": settings, "journey": journey, "models": models, "embed": embed,
           "embedder_id": embed.emb.id, "rows": rows, "recipe": args.recipe, "folds": args.folds,
           "nc_recipe": args.nc_recipe or None}
    print("models: " + ", ".join(f"{k} = {m.model_id}" for k, m in models.items()))
    figures: dict[str, Any] = {}
    try:
        for section in only:
            t0 = time.time()
            figures[section] = globals()[section if section != "shift" else "label_shift"](ctx)
            print(f"({section}: {time.time() - t0:.0f} s)", file=sys.stderr)
    except MissingDataError as e:
        print(f"{e}", file=sys.stderr)
        sys.exit(3)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=float) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
