import numpy as np
import pandas as pd
import pytest

from feedback_nlp.themes import class_tfidf, find_themes, theme_ids, words

# A small corpus whose right grouping is known: two pain points of the delivery stage and two of
# billing, each said in Italian, English and Spanish, in two different phrasings.
LATE = [
    ("it", "La consegna è in ritardo di una settimana."),
    ("it", "Il pacco doveva arrivare lunedì e sono passati dieci giorni."),
    ("en", "My delivery is a week late."),
    ("en", "The parcel was due on Monday and it is ten days late now."),
    ("es", "El envío llega con una semana de retraso."),
    ("es", "El paquete tenía que llegar el lunes y ya va diez días tarde."),
]
DAMAGED = [
    ("it", "Il pacco è arrivato danneggiato, la scatola era schiacciata."),
    ("it", "La scatola era strappata e bagnata, il contenuto rovinato."),
    ("en", "The parcel came damaged, the box was crushed."),
    ("en", "The box was torn and soaked, the contents ruined."),
    ("es", "El paquete llegó dañado, la caja estaba aplastada."),
    ("es", "La caja venía rota y mojada, el contenido estropeado."),
]
BILLING = [
    ("it", "Mi avete addebitato due volte la stessa fattura."),
    ("en", "You charged me twice for the same bill."),
    ("es", "Me cobraron dos veces la misma factura."),
    ("it", "Il rimborso non è mai arrivato."),
    ("en", "The refund never arrived."),
    ("es", "El reembolso nunca llegó."),
]


def _units(groups):
    rows = [(stage, lang, text) for stage, g in groups for lang, text in g]
    return pd.DataFrame({
        "item_id": [f"i{i}" for i in range(len(rows))],
        "stage": [r[0] for r in rows],
        "lang": [r[1] for r in rows],
        "text": [r[2] for r in rows],
        "channel": [("email", "phone", "chat")[i % 3] for i in range(len(rows))],
        "segment": [("gen_z", "boomer")[i % 2] for i in range(len(rows))],
        "source": "survey",
    })


@pytest.fixture(scope="module")
def corpus(embedder):
    units = _units([("delivery", LATE), ("delivery", DAMAGED), ("billing", BILLING)])
    return units, embedder.encode(units["text"].tolist())


@pytest.fixture(scope="module")
def themes(corpus):
    units, emb = corpus
    return find_themes(units, emb)


def _of(ids, units, texts):
    return set(ids[units["text"].isin(texts)])


def test_themes_group_late_deliveries_across_languages_apart_from_damaged_parcels(corpus):
    units, emb = corpus
    ids = theme_ids(units, emb)
    late, damaged = _of(ids, units, [t for _, t in LATE]), _of(ids, units, [t for _, t in DAMAGED])
    assert len(late) == 1 and len(damaged) == 1 and late != damaged, ids.tolist()
    assert not (late | damaged) & {"delivery.other"}
    charged, refund = _of(ids, units, [t for _, t in BILLING[:3]]), _of(ids, units, [t for _, t in BILLING[3:]])
    assert charged != refund and all(i.startswith("billing.") for i in charged | refund)


def test_themes_have_size_share_channels_segments_and_languages(themes, corpus):
    units, emb = corpus
    ids = theme_ids(units, emb)
    named = [t for t in themes["delivery"] if not t.id.endswith(".other")]
    assert len(named) == 2
    for t in named:
        mine = units[ids == t.id]
        assert t.units == len(mine) == 6 and t.items == 6
        assert t.share == pytest.approx(len(mine) / (ids.str.startswith("delivery.")).sum())
        assert set(t.languages) == {"it", "en", "es"}
        assert t.channels == mine["channel"].value_counts().to_dict()
        assert t.segments == mine["segment"].value_counts().to_dict()
        assert t.trend is None


def test_themes_are_named_by_their_distinctive_words(themes, corpus):
    units, emb = corpus
    ids = theme_ids(units, emb)
    by_id = {t.id: t for t in themes["delivery"]}
    late = by_id[_of(ids, units, [t for _, t in LATE]).pop()]
    damaged = by_id[_of(ids, units, [t for _, t in DAMAGED]).pop()]
    assert {"late", "ritardo", "retraso", "tarde"} & set(late.keywords), late.keywords
    assert {"damaged", "danneggiato", "dañado", "box", "scatola", "caja"} & set(damaged.keywords), damaged.keywords
    assert late.name.split(" \u00b7 ") == late.keywords[:3]
    assert not set(late.keywords + damaged.keywords) & {"the", "il", "el", "una", "and", "was", "era"}


def test_themes_quotes_are_originals_one_per_item_and_varied_in_language(corpus):
    units, emb = corpus
    originals = dict(zip(units["item_id"], units["text"]))
    for n in (3, 5):
        for t in find_themes(units, emb, quotes=n)["delivery"]:
            assert len(t.quotes) == n
            assert len({q.item_id for q in t.quotes}) == n
            assert len({q.lang for q in t.quotes}) == 3  # every language the theme has, before repeats
            assert all(originals[q.item_id] == q.text for q in t.quotes)


def test_themes_small_groups_go_to_other(embedder):
    odd = [("en", "Your logo is an ugly shade of green.")]
    units = _units([("delivery", LATE), ("delivery", odd), ("delivery", DAMAGED)])
    emb = embedder.encode(units["text"].tolist())
    themes = {t.id: t for t in find_themes(units, emb, min_units=3)["delivery"]}
    assert list(themes)[-1] == "delivery.other"
    other = themes["delivery.other"]
    assert other.name == "other" and other.quotes == [] and other.units >= 1
    assert sum(t.units for t in themes.values()) == len(units)
    assert sum(t.share for t in themes.values()) == pytest.approx(1.0, abs=1e-3)


def test_themes_trend_compares_with_an_earlier_period(corpus, embedder):
    units, emb = corpus
    ids = theme_ids(units, emb)
    earlier = embedder.encode([t for _, t in LATE[:4]])  # an earlier period: only late deliveries
    themes = {t.id: t for t in find_themes(units, emb, previous={"delivery": earlier})["delivery"]}
    late = themes[_of(ids, units, [t for _, t in LATE]).pop()]
    damaged = themes[_of(ids, units, [t for _, t in DAMAGED]).pop()]
    assert late.trend["previous_share"] == pytest.approx(1.0) and late.trend["previous_units"] == 4
    assert late.trend["change"] == pytest.approx(late.share - 1.0, abs=1e-3)
    assert damaged.trend["previous_share"] == pytest.approx(0.0)


def test_themes_clustering_a_sample_assigns_the_rest_to_the_nearest_theme(corpus):
    units, emb = corpus
    full = theme_ids(units, emb)
    sampled = theme_ids(units, emb, max_units=8)  # delivery's 12 units: 8 clustered, 4 assigned
    assert (sampled != "").all()
    assert sum(t.units for t in find_themes(units, emb, max_units=8)["delivery"]) == 12
    assert (full[units["stage"] == "billing"] == sampled[units["stage"] == "billing"]).all()


def test_themes_empty_input_and_bad_options():
    assert find_themes(pd.DataFrame(), np.zeros((0, 0))) == {}
    units = _units([("delivery", LATE[:2])])
    with pytest.raises(ValueError, match="3 to 5"):
        find_themes(units, np.ones((2, 4)), quotes=7)
    with pytest.raises(ValueError, match="2 units but 3 embeddings"):
        find_themes(units, np.ones((3, 4)))


def test_themes_words_lemmatise_lowercase_and_drop_stop_words_and_placeholders():
    found = words(["I PACCHI sono arrivati danneggiati, scrivete a [EMAIL]", "The parcels were damaged"],
                  ["it", "en"])
    it_lemmas = {lemma for lemma, _ in found[0]}
    assert "pacco" in it_lemmas and "sono" not in it_lemmas and "email" not in it_lemmas
    assert ("parcel", "parcels") in found[1] and all(w != "the" for _, w in found[1])


def test_themes_class_tfidf_prefers_words_distinctive_of_a_class():
    a = [[("ritardo", "ritardo"), ("router", "router")], [("ritardo", "ritardo"), ("router", "router")]]
    b = [[("rotto", "rotti"), ("router", "router")], [("rotto", "rotti"), ("router", "router")]]
    kw = class_tfidf([a, b], top_n=2)
    assert kw[0][0] == "ritardo"
    assert kw[1][0] == "rotti"  # the lemma's form the customers wrote


def test_themes_keywords_keep_one_spelling_of_a_word_across_languages():
    cls = [[("fattura", "fattura"), ("novembre", "novembre")], [("factura", "factura"), ("noviembre", "noviembre")],
           [("fatura", "fatura"), ("taxa", "taxa")]]
    other = [[("router", "router")], [("router", "router")]]
    kw = class_tfidf([cls, other], min_doc_freq=1, top_n=4)[0]
    assert len({"fattura", "factura", "fatura"} & set(kw)) == 1
    assert len({"novembre", "noviembre"} & set(kw)) == 1 and "taxa" in kw


def test_themes_cluster_cuts_the_tree_sklearn_cuts_on_cosine_distance():
    """`cluster` hands AgglomerativeClustering precomputed distances (faster than its pdist):
    the labels must be those of `metric="cosine"` on the same rows."""
    from sklearn.cluster import AgglomerativeClustering

    from feedback_nlp.themes import cluster

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 64))
    x = np.repeat(centres, 40, axis=0) + rng.normal(scale=0.9, size=(480, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for threshold in (0.5, 0.7, 0.9, 1.0):  # 43, 12, 10 and 3 clusters
        ours = cluster(x, distance_threshold=threshold, max_units=1000)
        ref = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                      distance_threshold=threshold).fit_predict(x)
        assert 1 < ours.max() + 1 < len(x)
        assert ours.tolist() == ref.tolist()
    # A unit exactly on the mean direction is a zero row once centred: 1 from everything
    # (sklearn's cosine would give nan), so it ends alone or in "other", never an error.
    x[5] = 0.0
    labels = cluster(x, distance_threshold=0.9, max_units=1000)
    assert (labels == labels[5]).sum() == 1
