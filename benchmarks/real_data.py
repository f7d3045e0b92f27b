"""Accuracy on real labelled data written by others, read from ../shared/benchmarks at run time.

Never copies that data into the repository. Expected layouts (as published):
  UMSAB (cardiffnlp tweet sentiment multilingual): <lang folder>/{train,val,test}_{text,labels}.txt,
      one tweet / one label per line, labels 0 negative, 1 neutral, 2 positive;
  Banking77: a folder with train.csv (columns text, category).

    .venv/bin/python benchmarks/real_data.py umsab-transfer   # shipped heads, seed corpus only
    .venv/bin/python benchmarks/real_data.py umsab-retrain    # heads trained on UMSAB train
    .venv/bin/python benchmarks/real_data.py banking77        # 5-fold CV accuracy on train

Exits 3 with a message when the data is not there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from feedback_nlp.config import TrainSettings, load_settings, load_train_settings, project_root
from feedback_nlp.embed import Embedder
from feedback_nlp.persist import load_model

ROOT = project_root().parent / "shared" / "benchmarks"
LANGS = {"italian": "it", "portuguese": "pt", "english": "en", "spanish": "es", "french": "fr", "german": "de"}
SENT = np.array(["negative", "neutral", "positive"])


def _missing(what: str) -> None:
    print(f"{what} not found under {ROOT}: this machine has no copy of ../shared/benchmarks; nothing measured.",
          file=sys.stderr)
    sys.exit(3)


def _read_lines(p: Path) -> list[str]:
    return p.read_text(encoding="utf-8").splitlines()


def umsab(split: str) -> dict[str, tuple[list[str], np.ndarray]]:
    out = {}
    for folder in sorted(ROOT.rglob(f"{split}_text.txt")):
        lang = LANGS.get(folder.parent.name.lower())
        if lang is None:
            continue
        texts = _read_lines(folder)
        labels = np.array([int(x) for x in _read_lines(folder.parent / f"{split}_labels.txt")])
        out[lang] = (texts, SENT[labels])
    if not out:
        _missing(f"UMSAB {split} split")
    return out


def umsab_transfer(emb: Embedder) -> None:
    model = load_model(load_settings().model)
    model.check_embedder(emb.id)
    for lang, (texts, y) in umsab("val").items():
        pred = model.sentiment.predict(model.featurize(emb.encode(texts)))
        print(f"{lang}: n={len(y)} macro-F1 {f1_score(y, pred, average='macro'):.3f} (seed-trained heads)")


def umsab_retrain(emb: Embedder) -> None:
    from feedback_nlp.classify import KernelMap, LinearHead

    ts = load_train_settings()
    train = umsab("train")
    texts = [t for v in train.values() for t in v[0]]
    y = np.concatenate([v[1] for v in train.values()])
    X = emb.encode(texts)
    fm = KernelMap(n_components=ts.kernel_components, gamma=ts.kernel_gamma).fit(X) if ts.kernel_components else None
    F = fm.transform(X) if fm else X
    head = LinearHead(C=ts.C).fit(F, y)
    for lang, (vt, vy) in umsab("val").items():
        V = emb.encode(vt)
        pred = head.predict(fm.transform(V) if fm else V)
        print(f"{lang}: n={len(vy)} macro-F1 {f1_score(vy, pred, average='macro'):.3f} (trained on UMSAB train)")


def banking77(emb: Embedder) -> None:
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from feedback_nlp.classify import LinearHead

    files = [p for p in ROOT.rglob("train.csv") if "banking" in str(p).lower()]
    if not files:
        _missing("Banking77 train.csv")
    df = pd.read_csv(files[0])
    X = emb.encode(df["text"].astype(str).tolist())
    ts = TrainSettings(kernel_components=0)
    acc = cross_val_score(LinearHead(C=ts.C), X, df["category"], cv=StratifiedKFold(5, shuffle=True, random_state=0))
    print(f"Banking77: n={len(df)} 5-fold CV accuracy {acc.mean():.3f} +- {acc.std():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["umsab-transfer", "umsab-retrain", "banking77"])
    args = ap.parse_args()
    if not ROOT.is_dir():
        _missing("The benchmarks folder")
    emb = Embedder(load_settings().embedder)
    {"umsab-transfer": umsab_transfer, "umsab-retrain": umsab_retrain, "banking77": banking77}[args.what](emb)


if __name__ == "__main__":
    main()
