"""Shared fixtures: settings from the shipped configs, the shipped model, a real embedder
(built once per session) and a deterministic fake embedder for fast pipeline tests."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest

from feedback_nlp.config import load_column_map, load_journey_map, load_settings, project_root

ROOT = project_root()


@pytest.fixture(scope="session")
def settings():
    return load_settings()


@pytest.fixture(scope="session")
def columns(settings):
    return load_column_map(settings.columns)


@pytest.fixture(scope="session")
def journey(settings):
    return load_journey_map(settings.journey_map)


@pytest.fixture(scope="session")
def _model(settings):
    from feedback_nlp.persist import load_model

    return load_model(settings.model)


@pytest.fixture
def model(_model):
    return copy.deepcopy(_model)


@pytest.fixture(scope="session")
def embedder():
    from feedback_nlp.embed import Embedder

    return Embedder("use-m3", threads=2)


class FakeEmbedder:
    """Deterministic hashed bag-of-words vectors: fast, and equal texts embed equally."""

    def __init__(self, dim: int = 512, id: str = "fake.v1") -> None:
        self.dim = dim
        self.id = id
        self.calls = 0

    def encode(self, texts, *, batch_size=64, progress=None):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in str(t).lower().split():
                h = int.from_bytes(hashlib.md5(w.encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0
        n = np.linalg.norm(out, axis=1, keepdims=True)
        if progress:
            progress(len(texts))
        return out / np.where(n == 0, 1, n)


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run tests marked slow (minutes each: rebuilding the shipped model)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes each; run with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty models folder that the CLI uses (FEEDBACK_NLP_MODELS)."""
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("FEEDBACK_NLP_MODELS", str(models))
    return models


def cli(*args):
    """The CLI in this process, arguments as strings, exceptions raised."""
    from click.testing import CliRunner

    from feedback_nlp.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_run_and_score_use(folder, embedder_id: str, dump, tmp_path) -> None:
    """`run` and `score` with the model in `folder` embed with `embedder_id` (its carried encoder)."""
    import json

    res = cli("run", dump, "--model", folder, "--out", tmp_path / "out", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "run.json").read_text())["embedder_id"] == embedder_id
    res = cli("score", dump, "--model", folder, "--store", tmp_path / "s.db", "--out", tmp_path / "sout", "-q")
    assert res.exit_code in (0, 3), res.output
    assert json.loads((tmp_path / "sout" / "run.json").read_text())["embedder_id"] == embedder_id
