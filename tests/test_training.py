"""The training loop: seeded determinism, early stopping, checkpoints, prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils import store
from utils.metrics import emotic_metrics
from utils.models import EmoticBaseline, EmoticJoint, FlickrBaseline, FlickrJoint
from utils.training import (FeatureDataset, emotic_eval, evaluate_loss, fit, flickr_eval, flickr_pairs, predict,
                            seed_everything)

DIMS = {"body": 24, "context": 20, "image": 24, "text": 16}
SMALL = dict(dims=DIMS, hidden=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def emotic_data(n=240, seed=0):
    """Labels that the body features (and, more weakly, the text) really predict."""
    rng = np.random.default_rng(seed)
    cat = (rng.random((n, 26)) < 0.1).astype(np.float32)
    cat[np.arange(n), rng.integers(0, 26, n)] = 1
    body = 2 * cat @ rng.normal(size=(26, 24)) + 0.5 * rng.normal(size=(n, 24))
    text = cat @ rng.normal(size=(26, 16)) + 3 * rng.normal(size=(n, 16))
    cont = np.clip(5 + cat[:, :3] * 3 + rng.normal(size=(n, 3)), 1, 10)
    data = {"body": body, "context": rng.normal(size=(n, 20)), "text": text / np.linalg.norm(text, axis=1, keepdims=True),
            "cat": cat, "cont": cont}
    data = {k: v.astype(np.float32) for k, v in data.items()}
    return {k: v[:160] for k, v in data.items()}, {k: v[160:] for k, v in data.items()}


def run(seed, tmp_path=None, epochs=3, model_cls=EmoticJoint, lr=3e-3, batch_size=32):
    train, val = emotic_data()
    seed_everything(seed)
    model = model_cls(**SMALL)
    res = fit(model, train, val, metric_fn=emotic_eval, monitor="mAP", epochs=epochs, lr=lr, batch_size=batch_size,
              patience=None, seed=seed, progress=False)
    if tmp_path is not None:
        store.save_state(tmp_path / "best.pt", model)
    return model, res, val


def test_two_seeded_runs_are_identical():
    m1, r1, _ = run(0)
    m2, r2, _ = run(0)
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(v, m2.state_dict()[k], rtol=0, atol=0)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(r1.history) == strip(r2.history)
    _, r3, _ = run(1)
    assert strip(r3.history) != strip(r1.history)              # the seed matters


def test_training_learns_and_checkpoint_round_trips(tmp_path):
    model, res, val = run(0, tmp_path, epochs=10, model_cls=EmoticBaseline, lr=1e-2, batch_size=16)
    assert res.best_score > 100 * val["cat"].mean() + 15      # chance mAP = prevalence
    assert res.best_score == max(row["val_mAP"] for row in res.history)
    assert res.history[res.best_epoch - 1]["val_mAP"] == res.best_score
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = store.load_state(tmp_path / "best.pt", EmoticBaseline(**SMALL))
    a, b = predict(model, val), predict(fresh, val)
    np.testing.assert_array_equal(a["scores"], b["scores"])   # the model ends with the best (saved) weights
    assert emotic_metrics(b["scores"], val["cat"])["mAP"] == pytest.approx(res.best_score)
    assert {"train_loss", "train_cat_loss", "train_vad_loss", "val_mAP", "val_loss", "val_vad_mae_mean"} <= set().union(
        *res.history)


def test_early_stopping_triggers_and_restores_the_best_epoch():
    train, val = emotic_data()
    seed_everything(0)
    model = EmoticBaseline(**SMALL)
    fake = iter([0.5, 0.9, 0.7, 0.6, 0.8, 0.95, 0.99])         # best at epoch 2, then three worse epochs
    snapshots = []

    def metric(m, data):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"score": next(fake)}

    res = fit(model, train, val, metric_fn=metric, monitor="score", epochs=7, patience=3, progress=False)
    assert res.stopped_early and len(res.history) == 5
    assert (res.best_epoch, res.best_score) == (2, 0.9)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[1][k], rtol=0, atol=0)


def test_default_monitor_is_validation_loss_minimised():
    train, val = emotic_data()
    seed_everything(0)
    model = EmoticBaseline(("body",), **SMALL)
    res = fit(model, train, val, epochs=4, patience=None, progress=False)
    assert res.monitor == "loss" and res.mode == "min"
    assert res.best_score == min(row["val_loss"] for row in res.history)
    assert evaluate_loss(model, val)["loss"] == pytest.approx(res.best_score, rel=1e-5)


def test_fit_reports_bad_configuration():
    train, val = emotic_data()
    with pytest.raises(ValueError, match="monitor"):
        fit(EmoticBaseline(**SMALL), train, val, metric_fn=emotic_eval, epochs=1, progress=False)
    with pytest.raises(KeyError, match="R@1"):
        fit(EmoticBaseline(**SMALL), train, val, metric_fn=emotic_eval, monitor="R@1", epochs=1, progress=False)
    with pytest.raises(ValueError, match="differ in length"):
        FeatureDataset({"a": np.zeros(3), "b": np.zeros(4)})


def test_predict_is_batch_size_independent():
    model, _, val = run(0, epochs=1)
    a, b = predict(model, val, batch_size=7), predict(model, val, batch_size=1000, keys=("scores",))
    assert set(b) == {"scores"} and a["scores"].shape == (80, 26) and a["vad"].shape == (80, 3)
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-6, atol=1e-7)


def test_flickr_models_train_and_evaluate_through_the_same_loop():
    rng = np.random.default_rng(0)
    m = 60
    latent = rng.normal(size=(m, 8))
    img = (latent @ rng.normal(size=(8, 24)) + 0.1 * rng.normal(size=(m, 24))).astype(np.float32)
    cap = np.repeat(np.arange(m), 5)
    txt = (latent[cap] @ rng.normal(size=(8, 16)) + 0.3 * rng.normal(size=(5 * m, 16))).astype(np.float32)
    tr, va = slice(0, 40), slice(40, 60)
    train = flickr_pairs(img[tr], txt[:200], cap[:200])
    val = {"image": img[va], "text": txt[200:], "caption_image": cap[200:] - 40}
    seed_everything(0)
    model = FlickrJoint(dims={"image": 24, "text": 16}, shared_dim=8, hidden=32, hard_negative_weight=0.2)
    res = fit(model, train, val, metric_fn=flickr_eval, monitor="mean_R@1", epochs=15, lr=3e-3, batch_size=32,
              patience=None, progress=False)
    assert res.best_score > 25                               # chance R@1 is 5 % for 20 images
    base = FlickrBaseline("both", alpha=1.0).fit(img[tr], txt[:200], cap[:200])
    assert flickr_eval(base, val)["mean_R@1"] > 25


# ------------------------------------------------------------------------------- item datasets, fine-tuning
def tiny_emotic_split(n=36, size=64, seed=0):
    """An in-memory Emotic split of n 64 x 64 persons whose colour gives the category (0 reddish, 1 bluish)."""
    import pandas as pd

    from utils.data import EmoticSplit

    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    base = np.where(label[:, None] == 0, [200, 40, 40], [40, 40, 200])
    img = np.clip(base[:, None, None, :] + rng.normal(0, 30, (n, size, size, 3)), 0, 255).astype(np.uint8)
    cat = np.zeros((n, 26), np.float32)
    cat[np.arange(n), label] = 1
    cont = np.full((n, 3), 5.0, np.float32)
    table = pd.DataFrame({"description": [f"person {i}" for i in range(n)]})
    return EmoticSplit(img, img[:, 8:56, 8:56], cat, cont, table)


def image_arrays(split, text_features) -> dict[str, np.ndarray]:
    """What end-to-end fine-tuning reads: images float (N, 3, H, W) in [0, 1], labels and text features."""
    chw = {k: np.asarray(getattr(split, k), np.float32).transpose(0, 3, 1, 2) / 255.0 for k in ("context", "body")}
    return {**chw, "cat": np.asarray(split.cat), "cont": np.asarray(split.cont), "text": text_features}


def test_batches_slice_arrays_a_batch_at_a_time():
    from utils.training import batches
    order = [b["x"].long().tolist() for b in batches({"x": np.arange(10.0)}, 4, shuffle=True, seed=3)]
    assert [len(o) for o in order] == [4, 4, 2] and sorted(sum(order, [])) == list(range(10))
    assert order == [b["x"].long().tolist() for b in batches({"x": np.arange(10.0)}, 4, shuffle=True, seed=3)]
    assert order != [b["x"].long().tolist() for b in batches({"x": np.arange(10.0)}, 4, shuffle=True, seed=4)]
    feats = next(iter(batches({"a": np.arange(5.0)}, 2)))            # dict of arrays: sliced a batch at a time
    assert feats["a"].tolist() == [0.0, 1.0]


def test_finetuning_mobilenet_end_to_end_on_images(tmp_path):
    """Image arrays -> WithEncoders(MobileNetV2) -> fit / predict / checkpoint: the loss falls,
    the backbone's weights move, its BatchNorm running statistics do not."""
    from utils.encoders import load_image_encoder
    from utils.models import WithEncoders

    try:
        enc = load_image_encoder("mobilenet_v2", device="cpu")
    except Exception as e:  # the packaged weights are part of `make`
        pytest.skip(f"offline MobileNetV2 unavailable: {e}")
    split = tiny_emotic_split()
    text = np.random.default_rng(1).normal(size=(len(split), 16)).astype(np.float32)
    data = image_arrays(split, text)
    seed_everything(0)
    head = EmoticBaseline(("body", "context", "text"), dims={"body": enc.dim, "context": enc.dim, "text": 16},
                          hidden=32).init_prior(split.cat, split.cont)
    model = WithEncoders(head, {"body": enc, "context": enc})
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    res = fit(model, data, epochs=4, lr=1e-3, batch_size=12, patience=None, progress=False, device="cpu")
    store.save_state(tmp_path / "ft.pt", model)  # fit leaves the best epoch's weights in the model
    losses = [row["train_loss"] for row in res.history]
    assert losses[-1] < 0.8 * losses[0], losses
    after = enc.state_dict()
    assert not torch.equal(before["backbone.features.0.0.weight"], after["backbone.features.0.0.weight"])
    assert not torch.equal(before["backbone.features.18.0.weight"], after["backbone.features.18.0.weight"])
    stats = [k for k in before if "running_" in k or "num_batches_tracked" in k]
    assert len(stats) > 100 and all(torch.equal(before[k], after[k]) for k in stats)

    out = predict(model, data, batch_size=10, carry=("cat",))
    assert out["scores"].shape == (36, 26) and out["scores"].dtype == np.float32
    np.testing.assert_array_equal(out["cat"], split.cat)
    assert emotic_eval(model, data)["mAP"] > 0
    state = torch.load(tmp_path / "ft.pt", weights_only=True)
    assert any(k.startswith("encoders.body.backbone.") for k in state)
    fresh = WithEncoders(EmoticBaseline(("body", "context", "text"), dims=head.dims, hidden=32),
                         {"body": load_image_encoder("mobilenet_v2", device="cpu")})
    fresh.encoders["context"] = fresh.encoders["body"]
    store.load_state(tmp_path / "ft.pt", fresh)
    np.testing.assert_array_equal(predict(fresh, data, batch_size=10)["scores"], out["scores"])


def test_predict_moves_batches_to_the_model_and_copies_results_back(monkeypatch):
    """The model lives on the 'meta' device (standing in for a GPU): predict must move every input there and
    bring every output back through utils.device.to_numpy."""
    from utils import device as D

    class OnMeta(torch.nn.Module):
        inputs = ("body",)

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1, device="meta"))

        def forward(self, body):
            assert body.device.type == "meta", f"input left on {body.device}"
            return {"scores": torch.zeros(len(body), 26, device="meta")}

    copies = []
    monkeypatch.setattr(D, "to_numpy", lambda t: copies.append(t.device.type) or np.zeros(tuple(t.shape), np.float32))
    out = predict(OnMeta(), {"body": np.zeros((5, 4), np.float32)}, batch_size=2)
    assert out["scores"].shape == (5, 26) and copies == ["meta"] * 3


def test_fit_uses_the_configured_device(monkeypatch):
    train, _ = emotic_data()
    monkeypatch.setenv("MMER_DEVICE", "cpu")
    model = EmoticBaseline(("body",), **SMALL)
    fit(model, train, epochs=1, progress=False)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    monkeypatch.setenv("MMER_DEVICE", "tpu")
    with pytest.raises(ValueError, match="MMER_DEVICE"):
        fit(model, train, epochs=1, progress=False)


def test_eval_batch_is_the_probes_for_image_encoders_and_fixed_for_features(monkeypatch, tmp_path):
    """Eval passes of a model with image encoders in front run at the device's measured batch (here pinned to 7 by
    MMER_INFERENCE_BATCH, as a user would), not at a size assumed to fit; heads on features keep 512."""
    from torch import nn

    from utils import training
    from utils.models import WithEncoders

    monkeypatch.setenv("MMER_CACHE", str(tmp_path))
    monkeypatch.setenv("MMER_INFERENCE_BATCH", "7")
    split = tiny_emotic_split(n=20, size=16)
    data = image_arrays(split, np.zeros((20, 16), np.float32))
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    head = EmoticBaseline(("body", "context"), dims={"body": 8, "context": 8}, hidden=8)
    model = WithEncoders(head, {"body": encoder, "context": encoder})
    assert training.eval_batch(model, data) == 7
    assert training.eval_batch(head, {"body": np.zeros((20, 8), np.float32)}) == 512
    assert training.eval_batch(head, {"body": np.zeros((20, 8), np.float32)}, at_least=600) == 600
    seen = []
    real = training.batches
    monkeypatch.setattr(training, "batches", lambda d, b, **kw: (seen.append(b), real(d, b, **kw))[1])
    out = predict(model, data)
    assert seen == [7]
    np.testing.assert_allclose(out["scores"], predict(model, data, batch_size=20)["scores"], rtol=1e-5, atol=1e-6)
