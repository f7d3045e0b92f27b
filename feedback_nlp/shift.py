"""Label shift: a dump's class mix is not the training mix, so correct the probabilities for it.

The heads are trained on a fixed mix of classes (balanced, so a third each for sentiment), but a
dump of real feedback is mostly neutral and a complaints inbox mostly negative. A probabilistic
classifier's posteriors carry its training prior; when only the prior changes (p(x | y) stays
the same), the posteriors under the dump's prior are the trained ones reweighted by
new prior / training prior and renormalised. The dump's prior is unknown, but it is the fixed
point of "the mean of the reweighted posteriors over the dump's own unlabelled units": the EM
procedure of Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to
new a priori probabilities". Each run estimates it from its own units, per language where a
language has enough units (the class mix differs by market), else from all units pooled.

Heads are corrected in order: first whether a unit is feedback at all (a social-listening dump
is mostly not), then sentiment over the units that are feedback, since only those reach scores.

Everything here is a pure function of probability arrays and unit frames, so a run (pipeline.py)
and the scheduled scorer (incremental.py) share it; `PriorSample` bounds what a run keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from feedback_nlp.records import SENTIMENTS, unit_keys

FEEDBACK_CLASSES = ("no", "yes")  # the order of the feedback head's prior here: P(not feedback), P(feedback)
HEADS = ("feedback", "sentiment")  # heads a run may correct, in the order they are corrected
POOLED = "*"  # the key of the all-languages estimate


def em_prior(P: np.ndarray, train_prior: np.ndarray, *, max_iter: int = 200, tol: float = 1e-6
             ) -> tuple[np.ndarray, int]:
    """Saerens et al.'s EM: the class prior of the units whose trained posteriors are the rows of P.

    Returns (prior, iterations). With no rows the training prior comes back unchanged.
    """
    P = np.asarray(P, dtype=np.float64)
    pt = np.asarray(train_prior, dtype=np.float64)
    if len(P) == 0:
        return pt.copy(), 0
    prior = pt.copy()
    for it in range(1, max_iter + 1):
        new = adjust(P, pt, prior).mean(axis=0)
        done = np.abs(new - prior).max() < tol
        prior = new
        if done:
            return prior, it
    return prior, max_iter


def adjust(P: np.ndarray, train_prior: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Posteriors under `prior` from posteriors under `train_prior` (rows renormalised)."""
    Q = np.asarray(P, dtype=np.float64) * (np.asarray(prior, dtype=np.float64)
                                           / np.maximum(np.asarray(train_prior, dtype=np.float64), 1e-12))
    s = Q.sum(axis=1, keepdims=True)
    return np.divide(Q, s, out=np.zeros_like(Q), where=s > 0)


@dataclass
class HeadPriors:
    """One head's estimated priors: pooled, and per language that had enough units."""

    classes: list[str]
    train: np.ndarray
    pooled: np.ndarray
    per_language: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, int] = field(default_factory=dict)  # units each estimate was made from

    def for_language(self, lang: str) -> np.ndarray:
        return self.per_language.get(lang, self.pooled)

    def to_dict(self) -> dict[str, Any]:
        r = lambda a: {c: round(float(v), 4) for c, v in zip(self.classes, a)}  # noqa: E731
        return {"training": r(self.train), "all": r(self.pooled),
                "per_language": {k: r(v) for k, v in sorted(self.per_language.items())},
                "units": dict(sorted(self.units.items()))}


@dataclass
class Priors:
    """The run's estimated class priors, by head; empty when the correction is off."""

    heads: dict[str, HeadPriors] = field(default_factory=dict)
    min_units: int = 0

    def __bool__(self) -> bool:
        return bool(self.heads)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "EM re-estimation of class priors (Saerens et al. 2002) on the run's own units, "
                          f"per language with at least {self.min_units} units, else all languages pooled",
                **{h: p.to_dict() for h, p in self.heads.items()}}


def train_priors(model: Any) -> dict[str, np.ndarray]:
    """The class mix each correctable head was trained under, in this module's class order."""
    out = {}
    if getattr(model, "feedback", None) is not None:
        out["feedback"] = _aligned(model.feedback, FEEDBACK_CLASSES)
    out["sentiment"] = _aligned(model.sentiment, SENTIMENTS)
    return out


def _aligned(head: Any, classes: Iterable[str]) -> np.ndarray:
    have = list(head.classes_)
    prior = np.asarray(head.class_prior_, dtype=np.float64)
    out = np.array([prior[have.index(c)] if c in have else 0.0 for c in classes])
    return out / out.sum()


def _columns(head: str) -> list[str]:
    return ["p_feedback"] if head == "feedback" else [f"p_{s}" for s in SENTIMENTS]


def _matrix(frame: pd.DataFrame, head: str) -> np.ndarray:
    if head == "feedback":
        p = frame["p_feedback"].to_numpy(dtype=np.float64)
        return np.column_stack([1.0 - p, p])
    return frame[_columns(head)].to_numpy(dtype=np.float64)


def estimate(sample: pd.DataFrame, trained: dict[str, np.ndarray], *, heads: Iterable[str],
             min_units: int, feedback_min_probability: float, feedback_sources: Iterable[str] = ()) -> Priors:
    """Priors of `heads` from a frame of units' probabilities (columns p_feedback, p_negative,
    p_neutral, p_positive, lang): per language with at least `min_units` units, else pooled.

    Sentiment is estimated on the units that are feedback once the feedback head is corrected.
    """
    wanted = [h for h in HEADS if h in set(heads) and h in trained]
    out = Priors(min_units=min_units)
    frame = sample
    for head in wanted:
        classes = list(FEEDBACK_CLASSES if head == "feedback" else SENTIMENTS)
        P = _matrix(frame, head)
        langs = frame["lang"].astype(str).to_numpy()
        pooled, _ = em_prior(P, trained[head])
        hp = HeadPriors(classes, trained[head], pooled, units={POOLED: int(len(P))})
        for lang in sorted(set(langs)):
            m = langs == lang
            if m.sum() >= min_units:
                hp.per_language[lang], _ = em_prior(P[m], trained[head])
                hp.units[lang] = int(m.sum())
        out.heads[head] = hp
        if head == "feedback":  # sentiment is about the units that reach scores
            frame = apply(frame.copy(), Priors({"feedback": hp}, min_units), trained)
            frame = frame[_feedback_scope(frame, feedback_min_probability, feedback_sources)].reset_index(drop=True)
    return out


def _feedback_scope(units: pd.DataFrame, min_probability: float, sources: Iterable[str]) -> np.ndarray:
    """Units whose sentiment the run corrects: those that are feedback (the unit's own P(feedback),
    or a source that is feedback by construction; classify.is_feedback also reads the item)."""
    out = units["p_feedback"].to_numpy(dtype=np.float64) >= min_probability
    if sources and "source" in units.columns:
        out |= units["source"].astype("string").isin(list(sources)).fillna(False).to_numpy(dtype=bool)
    return out


def apply(units: pd.DataFrame, priors: Priors, trained: dict[str, np.ndarray], *,
          feedback_min_probability: float = 0.0, feedback_sources: Iterable[str] = ()) -> pd.DataFrame:
    """The chunk with its probability columns corrected to `priors` (in place; returns it).

    Sentiment priors are estimated on the units that are feedback, so only those are corrected
    (after the feedback correction, when there is one); the others keep their sentiment as
    classified. Labels are not touched: classify.label_units derives them afterwards."""
    if not priors or units.empty:
        return units
    langs = units["lang"].astype(str).to_numpy()
    for head, hp in priors.heads.items():
        P = _matrix(units, head)
        Q = P.copy()
        scope = np.ones(len(units), dtype=bool) if head == "feedback" else \
            _feedback_scope(units, feedback_min_probability, feedback_sources)
        for lang in set(langs):
            m = (langs == lang) & scope
            if m.any():
                Q[m] = adjust(P[m], trained[head], hp.for_language(lang))
        if head == "feedback":
            units["p_feedback"] = Q[:, 1]
        else:
            for j, c in enumerate(_columns(head)):
                units[c] = Q[:, j]
    return units


class PriorSample:
    """A uniform sample of at most `cap` units per language of the columns EM reads, kept across
    a run's chunks (bottom-k random keys), so memory does not grow with the dump."""

    COLUMNS = ["lang", "source", "p_feedback", *(f"p_{s}" for s in SENTIMENTS)]

    def __init__(self, cap: int = 100_000, seed: int = 0) -> None:
        self.cap = cap
        self._rng = np.random.default_rng(seed)
        self._parts: list[pd.DataFrame] = []
        self._rows = 0
        self._langs: set[str] = set()

    def add(self, units: pd.DataFrame) -> None:
        if units.empty:
            return
        part = units[[c for c in self.COLUMNS if c in units.columns]].copy()
        if "p_feedback" not in part.columns:
            part["p_feedback"] = 1.0
        if "source" not in part.columns:
            part["source"] = ""
        part["lang"] = part["lang"].astype(str)
        part["source"] = part["source"].astype("string").fillna("").astype(str)
        part["_key"] = (unit_keys(units) if {"item_id", "unit_idx"} <= set(units.columns)
                        else self._rng.random(len(part)))
        self._parts.append(part)
        self._rows += len(part)
        self._langs.update(part["lang"].unique())
        if self._rows > 2 * self.cap * len(self._langs):  # cut back now and then, not at every chunk
            self._cut()

    def merge(self, other: "PriorSample") -> "PriorSample":
        """Add another partition's sample (the same keys give the one-pass sample)."""
        self._parts += other._parts
        self._rows += other._rows
        self._langs |= other._langs
        self._cut()
        return self

    def _cut(self) -> None:
        if not self._parts:
            return
        df = pd.concat(self._parts, ignore_index=True)
        df = df.sort_values("_key", kind="mergesort").groupby("lang", sort=False).head(self.cap)
        self._parts, self._rows = [df], len(df)

    def frame(self) -> pd.DataFrame:
        if not self._parts:
            return pd.DataFrame(columns=self.COLUMNS)
        self._cut()
        return self._parts[0].drop(columns="_key").reset_index(drop=True)
