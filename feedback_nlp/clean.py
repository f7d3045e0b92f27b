"""Normalise feedback text and redact personal data before anything is stored or shown.

Redaction runs on every text that leaves this step (items, units, quotes, quarantine
previews), so no later step ever sees an e-mail address, phone number, card number or IBAN.
Validation uses well-kept libraries (phonenumbers for phone numbers, python-stdnum's Luhn check
for cards); IBAN-shaped strings are redacted even when their checksum fails, because a typo in
an IBAN is still personal data.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pandas as pd

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IBAN = "[IBAN]"

_TAG_HINT = re.compile(r"<[a-zA-Z/!][^>]*>|&[a-zA-Z#0-9]+;")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_MENTION = re.compile(r"(?<![\w@])@\w+")
_HASHTAG = re.compile(r"(?<!\w)#(\w+)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_CARD_GROUPS = re.compile(r"(?<!\d)\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?!\d)")
_INTL_PHONE = re.compile(r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[ .()-]{0,2}\d){6,13}(?!\d)")
_DIGITS = re.compile(r"\d")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_BLOCK_TAGS = {"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}
PHONE_REGIONS = ("IT", "PT", "BR", "ES", "FR", "DE", "GB", "US")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Markup to plain text; script and style content dropped, entities decoded."""
    if not _TAG_HINT.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return html.unescape("".join(parser.parts))


def _luhn_ok(digits: str) -> bool:
    from stdnum import luhn

    return luhn.is_valid(digits)


def _redact_cards(text: str) -> str:
    text = _CARD_GROUPS.sub(CARD, text)

    def repl(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return CARD if 13 <= len(digits) <= 19 and _luhn_ok(digits) else m.group(0)

    return _CARD.sub(repl, text)


def _redact_phones(text: str) -> str:
    if len(_DIGITS.findall(text)) < 6:
        return text
    import phonenumbers

    spans: list[tuple[int, int]] = []
    for region in PHONE_REGIONS:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            spans.append((m.start, m.end))
    spans.extend((m.start(), m.end()) for m in _INTL_PHONE.finditer(text))
    if not spans:
        return text
    out, last = [], 0
    for start, end in sorted(spans):
        if start < last:  # overlapping match from another region
            if end > last:
                last = end
            continue
        out.append(text[last:start])
        out.append(PHONE)
        last = end
    out.append(text[last:])
    return "".join(out)


def redact(text: str) -> str:
    """Replace e-mail addresses, IBANs, payment card numbers and phone numbers."""
    text = _EMAIL.sub(EMAIL, text)
    text = _IBAN.sub(IBAN, text)
    text = _redact_cards(text)
    return _redact_phones(text)


def normalise(text: str) -> str:
    """Markup, URLs, @mentions and repeated whitespace out; line breaks kept for sentences."""
    text = strip_html(text)
    text = _EMAIL.sub(EMAIL, text)  # before mentions: an address is not a mention
    text = _URL.sub(" ", text)
    text = _MENTION.sub(" ", text)
    text = _HASHTAG.sub(r"\1", text)
    text = _SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n", text)
    return text.strip()


def clean_text(text: str) -> str:
    return redact(normalise(text))


def clean_chunk(items: pd.DataFrame) -> pd.DataFrame:
    """ITEM chunk -> the same chunk with cleaned, redacted text."""
    out = items.copy()
    out["text"] = out["text"].map(clean_text).astype("string")
    return out


def has_content(text: str) -> bool:
    """Whether anything is left to classify once placeholders and punctuation are removed."""
    stripped = re.sub(r"\[(EMAIL|PHONE|CARD|IBAN)\]", " ", text)
    return any(ch.isalnum() for ch in stripped) or any(ord(ch) > 0x2000 for ch in stripped)
