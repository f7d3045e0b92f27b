import json

import numpy as np
import pytest

from feedback_nlp.errors import FeedbackError, InputError
from feedback_nlp.persist import load_model, save_model


def test_persist_shipped_model_loads_and_records_its_embedder(model):
    assert model.embedder_id.startswith("use-m3.v1@")
    assert set(model.stage.classes_) >= {"awareness", "billing", "support", "renewal"}
    assert list(model.sentiment.classes_) == ["negative", "neutral", "positive"]
    assert model.meta["training_data"]["fingerprint"]


TEXTS = ["la fattura è sbagliata 😡", "Router arrived late", "¿cuándo llega el técnico?", "super Service, danke",
         "le match d'hier soir", "a greve dos comboios"]


def test_persist_save_load_gives_identical_predictions(tmp_path, model):
    X = np.random.default_rng(0).normal(size=(6, model.features.n_features_in_)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.calibration == model.calibration
    for a, b in zip(back.probabilities(X, TEXTS), model.probabilities(X, TEXTS)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.featurize(X), model.featurize(X))


def test_persist_the_default_model_is_a_recipe_model_that_says_where_its_data_came_from(model):
    assert model.feedback is not None and model.sentiment_other is not None and model.lexicon is not None
    assert model.features.normalization_ is None  # saved folded
    assert set(model.calibration) == {"stage", "sentiment", "sentiment_other", "feedback"}
    meta = model.meta
    assert meta["recipe"]["path"] == "configs/recipes/default.yaml" and meta["recipe"]["commercial_use"]
    sources = meta["sources"]
    assert set(sources) == {"seed", "social", "umsab", "banking77"}
    for s in sources.values():
        assert s["licence"] and s["origin"] and s["rows_used"] > 0 and s["weights"]
    assert sources["umsab"]["files"][0].startswith("benchmarks/umsab/")
    assert not any("val_" in f for s in sources.values() for f in s["files"])  # never a validation split


def test_persist_a_format_1_model_still_loads_and_predicts(tmp_path):
    from conftest import ROOT

    old = load_model(ROOT / "models" / "seed-v1")
    assert old.feedback is None and old.lexicon is None and old.calibration == {}
    X = np.random.default_rng(1).normal(size=(3, 512)).astype(np.float32)
    p = old.probabilities(X)
    assert p.feedback is None and np.allclose(p.stage.sum(axis=1), 1.0)


def test_persist_refuses_a_bad_calibration_block(tmp_path, model):
    import hashlib

    folder = save_model(model, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["calibration"]["stage"]["temperature"] = -1
    (folder / "config.json").write_text(json.dumps(cfg))
    man = json.loads((folder / "manifest.json").read_text())
    man["config.json"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(FeedbackError, match=r"\[E404\].*temperature of 'stage' must be above 0"):
        load_model(folder)


def test_persist_refuses_a_tampered_folder(tmp_path, model):
    folder = save_model(model, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_id"] = "evil"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FeedbackError, match=r"\[E402\].*checksum"):
        load_model(folder)


def test_persist_never_unpickles(tmp_path, model):
    folder = save_model(model, tmp_path / "m")
    with open(folder / "heads.npz", "wb") as fh:
        np.savez(fh, **{"stage.coef": np.array([object()], dtype=object)})
    # replacing the arrays breaks the manifest first; even with a matching manifest, np.load refuses pickles
    import hashlib
    man = json.loads((folder / "manifest.json").read_text())
    man["heads.npz"] = hashlib.sha256((folder / "heads.npz").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises((ValueError, OSError)):
        load_model(folder)


def test_persist_pointer_file_and_missing_folder(tmp_path, model):
    save_model(model, tmp_path / "v7")
    (tmp_path / "CURRENT").write_text("v7\n")
    assert load_model(tmp_path / "CURRENT").model_id == model.model_id
    with pytest.raises(InputError, match="E400"):
        load_model(tmp_path / "nothing")
