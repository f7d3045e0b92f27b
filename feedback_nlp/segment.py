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
    rows = []
    for item in items.itertuples(index=False):
        text = str(item.text)
        for idx, (start, end) in enumerate(
            split_text(text, str(item.lang), split_min_chars=split_min_chars, min_unit_words=min_unit_words)
        ):
            unit = text[start:end].strip()
            if not unit:
                continue
            rows.append((item.item_id, idx, unit, item.lang, start, end))
    units = pd.DataFrame(rows, columns=list(UNIT.columns))
    units = UNIT.conform(units)
    context = items[["item_id", *ITEM_CONTEXT]]
    return units.merge(context, on="item_id", how="left", validate="many_to_one")
