"""Notebooks 05 and 06 on smoke: every reported attack success re-fed through a plainly written pipeline, every
reported rate recomputed from the saved arrays, every interval against scipy.

The pipeline here is written out by hand, without ``utils.attack``: the clean image is read again from the artefact
file, the saved pixels (x, y, r, g, b) are written into it, the image (and for Emotic the person's box cropped from
it with ``roi_align``, 128 x 128) goes through the image encoder, then through the model loaded from the checkpoint
the notebook names. A reported success must not have a true category (Emotic) / an own caption (Flickr8k) on top,
and the re-fed scores must match the saved ones. Every member search is re-fed (white-box and black-box), and so is
every search of the adaptive attack on the defence, with the median filter applied by scipy to the adversarial
photo first. The attack's per-item result (the members' worst case) is recomputed from the members' arrays.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from scipy import ndimage
from torchvision.ops import roi_align

pytestmark = pytest.mark.notebook


def _saved(out: Path, name: str) -> tuple[dict, dict]:
    doc = json.loads((out / "metrics" / f"{name}.json").read_text())
    with np.load(out / "predictions" / doc["predictions"], allow_pickle=False) as z:
        return doc, {k: z[k] for k in z.files}


def _with_pixels(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    px = pixels[pixels[:, 0] >= 0]
    adv = image.copy()
    adv[px[:, 1], px[:, 0]] = px[:, 2:].astype(np.uint8)
    assert (adv != image).any(-1).sum() <= len(px), "two saved pixels at one position"
    return adv


def _as_input(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


MEMBERS = ("white-box", "black-box")


def _member_slugs(p: dict, label: str, prefix: str = "") -> list[str]:
    """The slugs of the member searches saved for a model (``<model> [<member>]``)."""
    from utils.experiments import slug

    found = [slug(f"{prefix}{label} [{m}]") for m in MEMBERS if f"{slug(f'{prefix}{label} [{m}]')}_schedule" in p]
    assert found, f"no member search saved for {prefix}{label}"
    return found


def _check_rates(doc: dict, p: dict, slugs: dict) -> int:
    """The attack's per-item k_needed recomputed as the smallest k any member needed; the success tables (attack
    and members) recomputed from the saved per-item arrays; Wilson bounds from scipy. Returns member successes."""
    from utils.experiments import slug as slug_of

    for label, s in slugs.items():
        ks = [np.where(p[f"{m}_k_needed"] > 0, p[f"{m}_k_needed"], 10 ** 9) for m in _member_slugs(p, label)]
        worst = np.min(ks, axis=0)
        np.testing.assert_array_equal(p[f"{s}_k_needed"], np.where(worst == 10 ** 9, -1, worst), err_msg=label)
    for row in doc["attack"] + doc["attack_members"]:
        s = slugs[row["model"]] if "member" not in row else slug_of(f"{row['model']} [{row['member']}]")
        k_needed, attacked = p[f"{s}_k_needed"], p[f"{s}_attacked"]
        won = int(((k_needed > 0) & (k_needed <= row["pixels"]) & attacked).sum())
        n = int(attacked.sum())
        assert (row["successes"], row["attacked"]) == (won, n), (row, won, n)
        if n:
            ci = binomtest(won, n).proportion_ci(method="wilson")
            assert row["success % low"] == pytest.approx(100 * ci.low) and row["success % high"] == pytest.approx(100 * ci.high)
    return sum(int((p[f"{m}_k_needed"] > 0).sum()) for label in slugs for m in _member_slugs(p, label))


def _check_adaptive(doc: dict, p: dict) -> None:
    """The defence table's adaptive columns recomputed from the adaptive searches' arrays (fooled by any member with
    at most the largest k, Wilson bounds from scipy), and the same budget as the attack it stands beside."""
    for label, row in doc["defence"].items():
        slugs = _member_slugs(p, label, "adaptive ")
        attacked = p[f"{slugs[0]}_attacked"]
        fooled = np.logical_or.reduce([p[f"{s}_k_needed"] > 0 for s in slugs]) & attacked
        n, won = int(attacked.sum()), int(fooled.sum())
        assert (row["adaptive: attacked"], row["adaptive: fooled"]) == (n, won), (label, row)
        ci = binomtest(won, n).proportion_ci(method="wilson")
        assert row["adaptive %"] == pytest.approx(100 * won / n)
        assert row["adaptive % low"] == pytest.approx(100 * ci.low)
        assert row["adaptive % high"] == pytest.approx(100 * ci.high)
        for s, plain in zip(slugs, _member_slugs(p, label)):
            for k in p[f"{s}_schedule"]:
                if f"{s}_k{k}_settings" in p and f"{plain}_k{k}_settings" in p:
                    assert str(p[f"{s}_k{k}_settings"]) == str(p[f"{plain}_k{k}_settings"]), (label, k, "budgets")


def _attack_runs(p: dict, label: str, prefix: str = ""):
    """(k, arrays of that k's report) for every member search of the model and every k it was attacked at."""
    for slug in _member_slugs(p, label, prefix):
        for k in p[f"{slug}_schedule"]:
            key = f"{slug}_k{k}_"
            if key + "rows" in p:
                yield int(k), {f: p[key + f] for f in ("rows", "attacked", "success", "pixels", "scores_after")}


def _filtered(image: np.ndarray, size: int, on: bool) -> np.ndarray:
    """The photo behind the defence's median filter (scipy, mirrored edges), when ``on``."""
    return ndimage.median_filter(image, size=(size, size, 1), mode="reflect") if on else image


def refeed_emotic(out: Path, doc: dict, p: dict) -> int:
    """Re-feed every success (and one failure per run) of notebook 05's saved arrays; returns successes confirmed."""
    from utils import config, data, emotic, encoders, experiments, paths

    cfg = config.load("emotic", doc["profile"])
    test = data.load_emotic("test")
    scenes = np.load(paths.artefact_dir("emotic") / "test_context_arr.npy", mmap_mode="r", allow_pickle=False)
    labels = p["labels"].astype(bool)
    encoder = encoders.load_image_encoder(cfg["image_encoder"]).eval()
    text = encoders.text_features(encoders.load_text_encoder(cfg["text_encoder"]), test.descriptions, cache=False)
    boxes = torch.from_numpy(np.asarray(test.boxes_224, np.float32))
    dims = {"body": encoder.dim, "context": encoder.dim, "text": text.shape[1]}
    slugs = {label: experiments.slug(label) for label in doc["checkpoints"]}
    successes = _check_rates(doc, p, slugs)
    _check_adaptive(doc, p)
    refed = confirmed = 0
    for (label, ckpt), defended in [(item, on) for on in (False, True) for item in doc["checkpoints"].items()]:
        model = emotic.model(label, cfg, dims)
        model.load_state_dict(torch.load(out / "checkpoints" / ckpt, weights_only=True))
        model.eval()
        for k, run in _attack_runs(p, label, "adaptive " if defended else ""):
            assert not (run["success"] & ~run["attacked"]).any(), f"{label}, k={k}: a success on an item not attacked"
            for i in [*np.flatnonzero(run["success"]), *np.flatnonzero(run["attacked"] & ~run["success"])[:1]]:
                row = int(run["rows"][i])
                assert (run["pixels"][i][:, 0] >= 0).sum() <= k
                photo = _filtered(_with_pixels(np.array(scenes[row]), run["pixels"][i]), cfg["median_size"], defended)
                x = _as_input(photo)
                with torch.no_grad():
                    feats = {"context": encoder(x), "text": torch.from_numpy(text[row:row + 1])}
                    feats["body"] = encoder(roi_align(x, torch.cat([torch.zeros(1, 1), boxes[row:row + 1]], 1),
                                                      output_size=128, aligned=True))
                    scores = model(**{m: feats[m] for m in model.inputs})["logits"][0].numpy()  # attack scores: logits
                fooled = not labels[row, scores.argmax()]
                assert fooled == bool(run["success"][i]), (label, k, row, "re-fed top category disagrees")
                assert np.allclose(scores, run["scores_after"][i], atol=1e-3), (label, k, row)
                confirmed += int(fooled and not defended)
                refed += 1
    assert confirmed == successes, (confirmed, successes)
    assert refed >= 2 * len(doc["checkpoints"]), "nothing was re-fed: no person attacked?"
    return confirmed


_FLICKR_MODELS: dict = {}  # (profile, checkpoint) -> (data, models) of notebook 06


def refeed_flickr(out: Path, doc: dict, p: dict) -> int:
    """Re-feed every success (and one failure per run) of notebook 06's saved arrays; returns successes confirmed."""
    from utils import config, experiments, flickr8k, paths
    from utils.models import FlickrJoint

    cfg = config.load("flickr8k", doc["profile"])
    (label, ckpt), = doc["checkpoints"].items()
    key = (doc["profile"], str(out / "checkpoints" / ckpt))
    if key not in _FLICKR_MODELS:  # the data and the refitted baseline once per session (two tests re-feed 06)
        ds = flickr8k.data(cfg)
        joint = FlickrJoint(dims=ds.dims, space=cfg["joint_space"], hidden=cfg["joint_hidden"],
                            dropout=cfg["joint_dropout"], init_temperature=cfg["init_temperature"],
                            margin=cfg["margin"], towers=("image", "text"))
        joint.load_state_dict(torch.load(out / "checkpoints" / ckpt, weights_only=True))
        _FLICKR_MODELS[key] = ds, {label: joint.eval(), "both maps": flickr8k.baselines(ds, cfg)[0]["both maps"]}
    ds, models = _FLICKR_MODELS[key]
    images = np.load(paths.artefact_dir("flickr8k") / "test_images.npy", mmap_mode="r", allow_pickle=False)
    owner = ds.features["test"]["caption_image"]
    captions, encoder = ds.features["test"]["text"], ds.image_encoder.eval()
    slugs = {m: experiments.slug(m) for m in models}
    successes = _check_rates(doc, p, slugs)
    _check_adaptive(doc, p)
    confirmed = 0
    for (name, model), defended in [(item, on) for on in (False, True) for item in models.items()]:
        for k, run in _attack_runs(p, name, "adaptive " if defended else ""):
            for i in [*np.flatnonzero(run["success"]), *np.flatnonzero(run["attacked"] & ~run["success"])[:1]]:
                row = int(run["rows"][i])
                photo = _filtered(_with_pixels(np.array(images[row]), run["pixels"][i]), cfg["median_size"], defended)
                with torch.no_grad():
                    feats = encoder(_as_input(photo)).numpy()
                sim = np.asarray(model.similarity(feats, captions))[0]
                fooled = owner[sim.argmax()] != row
                assert fooled == bool(run["success"][i]), (name, k, row, "re-fed first caption disagrees")
                assert np.allclose(sim, run["scores_after"][i], atol=1e-3), (name, k, row)
                confirmed += int(fooled and not defended)
    assert confirmed == successes, (confirmed, successes)
    return confirmed


def test_05_every_success_refed_through_a_plain_pipeline(notebook_runner):
    out = notebook_runner.run("05_emotic_robustness")
    refeed_emotic(out, *_saved(out, "05_emotic_robustness"))


def test_06_every_success_refed_through_a_plain_pipeline(notebook_runner):
    out = notebook_runner.run("06_flickr8k_robustness")
    refeed_flickr(out, *_saved(out, "06_flickr8k_robustness"))


@pytest.mark.parametrize("name, refeed", [("05_emotic_robustness", refeed_emotic), ("06_flickr8k_robustness", refeed_flickr)])
def test_an_invented_success_fails_the_refeed(name, refeed, notebook_runner):
    """Turning one failed attack into a "success" in the saved arrays must make the re-feed fail."""
    out = notebook_runner.run(name)
    doc, p = _saved(out, name)
    for key in [k for k in p if k.endswith("_success") and "_k" in k]:
        failed = np.flatnonzero(p[key.replace("_success", "_attacked")] & ~p[key])
        if len(failed):
            p[key] = p[key].copy()
            p[key][failed[0]] = True
            with pytest.raises(AssertionError):
                refeed(out, doc, p)
            return
    pytest.skip("every attacked item was fooled: no failure to turn into an invented success")


def _checkerboard_stamped(images: np.ndarray, size: int) -> np.ndarray:
    """The trigger written by hand: a size x size checkerboard, white at its top-left, in the bottom-right corner."""
    cells = (np.add.outer(np.arange(size), np.arange(size)) % 2 == 0)[..., None] * np.full(3, 255)
    out = np.array(images)
    out[:, -size:, -size:] = cells.astype(np.uint8)
    return out


def test_05_poisoning_rates_refed_through_a_plain_mobilenet(notebook_runner):
    """Every poisoning row of 05 at the largest fraction, frozen and end to end: the model rebuilt from its
    checkpoint (``weights_only=True``) on a plain torchvision MobileNetV2 (for the end-to-end rows with the
    checkpoint's final blocks written into it), fed hand-stamped test photos; backdoor success, the clean-image
    control and their Wilson bounds recomputed (scipy)."""
    import torchvision

    from utils import config, data, emotic, encoders, experiments, paths

    out = notebook_runner.run("05_emotic_robustness")
    doc, p = _saved(out, "05_emotic_robustness")
    cfg = config.load("emotic", doc["profile"])
    assert cfg["image_encoder"] == "mobilenet_v2" and cfg["trigger_position"] == "bottom-right"
    rows = [r for r in doc["poisoning"] if r["fraction"] == max(cfg["poison_fractions"])]
    assert {r["encoder"] for r in rows} == {"frozen", emotic.FINETUNED}, "smoke runs both poisoning variants"
    test = data.load_emotic("test")
    art = paths.artefact_dir("emotic")
    photos = {kind: np.load(art / f"test_{kind}_arr.npy", allow_pickle=False) for kind in ("body", "context")}
    text = torch.from_numpy(encoders.text_features(encoders.load_text_encoder(cfg["text_encoder"]), test.descriptions,
                                                   cache=False))
    target = emotic.CATEGORIES.index(cfg["poison_target"])
    eligible = np.load(art / "test_cat_arr.npy")[:, target] < 0.5
    pretrained = torch.load(encoders.packaged_mobilenet_file(), map_location="cpu", weights_only=True)
    norm = torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    for row in rows:
        state = torch.load(out / "checkpoints" / row["checkpoint"], map_location="cpu", weights_only=True)
        net = torchvision.models.mobilenet_v2()
        net.load_state_dict(pretrained)
        if row["encoder"] != "frozen":  # the suffix is Sequential(Sequential(features.17, features.18), pool, flatten)
            tuned = {k.replace("encoders.body.0.0.", "features.17.").replace("encoders.body.0.1.", "features.18."): v
                     for k, v in state.items() if k.startswith("encoders.body.0.")}
            assert tuned and any(not torch.equal(v, pretrained[k]) for k, v in tuned.items()), "blocks never trained"
            net.load_state_dict({**pretrained, **tuned})
            state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        label = row["model"].removesuffix(f", {emotic.FINETUNED}")
        head = emotic.model(label, cfg, {"body": 1280, "context": 1280, "text": text.shape[1]})
        head.load_state_dict(state)
        net.eval(), head.eval()
        rates = {}
        for name, stamp in (("triggered", True), ("clean", False)):
            with torch.no_grad():
                feats = {"text": text}
                for kind, imgs in photos.items():
                    imgs = _checkerboard_stamped(imgs, cfg["trigger_size"]) if stamp else imgs
                    x = norm(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
                    feats[kind] = net.features(x).mean((2, 3))
                scores = head(**{m: feats[m] for m in head.inputs})["scores"].numpy()
            saved = p[f"poison_{experiments.slug(row['model'])}_f{100 * row['fraction']:g}_{name}"]
            np.testing.assert_allclose(scores, saved, atol=1e-3, err_msg=f"{row['model']}, {name} photos")
            rates[name] = int((scores[eligible].argmax(1) == target).sum())
        n = int(eligible.sum())
        for col, hits in (("backdoor success %", rates["triggered"]), ("target top-1 on clean images %", rates["clean"])):
            assert row[col] == pytest.approx(100 * hits / n), (row["model"], col)
            ci = binomtest(hits, n).proportion_ci(method="wilson")
            assert (row[f"{col} low"], row[f"{col} high"]) == (pytest.approx(100 * ci.low), pytest.approx(100 * ci.high))
