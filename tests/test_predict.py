"""scripts/predict.py: a notebook's trained Emotic model on a photo it has never seen.

Set-up, once: the smoke synthetic Emotic, described by a tiny random LLaVA (scripts/describe.py), prepared by
mat2py.py with that CSV, and two models trained on it by the notebooks' own recipe (``emotic.train``). The printed
probabilities, thresholds and VAD are checked against a reference computed here: the crop and squash by hand,
the features by the encoders, the head by the checkpoint's state dict, the thresholds by a brute-force F1 search.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import describe as describe_script  # noqa: E402
import mat2py  # noqa: E402
import predict as P  # noqa: E402  (scripts/predict.py: pyproject puts scripts/ on pytest's path)
from utils.labels import CATEGORIES  # noqa: E402
from conftest import run_main  # noqa: E402

SCRIPT = str(REPO / "scripts" / "predict.py")
LINE = re.compile(r"^  ([* ]) (\S+)\s+([\d.]+)   threshold (\S+)")


def _brute_force_thresholds(prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every distinct score as a threshold (predict positive at >=), F1 by counting; highest threshold on ties."""
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        y = labels[:, j] > 0
        if not y.any():
            continue
        best = (-1.0, None)
        for t in np.unique(prob[:, j]):
            pred = prob[:, j] >= t
            tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
            f1 = 2 * tp / (2 * tp + fp + fn)
            if f1 >= best[0]:
                best = (f1, t)
        out[j] = best[1]
    return out


def test_f1_thresholds_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    prob = np.round(rng.random((60, 26)), 1)  # many ties
    labels = (rng.random((60, 26)) < 0.3).astype(np.float32)
    labels[:, 5] = 0  # a category without positives
    got = P.f1_thresholds(prob, labels)
    want = _brute_force_thresholds(prob, labels)
    assert np.isnan(got[5]) and np.isnan(want[5])
    np.testing.assert_array_equal(got, want)


def test_metadata_and_unknown_description_sources():
    image = np.zeros((240, 320, 3), np.uint8)
    # by hand: box area 80 x 190 of 320 x 240 = 0.198 (>= 0.15: large); centre x 0.25 (left), y 0.52 (middle)
    texts, how = P.describe(image, [(40, 30, 120, 220), None], {"source": "metadata"}, "cpu")  # None: whole photo
    assert texts == ["A person, taking up a large part of the frame, at the left of a photo from the unknown "
                     "collection.", "A person, filling most of the frame, in the centre of a photo from the unknown "
                                    "collection."]
    assert how == "metadata sentence (no gender or age known)"
    with pytest.raises(P.PredictError, match="descriptions from '/data/mine.csv'.*pass --text"):
        P.describe(image, [None], {"source": "file", "file": "/data/mine.csv"}, "cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Raw smoke data, VLM descriptions, prepared artefacts, two trained models; the environment they need."""
    from utils import config
    from utils import emotic
    from utils.synthetic import make_emotic
    from tests.tiny_models import make_tiny_llava

    root = tmp_path_factory.mktemp("predict")
    make_emotic(root / "raw", "smoke", 0)
    llava = make_tiny_llava(root / "llava")
    env = {"MMER_PROFILE": "smoke", "EMOTIC_ARTEFACTS": str(root / "art"), "MMER_OUTPUT": str(root / "out"),
           "MMER_CACHE": str(root / "cache"), "MMER_DEVICE": "cpu"}
    saved = dict(os.environ)
    os.environ.update(env)
    try:  # describe.py in-process (tests/test_describe.py runs it as a command)
        assert describe_script.main(["--data-dir", str(root / "raw"), "--model", str(llava), "--out",
                                     str(root / "vlm.csv"), "--max-new-tokens", "8"]) == 0
        assert mat2py.main(["--data-dir", str(root / "raw"), "--out", str(root / "art"), "--workers", "1",
                            "--descriptions", "file", "--descriptions-file", str(root / "vlm.csv")]) == 0
        cfg = config.load("emotic")
        data = emotic.data(cfg)
        models = {label: emotic.train(data, cfg, label, progress=False)
                  for label in ("fusion (all)", "image (body+context)")}
        yield {"root": root, "env": env, "cfg": cfg, "data": data, "models": models, "llava": llava}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMER_") and k != "EMOTIC_ARTEFACTS"}
    return {**env, "PYTHONPATH": str(REPO)}


def _predict(trained, *args, **extra) -> subprocess.CompletedProcess:
    """scripts/predict.py as a command (one test: the process boundary, exit status and printout)."""
    env = {**_clean_env(), **trained["env"], **extra}
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def _predict_in(trained, *args, **extra) -> SimpleNamespace:
    """``predict.main(argv)`` in this process, with the command's environment: its status and printouts."""
    return run_main(P.main, args, {**trained["env"], **extra})


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A photo the project has never seen: two figures on a gradient, 320 x 240."""
    x = np.linspace(0, 1, 320)[None, :, None]
    y = np.linspace(0, 1, 240)[:, None, None]
    arr = (255 * np.concatenate([x * np.ones_like(y), y * np.ones_like(x), 0.5 * (x + y)], axis=2)).astype(np.uint8)
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    d.ellipse((40, 30, 120, 220), fill=(230, 180, 120))
    d.rectangle((200, 60, 290, 230), fill=(40, 60, 200))
    path = tmp_path_factory.mktemp("photo") / "mine.jpg"
    im.save(path, quality=95)
    return path


def _persons(stdout: str) -> list[dict]:
    """The printed persons: where, description, top lines (mark, category, prob, threshold) and VAD."""
    out = []
    for block in stdout.split("\nperson ")[1:]:
        lines = block.splitlines()
        rows = [LINE.match(line).groups() for line in lines if LINE.match(line)]
        vad = re.search(r"valence ([\d.]+), arousal ([\d.]+), dominance ([\d.]+)", block).groups()
        desc = re.search(r"description \([^)]*\): (.*)", block)
        out.append({"where": lines[0], "rows": rows, "vad": [float(v) for v in vad],
                    "description": desc.group(1) if desc else None})
    return out


def _reference(trained, label: str, photo: Path, box, text: str | None):
    """Probabilities, VAD and thresholds computed here from the checkpoint's state dict."""
    from scipy.special import expit

    from utils import encoders
    from utils import emotic
    from utils.prep.io import resize_rgb
    from utils.training import predict

    arr = np.asarray(Image.open(photo).convert("RGB"))
    h, w = arr.shape[:2]
    x1, y1, x2, y2 = box or (0, 0, w, h)
    data, cfg = trained["data"], trained["cfg"]
    feats = {"body": encoders.image_features(data.image_encoder, resize_rgb(arr[y1:y2, x1:x2], 128)[None],
                                             cache=False),
             "context": encoders.image_features(data.image_encoder, resize_rgb(arr, 224)[None], cache=False)}
    if text is not None:
        feats["text"] = encoders.text_features(data.text_encoder, [text], cache=False)
    model = emotic.model(label, cfg, data.dims)
    model.load_state_dict(torch.load(trained["models"][label].checkpoint, weights_only=True))
    out = predict(model.eval(), feats, keys=("scores", "vad"))
    val = predict(model, data.features["val"], keys=("scores",))["scores"]
    thresholds = _brute_force_thresholds(expit(val), data.features["val"]["cat"])
    return expit(out["scores"][0]), out["vad"][0], thresholds


def _check(person, prob, vad, thresholds, top=5):
    order = np.argsort(-prob, kind="stable")[:top]
    assert [r[1] for r in person["rows"]] == [CATEGORIES[j] for j in order]
    for (mark, name, p, t), j in zip(person["rows"], order):
        assert abs(float(p) - prob[j]) <= 5e-4
        assert abs(float(t) - thresholds[j]) <= 5e-4 if np.isfinite(thresholds[j]) else t == "none"
        assert (mark == "*") == bool(prob[j] >= thresholds[j])
    np.testing.assert_allclose(person["vad"], vad, atol=5e-3)


def test_boxes_described_by_the_training_vlm(trained, photo):
    from utils.prep import vlm

    boxes = [(40, 30, 120, 220), (200, 60, 290, 230)]
    proc = _predict_in(trained, photo, *[a for b in boxes for a in ("--box", ",".join(map(str, b)))])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the probability of highest F1 on the validation split" in proc.stdout
    persons = _persons(proc.stdout)
    assert [p["where"] for p in persons] == ["1 (box 40,30,120,220)", "2 (box 200,60,290,230)"]
    model = vlm.VLM(str(trained["llava"]), "cpu", max_new_tokens=8)
    loaded = P.load("fusion (all)", trained["cfg"], "cpu")
    assert loaded.checkpoint == trained["models"]["fusion (all)"].checkpoint
    for person, box in zip(persons, boxes):
        text = model.describe([Image.open(photo).convert("RGB")], [box])[0]
        assert person["description"] == text  # the training source, with its settings
        reference = _reference(trained, "fusion (all)", photo, box, text)
        _check(person, *reference)
        # the same in-process, to the last digits the printout rounds away
        got = P.run(loaded, np.asarray(Image.open(photo).convert("RGB")), box, text, trained["data"].image_encoder,
                    trained["data"].text_encoder)
        np.testing.assert_allclose(got["probabilities"], reference[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(list(got["vad"].values()), reference[1], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(loaded.thresholds, reference[2])


def test_without_a_box_the_whole_photo_is_the_person(trained, photo):
    proc = _predict(trained, photo, "--text", "A child laughs at a birthday party.", "--top", "26")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [person] = _persons(proc.stdout)
    assert person["where"] == "1 (no box given: the whole 320x240 photo is the person)"
    assert person["description"] == "A child laughs at a birthday party."
    _check(person, *_reference(trained, "fusion (all)", photo, None, "A child laughs at a birthday party."), top=26)


def test_a_photo_is_turned_upright_by_its_exif_orientation(trained, photo, tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view) is predicted as
    the upright photo: the same numbers as that photo stored upright."""
    upright = Image.open(photo).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # stored turned counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    sideways.save(path, quality=95, exif=exif)
    stored = tmp_path / "upright.png"
    Image.open(path).transpose(Image.Transpose.ROTATE_270).save(stored)  # the decoded pixels, turned by hand
    proc = _predict_in(trained, path, "--model", "image (body+context)", "--box", "40,30,120,220")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [person] = _persons(proc.stdout)
    _check(person, *_reference(trained, "image (body+context)", stored, (40, 30, 120, 220), None))


def test_an_image_only_model_needs_no_description(trained, photo):
    proc = _predict_in(trained, photo, "--model", "image (body+context)", "--box=-20,30,120,500")  # clipped
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [person] = _persons(proc.stdout)
    assert person["where"] == "1 (box 0,30,120,240)" and person["description"] is None
    _check(person, *_reference(trained, "image (body+context)", photo, (0, 30, 120, 240), None))


def test_bad_inputs_name_the_file(trained, photo, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    proc = _predict_in(trained, broken)
    assert proc.returncode == 2 and f"{broken}: cannot decode image" in proc.stderr, proc.stderr
    proc = _predict_in(trained, tmp_path / "absent.png")
    assert proc.returncode == 2 and f"{tmp_path / 'absent.png'}: image file not found" in proc.stderr, proc.stderr
    proc = _predict_in(trained, photo, "--box", "400,300,500,400")
    assert proc.returncode == 2 and f"{photo}: box 400,300,500,400 lies outside the 320x240 photo" in proc.stderr
    proc = _predict_in(trained, photo, "--box", "1,2,3")
    assert proc.returncode == 2 and "a box is four numbers" in proc.stderr
    proc = _predict_in(trained, photo, "--model", "no such model")
    assert proc.returncode == 2 and "unknown model 'no such model'" in proc.stderr

    # the same settings with other encoders (a tiny CLIP's towers) find only checkpoints of the default encoders
    from tests.tiny_models import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip")
    proc = _predict_in(trained, photo, MMER_ENCODERS=str(clip))
    ckpt = trained["models"]["fusion (all)"].checkpoint
    assert proc.returncode == 2 and f"{ckpt}: trained with other encoders" in proc.stderr, proc.stderr

    # other data (metadata descriptions instead of the VLM's): the checkpoint is not taken for them
    assert mat2py.main(["--data-dir", str(trained["root"] / "raw"), "--out", str(tmp_path / "meta"),
                        "--workers", "1"]) == 0
    proc = _predict_in(trained, photo, EMOTIC_ARTEFACTS=str(tmp_path / "meta"))
    assert proc.returncode == 2 and f"{ckpt}: trained with other data or settings" in proc.stderr, proc.stderr
