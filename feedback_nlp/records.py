"""The frames that flow between steps, declared once.

Every step is a function over a pandas chunk of rows, `(chunk, ...) -> chunk`, so the same steps
can run partition by partition on Dask or Spark. `Schema.check` guards the hand-offs, so a step
that drops or renames a column fails where it happens, not three steps later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

UNASSIGNED = "unassigned"
UND = "und"
SENTIMENTS = ("negative", "neutral", "positive")


def unit_keys(units: pd.DataFrame) -> np.ndarray:
    """Each unit's sampling key in [0, 1), a hash of (item_id, unit_idx): the bounded samples
    (negative units for themes, units for the label-shift estimate) keep the smallest keys, so
    the same units are kept whatever the chunking or the order partitions finish in, which is
    what lets a distributed run merge partition samples into exactly the local run's sample."""
    if units.empty:
        return np.zeros(0)
    h = pd.util.hash_pandas_object(units[["item_id", "unit_idx"]].astype({"item_id": str, "unit_idx": "int64"}),
                                   index=False).to_numpy(dtype=np.uint64)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclass(frozen=True)
class Schema:
    name: str
    columns: Mapping[str, str]  # column -> pandas dtype

    def empty(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in self.columns.items()})

    def conform(self, df: pd.DataFrame) -> pd.DataFrame:
        """Select and cast the declared columns, in order (missing ones are an error)."""
        self.check(df)
        return df[list(self.columns)].astype(dict(self.columns))

    def check(self, df: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise ValueError(f"{self.name} frame lacks column(s) {missing}")
        return df


# One input row that can be used: cleaned, redacted text and its metadata.
ITEM = Schema(
    "Item",
    {
        "item_id": "string",
        "source_file": "string",
        "row": "int64",
        "text": "string",
        "created_at": "datetime64[ns, UTC]",
        "channel": "string",
        "source": "string",
        "segment": "string",
        "lang": "string",
        "nps": "Float64",
        "csat": "Float64",
        "resolution_hours": "Float64",
        "fcr": "boolean",
    },
)

# A unit is what gets classified: a sentence of a long text, or a short text whole.
UNIT = Schema(
    "Unit",
    {
        "item_id": "string",
        "unit_idx": "int64",
        "text": "string",
        "lang": "string",
        "start": "int64",
        "end": "int64",
    },
)

# Columns a unit carries from its item into outputs and aggregation.
ITEM_CONTEXT = ("source_file", "row", "created_at", "channel", "source", "segment", "nps", "csat",
                "resolution_hours", "fcr")

# Classifier output per unit (probability columns `p_stage_<id>`, `p_<sentiment>` follow).
PREDICTION = Schema(
    "Prediction",
    {
        "item_id": "string",
        "unit_idx": "int64",
        "stage": "string",
        "stage_confidence": "float64",
        "sentiment": "string",
        "sentiment_score": "float64",
        "touchpoints": "string",
        "model_id": "string",
    },
)

# A row that could not be used, and why.
QUARANTINED = Schema(
    "Quarantined",
    {
        "source_file": "string",
        "row": "Int64",
        "field": "string",
        "reason": "string",
        "detail": "string",
        "text_preview": "string",
    },
)

# One cell of the scored map: a stage, optionally broken down by channel or segment.
STAGE_SCORE = Schema(
    "StageScore",
    {
        "stage": "string",
        "breakdown": "string",  # "" (whole stage), "channel", "segment", "touchpoint"
        "key": "string",
        "units": "int64",
        "items": "int64",
        "weight": "float64",
        "negative_share": "float64",
        "neutral_share": "float64",
        "positive_share": "float64",
        "pain": "float64",
        "pain_low": "float64",
        "pain_high": "float64",
        "share_of_negative": "float64",
    },
)
