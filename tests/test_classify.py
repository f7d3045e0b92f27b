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


@parametrize_with_checks([LinearHead(subclass_sep="::")])
def test_classify_subclass_head_follows_sklearn_conventions(estimator, check):
    check(estimator)


def test_classify_subclasses_are_learnt_apart_and_summed_into_their_class():
    """Two unlike regions of one class ('b::left', 'b::right' on either side of 'a'): a linear
    head on the class cannot cut them out, one on the subclasses can."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(loc=c, scale=0.3, size=(40, 2)) for c in ([0, 0], [-3, 0], [3, 0])])
    y = np.array(["a"] * 40 + ["b::left"] * 40 + ["b::right"] * 40, dtype=object)
    head = LinearHead(subclass_sep="::").fit(X, y)
    assert head.classes_.tolist() == ["a", "b"] and head.has_subclasses
    assert head.subclasses_.tolist() == ["a", "b::left", "b::right"]
    p = head.predict_proba(X)
    assert p.shape == (120, 2) and np.allclose(p.sum(axis=1), 1.0)
    assert (head.predict(X) == np.array(["a"] * 40 + ["b"] * 80)).mean() > 0.95
    flat = LinearHead().fit(X, np.where(y == "a", "a", "b"))
    assert (flat.predict(X) == np.array(["a"] * 40 + ["b"] * 80)).mean() < 0.9
    back = LinearHead.from_arrays(list(head.classes_), head.to_arrays(), subclasses=list(head.subclasses_),
                                  **head.get_params())
    np.testing.assert_array_equal(back.predict_proba(X), p)
    np.testing.assert_allclose(head.class_prior_, [1 / 3, 2 / 3])  # balanced over the subclasses


def test_classify_head_prior_is_the_weighted_class_mix_it_was_trained_under():
    X, y = _blobs(n=60)
    head = LinearHead(class_weight=None).fit(X, y, sample_weight=np.r_[np.full(20, 3.0), np.ones(40)])
    np.testing.assert_allclose(head.class_prior_, [0.6, 0.2, 0.2])
    np.testing.assert_allclose(LinearHead().fit(X, y).class_prior_, [1 / 3] * 3)  # balanced weights


def test_classify_lexicon_hashes_pieces_with_emoji_and_round_trips():
    from feedback_nlp.classify import LexicalMap, text_pieces

    assert "😡" in text_pieces("Pessimo servizio 😡")
    texts = ["Pessimo servizio 😡", "ottimo servizio", "la fattura è sbagliata"]
    lex = LexicalMap(n_features=2 ** 12).fit(texts)
    Z = lex.transform(texts)
    assert Z.shape == (3, 2 ** 12)
    np.testing.assert_allclose(np.sqrt(Z.multiply(Z).sum(axis=1)).A.ravel(), 1.0)
    back = LexicalMap.from_arrays(lex.to_arrays(), **lex.get_params())
    assert (back.transform(texts) != Z).nnz == 0
    assert (Z[0].multiply(Z[1])).sum() > 0  # "servizio" shared


def test_classify_folded_model_predicts_as_before_without_the_normalisation():
    from feedback_nlp.classify import fold_model

    X, y = _blobs(n=90)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    fm = KernelMap(n_components=40, random_state=0).fit(X)
    F = fm.transform(X)
    feedback = LinearHead().fit(F, np.where(y == "c", "no", "yes"))
    model = Model("m", "e", LinearHead(subclass_sep="::").fit(F, np.where(y == "a", "a::1", y)),
                  LinearHead().fit(F, np.where(y == "a", "negative", "positive")), features=fm, feedback=feedback)
    folded = fold_model(model)
    assert folded.features.normalization_ is None and model.features.normalization_ is not None
    for a, b in zip(folded.probabilities(X), model.probabilities(X)):
        assert (a is None) == (b is None)  # no touchpoint head
        if a is not None:
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert folded.probabilities(X).feedback.shape == (90,)


def test_classify_feedback_head_weighs_the_two_sentiment_heads():
    X, y = _blobs(n=90)
    fb = LinearHead().fit(X, np.where(y == "c", "no", "yes"))
    sentiments = np.array(["negative", "neutral", "positive"])
    own = LinearHead().fit(X, sentiments[np.searchsorted(["a", "b", "c"], y)])
    other = LinearHead().fit(X, sentiments[::-1][np.searchsorted(["a", "b", "c"], y)])
    model = Model("m", "e", LinearHead().fit(X, y), own, feedback=fb, sentiment_other=other)
    p = model.probabilities(X)
    g = p.feedback[:, None]
    assert g[y == "c"].mean() < 0.2 < 0.8 < g[y != "c"].mean()
    np.testing.assert_allclose(p.sentiment, g * own.predict_proba(X) + (1 - g) * other.predict_proba(X))
    np.testing.assert_allclose(p.sentiment.sum(axis=1), 1.0)
    # feedback units read the feedback head's sentiment, the others the other head's
    assert (p.sentiment.argmax(axis=1)[y == "a"] == 0).mean() > 0.9
    assert (p.sentiment.argmax(axis=1)[y == "c"] == 0).mean() > 0.9


def test_classify_calibration_scales_and_shifts_log_probabilities():
    from feedback_nlp.classify import calibrate

    p = np.array([[0.6, 0.3, 0.1]])
    sharper = calibrate(p, temperature=0.5)
    assert sharper[0, 0] > 0.6 and np.isclose(sharper.sum(), 1)
    np.testing.assert_allclose(calibrate(p, 1.0, [0.0, 0.0, 0.0]), p)
    assert calibrate(p, 1.0, [0.0, np.log(3.0), 0.0])[0, 1] > 0.5


def test_classify_a_unit_is_feedback_by_itself_by_its_item_or_by_its_source():
    from feedback_nlp.classify import is_feedback

    units = pd.DataFrame({"item_id": ["n", "n", "n", "t", "s"], "source": ["case_note"] * 3 + ["social", "survey"],
                          "p_feedback": [0.9, 0.8, 0.1, 0.2, 0.05]})
    assert is_feedback(units, 0.5).tolist() == [True, True, True, False, False]  # "n" means 0.6
    assert is_feedback(units, 0.5, ["survey"]).tolist() == [True, True, True, False, True]
    assert is_feedback(units, 0.0).all()
