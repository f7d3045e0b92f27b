"""Benchmark of scheduled scoring: does a night cost in proportion to what is new?

Scales the shipped example dump (corpora/examples, 420 rows) to 20,000 items, then times three
`feedback-nlp score` runs, each a fresh process as a scheduler would start it:

1. first run into an empty store (everything read, cleaned, detected, split, embedded);
2. the same input again: nothing is new (target: at least 20x faster than the first). The
   outputs in place were built from exactly this state, so they are left as they are;
3. the same input again with the output folder deleted: nothing new, but the maps rebuilt from
   the store. This is the fixed overhead of any night that has something new;
4. the same input plus 5% new items (target: close to 5% of the first run's embedding time
   plus fixed overhead: run 3, plus loading the embedder, lingua and spaCy, which a night with
   nothing new never does).

Items are scaled by deterministic variants: for variant v of an item, each sentence loses one
word and has two neighbouring words swapped, at positions that depend on v and the sentence,
so unit texts are new (the store's embedding cache would otherwise make the first run cheap)
while keeping their language, length and topic. Ids get a `-vN` suffix; everything else of the
item is kept, including the example dump's broken rows (so every run also quarantines).

    .venv/bin/python benchmarks/incremental.py [--items 20000] [--new-share 0.05]
        [--model models/CURRENT] [--workdir DIR]

Prints the figures; asserts nothing (timings depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "corpora" / "examples"
_SENT = re.compile(r"(?<=[.!?])\s+")


def variant(text: str, v: int) -> str:
    """Variant v of a text: per sentence, drop one word and swap two neighbours (v = 0: as is)."""
    if v == 0 or not isinstance(text, str):
        return text
    out = []
    for s, sentence in enumerate(_SENT.split(text)):
        words = sentence.split(" ")
        n = len(words)
        if n >= 4:
            drop = (v + 3 * s) % n
            words = words[:drop] + words[drop + 1:]
            i = (v // n + s) % (len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        out.append(" ".join(words))
    return " ".join(out)


def load_examples() -> dict[str, list[dict]]:
    files = {}
    for p in sorted(EXAMPLES.iterdir()):
        if p.suffix == ".csv":
            files[p.name] = pd.read_csv(p, dtype=str, keep_default_na=False).to_dict("records")
        elif p.suffix == ".jsonl":
            rows = []
            for line in p.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append({"__raw__": line})  # a broken line stays broken
            files[p.name] = rows
    return files


def write_scaled(folder: Path, examples: dict[str, list[dict]], variants: range, limit: int) -> int:
    """Write variants `variants` of every example row into `folder` (same file formats), at
    most `limit` rows in all. Returns the number of rows written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    per_file: dict[str, list[dict]] = {name: [] for name in examples}
    for v in variants:
        for name, rows in examples.items():
            for r in rows:
                if written >= limit:
                    break
                if "__raw__" in r:
                    per_file[name].append(r)
                else:
                    r2 = dict(r)
                    if r2.get("id"):
                        r2["id"] = f"{r2['id']}-v{v}"
                    r2["text"] = variant(r2.get("text", ""), v)
                    per_file[name].append(r2)
                written += 1
    for name, rows in per_file.items():
        if not rows:
            continue
        p = folder / name
        if name.endswith(".csv"):
            pd.DataFrame(rows).to_csv(p, index=False)
        else:
            with open(p, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(r["__raw__"] + "\n" if "__raw__" in r else json.dumps(r, ensure_ascii=False) + "\n")
    return written


def score(inputs: list[Path], store: Path, out: Path, model: str | None) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "feedback_nlp", "score", *map(str, inputs), "--store", str(store), "--out",
           str(out), "--period", "week", "-q"]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("{")]
    if proc.returncode not in (0, 3) or not lines:
        sys.exit(f"score failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--new-share", type=float, default=0.05)
    ap.add_argument("--model", default=None, help="model folder (default: the config's, models/CURRENT)")
    ap.add_argument("--workdir", default=None, help="keep inputs, store and outputs here (default: a temp dir)")
    args = ap.parse_args()

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fnlp-bench-"))
    if work.exists() and args.workdir:
        shutil.rmtree(work)
    examples = load_examples()
    per_variant = sum(len(r) for r in examples.values())
    n_var = -(-args.items // per_variant)
    base = write_scaled(work / "in", examples, range(n_var), args.items)
    n_new = int(round(args.items * args.new_share))
    new = write_scaled(work / "new", examples, range(n_var, n_var + -(-n_new // per_variant)), n_new)
    store, out = work / "store.db", work / "out"
    print(f"input: {base} rows ({n_var} variants of {per_variant} example rows) in {work / 'in'}; "
          f"{new} new rows in {work / 'new'}; cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    t1, log1 = score([work / "in"], store, out, args.model)
    t2, log2 = score([work / "in"], store, out, args.model)
    shutil.rmtree(out)
    t3, log3 = score([work / "in"], store, out, args.model)
    t4, log4 = score([work / "in", work / "new"], store, out, args.model)

    def line(name: str, t: float, log: dict) -> None:
        r = log["counts"]["run"]
        tm = r["timings"]
        print(f"{name:<22} {t:8.2f} s  new {r['items_new']:>6}  unchanged {r['items_unchanged']:>6}  "
              f"embedded {r['texts_embedded']:>6}  reused {r['texts_reused']:>6}  "
              f"[embed {tm.get('embed', 0):.2f} s, embedder load {tm.get('embedder_load', 0):.2f} s, "
              f"process {tm.get('process', 0):.2f} s, read {tm.get('read', 0):.2f} s, "
              f"aggregate {tm.get('aggregate', 0):.2f} s, outputs {tm.get('outputs', 0):.2f} s]")

    line("1 first run", t1, log1)
    line("2 same input again", t2, log2)
    line("3 again, OUT deleted", t3, log3)
    line(f"4 +{new} new items", t4, log4)
    units1 = log1["counts"]["map"]["units"]
    print(f"first run: {units1} units, {log1['counts']['run']['texts_embedded']} distinct texts embedded")
    ratio = t1 / t2
    print(f"rerun speed-up: {ratio:.1f}x (target >= 20x): {'met' if ratio >= 20 else 'NOT met'}")
    tm1, tm4 = log1["counts"]["run"]["timings"], log4["counts"]["run"]["timings"]
    embed1, process1 = tm1.get("embed", 0.0), tm1.get("process", 0.0)
    share = new / base
    # loading the embedder, lingua's models and spaCy's languages: paid once by any night with new items
    loads4 = tm4.get("process", 0.0) - tm4.get("embed", 0.0) - share * (process1 - embed1)
    expected = t3 + share * embed1 + loads4
    print(f"new-items run: {t4:.2f} s vs fixed overhead {t3:.2f} s (run 3) + {share:.0%} of the first run's "
          f"embedding {embed1:.2f} s ({share * embed1:.2f} s) + model loading {loads4:.2f} s = {expected:.2f} s "
          f"(ratio {t4 / expected:.2f}); its embedding took {tm4.get('embed', 0.0):.2f} s "
          f"= {tm4.get('embed', 0.0) / embed1:.1%} of the first run's")


if __name__ == "__main__":
    main()
