"""Split items into units with spaCy, so one case note can count for several stages.

No trained spaCy pipelines for it/pt exist on the registry, so each language gets
`spacy.blank(lang)` with the rule-based sentencizer (its tokeniser exceptions still know the
language's abbreviations). Short texts stay whole: a tweet is one unit. Fragments shorter than
`min_unit_words` ("Ok.", "Ticket TK-4821.") are merged into a neighbour instead of being
classified alone.
"""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

from feedback_nlp.records import ITEM_CONTEXT, UNIT, UND


@lru_cache(maxsize=32)
def nlp_for(lang: str):
    import spacy

    try:
        nlp = spacy.blank(lang if lang != UND else "xx")
    except Exception:  # a code spaCy has no language class for
        nlp = spacy.blank("xx")
    nlp.add_pipe("sentencizer")
    return nlp


def _spans(doc, min_words: int) -> list[tuple[int, int]]:
    spans: list[list[int]] = []
    words: list[int] = []
    for sent in doc.sents:
        n = sum(1 for t in sent if t.is_alpha)
        start, end = sent.start_char, sent.end_char
        if spans and (n < min_words or words[-1] < min_words):
            spans[-1][1] = end  # merge a fragment into the previous unit (or absorb it)
            words[-1] += n
        else:
            spans.append([start, end])
            words.append(n)
    return [(s, e) for s, e in spans]


def split_text(text: str, lang: str, *, split_min_chars: int, min_unit_words: int) -> list[tuple[int, int]]:
    """Character spans of the units of one text."""
    if len(text) <= split_min_chars:
        return [(0, len(text))]
    doc = nlp_for(lang)(text)
    spans = _spans(doc, min_unit_words)
    return spans or [(0, len(text))]


def segment_chunk(items: pd.DataFrame, *, split_min_chars: int, min_unit_words: int) -> pd.DataFrame:
    """ITEM chunk -> UNIT chunk (plus the item context columns units carry into outputs)."""
    import numpy as np

    pos: list[int] = []
    cols: dict[str, list] = {"unit_idx": [], "text": [], "start": [], "end": []}
    for i, (text, lang) in enumerate(zip(items["text"].astype(str).tolist(), items["lang"].astype(str).tolist())):
        for idx, (start, end) in enumerate(
            split_text(text, lang, split_min_chars=split_min_chars, min_unit_words=min_unit_words)
        ):
            unit = text[start:end].strip()
            if not unit:
                continue
            pos.append(i)
            cols["unit_idx"].append(idx)
            cols["text"].append(unit)
            cols["start"].append(start)
            cols["end"].append(end)
    # The item's columns repeated by position: what a merge on item_id gives, without the join.
    take = np.asarray(pos, dtype=np.int64)
    context = items[["item_id", "lang", *ITEM_CONTEXT]].iloc[take].reset_index(drop=True)
    units = pd.DataFrame({"item_id": context["item_id"], "unit_idx": cols["unit_idx"], "text": cols["text"],
                          "lang": context["lang"], "start": cols["start"], "end": cols["end"]})
    units = UNIT.conform(units)
    for c in ITEM_CONTEXT:
        units[c] = context[c]
    return units
