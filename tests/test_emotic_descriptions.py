"""The three Emotic text sources (README, section 'Real data'): metadata sentence, user CSV, captioner with its cache.

The captioner is exercised with a tiny randomly initialised BLIP built and saved here, so the test runs offline.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mat2py
from test_mat2py import build_dataset  # the independent Emotic .mat builder
from utils.prep import emotic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    return build_dataset(tmp_path_factory.mktemp("emotic_raw"))


def kept_rows(dataset):
    return [r for split in ("train", "val", "test") for r in dataset["kept"][split]]


# ---------------------------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------------------------

def _person(gender, age):
    return emotic.Person(record=0, person=0, bbox=(0, 0, 1, 1), categories=("Anger",), vad=(1, 2, 3),
                         gender=gender, age=age)


_REC = emotic.Record("train", 0, "framesdb/images", "a.jpg", None, "framesdb", ())


@pytest.mark.parametrize("gender, age, box, want", [
    ("Female", "Adult", (0, 0, 10, 10), "A woman, small in the frame, at the top left of a photo from the "
                                        "framesdb collection."),
    ("Male", "Kid", (80, 70, 100, 100), "A boy, of medium size in the frame, at the bottom right of a photo "
                                        "from the framesdb collection."),
    ("", "Adult", (0, 0, 100, 100), "An adult, filling most of the frame, in the centre of a photo from the "
                                    "framesdb collection."),
    ("", "", (45, 0, 55, 100), "A person, of medium size in the frame, in the centre of a photo from the "
                               "framesdb collection."),
])
def test_metadata_sentence(gender, age, box, want):
    assert emotic.metadata_description(_person(gender, age), _REC, box, 100, 100) == want


# ---------------------------------------------------------------------------------------------------------------
# file
# ---------------------------------------------------------------------------------------------------------------

def _text(row):
    """Awkward on purpose: commas, quotes, a newline and non-ASCII must survive the round trip."""
    return f'{row["split"]} #{row["record"]}.{row["person"]}: "a, b" — café\nline two'


def _write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _bbox_csv(dataset, path, skip=()):
    """The fixture generator's format: folder,filename,x1,y1,x2,y2,description with the box as annotated.

    Boxes are written as clipped values jittered by 0.4 px for some rows (within tolerance), and a decoy row per
    image with a box 5 px off carries a wrong text that must never be picked.
    """
    rows = []
    for i, r in enumerate(kept_rows(dataset)):
        if (r["split"], r["record"], r["person"]) in skip:
            continue
        jitter = 0.4 if i % 2 else 0.0
        rows.append([r["folder"], r["filename"], *(v + jitter for v in r["box"]), _text(r)])
        rows.append([r["folder"], r["filename"], *(v + 5 for v in r["box"]), "decoy"])
    return _write(path, ["folder", "filename", "x1", "y1", "x2", "y2", "description"], rows)


def _descriptions(out: Path) -> dict:
    return {(split, row["record"], row["person"]): row["description"]
            for split in ("train", "val", "test") if (out / f"{split}.csv").is_file()
            for row in pd.read_csv(out / f"{split}.csv", keep_default_na=False).to_dict("records")}


def test_file_source_by_box(dataset, tmp_path):
    csv_path = _bbox_csv(dataset, tmp_path / "d.csv")
    out = tmp_path / "out"
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(out), "--descriptions", "file",
                        "--descriptions-file", str(csv_path)]) == 0
    got = _descriptions(out)
    assert got == {(r["split"], r["record"], r["person"]): _text(r) for r in kept_rows(dataset)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["descriptions"]["source"] == "file"
    assert manifest["descriptions"]["metadata_fallbacks"] == 0


def test_file_source_by_split_and_index(dataset, tmp_path):
    rows = [[split, i, f"{split} row {i}"] for split in ("train", "val", "test")
            for i in range(len(dataset["kept"][split]))]
    csv_path = _write(tmp_path / "d.csv", ["split", "index", "description"], rows)
    out = tmp_path / "out"
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(out), "--descriptions", "file",
                        "--descriptions_file", str(csv_path)]) == 0
    for split in ("train", "val", "test"):
        table = pd.read_csv(out / f"{split}.csv", keep_default_na=False)
        assert table.description.tolist() == [f"{split} row {i}" for i in range(len(table))]


def test_missing_description_is_an_error_or_a_counted_fallback(dataset, tmp_path, capsys):
    gone = ("val", 0, 1)
    csv_path = _bbox_csv(dataset, tmp_path / "d.csv", skip={gone})
    base = ["--data-dir", str(dataset["root"]), "--descriptions", "file", "--descriptions-file", str(csv_path)]
    assert mat2py.main(base + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(csv_path) in err and "val index 1" in err
    assert not (tmp_path / "a").exists()  # nothing half-written: a failed first run leaves not even its folder

    assert mat2py.main(base + ["--out", str(tmp_path / "b"), "--missing-descriptions", "metadata"]) == 0
    got = _descriptions(tmp_path / "b")
    assert got[gone].startswith("A man, ") and got[("val", 0, 0)] == _text(dataset["kept"]["val"][0])
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["descriptions"]["metadata_fallbacks"] == 1


def test_file_without_key_columns_is_rejected(dataset, tmp_path, capsys):
    csv_path = _write(tmp_path / "d.csv", ["image", "text"], [["a.jpg", "hello"]])
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(tmp_path / "o"), "--descriptions", "file",
                        "--descriptions-file", str(csv_path)]) == 2
    err = capsys.readouterr().err
    assert str(csv_path) in err and "split,index" in err


# ---------------------------------------------------------------------------------------------------------------
# captioner
# ---------------------------------------------------------------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "man", "woman", "child", "sits", "stands",
         "on", "in", "the", "bench", "street", "room", "with", "dog", "red", "blue", "smiling", "looking"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A randomly initialised two-layer BLIP captioner with a word-level vocabulary, saved like a hub model."""
    import torch
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_blip")
    vocab = {w: i for i, w in enumerate(WORDS)}
    tokenizer = BertTokenizerFast(vocab=vocab, bos_token="[DEC]", model_max_length=32)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    text = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=40, bos_token_id=vocab["[DEC]"],
                eos_token_id=vocab["[SEP]"], sep_token_id=vocab["[SEP]"], pad_token_id=vocab["[PAD]"])
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _caption_independently(model_dir: Path, image: Image.Image) -> str:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    proc = BlipProcessor.from_pretrained(model_dir)
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        ids = model.generate(**proc(images=[image], return_tensors="pt"), max_new_tokens=30, do_sample=False)
    return proc.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_captioner_runs_caches_and_invalidates(dataset, tiny_blip, tmp_path, monkeypatch):
    root = tmp_path / "raw"
    shutil.copytree(dataset["root"], root)
    cache = tmp_path / "captions.sqlite"
    args = ["--data-dir", str(root), "--descriptions", "captioner", "--captioner", str(tiny_blip),
            "--caption-cache", str(cache), "--splits", "train", "val"]
    n = len(dataset["kept"]["train"]) + len(dataset["kept"]["val"])

    assert mat2py.main(args + ["--out", str(tmp_path / "a")]) == 0
    first = _descriptions(tmp_path / "a")
    assert len(first) == n and all(t and t == t.strip() for t in first.values())
    info = json.loads((tmp_path / "a" / "manifest.json").read_text())["descriptions"]
    assert (info["captioned"], info["cache_hits"], info["unit"]) == (n, 0, "person box crop")

    # The caption of one person equals the model's own output on that person's box crop.
    r = dataset["kept"]["train"][0]
    with Image.open(root / "emotic" / r["folder"] / r["filename"]) as im:
        crop = im.convert("RGB").crop(r["box"])
    assert first[("train", r["record"], r["person"])] == _caption_independently(tiny_blip, crop)

    # A rerun is served from the cache: the model is never loaded.
    def no_model(self):
        raise AssertionError("the model was loaded although every caption is cached")

    monkeypatch.setattr(emotic.Captioner, "_load", no_model)
    assert mat2py.main(args + ["--out", str(tmp_path / "b")]) == 0
    assert _descriptions(tmp_path / "b") == first
    info = json.loads((tmp_path / "b" / "manifest.json").read_text())["descriptions"]
    assert (info["captioned"], info["cache_hits"]) == (0, n)
    monkeypatch.undo()

    # Changing one image's content re-captions exactly its persons (two val persons), nothing else.
    path = root / "emotic" / "mscoco/images/val.png"
    arr = np.asarray(Image.open(path).convert("RGB")).copy()
    arr[0, 0] ^= 255
    Image.fromarray(arr).save(path, format="PNG")
    assert mat2py.main(args + ["--out", str(tmp_path / "c")]) == 0
    info = json.loads((tmp_path / "c" / "manifest.json").read_text())["descriptions"]
    assert (info["captioned"], info["cache_hits"]) == (2, n - 2)


def test_unloadable_captioner_is_a_clear_error(dataset, tmp_path, capsys):
    bogus = tmp_path / "not_a_model"
    bogus.mkdir()
    assert mat2py.main(["--data-dir", str(dataset["root"]), "--out", str(tmp_path / "o"), "--descriptions",
                        "captioner", "--captioner", str(bogus), "--caption-cache", str(tmp_path / "c.sqlite"),
                        "--splits", "val"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: captioner") and str(bogus) in err
