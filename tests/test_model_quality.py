"""The shipped heads' quality, measured afresh on rows held out from training (never on training rows)."""

import numpy as np
import pytest

from conftest import ROOT
from feedback_nlp.train import evaluate_model, fit_model, read_labelled, train

SEED = ROOT / "corpora" / "seed"


@pytest.fixture(scope="module")
def seed_data(settings, columns, embedder):
    df = read_labelled([SEED], columns, settings)
    return df, embedder.encode(df["text"].tolist())


def test_model_quality_held_out_split_meets_the_floor(seed_data, embedder, journey):
    df, X = seed_data
    _, metrics, _ = train(df, X, model_id="t", embedder_id=embedder.id, embedder_desc="", test_size=0.2, seed=1,
                       tp_labels=[t.id for t in journey.touchpoints])
    assert metrics["stage"]["n"] == pytest.approx(0.2 * len(df), abs=2)
    assert metrics["stage"]["macro_f1"] >= 0.75
    assert metrics["sentiment"]["macro_f1"] >= 0.70
    for lang in ("it", "pt", "en", "es", "fr", "de"):
        assert metrics["stage"]["per_language"][lang]["macro_f1"] >= 0.65, lang


def test_model_quality_transfers_across_languages(seed_data, embedder):
    """Trained on English and German only, the heads still place Italian and Portuguese units."""
    df, X = seed_data
    src = df["lang"].isin(["en", "de"]).to_numpy()
    tgt = df["lang"].isin(["it", "pt"]).to_numpy()
    model = fit_model(X[src], df[src], model_id="t", embedder_id=embedder.id)
    m = evaluate_model(model, X[tgt], df[tgt])
    assert m["stage"]["accuracy"] >= 0.6
    assert m["sentiment"]["accuracy"] >= 0.55


def test_model_quality_training_is_deterministic(seed_data, embedder):
    df, X = seed_data
    a = fit_model(X[:600], df.iloc[:600], model_id="t", embedder_id=embedder.id, seed=3)
    b = fit_model(X[:600], df.iloc[:600], model_id="t", embedder_id=embedder.id, seed=3)
    np.testing.assert_array_equal(a.stage.coef_, b.stage.coef_)
    np.testing.assert_array_equal(a.sentiment.predict_proba(a.featurize(X[600:700])),
                                  b.sentiment.predict_proba(b.featurize(X[600:700])))
