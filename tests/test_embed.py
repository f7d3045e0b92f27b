import numpy as np
import pytest

from feedback_nlp.embed import Embedder, embedder_id
from feedback_nlp.errors import InputError


def test_embed_shipped_model_gives_unit_norm_512_vectors(embedder):
    X = embedder.encode(["la fattura è sbagliata", "the invoice is wrong", "il corriere è in ritardo"])
    assert X.shape == (3, 512) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_embed_shipped_model_is_cross_lingual(embedder):
    en = ["the invoice is wrong", "the courier delivered the parcel late", "the app keeps crashing"]
    it = ["la fattura è sbagliata", "il corriere ha consegnato il pacco in ritardo", "l'app continua a bloccarsi"]
    S = embedder.encode(it) @ embedder.encode(en).T
    assert (S.argmax(axis=1) == np.arange(3)).all(), S


def test_embed_duplicates_are_embedded_once_and_progress_counts_all(embedder):
    seen = []
    X = embedder.encode(["a b c", "x y z", "a b c"], batch_size=2, progress=seen.append)
    assert sum(seen) == 3
    np.testing.assert_array_equal(X[0], X[2])


def test_embed_id_names_the_package_version():
    assert embedder_id("use-m3").startswith("use-m3.v1@0.2.")


def test_embed_refuses_a_path_that_is_not_a_model_folder(tmp_path):
    with pytest.raises(InputError, match=r"\[E200\].*never downloaded"):
        embedder_id(str(tmp_path))
    with pytest.raises(InputError, match="E200"):
        embedder_id("sentence-transformers/all-MiniLM-L6-v2")


def test_embed_loads_any_sentence_transformers_folder_offline(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "bill": 1, "late": 2, "router": 3, "wrong": 4}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    weights = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights)]).save(str(tmp_path / "tiny"))

    emb = Embedder(str(tmp_path / "tiny"))
    assert emb.dim == 16
    assert emb.id.startswith("st:tiny@")
    X = emb.encode(["bill wrong", "router late"])
    assert X.shape == (2, 16)
    assert embedder_id(str(tmp_path / "tiny")) == emb.id


def test_embed_cache_skips_texts_seen_in_earlier_calls_first_in_first_out():
    from feedback_nlp.embed import Embedder

    emb = Embedder("use-m3", threads=2, cache_size=3)
    seen: list[str] = []
    inner = emb.model.encode

    def counting(batch, **kw):
        seen.extend(batch)
        return inner(batch, **kw)

    emb.model.encode = counting
    first = emb.encode(["a bill", "a refund", "a parcel"])
    assert seen == ["a bill", "a refund", "a parcel"]
    seen.clear()
    again = emb.encode(["a parcel", "an app", "a bill"])
    assert seen == ["an app"]  # the other two came from the cache
    np.testing.assert_array_equal(again[0], first[2])
    np.testing.assert_array_equal(again[2], first[0])
    # three kept, oldest out: "a bill" went when "an app" came in
    assert list(emb._cache) == ["a refund", "a parcel", "an app"]
    seen.clear()
    emb.encode(["a bill"])
    assert seen == ["a bill"]
    emb.clear_cache()
    assert emb._cache == {}
    off = Embedder("use-m3", threads=2, dedup=False, cache_size=3)
    assert off.cache_size == 0  # the cache builds on deduplication
