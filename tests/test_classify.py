import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from feedback_nlp.classify import KernelMap, LinearHead, Model, MultiLabelHead, classify_chunk
from feedback_nlp.errors import FeedbackError


@parametrize_with_checks([LinearHead(), KernelMap(n_components=20)])
def test_classify_estimators_follow_sklearn_conventions(estimator, check):
    check(estimator)


def test_classify_kernel_map_matches_sklearn_nystroem_and_round_trips():
    from sklearn.kernel_approximation import Nystroem

    X, _ = _blobs()
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    fm = KernelMap(n_components=30, gamma=1.0, random_state=0).fit(X)
    ref = Nystroem(gamma=1.0, n_components=30, random_state=0).fit(X).transform(X)
    np.testing.assert_allclose(fm.transform(X), ref, atol=1e-4)
    back = KernelMap.from_arrays(fm.to_arrays(), **fm.get_params())
    np.testing.assert_array_equal(back.transform(X), fm.transform(X))


def _blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(3, 8) * 4
    y = np.repeat(["a", "b", "c"], n // 3)
    X = centers[np.repeat([0, 1, 2], n // 3)] + rng.normal(scale=0.5, size=(n, 8))
    return X, y


def test_classify_head_learns_and_abstains_below_threshold():
    X, y = _blobs()
    head = LinearHead(min_confidence=0.0).fit(X, y)
    assert (head.predict(X) == y).mean() > 0.95
    ambiguous = np.zeros((1, 8))  # equidistant from all centres
    assert head.predict_proba(ambiguous).max() < 0.6
    head.set_params(min_confidence=0.6)
    assert head.predict(ambiguous).tolist() == ["unassigned"]


def test_classify_head_round_trips_through_arrays():
    X, y = _blobs()
    head = LinearHead().fit(X, y)
    back = LinearHead.from_arrays(list(head.classes_), head.to_arrays(), **head.get_params())
    np.testing.assert_array_equal(back.predict_proba(X), head.predict_proba(X))


def test_classify_multilabel_head_skips_rare_labels():
    X, _ = _blobs()
    Y = np.zeros((60, 3), dtype=int)
    Y[:20, 0] = 1
    Y[20:40, 1] = 1
    Y[0, 2] = 1  # one positive: too rare to learn
    head = MultiLabelHead(min_positive=5).fit(X, Y, labels=["x", "y", "z"])
    assert head.labels_.tolist() == ["x", "y"]
    assert head.predict(X[:1]).tolist() == [[1, 0]]


def _model():
    X, y = _blobs()
    rng = np.random.default_rng(1)
    sent = rng.choice(["negative", "neutral", "positive"], size=len(y))
    return Model("m1", "fake.v1", LinearHead().fit(X, y), LinearHead().fit(X, sent)), X


def test_classify_chunk_adds_probabilities_and_unassigned():
    model, X = _model()
    units = pd.DataFrame({"item_id": ["i"] * 3, "unit_idx": [0, 1, 2]})
    emb = np.vstack([X[0], X[30], np.zeros(8)])
    out = classify_chunk(units, emb, model, stage_ids=["a", "b"], stage_min_confidence=0.6,
                         touchpoint_min_probability=0.5)
    assert out["stage"].tolist()[:1] == ["a"]
    assert out["stage"].tolist()[1] == "b"
    assert out["stage"].tolist()[2] == "unassigned"  # ambiguous
    p = out[["p_negative", "p_neutral", "p_positive"]].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(out["sentiment_score"], out["p_positive"] - out["p_negative"])
    # a class the map does not have ('c') is never forced into a stage
    out2 = classify_chunk(units.iloc[:1], X[45:46], model, stage_ids=["a", "b"], stage_min_confidence=0.0,
                          touchpoint_min_probability=0.5)
    assert out2["stage"].tolist() == ["unassigned"]


def test_classify_model_refuses_another_embedder_and_missing_stages():
    model, _ = _model()
    with pytest.raises(FeedbackError, match=r"\[E300\].*trained on embedder 'fake.v1'.*'use-m3"):
        model.check_embedder("use-m3.v1@0.2.1")
    with pytest.raises(FeedbackError, match=r"\[E301\].*\['zz'\]"):
        model.check_stages(["a", "zz"])


def test_classify_folded_heads_give_the_probabilities_of_the_heads_on_features():
    """Model.probabilities folds the heads through the kernel map's normalisation; the result
    must be the heads applied to `featurize` (to float32 rounding), for binary and multi-class
    heads and the touchpoint head."""
    X, y = _blobs(n=90)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    fm = KernelMap(n_components=40, random_state=0).fit(X)
    F = fm.transform(X)
    stage = LinearHead().fit(F, y)
    sentiment = LinearHead().fit(F, np.where(y == "a", "negative", "positive"))  # a binary head
    Y = np.column_stack([y == "a", y != "c"]).astype(int)
    touch = MultiLabelHead(min_positive=1).fit(F, Y, labels=["phone", "email"])
    model = Model(model_id="m", embedder_id="e", stage=stage, sentiment=sentiment, touchpoints=touch, features=fm)
    ps, pn, pt, pf = model.probabilities(X)
    assert pf is None  # no feedback head
    np.testing.assert_allclose(ps, stage.predict_proba(F), atol=1e-5)
    np.testing.assert_allclose(pn, sentiment.predict_proba(F), atol=1e-5)
    np.testing.assert_allclose(pt, touch.predict_proba(F), atol=1e-5)
    np.testing.assert_allclose(fm.kernel(X) @ fm.normalization_.T, F, atol=1e-5)
