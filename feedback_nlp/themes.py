"""Named pain points: the negative units of each stage grouped into themes.

A pain score says *that* a stage hurts; a theme says *what* hurts ("router arrived late",
"courier left the parcel outside"). Within each stage the negative units are clustered on their
embeddings; because the embedder is multilingual, "il router è arrivato in ritardo" and "the
router arrived a week late" land in one theme, so a theme counts all six languages at once.

- Clustering: agglomerative, average linkage, cosine distance, cut at `distance_threshold`, so
  the number of themes comes from the data. Before clustering, the mean embedding of all
  negative units of the run is subtracted: every complaint shares a "this is a complaint"
  direction, and without removing it unrelated complaints look alike and the cut depends on how
  negative the dump is rather than on what the complaints are about. The default cut (0.9) was
  chosen on the seed corpus's negative units, using their touchpoint labels as a stand-in for
  themes: mean adjusted Rand index per stage 0.32 (raw cosine at its best cut, 0.75: 0.28).
- Themes smaller than `min_units` units or `min_share` of the stage's negative units go into
  "other". A stage with more than `max_units` negative units is clustered on a random sample of
  that many (the tree costs n^2 memory) and the rest join the nearest theme.
- Names: class-based TF-IDF (as in BERTopic) over lemmas: spaCy `blank(lang)` with the lookup
  lemmatiser's table from `spacy-lookups-data`, text lowercased first (the tables are case-sensitive),
  stop words of the unit's language removed. A theme's keywords are words many of its units use
  and few other themes do, near-identical spellings across languages (fattura / factura) kept
  once; the name is the first three.
- Quotes: the units nearest the theme's centre, one per item, varied in language, in their
  original language and already redacted (clean.py ran before anything was stored).
- Trend: `previous` (earlier periods' negative embeddings per stage, e.g. from the store) are
  assigned to the same themes; each theme then carries its earlier share. Without it, null.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from feedback_nlp.records import UND

OTHER = "other"
_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")  # redaction marks such as [EMAIL], [IBAN]
_LEMMA_LANGS = ("it", "pt", "en", "es", "fr", "de")


@dataclass
class Quote:
    text: str
    lang: str
    item_id: str
    channel: str | None
    segment: str | None
    source: str | None


@dataclass
class Theme:
    """One named pain point of one stage (`id` is `<stage>.<n>`, or `<stage>.other`)."""

    id: str
    stage: str
    name: str
    keywords: list[str]
    units: int
    items: int
    share: float                      # of the stage's negative units (in the sample)
    channels: dict[str, int]
    segments: dict[str, int]
    languages: dict[str, int]
    sources: dict[str, int]
    quotes: list[Quote] = field(default_factory=list)
    trend: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- words ---------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _lemma_table(lang: str) -> dict[str, str] | None:
    """The lookup lemma table of spacy-lookups-data for a language, as a plain dict (None
    without one).

    This is the table spaCy's lemmatiser uses in `lookup` mode, and its rule (the table's entry,
    or the word itself); read as a dict it loads in a fraction of a second, where spaCy's hashed
    `Table` takes several per language. Tokenising reuses segment.py's cached blank pipelines.
    """
    if lang not in _LEMMA_LANGS:
        return None
    from spacy.util import load_language_data, registry

    return load_language_data(registry.lookups.get(lang)["lemma_lookup"])


@lru_cache(maxsize=16)
def _stop_words(lang: str) -> frozenset[str]:
    from spacy.util import get_lang_class

    langs = [lang] if lang in _LEMMA_LANGS else list(_LEMMA_LANGS)
    return frozenset(w.lower() for code in langs for w in get_lang_class(code).Defaults.stop_words)


def _words_lang(lang: str) -> str:
    return lang if lang in _LEMMA_LANGS else UND


def warm_up(langs: Iterable[str]) -> None:
    """Load what `words` needs for these languages: spaCy's tokenisers, lemma tables and stop
    words. About 5 s for all six (spaCy's French tokeniser exceptions alone 1.9 s, the lemma
    tables 1.5 s) that would otherwise come at the end of a run, when nothing else runs: a main
    process whose chunks go to workers calls this in a thread while it waits for them."""
    from feedback_nlp.segment import nlp_for

    for lang in sorted({_words_lang(str(v)) for v in langs}):
        nlp_for(lang)
        _lemma_table(lang)
        _stop_words(lang)


def words(texts: list[str], langs: list[str]) -> list[list[tuple[str, str]]]:
    """Content words of each text as (lemma, word) pairs, lowercase, stop words of the text's
    language removed (a text in an unsupported language: all six lists)."""
    from feedback_nlp.segment import nlp_for

    out: list[list[tuple[str, str]]] = [[] for _ in texts]
    by_lang: dict[str, list[int]] = {}
    for i, lang in enumerate(langs):
        by_lang.setdefault(_words_lang(lang), []).append(i)
    for lang, idx in by_lang.items():
        nlp, table, stop = nlp_for(lang), _lemma_table(lang), _stop_words(lang)
        for i in idx:
            found = []
            for tok in nlp.make_doc(_PLACEHOLDER.sub(" ", str(texts[i])).lower()):
                w = tok.text
                if not tok.is_alpha or len(w) < 3 or w in stop:
                    continue
                lemma = str(table.get(w, w)).lower() if table is not None else w
                if len(lemma) >= 3 and lemma not in stop:
                    found.append((lemma, w))
            out[i] = found
    return out


def class_tfidf(docs: list[list[list[tuple[str, str]]]], *, min_doc_freq: int = 2,
                top_n: int = 8) -> list[list[str]]:
    """Keywords per class (a class = a list of documents of (lemma, word) pairs) by class-based
    TF-IDF over lemmas, each shown as the class's most frequent form of it (lookup lemmas
    without POS tags are sometimes wrong, pt "casa" -> "casar"; the word the customers wrote is
    not).

    W(t, c) = tf(t, c) / |c| * log(1 + A / f(t)), with A the mean number of words per class and
    f(t) the frequency of t over all classes (Grootendorst 2022, BERTopic). Words used by fewer
    than `min_doc_freq` documents of a class are skipped, so one long note does not name a theme.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    if not docs:
        return []
    joined = [[lemma for d in cls for lemma, _ in d] for cls in docs]
    if not any(joined):
        return [[] for _ in docs]
    vec = CountVectorizer(analyzer=lambda words: words)
    tf = vec.fit_transform(joined).toarray().astype(float)
    vocab = vec.get_feature_names_out()
    sizes = tf.sum(axis=1)
    avg = sizes.mean()
    idf = np.log(1 + avg / np.maximum(tf.sum(axis=0), 1))
    w = tf / np.maximum(sizes, 1)[:, None] * idf[None, :]
    index = {t: j for j, t in enumerate(vocab)}
    out = []
    for c, cls in enumerate(docs):
        df = Counter(t for d in cls for t in {lemma for lemma, _ in d})
        forms: dict[str, Counter] = {}
        for d in cls:
            for lemma, form in d:
                forms.setdefault(lemma, Counter())[form] += 1
        allowed = np.zeros(len(vocab), dtype=bool)
        need = min_doc_freq if len(cls) >= min_doc_freq else 1
        for t, n in df.items():
            if n >= need:
                allowed[index[t]] = True
        if allowed.sum() < 3:  # tiny or very varied theme: fall back to all its words
            allowed = tf[c] > 0
        order = np.argsort(-np.where(allowed, w[c], -1), kind="stable")
        picked: list[str] = []
        for j in order:
            if len(picked) >= top_n or not allowed[j] or w[c, j] <= 0:
                break
            form = forms[str(vocab[j])].most_common(1)[0][0]
            if not any(_cognates(form, p) for p in picked):
                picked.append(form)
        out.append(picked)
    return out


def _cognates(a: str, b: str) -> bool:
    """Near-identical spellings (fattura / factura / fatura, novembre / noviembre): a theme that
    spans languages would otherwise be named by one word three times."""
    from difflib import SequenceMatcher

    return SequenceMatcher(None, a, b).ratio() >= 0.75


# --- clustering ----------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1, n)


def cluster(x: np.ndarray, *, distance_threshold: float, max_units: int, seed: int = 0) -> np.ndarray:
    """Cluster labels for the (centred, normalised) rows of x; the number of clusters comes
    from the distance threshold."""
    from sklearn.cluster import AgglomerativeClustering

    n = len(x)
    if n == 1:
        return np.zeros(1, dtype=int)
    if n <= max_units:
        # Cosine distances as one matrix product: scipy's pdist, which `metric="cosine"` runs,
        # took 3.7x as long on 2,000 units (the same labels on every stage of a 100,000-item run).
        un = _unit(x)
        dist = 1.0 - un @ un.T
        np.clip(dist, 0.0, 2.0, out=dist)
        np.fill_diagonal(dist, 0.0)
        return AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                       distance_threshold=distance_threshold).fit_predict(dist)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=max_units, replace=False))
    lab_s = cluster(x[sample], distance_threshold=distance_threshold, max_units=max_units)
    cents = _unit(np.vstack([x[sample][lab_s == c].mean(axis=0) for c in range(lab_s.max() + 1)]))
    labels = np.argmax(x @ cents.T, axis=1)
    labels[sample] = lab_s
    return labels


def _counts(s: pd.Series) -> dict[str, int]:
    vc = s.astype("string").fillna("(none)").value_counts()
    return {str(k): int(v) for k, v in vc.items()}


def _quotes(units: pd.DataFrame, sims: np.ndarray, n: int) -> list[Quote]:
    """The n units nearest the centre, one per item and text, new languages first."""
    order = np.argsort(-sims, kind="stable")
    picked: list[int] = []
    seen_items: set[str] = set()
    seen_texts: set[str] = set()
    seen_langs: set[str] = set()
    pool = list(order[: max(3 * n, n)])
    for prefer_new_lang in (True, False):
        for i in pool + ([] if prefer_new_lang else list(order[len(pool):])):
            if len(picked) >= n:
                break
            r = units.iloc[i]
            item, text, lang = str(r["item_id"]), str(r["text"]).strip(), str(r["lang"])
            if i in picked or item in seen_items or text.lower() in seen_texts:
                continue
            if prefer_new_lang and lang in seen_langs:
                continue
            picked.append(i)
            seen_items.add(item)
            seen_texts.add(text.lower())
            seen_langs.add(lang)
    picked.sort(key=lambda i: -sims[i])
    return [Quote(text=str(units.iloc[i]["text"]), lang=str(units.iloc[i]["lang"]),
                  item_id=str(units.iloc[i]["item_id"]), channel=_opt(units.iloc[i].get("channel")),
                  segment=_opt(units.iloc[i].get("segment")), source=_opt(units.iloc[i].get("source")))
            for i in picked]


def _opt(v: Any) -> str | None:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def _groups(units: pd.DataFrame, embeddings: np.ndarray, *, distance_threshold: float, min_units: int,
            min_share: float, max_units: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """(centre, centred unit vectors, [(stage, unit positions, theme index per unit or -1, theme
    centres)]): themes numbered largest first, -1 for "other"."""
    emb = np.asarray(embeddings, dtype=np.float64)
    centre = _unit(emb).mean(axis=0)
    x = _unit(_unit(emb) - centre)
    groups = []
    for stage, idx in units.groupby("stage", sort=False).indices.items():
        idx = np.asarray(idx)
        labels = cluster(x[idx], distance_threshold=distance_threshold, max_units=max_units, seed=seed)
        sizes = np.bincount(labels)
        keep = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] >= max(min_units, min_share * len(idx))]
        remap = {c: k for k, c in enumerate(keep)}
        labels = np.array([remap.get(c, -1) for c in labels])
        cents = _unit(np.vstack([x[idx][labels == k].mean(axis=0) for k in range(len(keep))])) \
            if keep else np.zeros((0, x.shape[1]))
        groups.append((str(stage), idx, labels, cents))
    return centre, x, groups


def theme_ids(units: pd.DataFrame, embeddings: np.ndarray, *, distance_threshold: float = 0.9,
              min_units: int = 3, min_share: float = 0.05, max_units: int = 2000, seed: int = 0) -> pd.Series:
    """The theme id of every unit (`<stage>.<n>` or `<stage>.other`), as `find_themes` names
    them with the same options; aligned with `units`' rows."""
    out = pd.Series("", index=units.index, dtype=object)
    if len(units) == 0:
        return out
    _, _, groups = _groups(units.reset_index(drop=True), embeddings, distance_threshold=distance_threshold,
                           min_units=min_units, min_share=min_share, max_units=max_units, seed=seed)
    values = np.empty(len(units), dtype=object)
    for stage, idx, labels, _ in groups:
        values[idx] = [f"{stage}.{k + 1}" if k >= 0 else f"{stage}.{OTHER}" for k in labels]
    out[:] = values
    return out


def find_themes(units: pd.DataFrame, embeddings: np.ndarray, *, distance_threshold: float = 0.9,
                min_units: int = 3, min_share: float = 0.05, max_units: int = 2000, quotes: int = 3,
                keywords: int = 6, previous: Mapping[str, np.ndarray] | None = None,
                seed: int = 0) -> dict[str, list[Theme]]:
    """Negative, assigned units (with `stage`, `text`, `lang`, `item_id`, channel, segment,
    source) and their embeddings -> themes per stage, largest first, "other" last.

    `previous` maps a stage to embeddings of an earlier period's negative units at that stage;
    when given, each theme's `trend` holds the earlier share and the change.
    """
    if not 3 <= quotes <= 5:
        raise ValueError("quotes per theme must be 3 to 5")
    if units is None or len(units) == 0 or embeddings is None or len(embeddings) == 0:
        return {}
    if len(units) != len(embeddings):
        raise ValueError(f"{len(units)} units but {len(embeddings)} embeddings")
    units = units.reset_index(drop=True)
    centre, x, groups = _groups(units, embeddings, distance_threshold=distance_threshold, min_units=min_units,
                                min_share=min_share, max_units=max_units, seed=seed)

    texts = units["text"].astype(str).tolist()
    found = words(texts, units["lang"].astype(str).tolist())
    classes = [[found[i] for i in idx[labels == k]] for _, idx, labels, cents in groups for k in range(len(cents))]
    names = iter(class_tfidf(classes, top_n=keywords))

    out: dict[str, list[Theme]] = {}
    for stage, idx, labels, cents in groups:
        su = units.iloc[idx].reset_index(drop=True)
        prev_share = _previous_shares(previous.get(stage) if previous else None, centre, cents,
                                      distance_threshold)
        themes = []
        for k in list(range(len(cents))) + [-1]:
            mask = labels == k
            if not mask.any():  # no "other" in this stage (kept themes are never empty)
                continue
            tu = su[mask].reset_index(drop=True)
            if k >= 0:
                kw = next(names)
                sims = x[idx][mask] @ cents[k]
                q = _quotes(tu, sims, quotes)
                tid, name = f"{stage}.{k + 1}", " \u00b7 ".join(kw[:3]) or f"theme {k + 1}"
            else:
                kw, q, tid, name = [], [], f"{stage}.{OTHER}", OTHER
            trend = None
            if prev_share is not None:
                before = float(prev_share[k])
                now = float(mask.mean())
                trend = {"previous_share": round(before, 4), "change": round(now - before, 4),
                         "previous_units": int(len(previous[stage]))}  # type: ignore[index]
            themes.append(Theme(
                id=tid, stage=stage, name=name, keywords=kw, units=int(mask.sum()),
                items=int(tu["item_id"].nunique()), share=round(float(mask.mean()), 4),
                channels=_counts(tu["channel"]) if "channel" in tu else {},
                segments=_counts(tu["segment"]) if "segment" in tu else {},
                languages=_counts(tu["lang"]), sources=_counts(tu["source"]) if "source" in tu else {},
                quotes=q, trend=trend,
            ))
        out[stage] = themes
    return out


def _previous_shares(prev: np.ndarray | None, centre: np.ndarray, cents: np.ndarray,
                     distance_threshold: float) -> np.ndarray | None:
    """Share of an earlier period's units per theme (last entry: "other"), by nearest centre."""
    if prev is None:
        return None
    prev = np.asarray(prev, dtype=np.float64)
    shares = np.zeros(len(cents) + 1)
    if len(prev) == 0:
        return shares
    if len(cents) == 0:
        shares[-1] = 1.0
        return shares
    px = _unit(_unit(prev) - centre)
    sims = px @ cents.T
    best = np.argmax(sims, axis=1)
    best[sims[np.arange(len(px)), best] < 1 - distance_threshold] = -1
    for b in best:
        shares[b] += 1  # index -1 is "other"
    return shares / len(px)


def themes_to_json(themes: Mapping[str, list[Theme]]) -> dict[str, list[dict[str, Any]]]:
    return {stage: [t.to_dict() for t in ts] for stage, ts in themes.items()}
