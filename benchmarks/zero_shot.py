"""How well stages classify from the journey map's own words, with the seed corpus's labels hidden.

1. Every stage zero-shot: prototypes from each stage's name, description and examples only.
2. Leave one stage out: heads trained on the seed corpus without stage X, X classified from its
   prototype (zeroshot.combine), scored on all units.

    .venv/bin/python benchmarks/zero_shot.py [--linear]

--linear trains linear heads (fast) instead of the configured kernel heads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from feedback_nlp.config import TrainSettings, load_column_map, load_journey_map, load_settings, load_train_settings
from feedback_nlp.embed import Embedder
from feedback_nlp.train import fit_model, read_labelled
from feedback_nlp.zeroshot import build_prototypes, combine, prototype_proba


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--linear", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    s = load_settings()
    journey = load_journey_map(s.journey_map)
    df = read_labelled(["corpora/seed"], load_column_map(s.columns), s)
    emb = Embedder()
    X = emb.encode(df["text"].tolist())
    y = df["stage"].to_numpy()
    ids = journey.stage_ids

    protos = build_prototypes(journey, emb.encode, [], s.zero_shot_temperature)
    pred = np.asarray(ids)[prototype_proba(X, protos).argmax(axis=1)]
    print(f"seed corpus: {len(df)} units; embedder {emb.id}")
    print(f"1. all stages zero-shot: accuracy {accuracy_score(y, pred):.3f}, macro-F1 "
          f"{f1_score(y, pred, average='macro'):.3f}")
    for lang in sorted(df["lang"].unique()):
        m = (df["lang"] == lang).to_numpy()
        print(f"   {lang}: n={m.sum()} accuracy {accuracy_score(y[m], pred[m]):.3f}")

    ts = TrainSettings(kernel_components=0, C=4.0) if args.linear else load_train_settings()
    print(f"2. leave one stage out (heads: {'linear' if args.linear else 'configured kernel heads'}): recall "
          "and precision of the stage the heads never saw, over all units")
    print("   stage        recall  precision")
    for held in ids:
        train = y != held
        model = fit_model(X[train], df[train], model_id="loso", embedder_id=emb.id, ts=ts)
        p = build_prototypes(journey, emb.encode, list(model.stage.classes_), s.zero_shot_temperature)
        p_head = model.stage.predict_proba(model.featurize(X))
        final = combine(p_head, list(model.stage.classes_), prototype_proba(X, p), p)
        pred = np.asarray(ids)[final.argmax(axis=1)]
        pr, rc, _, _ = precision_recall_fscore_support(y, pred, labels=[held], zero_division=0)
        print(f"   {held:<12} {rc[0]:.3f}   {pr[0]:.3f}")

    # 3. touchpoints from the map's words only: threshold chosen on the seed, scored on the blind set
    import json

    from sklearn.metrics import f1_score as f1

    from feedback_nlp.train import touchpoint_matrix
    from feedback_nlp.zeroshot import build_touchpoint_prototypes, touchpoint_mentions

    tps = [t.id for t in journey.touchpoints]
    Y = touchpoint_matrix(df["touchpoints"], tps)
    best = None
    for tau in np.arange(0.05, 0.61, 0.05):
        tp = build_touchpoint_prototypes(journey, emb.encode, [], float(tau))
        score = f1(Y, touchpoint_mentions(X, tp).astype(int), average="micro", zero_division=0)
        if best is None or score > best[1]:
            best = (float(tau), score)
    print(f"3. touchpoints zero-shot (prototype = touchpoint name only in the default map): best threshold on "
          f"the seed corpus {best[0]:.2f} (micro-F1 {best[1]:.3f})")
    rows = [json.loads(line) for p in sorted((Path("corpora") / "effort_test").glob("*.jsonl"))
            for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    Xb = emb.encode([r["text"] for r in rows])
    Yb = np.array([[int(t in r["touchpoints"]) for t in tps] for r in rows])
    tp = build_touchpoint_prototypes(journey, emb.encode, [], best[0])
    Pb = touchpoint_mentions(Xb, tp).astype(int)
    print(f"   on the blind set corpora/effort_test ({len(rows)} units): micro-F1 "
          f"{f1(Yb, Pb, average='micro', zero_division=0):.3f}, macro-F1 "
          f"{f1(Yb, Pb, average='macro', zero_division=0):.3f} (trained head: see benchmarks/effort_accuracy.py)")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
