"""mat2py.py's output as published Emotic code (Tandon-A/emotic) reads it, and ``--keep-unlabelled``.

The split CSV is read here the way that code's ``Emotic_CSVDataset`` does: ``pandas.read_csv`` with default options,
``ast.literal_eval`` of the list cells, the image path ``<image root>/Folder/Filename``, the body crop
``image.crop(BBox)`` and a 26-long one-hot vector built from the category names in the canonical published order
(written out below, not imported from the code under test). Every value is checked against the arrays mat2py wrote
and against the annotations the independent .mat builder of test_mat2py.py put in.
"""
from __future__ import annotations

import ast
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

import mat2py
from test_mat2py import NAN, build_dataset, eval_person, record, struct_array, train_person
from utils.data import load_emotic

PUBLISHED_ORDER = [
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval", "Disconnection",
    "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem", "Excitement", "Fatigue", "Fear",
    "Happiness", "Pain", "Peace", "Pleasure", "Sadness", "Sensitivity", "Suffering", "Surprise", "Sympathy", "Yearning"]
CAT2IND = {c: i for i, c in enumerate(PUBLISHED_ORDER)}
PUBLISHED_COLUMNS = ["Index", "Folder", "Filename", "Image Size", "BBox", "Categorical_Labels", "Continuous_Labels",
                     "Gender", "Age"]
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------------------------
# Input: test_mat2py's dataset plus persons without a category
# ---------------------------------------------------------------------------------------------------------------

def unlabelled(split, rec, person, folder, name, box, vad, gender, age):
    return dict(split=split, record=rec, person=person, folder=folder, filename=name, box=box, cats=[], vad=vad,
                gender=gender, age=age)


def add_unlabelled_persons(data: dict) -> dict:
    """Append records whose persons have no category: kept ones, one with a NaN value, one on a missing image."""
    path = data["root"] / "Annotations" / "Annotations.mat"
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    extra = {
        "train": [record("mscoco/images", "rgb.jpg", (80, 60), [
                      train_person([30, 20, 70, 50], [], 4, 6, 2, "Female", "Kid"),
                      train_person([0, 0, 5, 5], [], 5, NAN, 5)]),  # NaN wins: skipped in both modes
                  record("mscoco/images", "missing2.jpg", (50, 50), [train_person([0, 0, 5, 5], [], 5, 5, 5)])],
        "val": [record("mscoco/images", "val.png", (90, 70), [
            eval_person([5, 5, 40, 40], [], [[]], (5, 4, 3), "Male", "Teenager")])],
    }
    for split, recs in extra.items():
        mat[split] = np.concatenate([mat[split], struct_array(recs).astype(mat[split].dtype)], axis=1)
    scipy.io.savemat(path, mat)

    kept = data["kept"]
    # Rows follow record order, then person order. train record 1 (gray.jpg) person 1 already has no category.
    data["kept_unlabelled"] = {
        "train": kept["train"][:2]
        + [unlabelled("train", 1, 1, "framesdb/images", "gray.jpg", (0, 0, 10, 10), (5, 5, 5), "Male", "Adult")]
        + kept["train"][2:]
        + [unlabelled("train", 6, 0, "mscoco/images", "rgb.jpg", (30, 20, 70, 50), (4, 6, 2), "Female", "Kid")],
        "val": kept["val"] + [unlabelled("val", 1, 0, "mscoco/images", "val.png", (5, 5, 40, 40), (5, 4, 3),
                                         "Male", "Teenager")],
        "test": kept["test"],
    }
    data["skipped"] = {  # default run: a person failing several checks counts under the label reason
        "train": {"nan_continuous": 2, "no_category": 3, "missing_image": 2, "unreadable_image": 1, "empty_box": 1},
        "val": {"no_category": 1}, "test": {"nan_continuous": 1}}
    data["skipped_keep"] = {
        "train": {"nan_continuous": 2, "missing_image": 3, "unreadable_image": 1, "empty_box": 1},
        "val": {}, "test": {"nan_continuous": 1}}
    return data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    return add_unlabelled_persons(build_dataset(tmp_path_factory.mktemp("emotic_raw")))


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emotic_default")
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(out), "--workers", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def prepared_keep(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emotic_keep")
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(out), "--workers", "2",
                        "--keep-unlabelled"]) == 0
    return out


def arrays(out: Path, split: str) -> dict[str, np.ndarray]:
    return {k: np.load(out / f"{split}_{k}_arr.npy", allow_pickle=False) for k in ("context", "body", "cat", "cont")}


# ---------------------------------------------------------------------------------------------------------------
# Reading the CSV as Emotic_CSVDataset does
# ---------------------------------------------------------------------------------------------------------------

def published_sample(table: pd.DataFrame, i: int, data_src: Path) -> dict:
    """What the published dataset class derives from row ``i`` (before its resizing and normalisation)."""
    row = table.loc[i]
    cats = ast.literal_eval(row["Categorical_Labels"])
    one_hot = np.zeros(26)
    for em in cats:
        one_hot[CAT2IND[em]] = 1
    return {"path": os.path.join(data_src, row["Folder"], row["Filename"]), "bbox": ast.literal_eval(row["BBox"]),
            "size": ast.literal_eval(row["Image Size"]), "cats": cats, "one_hot": one_hot,
            "cont": ast.literal_eval(row["Continuous_Labels"]), "index": row["Index"], "gender": row["Gender"],
            "age": row["Age"]}


def check_published_rows(out: Path, split: str, expected: list[dict], root: Path) -> None:
    table = pd.read_csv(out / f"{split}.csv")
    arr = arrays(out, split)
    assert len(table) == len(expected) == len(arr["cat"])
    for i, exp in enumerate(expected):
        s = published_sample(table, i, root / "emotic")
        assert Path(s["path"]) == root / "emotic" / exp["folder"] / exp["filename"]
        assert s["index"] == i
        assert s["bbox"] == list(exp["box"]) and all(type(v) is int for v in s["bbox"])
        assert sorted(s["cats"]) == sorted(exp["cats"])
        assert s["cont"] == pytest.approx(list(exp["vad"]))
        assert (s["gender"], s["age"]) == (exp["gender"], exp["age"])
        want = np.zeros(26)
        want[[CAT2IND[c] for c in exp["cats"]]] = 1
        np.testing.assert_array_equal(s["one_hot"], want)
        # The tensors that code builds equal our arrays: one-hot as float32, continuous as float32.
        np.testing.assert_array_equal(s["one_hot"].astype(np.float32), arr["cat"][i])
        np.testing.assert_array_equal(np.asarray(s["cont"], np.float32), arr["cont"][i])
        with Image.open(s["path"]) as im:
            im = im.convert("RGB")
            assert s["size"] == list(im.size)
            # image.crop(BBox) is exactly the crop behind our body array (resized the same way here).
            body = np.asarray(im.crop(tuple(s["bbox"])).resize((128, 128), Image.BILINEAR))
            context = np.asarray(im.resize((224, 224), Image.BILINEAR))
        np.testing.assert_array_equal(arr["body"][i], body)
        np.testing.assert_array_equal(arr["context"][i], context)


@pytest.mark.parametrize("split", SPLITS)
def test_published_reader_gets_the_arrays_values(dataset, prepared, split):
    check_published_rows(prepared, split, dataset["kept"][split], dataset["root"])


def test_one_csv_serves_both_readers(dataset, prepared):
    """Published columns come after ours; our loader still reads the file; both halves describe the same person."""
    for split in SPLITS:
        table = pd.read_csv(prepared / f"{split}.csv", keep_default_na=False)
        assert list(table.columns) == list(mat2py.CSV_COLUMNS)
        assert list(table.columns[-len(PUBLISHED_COLUMNS):]) == PUBLISHED_COLUMNS
        for row in table.to_dict("records"):
            assert row["Index"] == row["index"]
            assert (row["Folder"], row["Filename"], row["Gender"], row["Age"]) == \
                   (row["folder"], row["filename"], row["gender"], row["age"])
            assert ast.literal_eval(row["Image Size"]) == [row["image_width"], row["image_height"]]
            assert ast.literal_eval(row["BBox"]) == [row["x1"], row["y1"], row["x2"], row["y2"]]
            assert ";".join(ast.literal_eval(row["Categorical_Labels"])) == row["categories"]
            assert ast.literal_eval(row["Continuous_Labels"]) == [row["valence"], row["arousal"], row["dominance"]]
        loaded = load_emotic(split, prepared)
        a = arrays(prepared, split)
        assert len(loaded) == len(a["cat"])
        np.testing.assert_array_equal(loaded.cat, a["cat"])
        np.testing.assert_array_equal(loaded.cont, a["cont"])
        assert loaded.table["folder"].tolist() == [e["folder"] for e in dataset["kept"][split]]
        assert loaded.descriptions == table["description"].tolist()


def test_prepared_csv_is_a_valid_descriptions_file(dataset, prepared, tmp_path):
    """Its lower-cased published columns duplicate ours; the descriptions reader must take them in its stride."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(tmp_path), "--splits", "train",
                            "--descriptions", "file", "--descriptions-file", str(prepared / "train.csv")]) == 0
    assert not [w for w in caught if "not unique" in str(w.message)]
    before = pd.read_csv(prepared / "train.csv", keep_default_na=False)
    after = pd.read_csv(tmp_path / "train.csv", keep_default_na=False)
    assert after.description.tolist() == before.description.tolist()


# ---------------------------------------------------------------------------------------------------------------
# --keep-unlabelled
# ---------------------------------------------------------------------------------------------------------------

def test_default_skips_and_counts_unlabelled(dataset, prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["keep_unlabelled"] is False
    for split in SPLITS:
        s = manifest["splits"][split]
        assert s["persons"] == len(dataset["kept"][split])
        assert s["unlabelled_kept"] == 0
        assert {k: v for k, v in s["skipped"].items() if v} == dataset["skipped"][split]
        assert arrays(prepared, split)["cat"].sum(axis=1).min() >= 1  # no all-zero label row


@pytest.mark.parametrize("split", SPLITS)
def test_keep_unlabelled_rows_read_like_the_others(dataset, prepared_keep, split):
    check_published_rows(prepared_keep, split, dataset["kept_unlabelled"][split], dataset["root"])


def test_keep_unlabelled_keeps_exactly_those_and_changes_nothing_else(dataset, prepared, prepared_keep):
    manifest = json.loads((prepared_keep / "manifest.json").read_text())
    assert manifest["keep_unlabelled"] is True
    for split in SPLITS:
        expected = dataset["kept_unlabelled"][split]
        zero_rows = [i for i, e in enumerate(expected) if not e["cats"]]
        s = manifest["splits"][split]
        assert s["persons"] == len(expected)
        assert s["unlabelled_kept"] == len(zero_rows)
        assert {k: v for k, v in s["skipped"].items() if v} == dataset["skipped_keep"][split]

        keep, default = arrays(prepared_keep, split), arrays(prepared, split)
        assert np.flatnonzero(keep["cat"].sum(axis=1) == 0).tolist() == zero_rows
        labelled = [i for i in range(len(expected)) if i not in zero_rows]
        for name in keep:  # the labelled rows are the default run's rows, in the same order
            np.testing.assert_array_equal(keep[name][labelled], default[name])
        t_keep = pd.read_csv(prepared_keep / f"{split}.csv", keep_default_na=False)
        t_default = pd.read_csv(prepared / f"{split}.csv", keep_default_na=False)
        assert t_keep["Categorical_Labels"].iloc[zero_rows].tolist() == ["[]"] * len(zero_rows)
        assert (t_keep["categories"].iloc[zero_rows] == "").all()
        moved = t_keep.iloc[labelled].drop(columns=["index", "Index"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(moved, t_default.drop(columns=["index", "Index"]))
        assert t_keep["index"].tolist() == t_keep["Index"].tolist() == list(range(len(expected)))
        loaded = load_emotic(split, prepared_keep)  # our own loader takes the empty category cell too
        assert loaded.table["categories"].iloc[zero_rows].tolist() == [""] * len(zero_rows)


def test_keep_unlabelled_command_line(dataset, tmp_path, capsys):
    args = mat2py.parse_args(["--data_dir", str(dataset["root"]), "--out", str(tmp_path), "--keep_unlabelled"])
    assert args.keep_unlabelled is True
    assert mat2py.parse_args(["--data-dir", "x", "--out", "y"]).keep_unlabelled is False
    with pytest.raises(SystemExit) as help_:  # in-process; tests/test_mat2py.py runs the command
        mat2py.parse_args(["--help"])
    assert help_.value.code == 0 and "--keep-unlabelled" in capsys.readouterr().out
