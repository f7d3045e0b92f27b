"""The model registry: versions in their own folders under `models/`, a pointer to the current
one, and a history of promotions so a rollback is one command.

    models/
      CURRENT          the version `run` uses (one line: its folder name)
      HISTORY.jsonl    one line per promotion: time, version, previous version, reason
      seed-v1/         a version: config.json, heads.npz, manifest.json, card.md, card.json
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedback_nlp.errors import FeedbackError, InputError
from feedback_nlp.persist import CONFIG, POINTER, load_model

HISTORY = "HISTORY.jsonl"


@dataclass(frozen=True)
class Version:
    id: str
    path: Path
    created: str
    rows: int
    stage_f1: float | None
    sentiment_f1: float | None
    current: bool


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def current_id(root: Path) -> str | None:
    p = root / POINTER
    return p.read_text(encoding="utf-8").strip() if p.is_file() else None


def versions(root: Path) -> list[Version]:
    cur = current_id(root)
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / CONFIG).is_file()):
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        meta = cfg.get("meta", {})
        m = meta.get("evaluation", {}).get("metrics", {})
        out.append(Version(
            id=folder.name, path=folder, created=meta.get("created", ""),
            rows=int(meta.get("training_data", {}).get("rows", 0)),
            stage_f1=m.get("stage", {}).get("macro_f1"), sentiment_f1=m.get("sentiment", {}).get("macro_f1"),
            current=folder.name == cur,
        ))
    return sorted(out, key=lambda v: (v.created, v.id))


def _version_folder(root: Path, version: str) -> Path:
    folder = root / version
    if not (folder / CONFIG).is_file():
        known = [v.id for v in versions(root)] if root.is_dir() else []
        raise InputError("E410", f"no model version {version!r} in {root}; known: {known}")
    return folder


def history(root: Path) -> list[dict[str, Any]]:
    p = root / HISTORY
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def promote(root: Path, version: str, reason: str) -> None:
    """Point CURRENT at `version` and record it (a rollback walks this record back)."""
    _version_folder(root, version)
    load_model(root / version)  # refuse to point at a folder that does not verify
    prev = current_id(root)
    entry = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "version": version,
             "previous": prev, "reason": reason}
    with open(root / HISTORY, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    _atomic_write(root / POINTER, version + "\n")


def rollback(root: Path) -> str:
    """Point CURRENT back at the version that was current before the last promotion."""
    cur = current_id(root)
    for entry in reversed(history(root)):
        if entry["version"] == cur and entry.get("previous"):
            promote(root, entry["previous"], f"rollback from {cur}")
            return entry["previous"]
    raise FeedbackError("E411", f"{root}: no earlier version to roll back to from {cur!r}")


def diff_predictions(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Units whose stage or sentiment differs between two prediction frames of the same units."""
    keys = ["item_id", "unit_idx"]
    m = a[[*keys, "text", "stage", "sentiment"]].merge(b[[*keys, "stage", "sentiment"]], on=keys,
                                                       suffixes=("_a", "_b"))
    moved = (m["stage_a"] != m["stage_b"]) | (m["sentiment_a"] != m["sentiment_b"])
    return m[moved].reset_index(drop=True)


def moves_table(diff: pd.DataFrame) -> pd.DataFrame:
    """Counts of stage moves, from -> to."""
    moved = diff[diff["stage_a"] != diff["stage_b"]]
    if moved.empty:
        return pd.DataFrame(columns=["from", "to", "units"])
    t = moved.groupby(["stage_a", "stage_b"]).size().reset_index(name="units")
    return t.rename(columns={"stage_a": "from", "stage_b": "to"}).sort_values("units", ascending=False)


def compare(new: dict[str, Any], old: dict[str, Any], tolerance: float,
            heads: tuple[str, ...] = ("stage", "sentiment")) -> list[str]:
    """Reasons the new metrics are worse than the old beyond `tolerance` (empty: not worse);
    a head missing from either side is not compared."""
    worse = []
    for head in heads:
        if head not in new or head not in old:
            continue
        if new[head]["macro_f1"] < old[head]["macro_f1"] - tolerance:
            worse.append(f"{head} macro-F1 {new[head]['macro_f1']:.3f} < {old[head]['macro_f1']:.3f}")
        for lang, v in new[head]["per_language"].items():
            o = old[head]["per_language"].get(lang)
            if o and v["n"] >= 20 and v["macro_f1"] < o["macro_f1"] - tolerance:
                worse.append(f"{head} macro-F1 in {lang} {v['macro_f1']:.3f} < {o['macro_f1']:.3f}")
    return worse


def same_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def compare_sources(new: dict[str, Any], old: dict[str, Any], tolerance: float) -> list[str]:
    """`compare` per source of a recipe's held-out rows (recipe.evaluate_rows figures)."""
    return [f"{source}: {w}" for source, res in new.items() if source in old
            for w in compare(res, old[source], tolerance)]
