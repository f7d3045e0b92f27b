import pandas as pd
import pytest

from feedback_nlp.clean import clean_chunk, clean_text, has_content, normalise, redact, strip_html


def test_clean_strips_html_keeps_text_and_line_breaks():
    out = normalise("<p>Il router <b>non</b> funziona</p><p>da &egrave; tre giorni</p><script>alert(1)</script>")
    assert out == "Il router non funziona\nda è tre giorni"


def test_clean_removes_urls_mentions_and_repeated_whitespace():
    assert normalise("@LumoCare   ancora   nessuna risposta https://t.co/abc?x=1 #vergogna  ") == \
        "ancora nessuna risposta vergogna"


def test_clean_plain_text_untouched_by_html_step():
    assert strip_html("a < b and c > d") == "a < b and c > d"


@pytest.mark.parametrize("text, placeholder", [
    ("scrivimi a mario.rossi@example.com grazie", "[EMAIL]"),
    ("chiamami al +39 333 1234567 dopo le 18", "[PHONE]"),
    ("me liga no (11) 98765-4321 por favor", "[PHONE]"),
    ("appelez le 06 12 34 56 78", "[PHONE]"),
    ("Handy +49 170 1234567", "[PHONE]"),
    ("card 4111 1111 1111 1111 was charged", "[CARD]"),
    ("carta 4111-1111-1111-1111", "[CARD]"),
    ("IBAN IT60X0542811101000000123456 per il rimborso", "[IBAN]"),
    ("mi IBAN es ES91 2100 0418 4502 0005 1332", "[IBAN]"),
])
def test_clean_redacts_personal_data(text, placeholder):
    out = redact(text)
    assert placeholder in out
    digits = sum(ch.isdigit() for ch in out)
    assert digits <= 2, out


@pytest.mark.parametrize("text", [
    "ticket TK-48213 opened 2026-11-03 at 14:32",
    "waited 40 minutes, third call this week",
    "paid 29.99 euros on 12/10/2026",
    "order 123456 shipped",
])
def test_clean_redaction_leaves_ordinary_numbers(text):
    assert redact(text) == text


def test_clean_email_is_redacted_not_treated_as_mention():
    assert clean_text("contact: a.b@example.org") == "contact: [EMAIL]"


def test_clean_chunk_cleans_every_text():
    df = pd.DataFrame({"text": pd.array(["<b>hi</b> @x", "call +39 333 1234567"], dtype="string")})
    out = clean_chunk(df)
    assert out["text"].tolist() == ["hi", "call [PHONE]"]


def test_clean_has_content():
    assert has_content("😡😡")
    assert has_content("ok")
    assert not has_content(" [EMAIL] ... ")
    assert not has_content("")


def _phones_by_full_matcher(text: str) -> list[tuple[int, int]]:
    """The reference the windowed search must equal: phonenumbers over the whole text."""
    import phonenumbers

    from feedback_nlp.clean import PHONE_REGIONS

    return sorted({(m.start, m.end) for r in PHONE_REGIONS
                   for m in phonenumbers.PhoneNumberMatcher(text, r, leniency=phonenumbers.Leniency.VALID)})


@pytest.mark.parametrize("text", [
    "x" * 300 + " chiamate il +39 02 1234 5678 " + "y" * 300,
    "ordine 123456789012 tel 0212345678 del 12/03/2026, rif. 2026-41790 e 345 6789012",
    "pratica 98765 43210 98765 43210 987 (020) 7946 0018 ext. 12 grazie",
    "Rückruf unter 030 12345678 oder 0170-1234567; Kundennr. 4711 0815 2342",
    "preços 1.234,56 € e 2.345,67 €, pedido nº 55512345, ligue (21) 99876-5432",
    "numbers 07700 900123 07700 900124 07700 900125 in a row",
])
def test_windowed_phone_search_finds_what_the_whole_text_matcher_finds(text):
    from feedback_nlp.clean import PHONE, _redact_phones

    expected = _phones_by_full_matcher(text)
    out = _redact_phones(text)
    assert out.count(PHONE) >= 1 or not expected
    # every number the full matcher finds is gone, and nothing outside them was touched
    rebuilt, last = [], 0
    for start, end in expected:
        if start < last:
            continue
        rebuilt += [text[last:start], PHONE]
        last = end
    rebuilt.append(text[last:])
    assert out == "".join(rebuilt) or expected == []


def test_texts_without_long_digit_runs_skip_the_phone_matcher(monkeypatch):
    import phonenumbers

    calls = []
    monkeypatch.setattr(phonenumbers, "PhoneNumberMatcher", lambda *a, **k: calls.append(a) or iter(()))
    assert redact("ordine 4172 del 12 marzo, pagato 19,99 euro alle 10:30, 3 volte") == \
        "ordine 4172 del 12 marzo, pagato 19,99 euro alle 10:30, 3 volte"
    assert calls == []
