"""Loading prepared artefacts: tiny folders written by hand here, in the artefact format the README documents."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils import data as D
from utils.labels import CATEGORIES

EMOTIC_ROWS = [
    # index, record, person, folder, filename, W, H, x1, y1, x2, y2, categories, V, A, D, gender, age, description
    (0, 0, 0, "mscoco/images", "a.jpg", 640, 480, 10, 20, 330, 470, "Happiness;Peace", 7, 4, 6, "Male", "Adult",
     "A man, smiling, says \"hi\""),
    (1, 0, 1, "mscoco/images", "a.jpg", 640, 480, 0, 0, 640, 480, "Anger", 2, 8, 5, "Female", "Kid", "NA"),
    (2, 1, 0, "framesdb/images", "b.jpg", 300, 600, 150, 300, 225, 450, "Fear;Sadness;Yearning", 3, 6, 2,
     "Female", "Teenager", ""),
]
COLUMNS = ["index", "record", "person", "folder", "filename", "image_width", "image_height", "x1", "y1", "x2", "y2",
           "categories", "valence", "arousal", "dominance", "gender", "age", "description"]


def write_emotic(root, split="train", rows=EMOTIC_ROWS, seed=0):
    """An artefact folder as mat2py.py writes it; returns the arrays for comparison."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    arrays = {
        "context": rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8),
        "body": rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
        "cat": np.zeros((n, 26), np.float32),
        "cont": np.array([r[12:15] for r in rows], np.float32),
    }
    for i, r in enumerate(rows):
        for c in r[11].split(";"):
            arrays["cat"][i, CATEGORIES.index(c)] = 1
    for key, arr in arrays.items():
        np.save(root / f"{split}_{key}_arr.npy", arr)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / f"{split}.csv", index=False)
    return arrays


CAPTIONS = [(0, "x.jpg", 0, "A dog, running; fast."), (0, "x.jpg", 1, "null"), (1, "y.jpg", 0, "\"Quoted\" café"),
            (1, "y.jpg", 1, "Two lines\nin one caption"), (2, "z.jpg", 0, "")]


def write_flickr(root, split="test", captions=CAPTIONS, m=3):
    root.mkdir(parents=True, exist_ok=True)
    imgs = np.random.default_rng(1).integers(0, 256, (m, 224, 224, 3), dtype=np.uint8)
    np.save(root / f"{split}_images.npy", imgs)
    pd.DataFrame(captions, columns=["image_index", "image", "caption_number", "caption"]).to_csv(
        root / f"{split}_captions.csv", index=False)
    return imgs


# ------------------------------------------------------------------------------------------------------- Emotic


def test_load_emotic_values(tmp_path):
    arrays = write_emotic(tmp_path)
    s = D.load_emotic("train", root=tmp_path)
    assert len(s) == 3
    for key in ("context", "body", "cat", "cont"):
        got = getattr(s, key)
        assert isinstance(got, np.memmap), f"{key} should stay memory-mapped"
        np.testing.assert_array_equal(got, arrays[key])
    assert s.descriptions == ["A man, smiling, says \"hi\"", "NA", ""]
    assert s.cat[2].nonzero()[0].tolist() == [CATEGORIES.index(c) for c in ("Fear", "Sadness", "Yearning")]
    assert s.table["gender"].tolist() == ["Male", "Female", "Female"]


def test_boxes_224_scaled_per_image(tmp_path):
    write_emotic(tmp_path)
    box = D.load_emotic("train", root=tmp_path).boxes_224
    assert box.dtype == np.float32 and box.shape == (3, 4)
    expected = [[10 * 224 / 640, 20 * 224 / 480, 330 * 224 / 640, 470 * 224 / 480],
                [0, 0, 224, 224],
                [150 * 224 / 300, 300 * 224 / 600, 225 * 224 / 300, 450 * 224 / 600]]
    np.testing.assert_allclose(box, expected, rtol=1e-6)


def test_emotic_default_root_from_environment(tmp_path, monkeypatch):
    write_emotic(tmp_path / "prepared", split="val")
    monkeypatch.setenv("EMOTIC_ARTEFACTS", str(tmp_path / "prepared"))
    assert len(D.load_emotic("val")) == 3
    with pytest.raises(FileNotFoundError, match=r"test_context_arr\.npy not found(.|\n)*mat2py\.py"):
        D.load_emotic("test")


def test_emotic_missing_file_names_it_and_the_command(tmp_path):
    write_emotic(tmp_path)
    (tmp_path / "train_body_arr.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_body_arr\.npy not found(.|\n)*python mat2py\.py"):
        D.load_emotic("train", root=tmp_path)


def test_emotic_row_count_mismatch(tmp_path):
    write_emotic(tmp_path)
    np.save(tmp_path / "train_cont_arr.npy", np.ones((2, 3), np.float32))
    with pytest.raises(D.ArtefactError, match=r"train_cont_arr\.npy: 2 rows but .*train\.csv has 3 rows"):
        D.load_emotic("train", root=tmp_path)


@pytest.mark.parametrize("name, arr, message", [
    ("train_cat_arr.npy", np.ones((3, 26), np.float64), "dtype float64, expected float32"),
    ("train_cat_arr.npy", np.ones((3, 25), np.float32), r"shape \(3, 25\), expected \(N, 26\)"),
    ("train_context_arr.npy", np.ones((3, 224, 224), np.uint8), r"shape \(3, 224, 224\), expected \(N, \*, \*, 3\)"),
])
def test_emotic_bad_array(tmp_path, name, arr, message):
    write_emotic(tmp_path)
    np.save(tmp_path / name, arr)
    with pytest.raises(D.ArtefactError, match=name.replace(".", r"\.") + ": " + message):
        D.load_emotic("train", root=tmp_path)


def test_emotic_unreadable_array_and_missing_column(tmp_path):
    write_emotic(tmp_path)
    (tmp_path / "train_body_arr.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(D.ArtefactError, match=r"train_body_arr\.npy: not a readable"):
        D.load_emotic("train", root=tmp_path)
    write_emotic(tmp_path)
    pd.read_csv(tmp_path / "train.csv").drop(columns=["x2"]).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(D.ArtefactError, match=r"train\.csv: missing column\(s\) x2"):
        D.load_emotic("train", root=tmp_path)


def test_unknown_split():
    with pytest.raises(ValueError, match="'dev'"):
        D.load_emotic("dev")


# ----------------------------------------------------------------------------------------------------- Flickr8k


def test_load_flickr_values(tmp_path):
    imgs = write_flickr(tmp_path)
    s = D.load_flickr("test", root=tmp_path)
    assert len(s) == 3 and isinstance(s.images, np.memmap)
    np.testing.assert_array_equal(s.images, imgs)
    assert s.caption_texts == [c[3] for c in CAPTIONS]  # commas, quotes, "null", newline, empty kept exactly
    assert s.caption_image.dtype == np.int64 and s.caption_image.tolist() == [0, 0, 1, 1, 2]


def test_flickr_missing_and_bad_index(tmp_path, monkeypatch):
    monkeypatch.setenv("FLICKR8K_ARTEFACTS", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match=r"train_images\.npy not found(.|\n)*prepare_flickr8k\.py"):
        D.load_flickr("train")
    write_flickr(tmp_path, captions=CAPTIONS + [(3, "w.jpg", 0, "out of range")])
    with pytest.raises(D.ArtefactError, match=r"test_captions\.csv: line 7 has image_index 3, not a row"):
        D.load_flickr("test", root=tmp_path)
