"""Single-photo prediction: ``top_emotions`` computes features exactly as the training pipeline does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.emotic import top_emotions
from utils.images import resize_rgb
from utils.labels import CATEGORIES
from utils.models import EmoticBaseline, EmoticJoint
from utils.training import predict

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


class FakeImageEncoder(torch.nn.Module):
    """Stands in for utils.encoders.ImageEncoder: colour statistics of an (N, 3, H, W) batch, 24-d."""
    name, dim, fingerprint = "fake", 24, "fake"

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 24)

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, x):
        return self.proj(torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1))


class FakeTextEncoder:
    name, dim, fingerprint = "fake-text", 16, "fake-text"

    def encode(self, texts, batch_size=64, desc=None):
        out = np.stack([np.random.default_rng(len(t)).normal(size=16) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_top_emotions_matches_the_feature_pipeline():
    from utils import encoders
    torch.manual_seed(0)
    model = EmoticJoint(dims={"body": 24, "context": 24, "text": 16}, hidden=32, shared_dim=8).eval()
    img_enc, txt_enc = FakeImageEncoder().eval(), FakeTextEncoder()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    box = (-10.4, 20.2, 60.5, 200)                         # reaches outside the image: clipped like mat2py
    top = top_emotions(image, "a person smiling", model=model, image_encoder=img_enc, text_encoder=txt_enc,
                       box=box, k=4)
    body = resize_rgb(image[20:90, 0:61], 128)[None]
    ctx = resize_rgb(image, 224)[None]
    feats = {"body": encoders.image_features(img_enc, body, cache=False),
             "context": encoders.image_features(img_enc, ctx, cache=False),
             "text": txt_enc.encode(["a person smiling"])}
    scores = predict(model, feats)["scores"][0]
    assert [c for c, _ in top] == [CATEGORIES[i] for i in np.argsort(-scores)[:4]]
    np.testing.assert_allclose([s for _, s in top], np.sort(scores)[::-1][:4], rtol=1e-6)
    with pytest.raises(ValueError, match="description"):
        top_emotions(image, None, model=model, image_encoder=img_enc, text_encoder=txt_enc)
    with pytest.raises(ValueError, match="no area"):
        top_emotions(image, "x", model=model, image_encoder=img_enc, text_encoder=txt_enc, box=(200, 0, 300, 10))
    # An image-only model needs no description and no text encoder.
    image_only = EmoticBaseline(("body", "context"), dims={"body": 24, "context": 24}, hidden=32).eval()
    top, vad = top_emotions(image, model=image_only, image_encoder=img_enc, k=3, with_vad=True)
    assert len(top) == 3 and set(vad) == {"Valence", "Arousal", "Dominance"}


def test_top_emotions_with_the_offline_encoders(tmp_path):
    from utils import encoders
    try:
        img_enc, txt_enc = encoders.load_image_encoder(), encoders.load_text_encoder()
    except Exception as e:  # the packaged weights are part of `make`; without them there is nothing to test
        pytest.skip(f"offline encoders unavailable: {e}")
    torch.manual_seed(0)
    model = EmoticJoint(dims={"body": img_enc.dim, "context": img_enc.dim, "text": txt_enc.dim}).eval()
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = tmp_path / "person.png"
    from PIL import Image
    Image.fromarray(image).save(path)
    top = top_emotions(path, "a child running on a beach", model=model, image_encoder=img_enc,
                       text_encoder=txt_enc, box=(10, 5, 50, 60), k=26)
    assert sorted(c for c, _ in top) == sorted(CATEGORIES)
    assert all(0 < s < 1 for _, s in top) and [s for _, s in top] == sorted((s for _, s in top), reverse=True)
