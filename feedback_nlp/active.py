"""The labelling loop: which units to label next, and which labels deserve a second look.

`select_for_labelling` ranks a run's units by how much a label would teach the heads (low stage
confidence, disagreement between the trained head and the map's stage prototypes, languages
and stages the model has seen least) and picks them round-robin over language x predicted
stage, so one noisy language cannot fill the whole batch. `audit` compares each label with
cross-validated predictions: a label the other folds find very unlikely is worth re-reading.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

LABEL_SHEET = ["item_id", "unit_idx", "lang", "text", "suggested_stage", "suggested_sentiment",
               "stage_confidence", "why", "stage", "sentiment", "touchpoints"]


def priority(units: pd.DataFrame, prototype_stage: pd.Series | None = None,
             trained_counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Per unit: a priority in [0, ~3] and the reasons behind it."""
    out = units.copy()
    low_conf = 1.0 - out["stage_confidence"].astype(float)
    score = low_conf.copy()
    why = np.where(low_conf > 0.5, "low confidence", "")
    if prototype_stage is not None:
        disagree = (prototype_stage.to_numpy() != out["stage"].to_numpy()) & (out["stage"] != "unassigned").to_numpy()
        score += 0.5 * disagree
        why = np.where(disagree, np.char.add(why.astype(str), np.where(why != "", "; ", "") + "prototype disagrees"), why)
    if trained_counts:
        lang_n = out["lang"].map(lambda lang: trained_counts.get(lang, 0)).astype(float)
        rare = 1.0 / np.sqrt(1.0 + lang_n)
        score += 5.0 * rare
        why = np.where(lang_n < 50, np.char.add(why.astype(str), np.where(why != "", "; ", "") + "rare language"), why)
    ambiguous_sent = 1.0 - out[["p_negative", "p_neutral", "p_positive"]].max(axis=1)
    score += 0.5 * ambiguous_sent
    out["priority"] = score
    out["why"] = why
    return out


def select_for_labelling(units: pd.DataFrame, n: int, *, seed: int = 0) -> pd.DataFrame:
    """`n` units, one item at most once, round-robin over (language, predicted stage) groups."""
    ranked = units.sort_values(["priority", "item_id", "unit_idx"], ascending=[False, True, True], kind="mergesort")
    ranked = ranked.drop_duplicates("item_id")
    groups = [g for _, g in ranked.groupby(["lang", "stage"], sort=True)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    picked: list[pd.Series] = []
    depth = 0
    while len(picked) < n and any(depth < len(g) for g in groups):
        for k in order:
            g = groups[k]
            if depth < len(g) and len(picked) < n:
                picked.append(g.iloc[depth])
        depth += 1
    sel = pd.DataFrame(picked)
    if sel.empty:
        return pd.DataFrame(columns=LABEL_SHEET)
    sheet = pd.DataFrame({
        "item_id": sel["item_id"], "unit_idx": sel["unit_idx"], "lang": sel["lang"], "text": sel["text"],
        "suggested_stage": sel["stage"], "suggested_sentiment": sel["sentiment"],
        "stage_confidence": sel["stage_confidence"].round(3), "why": sel["why"],
        "stage": "", "sentiment": "", "touchpoints": "",
    })
    return sheet.reset_index(drop=True)[LABEL_SHEET]


def audit(X: np.ndarray, df: pd.DataFrame, make_head, *, folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Cross-validated probability of each row's own stage and sentiment label; lowest first."""
    out = df[["source_file", "row", "text", "stage", "sentiment"]].copy()
    for label in ("stage", "sentiment"):
        y = df[label].to_numpy()
        p_own = np.zeros(len(y))
        pred = np.empty(len(y), dtype=object)
        n_splits = max(2, min(folds, int(pd.Series(y).value_counts().min())))
        for tr, te in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(X, y):
            head = make_head().fit(X[tr], y[tr])
            proba = head.predict_proba(X[te])
            classes = list(head.classes_)
            p_own[te] = [proba[i, classes.index(lbl)] if lbl in classes else 0.0 for i, lbl in enumerate(y[te])]
            pred[te] = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
        out[f"p_{label}_label"] = p_own
        out[f"cv_{label}"] = pred
    out["suspicion"] = 1.0 - np.minimum(out["p_stage_label"], out["p_sentiment_label"])
    return out.sort_values("suspicion", ascending=False, kind="mergesort").reset_index(drop=True)
