"""Touchpoint and effort extraction measured on the blind test set corpora/effort_test/.

Per language: touchpoint micro and macro F1 of the shipped touchpoint head; precision and recall
of extracted durations (a hit overlaps a gold span and has the same value in minutes, within 1%),
of repeat-contact mentions (overlapping span; count agreement reported apart), transfers and
unresolved outcomes (overlapping span).

    .venv/bin/python benchmarks/effort_accuracy.py
"""

from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import f1_score

from feedback_nlp.config import load_settings, project_root
from feedback_nlp.effort import extract
from feedback_nlp.embed import Embedder
from feedback_nlp.persist import load_model

TEST = project_root() / "corpora" / "effort_test"


def _overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def _gold_spans(text: str, items: list[dict]) -> list[tuple[int, int, dict]]:
    out = []
    for it in items:
        start = text.find(it["span"])
        out.append((start, start + len(it["span"]), it))
    return out


class PR:
    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0

    def add(self, tp: int, n_pred: int, n_gold: int) -> None:
        self.tp += tp
        self.fp += n_pred - tp
        self.fn += n_gold - tp

    def __str__(self) -> str:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")
        return f"P {p:.2f} R {r:.2f} (gold {self.tp + self.fn})"


def _match(pred: list, gold: list[tuple[int, int, dict]], same_value=None) -> int:
    used, tp = set(), 0
    for p in pred:
        for k, (gs, ge, g) in enumerate(gold):
            if k in used or not _overlap(p.start, p.end, gs, ge):
                continue
            if same_value is not None and not same_value(p, g):
                continue
            used.add(k)
            tp += 1
            break
    return tp


def main() -> None:
    s = load_settings()
    model = load_model(s.model)
    emb = Embedder(s.embedder, threads=s.threads)
    model.check_embedder(emb.id)
    labels = list(model.touchpoints.labels_)
    print(f"model {model.model_id}; touchpoint threshold {s.touchpoint_min_probability}")
    print("lang  n   tp-microF1 tp-macroF1 | durations               | repeat contacts (count ok) | transfers"
          "               | unresolved")
    for path in sorted(TEST.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = [r["text"] for r in rows]
        P = (model.probabilities(emb.encode(texts), texts).touchpoints >= s.touchpoint_min_probability).astype(int)
        Y = np.array([[int(t in r["touchpoints"]) for t in labels] for r in rows])
        present = Y.sum(axis=0) > 0
        micro = f1_score(Y, P, average="micro", zero_division=0)
        macro = f1_score(Y[:, present], P[:, present], average="macro", zero_division=0)
        dur, rep, tra, unr = PR(), PR(), PR(), PR()
        count_ok = count_n = 0
        for r in rows:
            sig = extract(r["text"], r["lang"])
            gd = _gold_spans(r["text"], r.get("durations", []))
            dur.add(_match(sig.durations, gd, lambda p, g: abs(p.minutes - g["minutes"]) <= 0.01 * g["minutes"]),
                    len(sig.durations), len(gd))
            gr = _gold_spans(r["text"], r.get("repeat_contacts", []))
            rep.add(_match(sig.repeats, gr), len(sig.repeats), len(gr))
            for p in sig.repeats:
                for gs, ge, g in gr:
                    if _overlap(p.start, p.end, gs, ge):
                        count_n += 1
                        count_ok += int(p.count == g.get("count"))
                        break
            gt = _gold_spans(r["text"], r.get("transfers", []))
            tra.add(_match(sig.transfers, gt), len(sig.transfers), len(gt))
            gu = _gold_spans(r["text"], r.get("unresolved", []))
            unr.add(_match(sig.unresolved, gu), len(sig.unresolved), len(gu))
        print(f"{path.stem:<4} {len(rows):<3} {micro:.3f}      {macro:.3f}      | {str(dur):<23} | "
              f"{str(rep):<17} ({count_ok}/{count_n}) | {str(tra):<23} | {unr}")


if __name__ == "__main__":
    main()
