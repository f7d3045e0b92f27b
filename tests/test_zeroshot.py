import numpy as np
import pandas as pd
import pytest

from conftest import write
from feedback_nlp.config import load_journey_map
from feedback_nlp.errors import InputError
from feedback_nlp.pipeline import run_batch
from feedback_nlp.zeroshot import StagePrototypes, build_prototypes, combine

MAP = """
id: tiny
name: Tiny
stages:
  - {id: billing, name: Billing, description: invoices and charges}
  - id: moving_house
    name: Moving house
    description: >-
      Moving the contract, line and router to a new address when the customer moves home;
      transfer of the service, new installation at the new home.
    examples: ["I am moving next month, how do I take my fibre with me?",
               "trasloco: la linea nella nuova casa non è ancora attiva",
               "mudei de casa e o serviço ainda não foi transferido"]
"""


def test_zeroshot_combine_without_zero_shot_stages_is_the_head():
    protos = StagePrototypes(("a", "b"), np.eye(2, 4), (), 0.05)
    p_head = np.array([[0.7, 0.2, 0.1]])
    out = combine(p_head, ["a", "b", "x"], np.array([[0.4, 0.6]]), protos)
    np.testing.assert_allclose(out, [[0.7 / 0.9, 0.2 / 0.9]])


def test_zeroshot_combine_splits_trained_mass_with_the_head():
    protos = StagePrototypes(("a", "b", "z"), np.eye(3, 4), ("z",), 0.05)
    out = combine(np.array([[0.75, 0.25]]), ["a", "b"], np.array([[0.3, 0.1, 0.6]]), protos)
    np.testing.assert_allclose(out, [[0.3, 0.1, 0.6]])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_zeroshot_stage_without_words_is_refused(tmp_path, embedder):
    p = write(tmp_path / "m.yaml", "id: t\nname: T\nstages:\n  - {id: billing, name: Billing}\n  - {id: mystery, name: Mystery}\n")
    journey = load_journey_map(p)
    with pytest.raises(InputError, match=r"\[E302\].*'mystery'"):
        build_prototypes(journey, embedder.encode, ["billing"], 0.05)


def test_zeroshot_new_stage_is_classified_in_a_run(tmp_path, settings, columns, model, embedder):
    journey = load_journey_map(write(tmp_path / "m.yaml", MAP))
    dump = write(tmp_path / "in.csv", "id,text\n"
                 "1,\"Mi sono trasferito in un'altra città e il trasloco della linea è fermo da un mese\"\n"
                 "2,\"Ich ziehe um: wie nehme ich meinen Internetanschluss in die neue Wohnung mit?\"\n"
                 "3,\"La fattura di questo mese ha un addebito doppio\"\n"
                 "4,\"Je déménage et personne ne sait transférer ma box à ma nouvelle adresse\"\n")
    res = run_batch([dump], journey=journey, settings=settings, columns=columns, model=model, embedder=embedder,
                    out_dir=tmp_path / "out", quiet=True)
    assert res.journey_map["run"]["zero_shot_stages"] == ["moving_house"]
    units = pd.read_parquet(tmp_path / "out" / "units.parquet").set_index("item_id")
    assert units.loc["3", "stage"] == "billing"
    assert (units.loc[["1", "2", "4"], "stage"] == "moving_house").sum() >= 2
    probs = units[["p_stage_billing", "p_stage_moving_house"]].sum(axis=1)
    assert ((probs - 1).abs() < 1e-9).all()


TP_MAP = """
id: tiny
name: Tiny
touchpoints:
  - {id: invoice, name: Invoice}
  - id: wifi_extender
    name: Wi-Fi extender
    description: the mesh Wi-Fi extender / repeater device sold with the plan
    examples: ["the wifi extender keeps disconnecting", "il ripetitore wifi non si collega"]
stages:
  - {id: billing, name: Billing, description: invoices and charges, touchpoints: [invoice]}
  - {id: usage, name: Usage, description: using the service, touchpoints: [wifi_extender]}
"""


def test_zeroshot_untrained_touchpoint_is_found_from_its_description(tmp_path, settings, columns, model, embedder):
    journey = load_journey_map(write(tmp_path / "m.yaml", TP_MAP))
    dump = write(tmp_path / "in.csv", "id,text\n"
                 "1,\"Il ripetitore wifi che mi avete venduto si disconnette ogni sera\"\n"
                 "2,\"La fattura di questo mese ha un addebito doppio\"\n")
    res = run_batch([dump], journey=journey, settings=settings, columns=columns, model=model, embedder=embedder,
                    out_dir=tmp_path / "out", quiet=True)
    assert res.journey_map["run"]["zero_shot_touchpoints"] == ["wifi_extender"]
    units = pd.read_parquet(tmp_path / "out" / "units.parquet").set_index("item_id")
    assert "wifi_extender" in units.loc["1", "touchpoints"].split(";")
    assert "wifi_extender" not in units.loc["2", "touchpoints"].split(";")


def test_zeroshot_touchpoints_in_scheduled_scoring_and_a_new_description_reclassifies(tmp_path, settings, columns,
                                                                                       model, embedder):
    """`score` finds untrained map touchpoints as `run` does; editing the touchpoint's
    description changes the prediction key, so stored units are re-classified from their
    stored embeddings, not re-embedded."""
    from feedback_nlp.incremental import score

    dump = write(tmp_path / "in.csv", "id,text\n"
                 "1,\"Il ripetitore wifi che mi avete venduto si disconnette ogni sera\"\n"
                 "2,\"La fattura di questo mese ha un addebito doppio\"\n")
    journey = load_journey_map(write(tmp_path / "m.yaml", TP_MAP))
    kw = dict(store=tmp_path / "s.db", settings=settings, columns=columns, model=model, embedder=embedder,
              out_dir=tmp_path / "out")
    res = score([dump], journey=journey, **kw)
    assert res.journey_map["run"]["zero_shot_touchpoints"] == ["wifi_extender"]
    units = pd.read_parquet(tmp_path / "out" / "units.parquet").set_index("item_id")
    assert "wifi_extender" in units.loc["1", "touchpoints"].split(";")
    assert "wifi_extender" not in units.loc["2", "touchpoints"].split(";")
    again = score([dump], journey=journey, **kw)
    assert again.stats.units_reclassified == 0
    edited = load_journey_map(write(tmp_path / "m2.yaml", TP_MAP.replace(
        "the mesh Wi-Fi extender / repeater device sold with the plan", "the repeater for the home network")))
    third = score([dump], journey=edited, **kw)
    assert third.stats.units_reclassified == 2
    assert third.stats.texts_embedded == 0
