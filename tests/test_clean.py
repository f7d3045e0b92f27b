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
