"""Retraining loop: promotion gate, rollback, label validation, determinism (small data, linear heads)."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, cli, write

TRAIN_CFG = "kernel_components: 0\nC: 4.0\ntest_size: 0.3\nseed: 0\nseed_corpus: {seed}\npromote_tolerance: 0.01\n"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A models folder of its own, and small labelled files cut from the seed corpus."""
    seed = pd.concat([pd.read_csv(ROOT / "corpora" / "seed" / f"{lang}.csv") for lang in ("it", "en", "de")])
    small = seed.groupby("stage").sample(30, random_state=0)
    (tmp_path / "seed").mkdir()
    small.to_csv(tmp_path / "seed" / "seed.csv", index=False)
    cfg = write(tmp_path / "train.yaml", TRAIN_CFG.format(seed=tmp_path / "seed"))
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("FEEDBACK_NLP_MODELS", str(models))
    return tmp_path, cfg, models, small


def test_registry_promotes_first_then_refuses_a_worse_version(registry):
    tmp, cfg, models, small = registry
    res = cli("train", tmp / "seed", "--out", models / "v1", "--train-config", cfg, "-q")
    assert res.exit_code == 0, res.output
    assert (models / "CURRENT").read_text().strip() == "v1"
    noisy = small.copy()
    noisy["stage"] = np.random.default_rng(0).permutation(noisy["stage"].to_numpy())
    noisy["text"] = noisy["text"] + " ."  # new texts, so they do not override the seed rows
    noisy.to_csv(tmp / "noisy.csv", index=False)
    res = cli("train", "--labels", tmp / "noisy.csv", "--out", models / "v2", "--train-config", cfg, "-q")
    assert res.exit_code == 0, res.output
    assert "not promoted: worse than v1" in res.output
    assert (models / "CURRENT").read_text().strip() == "v1"
    listing = cli("models", "list").output
    assert "* v1" in listing and "  v2" in listing


def test_registry_rollback_restores_the_exact_earlier_predictions(registry):
    tmp, cfg, models, small = registry
    dump = write(tmp / "dump.csv", "id,text\n1,la fattura è sbagliata\n2,the courier lost my parcel\n"
                 "3,der Techniker kam nicht\n")
    assert cli("train", tmp / "seed", "--out", models / "v1", "--train-config", cfg, "-q").exit_code == 0
    assert cli("run", dump, "--out", tmp / "o1", "--model", models / "CURRENT", "-q").exit_code == 0
    other = small.sample(frac=0.6, random_state=1)
    other.to_csv(tmp / "other.csv", index=False)
    assert cli("train", tmp / "other.csv", "--out", models / "v2", "--train-config", cfg, "--force", "-q").exit_code == 0
    assert (models / "CURRENT").read_text().strip() == "v2"
    assert cli("run", dump, "--out", tmp / "o2", "--model", models / "CURRENT", "-q").exit_code == 0
    res = cli("models", "rollback")
    assert res.exit_code == 0 and "current model: v1" in res.output
    assert cli("run", dump, "--out", tmp / "o3", "--model", models / "CURRENT", "-q").exit_code == 0
    p1 = pd.read_parquet(tmp / "o1" / "units.parquet").drop(columns=["model_id"])
    p2 = pd.read_parquet(tmp / "o2" / "units.parquet")
    p3 = pd.read_parquet(tmp / "o3" / "units.parquet").drop(columns=["model_id"])
    pd.testing.assert_frame_equal(p1, p3)
    assert not np.array_equal(p1["p_negative"], p2["p_negative"])
    history = [json.loads(line) for line in (models / "HISTORY.jsonl").read_text().splitlines()]
    assert [h["version"] for h in history] == ["v1", "v2", "v1"]


def test_registry_bad_and_conflicting_labels_are_reported_with_file_and_row(registry):
    tmp, cfg, models, small = registry
    rows = small.head(2).copy()
    bad = pd.DataFrame({
        "text": ["same text twice", "same text twice", "", "stage unknown here", "odd sentiment here"],
        "stage": ["billing", "support", "billing", "shipping", "billing"],
        "sentiment": ["negative", "negative", "negative", "negative", "angry"],
    })
    pd.concat([bad, rows[["text", "stage", "sentiment"]]]).to_csv(tmp / "new.csv", index=False)
    res = cli("train", "--labels", tmp / "new.csv", "--out", models / "v1", "--train-config", cfg)
    assert res.exit_code == 0, res.output
    issues = pd.read_csv(models / "v1" / "label_issues.csv")
    new = issues[issues["source_file"].str.endswith("new.csv")].set_index("row")
    assert new.loc[1, "problem"] == "conflicting_duplicate" and new.loc[2, "problem"] == "conflicting_duplicate"
    assert new.loc[3, "problem"] == "empty_text"
    assert new.loc[4, "problem"] == "unknown_stage" and new.loc[5, "problem"] == "unknown_sentiment"
    # the two seed rows repeated in new.csv override the seed copies: reported, not silent
    over = issues[issues["problem"] == "overridden"]
    assert len(over) == 2 and over["source_file"].str.endswith("seed.csv").all()
    assert "labelled rows not used" in res.output and "new.csv, row 4, field 'stage'" in res.output


def test_registry_retraining_is_deterministic(registry):
    tmp, cfg, models, _ = registry
    for v in ("a", "b"):
        assert cli("train", tmp / "seed", "--out", models / v, "--train-config", cfg, "--no-promote", "-q").exit_code == 0
    a, b = np.load(models / "a" / "heads.npz"), np.load(models / "b" / "heads.npz")
    assert a.files == b.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    ca = json.loads((models / "a" / "card.json").read_text())
    cb = json.loads((models / "b" / "card.json").read_text())
    assert ca["training_data"]["fingerprint"] == cb["training_data"]["fingerprint"]
    assert ca["evaluation"] == cb["evaluation"]
