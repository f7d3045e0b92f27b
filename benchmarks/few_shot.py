"""A user's own map on real data: Banking77's requests on configs/journeys/bank.yaml, a bank map
no shipped label covers, with the 77 intents grouped into its stages by
configs/mappings/banking77_bank.yaml (issue 16, part 3).

Prints, on every request of Banking77 train (10,003; read from ../shared/benchmarks at run time):

1. zero-shot from the map's own words: the shipped method (one prototype per stage, the mean
   of its name, description and examples), one prototype per phrase (a stage scores its best
   phrase), and either refined on the run's own unlabelled requests (`zeroshot.refine`); the
   share right, and right / unassigned at the run's confidence threshold;
2. few-shot: k labelled requests per stage (k = 8, 16, 32; 5 draws each), a logistic head on the
   embeddings with the map's phrases as extra examples, with and without refinement on the
   unlabelled rest; accuracy on every request not drawn.

3. `train` as a user runs it (`train --labels FILE --map configs/journeys/bank.yaml`, FILE holding
   k stage-only labels per stage; the seed corpus trains the sentiment head only): the fast heads
   and `--fine-tune` (USE-m-v3 fine-tuned end to end), on every request not drawn (`--train-draws`).

    .venv/bin/python benchmarks/few_shot.py [--benchmarks DIR] [--seeds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from feedback_nlp.config import load_journey_map, load_settings  # noqa: E402
from feedback_nlp.sources import benchmarks_root, load_mapping, read_banking77  # noqa: E402
from feedback_nlp.zeroshot import stage_texts  # noqa: E402


# --- the methods measured (here, not in the package: none beat the shipped prototypes) ----------


@dataclass(frozen=True)
class PhrasePrototypes:
    """Several vectors per stage (its phrases, labelled examples or refined centroids); a stage
    scores its best vector. One mean per stage blurs a stage whose examples say different things
    ("my card hasn't arrived" and "how do I activate it" are both `cards`)."""

    vectors: np.ndarray      # (n_vectors, dim), unit norm
    owner: np.ndarray        # (n_vectors,) stage index of each vector
    n_stages: int

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        cos = np.asarray(embeddings, dtype=np.float64) @ self.vectors.T
        out = np.full((len(cos), self.n_stages), -np.inf)
        for k in range(self.n_stages):
            cols = np.flatnonzero(self.owner == k)
            if len(cols):
                out[:, k] = cos[:, cols].max(axis=1)
        return out

    def proba(self, embeddings: np.ndarray, temperature: float) -> np.ndarray:
        return _softmax(self.scores(embeddings) / temperature)


def phrase_prototypes(vectors: np.ndarray, owner: np.ndarray, n_stages: int) -> PhrasePrototypes:
    v = np.asarray(vectors, dtype=np.float64)
    return PhrasePrototypes(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12), np.asarray(owner),
                            n_stages)


def refine(embeddings: np.ndarray, vectors: np.ndarray, owner: np.ndarray, n_stages: int, *, temperature: float,
           labelled: tuple[np.ndarray, np.ndarray] | None = None, iterations: int = 10,
           anchor: float = 10.0) -> PhrasePrototypes:
    """Refine the map's prototypes on the run's own unlabelled units: a soft k-means over the
    units, seeded and anchored by the map's phrases (and any labelled examples, weighing
    `anchor` units each), so each stage's centroid moves to where its units actually are. The
    result keeps the seeds and adds the centroid: a stage scores its best vector."""
    X = np.asarray(embeddings, dtype=np.float64)
    seeds, seed_owner = np.asarray(vectors, dtype=np.float64), np.asarray(owner)
    if labelled is not None:
        seeds = np.vstack([seeds, np.asarray(labelled[0], dtype=np.float64)])
        seed_owner = np.concatenate([seed_owner, np.asarray(labelled[1])])
    base = phrase_prototypes(seeds, seed_owner, n_stages)
    anchor_sum = np.zeros((n_stages, X.shape[1]))
    for k in range(n_stages):
        anchor_sum[k] = anchor * base.vectors[base.owner == k].sum(axis=0)
    protos = base
    for _ in range(iterations):
        R = protos.proba(X, temperature)
        C = R.T @ X + anchor_sum
        C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
        protos = PhrasePrototypes(np.vstack([base.vectors, C]), np.concatenate([base.owner, np.arange(n_stages)]),
                                  n_stages)
    return protos


def fit_few_shot(X: np.ndarray, y: np.ndarray, vectors: np.ndarray, owner: np.ndarray, n_stages: int,
                 C: float = 10.0):
    """A logistic head from a handful of labelled units per stage, with the map's phrases as
    further examples of their stages."""
    from sklearn.linear_model import LogisticRegression

    Xa = np.vstack([np.asarray(X, dtype=np.float64), np.asarray(vectors, dtype=np.float64)])
    ya = np.concatenate([np.asarray(y), np.asarray(owner)])
    head = LogisticRegression(C=C, max_iter=2000, class_weight="balanced")
    return head.fit(Xa, ya)





def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmarks", default=None)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--shots", default="8,16,32")
    ap.add_argument("--json", default=None)
    ap.add_argument("--train-shots", default="8", help="k for part 3 ('' to skip it)")
    ap.add_argument("--train-draws", type=int, default=3)
    args = ap.parse_args()
    from real_data import Cache

    t0 = time.time()
    settings = load_settings()
    journey = load_journey_map(ROOT / "configs" / "journeys" / "bank.yaml")
    root = benchmarks_root(args.benchmarks)
    mapping = load_mapping(ROOT / "configs" / "mappings" / "banking77_bank.yaml", journey.stage_ids)
    df = read_banking77(root, mapping=mapping)
    y = df["stage"].str.split("::").str[0].to_numpy()
    ids = list(journey.stage_ids)
    yi = np.asarray([ids.index(s) for s in y])
    cache = Cache(settings.embedder, settings.threads)
    X = cache(df["text"].tolist()).astype(np.float64)
    phrases = [(s.id, t) for s in journey.stages for t in stage_texts(s)]
    P = cache([t for _, t in phrases]).astype(np.float64)
    owner = np.asarray([ids.index(s) for s, _ in phrases])
    thr = settings.stage_min_confidence
    out: dict = {"items": len(df), "stages": len(ids), "threshold": thr}

    def report(name: str, proba: np.ndarray, mask: np.ndarray | None = None) -> dict:
        m = np.ones(len(yi), bool) if mask is None else mask
        pred, conf = proba.argmax(1), proba.max(1)
        right = float((pred[m] == yi[m]).mean())
        sure = conf[m] >= thr
        r = {"right": round(100 * right, 1), "right_at_threshold": round(100 * float(((pred[m] == yi[m]) & sure).mean()), 1),
             "unassigned": round(100 * float((~sure).mean()), 1)}
        print(f"  {name:<48} right {r['right']:5.1f}%   at threshold {thr}: right {r['right_at_threshold']:5.1f}%,"
              f" unassigned {r['unassigned']:5.1f}%", flush=True)
        return r

    print(f"Banking77 train: {len(df)} requests, {len(ids)} stages of {journey.path}")
    print("1. zero-shot (the map's own words)")
    T = settings.zero_shot_temperature
    mean_protos = np.stack([P[owner == k].mean(0) for k in range(len(ids))])
    mean_protos /= np.linalg.norm(mean_protos, axis=1, keepdims=True)
    zs = {}
    zs["mean prototype (shipped)"] = report("mean prototype (shipped)", _softmax(X @ mean_protos.T / T))
    pp = phrase_prototypes(P, owner, len(ids))
    zs["one prototype per phrase"] = report("one prototype per phrase", pp.proba(X, T))
    ref = refine(X, P, owner, len(ids), temperature=T)
    zs["per phrase, refined on the run's requests"] = report("per phrase, refined on the run's requests",
                                                             ref.proba(X, T))
    out["zero_shot"] = zs

    print("2. few-shot: k labelled requests per stage, scored on every other request")
    rng_all = [np.random.default_rng(s) for s in range(args.seeds)]
    fs: dict = {}
    for k in [int(x) for x in args.shots.split(",")]:
        rows = {"head": [], "head, refined": []}
        for rng in rng_all:
            pick = np.concatenate([rng.choice(np.flatnonzero(yi == c), k, replace=False) for c in range(len(ids))])
            rest = np.ones(len(yi), bool)
            rest[pick] = False
            head = fit_few_shot(X[pick], yi[pick], P, owner, len(ids))
            rows["head"].append(float((head.predict_proba(X)[rest].argmax(1) == yi[rest]).mean()))
            refined = refine(X, P, owner, len(ids), temperature=T, labelled=(X[pick], yi[pick]))
            rows["head, refined"].append(float((refined.proba(X, T)[rest].argmax(1) == yi[rest]).mean()))
        fs[k] = {n: {"mean": round(100 * float(np.mean(v)), 1), "min": round(100 * float(np.min(v)), 1),
                     "max": round(100 * float(np.max(v)), 1)} for n, v in rows.items()}
        for n, v in fs[k].items():
            print(f"  k={k:<3} {n:<16} right {v['mean']:5.1f}%  (draws {v['min']}-{v['max']})", flush=True)
    out["few_shot"] = fs
    if args.train_shots:
        print("3. `train` with k stage-only labels per stage (the seed corpus: sentiment only)")
        out["train"] = train_as_user(df, X, yi, ids, journey, settings, cache,
                                     [int(x) for x in args.train_shots.split(",")], args.train_draws)
    out["seconds"] = round(time.time() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def train_as_user(df, X, yi, ids, journey, settings, cache, shots: list[int], draws: int) -> dict:
    """`train()` on k stage-only labels per stage plus the seed corpus as sentiment-only rows,
    as the CLI builds them; accuracy of the stage head on every request not drawn."""
    import tempfile

    import pandas as pd

    from feedback_nlp.config import load_column_map, load_train_settings, resolve
    from feedback_nlp.embed import Embedder
    from feedback_nlp.train import load_labels, map_phrase_rows, train

    ts = load_train_settings()
    columns = load_column_map(settings.columns)
    seed, _ = load_labels([[str(resolve(ts.seed_corpus))]], columns, settings, journey.stage_ids, sentiment_only=[0])
    seed = pd.concat([seed, map_phrase_rows(journey)], ignore_index=True)  # as the CLI adds them
    X_seed = cache(seed["text"].tolist())
    res: dict = {}
    for k in shots:
        rows: dict[str, list[float]] = {"fast": [], "fine-tune": []}
        secs: dict[str, list[float]] = {"fast": [], "fine-tune": []}
        for draw in range(draws):
            rng = np.random.default_rng(100 + draw)
            pick = np.concatenate([rng.choice(np.flatnonzero(yi == c), k, replace=False) for c in range(len(ids))])
            rest = np.ones(len(yi), bool)
            rest[pick] = False
            mine = pd.DataFrame({"source_file": "labels.csv", "row": np.arange(len(pick)) + 2,
                                 "text": df["text"].to_numpy()[pick], "lang": "en",
                                 "stage": np.asarray(ids)[yi[pick]], "sentiment": "", "touchpoints": "",
                                 "channel": "", "source": "labels"})
            rows_df = pd.concat([seed, mine], ignore_index=True)
            X_all = np.vstack([X_seed, X[pick]]).astype(np.float32)
            for mode in rows:
                t0 = time.time()
                with tempfile.TemporaryDirectory() as tmp:
                    model, _, _ = train(rows_df, X_all, model_id="fs", embedder_id=cache.emb.id,
                                        embedder_desc="use-m3", ts=ts, seed=ts.seed, test_size=ts.test_size,
                                        fine_tune="encoder" if mode == "fine-tune" else None,
                                        encoder=settings.embedder, encoder_out=Path(tmp) / "embedder",
                                        threads=settings.threads)
                    secs[mode].append(time.time() - t0)
                    E = X if mode == "fast" else Embedder(model.embedder_folder).encode(df["text"].tolist())
                    p = model.probabilities(E.astype(np.float32), df["text"].tolist()).stage
                pred = np.asarray([ids.index(s) for s in model.stage.classes_])[p.argmax(1)]
                rows[mode].append(float((pred[rest] == yi[rest]).mean()))
                print(f"    k={k} draw {draw + 1} {mode}: right {100 * rows[mode][-1]:.1f}% ({secs[mode][-1]:.0f} s)",
                      file=sys.stderr, flush=True)
        res[k] = {m: {"mean": round(100 * float(np.mean(v)), 1), "min": round(100 * float(np.min(v)), 1),
                      "max": round(100 * float(np.max(v)), 1), "train_seconds": round(float(np.mean(secs[m])), 1)}
                  for m, v in rows.items()}
        for m, v in res[k].items():
            print(f"  k={k:<3} train, {m:<10} right {v['mean']:5.1f}%  (draws {v['min']}-{v['max']}; "
                  f"train() {v['train_seconds']:.0f} s)", flush=True)
    return res


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


if __name__ == "__main__":
    main()
