import pandas as pd
import pytest

from feedback_nlp.language import detect, language_chunk

SAMPLES = {
    "it": "Ho aspettato quaranta minuti al telefono e nessuno mi ha risposto",
    "pt": "A fatura deste mês veio com um valor muito mais alto do que o normal",
    "en": "The technician never showed up for the installation appointment",
    "es": "El repartidor dejó el paquete en la puerta y estaba roto",
    "fr": "Le conseiller au téléphone était très aimable et a résolu mon problème",
    "de": "Die Rechnung ist viel zu hoch und niemand kann es mir erklären",
}


def _detect(texts, settings):
    return detect(texts, detect_languages=settings.detect_languages, supported=settings.languages,
                  min_confidence=settings.language_min_confidence)


def test_language_detects_the_six_languages(settings):
    assert _detect(list(SAMPLES.values()), settings) == list(SAMPLES)


@pytest.mark.parametrize("text", ["😡😡😡", "ok", "123 456", "Dit is echt een slechte service van jullie bedrijf"])
def test_language_unsure_or_unsupported_is_und(settings, text):
    assert _detect([text], settings) == ["und"]


def test_language_keeps_a_supported_language_given_by_the_input(settings):
    items = pd.DataFrame({"text": ["the bill is wrong", "la factura está mal"], "lang": pd.array(["it", None], dtype="string")})
    out = language_chunk(items, detect_languages=settings.detect_languages, supported=settings.languages,
                         min_confidence=settings.language_min_confidence)
    assert out["lang"].tolist() == ["it", "es"]


def test_language_head_cuts_at_a_space_within_the_limit():
    from feedback_nlp.language import head

    assert head("uno due tre quattro", 9) == "uno due"
    assert head("uno due", 300) == "uno due"
    assert head("unoduetrequattro", 5) == "unodu"
    assert head("uno due tre", 0) == "uno due tre"


def test_language_is_judged_by_the_head_of_a_long_text(settings):
    text = SAMPLES["it"] + ". " + " ".join([SAMPLES["en"]] * 12)
    kwargs = dict(detect_languages=settings.detect_languages, supported=settings.languages,
                  min_confidence=settings.language_min_confidence)
    assert detect([text], **kwargs, max_chars=len(SAMPLES["it"]) + 2) == ["it"]
    assert detect([text], **kwargs, max_chars=0) == ["en"]


def test_language_long_heads_go_to_the_low_accuracy_detector_with_the_same_answers(settings, monkeypatch):
    import feedback_nlp.language as language

    kwargs = dict(detect_languages=settings.detect_languages, supported=settings.languages,
                  min_confidence=settings.language_min_confidence)
    texts = [t + ". " + t for t in SAMPLES.values()] + ["ok"]
    calls = []
    real = language._detector
    monkeypatch.setattr(language, "_detector", lambda codes, low=False: calls.append(low) or real(codes, low))
    assert detect(texts, **kwargs, low_accuracy_min_chars=100) == [*SAMPLES, "und"]
    assert sorted(calls) == [False, True]  # "ok" to the full detector, the rest to the low one
    calls.clear()
    assert detect(texts, **kwargs, low_accuracy_min_chars=0) == [*SAMPLES, "und"]
    assert calls == [False]
