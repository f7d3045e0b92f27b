"""Stage, sentiment and touchpoint heads: scikit-learn estimators over unit embeddings.

Heads are logistic regressions whose fitted state is plain arrays (coefficients, intercepts,
labels), so a model folder loads without unpickling anything. `predict_proba` is computed from
those arrays, so a head that was saved and loaded predicts exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from feedback_nlp.errors import FeedbackError
from feedback_nlp.records import SENTIMENTS, UNASSIGNED

if TYPE_CHECKING:
    from feedback_nlp.zeroshot import StagePrototypes, TouchpointPrototypes


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
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        C = self.components_.astype(np.float64)  # stored as float32, computed in float64
        sq = (X * X).sum(axis=1)[:, None] + (C * C).sum(axis=1)[None, :] - 2.0 * (X @ C.T)
        K = np.exp(-self.gamma * np.maximum(sq, 0.0))
        return K @ self.normalization_.astype(np.float64).T

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
        return {"components": self.components_, "normalization": self.normalization_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], **params: Any) -> "KernelMap":
        fm = cls(**params)
        fm.components_ = np.asarray(arrays["components"], dtype=np.float32)
        fm.normalization_ = np.asarray(arrays["normalization"], dtype=np.float32)
        fm.n_features_in_ = fm.components_.shape[1]
        return fm


class LinearHead(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on embeddings, with an abstain threshold.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    class_weight : "balanced" or None
        Balanced weights keep a rare stage from being swallowed by frequent ones.
    min_confidence : float
        `predict` answers `abstain_label` when the top probability is below this; 0 never
        abstains. Probabilities are unaffected.
    abstain_label : str
        The label used when abstaining (``"unassigned"`` for stages).
    max_iter, random_state : passed to LogisticRegression.
    """

    def __init__(self, C: float = 4.0, class_weight: str | None = "balanced", min_confidence: float = 0.0,
                 abstain_label: str = UNASSIGNED, max_iter: int = 2000, random_state: int = 0) -> None:
        self.C = C
        self.class_weight = class_weight
        self.min_confidence = min_confidence
        self.abstain_label = abstain_label
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "LinearHead":
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.classes_ = unique_labels(y)
        if len(self.classes_) < 2:
            raise ValueError(f"LinearHead needs samples of at least 2 classes; got 1 class ({self.classes_[0]!r})")
        lr = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter,
                                random_state=self.random_state)
        lr.fit(X, y)
        self.n_iter_ = lr.n_iter_
        self.coef_ = lr.coef_.astype(np.float64)
        self.intercept_ = lr.intercept_.astype(np.float64)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = _sigmoid(scores)
            return np.column_stack([1 - p1, p1])
        return _softmax(scores)

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
        return {"coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_arrays(cls, classes: list[str], arrays: dict[str, np.ndarray], **params: Any) -> "LinearHead":
        head = cls(**params)
        head.classes_ = np.asarray(classes, dtype=object)
        head.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        head.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64)
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
        return {"coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_arrays(cls, labels: list[str], arrays: dict[str, np.ndarray], **params: Any) -> "MultiLabelHead":
        head = cls(**params)
        head.labels_ = np.asarray(labels, dtype=object)
        head.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        head.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64)
        head.n_features_in_ = head.coef_.shape[1]
        return head


@dataclass
class Model:
    """The heads of one model version, and what they were trained on."""

    model_id: str
    embedder_id: str
    stage: LinearHead
    sentiment: LinearHead
    touchpoints: MultiLabelHead | None = None
    features: KernelMap | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _folded: tuple | None = field(default=None, init=False, repr=False, compare=False)
    # `train --fine-tune` on frozen embeddings: a finetune.ContrastiveAdapter, applied first
    adapter: Any = None
    # a model that carries its own fine-tuned encoder: the folder it loads from (set by persist.py)
    embedder_folder: str | None = None

    def adapt(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings through the fine-tuned adapter, when the model has one (else unchanged)."""
        if self.adapter is None or len(embeddings) == 0:
            return embeddings
        return self.adapter.transform(embeddings)

    def featurize(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings -> what the heads read: the adapter's output, then the kernel map's
        features, for the parts the model has."""
        embeddings = self.adapt(embeddings)
        if self.features is None or len(embeddings) == 0:
            return embeddings
        return self.features.transform(embeddings)

    def probabilities(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Stage, sentiment and touchpoint (None without that head) probabilities.

        With a kernel map the heads are linear in K·Nᵀ (K: kernel values against the m
        landmarks, N: the map's m x m normalisation), so their weights are folded once into W·N
        and prediction skips the m x m product, most of the cost of classifying. Probabilities
        agree with the heads on `featurize` to float32 rounding (about 1e-6).
        """
        if self.features is None:
            F = self.featurize(embeddings)
            heads = (self.stage, self.sentiment, self.touchpoints)
        else:
            if self._folded is None:
                self._folded = tuple(None if h is None else _fold(h, self.features.normalization_)
                                     for h in (self.stage, self.sentiment, self.touchpoints))
            # float64 once here, not in each head's input check (three copies of units x m)
            F = self.features.kernel(self.adapt(embeddings)).astype(np.float64)
            heads = self._folded
        return tuple(None if h is None else h.predict_proba(F) for h in heads)  # type: ignore[return-value]

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
    """A copy of `head` reading kernel values instead of normalised features: coef · N."""
    import copy

    folded = copy.copy(head)
    folded.coef_ = head.coef_ @ normalization.astype(np.float64)
    return folded


def classify_chunk(units: pd.DataFrame, embeddings: np.ndarray, model: Model, *, stage_ids: list[str],
                   stage_min_confidence: float, touchpoint_min_probability: float,
                   prototypes: "StagePrototypes | None" = None,
                   touchpoint_prototypes: "TouchpointPrototypes | None" = None) -> pd.DataFrame:
    """UNIT chunk + its embeddings -> the chunk with predictions and probabilities.

    With `prototypes` holding zero-shot stages, stage probabilities cover every stage of the map
    (see zeroshot.py); without, they are the trained head's.
    """
    out = units.copy()
    n = len(out)
    raw = embeddings
    p_stage, p_sent, p_touch = model.probabilities(embeddings) if n else (
        np.zeros((0, len(model.stage.classes_))), np.zeros((0, len(model.sentiment.classes_))), None)
    classes = list(model.stage.classes_)
    if prototypes is not None and prototypes.zero_shot:
        from feedback_nlp.zeroshot import combine, prototype_proba

        p_stage = combine(p_stage, classes, prototype_proba(raw, prototypes), prototypes) if n \
            else np.zeros((0, len(prototypes.stage_ids)))
        classes = list(prototypes.stage_ids)
    in_map = np.array([c in stage_ids for c in classes])
    top = p_stage.argmax(axis=1) if n else np.zeros(0, dtype=int)
    conf = p_stage.max(axis=1) if n else np.zeros(0)
    stage = np.asarray(classes, dtype=object)[top] if n else np.zeros(0, dtype=object)
    unassigned = (conf < stage_min_confidence) | ~in_map[top] if n else np.zeros(0, dtype=bool)
    stage = np.where(unassigned, UNASSIGNED, stage)
    out["stage"] = pd.array(stage, dtype="string")
    out["stage_confidence"] = conf
    for j, c in enumerate(classes):
        out[f"p_stage_{c}"] = p_stage[:, j]

    sclasses = list(model.sentiment.classes_)
    for s in SENTIMENTS:
        out[f"p_{s}"] = p_sent[:, sclasses.index(s)] if s in sclasses else 0.0
    out["sentiment"] = pd.array(np.asarray(sclasses, dtype=object)[p_sent.argmax(axis=1)] if n else [],
                                dtype="string")
    out["sentiment_score"] = out["p_positive"] - out["p_negative"]

    labels = np.zeros(0, dtype=object)
    hits = np.zeros((n, 0), dtype=bool)
    if model.touchpoints is not None and n and len(model.touchpoints.labels_):
        labels = np.asarray(model.touchpoints.labels_, dtype=object)
        hits = p_touch >= touchpoint_min_probability
    if touchpoint_prototypes is not None and n:
        from feedback_nlp.zeroshot import touchpoint_mentions

        labels = np.concatenate([labels, np.asarray(touchpoint_prototypes.ids, dtype=object)])
        hits = np.hstack([hits, touchpoint_mentions(raw, touchpoint_prototypes)])
    out["touchpoints"] = pd.array([";".join(labels[row]) for row in hits] if n else [], dtype="string")
    out["model_id"] = model.model_id
    return out
