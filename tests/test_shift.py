"""Label shift: EM recovers a dump's class mix from unlabelled posteriors, per language."""

import numpy as np
import pandas as pd
import pytest

from feedback_nlp.records import SENTIMENTS
from feedback_nlp.shift import PriorSample, Priors, adjust, apply, em_prior, estimate

MEANS = np.array([[-1.5, 0.0], [0.0, 1.2], [1.5, 0.0]])  # one Gaussian per class, overlapping


def _posteriors(mix, n=6000, seed=0):
    """Units drawn with class mix `mix` from three overlapping Gaussians, and the exact
    posteriors a classifier trained on a balanced mix (prior 1/3 each) would give them."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=mix)
    x = MEANS[y] + rng.normal(size=(n, 2))
    loglik = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(axis=2)
    p = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), y


@pytest.mark.parametrize("mix", [(0.1, 0.8, 0.1), (0.7, 0.2, 0.1), (1 / 3, 1 / 3, 1 / 3), (0.05, 0.15, 0.8)])
def test_shift_em_recovers_a_known_mix_within_5_points(mix):
    P, y = _posteriors(mix)
    assert np.abs(P.mean(axis=0) - np.asarray(mix)).max() > 0.04 or mix[0] == 1 / 3  # uncorrected is off
    prior, iterations = em_prior(P, np.full(3, 1 / 3))
    assert np.abs(prior - np.asarray(mix)).max() < 0.05, prior
    assert 0 < iterations < 200
    assert prior.sum() == pytest.approx(1.0)


def test_shift_correction_raises_accuracy_on_a_skewed_mix():
    P, y = _posteriors((0.1, 0.8, 0.1), seed=1)
    prior, _ = em_prior(P, np.full(3, 1 / 3))
    before = (P.argmax(axis=1) == y).mean()
    after = (adjust(P, np.full(3, 1 / 3), prior).argmax(axis=1) == y).mean()
    assert after > before + 0.1


def test_shift_adjust_is_the_identity_at_the_training_prior_and_rows_sum_to_one():
    P, _ = _posteriors((0.5, 0.3, 0.2), n=50)
    pt = np.array([0.2, 0.5, 0.3])
    np.testing.assert_allclose(adjust(P, pt, pt), P)
    np.testing.assert_allclose(adjust(P, pt, np.array([0.6, 0.3, 0.1])).sum(axis=1), 1.0)


def _units(P, langs, p_feedback=1.0, source=""):
    df = pd.DataFrame({f"p_{s}": P[:, j] for j, s in enumerate(SENTIMENTS)})
    df["lang"] = langs
    df["p_feedback"] = p_feedback
    df["source"] = source
    return df


def test_shift_estimate_is_per_language_where_there_are_enough_units_else_pooled():
    it, _ = _posteriors((0.7, 0.2, 0.1), n=3000, seed=2)
    de, _ = _posteriors((0.1, 0.8, 0.1), n=3000, seed=3)
    pt, _ = _posteriors((0.1, 0.1, 0.8), n=40, seed=4)  # too few: the pooled estimate
    units = _units(np.vstack([it, de, pt]), ["it"] * 3000 + ["de"] * 3000 + ["pt"] * 40)
    trained = {"sentiment": np.full(3, 1 / 3)}
    priors = estimate(units, trained, heads=["sentiment"], min_units=300, feedback_min_probability=0.5)
    hp = priors.heads["sentiment"]
    assert sorted(hp.per_language) == ["de", "it"]
    np.testing.assert_allclose(hp.per_language["it"], [0.7, 0.2, 0.1], atol=0.05)
    np.testing.assert_allclose(hp.per_language["de"], [0.1, 0.8, 0.1], atol=0.05)
    np.testing.assert_array_equal(hp.for_language("pt"), hp.pooled)
    out = apply(units.copy(), priors, trained)
    it_rows = out.iloc[:3000]
    assert it_rows["p_negative"].mean() == pytest.approx(0.7, abs=0.05)  # the corrected mean is the mix
    d = priors.to_dict()
    assert set(d["sentiment"]["per_language"]) == {"it", "de"} and d["sentiment"]["units"]["*"] == 6040


def test_shift_sentiment_is_estimated_and_corrected_on_feedback_units_only():
    fb, _ = _posteriors((0.8, 0.1, 0.1), n=2000, seed=5)
    other, _ = _posteriors((0.1, 0.1, 0.8), n=2000, seed=6)
    units = _units(np.vstack([fb, other]), ["en"] * 4000,
                   p_feedback=np.r_[np.full(2000, 0.9), np.full(2000, 0.1)])
    trained = {"sentiment": np.full(3, 1 / 3), "feedback": np.array([0.5, 0.5])}
    priors = estimate(units, trained, heads=["feedback", "sentiment"], min_units=300, feedback_min_probability=0.5)
    np.testing.assert_allclose(priors.heads["sentiment"].pooled, [0.8, 0.1, 0.1], atol=0.05)
    assert priors.heads["feedback"].pooled[1] == pytest.approx(0.5, abs=0.1)
    out = apply(units.copy(), priors, trained, feedback_min_probability=0.5)
    # the units that are not feedback keep their sentiment as classified
    np.testing.assert_allclose(out["p_negative"].iloc[2000:], units["p_negative"].iloc[2000:])
    assert not np.allclose(out["p_negative"].iloc[:2000], units["p_negative"].iloc[:2000])


def test_shift_a_survey_answer_is_feedback_whatever_the_head_says():
    P, _ = _posteriors((0.8, 0.1, 0.1), n=1000, seed=7)
    units = _units(P, ["en"] * 1000, p_feedback=0.1, source="survey")
    trained = {"sentiment": np.full(3, 1 / 3), "feedback": np.array([0.5, 0.5])}
    priors = estimate(units, trained, heads=["feedback", "sentiment"], min_units=300, feedback_min_probability=0.5,
                      feedback_sources=["survey"])
    np.testing.assert_allclose(priors.heads["sentiment"].pooled, [0.8, 0.1, 0.1], atol=0.05)


def test_shift_off_changes_nothing():
    P, _ = _posteriors((0.8, 0.1, 0.1), n=100)
    units = _units(P, ["en"] * 100)
    assert not Priors()
    pd.testing.assert_frame_equal(apply(units.copy(), Priors(), {}), units)


def test_shift_prior_sample_is_bounded_per_language_and_uniform():
    sample = PriorSample(cap=100, seed=0)
    for chunk in range(20):
        P, _ = _posteriors((0.3, 0.3, 0.4), n=100, seed=chunk)
        sample.add(_units(P, ["it"] * 50 + ["de"] * 50).assign(p_feedback=chunk / 19))
    frame = sample.frame()
    assert frame["lang"].value_counts().to_dict() == {"it": 100, "de": 100}
    assert 0.3 < frame["p_feedback"].mean() < 0.7  # drawn from every chunk, not the first or last
    assert list(frame.columns) == PriorSample.COLUMNS
