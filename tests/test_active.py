import numpy as np
import pandas as pd
from click.testing import CliRunner

from conftest import ROOT
from feedback_nlp.active import audit, priority, select_for_labelling
from feedback_nlp.classify import LinearHead
from feedback_nlp.cli import main


def _units(n=60, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1, 1, 1], size=n)
    return pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n)], "unit_idx": 0, "text": [f"t{i}" for i in range(n)],
        "lang": rng.choice(["it", "pt", "de"], n), "stage": rng.choice(["billing", "support"], n),
        "sentiment": "negative", "stage_confidence": rng.uniform(0.2, 1.0, n),
        "p_negative": p[:, 0], "p_neutral": p[:, 1], "p_positive": p[:, 2],
    })


def test_active_selection_prefers_low_confidence_and_spreads_over_groups():
    units = priority(_units())
    sheet = select_for_labelling(units, 12)
    assert len(sheet) == 12 and sheet["item_id"].is_unique
    assert sheet.groupby(["lang", "suggested_stage"]).size().max() <= 2  # 6 groups x 2
    picked = units.set_index("item_id").loc[sheet["item_id"], "stage_confidence"]
    assert picked.mean() < units["stage_confidence"].mean()
    assert (sheet[["stage", "sentiment", "touchpoints"]] == "").all().all()


def test_active_rare_language_and_prototype_disagreement_raise_priority():
    units = _units()
    base = priority(units)["priority"]
    proto = pd.Series(np.where(units["stage"] == "billing", "support", "billing"))
    with_proto = priority(units, proto)
    assert (with_proto["priority"] > base).all()
    assert with_proto["why"].str.contains("prototype disagrees").all()
    rare = priority(units, trained_counts={"it": 1000, "pt": 1000, "de": 3})
    assert rare.loc[units["lang"] == "de", "priority"].min() > base[units["lang"] == "de"].min()


def test_active_audit_finds_flipped_labels(embedder, settings, columns):
    from feedback_nlp.train import read_labelled

    df = read_labelled([ROOT / "corpora" / "seed" / "en.csv"], columns, settings).reset_index(drop=True)
    flipped = [3, 50, 120, 200, 280]
    df.loc[flipped, "stage"] = df.loc[flipped, "stage"].map(lambda s: "billing" if s != "billing" else "delivery")
    X = embedder.encode(df["text"].tolist())
    ranked = audit(X, df, lambda: LinearHead(C=4.0))
    top = set(ranked.head(40)["row"])
    rows = set(df.loc[flipped, "row"])
    assert len(top & rows) >= 4


def test_active_sample_command_writes_a_label_sheet(tmp_path):
    res = CliRunner().invoke(main, ["run", str(ROOT / "corpora" / "examples" / "social.jsonl"), "--out",
                                    str(tmp_path / "out"), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["sample", "--from", str(tmp_path / "out"), "--n", "25", "--out",
                                    str(tmp_path / "to_label.csv")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    sheet = pd.read_csv(tmp_path / "to_label.csv", keep_default_na=False)
    assert len(sheet) == 25 and sheet["item_id"].is_unique
    assert sheet["lang"].nunique() >= 5
    assert list(sheet.columns)[-3:] == ["stage", "sentiment", "touchpoints"]
