"""Effort signals read from the text: stated waits, repeat contacts, transfers, unresolved outcomes.

Why: a customer who writes "third time I call, 40 minutes on hold, still not solved" tells us
the waiting time, the first-contact-resolution failure and the outcome, whatever channel the
text arrived on. These are the contact centre's own KPIs (waiting time, FCR, transfers), read
from the customer's words, so they can sit next to the KPI columns of the dump.

Rules, not a model
------------------
Each language has a rule file, `configs/effort/<lang>.yaml` (it, pt, en, es, fr, de): number
words, duration units, ordinals, word classes, and spaCy `Matcher` token patterns for the
labels `duration`, `repeat`, `transfer`, `unresolved` and their vetoes `not_wait`, `not_repeat`,
`not_transfer`, `not_unresolved` (a match overlapping a veto match is dropped: "without having
to call again" is no repeat contact). Text is tokenised by
`spacy.blank(lang)`; every token's NORM is its lowercase form with accents and curly
apostrophes folded ("Già" -> "gia", "mezz’" -> "mezz'"; contractions keep spaCy's norm, so
English "n't" reads "not"), and all patterns match on NORM, so "ja liguei" and "já liguei"
are the same. A language without a rule file (or `und`) yields no signals and no error.

Pattern shorthand in the rule files (expanded before the Matcher sees them): a bare string is a
token whose NORM equals it; `{IS: name}` is a token of a word class (`classes:` in the file, or
the built-in `number`, `fraction`, `unit`, `compact`, `ordinal`, `count`; `fraction` words,
such as Italian "quarto" in "un quarto d'ora", count as numbers only where a pattern names them,
because the same word is an ordinal elsewhere); `{GAP: n}` is 0 to n tokens of
anything but punctuation; `{IN: [...]}` / `{REGEX: r}` is a token whose NORM is one of the words /
matches r; any other
key is a plain spaCy Matcher token attribute (`OP`, `NORM`, `IS_SENT_START`...).

What is extracted (offsets are characters in the unit's text, `text` is the matched span)
-----------------------------------------------------------------------------------------
- Durations: number (digits, "2,5", number words 1-20 and tens, compounds such as "venticinque",
  "fünfundzwanzig", "vingt-cinq", "forty-five", articles meaning one, fractions such as "mezz'",
  "half", "demi", "anderthalb", vague quantities such as "qualche", "a few", "ein paar" = 3,
  flagged `approximate`) followed by a unit, or compact tokens ("1h30", "45min", "3gg"). The
  value is normalised to minutes (month = 30 days, year = 365 days); `value` and `unit` are given
  in the largest unit stated ("un'ora e mezza" -> 1.5 hour, 90 minutes). Ranges ("2-3 days",
  "20 o 30 minuti") take the upper bound. A duration overlapping a `not_wait` match (frequencies
  "every 10 minutes", prices "25 euros a month", "24/7" phrasings, contract, promotion, tenure
  and age phrasings, times of day "à 14h30") is kept apart in `other_durations` and never counts
  as a wait. Bare plural units ("I waited for hours") are not durations: no value is stated.
- Repeat contacts: "third time I call", "terza volta che chiamo", "já liguei cinco vezes",
  "5 Anrufe", "called again", with `count` when stated (ordinal or number of times; None when
  vague). A stated count below 2 ("first time I called", "called once") is not a repeat.
- Transfers between agents or departments; unresolved outcomes ("still not solved", "ancora
  niente", "continua sem resolver").

Per-unit columns (`effort_chunk`)
---------------------------------
wait_minutes (largest stated wait, NaN if none) and wait_span; repeat_contact, repeat_count
(Int64, largest stated count, NA when none or vague) and repeat_span; transfer and
transfer_span; unresolved and unresolved_span; effort_score in [0, 1]:

    wait       = m / (m + wait_half_minutes)            m = wait_minutes (0 if none)
    repeat     = 1 - (1 - repeat_weight) ** (n - 1)     n = repeat_count (2 when vague), 0 if none
    transfer   = transfer_weight if a transfer is mentioned, else 0
    unresolved = unresolved_weight if an unresolved outcome is mentioned, else 0
    effort     = 1 - (1 - wait)(1 - repeat)(1 - transfer)(1 - unresolved)

a noisy-OR: each signal alone raises the score, several together compound, no signal gives 0.
The weights live in `configs/effort/score.yaml` (defaults: a 60-minute wait counts half, a
second contact 0.5, a transfer 0.4, an unresolved outcome 0.6).

Aggregation across chunks (`effort_partial`, `combine_effort`, `effort_summary`)
--------------------------------------------------------------------------------
`effort_partial(units, keys)` turns a chunk into sums per (keys..., touchpoint, wait_minutes):
touchpoint `*` holds every unit of the group and, when the chunk has a `touchpoints` column
(';'-joined ids), each mentioned touchpoint gets rows of its own. Stated waits are few and
repeat the same round figures (40 minutes, 2 days: a number word or figure times a unit), so
the partial keeps them as a value -> count table (wait_minutes NaN for units without a wait):
the median is exact, partials add by plain sums, and memory is bounded by the distinct stated
values, not by the number of units.
Item KPIs of the dump (resolution_hours, fcr) are summed once per item per group. Partials
of any chunks, concatenated (or `combine_effort`), summarise exactly like one pass over all
units. `effort_summary` gives per group: units, items, units_with_wait, wait_share,
median_wait_minutes, repeat_share (a first-contact-resolution failure signal from the text),
transfer_share, unresolved_share, effort_mean, and beside them the dump's resolution_hours_mean
and fcr_rate (share of items marked resolved at first contact), NaN where absent.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from feedback_nlp.config import project_root
from feedback_nlp.errors import FeedbackError
from feedback_nlp.records import Schema

UNIT_MINUTES = {"second": 1 / 60, "minute": 1.0, "hour": 60.0, "day": 1440.0, "week": 10080.0,
                "month": 43200.0, "year": 525600.0}
LABELS = ("duration", "not_wait", "repeat", "not_repeat", "transfer", "not_transfer", "unresolved", "not_unresolved")
VETO = {"duration": "not_wait", "repeat": "not_repeat", "transfer": "not_transfer", "unresolved": "not_unresolved"}
BUILTIN_CLASSES = ("number", "fraction", "unit", "compact", "ordinal", "count")
RULE_KEYS = {"language", "numbers", "fractions", "number_prefixes", "number_joiners", "vague_numbers", "ordinals",
             "ordinal_suffixes", "counts", "count_suffixes", "units", "classes", "patterns"}
SCORE_KEYS = {"wait_half_minutes", "repeat_weight", "transfer_weight", "unresolved_weight"}
NA_KEY = "(none)"  # same placeholder as score.NA_KEY for a missing key value
ALL = "*"          # the touchpoint row holding every unit of a group

# Columns effort_chunk adds to a unit chunk.
EFFORT = Schema(
    "Effort",
    {
        "wait_minutes": "float64",
        "wait_span": "string",
        "repeat_contact": "bool",
        "repeat_count": "Int64",
        "repeat_span": "string",
        "transfer": "bool",
        "transfer_span": "string",
        "unresolved": "bool",
        "unresolved_span": "string",
        "effort_score": "float64",
    },
)
PARTIAL_SUMS = ["units", "repeat", "transfer", "unresolved", "effort_sum", "items", "resolution_hours_sum",
                "resolution_hours_n", "fcr_yes", "fcr_n"]


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Mention:
    """A matched span: character offsets in the unit's text and the text itself."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Duration(Mention):
    """A stated duration, in the largest unit stated and in minutes."""

    value: float = 0.0
    unit: str = "minute"
    minutes: float = 0.0
    approximate: bool = False


@dataclass(frozen=True)
class RepeatContact(Mention):
    """A repeat contact; `count` is the stated number of contacts (None when vague)."""

    count: int | None = None


@dataclass
class EffortSignals:
    """Everything the rules found in one unit."""

    lang: str
    durations: list[Duration] = field(default_factory=list)        # waiting / resolution times
    other_durations: list[Duration] = field(default_factory=list)  # durations ruled out as waits
    repeats: list[RepeatContact] = field(default_factory=list)
    transfers: list[Mention] = field(default_factory=list)
    unresolved: list[Mention] = field(default_factory=list)

    @property
    def longest_wait(self) -> Duration | None:
        return max(self.durations, key=lambda d: d.minutes, default=None)

    @property
    def repeat_count(self) -> int | None:
        counts = [r.count for r in self.repeats if r.count is not None]
        return max(counts) if counts else None


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of the per-unit effort score (configs/effort/score.yaml)."""

    wait_half_minutes: float = 60.0
    repeat_weight: float = 0.5
    transfer_weight: float = 0.4
    unresolved_weight: float = 0.6

    def __post_init__(self) -> None:
        if self.wait_half_minutes <= 0:
            raise FeedbackError("E1103", f"wait_half_minutes must be > 0, got {self.wait_half_minutes}")
        for k in ("repeat_weight", "transfer_weight", "unresolved_weight"):
            v = getattr(self, k)
            if not 0 <= v <= 1:
                raise FeedbackError("E1103", f"{k} must be within [0, 1], got {v}")


# --------------------------------------------------------------------------------------------
# Rule files


def fold(s: str) -> str:
    """Lowercase, curly apostrophes straightened, accents removed: what patterns match on."""
    return _fold_cached(s)


def _fold(s: str) -> str:
    s = s.lower().replace("\u2019", "'").replace("\u2018", "'")
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def _fold_regex(r: str) -> str:
    r = r.replace("\u2019", "'")
    return "".join(c for c in unicodedata.normalize("NFKD", r) if not unicodedata.combining(c))


def rules_dir() -> Path:
    return project_root() / "configs" / "effort"


def _alt(words: Iterable[str]) -> str:
    """A regex alternation of the words, longest first; one that never matches when empty."""
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)) or "(?!)"


class Rules:
    """One language's rules: tables for parsing values and a compiled spaCy Matcher."""

    def __init__(self, lang: str, data: dict[str, Any], path: Path) -> None:
        self.lang, self.path = lang, path
        unknown = set(data) - RULE_KEYS
        if unknown:
            raise FeedbackError("E1101", f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(RULE_KEYS)}")
        if data.get("language", lang) != lang:
            raise FeedbackError("E1101", f"{path}: field 'language' says {data['language']!r}, the file name says "
                                         f"{lang!r}; rename the file or fix the field")
        try:
            self._tables(data)
        except (TypeError, ValueError, IndexError, AttributeError) as e:
            raise FeedbackError("E1101", f"{path}: a word table is malformed ({e}); numbers, fractions, "
                                         "vague_numbers and number_prefixes map words to numbers, ordinals and "
                                         "counts map words to integers or null, units map words to a unit "
                                         "or [unit, multiplier]") from e
        self._compile(data)

    def _tables(self, data: dict[str, Any]) -> None:
        path = self.path
        self.numbers = {fold(k): float(v) for k, v in (data.get("numbers") or {}).items()}
        self.vague = {fold(k): float(v) for k, v in (data.get("vague_numbers") or {}).items()}
        self.fractions = {fold(k): float(v) for k, v in (data.get("fractions") or {}).items()}
        self.prefixes = {fold(k): float(v) for k, v in (data.get("number_prefixes") or {}).items()}
        self.joiners = [fold(j) for j in data.get("number_joiners") or []]
        self.ordinals = {fold(k): (None if v is None else int(v)) for k, v in (data.get("ordinals") or {}).items()}
        self.counts = {fold(k): (None if v is None else int(v)) for k, v in (data.get("counts") or {}).items()}
        self.units: dict[str, tuple[str, float]] = {}
        for word, spec in (data.get("units") or {}).items():
            unit, mult = (spec, 1.0) if isinstance(spec, str) else (spec[0], float(spec[1]))
            if unit not in UNIT_MINUTES:
                raise FeedbackError("E1101", f"{path}: field 'units', word '{word}': unknown unit '{unit}'; "
                                             f"expected one of {list(UNIT_MINUTES)}")
            self.units[fold(word)] = (unit, mult)

    def _compile(self, data: dict[str, Any]) -> None:
        import spacy
        from spacy.attrs import NORM
        from spacy.matcher import Matcher

        path, lang = self.path, self.lang
        words = {**self.numbers, **self.vague}
        word_re = _alt(words)
        num = r"\d+(?:[.,]\d+)?"
        pre = f"(?:{_alt(self.prefixes)})?" if self.prefixes else ""
        join = f"(?:(?:{_alt(self.joiners)})(?:{word_re}))?" if self.joiners else ""
        self.number_re = re.compile(f"^(?:{num}|{pre}(?:{word_re}){join})$")
        unit_re = _alt(self.units)
        self.compact_re = re.compile(rf"^({num})({unit_re})(\d{{1,2}})?(?:{unit_re})?$")
        osuf = _alt(fold(s) for s in data.get("ordinal_suffixes") or [])
        self.ordinal_re = re.compile(rf"^(?:(\d+)(?:{osuf})|({_alt(self.ordinals)}))$")
        csuf = _alt(fold(s) for s in data.get("count_suffixes") or [])
        self.count_re = re.compile(rf"^(?:(?:({num})|({word_re}))(?:{csuf})|({_alt(self.counts)}))$")
        classes = {
            "number": {"REGEX": self.number_re.pattern},
            "fraction": {"IN": sorted(self.fractions) or ["\x00"]},
            "unit": {"IN": sorted(self.units)},
            "compact": {"REGEX": self.compact_re.pattern},
            "ordinal": {"REGEX": self.ordinal_re.pattern},
            "count": {"REGEX": self.count_re.pattern},
        }
        for name, spec in (data.get("classes") or {}).items():
            if name in BUILTIN_CLASSES:
                raise FeedbackError("E1101", f"{path}: class '{name}' is built in; pick another name")
            if isinstance(spec, list):
                classes[name] = {"IN": sorted({fold(str(w)) for w in spec})}
            elif isinstance(spec, dict) and set(spec) == {"regex"}:
                classes[name] = {"REGEX": _fold_regex(str(spec["regex"]))}
            else:
                raise FeedbackError("E1101", f"{path}: class '{name}' must be a list of words or {{regex: ...}}")
        self.nlp = spacy.blank(lang)
        # Every new lexeme's NORM is its folded text (tokenizer exceptions such as English "n't"
        # -> "not" still set their own norm): no per-token work when a doc is made.
        self.nlp.vocab.lex_attr_getters[NORM] = fold
        # One Matcher per label and set of required words: it runs only on docs holding those
        # words, and a veto's Matcher only where its label matched (most units state no effort,
        # and a Matcher's cost grows with the patterns it tries).
        patterns = data.get("patterns") or {}
        bad = set(patterns) - set(LABELS)
        if bad:
            raise FeedbackError("E1101", f"{path}: field 'patterns': unknown label(s) {sorted(bad)}; "
                                         f"expected {list(LABELS)}")
        groups: dict[tuple[str, frozenset], list[list[dict]]] = {}
        spec_ids: dict[tuple[str, Any], int] = {}
        for label in LABELS:
            for i, pat in enumerate(patterns.get(label) or []):
                where = f"{path}: patterns.{label}[{i}]"
                if not isinstance(pat, list) or not pat:
                    raise FeedbackError("E1102", f"{where}: a pattern is a non-empty list of tokens")
                compiled = [_token(t, classes, where) for t in pat]
                need: frozenset = frozenset()
                if not label.startswith("not_"):
                    need = frozenset(spec_ids.setdefault(spec, len(spec_ids)) for spec in _required(compiled))
                groups.setdefault((label, need), []).append(compiled)
        self._groups: list[tuple[str, frozenset, Matcher, Matcher]] = []
        self.vetoes: dict[str, tuple[Matcher, Matcher]] = {}
        flags = _WordFlags(self.nlp, [pat for pats in groups.values() for pat in pats])
        for (label, need), compiled_patterns in groups.items():
            matcher = Matcher(self.nlp.vocab, validate=True)
            try:
                matcher.add(label, compiled_patterns)
            except Exception as e:  # spaCy's pattern validation
                raise FeedbackError("E1102", f"{path}: patterns.{label}: {e}") from e
            flagged = Matcher(self.nlp.vocab, validate=False)  # FLAG attributes are not in spaCy's schema
            flagged.add(label, [[flags.token(t) for t in pat] for pat in compiled_patterns])
            if label.startswith("not_"):
                self.vetoes[label] = (flagged, matcher)
            else:
                self._groups.append((label, need, flagged, matcher))
        self._ambiguous = flags.ambiguous_orths()
        self.word_flags = len(flags.ids)
        self.use_flags = True  # False: every doc through the predicate Matchers (the reference)
        # For `candidate_groups`: words map to the ids of the word sets holding them.
        self._word_specs: dict[str, list[int]] = {}
        for (kind, value), i in spec_ids.items():
            if kind == "IN":
                for w in value:
                    self._word_specs.setdefault(w, []).append(i)
        self._regex_specs = [(i, value) for (kind, value), i in spec_ids.items() if kind == "REGEX"]
        self._norm_specs: dict[int, tuple[int, ...]] = {}  # NORM hash -> spec ids it satisfies

    # -- documents -------------------------------------------------------------------------

    def docs(self, texts: Sequence[str]):
        """Tokenised docs whose tokens carry folded NORMs."""
        return self.nlp.tokenizer.pipe(texts, batch_size=256)

    def _specs_of(self, norm_hash: int) -> tuple[int, ...]:
        specs = self._norm_specs.get(norm_hash)
        if specs is None:
            norm = self.nlp.vocab.strings[norm_hash]
            specs = tuple(self._word_specs.get(norm, ())) + tuple(i for i, rx in self._regex_specs if rx.search(norm))
            self._norm_specs[norm_hash] = specs
        return specs

    def candidate_groups(self, doc) -> list[tuple[str, Any]]:
        """(label, Matcher) of the pattern groups whose required words all occur in the doc: a
        necessary condition for a match, so the other Matchers are skipped. The Matchers test
        word classes by lexeme flags, unless the doc holds a token whose flags could be wrong
        (`_WordFlags.ambiguous_orths`)."""
        from spacy.attrs import NORM, ORTH

        present: set[int] = set()
        for h in set(doc.to_array(NORM).tolist()):
            present.update(self._specs_of(int(h)))
        found = [(label, flagged, plain) for label, need, flagged, plain in self._groups if need <= present]
        plain = bool(found) and self._uses_predicates(doc, ORTH)
        return [(label, p if plain else f) for label, f, p in found]

    def _uses_predicates(self, doc, orth_attr: int) -> bool:
        if not self.use_flags:
            return True
        return bool(self._ambiguous) and not self._ambiguous.isdisjoint(doc.to_array(orth_attr).tolist())

    def extract_doc(self, doc) -> EffortSignals:
        from spacy.attrs import ORTH
        from spacy.util import filter_spans

        found: dict[str, list] = {label: [] for label in LABELS}
        for label, matcher in self.candidate_groups(doc):
            found[label] += [doc[start:end] for _, start, end in matcher(doc)]
        if not any(found.values()):
            return EffortSignals(self.lang)
        plain = self._uses_predicates(doc, ORTH)
        for label, veto in VETO.items():
            if found[label] and veto in self.vetoes:
                flagged, predicates = self.vetoes[veto]
                found[veto] = [doc[start:end] for _, start, end in (predicates if plain else flagged)(doc)]
        out = EffortSignals(self.lang)
        blocked = [(s.start, s.end) for s in found["not_wait"]]
        for span in filter_spans(found["duration"]):
            d = self._duration(span)
            if d is None:
                continue
            if any(s < span.end and span.start < e for s, e in blocked):
                out.other_durations.append(d)
            else:
                out.durations.append(d)
        for span in _kept(found["repeat"], found["not_repeat"]):
            count, known = self._count(span)
            if known and count is not None and count < 2:
                continue  # "first time I called", "called once": not a repeat
            out.repeats.append(RepeatContact(span.start_char, span.end_char, span.text, count))
        out.transfers = [Mention(s.start_char, s.end_char, s.text)
                         for s in _kept(found["transfer"], found["not_transfer"])]
        out.unresolved = [Mention(s.start_char, s.end_char, s.text)
                          for s in _kept(found["unresolved"], found["not_unresolved"])]
        return out

    # -- values ----------------------------------------------------------------------------

    def number(self, norm: str) -> float | None:
        """Value of a number token: digits, a number word, a compound, a vague quantity."""
        if norm and norm[0].isdigit():
            try:
                return float(norm.replace(",", "."))
            except ValueError:
                return None
        if norm in self.numbers:
            return self.numbers[norm]
        if norm in self.vague:
            return self.vague[norm]
        if norm in self.fractions:
            return self.fractions[norm]
        for p in sorted(self.prefixes, key=len, reverse=True):
            if norm.startswith(p) and norm[len(p):] in self.numbers:
                return self.prefixes[p] + self.numbers[norm[len(p):]]
        for j in self.joiners:
            parts = norm.split(j)
            if len(parts) == 2 and all(x in self.numbers for x in parts):
                return _join(self.numbers[parts[0]], self.numbers[parts[1]])
        return None

    def _duration(self, span) -> Duration | None:
        """Value of a matched duration span: quantities times units, summed ("1 ora e 20
        minuti"), a trailing fraction or count of the next smaller unit ("e mezza", "2 h 30")."""
        total, largest, last, approx = 0.0, None, None, False
        pending: list[float | None] = []  # numbers, None = a joiner between two numbers
        for tok in span:
            n = tok.norm_
            m = self.compact_re.match(n)
            if m:
                unit, mult = self.units[m.group(2)]
                minutes = float(m.group(1).replace(",", ".")) * mult * UNIT_MINUTES[unit]
                if m.group(3):  # "1h30": the digits after an hour are minutes, after a day hours...
                    minutes += float(m.group(3)) * UNIT_MINUTES[_smaller(unit)]
                total += minutes
                largest = _larger(largest, unit)
                last, pending = unit, []
                continue
            if n in self.units:
                unit, mult = self.units[n]
                q = _quantity(pending) if pending else 1.0
                total += q * mult * UNIT_MINUTES[unit]
                largest = _larger(largest, unit)
                last, pending = unit, []
                continue
            v = self.number(n)
            if v is not None:
                pending.append(v)
                approx = approx or n in self.vague
            elif pending and pending[-1] is not None:
                pending.append(None)
        if pending and last is not None:  # "un'ora e mezza", "2 h 30"
            q = _quantity(pending)
            if 0 < q < 1:
                total += q * UNIT_MINUTES[last]
            elif last != "minute" and q == int(q) and q < UNIT_MINUTES[last] / UNIT_MINUTES[_smaller(last)]:
                total += q * UNIT_MINUTES[_smaller(last)]
        if largest is None or total <= 0:
            return None
        return Duration(span.start_char, span.end_char, span.text, value=round(total / UNIT_MINUTES[largest], 4),
                        unit=largest, minutes=round(total, 4), approximate=approx)

    def _count(self, span) -> tuple[int | None, bool]:
        """(count, whether one was stated) for a repeat span."""
        nums: list[float] = []
        for tok in span:
            n = tok.norm_
            m = self.ordinal_re.match(n)
            if m:
                v = int(m.group(1)) if m.group(1) else self.ordinals.get(m.group(2))
                return v, v is not None
            m = self.count_re.match(n)
            if m:
                if m.group(3):
                    v = self.counts.get(m.group(3))
                    return v, v is not None
                raw = m.group(1) or m.group(2)
                v = self.number(raw)
                return (int(v), True) if v is not None and raw not in self.vague else (None, False)
            if n in self.vague:
                return None, False
            v = self.number(n)
            if v is not None:
                nums.append(v)
            elif nums:
                break
        if nums:
            return int(math.prod(nums)), True
        return None, False


_ORDER = list(UNIT_MINUTES)


def _kept(spans: list, vetoes: list) -> list:
    """The longest non-overlapping spans that overlap no veto match ("senza che dovessi
    richiamare" is not a repeat contact)."""
    from spacy.util import filter_spans

    return [s for s in filter_spans(spans) if not any(v.start < s.end and s.start < v.end for v in vetoes)]


def _larger(a: str | None, b: str) -> str:
    return b if a is None or _ORDER.index(b) > _ORDER.index(a) else a


def _smaller(unit: str) -> str:
    return _ORDER[max(0, _ORDER.index(unit) - 1)]


def _quantity(seq: list[float | None]) -> float:
    """Numbers before a unit: products within a group ("half an", "a couple"), then groups joined
    by a word or dash (`_join`); a fraction adds ("one and a half")."""
    groups: list[float] = []
    cur: list[float] = []
    for v in [*seq, None]:
        if v is None:
            if cur:
                groups.append(math.prod(cur))
            cur = []
        else:
            cur.append(v)
    if not groups:
        return 1.0
    acc = groups[0]
    for g in groups[1:]:
        acc = acc + g if g < 1 else _join(acc, g)
    return acc


def _is_tens(v: float) -> bool:
    return 20 <= v < 100 and v % 10 == 0


def _join(a: float, b: float) -> float:
    """Two numbers joined by a word or dash: tens and ones add ("forty-five", "fünfundzwanzig"),
    anything else is a range whose upper bound wins ("2-3", "deux-trois")."""
    if (_is_tens(a) and 1 <= b < 10 and b == int(b)) or (_is_tens(b) and 1 <= a < 10 and a == int(a)):
        return a + b
    return max(a, b)


@lru_cache(maxsize=4096)
def _spec_re(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _required(pattern: list[dict]) -> list[tuple[str, Any]]:
    """The NORM constraints of the tokens every match of the pattern contains: ("IN", words)
    or ("REGEX", compiled). Optional tokens and tokens without a NORM constraint are left out,
    so the list is a necessary condition, never a sufficient one."""
    out: list[tuple[str, Any]] = []
    for t in pattern:
        op = t.get("OP", "")
        if op in ("?", "*", "!") or op.startswith("{0") or op.startswith("{,"):
            continue
        norm = t.get("NORM")
        if isinstance(norm, str):
            out.append(("IN", frozenset([norm])))
        elif isinstance(norm, dict) and isinstance(norm.get("IN"), list):
            out.append(("IN", frozenset(norm["IN"])))
        elif isinstance(norm, dict) and isinstance(norm.get("REGEX"), str):
            out.append(("REGEX", _spec_re(norm["REGEX"])))
    return out


@lru_cache(maxsize=65536)
def _fold_cached(s: str) -> str:
    return _fold(s)


class _WordFlags:
    """Word classes ({IN: [...]}, {REGEX: ...} on NORM) as spaCy lexeme flags.

    Why: the Matcher tests IN and REGEX in Python for every token of every candidate doc (about
    a quarter of the effort step); a lexeme flag is computed once per word of the vocabulary and
    tested in C. A flag is computed from the lexeme's NORM. A token made by a tokenizer
    exception can carry a NORM of its own (English "n't" -> "not", "10am" -> "am" read
    "a.m."); the orths where that changes a flag are `ambiguous_orths`, and docs holding one
    go through the predicate Matchers, so matches are the same either way
    (tests/test_effort.py compares both on every shipped text)."""

    FIRST, LAST = 19, 63  # spaCy's free flag attributes FLAG19..FLAG63

    def __init__(self, nlp, patterns: Iterable[list[dict]]) -> None:
        self.nlp = nlp
        # Lexemes made before `fold` became the NORM getter (the tokenizer exceptions') keep
        # the norm they were made with.
        self.norms = {lex.orth_: lex.norm_ for lex in nlp.vocab}
        self.ids: dict[tuple[str, Any], int] = {}
        self.tests: dict[int, Any] = {}
        # 45 flags for more word classes than that: first to the classes that start patterns
        # (tested at every token of a doc), then to the most used.
        uses: dict[tuple[str, Any], list[int]] = {}
        for pat in patterns:
            for pos, t in enumerate(pat):
                key = self._key(t.get("NORM"))
                if key is not None:
                    n = uses.setdefault(key, [0, 0])
                    n[0] += pos == 0
                    n[1] += 1
        for key in sorted(uses, key=lambda k: (-uses[k][0], -uses[k][1]))[:self.LAST - self.FIRST + 1]:
            self._add(key)

    def _norm(self, orth: str) -> str:
        norm = self.norms.get(orth)
        return fold(orth) if norm is None else norm

    @staticmethod
    def _key(spec: Any) -> tuple[str, Any] | None:
        if not isinstance(spec, dict) or len(spec) != 1:
            return None
        (kind, value), = spec.items()
        if kind == "IN" and isinstance(value, list):
            return ("IN", frozenset(value))
        if kind == "REGEX" and isinstance(value, str):
            return ("REGEX", value)
        return None

    def _add(self, key: tuple[str, Any]) -> None:
        kind, value = key
        if kind == "IN":
            test = value.__contains__
        else:
            rx = _spec_re(value)
            test = lambda norm, rx=rx: rx.search(norm) is not None  # noqa: E731
        fid = self.FIRST + len(self.ids)
        self.nlp.vocab.add_flag(lambda orth, test=test: bool(test(self._norm(orth))), flag_id=fid)
        self.ids[key], self.tests[fid] = fid, test

    def token(self, t: dict) -> dict:
        """A compiled token pattern with its NORM word class replaced by its flag, if it has one."""
        fid = self.ids.get(self._key(t.get("NORM")))  # type: ignore[arg-type]
        if fid is None:
            return t
        return {**{k: v for k, v in t.items() if k != "NORM"}, f"FLAG{fid}": True}

    def ambiguous_orths(self) -> frozenset[int]:
        """ORTH hashes of the exception tokens whose own NORM gives another flag value than
        their lexeme's."""
        from spacy.attrs import NORM, ORTH

        out = set()
        for tokens in self.nlp.tokenizer.rules.values():
            for t in tokens:
                norm, orth = t.get(NORM), t.get(ORTH)
                if norm is None or orth is None:
                    continue
                base = self._norm(orth)
                if any(bool(test(norm)) != bool(test(base)) for test in self.tests.values()):
                    out.add(self.nlp.vocab.strings.add(orth))
        return frozenset(out)


def _token(tok: Any, classes: dict[str, dict], where: str) -> dict:
    if isinstance(tok, str):
        return {"NORM": fold(tok)}
    if not isinstance(tok, dict):
        raise FeedbackError("E1102", f"{where}: token {tok!r} must be a word or a mapping")
    t = dict(tok)
    if "GAP" in t:
        n = t.pop("GAP")
        if t or not isinstance(n, int) or n < 1:
            raise FeedbackError("E1102", f"{where}: {{GAP: n}} takes a positive integer and nothing else")
        return {"IS_PUNCT": False, "OP": f"{{0,{n}}}"}  # a gap never crosses punctuation
    if "IS" in t:
        name = t.pop("IS")
        if name not in classes:
            raise FeedbackError("E1102", f"{where}: unknown class '{name}'; defined: {sorted(classes)}")
        if "NORM" in t or "LOWER" in t:
            raise FeedbackError("E1102", f"{where}: IS cannot be combined with NORM or LOWER")
        t["NORM"] = classes[name]
    for short in ("IN", "REGEX"):  # {IN: [...]} = {NORM: {IN: [...]}}, likewise REGEX
        if short in t:
            if "NORM" in t:
                raise FeedbackError("E1102", f"{where}: {short} cannot be combined with NORM or IS")
            t["NORM"] = {short: t.pop(short)}
    for attr in ("NORM", "LOWER"):
        if attr in t:
            t[attr] = _fold_value(t[attr])
    return t


def _fold_value(v: Any) -> Any:
    if isinstance(v, str):
        return fold(v)
    if isinstance(v, dict):
        return {k: (_fold_regex(x) if k == "REGEX" else [fold(str(w)) for w in x] if isinstance(x, list) else x)
                for k, x in v.items()}
    return v


class _RuleLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML 1.1 reads `no`, `on`, `off`, `yes` as booleans; in word lists they are words. Only
    true/false are booleans here."""


_RuleLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RuleLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


@lru_cache(maxsize=16)
def _rules_cached(lang: str, directory: str) -> Rules | None:
    path = Path(directory) / f"{lang}.yaml"
    if not lang or not path.is_file():
        return None
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RuleLoader) or {}
    except yaml.YAMLError as e:
        raise FeedbackError("E1101", f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise FeedbackError("E1101", f"{path}: expected a mapping at the top level")
    return Rules(lang, data, path)


def rules_for(lang: str, directory: str | Path | None = None) -> Rules | None:
    """The rules of a language, or None when it has no rule file (`und`, unsupported)."""
    if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2,3}", lang):
        return None
    return _rules_cached(lang, str(directory or rules_dir()))


@lru_cache(maxsize=4)
def load_weights(path: str | None = None) -> ScoreWeights:
    """Effort-score weights from configs/effort/score.yaml (unknown keys are errors)."""
    p = Path(path) if path else rules_dir() / "score.yaml"
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise FeedbackError("E1103", f"Effort score weights not found: {p}") from e
    except yaml.YAMLError as e:
        raise FeedbackError("E1103", f"{p} is not valid YAML: {e}") from e
    unknown = set(data) - SCORE_KEYS
    if unknown:
        raise FeedbackError("E1103", f"{p}: unknown key(s) {sorted(unknown)}; expected {sorted(SCORE_KEYS)}")
    return ScoreWeights(**{k: float(v) for k, v in data.items()})


# --------------------------------------------------------------------------------------------
# Per unit


def extract(text: str, lang: str) -> EffortSignals:
    """Effort signals in one text; no rules for the language (or `und`) -> empty signals."""
    rules = rules_for(lang)
    if rules is None or not isinstance(text, str) or not text.strip():
        return EffortSignals(str(lang))
    return rules.extract_doc(next(rules.docs([text])))


def effort_score(wait_minutes: float | None, repeat: bool, repeat_count: int | None, transfer: bool,
                 unresolved: bool, weights: ScoreWeights) -> float:
    """The noisy-OR effort score of the module docstring, in [0, 1]."""
    m = 0.0 if wait_minutes is None or (isinstance(wait_minutes, float) and math.isnan(wait_minutes)) \
        else float(wait_minutes)
    parts = [m / (m + weights.wait_half_minutes)]
    if repeat:
        n = repeat_count if repeat_count is not None else 2
        parts.append(1 - (1 - weights.repeat_weight) ** max(n - 1, 1))
    if transfer:
        parts.append(weights.transfer_weight)
    if unresolved:
        parts.append(weights.unresolved_weight)
    return float(1 - math.prod(1 - p for p in parts))


def effort_chunk(units: pd.DataFrame, *, weights: ScoreWeights | None = None) -> pd.DataFrame:
    """UNIT chunk (needs `text`, `lang`) -> the same rows with the EFFORT columns added."""
    w = weights or load_weights()
    n = len(units)
    none = effort_score(None, False, None, False, False, w)
    defaults = {"wait_minutes": np.nan, "repeat_contact": False, "transfer": False, "unresolved": False,
                "effort_score": none}  # a unit with no signal (most units)
    cols: dict[str, list] = {c: [defaults.get(c)] * n for c in EFFORT.columns}
    texts = units["text"].astype("string").fillna("").tolist()
    langs = units["lang"].astype("string").fillna("").tolist()
    by_lang: dict[str, list[int]] = {}
    for i, lang in enumerate(langs):
        by_lang.setdefault(lang, []).append(i)
    signals: list[EffortSignals | None] = [None] * n
    for lang, idx in by_lang.items():
        rules = rules_for(lang)
        if rules is None:
            continue
        for i, doc in zip(idx, rules.docs([texts[i] for i in idx])):
            signals[i] = rules.extract_doc(doc)
    for i, s in enumerate(signals):
        if s is None or not (s.durations or s.repeats or s.transfers or s.unresolved):
            continue
        wait = s.longest_wait
        rep = max(s.repeats, key=lambda r: -1 if r.count is None else r.count, default=None)
        cols["wait_minutes"][i] = wait.minutes if wait else np.nan
        cols["wait_span"][i] = wait.text if wait else None
        cols["repeat_contact"][i] = bool(s.repeats)
        cols["repeat_count"][i] = s.repeat_count
        cols["repeat_span"][i] = rep.text if rep else None
        cols["transfer"][i] = bool(s.transfers)
        cols["transfer_span"][i] = s.transfers[0].text if s.transfers else None
        cols["unresolved"][i] = bool(s.unresolved)
        cols["unresolved_span"][i] = s.unresolved[0].text if s.unresolved else None
        cols["effort_score"][i] = effort_score(cols["wait_minutes"][i], bool(s.repeats), s.repeat_count,
                                               bool(s.transfers), bool(s.unresolved), w)
    out = units.copy()
    for c, dtype in EFFORT.columns.items():
        out[c] = pd.Series(cols[c], index=units.index, dtype=dtype)
    return out


# --------------------------------------------------------------------------------------------
# Aggregation


def effort_partial(units: pd.DataFrame, keys: Sequence[str] = ("stage",)) -> pd.DataFrame:
    """Unit chunk -> sums per (keys..., touchpoint, wait_minutes); add partials with
    `combine_effort` (or concatenate them) and read them with `effort_summary`."""
    keys = list(keys)
    cols = [*keys, "touchpoint", "wait_minutes", *PARTIAL_SUMS]
    if units.empty:
        return pd.DataFrame(columns=cols)
    if "effort_score" not in units.columns:
        units = effort_chunk(units)
    df = pd.DataFrame(index=units.index)
    for k in keys:
        df[k] = units[k].astype("string").fillna(NA_KEY).astype(object)
    df["item_id"] = units["item_id"].astype(str) if "item_id" in units.columns else units.index.astype(str)
    df["wait_minutes"] = units["wait_minutes"].astype(float).round(4)
    df["_u"] = np.arange(len(df))
    df["units"] = 1
    df["repeat"] = units["repeat_contact"].astype(bool).astype(int)
    df["transfer"] = units["transfer"].astype(bool).astype(int)
    df["unresolved"] = units["unresolved"].astype(bool).astype(int)
    df["effort_sum"] = units["effort_score"].astype(float)
    rh = units["resolution_hours"].astype("Float64") if "resolution_hours" in units.columns \
        else pd.Series(pd.NA, index=units.index, dtype="Float64")
    fcr = units["fcr"].astype("boolean") if "fcr" in units.columns \
        else pd.Series(pd.NA, index=units.index, dtype="boolean")
    df["resolution_hours_sum"] = rh.fillna(0).astype(float)
    df["resolution_hours_n"] = rh.notna().astype(int)
    df["fcr_yes"] = fcr.fillna(False).astype(bool).astype(int)
    df["fcr_n"] = fcr.notna().astype(int)
    df["touchpoint"] = ALL
    frames = [df]
    if "touchpoints" in units.columns:
        tp = units["touchpoints"].astype("string").fillna("").str.split(";")
        ex = df.assign(touchpoint=tp.to_numpy()).explode("touchpoint")
        ex["touchpoint"] = ex["touchpoint"].astype(str).str.strip()
        ex = ex[ex["touchpoint"].ne("") & ex["touchpoint"].ne(ALL)]
        ex = ex.drop_duplicates(subset=["_u", "touchpoint"])  # a unit naming a touchpoint twice counts once
        frames.append(ex)
    df = pd.concat(frames, ignore_index=True)
    group = [*keys, "touchpoint"]
    unit_sums = (df.groupby([*group, "wait_minutes"], dropna=False, sort=False)
                 [["units", "repeat", "transfer", "unresolved", "effort_sum"]].sum().reset_index())
    first = df.drop_duplicates(subset=[*group, "item_id"]).copy()
    first["items"] = 1
    item_sums = (first.groupby(group, sort=False)[["items", "resolution_hours_sum", "resolution_hours_n", "fcr_yes",
                                                  "fcr_n"]].sum().reset_index())
    item_sums["wait_minutes"] = np.nan
    out = pd.concat([unit_sums, item_sums], ignore_index=True)
    return combine_effort([out], keys)


def combine_effort(partials: Sequence[pd.DataFrame], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Add effort partials (of any chunks) into one, compact, partial."""
    frames = [p for p in partials if p is not None and not p.empty]
    if not frames:
        k = list(keys or [])
        return pd.DataFrame(columns=[*k, "touchpoint", "wait_minutes", *PARTIAL_SUMS])
    df = pd.concat(frames, ignore_index=True)
    keys = list(keys) if keys is not None else _keys_of(df)
    for c in PARTIAL_SUMS:
        df[c] = pd.to_numeric(df[c]).fillna(0)
    df["wait_minutes"] = df["wait_minutes"].astype(float)
    out = df.groupby([*keys, "touchpoint", "wait_minutes"], dropna=False, sort=False)[PARTIAL_SUMS].sum().reset_index()
    for c in PARTIAL_SUMS:
        if c != "effort_sum" and c != "resolution_hours_sum":
            out[c] = out[c].astype("int64")
    return out[[*keys, "touchpoint", "wait_minutes", *PARTIAL_SUMS]]


def _keys_of(partial: pd.DataFrame) -> list[str]:
    return [c for c in partial.columns if c not in {"touchpoint", "wait_minutes", *PARTIAL_SUMS}]


def _weighted_median(values: np.ndarray, counts: np.ndarray) -> float:
    """Exactly np.median of the values each repeated `count` times."""
    if counts.sum() <= 0:
        return float("nan")
    order = np.argsort(values, kind="mergesort")
    v, c = values[order], np.cumsum(counts[order])
    total = c[-1]
    lo = v[np.searchsorted(c, (total - 1) // 2, side="right")]
    hi = v[np.searchsorted(c, total // 2, side="right")]
    return float((lo + hi) / 2)


def effort_summary(partial: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Effort figures per group of a partial. `by` defaults to every key of the partial plus
    `touchpoint`; without `touchpoint` in `by`, only the all-units rows (`*`) are read, so a unit
    mentioning two touchpoints still counts once."""
    keys = _keys_of(partial)
    by = [*keys, "touchpoint"] if by is None else list(by)
    if not by:
        raise ValueError("effort_summary needs at least one column to group by (e.g. ['touchpoint'])")
    cols = [*by, "units", "items", "units_with_wait", "wait_share", "median_wait_minutes", "repeat_share",
            "transfer_share", "unresolved_share", "effort_mean", "resolution_hours_mean", "fcr_rate"]
    df = partial if "touchpoint" in by else partial[partial["touchpoint"] == ALL]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df.copy()
    df["wait_minutes"] = df["wait_minutes"].astype(float)
    sums = df.groupby(by, sort=True)[PARTIAL_SUMS].sum()
    waits = df[df["wait_minutes"].notna() & (df["units"] > 0)]
    med = {}
    n_wait = {}
    for key, g in waits.groupby(by, sort=False):
        g2 = g.groupby("wait_minutes")["units"].sum()
        k = key if isinstance(key, tuple) else (key,)
        med[k] = _weighted_median(g2.index.to_numpy(float), g2.to_numpy(float))
        n_wait[k] = int(g2.sum())
    out = sums.reset_index()
    idx = [tuple(r) for r in out[by].itertuples(index=False)]
    u = out["units"].to_numpy(float)
    safe = np.where(u > 0, u, 1)
    out["units_with_wait"] = [n_wait.get(k, 0) for k in idx]
    out["wait_share"] = np.where(u > 0, out["units_with_wait"] / safe, np.nan)
    out["median_wait_minutes"] = [med.get(k, np.nan) for k in idx]
    out["repeat_share"] = np.where(u > 0, out["repeat"] / safe, np.nan)
    out["transfer_share"] = np.where(u > 0, out["transfer"] / safe, np.nan)
    out["unresolved_share"] = np.where(u > 0, out["unresolved"] / safe, np.nan)
    out["effort_mean"] = np.where(u > 0, out["effort_sum"] / safe, np.nan)
    rn, fn = out["resolution_hours_n"].to_numpy(float), out["fcr_n"].to_numpy(float)
    out["resolution_hours_mean"] = np.where(rn > 0, out["resolution_hours_sum"] / np.where(rn > 0, rn, 1), np.nan)
    out["fcr_rate"] = np.where(fn > 0, out["fcr_yes"] / np.where(fn > 0, fn, 1), np.nan)
    out["units"] = out["units"].astype("int64")
    out["items"] = out["items"].astype("int64")
    return out[cols].reset_index(drop=True)
