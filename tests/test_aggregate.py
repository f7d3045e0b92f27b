import numpy as np
import pandas as pd
from scipy import stats

from feedback_nlp.aggregate import Accumulator


def _chunk(start: int, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """n units, every other one negative; a unit's embedding holds its number."""
    ids = np.arange(start, start + n)
    units = pd.DataFrame({"unit": ids, "sentiment": np.where(ids % 2 == 0, "negative", "positive"),
                          "stage": "billing"})
    return units, ids[:, None].astype(np.float32).repeat(4, axis=1)


def _sample(settings, max_units: int, chunks: int, per_chunk: int, seed: int) -> np.ndarray:
    acc = Accumulator(settings, max_negative_units=max_units, seed=seed)
    for c in range(chunks):
        acc._sample_negative(*_chunk(c * per_chunk, per_chunk))
    agg = acc.finish()
    kept = agg.negative_units["unit"].to_numpy()
    assert (agg.negative_embeddings[:, 0] == kept).all()  # embeddings stay with their units
    assert (agg.negative_units["sentiment"] == "negative").all()
    return kept


def test_negative_sample_keeps_everything_under_the_cap(settings):
    kept = _sample(settings, 1000, chunks=5, per_chunk=100, seed=0)
    assert kept.tolist() == list(range(0, 500, 2))


def test_negative_sample_is_uniform_over_the_run(settings):
    """Capped at 50 of 1,000 negatives in 20 chunks: exactly 50 kept, in arrival order, and
    every chunk as likely to be in the sample as any other (chi-square over 200 runs)."""
    per_chunk_kept = np.zeros(20)
    for seed in range(200):
        kept = _sample(settings, 50, chunks=20, per_chunk=100, seed=seed)
        assert len(kept) == 50 and len(set(kept)) == 50
        assert (np.diff(kept) > 0).all()
        per_chunk_kept += np.bincount(kept // 100, minlength=20)
    assert stats.chisquare(per_chunk_kept).pvalue > 0.001
    assert per_chunk_kept[:10].sum() / per_chunk_kept.sum() > 0.45  # not biased to late chunks
