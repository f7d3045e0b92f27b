"""USE-m-v3 in torch: the numpy package's embeddings, from the same weights, and trainable."""

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from feedback_nlp import use_torch


@pytest.fixture(scope="module")
def torch_encoder():
    pytest.importorskip("torch")
    return use_torch.encoder()


def _units(settings, columns):
    """Every unit of the seed corpus, and of the example dump as a run cuts it."""
    from feedback_nlp.pipeline import prepare_chunk
    from feedback_nlp.read import discover, map_columns, read_raw_chunks
    from feedback_nlp.train import read_labelled

    texts = read_labelled([ROOT / "corpora" / "seed"], columns, settings)["text"].tolist()
    for path in discover([ROOT / "corpora" / "examples"]):
        for raw, _ in read_raw_chunks(path, settings.chunk_size):
            items = map_columns(raw, path, columns, max_text_chars=settings.max_text_chars).items
            units, _ = prepare_chunk(items, settings)
            texts += units["text"].astype(str).tolist()
    return texts + ["", "😂😂😂", "ok", "word " * 400]


def test_use_torch_reproduces_the_numpy_embeddings_on_every_unit(torch_encoder, embedder, settings, columns):
    texts = _units(settings, columns)
    assert len(texts) > 3800
    got = use_torch.encode(torch_encoder, texts)
    want = embedder.encode(texts)
    cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, texts[int(cos.argmin())]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_use_torch_batches_do_not_leak_between_texts(torch_encoder):
    texts = ["il pacco è in ritardo", "great service", "la fattura è sbagliata ma il tecnico è bravo"]
    alone = np.vstack([use_torch.encode(torch_encoder, [t]) for t in texts])
    together = use_torch.encode(torch_encoder, texts, token_budget=10_000)
    one_by_one = use_torch.encode(torch_encoder, texts, token_budget=1)
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(one_by_one, alone, atol=1e-6)


def test_use_torch_is_an_embedder_with_use_m3s_id_and_runs_the_shipped_model(model):
    from feedback_nlp.embed import Embedder

    torch_emb = Embedder("use-m3-torch", threads=2)
    assert torch_emb.id == Embedder("use-m3").id
    model.check_embedder(torch_emb.id)  # the shipped heads accept it
    X = torch_emb.encode(["Il tecnico non si è presentato", "Der Router kam eine Woche zu spät"])
    p = model.probabilities(X, ["Il tecnico non si è presentato", "Der Router kam eine Woche zu spät"])
    assert model.stage.classes_[p.stage.argmax(axis=1)].tolist() == ["onboarding", "delivery"]


def test_use_torch_trains_end_to_end_with_a_sparse_table():
    torch = pytest.importorskip("torch")
    weights = use_torch.read_weights()
    enc = use_torch.encoder(weights, train_table=True)
    flat, lengths = use_torch.tokenize(["bad service", "ottimo"])
    out = enc(torch.from_numpy(flat), torch.from_numpy(lengths))
    (out[0] @ out[1]).backward()
    assert enc.table.weight.grad.is_sparse
    assert set(enc.table.weight.grad.coalesce().indices()[0].tolist()) == set(flat.tolist())
    assert enc.d3.grad is not None and float(enc.d3.grad.abs().sum()) > 0
    assert enc.w1["5"].grad is not None
    frozen = use_torch.encoder(weights)
    with torch.no_grad():
        np.testing.assert_allclose(frozen(torch.from_numpy(flat), torch.from_numpy(lengths)).numpy(),
                                   out.detach().numpy(), atol=1e-5)  # the float table is the 6-bit one
    assert not any(p.is_sparse for p in frozen.parameters())
    assert "table_q" in dict(frozen.named_buffers())


def test_use_torch_tokens_carry_bos_and_eos_and_an_empty_text_is_one_unknown():
    flat, lengths = use_torch.tokenize(["", "ciao"])
    assert lengths[0] == 3 and flat[:3].tolist() == [1, 0, 2]
    assert flat[3] == 1 and flat[-1] == 2 and lengths.sum() == len(flat)
    assert pd.Series(flat).between(0, 128009).all()
