"""Readers of labelled data in its publishers' layouts, and the mapping files."""

import json

import pandas as pd
import pytest

from conftest import ROOT, write
from feedback_nlp import sources
from feedback_nlp.errors import InputError, MissingDataError

BENCHMARKS = sources.benchmarks_root()


def test_sources_umsab_reads_text_and_label_files_per_language(tmp_path):
    write(tmp_path / "umsab" / "italian" / "train_text.txt", "che schifo @user\nok\nbellissimo http://t.co/x")
    write(tmp_path / "umsab" / "italian" / "train_labels.txt", "0\n1\n2")
    df = sources.read_umsab(tmp_path / "umsab", split="train", languages=["italian"], feedback="no")
    assert df["sentiment"].tolist() == ["negative", "neutral", "positive"]
    assert df["text"].tolist() == ["che schifo", "ok", "bellissimo"]  # cleaned as a run cleans
    assert set(df["lang"]) == {"it"} and set(df["feedback"]) == {"no"} and set(df["stage"]) == {""}
    assert list(df.columns) == sources.ROWS
    write(tmp_path / "umsab" / "italian" / "val_text.txt", "a\nb")
    write(tmp_path / "umsab" / "italian" / "val_labels.txt", "0")
    with pytest.raises(InputError, match=r"\[E531\].*2 texts but 1 labels"):
        sources.read_umsab(tmp_path / "umsab", split="val", languages=["italian"])


def test_sources_a_missing_set_is_a_missing_data_error_naming_it(tmp_path):
    with pytest.raises(MissingDataError, match=r"\[E530\].*UMSAB language folder 'german'.*--benchmarks") as e:
        sources.read_umsab(tmp_path / "umsab", split="train", languages=["german"])
    assert e.value.exit_code == 3
    with pytest.raises(MissingDataError, match=r"\[E530\].*Banking77 train.csv"):
        sources.read_banking77(tmp_path, mapping={"stages": {}, "left_out": [], "path": "m"})


def test_sources_benchmarks_root_follows_the_option_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(sources.BENCHMARKS_ENV, raising=False)
    assert sources.benchmarks_root() == ROOT.parent / "shared" / "benchmarks"
    monkeypatch.setenv(sources.BENCHMARKS_ENV, str(tmp_path))
    assert sources.benchmarks_root() == tmp_path.resolve()
    assert sources.benchmarks_root(tmp_path / "x") == (tmp_path / "x").resolve()


def _mapping(tmp_path, body):
    return sources.load_mapping(write(tmp_path / "m.yaml", body), ["usage", "billing", "support"])


def test_sources_mapping_refuses_unknown_stages_and_labels_mapped_twice(tmp_path):
    with pytest.raises(InputError, match=r"\[E532\].*'churn' is not a stage of the map"):
        _mapping(tmp_path, "stages:\n  churn: [a]\n")
    with pytest.raises(InputError, match=r"\[E532\].*'a' is mapped twice"):
        _mapping(tmp_path, "stages:\n  usage: [a]\n  billing: [a]\n")


def test_sources_banking77_intents_become_subclasses_of_their_stage(tmp_path):
    write(tmp_path / "banking77" / "train.csv",
          "text,category\nmy card was charged twice,transaction_charged_twice\ncard not working,card_not_working\n")
    m = _mapping(tmp_path, "stages:\n  billing: [transaction_charged_twice]\n  usage: [card_not_working]\n")
    df = sources.read_banking77(tmp_path, mapping=m)
    assert df["stage"].tolist() == ["billing::transaction_charged_twice", "usage::card_not_working"]
    assert set(df["feedback"]) == {"yes"} and set(df["sentiment"]) == {""}
    m2 = _mapping(tmp_path, "stages:\n  billing: [transaction_charged_twice]\n")
    with pytest.raises(InputError, match=r"\[E533\].*\['card_not_working'\] are neither mapped nor left out"):
        sources.read_banking77(tmp_path, mapping=m2)


def test_sources_shipped_banking77_mapping_covers_every_intent_once(journey):
    m = sources.load_mapping("configs/mappings/banking77.yaml", journey.stage_ids)
    assert len(m["stages"]) == 77 and not m["left_out"]
    assert set(m["stages"].values()) <= set(journey.stage_ids)
    # every stage but support gets intents (no request is about the care itself)
    assert set(m["stages"].values()) == set(journey.stage_ids) - {"support"}
    categories = BENCHMARKS / "banking77" / "categories.json"
    if categories.is_file():
        assert set(json.loads(categories.read_text())) == set(m["stages"])


def test_sources_germeval_relevance_is_feedback_and_agreeing_aspects_a_stage(tmp_path):
    lines = [
        "u1\tZug 30 Minuten zu spät\ttrue\tnegative\tZugfahrt#Pünktlichkeit:negative",
        "u2\tfragment ohne felder",  # the published file has one such line: skipped
        "u3\tTicket am Automaten gekauft, der Zug war pünktlich\ttrue\tpositive\t"
        "Ticketkauf#Haupt:neutral Zugfahrt#Pünktlichkeit:positive",
        "u4\tDioden im Angebot\tfalse\tneutral",
        "u5\tDie Bahn halt\ttrue\tneutral\tAllgemein#Haupt:neutral",
    ]
    write(tmp_path / "germeval2017" / "dev.tsv", "\n".join(lines) + "\n")
    m = sources.load_mapping(ROOT / "configs" / "mappings" / "germeval2017.yaml",
                             ["awareness", "purchase", "usage", "support"])
    df = sources.read_germeval(tmp_path, mapping=m)
    assert df["row"].tolist() == [1, 3, 4, 5]
    assert df["feedback"].tolist() == ["yes", "yes", "no", "yes"]
    assert df["stage"].tolist() == ["usage", "", "", ""]  # disagreeing aspects, none mapped, general
    assert df["sentiment"].tolist() == ["negative", "positive", "neutral", "neutral"]


def test_sources_social_rows_are_checked_with_file_row_and_field(tmp_path, journey):
    f = write(tmp_path / "it.csv", "text,feedback,stage,sentiment,industry\nciao,no,usage,neutral,personal\n")
    with pytest.raises(InputError, match=r"\[E534\].*it.csv, row 1, field 'stage'"):
        sources.read_social(f, stage_ids=journey.stage_ids)
    write(f, "text,feedback,stage,sentiment,industry\nciao,maybe,,neutral,personal\n")
    with pytest.raises(InputError, match=r"\[E534\].*row 1, field 'feedback'"):
        sources.read_social(f, stage_ids=journey.stage_ids)


def test_sources_shipped_social_corpus_is_half_feedback_in_six_languages(journey):
    df = sources.read_social(ROOT / "corpora" / "social", stage_ids=journey.stage_ids)
    assert len(df) == 1920
    assert df["lang"].value_counts().to_dict() == {lang: 320 for lang in ("de", "en", "es", "fr", "it", "pt")}
    assert (df["feedback"] == "yes").sum() == 960
    fb = df[df["feedback"] == "yes"]
    assert fb["stage"].value_counts().min() == 120  # 20 per stage and language
    assert not df["text"].duplicated().any()


def test_sources_labelled_corpus_rows_are_feedback(settings, columns, tmp_path):
    f = write(tmp_path / "l.csv", "text,stage,sentiment\nla fattura è sbagliata,billing,negative\n")
    df = sources.read_labelled_corpus([f], columns=columns, settings=settings)
    assert df.iloc[0][["stage", "sentiment", "feedback", "lang"]].tolist() == ["billing", "negative", "yes", "it"]


def test_sources_describe_counts_label_kinds():
    df = pd.DataFrame({c: [""] * 3 for c in sources.ROWS})
    df["stage"] = ["usage", "", ""]
    df["sentiment"] = ["negative", "neutral", ""]
    df["lang"] = ["it", "it", "de"]
    d = sources.describe(df)
    assert d == {"rows": 3, "with_stage": 1, "with_sentiment": 2, "with_feedback": 0, "languages": {"de": 1, "it": 2}}


def test_the_bank_maps_mapping_places_every_banking77_intent_once():
    """configs/mappings/banking77_bank.yaml (benchmarks/few_shot.py's ground truth) covers the
    same 77 intents as the default map's mapping, each in a stage of configs/journeys/bank.yaml."""
    from feedback_nlp.config import load_journey_map, project_root
    from feedback_nlp.sources import load_mapping

    root = project_root() / "configs"
    bank = load_journey_map(root / "journeys" / "bank.yaml")
    default = load_journey_map(root / "journeys" / "contact_centre.yaml")
    ours = load_mapping(root / "mappings" / "banking77_bank.yaml", bank.stage_ids)
    theirs = load_mapping(root / "mappings" / "banking77.yaml", default.stage_ids)
    assert set(ours["stages"]) == set(theirs["stages"]) and len(ours["stages"]) == 77
    assert set(ours["stages"].values()) == set(bank.stage_ids)
