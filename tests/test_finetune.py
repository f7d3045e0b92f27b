"""`train --fine-tune`: the contrastive adapter (frozen embeddings) and full fine-tuning of a
sentence-transformers encoder, on small data built here (no downloads)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, assert_run_and_score_use, cli, write
from feedback_nlp.config import load_train_settings
from feedback_nlp.errors import InputError
from feedback_nlp.finetune import ContrastiveAdapter, fine_tune_encoder, sample_pairs, save_encoder

STAGE_WORDS = {"billing": ["invoice", "charge", "refund", "bill"],
               "delivery": ["parcel", "courier", "package", "shipping"],
               "support": ["agent", "hotline", "ticket", "helpdesk"]}
SENT_WORDS = {"negative": ["terrible", "awful", "broken", "angry"],
              "positive": ["great", "lovely", "perfect", "happy"],
              "neutral": ["okay", "normal", "usual", "average"]}
FILLER = ["the", "my", "was", "really", "today", "again"]


def toy(n=60, d=16, seed=0):
    """Labels carried by one small direction, buried under large noise in the others."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d))
    X[:, 0] = np.where(y == 1, 0.6, -0.6) + 0.05 * rng.normal(size=n)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


def nn_accuracy(Z_train, y_train, Z_test, y_test):
    return float((y_train[(Z_test @ Z_train.T).argmax(axis=1)] == y_test).mean())


def test_finetune_pairs_follow_setfit_and_cycle_over_label_columns():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 0], [1, 1]])
    a, b, t = sample_pairs(codes, 4, np.random.default_rng(0))
    assert len(a) == 4 * len(codes) and (a != b).all()
    # round 0 pairs on column 0, round 1 on column 1: half agree on the column, half do not
    first, second = slice(0, 2 * len(codes)), slice(2 * len(codes), None)
    assert (codes[a[first], 0] == codes[b[first], 0]).mean() == 0.5
    assert (codes[a[second], 1] == codes[b[second], 1]).mean() == 0.5
    np.testing.assert_array_equal(t, (codes[a] == codes[b]).mean(axis=1))


def test_finetune_adapter_starts_as_the_identity():
    X, _ = toy()
    ad = ContrastiveAdapter(hidden=8).init(X)
    np.testing.assert_allclose(ad.transform(X), X, atol=1e-6)
    trained = ContrastiveAdapter(hidden=8, epochs=0).fit(X, np.zeros(len(X)))
    np.testing.assert_allclose(trained.transform(X), X, atol=1e-6)


def test_finetune_adapter_is_deterministic():
    X, y = toy()
    a = ContrastiveAdapter(hidden=8, epochs=3, lr=1e-2, random_state=3).fit(X, y).to_arrays()
    b = ContrastiveAdapter(hidden=8, epochs=3, lr=1e-2, random_state=3).fit(X, y).to_arrays()
    c = ContrastiveAdapter(hidden=8, epochs=3, lr=1e-2, random_state=4).fit(X, y).to_arrays()
    assert a.keys() == b.keys() == {"w1", "b1", "w2", "b2"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == np.float32
    assert not np.array_equal(a["w2"], c["w2"])


def test_finetune_adapter_separates_toy_data_better_than_the_identity():
    X, y = toy(n=200)
    tr, te = np.arange(150), np.arange(150, 200)
    ad = ContrastiveAdapter(hidden=32, epochs=30, lr=3e-3, pairs_per_unit=10, batch_size=128).fit(X[tr], y[tr])
    assert ad.loss_curve_[-1] < ad.loss_curve_[0]
    before = nn_accuracy(X[tr], y[tr], X[te], y[te])
    after = nn_accuracy(ad.transform(X[tr]), y[tr], ad.transform(X[te]), y[te])
    assert before < 0.8 and after >= before + 0.15, (before, after)
    np.testing.assert_allclose(np.linalg.norm(ad.transform(X[te]), axis=1), 1.0, atol=1e-9)


def test_finetune_adapter_round_trips_through_arrays_and_model_folder(tmp_path):
    from feedback_nlp.persist import load_model, save_model
    from feedback_nlp.train import fit_model

    X, y = toy(n=80)
    df = pd.DataFrame({"stage": np.where(y == 1, "billing", "support"),
                       "sentiment": np.where(np.arange(80) % 3 == 0, "positive", "negative"), "touchpoints": ""})
    ts = load_train_settings().replace(kernel_components=20)
    ts = ts.replace(fine_tune=ts.fine_tune.__class__(adapter_hidden=8, adapter_epochs=2, adapter_lr=1e-2))
    model = fit_model(X, df, model_id="m", embedder_id="fake.v1", ts=ts, adapter=True)
    assert model.adapter is not None
    back = ContrastiveAdapter.from_arrays(model.adapter.to_arrays(), **model.adapter.get_params())
    np.testing.assert_array_equal(back.transform(X), model.adapter.transform(X))
    save_model(model, tmp_path / "m")
    assert "heads.npz" in json.loads((tmp_path / "m" / "manifest.json").read_text())
    with np.load(tmp_path / "m" / "heads.npz", allow_pickle=False) as npz:
        assert {"adapter.w1", "adapter.b1", "adapter.w2", "adapter.b2"} <= set(npz.files)
    loaded = load_model(tmp_path / "m")
    assert loaded.adapter.get_params() == model.adapter.get_params()
    for a, b in zip(loaded.probabilities(X), model.probabilities(X)):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.featurize(X), model.featurize(X))
    # the adapter is applied: without it the heads read other features
    assert not np.allclose(model.featurize(X), model.features.transform(X))
    # prediction needs no torch: load and predict with torch made unimportable
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import numpy as np\nfrom feedback_nlp.persist import load_model\n"
            f"m = load_model({str(tmp_path / 'm')!r})\n"
            "X = np.random.default_rng(0).normal(size=(3, 16)); X /= np.linalg.norm(X, axis=1, keepdims=True)\n"
            "print(m.probabilities(X)[0].shape, 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "(3, 2) False" in res.stdout, res.stderr


def test_finetune_settings_are_validated_naming_the_file(tmp_path):
    assert load_train_settings().fine_tune.mode == "auto"
    ok = load_train_settings(write(tmp_path / "ok.yaml", "fine_tune:\n  adapter_epochs: 3\n  labels: [stage]\n"))
    assert ok.fine_tune.adapter_epochs == 3 and ok.fine_tune.labels == ("stage",)
    with pytest.raises(InputError, match=r"\[E032\] .*t\.yaml.*adapter_epochs must be an integer"):
        load_train_settings(write(tmp_path / "t.yaml", "fine_tune:\n  adapter_epochs: ten\n"))
    with pytest.raises(InputError, match=r"\[E003\] .*u\.yaml: unknown key\(s\) \['epochz'\]"):
        load_train_settings(write(tmp_path / "u.yaml", "fine_tune:\n  epochz: 3\n"))
    with pytest.raises(InputError, match=r"\[E034\] .*r\.yaml.*\['mode'\]"):
        load_train_settings(write(tmp_path / "r.yaml", "fine_tune:\n  mode: magic\n"))
    with pytest.raises(InputError, match=r"\[E032\] .*m\.yaml"):
        load_train_settings(write(tmp_path / "m.yaml", "fine_tune: 3\n"))


# --- full fine-tuning on a tiny sentence-transformers model ----------------------------------


def tiny_st_folder(path):
    """A StaticEmbedding sentence-transformers folder over the test's words (random vectors)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = sorted({w for ws in [*STAGE_WORDS.values(), *SENT_WORDS.values(), FILLER] for w in ws})
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    weights = np.random.default_rng(0).normal(size=(len(vocab), 24)).astype(np.float32)
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights)]).save(str(path))
    return path


def labelled_texts(n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        stage = list(STAGE_WORDS)[i % 3]
        sent = list(SENT_WORDS)[(i // 3) % 3]
        words = [*rng.choice(STAGE_WORDS[stage], 2), rng.choice(SENT_WORDS[sent]), *rng.choice(FILLER, 3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "stage": stage, "sentiment": sent})
    return pd.DataFrame(rows)


def test_finetune_encoder_changes_weights_saves_and_reloads_offline(tmp_path):
    from feedback_nlp.embed import Embedder, embedder_id
    from feedback_nlp.finetune import encode

    base = tiny_st_folder(tmp_path / "tiny")
    df = labelled_texts()
    y = df[["stage", "sentiment"]].to_numpy()
    before = Embedder(str(base)).encode(df["text"].tolist())
    tuned = fine_tune_encoder(str(base), df["text"].tolist(), y, epochs=2, lr=0.05, batch_size=8, random_state=0)
    assert tuned.fine_tune_losses[-1] < tuned.fine_tune_losses[0]
    after = encode(tuned, df["text"].tolist())
    assert not np.allclose(before, after, atol=1e-3)
    out = save_encoder(tuned, tmp_path / "model" / "embedder", base_id=embedder_id(str(base)))
    assert list(out.glob("*.safetensors")) or list(out.rglob("*.safetensors"))
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    reloaded = Embedder(str(out))
    np.testing.assert_allclose(reloaded.encode(df["text"].tolist()), after, atol=1e-5)
    assert reloaded.id != embedder_id(str(base)) and reloaded.id.startswith("st:embedder@")
    # same data and seed: the same weights and id; another seed: another id
    again = save_encoder(fine_tune_encoder(str(base), df["text"].tolist(), y, epochs=2, lr=0.05, batch_size=8,
                                           random_state=0), tmp_path / "again" / "embedder", base_id="b")
    other = save_encoder(fine_tune_encoder(str(base), df["text"].tolist(), y, epochs=2, lr=0.05, batch_size=8,
                                           random_state=1), tmp_path / "other" / "embedder", base_id="b")
    sha = [json.loads((p / "fine_tune.json").read_text())["weights_sha256"] for p in (out, again, other)]
    assert sha[0] == sha[1] != sha[2]
    assert embedder_id(str(other)) != embedder_id(str(again))


FT_CFG = ("kernel_components: 0\nC: 4.0\ntest_size: 0.3\nseed: 0\npromote_tolerance: 0.01\n"
          "fine_tune:\n  encoder_epochs: 2\n  encoder_lr: 0.05\n  encoder_batch_size: 8\n"
          "  adapter_epochs: 2\n  adapter_hidden: 16\n")




def test_finetune_cli_train_fine_tunes_the_encoder_into_a_loadable_model(tmp_path, models_dir):
    from feedback_nlp.persist import load_model

    base = tiny_st_folder(tmp_path / "tiny")
    labelled_texts(60).to_csv(tmp_path / "labels.csv", index=False)
    cfg = write(tmp_path / "train.yaml", FT_CFG)
    res = cli("train", tmp_path / "labels.csv", "--fine-tune", "--embedder", base, "--out", models_dir / "v1",
              "--train-config", cfg)
    assert res.exit_code == 0, res.output
    assert "fine-tuning (encoder)" in res.output and "promoted v1" in res.output
    folder = models_dir / "v1"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "embedder/modules.json" in manifest and any(k.endswith(".safetensors") for k in manifest)
    model = load_model(folder)
    assert model.embedder_folder == str((folder / "embedder").resolve())
    assert model.embedder_id.startswith("st:embedder@") and model.adapter is None
    card = json.loads((folder / "card.json").read_text())
    assert card["training"]["mode"] == "encoder" and card["training"]["seconds"]["total"] > 0
    assert card["training"]["fine_tune"]["encoder_lr"] == 0.05
    assert card["embedder"]["base_id"].startswith("st:tiny@")
    assert "Training mode: `--fine-tune`: encoder fine-tuned" in (folder / "card.md").read_text()
    # the model brings its own encoder: evaluate and run need no --embedder
    res = cli("evaluate", folder, tmp_path / "labels.csv")
    assert res.exit_code == 0, res.output
    assert "stage: n=60" in res.output
    dump = write(tmp_path / "dump.csv", "id,text\n1,my invoice charge was terrible again\n"
                 "2,the courier parcel was great today\n")
    assert_run_and_score_use(folder, model.embedder_id, dump, tmp_path)
    # a tampered carried encoder is refused
    weights = next((folder / "embedder").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(Exception, match="E402"):
        load_model(folder)


def test_finetune_cli_train_with_use_m3_trains_the_adapter(tmp_path, models_dir):
    from feedback_nlp.persist import load_model

    seed = pd.concat([pd.read_csv(ROOT / "corpora" / "seed" / f"{lang}.csv") for lang in ("it", "en")])
    seed.groupby("stage").sample(12, random_state=0).to_csv(tmp_path / "seed.csv", index=False)
    cfg = write(tmp_path / "train.yaml", FT_CFG + "  mode: adapter\n")
    res = cli("train", tmp_path / "seed.csv", "--fine-tune", "--out", models_dir / "v1", "--train-config", cfg)
    assert res.exit_code == 0, res.output
    assert "fine-tuning (adapter)" in res.output
    model = load_model(models_dir / "v1")
    assert model.adapter is not None and model.embedder_folder is None
    assert model.adapter.get_params()["hidden"] == 16
    assert json.loads((models_dir / "v1" / "card.json").read_text())["training"]["mode"] == "adapter"
    # a fast model trained next is compared with it on the same held-out rows
    res = cli("train", tmp_path / "seed.csv", "--out", models_dir / "v2", "--train-config", cfg)
    assert res.exit_code == 0, res.output
    assert "promoted v2" in res.output or "not promoted: worse than v1" in res.output


def test_finetune_train_without_refit_ships_the_encoder_the_held_out_figures_describe(tmp_path):
    import dataclasses

    from feedback_nlp.embed import embedder_id
    from feedback_nlp.train import train

    base = tiny_st_folder(tmp_path / "tiny")
    df = labelled_texts(45).assign(lang="en", touchpoints="")
    ts = load_train_settings().replace(kernel_components=0, test_size=0.3)
    ft = dataclasses.replace(ts.fine_tune, encoder_lr=0.05, encoder_batch_size=8, encoder_refit=False)
    model, metrics, held = train(df, None, model_id="m", embedder_id=embedder_id(str(base)), embedder_desc="tiny",
                                 test_size=0.3, ts=ts.replace(fine_tune=ft), fine_tune="encoder", encoder=str(base),
                                 encoder_out=tmp_path / "m" / "embedder")
    record = json.loads((tmp_path / "m" / "embedder" / "fine_tune.json").read_text())
    assert record["rows"] == len(df) - len(held) and record["base_embedder"].startswith("st:tiny@")
    assert model.meta["training"]["fine_tune"]["encoder_refit"] is False
    assert "shipped as it is" in model.meta["evaluation"]["method"]
    assert 0 <= metrics["sentiment"]["macro_f1"] <= 1
