"""Every metric against an independent reference: brute-force loops written from the definitions, and sklearn."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from utils.labels import CATEGORIES, CONTINUOUS
from utils.metrics import emotic_metrics, retrieval_chance, retrieval_metrics, retrieval_ranks
from utils.store import read_npz, write_json, write_npz


# ------------------------------------------------------------------------------------------- references
def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    """AP from its definition: sum over distinct thresholds (high to low) of precision x recall increment."""
    positives = y.sum()
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        chosen = s >= t
        tp = (y[chosen] == 1).sum()
        recall = tp / positives
        ap += (recall - prev_recall) * tp / chosen.sum()
        prev_recall = recall
    return ap


def brute_ranks(sim: np.ndarray, caption_image: np.ndarray):
    """Ranks by sorting each query's candidates, wrong candidates placed first among equal scores."""
    m, c = sim.shape
    i2t = []
    for img in range(m):
        order = sorted(range(c), key=lambda j: (-sim[img, j], caption_image[j] == img))
        i2t.append(next(pos for pos, j in enumerate(order) if caption_image[j] == img) + 1)
    t2i = []
    for cap in range(c):
        order = sorted(range(m), key=lambda i: (-sim[i, cap], i == caption_image[cap]))
        t2i.append(order.index(caption_image[cap]) + 1)
    return np.array(i2t), np.array(t2i)


def random_emotic(rng, n=120, k=26, ties=False):
    labels = (rng.random((n, k)) < 0.2).astype(np.float32)
    scores = rng.random((n, k)) + 0.5 * labels          # informative but imperfect
    if ties:
        scores = np.round(scores * 4) / 4               # few distinct values: many ties
    return scores, labels


# ---------------------------------------------------------------------------------------------- Emotic
@pytest.mark.parametrize("ties", [False, True])
def test_map_matches_bruteforce_and_sklearn(ties):
    rng = np.random.default_rng(1)
    scores, labels = random_emotic(rng, ties=ties)
    labels[:, 3] = 0                                    # a category with no positive in the split
    m = emotic_metrics(scores, labels)
    ref = [brute_ap(labels[:, j], scores[:, j]) for j in range(26) if j != 3]
    sk = [average_precision_score(labels[:, j], scores[:, j]) for j in range(26) if j != 3]
    assert m["mAP"] == pytest.approx(100 * np.mean(ref), abs=1e-9)
    assert m["mAP"] == pytest.approx(100 * np.mean(sk), abs=1e-9)
    assert math.isnan(m["ap_per_category"][CATEGORIES[3]])
    assert m["n_categories_scored"] == 25
    assert m["ap_per_category"][CATEGORIES[0]] == pytest.approx(100 * brute_ap(labels[:, 0], scores[:, 0]))
    assert list(m["ap_per_category"]) == list(CATEGORIES)


def test_map_perfect_and_reversed_scores():
    rng = np.random.default_rng(2)
    _, labels = random_emotic(rng)
    assert emotic_metrics(labels + 0.0, labels)["mAP"] == pytest.approx(100.0)
    worst = emotic_metrics(-labels, labels)["mAP"]
    assert worst < 100 * labels.mean(0).max() + 1e-9      # reversed scores: AP at most the prevalence


def test_dominant_accuracy_and_vad_by_hand():
    labels = np.zeros((4, 26), np.float32)
    labels[0, [1, 5]] = 1
    labels[1, 2] = 1
    labels[2, 7] = 1
    labels[3, 0] = 1
    scores = np.zeros((4, 26))
    scores[0, 5] = 0.9    # top is a true category -> hit
    scores[1, 3] = 0.9    # top is a wrong category -> miss
    scores[2, 7] = 0.5    # hit
    # row 3: all scores equal -> argmax picks category 0, which is true -> hit
    vad_true = np.array([[5, 5, 5], [1, 10, 3], [7, 2, 2], [4, 4, 4]], float)
    vad_pred = vad_true + np.array([[1, 0, 0], [0, -2, 0], [0, 0, 3], [0.5, 0, 0]])
    m = emotic_metrics(scores, labels, vad_pred, vad_true)
    assert m["dominant_accuracy"] == pytest.approx(75.0)
    assert m["vad_mae"]["Valence"] == pytest.approx(1.5 / 4)
    assert m["vad_mae"]["Arousal"] == pytest.approx(2 / 4)
    assert m["vad_mae"]["Dominance"] == pytest.approx(3 / 4)
    assert m["vad_mae"]["mean"] == pytest.approx((1.5 + 2 + 3) / 12)
    assert m["n"] == 4


def test_emotic_metrics_rejects_bad_input():
    scores, labels = random_emotic(np.random.default_rng(0), n=10)
    with pytest.raises(ValueError, match="labels"):
        emotic_metrics(scores, labels[:, :5])
    with pytest.raises(ValueError, match="0/1"):
        emotic_metrics(scores, labels * 2)
    with pytest.raises(ValueError, match="NaN"):
        emotic_metrics(np.full_like(scores, np.nan), labels)
    with pytest.raises(ValueError, match="together"):
        emotic_metrics(scores, labels, vad_pred=np.ones((10, 3)))


# ---------------------------------------------------------------------------------------------- retrieval
def five_captions(rng, m=30, ties=False):
    caption_image = np.repeat(np.arange(m), 5)
    rng.shuffle(caption_image)                      # captions of one image not contiguous
    sim = rng.normal(size=(m, len(caption_image)))
    sim[caption_image, np.arange(len(caption_image))] += 1.5
    if ties:
        sim = np.round(sim)                         # integers: many exact ties
    return sim, caption_image


@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_matches_bruteforce(ties):
    sim, cap = five_captions(np.random.default_rng(3), ties=ties)
    i2t, t2i = retrieval_ranks(sim, cap)
    ref_i2t, ref_t2i = brute_ranks(sim, cap)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)
    m = retrieval_metrics(sim, cap)
    for k in (1, 5, 10):
        assert m[f"i2t_R@{k}"] == pytest.approx(100 * np.mean(ref_i2t <= k))
        assert m[f"t2i_R@{k}"] == pytest.approx(100 * np.mean(ref_t2i <= k))
    assert m["i2t_median_rank"] == np.median(ref_i2t)
    assert m["t2i_median_rank"] == np.median(ref_t2i)
    assert m["mean_R@1"] == pytest.approx((m["i2t_R@1"] + m["t2i_R@1"]) / 2)
    assert (m["n_images"], m["n_captions"]) == (30, 150)
    if ties:
        assert 0 < m["i2t_R@1"] < 100                # the tie case really exercises ties


def test_retrieval_extremes():
    m_img = 8
    cap = np.repeat(np.arange(m_img), 5)
    perfect = (cap[None, :] == np.arange(m_img)[:, None]).astype(float)
    m = retrieval_metrics(perfect, cap)
    assert m["i2t_R@1"] == m["t2i_R@1"] == 100 and m["i2t_median_rank"] == m["t2i_median_rank"] == 1
    # Constant similarities: ties count against the query, every rank is the worst possible.
    i2t, t2i = retrieval_ranks(np.zeros_like(perfect), cap)
    assert (i2t == 40 - 5 + 1).all() and (t2i == m_img).all()
    assert retrieval_metrics(np.zeros_like(perfect), cap)["mean_R@1"] == 0


def test_i2t_hit_when_any_caption_in_top_k():
    cap = np.array([0, 0, 1, 1])
    sim = np.array([[0.1, 0.9, 0.8, 0.0],      # image 0: best own caption (0.9) is first -> rank 1
                    [0.7, 0.6, 0.4, 0.55]])    # image 1: best own 0.55, beaten by 0.7 and 0.6 -> rank 3
    i2t, t2i = retrieval_ranks(sim, cap)
    assert i2t.tolist() == [1, 3]
    assert t2i.tolist() == [2, 1, 2, 1]    # e.g. caption 2 (image 1): image 0 scores 0.8 > 0.4


def test_retrieval_rejects_bad_input():
    sim, cap = five_captions(np.random.default_rng(0), m=4)
    with pytest.raises(ValueError, match="caption_image"):
        retrieval_metrics(sim, cap[:-1])
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.vstack([sim, sim[:1]]), cap)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        retrieval_metrics(sim, np.where(cap == 0, 7, cap))


# ---------------------------------------------------------------------------------------------- saving
def test_retrieval_chance_matches_enumeration_and_random_scores():
    """Exact reference: every ordering of 6 captions (images own 1, 2, 3 of them) is equally likely."""
    cap = np.array([0, 1, 1, 2, 2, 2])
    got = retrieval_chance(cap, ks=(1, 2, 5))
    orders = list(itertools.permutations(range(len(cap))))
    for k in (1, 2, 5):
        i2t = np.mean([np.mean([any(cap[c] == i for c in order[:k]) for order in orders]) for i in range(3)])
        assert got[f"i2t_R@{k}"] == pytest.approx(100 * i2t)
        assert got[f"t2i_R@{k}"] == pytest.approx(100 * min(k, 3) / 3)
    assert got["mean_R@1"] == pytest.approx((got["i2t_R@1"] + got["t2i_R@1"]) / 2)
    # and what retrieval_metrics gives random scores averages to it (3,000 draws: standard error < 1 point)
    rng = np.random.default_rng(0)
    runs = [retrieval_metrics(rng.random((3, 6)), cap) for _ in range(3000)]
    for key in ("i2t_R@1", "t2i_R@1"):
        assert np.mean([r[key] for r in runs]) == pytest.approx(got[key], abs=2.5)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_chance(np.array([0, 2]))


def test_payloads_round_trip_and_reproduce_metrics(tmp_path):
    rng = np.random.default_rng(4)
    scores, labels = random_emotic(rng, n=40)
    vad_true = rng.uniform(1, 10, (40, 3))
    vad_pred = vad_true + rng.normal(size=(40, 3))
    path = write_npz(tmp_path / "emotic.npz", {  # the keys and dtypes a notebook's predictions file uses
        "scores": scores.astype(np.float32), "labels": labels.astype(np.uint8), "vad_pred": vad_pred.astype(np.float32),
        "vad_true": vad_true.astype(np.float32), "categories": np.array(CATEGORIES),
        "continuous": np.array(CONTINUOUS), "index": np.arange(40, dtype=np.int64)})
    p = read_npz(path)
    assert set(p) == {"scores", "labels", "vad_pred", "vad_true", "categories", "continuous", "index"}
    assert p["categories"].tolist() == list(CATEGORIES)
    again = emotic_metrics(p["scores"], p["labels"], p["vad_pred"], p["vad_true"])
    direct = emotic_metrics(scores.astype(np.float32), labels, vad_pred.astype(np.float32), vad_true.astype(np.float32))
    assert again["mAP"] == pytest.approx(direct["mAP"]) and again["vad_mae"] == pytest.approx(direct["vad_mae"])

    sim, cap = five_captions(rng, m=6)
    names = [f"img{i}.jpg" for i in range(6)]
    texts = [f"caption {j}" for j in range(30)]
    p = read_npz(write_npz(tmp_path / "flickr.npz", {"similarity": sim.astype(np.float32),
                                                      "caption_image": np.asarray(cap, np.int64),
                                                      "image_names": np.array(names), "captions": np.array(texts)}))
    assert p["caption_image"].dtype == np.int64 and p["captions"][3] == "caption 3"
    assert retrieval_metrics(p["similarity"], p["caption_image"]) == retrieval_metrics(sim.astype(np.float32), cap)


def test_save_metrics_writes_strict_json(tmp_path):
    scores, labels = random_emotic(np.random.default_rng(5), n=20)
    labels[:, 0] = 0
    m = emotic_metrics(scores, labels)
    path = write_json(tmp_path / "m.json", {**m, "meta": {"profile": "smoke", "seed": np.int64(0)}})
    doc = json.loads(path.read_text())          # strict parser would fail on NaN
    assert doc["ap_per_category"][CATEGORIES[0]] is None
    assert doc["mAP"] == pytest.approx(m["mAP"]) and doc["meta"] == {"profile": "smoke", "seed": 0}
    assert "NaN" not in path.read_text()
