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
# Digit groups joined by at most four of the separators phonenumbers' matcher accepts between
# groups (its _VALID_PUNCTUATION, copied): every number it can find lies inside such a run.
_PHONE_PUNCT = "-x\u2010-\u2015\u2212\u30fc\uff0d-\uff0f \u00a0\u00ad\u200b\u2060\u3000()\uff08\uff09\uff3b\uff3d.\\[\\]/~\u2053\u223c\uff5e"
_DIGIT_RUN = re.compile(rf"\d(?:[{_PHONE_PUNCT}]{{0,4}}\d)*")
_PHONE_MIN_DIGITS = 6
_DIGIT = re.compile(r"\d")
_PHONE_PAD = 16
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


def _phone_windows(text: str) -> list[tuple[int, int]]:
    """Stretches of `text` around every run of at least six digits (separators allowed), padded
    to whole words on both sides (the matcher looks at the characters next to a number) and
    never cutting another run. phonenumbers' matcher tries eight regions and costs about a
    millisecond per text; run on these stretches only, it skips the dates, prices and order
    numbers that make up most digits, and the prose around them."""
    runs = [(m.start(), m.end(), sum(ch.isdigit() for ch in m.group())) for m in _DIGIT_RUN.finditer(text)]
    windows: list[list[int]] = []
    for start, end, digits in runs:
        if digits < _PHONE_MIN_DIGITS:
            continue
        lo, hi = max(0, start - _PHONE_PAD), min(len(text), end + _PHONE_PAD)
        while True:  # outwards to whitespace, never cutting a run: half a number may look like one
            new_lo, new_hi = lo, hi
            while new_lo > 0 and not text[new_lo - 1].isspace():
                new_lo -= 1
            while new_hi < len(text) and not text[new_hi].isspace():
                new_hi += 1
            for s, e, _ in runs:
                new_lo = s if s < new_lo < e else new_lo
                new_hi = e if s < new_hi < e else new_hi
            if (new_lo, new_hi) == (lo, hi):
                break
            lo, hi = new_lo, new_hi
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], hi)
        else:
            windows.append([lo, hi])
    return [(lo, hi) for lo, hi in windows]


def _redact_phones(text: str) -> str:
    spans: list[tuple[int, int]] = []
    windows = _phone_windows(text)
    if windows:
        import phonenumbers

        for lo, hi in windows:
            for region in PHONE_REGIONS:
                for m in phonenumbers.PhoneNumberMatcher(text[lo:hi], region, leniency=phonenumbers.Leniency.VALID):
                    spans.append((lo + m.start, lo + m.end))
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
    # The cheap `in` and digit checks skip patterns that cannot match: most feedback has no
    # address and few digits, and a scan that fails still costs a pass over the text.
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    digits = len(_DIGIT.findall(text))
    if digits >= 2:
        text = _IBAN.sub(IBAN, text)
    if digits >= 13:
        text = _redact_cards(text)
    if digits >= _PHONE_MIN_DIGITS:
        text = _redact_phones(text)
    return text


def normalise(text: str) -> str:
    """Markup, URLs, @mentions and repeated whitespace out; line breaks kept for sentences."""
    text = strip_html(text)
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)  # before mentions: an address is not a mention
    if "://" in text or "ww." in text.lower():
        text = _URL.sub(" ", text)
    if "@" in text:
        text = _MENTION.sub(" ", text)
    if "#" in text:
        text = _HASHTAG.sub(r"\1", text)
    text = _SPACES.sub(" ", text)
    if "\n" in text:
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
