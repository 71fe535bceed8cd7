"""The synthetic datasets: real raw formats, deterministic by seed, planted bad records, learnable labels.

Expectations are checked against independent readers (scipy's loadmat in both modes, PIL, the csv module),
not against the generator's own helpers.
"""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from utils import synthetic
from utils.labels import CATEGORIES

SPLITS = ("train", "val", "test")
TRAIN_PERSON_FIELDS = ("body_bbox", "annotations_categories", "annotations_continuous", "gender", "age")
EVAL_PERSON_FIELDS = ("body_bbox", "annotations_categories", "combined_categories", "annotations_continuous",
                      "combined_continuous", "gender", "age")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke dataset written twice with seed 0: once by the command line (as CI does), once by the API."""
    cli = tmp_path_factory.mktemp("cli")
    assert synthetic.main(["--size", "smoke", "--seed", "0", "--out", str(cli)]) == 0
    api = tmp_path_factory.mktemp("api")
    return api, synthetic.make_all(api, "smoke", 0), cli


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mat(path, **kw):
    return scipy.io.loadmat(path, **kw)


def _squeezed_persons(rec):
    return list(np.atleast_1d(rec.person))


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_files(smoke):
    api, _, cli = smoke
    digest = _tree_digest(api)
    assert digest == _tree_digest(cli), "same seed must give byte-identical .mat, images and text files"
    assert sum(k.endswith(".jpg") for k in digest) > 100
    # and identical decoded .mat contents, record by record
    a = _mat(api / "emotic/Annotations/Annotations.mat")
    b = _mat(cli / "emotic/Annotations/Annotations.mat")
    for split in SPLITS:
        assert a[split].shape == b[split].shape
        for ra, rb in zip(a[split][0], b[split][0]):
            assert str(ra["filename"][0]) == str(rb["filename"][0])
            for pa, pb in zip(ra["person"][0], rb["person"][0]):
                np.testing.assert_array_equal(pa["body_bbox"], pb["body_bbox"])


def test_other_seed_differs(smoke, tmp_path):
    api, _, _ = smoke
    synthetic.make_emotic(tmp_path / "emotic", "smoke", seed=1)
    synthetic.make_flickr8k(tmp_path / "flickr", "smoke", seed=1, layout="kaggle")
    assert (tmp_path / "emotic/Annotations/Annotations.mat").read_bytes() != \
        (api / "emotic/Annotations/Annotations.mat").read_bytes()
    assert (tmp_path / "emotic/descriptions.csv").read_text() != (api / "emotic/descriptions.csv").read_text()
    assert (tmp_path / "flickr/captions.txt").read_text() != (api / "flickr8k_kaggle/captions.txt").read_text()
    assert not set(_tree_digest(tmp_path / "flickr/Images").values()) & \
        set(_tree_digest(api / "flickr8k_kaggle/Images").values())


# ---------------------------------------------------------------------------------------------- .mat format
def test_mat_has_real_nesting_with_default_loadmat(smoke):
    out, _, _ = smoke
    mat = _mat(out / "emotic/Annotations/Annotations.mat")
    assert {"train", "val", "test"} <= set(mat)
    for split in SPLITS:
        recs = mat[split]
        assert recs.shape[0] == 1 and recs.shape[1] > 1, "1xN struct array"
        assert recs.dtype.names == ("filename", "folder", "image_size", "original_database", "person")
        rec = recs[0, 0]
        assert rec["image_size"].shape == (1, 1) and set(rec["image_size"].dtype.names) == {"n_col", "n_row"}
        assert set(rec["original_database"].dtype.names) == {"name", "info"}
        persons = rec["person"]
        assert persons.shape[0] == 1
        want = TRAIN_PERSON_FIELDS if split == "train" else EVAL_PERSON_FIELDS
        assert persons.dtype.names == want
        p = persons[0, 0]
        assert p["body_bbox"].shape == (1, 4) and p["body_bbox"].dtype == np.float64
        ann = p["annotations_categories"]
        assert ann.dtype.names == ("categories",)
        if split == "train":
            assert ann.shape == (1, 1)
            assert p["annotations_continuous"].shape == (1, 1)
        else:
            assert ann.shape[0] == 1 and ann.shape[1] >= 2, "one struct per annotator"
            assert p["annotations_continuous"].shape == ann.shape
            assert p["combined_continuous"].shape == (1, 1)
            assert p["combined_categories"].dtype == object and p["combined_categories"].shape[0] == 1
        cats = ann[0, 0]["categories"]
        assert cats.dtype == object and cats.shape[0] == 1, "a 1xK cell"
        assert set(p["annotations_continuous"].dtype.names) == {"valence", "arousal", "dominance"}


def test_mat_squeezed_fields_by_name(smoke):
    out, written, _ = smoke
    mat = _mat(out / "emotic/Annotations/Annotations.mat", squeeze_me=True, struct_as_record=False)
    truth = {(t["split"], t["record"], t["person"]): t for t in written["emotic"]["persons"]}
    n = 0
    for split in SPLITS:
        for ri, rec in enumerate(np.atleast_1d(mat[split])):
            assert rec.folder in synthetic.EMOTIC_FOLDERS and rec.filename.endswith(".jpg")
            for pi, p in enumerate(_squeezed_persons(rec)):
                t = truth[(split, ri, pi)]
                cats = p.annotations_categories.categories if split == "train" else p.combined_categories
                assert [str(c) for c in np.atleast_1d(cats)] == t["categories"]
                assert all(c in CATEGORIES for c in t["categories"]) and len(t["categories"]) <= 4
                cont = p.annotations_continuous if split == "train" else p.combined_continuous
                np.testing.assert_array_equal([cont.valence, cont.arousal, cont.dominance], t["vad"])
                assert p.gender in ("Male", "Female") and p.age in ("Adult", "Teenager", "Kid")
                if split != "train" and t["categories"]:  # annotators' union is the combined set
                    union = {str(c) for a in np.atleast_1d(p.annotations_categories)
                             for c in np.atleast_1d(a.categories)}
                    assert union == set(t["categories"])
                n += 1
    assert n == sum(s["persons"] for s in written["emotic"]["splits"].values())
    assert 60 <= n <= 90


def test_descriptions_csv_matches_mat_boxes(smoke):
    out, _, _ = smoke
    mat = _mat(out / "emotic/Annotations/Annotations.mat", squeeze_me=True, struct_as_record=False)
    boxes = [(r.folder, r.filename, *map(float, p.body_bbox))
             for s in SPLITS for r in np.atleast_1d(mat[s]) for p in _squeezed_persons(r)]
    with open(out / "emotic/descriptions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["folder", "filename", "x1", "y1", "x2", "y2", "description"]
    assert [(r["folder"], r["filename"], *(float(r[k]) for k in ("x1", "y1", "x2", "y2"))) for r in rows] == boxes
    assert all(r["description"].strip() for r in rows)


def test_descriptions_never_list_category_names(smoke):
    out, _, _ = smoke
    names = [re.compile(rf"\b{re.escape(part)}\b", re.I) for c in CATEGORIES for part in c.split("/")]
    with open(out / "emotic/descriptions.csv", newline="", encoding="utf-8") as f:
        texts = [r["description"] for r in csv.DictReader(f)]
    counts = [sum(bool(n.search(t)) for n in names) for t in texts]
    assert max(counts) < 3
    assert len(set(texts)) > 0.8 * len(texts), "descriptions should vary"


# ---------------------------------------------------------------------------------------------- images
def test_image_modes_are_real(smoke):
    out, written, _ = smoke
    modes = written["emotic"]["image_modes"]
    want = {"RGB": ("JPEG", "RGB"), "L": ("JPEG", "L"), "CMYK": ("JPEG", "CMYK"), "PNG": ("PNG", "RGB")}
    for mode, files in modes.items():
        assert files, f"no {mode} image written"
        for rel in files:
            path = out / "emotic/emotic" / rel
            assert path.suffix == ".jpg"
            with Image.open(path) as im:
                assert (im.format, im.mode) == want[mode], rel
    sizes = set()
    mat = _mat(out / "emotic/Annotations/Annotations.mat", squeeze_me=True, struct_as_record=False)
    for s in SPLITS:
        for r in np.atleast_1d(mat[s]):
            path = out / "emotic/emotic" / r.folder / r.filename
            if path.exists():
                with Image.open(path) as im:
                    assert im.size == (r.image_size.n_col, r.image_size.n_row)
                    sizes.add(im.size)
            assert 1 <= len(_squeezed_persons(r)) <= 3
    assert len(sizes) >= 3 and any(w != h for w, h in sizes)


# ---------------------------------------------------------------------------------------------- planted
def test_planted_emotic_records_exist(smoke):
    out, written, _ = smoke
    mat = _mat(out / "emotic/Annotations/Annotations.mat", squeeze_me=True, struct_as_record=False)
    reasons = {p["reason"] for p in written["emotic"]["planted"]}
    assert reasons == {"nan_continuous", "no_category", "empty_box", "missing_image", "box_partly_outside"}
    for p in written["emotic"]["planted"]:
        rec = np.atleast_1d(mat[p["split"]])[p["record"]]
        person = _squeezed_persons(rec)[p["person"]]
        w, h = rec.image_size.n_col, rec.image_size.n_row
        x1, y1, x2, y2 = person.body_bbox
        cont = person.annotations_continuous if p["split"] == "train" else person.combined_continuous
        cats = person.annotations_categories.categories if p["split"] == "train" else person.combined_categories
        if p["reason"] == "nan_continuous":
            assert np.isnan(cont.valence)
        elif p["reason"] == "no_category":
            assert np.size(cats) == 0
        elif p["reason"] == "empty_box":
            assert min(x2, w) - max(x1, 0) <= 0 or min(y2, h) - max(y1, 0) <= 0
        elif p["reason"] == "missing_image":
            assert not (out / "emotic/emotic" / rec.folder / rec.filename).exists()
        else:  # partly outside: reaches out but keeps area after clipping
            assert (x1 < 0 or y1 < 0 or x2 > w or y2 > h)
            assert min(x2, w) > max(x1, 0) and min(y2, h) > max(y1, 0)
    counts = written["emotic"]["splits"]
    n_skipped = sum(p["skipped"] for p in written["emotic"]["planted"])
    assert sum(sum(s["skipped"].values()) for s in counts.values()) == n_skipped


def test_flickr_layouts_hold_the_same_captions_and_images(smoke):
    out, written, _ = smoke
    with open(out / "flickr8k_kaggle/captions.txt", newline="", encoding="utf-8") as f:
        kaggle = [(r["image"], r["caption"]) for r in csv.DictReader(f)]
    token = out / "flickr8k_original/Flickr8k_text/Flickr8k.token.txt"
    original = []
    for line in token.read_text(encoding="utf-8").split("\n")[:-1]:
        key, cap = line.split("\t", 1)
        name, num = key.rsplit("#", 1)
        original.append((name, cap))
        assert re.fullmatch(r"\d{9,10}_[0-9a-f]{10}\.jpg", name)
    assert kaggle == original and len(kaggle) == 5 * len(written["flickr8k_kaggle"]["images"])
    caps = [c for _, c in kaggle]
    assert any("," in c for c in caps) and any('"' in c for c in caps) and any(not c.isascii() for c in caps)
    assert _tree_digest(out / "flickr8k_kaggle/Images") == _tree_digest(out / "flickr8k_original/Flickr8k_Dataset")
    lists = {s: (out / f"flickr8k_original/Flickr8k_text/Flickr_8k.{s}Images.txt").read_text().split()
             for s in ("train", "dev", "test")}
    assert sorted(sum(lists.values(), [])) == sorted(written["flickr8k_kaggle"]["images"])
    assert len(lists["train"]) == 6 * len(lists["test"]) == 6 * len(lists["dev"])
    assert 30 <= len(written["flickr8k_kaggle"]["images"]) <= 50


def test_flickr_planted_problems(smoke):
    out, written, _ = smoke
    planted = {p["reason"]: p for p in written["flickr8k_kaggle"]["planted"]}
    with open(out / "flickr8k_kaggle/captions.txt", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    empty = [r for r in rows if r["caption"] == ""]
    assert [r["image"] for r in empty] == [planted["empty_caption"]["image"]]
    missing = planted["missing_image"]["image"]
    assert any(r["image"] == missing for r in rows)
    assert not (out / "flickr8k_kaggle/Images" / missing).exists()
    assert not (out / "flickr8k_original/Flickr8k_Dataset" / missing).exists()


def test_person_count_override(tmp_path):
    written = synthetic.make_emotic(tmp_path, "smoke", 0, n_persons=40)
    assert sum(s["persons"] for s in written["splits"].values()) == 40
    mat = _mat(tmp_path / "Annotations/Annotations.mat", squeeze_me=True, struct_as_record=False)
    assert sum(len(_squeezed_persons(r)) for s in SPLITS for r in np.atleast_1d(mat[s])) == 40


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="size"):
        synthetic.make_emotic(tmp_path, "huge")
    with pytest.raises(ValueError, match="layout"):
        synthetic.make_flickr8k(tmp_path, "smoke", 0, "zip")
    with pytest.raises(ValueError, match="n_persons"):
        synthetic.make_emotic(tmp_path, "smoke", 0, n_persons=10)


def test_exact_persons_per_split(tmp_path):
    """The rehearsal's real split sizes: each split of the .mat (read by scipy) holds exactly the persons asked."""
    want = {"train": 47, "val": 9, "test": 20}
    written = synthetic.make_emotic(tmp_path, "smoke", 0, split_persons=want)
    mat = _mat(tmp_path / "Annotations/Annotations.mat", squeeze_me=True, struct_as_record=False)
    assert {s: sum(len(_squeezed_persons(r)) for r in np.atleast_1d(mat[s])) for s in SPLITS} == want
    with open(tmp_path / "descriptions.csv", newline="", encoding="utf-8") as f:
        assert sum(1 for _ in csv.DictReader(f)) == sum(want.values())
    # every planted bad record is still there, in the split it belongs to
    assert {(p["split"], p["reason"]) for p in written["planted"]} >= {
        ("train", "nan_continuous"), ("train", "missing_image"), ("val", "nan_continuous"), ("test", "no_category")}


def test_exact_split_lists_leave_the_rest_unlisted(tmp_path):
    """Like the real download: lists of exactly the asked sizes, disjoint, and the remaining images in none."""
    # seed 7 shuffles the missing image past the lists: the generator must move it into one
    written = synthetic.make_flickr8k(tmp_path, "smoke", 7, "original", n_images=40,
                                      split_images={"train": 24, "dev": 4, "test": 5})
    text = tmp_path / "Flickr8k_text"
    lists = {k: (text / f"Flickr_8k.{k}Images.txt").read_text(encoding="utf-8").split()
             for k in ("train", "dev", "test")}
    assert {k: len(v) for k, v in lists.items()} == {"train": 24, "dev": 4, "test": 5}
    listed = set().union(*lists.values())
    assert len(listed) == 33, "the lists are disjoint"
    with open(text / "Flickr8k.token.txt", encoding="utf-8") as f:
        captioned = {line.split("#", 1)[0] for line in f}
    assert len(captioned) == 40 and listed < captioned
    missing = next(p["image"] for p in written["planted"] if p["reason"] == "missing_image")
    assert missing in listed and not (tmp_path / "Flickr8k_Dataset" / missing).exists()


def test_bad_split_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="split_persons"):
        synthetic.make_emotic(tmp_path, "smoke", 0, split_persons={"train": 40, "val": 10})
    with pytest.raises(ValueError, match="split_persons"):
        synthetic.make_emotic(tmp_path, "smoke", 0, split_persons={"train": 40, "val": 2, "test": 10})
    with pytest.raises(ValueError, match="n_persons"):
        synthetic.make_emotic(tmp_path, "smoke", 0, n_persons=60, split_persons={"train": 40, "val": 5, "test": 10})
    with pytest.raises(ValueError, match="more than the 40"):
        synthetic.make_flickr8k(tmp_path, "smoke", 0, "original", n_images=40,
                                split_images={"train": 30, "dev": 6, "test": 6})
    with pytest.raises(ValueError, match="split_images"):
        synthetic.make_flickr8k(tmp_path, "smoke", 0, "original", split_images={"train": 30, "val": 5, "test": 5})


# ---------------------------------------------------------------------------------------------- learnability
def test_modalities_carry_partly_different_information():
    """Cheap stand-ins for the frozen encoders: pixels of the drawn figure vs. words of the description.

    Body-drawn categories must be better predicted from the body crop's colours than from the words, and
    text-only categories the other way round (the full check with MobileNetV2 / MiniLM is ``--check``).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    from utils.synthetic.emotic import describe
    from utils.synthetic.scenes import render, sample_records

    rng = np.random.default_rng(0)
    splits = sample_records(rng, 320)
    persons, hist, texts = [], [], []
    for rec in splits["train"] + splits["val"] + splits["test"]:
        img = np.asarray(render(rec, rng))
        for p in rec.persons:
            x1, y1, x2, y2 = (int(v) for v in p.box)
            crop = img[y1:y2, x1:x2] // 64                       # 4 levels per channel -> 64 colour bins
            hist.append(np.bincount((crop[..., 0] * 16 + crop[..., 1] * 4 + crop[..., 2]).ravel(),
                                    minlength=64) / crop[..., 0].size)
            texts.append(describe(p, rec, rng))
            persons.append(p)
    y = np.array([[c in p.categories for c in CATEGORIES] for p in persons])
    x_img = np.array(hist)
    x_txt = TfidfVectorizer().fit_transform(texts)
    n = int(0.7 * len(y))

    def ap(x, cats):
        out = []
        for c in cats:
            j = CATEGORIES.index(c)
            if y[:n, j].any() and y[n:, j].any():
                s = LogisticRegression(C=10, solver="liblinear").fit(x[:n], y[:n, j]).decision_function(x[n:])
                out.append(average_precision_score(y[n:, j], s))
        return float(np.mean(out))

    body = [c for c, q in synthetic.CUES.items() if q.channel == "body" and q.prevalence >= 0.06]
    text_only = [c for c, q in synthetic.CUES.items() if q.channel is None and q.prevalence >= 0.07]
    assert ap(x_img, body) > ap(x_txt, body) + 0.1
    assert ap(x_txt, text_only) > ap(x_img, text_only) + 0.15
    chance = float(y[n:].mean())
    assert ap(x_txt, text_only) > 2 * chance


# ---------------------------------------------------------------------------------------------- --check report
def _colour_histograms(images: np.ndarray) -> np.ndarray:
    """(N, 64) share of pixels in each of 4x4x4 RGB bins: a cheap stand-in for the frozen image encoder."""
    q = images.astype(np.int64) // 64
    bins = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(len(images), -1)
    return np.stack([np.bincount(b, minlength=64) / b.size for b in bins])


def _average_precision_by_definition(y: np.ndarray, s: np.ndarray) -> float:
    """Mean over the positives of the precision among all items scored at least as high as that positive."""
    return float(np.mean([y[s >= s[i]].sum() / (s >= s[i]).sum() for i in np.flatnonzero(y)]))


def _recall_at_5_by_loop(sim: np.ndarray, owner: np.ndarray) -> tuple[float, float]:
    i2t = [i in owner[np.argsort(-sim[i], kind="stable")[:5]] for i in range(sim.shape[0])]
    t2i = [owner[c] in np.argsort(-sim[:, c], kind="stable")[:5] for c in range(sim.shape[1])]
    return 100 * float(np.mean(i2t)), 100 * float(np.mean(t2i))


def test_emotic_check_reads_the_kept_persons_and_scores_them_by_definition(smoke):
    """The check's reader keeps exactly the persons the generator promises; its mAP, chance and fusion gain equal
    the definitions applied here to the very scores it computed (cheap features instead of the frozen encoders)."""
    from sklearn.feature_extraction.text import CountVectorizer

    from utils.synthetic.learnability import MODALITIES, emotic_report, emotic_scores, load_emotic_persons

    out, written, _ = smoke
    persons = load_emotic_persons(out / "emotic")
    kept = [p for p in written["emotic"]["persons"] if p["kept"]]
    assert persons.split == [p["split"] for p in kept]
    assert persons.text == [p["description"] for p in kept]
    labels = np.stack(persons.labels)
    np.testing.assert_array_equal(labels, [[c in p["categories"] for c in CATEGORIES] for p in kept])
    assert all(crop.shape == (128, 128, 3) and crop.dtype == np.uint8 for crop in persons.body)

    features = {"body": _colour_histograms(np.stack(persons.body)),
                "context": _colour_histograms(np.stack(persons.context))[persons.context_index],
                "text": CountVectorizer().fit_transform(persons.text).toarray().astype(float)}
    is_test = np.array(persons.split) == "test"
    scores = emotic_scores(features, labels, is_test)
    y = labels[is_test]
    report = emotic_report(scores, y, int((~is_test).sum()))

    present = [j for j in range(len(CATEGORIES)) if y[:, j].any()]
    assert report["persons"] == {"train+val": sum(p["split"] != "test" for p in kept),
                                 "test": sum(p["split"] == "test" for p in kept)}
    assert report["categories_in_test"] == len(present) < len(CATEGORIES)
    assert report["chance"] == pytest.approx(100 * np.mean([y[:, j].mean() for j in present]))
    for name in MODALITIES:
        assert scores[name].shape == y.shape
        want = 100 * np.mean([_average_precision_by_definition(y[:, j], scores[name][:, j]) for j in present])
        assert report[name] == pytest.approx(want), name
    assert report["fusion_gain"] == pytest.approx(report["all"] - max(report["image"], report["text"]))

    # each modality's scores come from its own feature blocks only: replacing one block moves exactly those
    uses = {"body": {"body", "image", "all"}, "context": {"context", "image", "all"}, "text": {"text", "all"}}
    rng = np.random.default_rng(0)
    for block, want in uses.items():
        noisy = dict(features, **{block: rng.normal(size=features[block].shape)})
        moved = {name for name, s in emotic_scores(noisy, labels, is_test).items() if not np.allclose(s, scores[name])}
        assert moved == want, block


def test_flickr_check_reads_the_test_list_and_scores_recall_by_definition(smoke):
    """The reader returns the listed images found on disk with their non-empty captions; Recall@5 and its chance
    level equal a plain loop and the hypergeometric count, on the real test split and on a larger random matrix."""
    from math import comb

    from sklearn.feature_extraction.text import TfidfVectorizer

    from utils.synthetic.learnability import flickr_report, flickr_similarity, load_flickr_split

    out, written, _ = smoke
    root = out / "flickr8k_original"
    flickr = written["flickr8k_original"]
    missing = {p["image"] for p in flickr["planted"] if p["reason"] == "missing_image"}
    loaded = {}
    for split in ("train", "test"):
        paths, captions, owner = load_flickr_split(root, split)
        names = [n for n in flickr["splits"][split] if n not in missing]
        assert [p.name for p in paths] == names
        assert captions == [c for n in names for c in flickr["captions"][n] if c]
        np.testing.assert_array_equal(owner, [i for i, n in enumerate(names) for c in flickr["captions"][n] if c])
        images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in paths])
        loaded[split] = (_colour_histograms(images), captions, owner)
    words = TfidfVectorizer().fit(loaded["train"][1] + loaded["test"][1])
    sim = flickr_similarity(loaded["train"][0], words.transform(loaded["train"][1]).toarray(), loaded["train"][2],
                            loaded["test"][0], words.transform(loaded["test"][1]).toarray())

    rng = np.random.default_rng(0)
    owner_random = np.repeat(np.arange(12), rng.integers(1, 7, 12))   # 12 images with 1-6 captions each
    cases = {"test split": (sim, loaded["test"][2]), "random": (rng.normal(size=(12, len(owner_random))), owner_random)}
    for case, (s, owner) in cases.items():
        report = flickr_report(s, owner, n_train=7)
        m, c = s.shape
        assert report["images"] == {"train": 7, "test": m} and report["captions_test"] == c
        i2t, t2i = _recall_at_5_by_loop(s, owner)
        assert (report["i2t_R@5"], report["t2i_R@5"]) == pytest.approx((i2t, t2i)), case
        chance = np.mean([1 - comb(c - n, 5) / comb(c, 5) for n in np.bincount(owner)])
        assert report["chance_i2t_R@5"] == pytest.approx(100 * chance), case
        assert report["chance_t2i_R@5"] == pytest.approx(100 * min(5, m) / m), case
    assert 0 < _recall_at_5_by_loop(*cases["random"][:2])[1] < 100   # the random case is not trivially 0 or 100


def test_check_command_finds_the_smoke_data_learnable(smoke, capsys):
    """``--check`` end to end with the frozen MobileNetV2 / MiniLM: every modality beats chance on Emotic, and
    image->text retrieval beats a random ranking on Flickr8k."""
    import json

    _, _, cli = smoke
    assert synthetic.main(["--check", str(cli)]) == 0
    report = json.loads(capsys.readouterr().out)
    emotic = report["emotic"]
    for name in ("body", "context", "image", "text", "all"):
        assert emotic["chance"] < emotic[name] <= 100, name
    assert report["flickr8k"]["chance_i2t_R@5"] < report["flickr8k"]["i2t_R@5"]
