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


def test_persist_save_load_gives_identical_predictions(tmp_path, model):
    X = np.random.default_rng(0).normal(size=(5, model.features.n_features_in_)).astype(np.float32)
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m")
    np.testing.assert_array_equal(back.stage.predict_proba(back.featurize(X)), model.stage.predict_proba(model.featurize(X)))
    np.testing.assert_array_equal(back.sentiment.predict_proba(back.featurize(X)),
                                  model.sentiment.predict_proba(model.featurize(X)))
    F = model.featurize(X)
    assert model.features is not None
    np.testing.assert_array_equal(back.featurize(X), F)
    np.testing.assert_array_equal(back.touchpoints.predict_proba(F), model.touchpoints.predict_proba(F))


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
