"""Stages that no labelled data covers yet: classified from the map's own words.

A user's journey map may add stages the trained heads have never seen. Each map stage gets a
prototype: the mean embedding of its name, description and example phrases (any language: the
embedder is multilingual). A unit's prototype probabilities are a softmax of its cosine to every
prototype over a temperature. The prototypes decide between "one of the trained stages" and
each zero-shot stage; the trained head then splits the trained stages' share among them:

    p(trained stage c) = p_proto(all trained stages) x p_head(c)
    p(zero-shot stage z) = p_proto(z)

With no zero-shot stage this is exactly the trained head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from feedback_nlp.config import JourneyMap, Stage
from feedback_nlp.errors import InputError


@dataclass(frozen=True)
class StagePrototypes:
    stage_ids: tuple[str, ...]        # every stage of the map, in map order
    vectors: np.ndarray                # (n_stages, dim), unit norm
    zero_shot: tuple[str, ...]         # stages the trained head does not know
    temperature: float

    @property
    def trained(self) -> tuple[str, ...]:
        return tuple(s for s in self.stage_ids if s not in self.zero_shot)


def stage_texts(stage: Stage) -> list[str]:
    """The phrases a stage's prototype is built from."""
    texts = [stage.name]
    if stage.description:
        texts.append(stage.description)
    texts.extend(stage.examples)
    return texts


def build_prototypes(journey: JourneyMap, encode: Callable[[list[str]], np.ndarray],
                     trained_classes: list[str], temperature: float) -> StagePrototypes:
    zero = tuple(s.id for s in journey.stages if s.id not in set(trained_classes))
    for s in journey.stages:
        if s.id in zero and not (s.description or s.examples):
            raise InputError(
                "E302",
                f"{journey.path}: stage '{s.id}' has no trained class and no `description` or "
                "`examples` to classify it from; add a description and a few example phrases",
            )
    vectors = []
    for s in journey.stages:
        emb = np.asarray(encode(stage_texts(s)), dtype=np.float64)
        v = emb.mean(axis=0)
        vectors.append(v / (np.linalg.norm(v) or 1.0))
    return StagePrototypes(tuple(journey.stage_ids), np.vstack(vectors), zero, temperature)


def prototype_proba(embeddings: np.ndarray, protos: StagePrototypes) -> np.ndarray:
    """Softmax over the map's stages of cosine / temperature."""
    z = (np.asarray(embeddings, dtype=np.float64) @ protos.vectors.T) / protos.temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def combine(p_head: np.ndarray, head_classes: list[str], p_proto: np.ndarray,
            protos: StagePrototypes) -> np.ndarray:
    """Stage probabilities over the map's stages (columns in `protos.stage_ids` order)."""
    ids = list(protos.stage_ids)
    out = np.zeros((len(p_head), len(ids)))
    trained_cols = [ids.index(s) for s in protos.trained]
    trained_mass = p_proto[:, trained_cols].sum(axis=1) if trained_cols else np.zeros(len(p_head))
    head_idx = {c: j for j, c in enumerate(head_classes)}
    in_map = [head_idx[s] for s in protos.trained]
    head_in_map = p_head[:, in_map]
    norm = head_in_map.sum(axis=1, keepdims=True)
    head_in_map = head_in_map / np.where(norm == 0, 1, norm)
    for k, s in enumerate(protos.trained):
        out[:, ids.index(s)] = trained_mass * head_in_map[:, k]
    for s in protos.zero_shot:
        out[:, ids.index(s)] = p_proto[:, ids.index(s)]
    return out


@dataclass(frozen=True)
class TouchpointPrototypes:
    """Touchpoints of the map that the touchpoint head has no trained label for."""

    ids: tuple[str, ...]
    vectors: np.ndarray          # (n, dim), unit norm
    min_cosine: float


def build_touchpoint_prototypes(journey: JourneyMap, encode: Callable[[list[str]], np.ndarray],
                                trained_labels: list[str], min_cosine: float) -> TouchpointPrototypes | None:
    """Prototypes (name, description, examples) for untrained touchpoints; None if all are trained."""
    todo = [t for t in journey.touchpoints if t.id not in set(trained_labels)]
    if not todo:
        return None
    vectors = []
    for t in todo:
        emb = np.asarray(encode([t.name, *([t.description] if t.description else []), *t.examples]), dtype=np.float64)
        v = emb.mean(axis=0)
        vectors.append(v / (np.linalg.norm(v) or 1.0))
    return TouchpointPrototypes(tuple(t.id for t in todo), np.vstack(vectors), min_cosine)


def touchpoint_mentions(embeddings: np.ndarray, protos: TouchpointPrototypes) -> np.ndarray:
    """Boolean (n_units, n_touchpoints): cosine to the touchpoint's prototype >= min_cosine.

    Multi-label, so no softmax: a unit may mention none or several. The threshold is a setting
    measured on labelled data (docs/accuracy.md); cosines are not comparable across embedders.
    """
    return (np.asarray(embeddings, dtype=np.float64) @ protos.vectors.T) >= protos.min_cosine
