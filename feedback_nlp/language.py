"""Offline language identification with lingua (models ship inside the package).

The detector is limited to `detect_languages`: a detector limited to N languages always answers
one of them, so its confidence is checked against a threshold, and an answer outside the
supported `languages` is `und`. A language given by the input is trusted when supported.
"""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

from feedback_nlp.records import UND


@lru_cache(maxsize=4)
def _detector(codes: tuple[str, ...], low_accuracy: bool = False):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    langs = []
    for code in codes:
        try:
            langs.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())))
        except (AttributeError, ValueError):
            continue
    builder = LanguageDetectorBuilder.from_languages(*langs)
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


def head(text: str, max_chars: int | None) -> str:
    """The first `max_chars` characters, cut at a space: the detector's cost grows with the
    length, its answer stops changing long before (no answer changed on 10,000 example texts
    cut at 300 characters)."""
    if not max_chars or len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[:cut if cut > 0 else max_chars]


def detect(texts: list[str], *, detect_languages: tuple[str, ...], supported: tuple[str, ...],
           min_confidence: float, max_chars: int | None = None, low_accuracy_min_chars: int | None = None) -> list[str]:
    """ISO 639-1 code per text, or `und` when unsure or unsupported; each text is judged by its
    first `max_chars` characters. Heads of at least `low_accuracy_min_chars` characters go to
    lingua's low-accuracy mode (trigrams only, 2-3x cheaper), which its authors find as accurate
    as the full mode from 120 characters; at 120 no answer changed on 13,062 seed, blind-set and
    example texts (at 100, one 102-character Portuguese note became Spanish)."""
    if not texts:
        return []
    codes = tuple(sorted(detect_languages))
    heads = [head(t, max_chars) for t in texts]
    results: list = [None] * len(heads)
    cut = low_accuracy_min_chars or 0
    groups = [[i for i, h in enumerate(heads) if not cut or len(h) < cut],
              [i for i, h in enumerate(heads) if cut and len(h) >= cut]]
    for low, idx in zip((False, True), groups):
        if idx:
            found = _detector(codes, low).compute_language_confidence_values_in_parallel([heads[i] for i in idx])
            for i, conf in zip(idx, found):
                results[i] = conf
    out = []
    for conf in results:
        if not conf or conf[0].value < min_confidence:
            out.append(UND)
            continue
        code = conf[0].language.iso_code_639_1.name.lower()
        out.append(code if code in supported else UND)
    return out


def language_chunk(items: pd.DataFrame, *, detect_languages: tuple[str, ...],
                   supported: tuple[str, ...], min_confidence: float, max_chars: int | None = None,
                   low_accuracy_min_chars: int | None = None) -> pd.DataFrame:
    """Fill `lang`: keep a supported language given by the input, detect the rest."""
    out = items.copy()
    given = out["lang"].fillna("").astype(str)
    todo = ~given.isin(supported)
    detected = detect(
        out.loc[todo, "text"].astype(str).tolist(),
        detect_languages=detect_languages, supported=supported, min_confidence=min_confidence,
        max_chars=max_chars, low_accuracy_min_chars=low_accuracy_min_chars,
    )
    out.loc[todo, "lang"] = detected
    out["lang"] = out["lang"].astype("string")
    return out
