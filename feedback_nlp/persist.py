"""Model folders without pickle: JSON for parameters and labels, .npz arrays, a checksum manifest.

A model folder is safe to receive from someone else: loading parses JSON and reads numeric
arrays with `allow_pickle=False`, and refuses a folder whose files do not match the manifest.
A model fine-tuned with `train --fine-tune` may carry a contrastive adapter (more arrays in
heads.npz) or its own encoder in `embedder/` (a sentence-transformers folder, safetensors),
whose files the manifest lists too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from feedback_nlp.classify import KernelMap, LexicalMap, LinearHead, Model, MultiLabelHead
from feedback_nlp.config import resolve
from feedback_nlp.errors import FeedbackError, InputError

# 2: feedback and sentiment_other heads, head subclasses and training priors, a lexicon, kernel
# maps saved folded (no normalisation). Version-1 folders (seed-v1, models trained before) load.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
CONFIG = "config.json"
ARRAYS = "heads.npz"
MANIFEST = "manifest.json"
POINTER = "CURRENT"
EMBEDDER_DIR = "embedder"  # a fine-tuned encoder carried by the model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _head_params(head: Any) -> dict[str, Any]:
    return {k: v for k, v in head.get_params().items()}


def save_model(model: Model, folder: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write `model` to `folder` (created; must not hold another model)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    heads: dict[str, Any] = {}
    for name in Model.HEADS:
        head = getattr(model, name)
        if head is None:
            continue
        for key, arr in head.to_arrays().items():
            arrays[f"{name}.{key}"] = arr
        labels = head.classes_ if name != "touchpoints" else head.labels_
        heads[name] = {
            "type": type(head).__name__,
            "params": _head_params(head),
            "labels": [str(x) for x in labels],
        }
        if getattr(head, "has_subclasses", False):
            heads[name]["subclasses"] = [str(x) for x in head.subclasses_]
    features = None
    if model.features is not None:
        for key, arr in model.features.to_arrays().items():
            arrays[f"features.{key}"] = arr
        features = {"type": "KernelMap", "params": _head_params(model.features)}
    lexicon = None
    if model.lexicon is not None:
        for key, arr in model.lexicon.to_arrays().items():
            arrays[f"lexicon.{key}"] = arr
        lexicon = {"type": "LexicalMap", "params": _head_params(model.lexicon)}
    adapter = None
    if model.adapter is not None:
        for key, arr in model.adapter.to_arrays().items():
            arrays[f"adapter.{key}"] = arr
        adapter = {"type": type(model.adapter).__name__, "params": _head_params(model.adapter)}
    carried = None
    if model.embedder_folder:
        src, dst = Path(model.embedder_folder).resolve(), (folder / EMBEDDER_DIR).resolve()
        if src != dst:
            if dst.exists():
                raise FeedbackError("E405", f"{dst} exists; a model folder holds one embedder")
            shutil.copytree(src, dst)
        carried = EMBEDDER_DIR
    np.savez(folder / ARRAYS, **arrays)
    config = {
        "format_version": FORMAT_VERSION,
        "model_id": model.model_id,
        "embedder_id": model.embedder_id,
        "heads": heads,
        "features": features,
        "meta": model.meta,
    }
    if adapter is not None:
        config["adapter"] = adapter
    if lexicon is not None:
        config["lexicon"] = lexicon
    if model.stage_lexical is not None:
        config["stage_lexical_weight"] = model.stage_lexical_weight
    if model.calibration:
        config["calibration"] = model.calibration
    if carried is not None:
        config["embedder_folder"] = carried
    (folder / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    if carried is not None:
        files += sorted(p.relative_to(folder).as_posix() for p in (folder / carried).rglob("*") if p.is_file())
    manifest = {name: _sha256(folder / name) for name in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder, or a pointer file (models/CURRENT) naming one beside it."""
    p = resolve(path)
    if p.is_file():
        target = p.read_text(encoding="utf-8").strip()
        p = p.parent / target
    if not (p / CONFIG).is_file():
        raise InputError("E400", f"{p}: not a model folder (no {CONFIG}); train one with `feedback-nlp train`")
    return p


def load_model(path: str | Path) -> Model:
    folder = resolve_model_folder(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FeedbackError("E401", f"{folder}: no {MANIFEST}; refusing a model folder that cannot be verified")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name in (CONFIG, ARRAYS):
        if name not in manifest:
            raise FeedbackError("E402", f"{folder}: {name} is not listed in {MANIFEST}")
    for name, digest in manifest.items():
        f = folder / name
        if not f.is_file() or _sha256(f) != digest:
            raise FeedbackError("E402", f"{folder}/{name}: checksum does not match {MANIFEST}; the model "
                                "folder was changed or is incomplete")
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    if config.get("format_version") not in READABLE_FORMATS:
        raise FeedbackError("E403", f"{folder}: model format {config.get('format_version')} is not "
                            f"supported by this version (reads {list(READABLE_FORMATS)})")
    with np.load(folder / ARRAYS, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    heads: dict[str, Any] = {}
    for name, spec in config["heads"].items():
        cls = {"LinearHead": LinearHead, "MultiLabelHead": MultiLabelHead}.get(spec["type"])
        if cls is None:
            raise FeedbackError("E404", f"{folder}: unknown head type {spec['type']!r}")
        own = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}
        extra = {"subclasses": spec["subclasses"]} if spec.get("subclasses") else {}
        heads[name] = cls.from_arrays(spec["labels"], own, **extra, **spec["params"])
    from feedback_nlp.finetune import ContrastiveAdapter

    features = _optional_part(folder, config, arrays, "features", KernelMap, "feature map")
    adapter = _optional_part(folder, config, arrays, "adapter", ContrastiveAdapter, "adapter")
    lexicon = _optional_part(folder, config, arrays, "lexicon", LexicalMap, "lexicon")
    embedder_folder = None
    if config.get("embedder_folder"):
        carried = (folder / config["embedder_folder"]).resolve()
        listed = {name for name in manifest if name.startswith(config["embedder_folder"] + "/")}
        if carried.parent != folder.resolve() or f"{config['embedder_folder']}/modules.json" not in listed:
            raise FeedbackError("E402", f"{folder}: its embedder folder {config['embedder_folder']!r} is not "
                                f"inside the model folder or not listed in {MANIFEST}")
        embedder_folder = str(carried)
    return Model(
        model_id=config["model_id"],
        embedder_id=config["embedder_id"],
        stage=heads["stage"],
        sentiment=heads["sentiment"],
        touchpoints=heads.get("touchpoints"),
        features=features,
        meta=config.get("meta", {}),
        adapter=adapter,
        embedder_folder=embedder_folder,
        feedback=heads.get("feedback"),
        sentiment_other=heads.get("sentiment_other"),
        lexicon=lexicon,
        stage_lexical=heads.get("stage_lexical"),
        stage_lexical_weight=float(config.get("stage_lexical_weight", 0.5)),
        calibration=_calibration(folder, config.get("calibration") or {}),
    )


def _optional_part(folder: Path, config: dict[str, Any], arrays: dict[str, np.ndarray], key: str, cls: type,
                   what: str) -> Any:
    """The model part saved under `key` (kernel map, adapter) rebuilt from its arrays, or None."""
    spec = config.get(key)
    if not spec:
        return None
    if spec.get("type") != cls.__name__:
        raise FeedbackError("E404", f"{folder}: unknown {what} type {spec.get('type')!r}")
    own = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{key}.")}
    return cls.from_arrays(own, **spec["params"])


def embedder_spec(model: Model, configured: str, explicit: str | None = None) -> str:
    """The embedder to run `model` with: the fine-tuned encoder it carries, unless --embedder
    names another (which the embedder check then refuses if it differs); else the configured one."""
    if model.embedder_folder and not explicit:
        return model.embedder_folder
    return configured


def _calibration(folder: Path, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A model's calibration block, checked: per head a temperature above 0 and optional biases."""
    out = {}
    for head, spec in raw.items():
        if head not in Model.HEADS or not isinstance(spec, dict) or set(spec) - {"temperature", "bias"}:
            raise FeedbackError("E404", f"{folder}: bad calibration entry for {head!r}: {spec!r}")
        t = float(spec.get("temperature", 1.0))
        if not t > 0:
            raise FeedbackError("E404", f"{folder}: calibration temperature of {head!r} must be above 0, got {t}")
        out[head] = {"temperature": t, **({"bias": [float(b) for b in spec["bias"]]} if spec.get("bias") else {})}
    return out
