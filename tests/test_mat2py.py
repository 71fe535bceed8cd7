"""mat2py.py on a small Emotic dataset built here, independently of utils/synthetic.py, in the real PAMI nesting.

Expected values are computed from the format description (README, 'What the prep scripts write') with plain PIL, never with the
code under test: counts, skip reasons, multi-hot labels, VAD, context and body pixels, CSV fields.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
import mat2py
from utils.prep import io as prep_io
from utils.labels import CATEGORIES

NAN = float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Building a .mat in MATLAB's nesting
# ---------------------------------------------------------------------------------------------------------------

def struct_array(dicts: list[dict]) -> np.ndarray:
    """A 1xN MATLAB struct array (savemat writes a structured object array as one)."""
    fields = list(dicts[0])
    arr = np.zeros((1, len(dicts)), dtype=[(f, object) for f in fields])
    for i, d in enumerate(dicts):
        for f in fields:
            arr[0, i][f] = d[f]
    return arr


def cell(strings: list[str]) -> np.ndarray:
    """A 1xK MATLAB cell array of strings."""
    out = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        out[0, i] = s
    return out


def vad(v, a, d):
    return struct_array([{"valence": v, "arousal": a, "dominance": d}])


def train_person(bbox, cats, v, a, d, gender="Male", age="Adult"):
    return {"body_bbox": np.array([bbox], dtype=float),
            "annotations_categories": struct_array([{"categories": cell(cats)}]),
            "annotations_continuous": vad(v, a, d), "gender": gender, "age": age}


def eval_person(bbox, combined, annotators, cont, gender="Female", age="Kid"):
    """A val/test person: one categories/continuous struct per annotator plus the combined fields."""
    return {"body_bbox": np.array([bbox], dtype=float),
            "annotations_categories": struct_array([{"categories": cell(c)} for c in annotators]),
            "combined_categories": cell(combined),
            "annotations_continuous": struct_array([{"valence": cont[0] + k, "arousal": cont[1], "dominance":
                                                     cont[2]} for k in range(len(annotators))]),
            "combined_continuous": vad(*cont), "gender": gender, "age": age}


def record(folder, filename, size, persons, db=None):
    return {"filename": filename, "folder": folder,
            "image_size": struct_array([{"n_col": float(size[0]), "n_row": float(size[1])}]),
            "original_database": struct_array([{"name": db or folder.split("/")[0],
                                                "info": struct_array([{"url": "n/a"}])}]),
            "person": struct_array(persons)}


def smooth_image(w, h, seed):
    """Smooth content so JPEG artefacts stay small and crops differ from one another."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [(np.sin(xx / (3 + c + seed) + rng.uniform(0, 6)) * np.cos(yy / (4 + c)) * 120 + 128) for c in range(3)]
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)


def build_dataset(root: Path) -> dict:
    """Write ROOT/Annotations/Annotations.mat and ROOT/emotic/<folder>/<file>; return what must come out."""
    img_dir = root / "emotic"
    files = {
        ("mscoco/images", "rgb.jpg"): ("RGB", 80, 60, "JPEG"),
        ("framesdb/images", "gray.jpg"): ("L", 64, 48, "JPEG"),
        ("ade20k/images", "cmyk.jpg"): ("CMYK", 50, 70, "JPEG"),
        ("emodb_small/images", "png_named.jpg"): ("RGB", 40, 44, "PNG"),  # PNG bytes behind a .jpg name
        ("mscoco/images", "val.png"): ("RGB", 90, 70, "PNG"),
        ("framesdb/images", "test.jpg"): ("RGB", 60, 60, "JPEG"),
        ("ade20k/images", "test2.jpg"): ("RGB", 30, 40, "JPEG"),
    }
    for i, ((folder, name), (mode, w, h, fmt)) in enumerate(files.items()):
        (img_dir / folder).mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(smooth_image(w, h, i)).convert(mode)
        im.save(img_dir / folder / name, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    (img_dir / "mscoco/images/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")

    train = [
        record("mscoco/images", "rgb.jpg", (80, 60), [
            train_person([10, 5, 50, 55], ["Peace", "Happiness"], 6, 4, 7),
            train_person([-10, -5, 30, 100], ["Anger"], 3, 8, 5, "Female", "Teenager"),  # 1-cell -> str; clipped
            train_person([1, 1, 20, 20], ["Fear"], 5, NAN, 5),  # NaN arousal
        ]),
        record("framesdb/images", "gray.jpg", (64, 48), [
            train_person([70, 10, 90, 40], ["Sadness"], 2, 2, 2),  # starts right of the 64-px image: empty
            train_person([0, 0, 10, 10], [], 5, 5, 5),  # no category
        ]),
        record("ade20k/images", "cmyk.jpg", (999, 999), [  # wrong image_size: clipping must use the real size
            train_person([5, 10, 45, 80], ["Fear", "Doubt/Confusion", "Fear"], 2.5, 9, 1, "Male", "Kid"),
        ]),
        record("emodb_small/images", "png_named.jpg", (40, 44), [
            train_person([0, 0, 40, 44], ["Yearning", "Affection"], 7, 3, 6, "Female", "Adult"),
        ]),
        record("mscoco/images", "missing.jpg", (50, 50), [
            train_person([0, 0, 10, 10], ["Pain"], 5, 5, 5), train_person([1, 1, 9, 9], ["Pain"], 5, 5, 5),
        ]),
        record("mscoco/images", "broken.jpg", (50, 50), [train_person([0, 0, 10, 10], ["Pain"], 5, 5, 5)]),
    ]
    val = [record("mscoco/images", "val.png", (90, 70), [  # the only val record: scipy squeezes it to a struct
        eval_person([20, 10, 60, 70], ["Sadness", "Pain"], [["Sadness"], ["Pain", "Sadness"]], (3, 6, 4)),
        eval_person([50, 30, 95, 65], ["Engagement"], [["Engagement"], ["Esteem"]], (6, 5, 5), "Male", "Adult"),
    ])]
    test = [
        record("framesdb/images", "test.jpg", (60, 60), [  # one person, one annotator: both squeezed
            eval_person([10, 10, 30, 50], ["Surprise", "Excitement"], [["Surprise"]], (7, 8, 6))]),
        record("ade20k/images", "test2.jpg", (30, 40), [
            {**eval_person([0, 0, 10, 10], ["Fatigue"], [["Fatigue"]], (4, 2, 3)),
             "combined_continuous": struct_array([{"valence": 4.0, "arousal": np.zeros((0, 0)),  # never filled
                                                   "dominance": 3.0}])}]),
    ]
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "Annotations" / "Annotations.mat",
                     {"train": struct_array(train), "val": struct_array(val), "test": struct_array(test)})

    def keep(split, rec, person, folder, name, box, cats, v, g, a):
        return dict(split=split, record=rec, person=person, folder=folder, filename=name, box=box,
                    cats=cats, vad=v, gender=g, age=a)

    kept = {
        "train": [keep("train", 0, 0, "mscoco/images", "rgb.jpg", (10, 5, 50, 55), ["Happiness", "Peace"],
                       (6, 4, 7), "Male", "Adult"),
                  keep("train", 0, 1, "mscoco/images", "rgb.jpg", (0, 0, 30, 60), ["Anger"], (3, 8, 5),
                       "Female", "Teenager"),
                  keep("train", 2, 0, "ade20k/images", "cmyk.jpg", (5, 10, 45, 70), ["Doubt/Confusion", "Fear"],
                       (2.5, 9, 1), "Male", "Kid"),
                  keep("train", 3, 0, "emodb_small/images", "png_named.jpg", (0, 0, 40, 44),
                       ["Affection", "Yearning"], (7, 3, 6), "Female", "Adult")],
        "val": [keep("val", 0, 0, "mscoco/images", "val.png", (20, 10, 60, 70), ["Pain", "Sadness"], (3, 6, 4),
                     "Female", "Kid"),
                keep("val", 0, 1, "mscoco/images", "val.png", (50, 30, 90, 65), ["Engagement"], (6, 5, 5),
                     "Male", "Adult")],
        "test": [keep("test", 0, 0, "framesdb/images", "test.jpg", (10, 10, 30, 50), ["Excitement", "Surprise"],
                      (7, 8, 6), "Female", "Kid")],
    }
    skipped = {
        "train": {"nan_continuous": 1, "no_category": 1, "missing_image": 2, "unreadable_image": 1, "empty_box": 1},
        "val": {},
        "test": {"nan_continuous": 1},
    }
    return {"root": root, "kept": kept, "skipped": skipped}


def expected_pixels(root: Path, row: dict) -> tuple[np.ndarray, np.ndarray]:
    """Context and body as any reader of the format would make them: PIL decode, RGB, crop, bilinear resize."""
    with Image.open(root / "emotic" / row["folder"] / row["filename"]) as im:
        im = im.convert("RGB")
        context = np.asarray(im.resize((224, 224), Image.BILINEAR))
        body = np.asarray(im.crop(row["box"]).resize((128, 128), Image.BILINEAR))
    return context, body


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    return build_dataset(tmp_path_factory.mktemp("emotic_raw"))


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emotic_out")
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(out), "--workers", "2"]) == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_arrays_and_csv_match_the_format(dataset, prepared, split):
    kept = dataset["kept"][split]
    n = len(kept)
    ctx = np.load(prepared / f"{split}_context_arr.npy", allow_pickle=False)
    body = np.load(prepared / f"{split}_body_arr.npy", allow_pickle=False)
    cat = np.load(prepared / f"{split}_cat_arr.npy", allow_pickle=False)
    cont = np.load(prepared / f"{split}_cont_arr.npy", allow_pickle=False)
    assert (ctx.shape, ctx.dtype) == ((n, 224, 224, 3), np.uint8)
    assert (body.shape, body.dtype) == ((n, 128, 128, 3), np.uint8)
    assert (cat.shape, cat.dtype) == ((n, 26), np.float32)
    assert (cont.shape, cont.dtype) == ((n, 3), np.float32)

    table = pd.read_csv(prepared / f"{split}.csv", keep_default_na=False)
    assert list(table.columns) == list(mat2py.CSV_COLUMNS)
    assert len(table) == n
    for i, (row, exp) in enumerate(zip(table.to_dict("records"), kept)):
        want_cat = np.zeros(26, np.float32)
        want_cat[[CATEGORIES.index(c) for c in exp["cats"]]] = 1
        np.testing.assert_array_equal(cat[i], want_cat)
        np.testing.assert_allclose(cont[i], exp["vad"])
        context, crop = expected_pixels(dataset["root"], exp)
        np.testing.assert_array_equal(ctx[i], context)
        np.testing.assert_array_equal(body[i], crop)
        assert row["index"] == i
        assert (row["record"], row["person"], row["folder"], row["filename"]) == \
               (exp["record"], exp["person"], exp["folder"], exp["filename"])
        assert (row["x1"], row["y1"], row["x2"], row["y2"]) == exp["box"]
        with Image.open(dataset["root"] / "emotic" / exp["folder"] / exp["filename"]) as im:
            assert (row["image_width"], row["image_height"]) == im.size
        assert row["categories"] == ";".join(exp["cats"])
        assert (row["valence"], row["arousal"], row["dominance"]) == pytest.approx(exp["vad"])
        assert (row["gender"], row["age"]) == (exp["gender"], exp["age"])
        assert row["description"].strip()


def test_manifest_counts_every_skip(dataset, prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["tool"] == "mat2py"
    assert manifest["image_size"] == {"context": 224, "body": 128}
    for split in ("train", "val", "test"):
        s = manifest["splits"][split]
        assert s["persons"] == len(dataset["kept"][split])
        assert {k: v for k, v in s["skipped"].items() if v} == dataset["skipped"][split]
    assert manifest["splits"]["train"]["images"] == 3  # rgb, cmyk, png_named: gray lost both its persons
    assert manifest["splits"]["train"]["annotated_size_mismatch"] == 1  # cmyk's image_size says 999x999
    assert manifest["descriptions"]["source"] == "metadata"


def test_metadata_descriptions_never_use_labels(prepared):
    table = pd.read_csv(prepared / "train.csv", keep_default_na=False)
    assert table.description[0] == "A man, taking up a large part of the frame, in the centre of a photo " \
                                   "from the mscoco collection."
    for text in table.description:
        assert not any(c.lower() in text.lower() for c in CATEGORIES)


def test_cli_subprocess_gives_the_same_bytes(dataset, prepared, tmp_path, capsys):
    """The command line (underscore spelling, explicit paths) and a rerun reproduce the in-process output."""
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(REPO / "mat2py.py"), "--data_dir", str(dataset["root"]),
                           "--images", str(dataset["root"] / "emotic"), "--out", str(out), "--workers", "1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train: 4 persons" in proc.stdout
    a, b = snapshot(prepared), snapshot(out)
    assert a.keys() == b.keys()
    for name in a:
        if name != "manifest.json":  # holds a creation time
            assert a[name] == b[name], name
    with pytest.raises(SystemExit) as help_:  # in-process: one subprocess above shows the command works
        mat2py.main(["--help"])
    assert help_.value.code == 0 and "--descriptions" in capsys.readouterr().out


def test_rerun_over_existing_output_is_identical(dataset, prepared):
    before = snapshot(prepared)
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(prepared)]) == 0
    after = snapshot(prepared)
    assert before.keys() == after.keys()  # no staging folder or partial file left behind
    assert all(before[k] == after[k] for k in before if k != "manifest.json")


def test_each_image_is_decoded_once(dataset, tmp_path, monkeypatch):
    calls: list[str] = []
    real = prep_io.load_rgb

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(prep_io, "load_rgb", counting)
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(tmp_path), "--splits", "train"]) == 0
    assert sorted(calls) == sorted(set(calls))
    assert "rgb.jpg" in calls  # three persons, one decode


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear error, exit 2, and a previous good output untouched
# ---------------------------------------------------------------------------------------------------------------

def _rewrite_mat(root: Path, mutate) -> None:
    """Reload the test .mat keeping MATLAB nesting (no squeeze), let ``mutate`` edit it, save it back."""
    path = root / "Annotations" / "Annotations.mat"
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    mat = mutate(mat)
    scipy.io.savemat(path, mat)


def _drop_field(arr: np.ndarray, name: str) -> np.ndarray:
    fields = [f for f in arr.dtype.names if f != name]
    out = np.zeros(arr.shape, dtype=[(f, object) for f in fields])
    for f in fields:
        out[f] = arr[f]
    return out


def _without_record_field(mat):
    mat["train"] = _drop_field(mat["train"], "folder")
    return mat


def _without_person_field(mat):
    rec = mat["val"][0, 0]
    rec["person"] = _drop_field(rec["person"], "combined_continuous")
    return mat


def _unknown_category(mat):
    mat["test"][0, 1]["person"][0, 0]["combined_categories"] = cell(["Joy"])
    return mat


@pytest.mark.parametrize("case, expect", [
    ("missing_mat", "annotations file not found"),
    ("no_splits", "no train, val or test"),
    ("not_a_mat", "cannot read as a MATLAB"),
    ("record_field", "train record 0: missing field 'folder'"),
    ("person_field", "val record 0 person 0: missing field 'combined_continuous'"),
    ("unknown_category", "test record 1 person 0: unknown emotion category 'Joy'"),
    ("image_folder", "image folder not found"),
    ("descriptions_file", "descriptions file not found"),
])
def test_bad_input_fails_cleanly(dataset, prepared, tmp_path, capsys, case, expect):
    import shutil

    root = tmp_path / "raw"
    shutil.copytree(dataset["root"], root)
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = snapshot(out)
    mat = root / "Annotations" / "Annotations.mat"
    extra = []
    if case == "missing_mat":
        mat.unlink()
    elif case == "no_splits":
        scipy.io.savemat(mat, {"something_else": np.arange(3)})
    elif case == "not_a_mat":
        mat.write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    elif case == "image_folder":
        shutil.rmtree(root / "emotic")
    elif case == "descriptions_file":
        extra = ["--descriptions", "file", "--descriptions-file", str(root / "nope.csv")]
    else:
        _rewrite_mat(root, {"record_field": _without_record_field, "person_field": _without_person_field,
                            "unknown_category": _unknown_category}[case])
    assert mat2py.main(["--data-dir", str(root), "--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err, err
    if case in ("missing_mat", "no_splits", "not_a_mat", "record_field", "person_field", "unknown_category"):
        assert str(mat) in err
    assert snapshot(out) == before


def test_missing_requested_split_is_an_error(dataset, tmp_path, capsys):
    mat = tmp_path / "only_train.mat"
    full = scipy.io.loadmat(dataset["root"] / "Annotations" / "Annotations.mat")
    scipy.io.savemat(mat, {"train": full["train"]})
    args = ["--annotations", str(mat), "--images", str(dataset["root"] / "emotic"), "--out", str(tmp_path / "o")]
    assert mat2py.main(args) == 2
    assert "has no 'val'" in capsys.readouterr().err
    assert mat2py.main(args + ["--splits", "train"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir())[0] == "manifest.json"


def test_failure_midway_leaves_previous_output(dataset, prepared, tmp_path, monkeypatch):
    """An exception after some arrays were written (here: while writing the test split) changes nothing."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = snapshot(out)
    real = mat2py.write_csv

    def failing(path, rows):
        if path.name == "test.csv":
            raise OSError("disk full")
        real(path, rows)

    monkeypatch.setattr(mat2py, "write_csv", failing)
    with pytest.raises(OSError):
        mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(out)])
    assert snapshot(out) == before


def test_project_fixtures_round_trip(tmp_path):
    """The bundled generator's dataset (and its descriptions.csv) goes through with the counts it promises."""
    from utils.synthetic import make_emotic

    written = make_emotic(tmp_path / "raw", size="smoke", seed=0)
    out = tmp_path / "out"
    assert mat2py.main(["--data-dir", written["root"], "--out", str(out), "--descriptions", "file",
                        "--descriptions-file", written["descriptions"]]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    truth = [p for p in written["persons"] if p["kept"]]
    for split, promised in written["splits"].items():
        got = manifest["splits"][split]
        assert got["persons"] == promised["kept"]
        assert {k: v for k, v in got["skipped"].items() if v} == {k: v for k, v in promised["skipped"].items() if v}
        table = pd.read_csv(out / f"{split}.csv", keep_default_na=False)
        want = [p for p in truth if p["split"] == split]
        assert table.description.tolist() == [p["description"] for p in want]
        assert table.categories.tolist() == [";".join(sorted(p["categories"], key=CATEGORIES.index)) for p in want]
        cont = np.load(out / f"{split}_cont_arr.npy", allow_pickle=False)
        np.testing.assert_allclose(cont, [p["vad"] for p in want], rtol=1e-6)
