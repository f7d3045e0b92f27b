"""Fast heads vs `train --fine-tune` on the seed corpus: held-out macro-F1 overall and per
language, training wall time and peak RSS (docs/accuracy.md, "Fine-tuning").

    .venv/bin/python benchmarks/fine_tune.py                      # use-m3: fast vs contrastive adapter
    .venv/bin/python benchmarks/fine_tune.py --encoder PATH --languages en
                                          # a sentence-transformers folder: fast heads on its frozen
                                          # embeddings vs the fine-tuned encoder
    .venv/bin/python benchmarks/fine_tune.py --search [--encoder PATH --languages en]
                                          # k-fold CV of a small grid on the TRAINING split only

The held-out split is `train()`'s (stratified by stage and language, test_size and seed from
configs/train.yaml); `train()` itself is timed, so the figures include the refit on all rows
that a real `train` does. Each configuration runs in its own process, so its peak RSS is its
own (it includes loading the embedder). `--set KEY=VALUE` overrides `fine_tune:` settings.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _settings(overrides: list[str]):
    from feedback_nlp.config import load_train_settings

    ts = load_train_settings()
    ft = ts.fine_tune
    changes = {}
    for item in overrides:
        key, value = item.split("=", 1)
        default = getattr(ft, key)
        changes[key] = type(default)(value) if not isinstance(default, tuple) else tuple(value.split("+"))
    return ts.replace(fine_tune=dataclasses.replace(ft, **changes))


def _labels(languages: list[str] | None):
    from feedback_nlp.config import load_column_map, load_journey_map, load_settings, resolve
    from feedback_nlp.train import load_labels

    s = load_settings()
    df, _ = load_labels([[str(resolve(_settings([]).seed_corpus))]], load_column_map(s.columns), s,
                        load_journey_map(s.journey_map).stage_ids)
    if languages:
        df = df[df["lang"].isin(languages)].reset_index(drop=True)
    return s, df


def child(mode: str, encoder: str | None, languages: list[str] | None, overrides: list[str]) -> None:
    """One configuration, in this process: prints one JSON line."""
    from feedback_nlp.embed import Embedder
    from feedback_nlp.train import train

    s, df = _labels(languages)
    ts = _settings(overrides)
    t0 = time.perf_counter()
    emb = Embedder(encoder or s.embedder, threads=s.threads)
    X = emb.encode(df["text"].tolist(), batch_size=s.embed_batch_size)
    t_embed = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        model, metrics, held = train(df, X, model_id="bench", embedder_id=emb.id, embedder_desc=emb.info.description,
                                     test_size=ts.test_size, seed=ts.seed, ts=ts,
                                     fine_tune=None if mode == "fast" else mode, encoder=encoder,
                                     encoder_out=Path(tmp) / "embedder", threads=s.threads)
        t_train = time.perf_counter() - t1
    out = {"mode": mode, "rows": len(df), "held_out": len(held), "embed_s": round(t_embed, 1),
           "train_s": round(t_train, 1), "phases_s": model.meta["training"]["seconds"],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "settings": model.meta["training"]["fine_tune"]}
    for head in ("stage", "sentiment"):
        m = metrics[head]
        out[head] = {"all": round(m["macro_f1"], 3),
                     **{lang: round(v["macro_f1"], 3) for lang, v in m["per_language"].items()}}
    print(json.dumps(out), flush=True)


def search(encoder: str | None, languages: list[str] | None, folds: int, grid: list[str] | None = None) -> None:
    """k-fold CV macro-F1 of a small grid, on the training rows of the held-out split only."""
    from sklearn.model_selection import StratifiedKFold

    from feedback_nlp.embed import Embedder
    from feedback_nlp.finetune import encode, fine_tune_encoder
    from feedback_nlp.train import evaluate_model, fit_model, split_indices

    s, df = _labels(languages)
    base = _settings([])
    idx_train, _ = split_indices(df, test_size=base.test_size, seed=base.seed)  # held-out rows never used here
    emb = Embedder(encoder or s.embedder, threads=s.threads)
    X = emb.encode(df["text"].tolist(), batch_size=s.embed_batch_size)
    if grid:
        grid = [None if g == "frozen" else g.split() for g in grid]
    elif encoder:
        grid = [None] + [[f"encoder_pairs_per_unit={p}", f"encoder_lr={lr}"]
                         for p, lr in ((4, "2e-05"), (8, "2e-05"), (16, "2e-05"), (8, "5e-05"))]
    else:
        grid = [None, ["adapter_epochs=1", "adapter_lr=0.001"], ["adapter_epochs=5", "adapter_lr=0.001"],
                ["adapter_epochs=20", "adapter_lr=0.001"], ["adapter_epochs=5", "adapter_lr=0.0001"],
                ["adapter_epochs=10", "adapter_lr=0.0001"], ["adapter_epochs=5", "adapter_lr=3e-05"],
                ["adapter_epochs=5", "adapter_lr=0.001", "adapter_hidden=512"],
                ["adapter_epochs=5", "adapter_lr=0.001", "adapter_pairs_per_unit=20"],
                ["adapter_epochs=10", "adapter_lr=0.001", "adapter_weight_decay=0.05"],
                ["adapter_epochs=5", "adapter_lr=0.001", "labels=stage"]]
    skf = StratifiedKFold(folds, shuffle=True, random_state=0)
    splits = list(skf.split(idx_train, df["stage"].to_numpy()[idx_train]))
    for overrides in grid:
        ts = _settings(overrides or [])
        ft = ts.fine_tune
        t0 = time.perf_counter()
        scores = []
        for a, b in splits:
            tr, va = idx_train[a], idx_train[b]
            if overrides and encoder:
                tuned = fine_tune_encoder(encoder, df["text"].iloc[tr].tolist(), df[list(ft.labels)].to_numpy()[tr],
                                          epochs=ft.encoder_epochs, pairs_per_unit=ft.encoder_pairs_per_unit,
                                          batch_size=ft.encoder_batch_size, lr=ft.encoder_lr,
                                          warmup=ft.encoder_warmup, max_seq_length=ft.encoder_max_seq_length,
                                          threads=s.threads)
                Z = encode(tuned, df["text"].tolist())
                m = fit_model(Z[tr], df.iloc[tr], model_id="cv", embedder_id="cv", ts=ts)
                r = evaluate_model(m, Z[va], df.iloc[va])
            else:
                m = fit_model(X[tr], df.iloc[tr], model_id="cv", embedder_id=emb.id, ts=ts, adapter=bool(overrides))
                r = evaluate_model(m, X[va], df.iloc[va])
            scores.append((r["stage"]["macro_f1"], r["sentiment"]["macro_f1"]))
        st, se = np.mean(scores, axis=0)
        print(f"{' '.join(overrides) if overrides else 'frozen (fast)':<60} stage {st:.3f} sentiment {se:.3f} "
              f"mean {(st + se) / 2:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", help="a sentence-transformers folder: compare fast heads on it with full fine-tuning")
    ap.add_argument("--languages", nargs="*", help="only the seed units in these languages (e.g. en)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a `fine_tune:` setting (labels: stage+sentiment)")
    ap.add_argument("--search", action="store_true", help="CV grid on the training split instead")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--grid", nargs="*", metavar="'K=V K=V'",
                    help="with --search: the settings to try, each a space-separated list of overrides "
                         "('frozen' for the fast heads)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.encoder, args.languages, args.overrides)
        return
    if args.search:
        search(args.encoder, args.languages, args.folds, args.grid)
        return
    fine = "encoder" if args.encoder else "adapter"
    rows = []
    for mode in ("fast", fine):
        cmd = [sys.executable, __file__, "--child", mode] + (["--encoder", args.encoder] if args.encoder else [])
        cmd += (["--languages", *args.languages] if args.languages else [])
        cmd += [f"--set={o}" for o in args.overrides]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(res.stderr)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    langs = [k for k in rows[0]["stage"] if k != "all"]
    print(f"rows {rows[0]['rows']}, held out {rows[0]['held_out']}; settings: {rows[1]['settings']}")
    print("| mode | head | all | " + " | ".join(langs) + " | train() wall s | peak RSS MB |")
    print("|---|---|---|" + "---|" * len(langs) + "---|---|")
    for r in rows:
        for head in ("stage", "sentiment"):
            cells = " | ".join(f"{r[head].get(lang, float('nan')):.3f}" for lang in langs)
            print(f"| {r['mode']} | {head} | {r[head]['all']:.3f} | {cells} | {r['train_s']:.1f} "
                  f"| {r['peak_rss_mb']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
