import json

import pandas as pd
import pytest

from conftest import FakeEmbedder, write
from feedback_nlp.errors import FeedbackError, InputError
from feedback_nlp.pipeline import run_batch


def test_pipeline_refuses_model_trained_on_another_embedder(tmp_path, settings, columns, journey, model):
    p = write(tmp_path / "a.csv", "text\nciao\n")
    with pytest.raises(FeedbackError, match="E300"):
        run_batch([p], journey=journey, settings=settings, columns=columns, model=model,
                  embedder=FakeEmbedder(), out_dir=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_pipeline_failed_run_leaves_previous_output_untouched(tmp_path, settings, columns, journey, model, embedder):
    good = write(tmp_path / "in" / "a.csv", "id,text\n1,la fattura è sbagliata\n")
    out = tmp_path / "out"
    run_batch([good], journey=journey, settings=settings, columns=columns, model=model, embedder=embedder,
              out_dir=out, quiet=True)
    before = (out / "journey_map.json").read_text()
    bad = write(tmp_path / "in2" / "b.csv", "id,comment_x\n1,hello\n")  # no text column
    with pytest.raises(InputError, match="E110"):
        run_batch([good, bad], journey=journey, settings=settings, columns=columns, model=model,
                  embedder=embedder, out_dir=out, quiet=True)
    assert (out / "journey_map.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_pipeline_counts_add_up_and_bound_memory_by_chunks(tmp_path, settings, columns, journey, model, embedder):
    rows = ["id,text,channel"]
    for i in range(30):
        rows.append(f"{i},\"Il tecnico non si è presentato all'appuntamento numero {i}\",phone")
    rows += ["30,,chat", "5,duplicato,chat", "31,https://t.co/only-a-link,social"]
    p = write(tmp_path / "a.csv", "\n".join(rows) + "\n")
    res = run_batch([p], journey=journey, settings=settings.replace(chunk_size=7), columns=columns, model=model,
                    embedder=embedder, out_dir=tmp_path / "out", quiet=True)
    c = res.counts
    assert c.rows_read == 33
    assert c.rows_used == 30
    assert c.rows_quarantined == 3
    assert c.quarantine_reasons == {"empty_text": 1, "duplicate_id": 1, "no_content_after_cleaning": 1}
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert sorted(q["row"]) == [31, 32, 33]
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert units["item_id"].nunique() == 30
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["rows_read"] == run["counts"]["rows_used"] + run["counts"]["rows_quarantined"]


def test_pipeline_a_case_note_counts_for_each_stage_it_covers(tmp_path, settings, columns, journey, model, embedder):
    note = ("Il router è arrivato con due settimane di ritardo e il corriere non ha mai risposto. "
            "La prima fattura mi ha addebitato due volte il canone, voglio il rimborso subito.")
    p = write(tmp_path / "a.jsonl", json.dumps({"id": "c1", "text": note, "source": "case note"}) + "\n")
    run_batch([p], journey=journey, settings=settings, columns=columns, model=model, embedder=embedder,
              out_dir=tmp_path / "out", quiet=True)
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert len(units) == 2
    assert units["stage"].tolist() == ["delivery", "billing"]
    assert units["source"].tolist() == ["case_note", "case_note"]



def test_themes_resources_load_in_one_thread_once_per_language(monkeypatch):
    """With workers, the main process loads the themes step's tokenisers and lemma tables while
    it waits (pipeline._Warmer), each language once, and waits for them before the themes."""
    import threading
    import time

    from feedback_nlp import themes
    from feedback_nlp.pipeline import _Warmer

    calls = []

    def slow_warm_up(langs):
        time.sleep(0.2)
        calls.append((threading.current_thread().name, sorted(langs)))

    monkeypatch.setattr(themes, "warm_up", slow_warm_up)
    warmer = _Warmer()
    warmer.add(["it", "en"])
    warmer.add(["en"])
    warmer.add(["pt", "it"])
    warmer.close()  # waits for both
    assert [langs for _, langs in calls] == [["en", "it"], ["pt"]]
    assert all(name.startswith("themes-warm-up") for name, _ in calls)


def _feedback_model(journey):
    """The keyword model of test_incremental with a feedback head: football and elections are not
    feedback, everything else is."""
    import numpy as np

    from feedback_nlp.classify import LinearHead
    from test_incremental import DIM, _dim, keyword_model

    model = keyword_model("kw-fb", journey)
    coef = np.zeros((1, DIM))
    for w in ("football", "election", "match"):
        coef[0, _dim(w)] -= 12.0
    model.feedback = LinearHead.from_arrays(["no", "yes"], {"coef": coef, "intercept": np.array([4.0])})
    return model


def _mixed_dump(tmp_path):
    rows = ["id,text,source"]
    for i in range(12):
        rows.append(f"f{i},The invoice number {i} was {'bad' if i % 4 else 'great'} for me,social")
    for i in range(8):
        rows.append(f"n{i},The football match {i} was great and the election too,social")
    return write(tmp_path / "dump.csv", "\n".join(rows) + "\n")


def test_pipeline_units_that_are_not_feedback_are_kept_and_counted_but_never_scored(tmp_path, settings, columns,
                                                                                     journey):
    model = _feedback_model(journey)
    res = run_batch([_mixed_dump(tmp_path)], journey=journey, settings=settings, columns=columns, model=model,
                    embedder=FakeEmbedder(), out_dir=tmp_path / "out", quiet=True)
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert len(units) == 20
    assert units.loc[units["item_id"].str.startswith("n"), "feedback"].eq(False).all()
    assert units.loc[units["item_id"].str.startswith("f"), "feedback"].all()
    assert res.counts.units_not_feedback == 8 and res.counts.units == 20
    jm = json.loads((tmp_path / "out" / "journey_map.json").read_text())
    assert sum(s["scores"]["units"] or 0 for s in jm["stages"] if s["scores"]) == 12
    quotes = [q["text"] for s in jm["stages"] for q in s["quotes"]]
    assert quotes and not any("football" in q for q in quotes)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["units_not_feedback"] == 8
    mix = run["label_shift"]["sentiment"]["all"]
    assert mix["negative"] == pytest.approx(9 / 12, abs=0.05)  # the feedback units' own mix, not 1/3
    assert jm["label_shift"] == run["label_shift"]
    assert "not feedback 8" in (tmp_path / "out" / "summary.md").read_text()
    assert "not feedback (40%)" in (tmp_path / "out" / "report.html").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_pipeline_label_shift_off_leaves_the_probabilities_as_classified(tmp_path, settings, columns, journey):
    model = _feedback_model(journey)
    dump = _mixed_dump(tmp_path)
    run_batch([dump], journey=journey, settings=settings.replace(label_shift=()), columns=columns, model=model,
              embedder=FakeEmbedder(), out_dir=tmp_path / "off", quiet=True)
    run_batch([dump], journey=journey, settings=settings, columns=columns, model=model, embedder=FakeEmbedder(),
              out_dir=tmp_path / "on", quiet=True)
    off = pd.read_parquet(tmp_path / "off" / "units.parquet")
    on = pd.read_parquet(tmp_path / "on" / "units.parquet")
    assert json.loads((tmp_path / "off" / "run.json").read_text())["label_shift"] is None
    assert off["feedback"].sum() == 12  # the decision itself does not need the correction
    fb = on["feedback"].to_numpy()
    assert (on["p_negative"][fb] > off["p_negative"][fb]).all()  # a mostly negative dump reads more negative
    pd.testing.assert_series_equal(on["p_negative"][~fb], off["p_negative"][~fb])  # not feedback: as classified


def test_pipeline_counts_each_item_once_when_its_units_cross_a_chunk_of_units(tmp_path, settings, columns, journey,
                                                                              model, embedder):
    """With label shift on, units are relabelled chunk by chunk after the run: an item whose
    units fell in two such chunks used to be counted twice (the example dump: 426 items for 417)."""
    text = ("La bolletta di marzo era il doppio del solito e nessuno mi ha spiegato il perché. "
            "Al telefono ho aspettato quaranta minuti prima di parlare con un operatore. "
            "Alla fine ho disdetto il contratto e sono passato a un altro fornitore.")
    rows = ["id,text"] + [f'{i},"{text} ({i})"' for i in range(12)]
    p = write(tmp_path / "a.csv", "\n".join(rows) + "\n")
    res = run_batch([p], journey=journey, settings=settings.replace(chunk_size=5), columns=columns, model=model,
                    embedder=embedder, out_dir=tmp_path / "out", quiet=True)
    units = pd.read_parquet(tmp_path / "out" / "units.parquet")
    assert units.groupby("item_id").size().min() >= 2 and len(units) % 5 != 0
    assert res.counts.rows_used == 12
    assert sum(res.counts.languages.values()) == 12
