"""utils/experiments.py and utils/emotic.py: the train-or-load recipe on small random features (no notebook needed)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from utils import config, emotic, experiments as X

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def emotic_features(rng, n):
    cat = (rng.random((n, 26)) < 0.2).astype(np.float32)
    cat[:, 0] = 1
    return {"body": rng.normal(size=(n, 12)).astype(np.float32), "context": rng.normal(size=(n, 10)).astype(np.float32),
            "text": rng.normal(size=(n, 8)).astype(np.float32), "cat": cat,
            "cont": rng.uniform(1, 10, (n, 3)).astype(np.float32)}


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("MMER_OUTPUT", str(tmp_path / "out"))
    rng = np.random.default_rng(0)
    features = {s: emotic_features(rng, n) for s, n in (("train", 40), ("val", 12), ("test", 12))}
    return X.Data("emotic", {}, features, SimpleNamespace(fingerprint="img"), SimpleNamespace(fingerprint="txt"),
                  tmp_path, {s: X.features_digest(f) for s, f in features.items()})


def weights(trained):
    return {k: v.detach().clone() for k, v in trained.model.state_dict().items()}


@pytest.mark.parametrize("label", ["fusion (all)", "joint (image+text)"])
def test_a_model_depends_on_its_seed_not_on_what_ran_before(data, tmp_path, monkeypatch, label):
    cfg = config.load("emotic", "smoke", environ={}, epochs=2)
    torch.manual_seed(123)
    first = emotic.train(data, cfg, label, progress=False)
    monkeypatch.setenv("MMER_OUTPUT", str(tmp_path / "elsewhere"))  # no checkpoint to reuse: trained again
    torch.manual_seed(456)
    torch.rand(1000)
    second = emotic.train(data, cfg, label, progress=False)
    assert not second.reused and first.checkpoint != second.checkpoint
    assert all(torch.equal(a, b) for a, b in zip(weights(first).values(), weights(second).values()))
    other = emotic.train(data, cfg, label, seed=1, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(weights(first).values(), weights(other).values()))


def test_identical_settings_reuse_the_checkpoint_and_others_do_not(data):
    cfg = config.load("emotic", "smoke", environ={}, epochs=2)
    first = emotic.train(data, cfg, "text only", progress=False)
    again = emotic.train(data, cfg, "text only", progress=False)
    assert again.reused and again.checkpoint == first.checkpoint and again.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(weights(first).values(), weights(again).values()))
    changed = emotic.train(data, config.load("emotic", "smoke", environ={}, epochs=2, baseline_lr=1e-2), "text only",
                             progress=False)
    assert not changed.reused and changed.checkpoint != first.checkpoint
    poisoned = dict(data.features["train"], cat=np.roll(data.features["train"]["cat"], 1, axis=0))
    retrained = emotic.train(data, cfg, "text only", train=poisoned, tag="poison", progress=False)
    assert not retrained.reused and retrained.checkpoint != first.checkpoint


def test_a_killed_training_is_not_reused(data):
    """The record is written after training: a checkpoint without its record is trained again."""
    cfg = config.load("emotic", "smoke", environ={}, epochs=2)
    first = emotic.train(data, cfg, "body only", progress=False)
    first.checkpoint.with_suffix(".json").unlink()
    assert not emotic.train(data, cfg, "body only", progress=False).reused
