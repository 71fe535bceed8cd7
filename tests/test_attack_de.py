"""Few-pixel attack: budgets respected, successes real (re-checked with independent code), early stop, batching
invariance, the Emotic body crop derived from the scene, and a reference check against scipy's own DE."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from scipy.optimize import differential_evolution
from torchvision.ops import roi_align

from utils.attack import (ClassifierPixelPipeline, EmoticPixelPipeline, FlickrPixelPipeline, apply_pixels, attack,
                           margin_and_success, score_images)
from utils.attack import differential_evolution as de_attack  # scipy's differential_evolution is imported too

BUDGET = dict(popsize=40, generations=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def tiny_net(seed=0, out=3):
    """Conv -> ReLU -> global max pool: single extreme pixels matter, so few-pixel attacks can succeed."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(8, out)).eval()


def logits_of(net, images):
    """Independent forward pass: plain NCHW float, no pipeline code."""
    with torch.no_grad():
        return net(torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0).numpy()


@pytest.fixture(scope="module")
def near_boundary():
    """12x12 images closest to the decision boundary of a tiny classifier, labelled with its clean prediction
    (two labels flipped so that the 'not attacked' path runs too)."""
    net = tiny_net()
    rng = np.random.default_rng(0)
    imgs = rng.integers(80, 176, (400, 12, 12, 3)).astype(np.uint8)
    lo = logits_of(net, imgs)
    top2 = np.sort(lo, 1)[:, -2:]
    order = np.argsort(top2[:, 1] - top2[:, 0])[:10]
    labels = lo.argmax(1)[order]
    labels[[0, 5]] = (labels[[0, 5]] + 1) % 3
    return net, imgs[order], labels


def test_at_most_k_pixels_changed_within_range(near_boundary):
    net, imgs, labels = near_boundary
    k = 3
    rep = de_attack(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=k, **BUDGET)
    assert len(rep.results) == len(imgs)
    for img, r in zip(imgs, rep.results):
        changed = np.argwhere((r.adversarial != img).any(-1))
        assert len(changed) <= k
        assert r.adversarial.dtype == np.uint8 and r.adversarial.shape == img.shape
        assert len(r.pixels) == len(changed)
        if len(r.pixels):
            assert r.pixels[:, :2].min() >= 0 and r.pixels[:, 0].max() < 12 and r.pixels[:, 1].max() < 12
            assert r.pixels[:, 2:].min() >= 0 and r.pixels[:, 2:].max() <= 255
            assert np.array_equal(apply_pixels(img[None], r.pixels[None])[0], r.adversarial)
        if not r.attacked:
            assert np.array_equal(r.adversarial, img) and r.queries == 0


@pytest.mark.parametrize("search", [dict(), dict(precision="bfloat16")], ids=["fp32", "bf16-search"])
def test_success_reported_only_when_prediction_really_changed(near_boundary, search):
    net, imgs, labels = near_boundary
    rep = de_attack(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=1, batch_size=64, **search, **BUDGET)
    clean = logits_of(net, imgs).argmax(1)
    adv = logits_of(net, rep.adversarial).argmax(1)
    t = rep.table()
    np.testing.assert_array_equal(t.attacked.to_numpy(), clean == labels)  # only correct images are attacked
    np.testing.assert_array_equal(t.success.to_numpy(), (clean == labels) & (adv != labels))
    assert 0 < t.success.sum() < t.attacked.sum()  # the fixture is neither trivial nor hopeless
    summary = rep.summary()
    assert summary["attacked"] == 8 and summary["successes"] == t.success.sum()


def test_early_stop_freezes_solved_images(near_boundary):
    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    short = de_attack(pipe, imgs, pixels=1, popsize=40, generations=5).table()
    long = de_attack(pipe, imgs, pixels=1, popsize=40, generations=15).table()
    solved = short.success.to_numpy()
    assert solved.any()
    # a solved image used no query after its success: the longer budget changes nothing for it
    np.testing.assert_array_equal(short.queries[solved], long.queries[solved])
    np.testing.assert_array_equal(short.generations[solved], long.generations[solved])
    assert (short.queries <= 40 * (short.generations + 1) + short.generations + 1).all()
    grew = long.attacked & ~long.success
    assert (long.queries[grew] > short.queries[grew]).all()  # unsolved images kept searching


def test_batched_and_per_image_runs_agree(near_boundary):
    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    together = de_attack(pipe, imgs, pixels=2, seed=3, batch_size=64, **BUDGET)
    for i in (1, 3, 4, 8):
        alone = de_attack(pipe, imgs[i:i + 1], rows=[i], seed=3, pixels=2, batch_size=7, **BUDGET).results[0]
        r = together.results[i]
        assert (alone.success, alone.queries, alone.generations) == (r.success, r.queries, r.generations)
        np.testing.assert_array_equal(alone.adversarial, r.adversarial)


def test_finds_an_attack_where_scipy_does(near_boundary):
    """Reference: scipy's DE with the same budget (population 40 = popsize 8 x 5 parameters, 10 generations, F=0.5,
    no crossover) on the same objective; wherever scipy succeeds, ours must succeed too."""
    net, imgs, labels = near_boundary
    ok = labels == logits_of(net, imgs).argmax(1)
    imgs, labels = imgs[ok], labels[ok]

    def scipy_attack(img, label):
        def fitness(v):  # vectorized: v is (5, S), one column per candidate
            v = np.asarray(v).reshape(5, -1)
            adv = apply_pixels(np.repeat(img[None], v.shape[1], 0), np.rint(v.T).astype(np.int64)[:, None, :])
            lo = logits_of(net, adv)
            return lo[:, label] - np.delete(lo, label, axis=1).max(1)  # the pipeline's margin, on the logits

        found = []

        def stop(intermediate_result):
            if fitness(intermediate_result.x)[0] < 0:
                found.append(intermediate_result.x)
                return True
            return False

        res = differential_evolution(fitness, [(0, 11), (0, 11), (0, 255), (0, 255), (0, 255)], popsize=8,
                                     maxiter=10, mutation=0.5, recombination=1.0, strategy="rand1bin",
                                     init="random", polish=False, tol=0, rng=0, callback=stop,
                                     vectorized=True, updating="deferred")
        return bool(found) or res.fun < 0

    scipy_ok = np.array([scipy_attack(im, lb) for im, lb in zip(imgs, labels)])
    ours = de_attack(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=1, **BUDGET).table()
    assert scipy_ok.any() and ours.success.sum() >= scipy_ok.sum()
    assert ours.success.to_numpy()[scipy_ok].all()


# ---------------------------------------------------------------------------------------------------- Emotic
class TinyEncoder(nn.Module):
    """Stand-in for the image encoder: float (N,3,H,W) in [0,1] -> (N,16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).amax((2, 3))


class TinyHead(nn.Module):
    """Stand-in Emotic head: (body, context, text or None) -> (26 logits, 3 VAD)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.body, self.ctx, self.text = nn.Linear(16, 26), nn.Linear(16, 26), nn.Linear(8, 26)

    def forward(self, body, context, text=None):
        logits = self.body(body) + self.ctx(context) + (0 if text is None else self.text(text))
        return logits, torch.zeros(len(body), 3)


@pytest.fixture(scope="module")
def emotic_setup():
    rng = np.random.default_rng(1)
    scenes = rng.integers(60, 200, (6, 32, 32, 3)).astype(np.uint8)
    boxes = np.array([[4, 4, 20, 28], [10, 2, 30, 18], [0, 0, 32, 32], [3.5, 6.2, 17.8, 30.1],
                      [12, 12, 20, 20], [1, 1, 9, 31]], np.float32)
    text = rng.normal(size=(6, 8)).astype(np.float32)
    return scenes, boxes, text


def emotic_scores_independent(enc, head, scenes, boxes, text, body_size=16):
    """Recompute the Emotic pipeline by hand: crop every box from the scene, encode both, run the head (logits)."""
    with torch.no_grad():
        x = torch.tensor(scenes, dtype=torch.float32).permute(0, 3, 1, 2) / 255
        crops = roi_align(x, [torch.tensor(b[None]) for b in boxes], body_size, aligned=True)
        logits, _ = head(body=enc(crops), context=enc(x), text=None if text is None else torch.tensor(text))
        return logits.numpy()


def test_emotic_body_crop_is_derived_from_scene(emotic_setup):
    scenes, boxes, text = emotic_setup
    full = EmoticPixelPipeline(TinyEncoder(), TinyHead(), text, np.array([[0, 0, 32, 32]] * 6, np.float32),
                               body_size=32, channels_last=False)
    x = torch.tensor(scenes).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():  # a box covering the whole scene at the scene's own size is the scene itself
        torch.testing.assert_close(full.body_crops(x, torch.arange(6)), x, atol=1e-5, rtol=0)
    pipe = EmoticPixelPipeline(TinyEncoder(), TinyHead(), text, boxes, body_size=16)
    base = pipe.body_crops(x[:1], torch.tensor([0]))
    inside = scenes[:1].copy(); inside[0, 10, 10] = 255 - inside[0, 10, 10]  # (x=10, y=10) in box 0
    outside = scenes[:1].copy(); outside[0, 30, 30] = 255 - outside[0, 30, 30]
    to_x = lambda a: torch.tensor(a).permute(0, 3, 1, 2).float() / 255
    assert not torch.equal(pipe.body_crops(to_x(inside), torch.tensor([0])), base)
    assert torch.equal(pipe.body_crops(to_x(outside), torch.tensor([0])), base)


def test_emotic_cached_body_features_match_full_recompute(emotic_setup):
    """The body features reused for pixels outside the box equal a full recompute, for every box shape."""
    scenes, boxes, text = emotic_setup
    enc, head = TinyEncoder(), TinyHead()
    pipe = EmoticPixelPipeline(enc, head, text, boxes, body_size=16)
    rng = np.random.default_rng(5)
    rows = np.repeat(np.arange(6), 40)
    cands = np.concatenate([rng.integers(0, 32, (240, 2, 2)), rng.integers(0, 256, (240, 2, 3))], -1)
    adv = apply_pixels(scenes[rows], cands)
    with torch.no_grad():
        x = torch.tensor(scenes).permute(0, 3, 1, 2).float() / 255
        pipe.prepare(x, torch.arange(6))
        xa = torch.tensor(adv).permute(0, 3, 1, 2).float() / 255
        fast = pipe.scores(xa, torch.tensor(rows), torch.tensor(cands[..., :2]))
        slow = pipe.scores(xa, torch.tensor(rows), None)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    np.testing.assert_allclose(slow.numpy(), emotic_scores_independent(enc, head, adv, boxes[rows], text[rows]),
                               atol=1e-6)


def test_emotic_attack_success_is_real_and_text_optional(emotic_setup):
    scenes, boxes, text = emotic_setup
    enc, head = TinyEncoder(), TinyHead()
    clean = emotic_scores_independent(enc, head, scenes, boxes, text)
    truth = np.zeros((6, 26), bool)
    truth[np.arange(6), clean.argmax(1)] = True  # the top category is true: every image is attacked
    truth[np.arange(6), np.argsort(clean, 1)[:, -3]] = True  # plus one lower-ranked true category
    with_text = EmoticPixelPipeline(enc, head, text, boxes, labels=truth, body_size=16)
    image_only = EmoticPixelPipeline(enc, head, None, boxes, labels=truth, body_size=16)
    table = pd.DataFrame([attack(pipe, scenes[:2], k=p, popsize=12, generations=2).summary()
                          for pipe in (with_text, image_only) for p in (1, 2)])
    assert list(table.pixels) == [1, 2, 1, 2]
    rep = de_attack(with_text, scenes, pixels=3, **BUDGET)
    after = emotic_scores_independent(enc, head, rep.adversarial, boxes, text)
    for r, s in zip(rep.results, after):
        assert r.attacked
        assert r.success == (not truth[r.row][s.argmax()])
        np.testing.assert_allclose(r.scores_after, s, atol=1e-5)
        assert r.true_score_drop == pytest.approx(r.scores_before[truth[r.row]].mean() - s[truth[r.row]].mean(),
                                                  abs=1e-5)


# ---------------------------------------------------------------------------------------------------- Flickr8k
def test_flickr_success_means_no_own_caption_ranked_first():
    rng = np.random.default_rng(2)
    images = rng.integers(60, 200, (5, 12, 12, 3)).astype(np.uint8)
    enc = TinyEncoder()
    with torch.no_grad():
        feats = enc(torch.tensor(images).permute(0, 3, 1, 2).float() / 255).numpy()
    proj = rng.normal(size=(16, 8)).astype(np.float32)
    caption_image = np.repeat(np.arange(5), 3)
    captions = (feats @ proj)[caption_image] + rng.normal(scale=0.05, size=(15, 8)).astype(np.float32)
    head = SimpleNamespace(encode_image=lambda f: f @ torch.tensor(proj),  # a closed-form map image -> text space
                           encode_text=lambda c: c)  # the captions are already in the shared space
    pipe = FlickrPixelPipeline(enc, head, captions, caption_image)
    rep = de_attack(pipe, images, pixels=3, **BUDGET)

    def ranks(imgs):  # independent: cosine similarity in numpy, rank of the best own caption
        with torch.no_grad():
            e = enc(torch.tensor(imgs).permute(0, 3, 1, 2).float() / 255).numpy() @ proj
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        c = captions / np.linalg.norm(captions, axis=1, keepdims=True)
        sim = e @ c.T
        own = caption_image[None] == np.arange(5)[:, None]
        return np.array([(s[~o] > s[o].max()).sum() + 1 for s, o in zip(sim, own)])

    before, after = ranks(images), ranks(rep.adversarial)
    t = rep.table()
    np.testing.assert_array_equal(t.attacked, before == 1)
    np.testing.assert_array_equal(t.success, (before == 1) & (after > 1))
    np.testing.assert_array_equal(t.rank_after, after)
    assert t.attacked.sum() >= 2


def test_summary_per_pixel_budget(near_boundary):
    net, imgs, labels = near_boundary
    reports = {p: attack(ClassifierPixelPipeline(net, labels, 3), imgs, k=p, **BUDGET) for p in (1, 2)}
    table = pd.DataFrame([r.summary() for r in reports.values()])
    assert list(table.pixels) == [1, 2] and set(reports) == {1, 2}
    assert table.success_rate.between(0, 1).all() and (table.attacked == 8).all()


def test_bad_input_is_named():
    net = tiny_net()
    pipe = ClassifierPixelPipeline(net, [0, 1], 3)
    with pytest.raises(ValueError, match="utils/attack/search.py: images must be uint8"):
        de_attack(pipe, np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="boxes_224"):
        EmoticPixelPipeline(TinyEncoder(), TinyHead(), None, np.array([[5, 5, 5, 9]], np.float32))


def test_pipelines_accept_the_project_models(emotic_setup):
    """The real heads of utils.models plug in: scores equal each model's own output on independently derived
    features, and an image-only head never needs text."""
    from utils.models import EmoticBaseline, EmoticJoint, FlickrBaseline, FlickrJoint

    scenes, boxes, text = emotic_setup
    enc = TinyEncoder()
    x = torch.tensor(scenes).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        body = enc(roi_align(x, [torch.tensor(b[None]) for b in boxes], 16, aligned=True))
        ctx = enc(x)
    dims = {"body": 16, "context": 16, "text": 8, "image": 16}
    for head, txt in [(EmoticBaseline(dims=dims, hidden=8), text),
                      (EmoticBaseline(modalities=("body", "context"), dims=dims, hidden=8), None),
                      (EmoticJoint(dims=dims, shared_dim=8, hidden=8), text)]:
        head.eval()
        pipe = EmoticPixelPipeline(enc, head, txt, boxes, body_size=16)
        with torch.no_grad():
            got = pipe.scores(x, torch.arange(6))
            want = head(body=body, context=ctx, text=None if txt is None else torch.tensor(txt))["logits"]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    rng = np.random.default_rng(0)
    caps = rng.normal(size=(18, 8)).astype(np.float32)
    cap_img = np.repeat(np.arange(6), 3)
    joint = FlickrJoint(dims=dims, shared_dim=8, hidden=8).eval()
    base = FlickrBaseline(method="both", alpha=1.0).fit(ctx.numpy(), caps, cap_img)
    with torch.no_grad():
        want_joint = (joint.encode_image(ctx) @ joint.encode_text(torch.tensor(caps)).T).numpy()
    for head, want in [(joint, want_joint), (base, base.similarity(ctx.numpy(), caps))]:
        with torch.no_grad():
            got = FlickrPixelPipeline(enc, head, caps, cap_img).scores(x, torch.arange(6)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_score_images_and_success_match_independent_forward(near_boundary):
    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    lo = logits_of(net, imgs)
    sc = score_images(pipe, imgs, batch_size=3)
    np.testing.assert_allclose(sc, lo, atol=1e-6)  # logits, not probabilities
    np.testing.assert_array_equal(margin_and_success(sc, pipe.truth(np.arange(10)))[1], lo.argmax(1) != labels)


def test_mutation_is_rand1_with_three_distinct_others():
    """With population 10 + identity and F = 1, a child 10 + e_a + e_b - e_c reveals the members it was drawn from."""
    from utils.attack.search import mutants as _mutants

    p = 7
    children = _mutants(np.random.default_rng(0), 10 + np.eye(p), 1.0, np.full(p, 100.0))
    for parent, child in enumerate(children):
        plus, minus = np.flatnonzero(child == 11), np.flatnonzero(child == 9)
        assert len(plus) == 2 and len(minus) == 1 and parent not in set(plus) | set(minus)


def test_every_pipeline_is_differentiable_from_the_pixels(emotic_setup):
    """A white-box attack needs d(margin)/d(pixels): the gradient through each pipeline's scores matches a finite
    difference of the same scores (float64 would be exact; float32 agrees to a few per cent)."""
    from utils.models import EmoticJoint, FlickrBaseline, FlickrJoint

    scenes, boxes, text = emotic_setup
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # smooth: FD works
    x = torch.tensor(scenes).permute(0, 3, 1, 2).float() / 255
    dims = {"body": 16, "context": 16, "text": 8, "image": 16}
    with torch.no_grad():
        ctx = enc(x).numpy()
    rng = np.random.default_rng(0)
    caps, cap_img = rng.normal(size=(18, 8)).astype(np.float32), np.repeat(np.arange(6), 3)
    truth_emotic = np.zeros((6, 26), bool)
    truth_emotic[:, 3] = True
    pipes = {
        "classifier": ClassifierPixelPipeline(nn.Sequential(enc, nn.Linear(16, 4)), np.zeros(6, int), 4),
        "emotic": EmoticPixelPipeline(enc, EmoticJoint(dims=dims, shared_dim=8, hidden=8).eval(), text, boxes,
                                      labels=truth_emotic, body_size=16),
        "flickr joint": FlickrPixelPipeline(enc, FlickrJoint(dims=dims, shared_dim=8, hidden=8).eval(), caps,
                                            cap_img),
        "flickr baseline": FlickrPixelPipeline(enc, FlickrBaseline(method="both", alpha=1.0).fit(ctx, caps, cap_img),
                                               caps, cap_img),
    }
    rows = torch.arange(6)
    direction = torch.randn_like(x)
    for name, pipe in pipes.items():
        truth = torch.as_tensor(pipe.truth(np.arange(6)))

        def margin(inp):
            sc = pipe.scores(inp, rows)
            return (sc.masked_fill(~truth, -1e9).amax(1) - sc.masked_fill(truth, -1e9).amax(1)).sum()

        xg = x.clone().requires_grad_(True)
        m = margin(xg)
        m.backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0, name
        with torch.no_grad():
            sc = pipe.scores(x, rows).numpy()
            np.testing.assert_allclose(m.item(), margin_and_success(sc, truth.numpy())[0].sum(), rtol=1e-5)
            h = 1e-2
            fd = (margin(x + h * direction) - margin(x - h * direction)).item() / (2 * h)
        assert fd == pytest.approx((xg.grad * direction).sum().item(), rel=0.05, abs=1e-3), name
