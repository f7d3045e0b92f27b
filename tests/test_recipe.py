"""Training recipes: reading, weighting, building a model the same way twice, refusing politely."""

import filecmp
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import FakeEmbedder, write
from feedback_nlp import recipe as rcp
from feedback_nlp.cli import main
from feedback_nlp.errors import InputError
from feedback_nlp.persist import load_model, save_model

NEG = ["terribile", "pessimo", "vergogna", "schifo", "lento"]
POS = ["ottimo", "perfetto", "grazie", "veloce", "bravi"]
NEU = ["domanda", "quando", "come", "orario", "informazione"]
STAGES = {"billing": ["fattura", "addebito", "rimborso"], "usage": ["internet", "rete", "app"],
          "support": ["operatore", "attesa", "chiamata"]}


def _benchmarks(root, n=90, seed=0):
    """Tiny sets in the published layouts: UMSAB (tweets, sentiment) and Banking77 (intents)."""
    rng = np.random.default_rng(seed)
    words = {"negative": NEG, "neutral": NEU, "positive": POS}
    texts, labels = [], []
    for i in range(n):
        label = ["negative", "neutral", "positive"][i % 3]
        texts.append(" ".join(rng.choice(words[label], 3)) + f" partita politica {i}")
        labels.append(str(i % 3))
    write(root / "umsab" / "italian" / "train_text.txt", "\n".join(texts))
    write(root / "umsab" / "italian" / "train_labels.txt", "\n".join(labels))
    rows = ["text,category"]
    for i in range(n):
        intent = ["charged_twice", "card_broken", "refund_missing"][i % 3]
        rows.append(f"{intent.replace('_', ' ')} please help {i},{intent}")
    write(root / "banking77" / "train.csv", "\n".join(rows) + "\n")


def _seed(path, n=60, seed=1):
    rng = np.random.default_rng(seed)
    rows = ["text,stage,sentiment"]
    for i in range(n):
        stage = list(STAGES)[i % 3]
        sent = ["negative", "neutral", "positive"][(i // 3) % 3]
        words = {"negative": NEG, "neutral": NEU, "positive": POS}[sent]
        rows.append(f"{' '.join(rng.choice(STAGES[stage], 2))} {' '.join(rng.choice(words, 2))} cliente {i},{stage},{sent}")
    return write(path, "\n".join(rows) + "\n")


RECIPE = """
id: tiny-v1
description: a tiny recipe for tests
embedder: use-m3
seed: 0
test_size: 0.25
kernel: {{gamma: 1.0, landmarks: {{seed: 20, umsab: 20, banking77: 10}}}}
lexicon: {{n_features: 512, weight: 1.0}}
heads:
  stage: {{C: 4, sources: {{seed: 1.0, banking77: 1.0}}, subclasses: label, lexical: expert}}
  feedback: {{C: 4, sources: {{seed: 1.0, banking77: 1.0, umsab: 1.0}}, subclasses: none}}
  sentiment: {{C: 4, sources: {{seed: 1.0}}, rows: feedback, subclasses: none, lexical: joint}}
  sentiment_other: {{C: 1, sources: {{umsab: 1.0}}, rows: other, subclasses: none, lexical: joint}}
sources:
  seed: {{reader: labelled, paths: [{seed}], licence: test, origin: test}}
  umsab: {{reader: umsab, split: train, languages: [italian], feedback: "no", licence: Apache-2.0, origin: UMSAB}}
  banking77: {{reader: banking77, mapping: {mapping}, licence: CC BY 4.0, origin: Banking77}}
"""


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "benchmarks"
    _benchmarks(root)
    mapping = write(tmp_path / "m.yaml", "stages:\n  billing: [charged_twice, refund_missing]\n  usage: [card_broken]\n")
    seed = _seed(tmp_path / "seed.csv")
    recipe = write(tmp_path / "r.yaml", RECIPE.format(seed=seed, mapping=mapping))
    return rcp.load_recipe(recipe), root


def _build(recipe, root, settings, columns, journey):
    emb = FakeEmbedder(dim=64)
    model, metrics, _ = rcp.build(recipe, root, settings=settings, columns=columns, stage_ids=journey.stage_ids,
                                  tp_labels=[], encode=emb.encode, embedder_id=emb.id, embedder_desc="fake")
    return model, metrics


def test_recipe_builds_the_same_bytes_twice_and_the_model_round_trips(tiny, settings, columns, journey, tmp_path,
                                                                       monkeypatch):
    recipe, root = tiny
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    folders = []
    for k in range(2):
        model, metrics = _build(recipe, root, settings, columns, journey)
        md, js = rcp.recipe_card(model)
        folders.append(save_model(model, tmp_path / f"m{k}", {"card.md": md, "card.json": js}))
    names = sorted(p.name for p in folders[0].iterdir())
    assert names == ["card.json", "card.md", "config.json", "heads.npz", "manifest.json"]
    _, mismatch, errors = filecmp.cmpfiles(folders[0], folders[1], names, shallow=False)
    assert mismatch == [] and errors == []
    loaded = load_model(folders[0])
    assert loaded.feedback is not None and loaded.sentiment_other is not None and loaded.stage_lexical is not None
    assert loaded.stage.has_subclasses and "usage::card_broken" in list(loaded.stage.subclasses_)
    assert loaded.features.normalization_ is None  # saved folded
    X = FakeEmbedder(dim=64).encode(["fattura terribile", "internet ottimo", "partita politica"])
    texts = ["fattura terribile", "internet ottimo", "partita politica"]
    for a, b in zip(loaded.probabilities(X, texts), model.probabilities(X, texts)):
        np.testing.assert_array_equal(a, b)
    card = json.loads((folders[0] / "card.json").read_text())
    assert card["created"] == "2026-01-01T00:00:00+00:00"
    assert card["sources"]["umsab"]["licence"] == "Apache-2.0"
    assert card["sources"]["banking77"]["files"] == ["benchmarks/banking77/train.csv"]
    assert card["sources"]["seed"]["weights"] == {"stage": 1.0, "feedback": 1.0, "sentiment": 1.0}
    assert set(metrics) == {"seed", "umsab", "banking77"}
    assert "| banking77 | Banking77 | CC BY 4.0 |" in (folders[0] / "card.md").read_text()


def test_recipe_heads_learn_what_their_sources_teach(tiny, settings, columns, journey):
    recipe, root = tiny
    model, metrics = _build(recipe, root, settings, columns, journey)
    assert metrics["seed"]["stage"]["accuracy"] > 0.6
    assert metrics["banking77"]["stage"]["accuracy"] > 0.9
    assert metrics["umsab"]["feedback"]["share_predicted"] < 0.2  # tweets are not feedback
    assert metrics["seed"]["feedback"]["share_predicted"] > 0.8
    assert set(model.calibration) <= {"stage", "sentiment", "sentiment_other", "feedback"}
    assert np.isclose(model.sentiment.class_prior_, 1 / 3).all()  # balanced within its source


def test_recipe_source_weights_balance_labels_within_a_source_and_sources_by_share():
    source = np.array(["a"] * 6 + ["b"] * 2)
    y = np.array(["x", "x", "x", "x", "y", "y", "x", "y"])
    w = rcp.source_weights(source, y, {"a": 1.0, "b": 3.0})
    assert w.mean() == pytest.approx(1.0)
    a, b = w[:6].sum(), w[6:].sum()
    assert b / a == pytest.approx(3.0)
    assert w[:4].sum() == pytest.approx(w[4:6].sum())  # x and y weigh the same within a


def test_recipe_head_labels_keep_or_drop_subclasses_and_filter_rows():
    rows = pd.DataFrame({"source": ["s", "s", "b", "u"], "stage": ["usage", "billing", "usage::card", ""],
                         "sentiment": ["negative", "positive", "", "neutral"], "feedback": ["yes", "yes", "yes", "no"],
                         "text": ["a", "b", "c", "d"]})
    _, y, _ = rcp.head_labels(rows, "stage", rcp.HeadSpec(sources={"s": 1, "b": 1}))
    assert list(y) == ["usage", "billing", "usage::card"]
    _, y, _ = rcp.head_labels(rows, "stage", rcp.HeadSpec(sources={"s": 1, "b": 1}, subclasses="none"))
    assert list(y) == ["usage", "billing", "usage"]
    mask, y, _ = rcp.head_labels(rows, "sentiment_other", rcp.HeadSpec(sources={"s": 1, "u": 1}, rows="other"))
    assert mask.tolist() == [False, False, False, True] and list(y) == ["neutral"]
    _, y, _ = rcp.head_labels(rows, "feedback", rcp.HeadSpec(sources={"s": 1, "u": 1}, subclasses="none"))
    assert list(y) == ["yes", "yes", "no"]


@pytest.mark.parametrize("change, message", [
    ("surprise: 1\n", r"\[E003\].*unknown key\(s\) \['surprise'\]"),
    ("sources:\n  x: {reader: twitter, licence: a, origin: b}\nheads: {}\n", r"\[E540\].*reader 'twitter'"),
    ("sources:\n  x: {reader: umsab, languages: [italian]}\n", r"\[E540\].*needs `licence:` and `origin:`"),
])
def test_recipe_refuses_bad_recipes_naming_the_problem(tmp_path, change, message):
    base = "id: r\nkernel: {landmarks: {x: 1}}\n"
    with pytest.raises(InputError, match=message):
        rcp.load_recipe(write(tmp_path / "r.yaml", base + change))


def test_recipe_refuses_heads_without_their_prerequisites(tiny, tmp_path):
    recipe, _ = tiny
    text = open(recipe.path).read()
    bad = text.replace("  feedback: {C: 4, sources: {seed: 1.0, banking77: 1.0, umsab: 1.0}, subclasses: none}\n", "")
    with pytest.raises(InputError, match=r"\[E541\].*`sentiment_other` is weighted by the feedback head"):
        rcp.load_recipe(write(tmp_path / "b.yaml", bad))
    bad = text.replace("sources: {seed: 1.0, banking77: 1.0}, subclasses", "sources: {seed: 1.0, nope: 1.0}, subclasses")
    with pytest.raises(InputError, match=r"\[E541\].*unknown: \['nope'\]"):
        rcp.load_recipe(write(tmp_path / "c.yaml", bad))


def test_recipe_shipped_recipes_load_and_the_noncommercial_one_says_so():
    default = rcp.load_recipe("configs/recipes/default.yaml")
    nc = rcp.load_recipe("configs/recipes/noncommercial.yaml")
    assert default.commercial_use and not nc.commercial_use
    assert "germeval" not in default.sources and nc.sources["germeval"].licence.startswith("CC BY-NC")
    assert default.sources["umsab"].options["split"] == "train"


def test_recipe_cli_exits_3_with_a_clear_message_when_the_benchmarks_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDBACK_NLP_MODELS", str(tmp_path / "models"))
    missing = tmp_path / "nowhere"
    r = CliRunner().invoke(main, ["build-model", "configs/recipes/default.yaml", "--benchmarks", str(missing), "-q"])
    assert r.exit_code == 3, r.output
    assert f"[E530] the benchmarks folder {missing} does not exist" in r.output
    assert "--benchmarks DIR or set FEEDBACK_NLP_BENCHMARKS" in r.output
    assert not (tmp_path / "models").exists()
    # the folder is there but a set in it is not: exit 3, naming the set
    (tmp_path / "partial").mkdir()
    r = CliRunner().invoke(main, ["build-model", "--benchmarks", str(tmp_path / "partial"), "-q",
                                  "--out", str(tmp_path / "m")])
    assert r.exit_code == 3, r.output
    assert "UMSAB language folder 'arabic' not found" in r.output
    assert not (tmp_path / "m").exists()


def test_recipe_train_labels_on_a_recipe_model_rebuilds_the_recipe_with_them(tiny, tmp_path, monkeypatch):
    recipe, root = tiny
    monkeypatch.setenv("FEEDBACK_NLP_MODELS", str(tmp_path / "models"))
    runner = CliRunner()
    r = runner.invoke(main, ["build-model", recipe.path, "--benchmarks", str(root), "--promote", "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "models" / "CURRENT").read_text().strip() == "tiny-v1"
    labels = _seed(tmp_path / "new_labels.csv", n=30, seed=9)
    r = runner.invoke(main, ["train", "--labels", str(labels), "--benchmarks", str(tmp_path / "nowhere"), "-q"])
    assert r.exit_code == 3 and "[E530]" in r.output, r.output
    r = runner.invoke(main, ["train", "--labels", str(labels), "--benchmarks", str(root), "--no-promote", "-q"])
    assert r.exit_code == 0, r.output
    new = load_model(tmp_path / "models" / "v2")
    assert set(new.meta["sources"]) == {"seed", "umsab", "banking77", "labels"}
    assert new.meta["sources"]["labels"]["weights"] == new.meta["sources"]["seed"]["weights"]
    assert new.meta["sources"]["labels"]["rows_used"] == 30
    assert new.feedback is not None  # still the recipe's heads, not a seed-only model
