import pandas as pd

from feedback_nlp.records import ITEM
from feedback_nlp.segment import segment_chunk, split_text

NOTE = ("Cliente chiama per il router arrivato con una settimana di ritardo. Inoltre la fattura di ottobre "
        "riporta un doppio addebito di 29,90 euro. Ok. Aperto ticket TK-4821 e promesso richiamo entro 48 ore.")


def test_segment_splits_long_texts_into_sentences_and_merges_fragments():
    spans = split_text(NOTE, "it", split_min_chars=100, min_unit_words=4)
    units = [NOTE[s:e] for s, e in spans]
    assert len(units) == 3
    assert units[0].startswith("Cliente chiama") and "fattura" in units[1]
    assert "Ok." in units[1]  # the fragment joined its neighbour
    assert all(NOTE[s:e] == u for (s, e), u in zip(spans, units))


def test_segment_keeps_short_texts_whole():
    text = "Router in ritardo. Fattura sbagliata."
    assert split_text(text, "it", split_min_chars=100, min_unit_words=4) == [(0, len(text))]


def test_segment_chunk_carries_item_context(settings):
    items = ITEM.conform(pd.DataFrame({
        "item_id": ["a", "b"], "source_file": "f.csv", "row": [1, 2], "text": [NOTE, "tutto ok"],
        "created_at": pd.to_datetime(["2026-11-01", None], utc=True), "channel": ["phone", None],
        "source": ["case_note", None], "segment": ["boomer", None], "lang": ["it", "und"],
        "nps": [3, None], "csat": [None, None], "resolution_hours": [None, None], "fcr": [None, None],
    }))
    units = segment_chunk(items, split_min_chars=100, min_unit_words=4)
    assert units["item_id"].tolist() == ["a", "a", "a", "b"]
    assert units["unit_idx"].tolist() == [0, 1, 2, 0]
    assert units["channel"].tolist()[:3] == ["phone"] * 3
    assert units.loc[3, "text"] == "tutto ok"
