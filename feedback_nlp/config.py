"""Configuration files under `configs/` -> frozen, validated dataclasses.

Files are read once, at the edge (the CLI); steps receive the dataclasses. Unknown keys are
errors, so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from feedback_nlp.errors import InputError

FIELDS = (
    "text",
    "id",
    "created_at",
    "channel",
    "source",
    "language",
    "segment",
    "nps",
    "csat",
    "resolution_hours",
    "fcr",
)
SOURCES = ("survey", "case_note", "blog", "social")
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def project_root() -> Path:
    """The folder holding configs/, models/ and corpora/ (FEEDBACK_NLP_HOME overrides)."""
    env = os.environ.get("FEEDBACK_NLP_HOME")
    return Path(env) if env else Path(__file__).resolve().parent.parent


def resolve(path: str | Path) -> Path:
    """A config path: absolute, relative to the working folder if it exists, else to the root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return project_root() / p


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError as e:
        raise InputError("E001", f"Config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise InputError("E002", f"{path} is not valid YAML: {e}") from e


def _check_keys(path: object, what: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(
            "E003",
            f"{path}: unknown key(s) {unknown} in {what}; allowed: {sorted(allowed)}",
        )


# --- journey map --------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    id: str
    name: str


@dataclass(frozen=True)
class Touchpoint:
    id: str
    name: str
    description: str = ""
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    id: str
    name: str
    description: str
    touchpoints: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    kpis: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class JourneyMap:
    """A journey map: stages in order, with their touchpoints and channels."""

    id: str
    name: str
    stages: tuple[Stage, ...]
    channels: tuple[Channel, ...] = ()
    touchpoints: tuple[Touchpoint, ...] = ()
    version: int = 1
    description: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        where = self.path or self.id
        if not self.stages:
            raise InputError("E010", f"{where}: a journey map needs at least one stage")
        stage_ids = [s.id for s in self.stages]
        for sid in stage_ids:
            if not _ID_RE.match(sid):
                raise InputError("E011", f"{where}: stage id {sid!r} must be lower_snake_case")
        dup = {s for s in stage_ids if stage_ids.count(s) > 1}
        if dup:
            raise InputError("E012", f"{where}: duplicate stage id(s) {sorted(dup)}")
        if "unassigned" in stage_ids:
            raise InputError("E013", f"{where}: 'unassigned' is reserved, not a stage id")
        tp_ids = {t.id for t in self.touchpoints}
        ch_ids = {c.id for c in self.channels}
        for s in self.stages:
            missing = [t for t in s.touchpoints if t not in tp_ids]
            if missing:
                raise InputError(
                    "E014",
                    f"{where}: stage '{s.id}' lists touchpoint(s) {missing} that are not "
                    "defined under `touchpoints:`",
                )
            missing = [c for c in s.channels if c not in ch_ids]
            if missing:
                raise InputError(
                    "E015",
                    f"{where}: stage '{s.id}' lists channel(s) {missing} that are not "
                    "defined under `channels:`",
                )

    @property
    def stage_ids(self) -> list[str]:
        return [s.id for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d


def _stage(path: Path, raw: Mapping[str, Any]) -> Stage:
    allowed = {f.name for f in fields(Stage)}
    _check_keys(path, f"stage {raw.get('id', '?')!r}", raw, allowed)
    if "id" not in raw or "name" not in raw:
        raise InputError("E016", f"{path}: every stage needs `id` and `name` (got {dict(raw)})")
    return Stage(
        id=str(raw["id"]),
        name=str(raw["name"]),
        description=str(raw.get("description", "")).strip(),
        touchpoints=tuple(raw.get("touchpoints") or ()),
        channels=tuple(raw.get("channels") or ()),
        kpis=tuple(raw.get("kpis") or ()),
        examples=tuple(raw.get("examples") or ()),
    )


def load_journey_map(path: str | Path) -> JourneyMap:
    p = resolve(path)
    raw = _read_yaml(p)
    if not isinstance(raw, dict):
        raise InputError("E017", f"{p}: a journey map is a YAML mapping with `stages:`")
    allowed = {f.name for f in fields(JourneyMap)} - {"path"}
    _check_keys(p, "the journey map", raw, allowed)
    channels = []
    for c in raw.get("channels") or ():
        _check_keys(p, "a channel", c, {"id", "name"})
        channels.append(Channel(id=str(c["id"]), name=str(c.get("name", c["id"]))))
    touchpoints = []
    for t in raw.get("touchpoints") or ():
        _check_keys(p, "a touchpoint", t, {f.name for f in fields(Touchpoint)})
        touchpoints.append(
            Touchpoint(
                id=str(t["id"]),
                name=str(t.get("name", t["id"])),
                description=str(t.get("description", "")),
                examples=tuple(t.get("examples") or ()),
            )
        )
    return JourneyMap(
        id=str(raw.get("id", p.stem)),
        name=str(raw.get("name", p.stem)),
        version=int(raw.get("version", 1)),
        description=str(raw.get("description", "")).strip(),
        stages=tuple(_stage(p, s) for s in raw.get("stages") or ()),
        channels=tuple(channels),
        touchpoints=tuple(touchpoints),
        path=str(p),
    )


# --- column mapping -----------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMap:
    """For each field, the input column names tried in order (case-insensitive)."""

    candidates: Mapping[str, tuple[str, ...]]
    values: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.candidates) - set(FIELDS))
        if unknown:
            raise InputError("E020", f"Unknown field(s) in column mapping: {unknown}; known: {list(FIELDS)}")
        if not self.candidates.get("text"):
            raise InputError("E021", "The column mapping needs at least one name for `text`")

    def with_overrides(self, overrides: Mapping[str, str]) -> "ColumnMap":
        merged = dict(self.candidates)
        for fld, col in overrides.items():
            merged[fld] = (col,)
        return ColumnMap(merged, self.values)

    def resolve(self, columns: list[str]) -> dict[str, str]:
        """field -> actual column name, for the fields present in `columns`."""
        by_lower = {c.strip().lower(): c for c in columns}
        found: dict[str, str] = {}
        for fld, names in self.candidates.items():
            for name in names:
                col = by_lower.get(name.strip().lower())
                if col is not None:
                    found[fld] = col
                    break
        return found


def load_column_map(path: str | Path, overrides: Mapping[str, str] | None = None) -> ColumnMap:
    p = resolve(path)
    raw = _read_yaml(p) or {}
    if not isinstance(raw, dict):
        raise InputError("E022", f"{p}: a column mapping is a YAML mapping field -> [names]")
    values = raw.pop("values", None) or {}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise InputError("E020", f"{p}: unknown field(s) under `values`: {unknown}")
    values = {f: {str(k).lower(): str(v) for k, v in (m or {}).items()} for f, m in values.items()}
    cands = {k: tuple([v] if isinstance(v, str) else v) for k, v in raw.items()}
    return ColumnMap(cands, values).with_overrides(overrides or {})


def parse_column_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError("E023", f"--column expects FIELD=COLUMN, got {pair!r}")
        fld, col = pair.split("=", 1)
        fld = fld.strip()
        if fld not in FIELDS:
            raise InputError("E020", f"--column: unknown field {fld!r}; known: {list(FIELDS)}")
        out[fld] = col.strip()
    return out


# --- run settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Run settings (configs/run.yaml), overridable from the CLI."""

    journey_map: str = "configs/journeys/contact_centre.yaml"
    model: str = "models/CURRENT"
    columns: str = "configs/columns/default.yaml"
    embedder: str = "use-m3-torch"
    embed_batch_size: int = 64
    threads: int = 2
    embed_dedup: bool = True
    embed_cache_size: int = 50000
    fast_embedder: str = "use-m3-static"
    device: str = "auto"
    gpu_batch_size: int = 512
    fast_batch_size: int = 1024
    chunk_size: int = 2000
    workers: int | str = "auto"
    workers_min_chunks: int = 8
    units_single_file_max: int = 2_000_000
    max_text_chars: int = 20000
    languages: tuple[str, ...] = ("it", "pt", "en", "es", "fr", "de")
    detect_languages: tuple[str, ...] = ("it", "pt", "en", "es", "fr", "de")
    language_min_confidence: float = 0.5
    language_max_chars: int = 300
    language_low_accuracy_min_chars: int = 120
    split_min_chars: int = 100
    min_unit_words: int = 4
    stage_min_confidence: float = 0.45
    touchpoint_min_probability: float = 0.5
    feedback_min_probability: float = 0.5
    feedback_sources: tuple[str, ...] = ("survey", "case_note")
    label_shift: tuple[str, ...] = ("feedback", "sentiment")
    label_shift_min_units: int = 300
    zero_shot_temperature: float = 0.05
    touchpoint_zero_shot_min_cosine: float = 0.2
    prior_strength: float = 30.0
    interval_level: float = 0.95
    min_cell_units: int = 5
    quotes_per_stage: int = 5
    store: str = "feedback.db"
    trend_alpha: float = 0.01
    trend_min_change_points: float = 5.0
    trend_min_units: int = 20
    theme_distance_threshold: float = 0.9
    theme_min_units: int = 3
    theme_min_share: float = 0.05
    theme_max_units: int = 2000
    theme_quotes: int = 3
    theme_keywords: int = 6
    driver_min_items: int = 5
    csat_satisfied_min: float = 4.0

    def __post_init__(self) -> None:
        checks = [
            ("embed_batch_size", self.embed_batch_size >= 1),
            ("threads", self.threads >= 1),
            ("embed_cache_size", self.embed_cache_size >= 0),
            ("device", self.device in ("auto", "cpu") or self.device.startswith("cuda")),
            ("gpu_batch_size", self.gpu_batch_size >= 1),
            ("fast_batch_size", self.fast_batch_size >= 1),
            ("chunk_size", self.chunk_size >= 1),
            ("workers", self.workers == "auto" or (isinstance(self.workers, int)
                                                  and not isinstance(self.workers, bool) and self.workers >= 0)),
            ("workers_min_chunks", self.workers_min_chunks >= 1),
            ("units_single_file_max", self.units_single_file_max >= 0),
            ("max_text_chars", self.max_text_chars >= 1),
            ("language_min_confidence", 0 <= self.language_min_confidence <= 1),
            ("language_max_chars", self.language_max_chars >= 0),
            ("language_low_accuracy_min_chars", self.language_low_accuracy_min_chars >= 0),
            ("stage_min_confidence", 0 <= self.stage_min_confidence <= 1),
            ("touchpoint_min_probability", 0 < self.touchpoint_min_probability <= 1),
            ("feedback_min_probability", 0 <= self.feedback_min_probability <= 1),
            ("label_shift", set(self.label_shift) <= {"feedback", "sentiment"}),
            ("label_shift_min_units", self.label_shift_min_units >= 1),
            ("zero_shot_temperature", self.zero_shot_temperature > 0),
            ("prior_strength", self.prior_strength >= 0),
            ("interval_level", 0 < self.interval_level < 1),
            ("min_unit_words", self.min_unit_words >= 0),
            ("quotes_per_stage", self.quotes_per_stage >= 0),
            ("trend_alpha", 0 < self.trend_alpha < 1),
            ("trend_min_change_points", self.trend_min_change_points >= 0),
            ("trend_min_units", self.trend_min_units >= 1),
            ("theme_distance_threshold", 0 < self.theme_distance_threshold <= 2),
            ("theme_min_units", self.theme_min_units >= 1),
            ("theme_min_share", 0 <= self.theme_min_share < 1),
            ("theme_max_units", self.theme_max_units >= 2),
            ("theme_quotes", 3 <= self.theme_quotes <= 5),
            ("theme_keywords", self.theme_keywords >= 1),
            ("driver_min_items", self.driver_min_items >= 2),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise InputError("E030", f"Setting(s) out of range: {bad}")
        missing = sorted(set(self.languages) - set(self.detect_languages))
        if missing:
            raise InputError("E031", f"languages {missing} must also be in detect_languages")

    def replace(self, **changes: Any) -> "Settings":
        return _replace(self, changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_settings_file(cls: type, path: str | Path | None, default: str, what: str,
                        tuples: tuple[str, ...] = (), nested: Mapping[str, type] | None = None) -> Any:
    """A settings YAML -> `cls`: unknown keys and wrong types are errors naming the file.

    `nested` maps a key to the dataclass its block (a YAML mapping) is read into, with the
    same checks.
    """
    p = resolve(path or default)
    raw = _read_yaml(p) or {}
    if not isinstance(raw, dict):
        raise InputError("E032", f"{p}: {what} are a YAML mapping of setting -> value")
    _check_keys(p, what, raw, {f.name for f in fields(cls)})
    for key in tuples:
        if key in raw:
            raw[key] = tuple(raw[key])
    try:
        for key, sub in (nested or {}).items():
            if key not in raw:
                continue
            block = raw[key] if raw[key] is not None else {}
            if not isinstance(block, dict):
                raise InputError("E032", f"{p}: `{key}:` is a YAML mapping of setting -> value, got {block!r}")
            _check_keys(p, f"{what} `{key}:`", block, {f.name for f in fields(sub)})
            try:
                raw[key] = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})
            except InputError as e:  # out of range: say which file
                raise InputError(e.code, f"{p}: {str(e).split('] ', 1)[-1]}") from e
        return cls(**raw)
    except TypeError as e:
        raise InputError("E032", f"{p}: {e}") from e


def _replace(obj: Any, changes: dict[str, Any]) -> Any:
    """CLI overrides: options left at None keep the file's value."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


def load_settings(path: str | Path | None = None) -> Settings:
    return _load_settings_file(Settings, path, "configs/run.yaml", "run settings",
                               tuples=("languages", "detect_languages", "label_shift", "feedback_sources"))


FINE_TUNE_MODES = ("auto", "adapter", "encoder")
FINE_TUNE_LABELS = ("stage", "sentiment")


@dataclass(frozen=True)
class FineTuneSettings:
    """`train --fine-tune` settings (the `fine_tune:` block of configs/train.yaml).

    `mode: auto` fine-tunes the encoder when the embedder is use-m3 (through its torch twin,
    `use_*` settings) or a sentence-transformers folder (`encoder_*`), and trains a contrastive
    adapter on the frozen embeddings for the ONNX and static tiers. Wrong types raise TypeError,
    which the loader reports naming the file.
    """

    mode: str = "auto"
    labels: tuple[str, ...] = FINE_TUNE_LABELS
    adapter_hidden: int = 256
    adapter_epochs: int = 5
    adapter_lr: float = 1e-4
    adapter_pairs_per_unit: int = 10
    adapter_batch_size: int = 512
    adapter_weight_decay: float = 0.0
    encoder_epochs: int = 1
    encoder_pairs_per_unit: int = 8
    encoder_batch_size: int = 16
    encoder_lr: float = 5e-5
    encoder_warmup: float = 0.1
    encoder_max_seq_length: int = 128
    encoder_refit: bool = True
    use_epochs: int = 3
    use_lr: float = 1e-4
    use_head_lr: float = 3e-3
    use_batch_size: int = 32
    use_anchor_weight: float = 0.5
    use_probe_epochs: int = 20
    use_train_table: bool = False
    use_table_lr: float = 1e-3
    use_touchpoints: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "bool" and not isinstance(v, bool):
                raise TypeError(f"fine_tune.{f.name} must be true or false, got {v!r}")
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise TypeError(f"fine_tune.{f.name} must be an integer, got {v!r}")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TypeError(f"fine_tune.{f.name} must be a number, got {v!r}")
        if not isinstance(self.labels, tuple) or not all(isinstance(x, str) for x in self.labels):
            raise TypeError(f"fine_tune.labels must be a list of label names, got {self.labels!r}")
        bad = [name for name, ok in [
            ("mode", self.mode in FINE_TUNE_MODES),
            ("labels", bool(self.labels) and set(self.labels) <= set(FINE_TUNE_LABELS)),
            ("adapter_hidden", self.adapter_hidden >= 1),
            ("adapter_epochs", self.adapter_epochs >= 0),
            ("adapter_lr", self.adapter_lr > 0),
            ("adapter_pairs_per_unit", self.adapter_pairs_per_unit >= 2),
            ("adapter_batch_size", self.adapter_batch_size >= 1),
            ("adapter_weight_decay", self.adapter_weight_decay >= 0),
            ("encoder_epochs", self.encoder_epochs >= 0),
            ("encoder_pairs_per_unit", self.encoder_pairs_per_unit >= 2),
            ("encoder_batch_size", self.encoder_batch_size >= 1),
            ("encoder_lr", self.encoder_lr > 0),
            ("encoder_warmup", 0 <= self.encoder_warmup < 1),
            ("encoder_max_seq_length", self.encoder_max_seq_length >= 8),
            ("use_epochs", self.use_epochs >= 0),
            ("use_lr", self.use_lr > 0),
            ("use_head_lr", self.use_head_lr > 0),
            ("use_batch_size", self.use_batch_size >= 1),
            ("use_anchor_weight", self.use_anchor_weight >= 0),
            ("use_probe_epochs", self.use_probe_epochs >= 0),
            ("use_table_lr", self.use_table_lr > 0),
        ] if not ok]
        if bad:
            raise InputError("E034", f"fine_tune setting(s) out of range: {bad} (mode is one of "
                             f"{list(FINE_TUNE_MODES)}, labels a non-empty subset of {list(FINE_TUNE_LABELS)})")


@dataclass(frozen=True)
class TrainSettings:
    """Training settings (configs/train.yaml)."""

    kernel_components: int = 1000
    kernel_gamma: float = 1.0
    C: float = 16.0
    touchpoint_C: float = 4.0
    touchpoint_min_positive: int = 5
    test_size: float = 0.2
    seed: int = 0
    calibration_bins: int = 10
    seed_corpus: str = "corpora/seed"
    promote_tolerance: float = 0.01
    fine_tune: FineTuneSettings = dataclasses.field(default_factory=FineTuneSettings)

    def __post_init__(self) -> None:
        if self.kernel_components < 0 or self.C <= 0 or not 0 < self.test_size < 1 or self.calibration_bins < 2:
            raise InputError("E033", f"training settings out of range: {self}")

    def replace(self, **changes: Any) -> "TrainSettings":
        return _replace(self, changes)


def load_train_settings(path: str | Path | None = None) -> TrainSettings:
    return _load_settings_file(TrainSettings, path, "configs/train.yaml", "training settings",
                               nested={"fine_tune": FineTuneSettings})
