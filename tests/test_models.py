"""Models: output shapes, gradient flow, learning on a fixed batch, and the losses against direct computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.metrics import retrieval_metrics
from utils.models import (CanonicalCorrelation, EmoticBaseline, EmoticJoint, EmoticLoss, FlickrBaseline, FlickrJoint,
                          LogitScale, WithEncoders, dynamic_weights, info_nce, max_violation)


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


DIMS = {"body": 24, "context": 20, "image": 24, "text": 16}   # small features keep the tests fast
SMALL = dict(dims=DIMS, hidden=32)


def assert_steps_lower_loss(model, batch, params, steps=15, factor=0.7):
    """A few Adam steps on one fixed batch must cut the model's loss by at least 30 %."""
    opt = torch.optim.Adam(params, lr=1e-2)
    with torch.no_grad():
        before = float(model.loss(batch)["loss"])
    for _ in range(steps):
        opt.zero_grad()
        model.loss(batch)["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = float(model.loss(batch)["loss"])
    assert after < factor * before, f"loss {before:.4f} -> {after:.4f} after {steps} steps"


def emotic_batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    cat = (torch.rand(n, 26, generator=g) < 0.2).float()
    cat[torch.arange(n), torch.randint(0, 26, (n,), generator=g)] = 1
    return {"body": torch.randn(n, 24, generator=g), "context": torch.randn(n, 20, generator=g),
            "text": F.normalize(torch.randn(n, 16, generator=g), dim=1), "cat": cat,
            "cont": 1 + 9 * torch.rand(n, 3, generator=g)}


EMOTIC_MODELS = {
    "baseline-all": lambda: EmoticBaseline(**SMALL),
    "baseline-learned": lambda: EmoticBaseline(fusion="learned", **SMALL),
    "baseline-body": lambda: EmoticBaseline(("body",), **SMALL),
    "baseline-image": lambda: EmoticBaseline(("body", "context"), **SMALL),
    "baseline-text": lambda: EmoticBaseline(("text",), **SMALL),
    "joint": lambda: EmoticJoint(shared_dim=8, **SMALL),
    "joint-mean": lambda: EmoticJoint(shared_dim=8, fusion="mean", **SMALL),
    "joint-image": lambda: EmoticJoint(("image",), shared_dim=8, **SMALL),
    "joint-text": lambda: EmoticJoint(("text",), shared_dim=8, **SMALL),
    "joint-dynamic": lambda: EmoticJoint(shared_dim=8, criterion=EmoticLoss("dynamic"), **SMALL),
}


# ------------------------------------------------------------------------------------------- Emotic models
@pytest.mark.parametrize("name", EMOTIC_MODELS)
def test_emotic_shapes_gradients_and_learning(name):
    torch.manual_seed(0)
    model = EMOTIC_MODELS[name]()
    batch = emotic_batch()
    out = model(**{k: batch[k] for k in model.inputs})
    assert out["logits"].shape == out["scores"].shape == (16, 26)
    assert out["vad"].shape == (16, 3)
    assert ((out["scores"] > 0) & (out["scores"] < 1)).all()
    assert out["embedding"].shape[0] == 16

    model.loss(batch)["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {n}"

    model.eval()  # dropout off: the loss on the fixed batch is then a deterministic function of the weights
    assert_steps_lower_loss(model, batch, [p for _, p in trainable])


def test_baseline_late_fusion_is_the_mean_of_branch_predictions():
    torch.manual_seed(0)
    model = EmoticBaseline(**SMALL).eval()
    out = model(**{k: v for k, v in emotic_batch().items() if k in model.inputs})
    mean_logits = torch.stack([out[f"logits/{m}"] for m in ("body", "context", "text")]).mean(0)
    mean_vad = torch.stack([out[f"vad/{m}"] for m in ("body", "context", "text")]).mean(0)
    torch.testing.assert_close(out["logits"], mean_logits)
    torch.testing.assert_close(out["vad"], mean_vad)
    assert not model.fusion_logits.requires_grad


@pytest.mark.parametrize("name", ["baseline-all", "joint"])
def test_init_prior_starts_the_heads_at_the_training_base_rates(name):
    model = EMOTIC_MODELS[name]()
    b = emotic_batch(n=64)
    b["cat"][:, 4] = 0                                           # a category never seen: clamped, not -inf
    model.init_prior(b["cat"].numpy(), b["cont"].numpy())
    heads = list(model.heads.values()) if hasattr(model, "heads") else [model.head[-1]]
    prevalence = b["cat"].mean(0).clamp(1e-3, 1 - 1e-3)
    for head in heads:
        torch.testing.assert_close(torch.sigmoid(head.bias[:26]), prevalence)
        torch.testing.assert_close(5.5 + 4.5 * head.bias[26:], b["cont"].mean(0))


def test_missing_modality_is_a_clear_error():
    batch = emotic_batch()
    with pytest.raises(ValueError, match=r"missing input feature\(s\) \['text'\]"):
        EmoticBaseline(**SMALL)(body=batch["body"], context=batch["context"])
    # A text-only model needs no image at all.
    assert EmoticJoint(("text",), shared_dim=8, **SMALL)(text=batch["text"])["logits"].shape == (16, 26)


def test_batch_inference_is_independent_of_batch_size():
    torch.manual_seed(0)
    model = EmoticJoint(shared_dim=8, **SMALL).eval()
    b = emotic_batch(n=32)
    with torch.no_grad():
        whole = model(body=b["body"], context=b["context"], text=b["text"])["scores"]
        parts = torch.cat([model(body=b["body"][i:i + 5], context=b["context"][i:i + 5],
                                 text=b["text"][i:i + 5])["scores"] for i in range(0, 32, 5)])
    torch.testing.assert_close(whole, parts)


# ----------------------------------------------------------------------------------------------- losses
def test_info_nce_matches_direct_computation():
    g = torch.Generator().manual_seed(1)
    a, b = F.normalize(torch.randn(6, 5, generator=g), dim=1), F.normalize(torch.randn(6, 5, generator=g), dim=1)
    ids = torch.tensor([0, 1, 1, 2, 3, 3])
    for use_ids in (False, True):
        scale = 7.0
        total = 0.0
        for i in range(6):
            negs = [j for j in range(6) if not (use_ids and j != i and ids[j] == ids[i])]
            row = [scale * float(a[i] @ b[j]) for j in negs]           # a_i against the candidate b's
            col = [scale * float(a[j] @ b[i]) for j in negs]           # b_i against the candidate a's
            total += -(scale * float(a[i] @ b[i]) - math.log(sum(math.exp(v) for v in row)))
            total += -(scale * float(a[i] @ b[i]) - math.log(sum(math.exp(v) for v in col)))
        got = info_nce(a, b, torch.tensor(scale), ids if use_ids else None)
        assert float(got) == pytest.approx(total / 12, rel=1e-5)


def test_max_violation_matches_direct_computation():
    g = torch.Generator().manual_seed(2)
    a, b = F.normalize(torch.randn(5, 4, generator=g), dim=1), F.normalize(torch.randn(5, 4, generator=g), dim=1)
    ids = torch.tensor([0, 0, 1, 2, 3])
    s = (a @ b.T).tolist()
    total = 0.0
    for i in range(5):
        negs = [j for j in range(5) if ids[j] != ids[i]]
        total += max([0.0] + [max(0.0, 0.2 + s[i][j] - s[i][i]) for j in negs])
        total += max([0.0] + [max(0.0, 0.2 + s[j][i] - s[i][i]) for j in negs])
    assert float(max_violation(a, b, 0.2, ids)) == pytest.approx(total / 5, rel=1e-5)


def test_logit_scale_is_learnable_and_clamped():
    scale = LogitScale(init_temperature=0.07, max_scale=100.0)
    assert float(scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    assert scale.temperature == pytest.approx(0.07, rel=1e-5)
    a = F.normalize(torch.randn(8, 4), dim=1)
    info_nce(a, a, scale()).backward()
    assert scale.log_scale.grad is not None and scale.log_scale.grad != 0
    opt = torch.optim.SGD(scale.parameters(), lr=0.5)
    before = scale.log_scale.item()
    opt.step()
    assert scale.log_scale.item() != before
    with torch.no_grad():
        scale.log_scale.fill_(10.0)        # e^10 >> 100
    assert float(scale().detach()) == pytest.approx(100.0)
    with torch.no_grad():
        scale.log_scale.fill_(-3.0)        # below 1: clamped to scale 1 (temperature 1)
    assert float(scale().detach()) == pytest.approx(1.0)


def test_dynamic_weights_follow_the_published_formula():
    target = torch.zeros(10, 26)
    target[:3, 0] = 1      # 3 positives in the batch
    target[:1, 1] = 1      # 1 positive
    w = dynamic_weights(target)
    assert float(w[0]) == pytest.approx(1 / math.log(1.2 + 3))
    assert float(w[1]) == pytest.approx(1 / math.log(1.2 + 1))
    assert float(w[2]) == pytest.approx(1e-4)          # absent from the batch
    assert w[1] > w[0]                                  # rarer weighs more


def test_emotic_loss_options_match_direct_computation():
    b = emotic_batch(n=8)
    logits, vad = torch.randn(8, 26), 1 + 9 * torch.rand(8, 3)
    bce = EmoticLoss("bce", vad_weight=0.5)(logits, vad, b["cat"], b["cont"])
    p = torch.sigmoid(logits)
    manual = -(b["cat"] * torch.log(p) + (1 - b["cat"]) * torch.log(1 - p)).mean()
    assert float(bce["cat_loss"]) == pytest.approx(float(manual), rel=1e-5)
    err = ((vad - b["cont"]) / 4.5).abs()
    manual_vad = torch.where(err < 0.1, 0.5 * err ** 2 / 0.1, err - 0.05).mean()
    assert float(bce["vad_loss"]) == pytest.approx(float(manual_vad), rel=1e-5)
    assert float(bce["loss"]) == pytest.approx(float(manual + 0.5 * manual_vad), rel=1e-5)

    dyn = EmoticLoss("dynamic")(logits, vad, b["cat"], b["cont"])
    counts = b["cat"].sum(0)
    w = torch.tensor([1 / math.log(1.2 + c) if c > 0 else 1e-4 for c in counts.tolist()])
    assert float(dyn["cat_loss"]) == pytest.approx(float((((p - b["cat"]) ** 2) * w).sum(1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="discrete"):
        EmoticLoss("focal")


# ---------------------------------------------------------------------------------------------- Flickr8k
def linked_flickr(m=60, seed=0):
    """Images and 5 captions each, linked by a hidden linear map plus noise."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(m, 8))
    img = latent @ rng.normal(size=(8, 24)) + 0.1 * rng.normal(size=(m, 24))
    cap = np.repeat(np.arange(m), 5)
    txt = latent[cap] @ rng.normal(size=(8, 16)) + 0.3 * rng.normal(size=(5 * m, 16))
    return img.astype(np.float32), txt.astype(np.float32), cap


@pytest.mark.parametrize("method", FlickrBaseline.METHODS)
def test_flickr_baseline_retrieves_linked_pairs(method):
    img, txt, cap = linked_flickr()
    model = FlickrBaseline(method, alpha=1.0, n_components=8, reg=1e-3).fit(img, txt, cap)
    sim = model.similarity(img, txt)
    assert sim.shape == (60, 300) and sim.dtype == np.float32
    m = retrieval_metrics(sim, cap)
    assert m["i2t_R@5"] > 60 and m["t2i_R@5"] > 50      # chance: about 8 % (R@5 of 60 images)


def test_closed_form_cca_matches_sklearn_and_its_definition():
    from sklearn.cross_decomposition import CCA
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2))
    x = z @ rng.normal(size=(2, 6)) + 0.5 * rng.normal(size=(300, 6))
    y = z @ rng.normal(size=(2, 5)) + 0.8 * rng.normal(size=(300, 5))
    cca = CanonicalCorrelation(n_components=3, reg=1e-9).fit(x, y)
    u, v = cca.transform(x, y)
    corr = np.corrcoef(u.T, v.T)
    np.testing.assert_allclose(np.diag(corr[:3, 3:]), cca.correlations, rtol=1e-6)   # pairs correlate as claimed
    np.testing.assert_allclose(corr[:3, :3], np.eye(3), atol=1e-6)                  # components uncorrelated
    assert (np.diff(cca.correlations) <= 0).all()
    su, sv = CCA(n_components=2, max_iter=2000, tol=1e-10).fit(x, y).transform(x, y)
    sk = [abs(np.corrcoef(su[:, j], sv[:, j])[0, 1]) for j in range(2)]
    np.testing.assert_allclose(cca.correlations[:2], sk, rtol=1e-4)


def test_flickr_baseline_select_picks_the_best_validation_value():
    img, txt, cap = linked_flickr(m=60)
    train = {"image": img[:40], "text": txt[:200], "caption_image": cap[:200]}
    val = {"image": img[40:], "text": txt[200:], "caption_image": cap[200:] - 40}
    model, scores = FlickrBaseline.select(train, val, "image_to_text", grid=(0.1, 1e5))
    assert set(scores) == {0.1, 1e5} and model.alpha == max(scores, key=scores.get)
    assert scores[model.alpha] == retrieval_metrics(model.similarity(val["image"], val["text"]),
                                                    val["caption_image"])["mean_R@1"]


def test_flickr_baseline_both_is_the_mean_of_the_two_maps():
    img, txt, cap = linked_flickr()
    both = FlickrBaseline("both", alpha=1.0).fit(img, txt, cap).similarity(img, txt)
    i2t = FlickrBaseline("image_to_text", alpha=1.0).fit(img, txt, cap).similarity(img, txt)
    t2i = FlickrBaseline("text_to_image", alpha=1.0).fit(img, txt, cap).similarity(img, txt)
    np.testing.assert_allclose(both, (i2t + t2i) / 2, atol=1e-6)
    # each map can keep its own penalty: alpha for image->text, alpha_t2i for text->image
    mixed = FlickrBaseline("both", alpha=1.0, alpha_t2i=1e4).fit(img, txt, cap).similarity(img, txt)
    t2i_strong = FlickrBaseline("text_to_image", alpha=1e4).fit(img, txt, cap).similarity(img, txt)
    np.testing.assert_allclose(mixed, (i2t + t2i_strong) / 2, atol=1e-6)
    assert not np.allclose(t2i_strong, t2i, atol=1e-3)


FLICKR_MODELS = {  # name: (kwargs, embedding size)
    "cross": (dict(), 16 + 24),
    "shared": (dict(space="shared", shared_dim=8, hidden=32), 8),
    "image-tower": (dict(towers=("image",)), 16),
    "text-tower": (dict(towers=("text",), hidden=32), 24),
}


@pytest.mark.parametrize("name", FLICKR_MODELS)
def test_flickr_joint_shapes_gradients_and_learning(name):
    kwargs, dim = FLICKR_MODELS[name]
    torch.manual_seed(0)
    img, txt, cap = linked_flickr(m=16)
    model = FlickrJoint(dims={"image": 24, "text": 16}, hard_negative_weight=0.5, **kwargs).eval()
    batch = {"image": torch.from_numpy(img[cap[:32]]), "text": torch.from_numpy(txt[:32]),
             "image_id": torch.from_numpy(cap[:32])}
    out = {"z_image": model.encode_image(batch["image"]), "z_text": model.encode_text(batch["text"])}
    assert out["z_image"].shape == (32, dim) and out["z_text"].shape == (32, dim)
    torch.testing.assert_close(out["z_image"].norm(dim=1), torch.ones(32))
    torch.testing.assert_close(out["z_text"].norm(dim=1), torch.ones(32))
    parts = model.loss(batch)
    assert set(parts) == {"loss", "contrastive_loss", "hard_negative_loss"}
    parts["loss"].backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {n}"
    assert_steps_lower_loss(model, batch, list(model.parameters()))
    with torch.no_grad():
        sim = model.similarity(img, txt)
        direct = float(model.encode_image(torch.from_numpy(img[3:4])) @ model.encode_text(torch.from_numpy(txt[7:8])).T)
    assert sim.shape == (16, 80)
    np.testing.assert_allclose(sim[3, 7], direct, rtol=1e-5)


def test_flickr_joint_cross_space_averages_the_two_single_tower_similarities():
    torch.manual_seed(0)
    img, txt, _ = linked_flickr(m=4)
    model = FlickrJoint(dims={"image": 24, "text": 16}).eval()
    x, t = torch.from_numpy(img), torch.from_numpy(txt[:6])
    with torch.no_grad():
        fi, ft = model.towers["image"](x), model.towers["text"](t)        # image -> text space, text -> image space
        cos = lambda a, b: F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # noqa: E731
        expected = (cos(fi, t) + cos(x, ft)) / 2
    np.testing.assert_allclose(model.similarity(img, txt[:6]), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_flickr_joint_shared_residual_adapter_starts_at_identity():
    img, txt, _ = linked_flickr(m=4)
    model = FlickrJoint(dims={"image": 24, "text": 16}, space="shared").eval()   # shared_dim = text dim
    assert model.residual == {"image": False, "text": True}
    with torch.no_grad():
        z = model.encode_text(torch.from_numpy(txt))
    torch.testing.assert_close(z, F.normalize(torch.from_numpy(txt), dim=1))
    with pytest.raises(ValueError, match="space"):
        FlickrJoint(space="joint")


# ----------------------------------------------------------------------------------------- end to end
class TinyEncoder(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, out, 3)
        self.bn = torch.nn.BatchNorm2d(out)

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_with_encoders_trains_the_backbone():
    torch.manual_seed(0)
    enc = TinyEncoder(24)
    model = WithEncoders(EmoticBaseline(("body", "text"), **SMALL), {"body": enc})
    model.train()
    assert enc.training and not enc.bn.training         # BatchNorm keeps its statistics
    b = emotic_batch(n=4)
    b["body"] = torch.rand(4, 3, 16, 16)
    model.loss(b)["loss"].backward()
    assert enc.conv.weight.grad is not None
    assert model.model.embed["body"][0][1].weight.grad is not None
    assert model(body=b["body"], text=b["text"])["logits"].shape == (4, 26)


# ------------------------------------------------------------------------------ feature sizes from the features
def odd_features(n=32, image=512, text=256, seed=0):
    """Features of another encoder than the defaults (e.g. ResNet-18's 512-d image features, a 256-d text model)."""
    g = np.random.default_rng(seed)
    cat = (g.random((n, 26)) < 0.2).astype(np.float32)
    cat[np.arange(n), g.integers(0, 26, n)] = 1
    return {"body": g.normal(size=(n, image)).astype(np.float32), "context": g.normal(size=(n, image)).astype(np.float32),
            "image": g.normal(size=(n, image)).astype(np.float32), "text": g.normal(size=(n, text)).astype(np.float32),
            "cat": cat, "cont": (1 + 9 * g.random((n, 3))).astype(np.float32), "image_id": np.arange(n)}


def feature_dims(f):
    return {k: v.shape[1] for k, v in f.items() if k in ("body", "context", "image", "text")}


ALL_MODELS = {  # dims read from the features: any encoder's sizes
    "EmoticBaseline": lambda f: EmoticBaseline(dims=feature_dims(f), hidden=32),
    "EmoticBaseline-learned": lambda f: EmoticBaseline(("body", "text"), dims=feature_dims(f), hidden=32,
                                                       fusion="learned"),
    "EmoticJoint": lambda f: EmoticJoint(dims=feature_dims(f), hidden=32, shared_dim=8),
    "EmoticJoint-image": lambda f: EmoticJoint(("image",), dims=feature_dims(f), hidden=32, shared_dim=8),
    "FlickrJoint-cross": lambda f: FlickrJoint(dims=feature_dims(f)),
    "FlickrJoint-shared": lambda f: FlickrJoint(dims=feature_dims(f), space="shared", shared_dim=8),
    "FlickrJoint-text": lambda f: FlickrJoint(dims=feature_dims(f), towers=("text",)),
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_builds_for_any_feature_size_and_trains(name):
    from utils.training import fit, seed_everything

    f = odd_features()
    seed_everything(0)
    model = ALL_MODELS[name](f)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, f, epochs=1, batch_size=16, patience=None, progress=False, device="cpu")
    assert np.isfinite(res.history[0]["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    if name.startswith("Flickr"):
        assert model.similarity(f["image"][:3], f["text"][:5]).shape == (3, 5)
    else:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(f[k][:3]) for k in model.inputs})
        assert out["logits"].shape == (3, 26)


def test_features_of_another_size_are_named_not_a_matmul_error():
    f = odd_features()
    with pytest.raises(ValueError, match=r"EmoticBaseline: 'body' features are 512-d but the model was built for "
                                         r"1280-d.*dims=Data.dims"):
        EmoticBaseline().loss({k: torch.from_numpy(v) for k, v in f.items()})
    with pytest.raises(ValueError, match=r"FlickrJoint: 'text' features are 256-d .* 384-d"):
        FlickrJoint(dims={"image": 512}).similarity(f["image"], f["text"])


# ------------------------------------------------------------------------------------ fine-tuning end to end
def test_finetuning_keeps_batchnorm_statistics_and_freezes_the_classifier():
    from utils.encoders import ImageEncoder

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 24, 3), torch.nn.BatchNorm2d(24),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    enc = ImageEncoder(backbone, name="tiny", dim=24, fingerprint="t", mean=[0.5] * 3, std=[0.25] * 3,
                       head=torch.nn.Linear(24, 10))
    model = WithEncoders(EmoticBaseline(("body", "context"), dims={"body": enc.dim, "context": enc.dim}, hidden=32),
                         {"body": enc, "context": enc})
    assert not any(p.requires_grad for p in enc.head.parameters())
    model.train()
    assert enc.training and not backbone[1].training and not backbone[4].training   # BN in eval mode
    stats = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    b = emotic_batch(n=6)
    b["body"], b["context"] = torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16)
    model.loss(b)["loss"].backward()
    assert backbone[0].weight.grad is not None and backbone[3].weight.grad is not None
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in stats.items())


def test_encoder_weights_train_at_their_own_learning_rate_in_fit():
    """``encoder_lr`` reaches the optimiser: at 0 the encoder stays as loaded while the heads move."""
    from utils.training import fit

    torch.manual_seed(0)
    enc = torch.nn.Linear(24, 24)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    model = WithEncoders(EmoticBaseline(("body",), **SMALL), {"body": enc}, encoder_lr=0.0)
    groups = model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in enc.parameters()}
    head = {k: v.clone() for k, v in model.model.state_dict().items()}
    data = {k: v.numpy() for k, v in emotic_batch(n=32).items() if k in ("body", "cat", "cont")}
    fit(model, data, epochs=2, batch_size=8, patience=None, progress=False, device="cpu")
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, model.model.state_dict()[k]) for k, v in head.items())
    model.encoder_lr = None                               # default: one learning rate for everything
    assert [g["lr"] for g in model.param_groups(1e-3)] == [1e-3, 1e-3]


@pytest.mark.parametrize("temperature", [0.0, -0.1, 1.5])
def test_logit_scale_rejects_a_temperature_outside_0_1(temperature):
    with pytest.raises(ValueError, match="init_temperature"):
        LogitScale(init_temperature=temperature)
