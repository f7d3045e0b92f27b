"""Effort signals: rule matchers per language, spans, negatives, and aggregation across chunks.

Expected values are read off the sentences themselves (what the customer stated), never off the
extractor's output; spans are checked against the text by offset.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from feedback_nlp.effort import (
    ALL,
    EFFORT,
    ScoreWeights,
    combine_effort,
    effort_chunk,
    effort_partial,
    effort_score,
    effort_summary,
    extract,
    load_weights,
    rules_for,
)
from feedback_nlp.errors import FeedbackError

H, D, W = 60.0, 1440.0, 10080.0

# (lang, text, stated waits in minutes, largest first not required)
WAITS = [
    ("it", "Sono rimasto in linea quaranta minuti prima di parlare con qualcuno", [40]),
    ("it", "Il rimborso è arrivato dopo tre settimane", [3 * W]),
    ("it", "Mi hanno tenuto in attesa un'ora e mezza, poi è caduta la linea", [90]),
    ("it", "Aspetto il tecnico da 2 giorni", [2 * D]),
    ("it", "Dopo mezz'ora di musichetta ho riattaccato", [30]),
    ("it", "Ci sono voluti 1h30 per parlare con un umano", [90]),
    ("it", "Attivazione completata in ventotto giorni, assurdo", [28 * D]),
    ("it", "Il modem è arrivato una settimana dopo", [W]),
    ("it", "Attesa in coda: 45 min e poi nessuno", [45]),
    ("pt", "Fiquei duas semanas sem internet à espera do técnico", [2 * W]),
    ("pt", "Estive 35 minutos em espera no telefone", [35]),
    ("pt", "O reembolso demorou uma hora e meia a ser aprovado na loja", [90]),
    ("pt", "Há 4 dias que aguardo a ativação", [4 * D]),
    ("pt", "Em meia hora resolveram tudo", [30]),
    ("pt", "Esperei vinte e cinco minutos pela chamada de volta", [25]),
    ("en", "Sat on hold for 50 minutes listening to the same jingle", [50]),
    ("en", "The replacement took two weeks to arrive", [2 * W]),
    ("en", "It took them a couple of hours to reply in the chat", [120]),
    ("en", "Three days without broadband and counting", [3 * D]),
    ("en", "I was kept waiting 1h15 before anyone answered", [75]),
    ("en", "Got it sorted in twenty-five minutes flat", [25]),
    ("en", "After an hour and a half in the queue I gave up", [90]),
    ("es", "Llevo tres días sin línea fija", [3 * D]),
    ("es", "Me tuvieron media hora al teléfono para nada", [30]),
    ("es", "Tardaron dos semanas en mandar al técnico", [2 * W]),
    ("es", "Estuve en espera 40 minutos", [40]),
    ("es", "La respuesta llegó al cabo de veinticinco días", [25 * D]),
    ("es", "Una hora y media para cambiar una tarifa", [90]),
    ("fr", "J'ai patienté une heure au téléphone", [60]),
    ("fr", "Trois semaines que j'attends mon remboursement", [3 * W]),
    ("fr", "Le technicien est passé au bout de quinze jours", [15 * D]),
    ("fr", "Une demi-heure de musique d'attente, merci bien", [30]),
    ("fr", "Après 1h30 en ligne, j'ai raccroché", [90]),
    ("fr", "Vingt-cinq minutes pour obtenir un conseiller", [25]),
    ("de", "Ich hing zwei Stunden in der Warteschleife", [120]),
    ("de", "Seit zwei Wochen warte ich auf den Techniker", [2 * W]),
    ("de", "Nach einer halben Stunde wurde ich aus der Leitung geworfen", [30]),
    ("de", "Die Erstattung hat drei Monate gedauert", [3 * 43200]),
    ("de", "Fünfundzwanzig Minuten für eine einfache Frage", [25]),
    ("de", "Anderthalb Stunden am Telefon verbracht", [90]),
]


@pytest.mark.parametrize("lang,text,minutes", WAITS)
def test_effort_extracts_stated_waits(lang, text, minutes):
    s = extract(text, lang)
    assert sorted(d.minutes for d in s.durations) == pytest.approx(sorted(minutes))
    for d in s.durations:
        assert text[d.start:d.end] == d.text
        assert d.minutes == pytest.approx(d.value * {"minute": 1, "hour": H, "day": D, "week": W,
                                                     "month": 43200, "year": 525600}[d.unit])


@pytest.mark.parametrize("lang,text,span,value,unit", [
    ("it", "ho aspettato tre giorni", "tre giorni", 3, "day"),
    ("pt", "já são duas semanas", "duas semanas", 2, "week"),
    ("en", "forty minutes on the phone", "forty minutes", 40, "minute"),
    ("es", "nos dieron una hora y media de plazo", "una hora y media", 1.5, "hour"),
    ("fr", "il a fallu une heure", "une heure", 1, "hour"),
    ("de", "zwei Wochen ohne Anschluss", "zwei Wochen", 2, "week"),
    ("it", "ci vogliono 2,5 ore", "2,5 ore", 2.5, "hour"),
    ("en", "a fortnight later", "a fortnight", 2, "week"),
])
def test_effort_duration_value_unit_and_span(lang, text, span, value, unit):
    (d,) = extract(text, lang).durations
    assert (d.text, d.value, d.unit) == (span, pytest.approx(value), unit)
    assert (d.start, d.end) == (text.index(span), text.index(span) + len(span))


@pytest.mark.parametrize("lang,text", [
    ("it", "Fattura del 12/03/2024 di 39,90 euro, pratica 558812"),
    ("it", "Assistenza 24/7 e 3 GB in più"),
    ("it", "Pago 24,90 al mese con 100 giga"),
    ("it", "La linea cade ogni 5 minuti"),
    ("it", "Il vincolo è di 24 mesi"),
    ("pt", "Pagamento de 19,99 € no dia 5 de março, ticket n.º 4471"),
    ("pt", "Apoio 24 horas por dia e 50 GB de dados"),
    ("pt", "Sou cliente há 12 anos"),
    ("en", "Invoice 88231 dated 03/04/2025 for £32.50"),
    ("en", "24/7 support and 3 GB extra for £5 a month"),
    ("en", "The connection drops every 10 minutes"),
    ("en", "My mum is 80 years old and was on a 24-month contract"),
    ("en", "One day the box just stopped working"),
    ("es", "Factura del 3 de mayo por 45 euros, incidencia 99812"),
    ("es", "Atención 24 horas al día y 10 GB gratis"),
    ("es", "Tengo 67 años y no entiendo la factura"),
    ("fr", "Facture du 14/02 de 29,99 €, dossier 77120"),
    ("fr", "Service 24h/24 et 7j/7, 100 Go"),
    ("fr", "Le technicien vient à 14h30"),
    ("fr", "Ça coupe toutes les 10 minutes"),
    ("de", "Rechnung vom 03.05. über 49,99 €, Ticket 31337"),
    ("de", "Hotline 24 Stunden am Tag, 5 GB Datenvolumen"),
    ("de", "Kunde seit 15 Jahren, Mindestlaufzeit von 24 Monaten"),
])
def test_effort_dates_prices_ids_and_non_waits_are_not_waits(lang, text):
    assert extract(text, lang).durations == []


@pytest.mark.parametrize("lang,text,count", [
    ("it", "È la quarta volta che chiamo per lo stesso guasto", 4),
    ("it", "Ho telefonato sei volte e nessuno sa niente", 6),
    ("it", "ennesima chiamata al servizio clienti", None),
    ("it", "ho dovuto richiamare il giorno dopo", None),
    ("pt", "Já telefonei quatro vezes para o apoio", 4),
    ("pt", "É a segunda vez que ligo por causa da fatura", 2),
    ("pt", "Voltei a ligar e nada", None),
    ("en", "This is the fifth time I've phoned about it", 5),
    ("en", "I have emailed them 3 times already", 3),
    ("en", "Rang them twice yesterday", 2),
    ("en", "Four calls later nothing has changed", 4),
    ("es", "Es la segunda vez que escribo al soporte", 2),
    ("es", "He llamado siete veces", 7),
    ("es", "Volví a llamar por la tarde", None),
    ("fr", "C'est la quatrième fois que j'appelle", 4),
    ("fr", "J'ai écrit trois fois au service client", 3),
    ("fr", "J'ai dû rappeler le lendemain", None),
    ("de", "Ich habe jetzt dreimal angerufen", 3),
    ("de", "Zum zweiten Mal geschrieben, keine Reaktion", 2),
    ("de", "Vier Anrufe und zwei Mails später", 4),
])
def test_effort_repeat_contacts_with_count(lang, text, count):
    s = extract(text, lang)
    assert s.repeats, text
    assert s.repeat_count == count
    for r in s.repeats:
        assert text[r.start:r.end] == r.text


@pytest.mark.parametrize("lang,text", [
    ("it", "La prima volta che ho chiamato hanno risolto subito"),
    ("en", "First time I called they fixed it"),
    ("es", "Solo llamé una vez y me lo arreglaron"),
    ("it", "Rimborso accreditato senza che dovessi richiamare"),
    ("en", "Sorted without having to call again"),
    ("de", "Die Leitung fällt dreimal pro Woche aus"),
])
def test_effort_first_contacts_and_negated_repeats_are_not_repeats(lang, text):
    assert extract(text, lang).repeats == []


@pytest.mark.parametrize("lang,text", [
    ("it", "Mi hanno passato da un reparto all'altro per un'ora"),
    ("it", "Sono stato trasferito tre volte"),
    ("pt", "Fui transferida para outro departamento"),
    ("en", "They transferred me to billing and then back again"),
    ("en", "I got bounced around between departments"),
    ("es", "Me derivaron a otro departamento"),
    ("es", "Me pasaron de un operador a otro"),
    ("fr", "On m'a transféré vers le service technique"),
    ("fr", "Baladé de conseiller en conseiller"),
    ("de", "Ich wurde dreimal weiterverbunden"),
    ("de", "Von einer Abteilung zur nächsten geschickt"),
])
def test_effort_transfers(lang, text):
    (t, *_) = extract(text, lang).transfers
    assert text[t.start:t.end] == t.text


@pytest.mark.parametrize("lang,text", [
    ("it", "ancora niente, il guasto c'è ancora"),
    ("it", "Nessuna soluzione dopo un mese"),
    ("pt", "A avaria continua sem resolver"),
    ("pt", "Até hoje nada"),
    ("en", "Still not fixed after all that"),
    ("en", "Nobody has resolved anything"),
    ("en", "no reply to my complaint"),
    ("es", "Sigue sin funcionar la línea"),
    ("es", "Nadie me ha solucionado nada"),
    ("fr", "Toujours rien depuis lundi"),
    ("fr", "Aucune solution proposée"),
    ("de", "Das Problem ist immer noch nicht gelöst"),
    ("de", "Bis heute keine Antwort"),
])
def test_effort_unresolved_outcomes(lang, text):
    (u, *_) = extract(text, lang).unresolved
    assert text[u.start:u.end] == u.text


@pytest.mark.parametrize("lang,text", [
    ("it", "Risolto in dieci minuti, gentilissimi"),
    ("en", "No problems, fixed in five minutes"),
    ("fr", "Problème réglé dès le premier appel"),
    ("de", "Ohne Probleme geliefert und alles erledigt"),
])
def test_effort_resolved_is_not_unresolved(lang, text):
    assert extract(text, lang).unresolved == []


def test_effort_accents_and_apostrophes_are_folded():
    plain = extract("ja liguei cinco vezes e ainda nao resolveram", "pt")
    accented = extract("já liguei cinco vezes e ainda não resolveram", "pt")
    assert plain.repeat_count == accented.repeat_count == 5
    assert bool(plain.unresolved) and bool(accented.unresolved)
    assert extract("mezz\u2019ora di attesa", "it").durations[0].minutes == 30


@pytest.mark.parametrize("lang", ["und", "nl", "", None, "xx"])
def test_effort_unsupported_language_yields_nothing(lang):
    s = extract("third time I call, 40 minutes on hold, still not solved", lang)
    assert not (s.durations or s.repeats or s.transfers or s.unresolved)


def _units() -> pd.DataFrame:
    rows = [
        ("a", "support", "en", "Forty minutes on hold, third time I call, still not fixed", "phone_agent;ivr", 2.0, False),
        ("a", "billing", "en", "Refund took two weeks", "refund", 2.0, False),
        ("b", "support", "it", "Trasferito tre volte, un'ora di attesa", "phone_agent", 5.0, True),
        ("c", "support", "es", "Me atendieron en cinco minutos, genial", "chat_agent", None, True),
        ("d", "support", "fr", "Une heure d'attente et toujours rien", "phone_agent", None, None),
        ("e", "billing", "de", "Seit drei Wochen keine Erstattung, fünfmal angerufen", "refund;phone_agent", 48.0, False),
        ("f", "support", "pt", "Esperei uma hora", "", None, None),
        ("g", "usage", "und", "40 minutes", None, None, None),
        ("h", "support", "en", "Waited an hour and got it sorted", "phone_agent", 1.0, True),
        ("i", "billing", "it", "Rimborso in 40 minuti", "refund", None, None),
        ("j", "support", "en", "Quick answer, lovely agent", "chat_agent", 0.5, True),
    ]
    df = pd.DataFrame(rows, columns=["item_id", "stage", "lang", "text", "touchpoints", "resolution_hours", "fcr"])
    df["unit_idx"] = df.groupby("item_id").cumcount()
    df["resolution_hours"] = df["resolution_hours"].astype("Float64")
    df["fcr"] = df["fcr"].astype("boolean")
    return df


def test_effort_chunk_columns_and_dtypes():
    units = _units()
    out = effort_chunk(units)
    assert len(out) == len(units) and list(out.columns[: len(units.columns)]) == list(units.columns)
    for col, dtype in EFFORT.columns.items():
        assert str(out[col].dtype) == dtype, col
    first = out.iloc[0]
    assert first["wait_minutes"] == 40 and first["wait_span"] == "Forty minutes"
    assert first["repeat_contact"] and first["repeat_count"] == 3
    assert first["unresolved"] and not first["transfer"]
    und = out[out["lang"] == "und"].iloc[0]
    assert math.isnan(und["wait_minutes"]) and not und["repeat_contact"] and und["effort_score"] == 0
    assert out["effort_score"].between(0, 1).all()


def test_effort_score_follows_the_documented_formula():
    w = ScoreWeights(wait_half_minutes=60, repeat_weight=0.5, transfer_weight=0.4, unresolved_weight=0.6)
    assert effort_score(None, False, None, False, False, w) == 0
    assert effort_score(60, False, None, False, False, w) == pytest.approx(0.5)
    # 60 min (0.5), a third contact (0.75), a transfer (0.4), unresolved (0.6): noisy-OR
    expected = 1 - (1 - 0.5) * (1 - 0.75) * (1 - 0.4) * (1 - 0.6)
    assert effort_score(60, True, 3, True, True, w) == pytest.approx(expected)
    assert effort_score(600, False, None, False, False, w) > effort_score(60, False, None, False, False, w)
    assert effort_score(None, True, None, False, False, w) == effort_score(None, True, 2, False, False, w)


def test_effort_weights_file_is_valid_and_checked():
    w = load_weights()
    assert w.wait_half_minutes > 0 and 0 <= w.repeat_weight <= 1
    with pytest.raises(FeedbackError, match="E1103"):
        ScoreWeights(transfer_weight=1.5)


def test_effort_aggregation_across_chunks_equals_one_pass():
    units = _units()
    one = effort_summary(effort_partial(units, ["stage"]))
    parts = [effort_partial(units.iloc[i:i + 3], ["stage"]) for i in range(0, len(units), 3)]
    chunked = effort_summary(combine_effort(parts))
    concatenated = effort_summary(pd.concat(parts, ignore_index=True))
    pd.testing.assert_frame_equal(one, chunked)
    pd.testing.assert_frame_equal(one, concatenated)


def test_effort_summary_matches_direct_computation():
    units = effort_chunk(_units())
    summary = effort_summary(effort_partial(units, ["stage"]))
    for stage, g in units.groupby("stage"):
        row = summary[(summary["stage"] == stage) & (summary["touchpoint"] == ALL)].iloc[0]
        waits = g["wait_minutes"].dropna()
        assert row["units"] == len(g)
        assert row["units_with_wait"] == len(waits)
        if len(waits):
            assert row["median_wait_minutes"] == pytest.approx(float(np.median(waits)))
        else:
            assert math.isnan(row["median_wait_minutes"])
        assert row["repeat_share"] == pytest.approx(g["repeat_contact"].mean())
        assert row["effort_mean"] == pytest.approx(g["effort_score"].mean())
        rh = g.drop_duplicates("item_id")["resolution_hours"].dropna()
        assert (math.isnan(row["resolution_hours_mean"]) if rh.empty
                else row["resolution_hours_mean"] == pytest.approx(float(rh.mean())))
    # per touchpoint: a unit counts once under each touchpoint it mentions
    tp = summary[(summary["stage"] == "support") & (summary["touchpoint"] == "phone_agent")].iloc[0]
    mentions = units[(units["stage"] == "support") & units["touchpoints"].fillna("").str.contains("phone_agent")]
    assert tp["units"] == len(mentions)
    assert tp["median_wait_minutes"] == pytest.approx(float(np.median(mentions["wait_minutes"].dropna())))
    # collapsed over stages: only the all-units rows, so nothing is double counted
    overall = effort_summary(effort_partial(units, ["stage"]), by=["touchpoint"])
    assert overall.set_index("touchpoint").loc[ALL, "units"] == len(units)


def test_effort_partial_without_touchpoints_or_kpis():
    units = _units().drop(columns=["touchpoints", "resolution_hours", "fcr"])
    summary = effort_summary(effort_partial(units, ["stage"]))
    assert set(summary["touchpoint"]) == {ALL}
    assert summary["fcr_rate"].isna().all() and summary["resolution_hours_mean"].isna().all()
    assert effort_partial(units.iloc[0:0], ["stage"]).empty


def test_effort_rule_file_errors_name_the_file(tmp_path):
    (tmp_path / "en.yaml").write_text("language: en\nbogus: 1\n", encoding="utf-8")
    with pytest.raises(FeedbackError, match=r"E1101.*en\.yaml.*bogus"):
        rules_for("en", tmp_path)
    (tmp_path / "it.yaml").write_text(
        "units: {minuti: minute}\npatterns:\n  duration:\n    - [{IS: nowhere}]\n", encoding="utf-8")
    with pytest.raises(FeedbackError, match=r"E1102.*it\.yaml.*patterns\.duration\[0\].*nowhere"):
        rules_for("it", tmp_path)


def test_effort_yaml_words_stay_words(tmp_path):
    """YAML 1.1 would read `no` and `on` as booleans; the rule loader keeps them as words."""
    (tmp_path / "en.yaml").write_text(
        "patterns:\n  unresolved:\n    - [{IN: [no, off]}, answer]\n", encoding="utf-8")
    rules = rules_for("en", tmp_path)
    doc = next(rules.docs(["no answer at all"]))
    assert [m.text for m in rules.extract_doc(doc).unresolved] == ["no answer"]


def test_effort_prefilter_never_changes_results(monkeypatch):
    """`candidate_groups` skips the Matchers of patterns that cannot match; running every
    Matcher on every doc must give the same signals."""
    texts = {lang: [] for lang in ("it", "pt", "en", "es", "fr", "de")}
    for lang, text, *_ in WAITS:
        texts[lang].append(text)
    for lang, path in [(lang, f"corpora/seed/{lang}.csv") for lang in texts]:
        from feedback_nlp.config import project_root

        texts[lang] += pd.read_csv(project_root() / path)["text"].astype(str).head(120).tolist()
    for lang, batch in texts.items():
        rules = rules_for(lang)
        filtered = [rules.extract_doc(d) for d in rules.docs(batch)]
        monkeypatch.setattr(rules, "candidate_groups", lambda doc, r=rules: [(lb, f) for lb, _, f, _p in r._groups])
        forced = [rules.extract_doc(d) for d in rules.docs(batch)]
        monkeypatch.undo()
        assert filtered == forced
        assert any(s.durations for s in filtered)


def _shipped_texts(lang: str) -> list[str]:
    """Every shipped text of a language (seed, effort test set), and every example text."""
    import json

    from feedback_nlp.config import project_root

    root = project_root() / "corpora"
    texts = pd.read_csv(root / "seed" / f"{lang}.csv")["text"].astype(str).tolist()
    texts += [json.loads(line)["text"] for line in (root / "effort_test" / f"{lang}.jsonl").read_text("utf-8").splitlines()]
    for path in sorted((root / "examples").iterdir()):
        if path.suffix == ".csv":
            texts += pd.read_csv(path)["text"].dropna().astype(str).tolist()
        elif path.suffix == ".jsonl":
            for line in path.read_text("utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("text"), str):
                    texts.append(row["text"])
    return texts


@pytest.mark.parametrize("lang", ["it", "pt", "en", "es", "fr", "de"])
def test_effort_word_flags_match_like_the_predicates(lang, monkeypatch):
    """Word classes run as lexeme flags; the predicate Matchers (spaCy's IN and REGEX) are the
    reference, and must find the same signals on every shipped text."""
    rules = rules_for(lang)
    assert rules.word_flags > 10  # the flags are in use
    texts = _shipped_texts(lang)
    docs = list(rules.docs(texts))
    flagged = [rules.extract_doc(d) for d in docs]
    monkeypatch.setattr(rules, "use_flags", False)
    reference = [rules.extract_doc(d) for d in docs]
    assert flagged == reference
    assert sum(bool(s.durations or s.repeats or s.transfers or s.unresolved) for s in flagged) > 50


def test_effort_exception_norms_send_a_doc_to_the_predicates(monkeypatch):
    """English "can't" is "ca" + "n't" with the exception norms "can" and "not": flags computed
    from the lexemes "ca" and "n't" miss the word classes holding "can" and "not", so such a doc
    goes through the predicate Matchers."""
    from spacy.attrs import ORTH

    rules = rules_for("en")
    text = "Exit fees should be illegal when the provider can't even deliver the speed it promised."
    doc = next(rules.docs([text]))
    assert rules._uses_predicates(doc, ORTH)
    assert not rules._uses_predicates(next(rules.docs(["I waited 40 minutes on hold."])), ORTH)
    assert [m.text for m in rules.extract_doc(doc).unresolved] == ["can't even deliver"]
    monkeypatch.setattr(rules, "_ambiguous", frozenset())  # flags alone: the mention is lost
    assert rules.extract_doc(doc).unresolved == []
