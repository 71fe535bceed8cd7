"""prepare_flickr8k.py and utils/prep/flickr.py on small Flickr8k downloads built here, independently of utils/synthetic.

Each dataset is written by hand in the real raw formats (Kaggle ``captions.txt`` + ``Images/``; original
``Flickr8k.token.txt`` + split lists + ``Flicker8k_Dataset/``) with awkward captions and broken images, and the
artefacts are checked value by value: pixels against a separate PIL decode, caption strings read back with the
csv module, split membership against the lists, counts of every skip.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import prepare_flickr8k as prep
from utils.prep import flickr

REPO = Path(__file__).resolve().parents[1]
SIZE = 224
SOLID = (10, 200, 30)

# Awkward captions; the prep keeps each one's exact text (leading/trailing spaces included).
AWKWARD = [
    "A dog, running, on the grass .",
    'A man says "hello" to a child .',
    '"Quoted from the start" and after',
    "Café au lait in 日本, naïvely .",
    "  spaces around this one  ",
    "NA",
    "He said: \"it's fine,\" then left",
    "tab\tinside",
]
EMPTY = ["", "   "]


# ---------------------------------------------------------------------------------------------------------------
# Building raw datasets


def _photo(seed: int, w: int = 48, h: int = 36) -> np.ndarray:
    """A smooth random RGB picture (JPEG-friendly, so decoding differences would show)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def write_images(folder: Path, n_rgb: int) -> dict[str, str]:
    """Write the photos; returns name -> kind. 'missing.jpg' is named in the captions but never written."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for i in range(n_rgb):
        Image.fromarray(_photo(i)).save(folder / f"rgb{i:02d}.jpg", quality=90)
        kinds[f"rgb{i:02d}.jpg"] = "rgb"
    Image.fromarray(_photo(100)).convert("L").save(folder / "gray.jpg")
    Image.fromarray(_photo(101, 30, 50)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.new("RGB", (33, 21), SOLID).save(folder / "png_inside.jpg", format="PNG")
    (folder / "corrupt.jpg").write_bytes(b"this is not an image at all")
    buf = io.BytesIO()
    Image.fromarray(_photo(102)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    kinds.update({"gray.jpg": "gray", "cmyk.jpg": "cmyk", "png_inside.jpg": "solid",
                  "corrupt.jpg": "bad", "truncated.jpg": "bad", "missing.jpg": "missing"})
    return kinds


def caption_table(names: list[str], with_newline: bool) -> dict[str, list[str]]:
    """Five captions per image, cycling through the awkward ones; one empty and one blank caption planted."""
    pool = AWKWARD + (["two\nlines"] if with_newline else [])
    table, k = {}, 0
    for name in names:
        table[name] = []
        for j in range(5):
            table[name].append(pool[k % len(pool)] if j % 2 == 0 else f"{name} caption {j} ,ok")
            k += 1
    table[names[1]][1] = EMPTY[0]
    table[names[2]][3] = EMPTY[1]
    return table


def make_kaggle(root: Path, n_rgb: int = 12) -> dict:
    kinds = write_images(root / "Images", n_rgb)
    table = caption_table(sorted(kinds), with_newline=True)
    # Rows interleaved across images (not grouped), so numbering must follow each image's own file order.
    rows = [(name, caps[j]) for j in range(5) for name, caps in table.items()]
    with open(root / "captions.txt", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return {"kinds": kinds, "captions": table}


def make_original(root: Path, flat: bool = False, n_rgb: int = 12) -> dict:
    """Original layout; ``flat`` puts the text files directly under root and uses the 'Flicker' spelling."""
    images = root / ("Flicker8k_Dataset" if flat else "Flickr8k_Dataset")
    text = root if flat else root / "Flickr8k_text"
    text.mkdir(parents=True, exist_ok=True)
    kinds = write_images(images, n_rgb)
    names = sorted(kinds) + ["extra.jpg"]          # extra.jpg: captioned, in no list
    Image.fromarray(_photo(200)).save(images / "extra.jpg")
    kinds["extra.jpg"] = "rgb"
    table = caption_table(names, with_newline=False)
    # Numbers written out of order: the #n in the file is the caption number, not the line position.
    order = [4, 0, 3, 1, 2]
    lines = [f"{name}#{n}\t{table[name][n]}" for n in order for name in names]
    (text / flickr.TOKEN_FILE).write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    listed = sorted(kinds.keys() - {"extra.jpg"})
    lists = {"train": listed[0::3], "val": listed[1::3], "test": listed[2::3] + ["ghost.jpg"]}  # ghost: no captions
    for split, members in lists.items():
        (text / flickr.LIST_FILES[split]).write_text("\n".join(members) + "\n", encoding="utf-8")
    return {"kinds": kinds, "captions": table, "lists": lists}


# ---------------------------------------------------------------------------------------------------------------
# Reading the artefacts back independently


def expected_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))


def read_output(out: Path) -> dict:
    res = {"manifest": json.loads((out / "manifest.json").read_text(encoding="utf-8"))}
    for split in flickr.SPLITS:
        with open(out / f"{split}_captions.csv", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        res[split] = {"images": np.load(out / f"{split}_images.npy", allow_pickle=False), "rows": rows,
                      "header": reader.fieldnames}
    return res


def snapshot(folder: Path) -> dict[str, str]:
    """File name -> content hash; folders show up too, so a left-over staging folder would be noticed."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.iterdir())}


def run(argv, capsys) -> tuple[int, str, str]:
    code = prep.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def check_split(res: dict, split: str, image_dir: Path, dataset: dict) -> dict[str, int]:
    """Every row of one split against the raw data; returns image name -> row index."""
    arr, rows = res[split]["images"], res[split]["rows"]
    assert arr.dtype == np.uint8 and arr.shape[1:] == (SIZE, SIZE, 3)
    assert res[split]["header"] == ["image_index", "image", "caption_number", "caption"]
    index = {}
    for r in rows:
        i, name = int(r["image_index"]), r["image"]
        assert index.setdefault(name, i) == i, "an image must map to one row"
        assert r["caption"] == dataset["captions"][name][int(r["caption_number"])]   # exact text
    assert sorted(index.values()) == list(range(len(arr))), "one array row per image, no gaps"
    for name, i in index.items():
        kind = dataset["kinds"][name]
        assert kind not in ("bad", "missing")
        np.testing.assert_array_equal(arr[i], expected_pixels(image_dir / name), err_msg=name)
        if kind == "solid":
            assert (arr[i] == SOLID).all()
        if kind == "gray":
            assert (arr[i][..., 0] == arr[i][..., 1]).all() and (arr[i][..., 1] == arr[i][..., 2]).all()
        # All usable captions of the image are present, each once.
        want = {n for n, c in enumerate(dataset["captions"][name]) if c.strip()}
        got = [int(r["caption_number"]) for r in rows if r["image"] == name]
        assert sorted(got) == sorted(want)
    return index


# ---------------------------------------------------------------------------------------------------------------
# Layouts end to end


def test_kaggle_layout_values_and_seeded_split(tmp_path, capsys):
    ds = make_kaggle(tmp_path / "raw")
    code, out, err = run(["--data-dir", tmp_path / "raw", "--out", tmp_path / "out", "--workers", 2], capsys)
    assert code == 0, err
    res = read_output(tmp_path / "out")
    m = res["manifest"]
    assert m["source"]["layout"] == "kaggle" and m["split_source"] == "seeded" and m["seed"] == 0
    assert m["image_size"] == SIZE

    members = {s: check_split(res, s, tmp_path / "raw" / "Images", ds) for s in flickr.SPLITS}
    # Seeded split by image: disjoint, and its sizes are 6000:1000:1000 of every captioned name (18 -> 14/2/2),
    # counting the images that were then skipped as unreadable or missing.
    names = set(ds["kinds"])
    assigned = {s: set(members[s]) | {x["image"] for x in m["skipped_items"]
                                      if x["split"] == s and x["caption_number"] is None} for s in flickr.SPLITS}
    assert sum(map(len, assigned.values())) == len(names) == 18
    assert set.union(*assigned.values()) == names
    assert [len(assigned[s]) for s in flickr.SPLITS] == [14, 2, 2]

    # Every good caption is written exactly once, with its exact text; skips are counted by reason.
    written = sorted((r["image"], int(r["caption_number"]), r["caption"])
                     for s in flickr.SPLITS for r in res[s]["rows"])
    good = sorted((n, j, c) for n, caps in ds["captions"].items() for j, c in enumerate(caps)
                  if c.strip() and ds["kinds"][n] not in ("bad", "missing"))
    assert written == good
    assert {c for _, _, c in written} >= set(AWKWARD) | {"two\nlines"}

    def total(kind, reason):
        return sum(m["splits"][s]["skipped"][kind].get(reason, 0) for s in flickr.SPLITS)

    def usable(*names):
        return sum(1 for n in names for c in ds["captions"][n] if c.strip())
    # Empty captions are counted as such even on a broken image; the broken image drops the rest.
    assert total("captions", flickr.EMPTY_CAPTION) == 2
    assert total("images", prep.MISSING_IMAGE) == 1
    assert total("captions", prep.MISSING_IMAGE) == usable("missing.jpg")
    assert total("images", prep.UNREADABLE_IMAGE) == 2
    assert total("captions", prep.UNREADABLE_IMAGE) == usable("corrupt.jpg", "truncated.jpg") == 9
    assert sum(m["splits"][s]["images"] for s in flickr.SPLITS) == 15
    assert "train" in out and "images" in out


@pytest.mark.parametrize("flat", [False, True], ids=["nested", "flat"])
def test_original_layout_follows_split_lists(tmp_path, capsys, flat):
    ds = make_original(tmp_path / "raw", flat=flat)
    code, _, err = run(["--data_dir", tmp_path / "raw", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    res = read_output(tmp_path / "out")
    m = res["manifest"]
    assert m["source"]["layout"] == "original" and m["split_source"] == "lists" and m["seed"] is None
    image_dir = tmp_path / "raw" / ("Flicker8k_Dataset" if flat else "Flickr8k_Dataset")
    assert m["source"]["image_dir"] == str(image_dir.resolve())

    for split in flickr.SPLITS:
        index = check_split(res, split, image_dir, ds)
        good = [n for n in ds["lists"][split] if ds["kinds"].get(n) not in ("bad", "missing", None)]
        # Rows follow the list order (dev -> val), exactly the listed images that could be used.
        assert sorted(index, key=index.get) == good
        assert m["splits"][split]["images"] == len(good)
    assert m["splits"]["test"]["skipped"]["images"][flickr.NO_CAPTIONS] == 1          # ghost.jpg
    assert m["unassigned"] == {"images": {flickr.NOT_LISTED: 1}, "captions": {flickr.NOT_LISTED: 5}}
    assert not any(r["image"] == "extra.jpg" for s in flickr.SPLITS for r in res[s]["rows"])


def test_both_layouts_give_the_same_artefacts(tmp_path, capsys):
    """The same photos and captions in either layout, with the same split lists, give identical arrays and tables."""
    orig = make_original(tmp_path / "orig")
    kag = tmp_path / "kag"
    kag.mkdir()
    os.symlink(tmp_path / "orig" / "Flickr8k_Dataset", kag / "Images")
    with open(kag / "captions.txt", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "caption"])
        w.writerows((n, c) for n, caps in orig["captions"].items() for c in caps)
    for name in flickr.LIST_FILES.values():
        (kag / name).write_bytes((tmp_path / "orig" / "Flickr8k_text" / name).read_bytes())
    for src in ("orig", "kag"):
        code, _, err = run(["--data-dir", tmp_path / src, "--out", tmp_path / f"out_{src}"], capsys)
        assert code == 0, err
    a, b = snapshot(tmp_path / "out_orig"), snapshot(tmp_path / "out_kag")
    assert {k: v for k, v in a.items() if k != "manifest.json"} == {k: v for k, v in b.items() if k != "manifest.json"}


def test_captions_csv_reads_back_with_pandas(tmp_path, capsys):
    """What utils/data.py will do: pandas with keep_default_na=False gives the same strings as the csv module."""
    make_kaggle(tmp_path / "raw")
    assert run(["--data-dir", tmp_path / "raw", "--out", tmp_path / "out"], capsys)[0] == 0
    res = read_output(tmp_path / "out")
    df = pd.read_csv(tmp_path / "out" / "train_captions.csv", keep_default_na=False, dtype={"caption": str})
    assert df["caption"].tolist() == [r["caption"] for r in res["train"]["rows"]]
    assert df["image_index"].dtype == np.int64


# ---------------------------------------------------------------------------------------------------------------
# Splitting


def test_split_sizes_follow_the_standard_proportions():
    assert flickr.split_sizes(8000) == (6000, 1000, 1000)
    assert flickr.split_sizes(8091) == (6069, 1011, 1011)
    assert flickr.split_sizes(3) == (1, 1, 1)
    assert flickr.split_sizes(2) == (2, 0, 0)
    for n in range(3, 200):
        sizes = flickr.split_sizes(n)
        assert sum(sizes) == n and min(sizes) >= 1
        assert abs(sizes[1] - n / 8) <= 1 and sizes[1] == sizes[2]


def test_seeded_split_is_deterministic_disjoint_and_order_free():
    names = [f"{i:04d}_x.jpg" for i in range(400)]
    a = flickr.seeded_split(names, seed=7)
    assert [len(a[s]) for s in flickr.SPLITS] == [300, 50, 50]
    assert set(a["train"]).isdisjoint(a["val"]) and set(a["val"]).isdisjoint(a["test"])
    assert set(a["train"]).isdisjoint(a["test"])
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    shuffled = list(np.random.default_rng(1).permutation(names))
    assert flickr.seeded_split(shuffled + names[:10], seed=7) == a            # order and duplicates do not matter
    assert flickr.seeded_split(names, seed=8) != a
    # Not a contiguous slice of the sorted names: the split really is shuffled.
    assert a["test"] != names[-50:]


def test_seeded_split_never_separates_captions_and_is_stable_across_runs(tmp_path, capsys):
    make_kaggle(tmp_path / "raw", n_rgb=20)
    for out, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run(["--data-dir", tmp_path / "raw", "--out", tmp_path / out, "--seed", seed], capsys)[0] == 0
    where = {}
    for out in "abc":
        res = read_output(tmp_path / out)
        where[out] = {}
        for s in flickr.SPLITS:
            for r in res[s]["rows"]:
                assert where[out].setdefault(r["image"], s) == s, "captions of one image in two splits"
    assert where["a"] == where["b"]
    assert where["a"] != where["c"]
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


# ---------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("layout,bad_name", [
    ("kaggle", "../evil.jpg"), ("kaggle", "sub/x.jpg"), ("kaggle", ".."), ("original", "..\\evil.jpg"),
    ("original", "/etc/passwd"), ("list", "../rgb00.jpg"),
])
def test_image_names_leaving_the_folder_are_rejected(tmp_path, capsys, layout, bad_name):
    root = tmp_path / "raw"
    if layout == "kaggle":
        make_kaggle(root)
        bad_file = root / "captions.txt"
        with open(bad_file, "a", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow([bad_name, "a sneaky caption"])
    else:
        make_original(root)
        name = flickr.TOKEN_FILE if layout == "original" else flickr.LIST_FILES["val"]
        bad_file = root / "Flickr8k_text" / name
        with open(bad_file, "a", encoding="utf-8") as f:
            f.write(f"{bad_name}#0\ta sneaky caption\n" if layout == "original" else f"{bad_name}\n")
    lines = bad_file.read_text(encoding="utf-8").rstrip("\n").split("\n")
    code, _, err = run(["--data-dir", root, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err.startswith(f"error: {bad_file.resolve()}: line {len(lines)}: ")
    assert repr(bad_name) in err and "image folder" in err
    assert not (tmp_path / "out").exists()


def _kaggle_bad_header(root):
    make_kaggle(root)
    p = root / "captions.txt"
    p.write_text("filename,text\n" + p.read_text(encoding="utf-8").split("\n", 1)[1], encoding="utf-8")
    return p, "image,caption"


def _kaggle_no_images(root):
    make_kaggle(root)
    (root / "Images").rename(root / "photos")
    return root / "Images", "image folder not found"


def _kaggle_one_field(root):
    make_kaggle(root)
    n_lines = (root / "captions.txt").read_text(encoding="utf-8").count("\n")
    with open(root / "captions.txt", "a", encoding="utf-8") as f:
        f.write("lonely.jpg\n")
    return root / "captions.txt", f"line {n_lines + 1}: expected 'image,caption'"


def _kaggle_bad_quotes(root):
    make_kaggle(root)
    with open(root / "captions.txt", "a", encoding="utf-8") as f:
        f.write('rgb00.jpg,"closed" then more\n')
    return root / "captions.txt", "malformed CSV"


def _token_no_tab(root):
    make_original(root)
    p = root / "Flickr8k_text" / flickr.TOKEN_FILE
    p.write_text("rgb00.jpg#0 no tab here\n" + p.read_text(encoding="utf-8"), encoding="utf-8")
    return p, "line 1"


def _token_bad_number(root):
    make_original(root)
    p = root / "Flickr8k_text" / flickr.TOKEN_FILE
    p.write_text(p.read_text(encoding="utf-8") + "rgb00.jpg#x\tcaption\n", encoding="utf-8")
    return p, "<image>#<n><TAB><caption>"


def _token_not_utf8(root):
    make_original(root)
    p = root / "Flickr8k_text" / flickr.TOKEN_FILE
    p.write_bytes(p.read_bytes() + "rgb00.jpg#9\tcaf\xe9\n".encode("latin-1"))
    return p, "not UTF-8"


def _original_no_images(root):
    make_original(root)
    (root / "Flickr8k_Dataset").rename(root / "elsewhere")
    return root / "Flickr8k_Dataset", "image folder not found"


def _partial_lists(root):
    make_original(root)
    (root / "Flickr8k_text" / flickr.LIST_FILES["test"]).unlink()
    return root / "Flickr8k_text", flickr.LIST_FILES["test"]


def _image_in_two_lists(root):
    ds = make_original(root)
    with open(root / "Flickr8k_text" / flickr.LIST_FILES["test"], "a", encoding="utf-8") as f:
        f.write(ds["lists"]["train"][0] + "\n")
    return root / "Flickr8k_text" / flickr.LIST_FILES["test"], "already in the train split"


def _no_caption_file(root):
    (root / "Images").mkdir(parents=True)
    return root, "no caption file found"


def _missing_root(root):
    return root, "data folder not found"


@pytest.mark.parametrize("breaker", [
    _kaggle_bad_header, _kaggle_no_images, _kaggle_one_field, _kaggle_bad_quotes, _token_no_tab,
    _token_bad_number, _token_not_utf8, _original_no_images, _partial_lists, _image_in_two_lists,
    _no_caption_file, _missing_root,
])
def test_bad_input_exits_2_naming_the_file(tmp_path, capsys, breaker):
    bad_file, hint = breaker(tmp_path / "raw")
    code, out, err = run(["--data-dir", tmp_path / "raw", "--out", tmp_path / "out"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {bad_file.resolve()}: ") and hint in err, err
    assert not (tmp_path / "out").exists()


def test_failing_run_leaves_previous_output_untouched(tmp_path, capsys, monkeypatch):
    make_kaggle(tmp_path / "raw")
    out = tmp_path / "out"
    assert run(["--data-dir", tmp_path / "raw", "--out", out], capsys)[0] == 0
    before = snapshot(out)

    # A user error found before writing starts ...
    good = (tmp_path / "raw" / "captions.txt").read_bytes()
    (tmp_path / "raw" / "captions.txt").write_bytes(b"img,text\n" + good.split(b"\n", 1)[1])
    assert run(["--data-dir", tmp_path / "raw", "--out", out], capsys)[0] == 2
    assert snapshot(out) == before
    (tmp_path / "raw" / "captions.txt").write_bytes(good)

    # ... and a crash in the middle of streaming the images (the 10th decode fails).
    calls = {"n": 0}
    real = prep.load_rgb

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("disk went away")
        return real(path)

    monkeypatch.setattr(prep, "load_rgb", flaky)
    with pytest.raises(RuntimeError):
        prep.prepare(tmp_path / "raw", out, workers=1)
    assert calls["n"] == 10
    assert snapshot(out) == before, "no file may change, and no staging folder may be left behind"


def test_rerun_gives_identical_bytes_whatever_the_worker_count(tmp_path, capsys):
    make_original(tmp_path / "raw")
    out = tmp_path / "out"
    assert run(["--data-dir", tmp_path / "raw", "--out", out, "--workers", 1], capsys)[0] == 0
    first = snapshot(out)
    assert run(["--data-dir", tmp_path / "raw", "--out", out, "--workers", 3], capsys)[0] == 0
    assert snapshot(out) == first
    assert sorted(first) == sorted(["manifest.json"] + [f"{s}_{k}" for s in flickr.SPLITS
                                                        for k in ("images.npy", "captions.csv")])


def test_cli_subprocess(tmp_path, capsys, monkeypatch):
    """The script as a user runs it, from another working directory, with the underscore flag and a custom size
    (its help and a failure in-process: one subprocess shows the command works)."""
    make_kaggle(tmp_path / "raw", n_rgb=4)
    script = str(REPO / "prepare_flickr8k.py")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with pytest.raises(SystemExit) as help_:
        prep.main(["--help"])
    help_text = capsys.readouterr().out
    assert help_.value.code == 0 and "--data-dir" in help_text and "--data_dir" in help_text
    done = subprocess.run([sys.executable, script, "--data_dir", "raw", "--out", "out", "--image-size", "32",
                           "--seed", "1"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert m["image_size"] == 32 and m["seed"] == 1
    for s in flickr.SPLITS:
        assert np.load(tmp_path / "out" / f"{s}_images.npy").shape == (m["splits"][s]["images"], 32, 32, 3)
    monkeypatch.chdir(tmp_path)
    assert prep.main(["--data-dir", "nowhere", "--out", "out2"]) == 2
    assert capsys.readouterr().err == f"error: {(tmp_path / 'nowhere').resolve()}: data folder not found\n"


def test_layout_choice_and_repeated_entries(tmp_path, capsys):
    """Both layouts in one folder: auto takes the original (it has the standard split), --layout overrides.
    A repeated '#n' and a repeated list entry are skipped and counted, not fatal."""
    root = tmp_path / "raw"
    ds = make_original(root)
    train0 = ds["lists"]["train"][-1]                       # rgb02.jpg: decodable, captions 1 and 3 non-awkward
    token = root / "Flickr8k_text" / flickr.TOKEN_FILE
    token.write_text(token.read_text(encoding="utf-8") + f"{train0}#0\tsecond caption zero\n", encoding="utf-8")
    with open(root / "Flickr8k_text" / flickr.LIST_FILES["train"], "a", encoding="utf-8") as f:
        f.write(f"{train0}\n")
    (root / "Images").mkdir()
    Image.fromarray(_photo(300)).save(root / "Images" / "only.jpg")
    (root / "captions.txt").write_text('image,caption\nonly.jpg,"one, two"\n', encoding="utf-8")

    plan = flickr.plan_splits(flickr.find_source(root), seed=0)
    assert plan.source.layout == "original" and plan.split_source == "lists"
    assert plan.skipped_counts("train")["captions"] == {flickr.DUPLICATE_NUMBER: 1}
    assert plan.skipped_counts("train")["images"] == {flickr.DUPLICATE_LISTED: 1}
    item = next(it for it in plan.splits["train"] if it.name == train0)
    assert item.captions == list(enumerate(ds["captions"][train0]))    # the first '#0' in the file wins

    code, _, err = run(["--data-dir", root, "--out", tmp_path / "out", "--layout", "kaggle"], capsys)
    assert code == 0, err
    res = read_output(tmp_path / "out")
    assert res["manifest"]["source"]["layout"] == "kaggle"
    # The split lists beside it still define the split, so the one Kaggle image, listed nowhere, is left out.
    assert res["manifest"]["split_source"] == "lists"
    assert res["manifest"]["unassigned"]["images"] == {flickr.NOT_LISTED: 1}
    assert all(len(res[s]["rows"]) == 0 for s in flickr.SPLITS)
    for name in flickr.LIST_FILES.values():
        (root / "Flickr8k_text" / name).unlink()
    assert run(["--data-dir", root, "--out", tmp_path / "out", "--layout", "kaggle"], capsys)[0] == 0
    res = read_output(tmp_path / "out")
    assert [r["caption"] for s in flickr.SPLITS for r in res[s]["rows"]] == ["one, two"]
    assert res["train"]["images"].shape == (1, SIZE, SIZE, 3)            # one image: everything goes to train
