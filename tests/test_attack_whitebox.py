"""White-box Sparse-PGD and the ensemble: successes real (the uint8 image re-fed through the bare model, changed
pixels counted), the projection onto exactly k pixels, per-image seeding independent of the batch, honest query
counts, and the ensemble's black-box member running only on what the white-box member left."""
import importlib

import numpy as np
import pytest
import torch
import torch.nn as nn

from test_attack_de import logits_of, near_boundary, tiny_net  # noqa: F401 (fixture)
from utils.attack import (METHODS, ClassifierPixelPipeline, EmoticPixelPipeline, attack, ensemble, from_arrays,
                          score_images, sparse_pgd, to_arrays)
from utils.attack.sparse import STEP_COST, project_mask

search_module = importlib.import_module("utils.attack.search")  # where `ensemble` calls `sparse_rs`
pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
BUDGET = dict(steps=30, restarts=2)


@pytest.fixture(scope="module")
def spread():
    """20 images of the tiny classifier from near to far from its boundary: some fall to 1 pixel, some need more."""
    net = tiny_net()
    rng = np.random.default_rng(0)
    imgs = rng.integers(80, 176, (400, 12, 12, 3)).astype(np.uint8)
    lo = logits_of(net, imgs)
    top2 = np.sort(lo, 1)[:, -2:]
    order = np.argsort(top2[:, 1] - top2[:, 0])[::20][:20]
    return net, imgs[order], lo.argmax(1)[order]


def test_successes_are_real_and_at_most_k_pixels(spread):
    net, imgs, labels = spread
    for k in (1, 2):
        rep = sparse_pgd(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=k, **BUDGET)
        t = rep.table()
        assert rep.settings["method"] == "sparse-pgd" and t.attacked.all()
        adv = rep.adversarial
        assert adv.dtype == np.uint8 and adv.shape == imgs.shape
        changed = (adv != imgs).any(-1).sum((1, 2))  # brute force over every pixel
        assert (changed <= k).all()
        np.testing.assert_array_equal(changed, t.n_pixels)
        fooled = logits_of(net, adv).argmax(1) != labels  # the bare model, plain NCHW, no pipeline code
        np.testing.assert_array_equal(t.success.to_numpy(), fooled)
        assert 0 < fooled.sum() < len(imgs)  # neither trivial nor impossible at this k
    assert sparse_pgd(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=4, **BUDGET).table().success.all()


def test_white_box_beats_black_box_at_one_pixel_at_an_equal_forward_equivalent_budget(spread):
    net, imgs, labels = spread
    pipe = ClassifierPixelPipeline(net, labels, 3)
    white = sparse_pgd(pipe, imgs, pixels=1, **BUDGET).table()
    black = attack(pipe, imgs, k=1, method="sparse", queries=STEP_COST * 30 * 2).table()  # = 60 steps
    assert white.success.sum() > black.success.sum()


def test_projection_keeps_exactly_the_k_largest():
    g = torch.Generator().manual_seed(0)
    mask = torch.randn(5, 1, 7, 9, generator=g)
    for k in (1, 4, 63):
        hard = project_mask(mask, k)
        assert set(hard.unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(hard.flatten(1).sum(1).numpy(), k)
        flat = mask.flatten(1).numpy()
        for b in range(5):  # the ones sit on the k largest entries, by a sort done in numpy
            np.testing.assert_array_equal(np.flatnonzero(hard[b].flatten().numpy()), np.sort(np.argsort(-flat[b])[:k]))


def test_seeding_does_not_depend_on_batch_composition(spread):
    net, imgs, labels = spread
    pipe = ClassifierPixelPipeline(net, labels, 3)
    whole = sparse_pgd(pipe, imgs, pixels=2, batch_size=7, seed=3, **BUDGET)
    sub = [13, 2, 8]
    alone = sparse_pgd(pipe, imgs[sub], rows=np.array(sub), pixels=2, batch_size=1, seed=3, **BUDGET)
    for j, i in enumerate(sub):
        a, b = whole.results[i], alone.results[j]
        assert (a.row, a.success, a.queries, a.generations) == (b.row, b.success, b.queries, b.generations)
        np.testing.assert_array_equal(a.adversarial, b.adversarial)
    other = sparse_pgd(pipe, imgs[sub], rows=np.array(sub), pixels=2, batch_size=1, seed=4, **BUDGET)
    assert any(not np.array_equal(a.adversarial, b.adversarial) for a, b in zip(alone.results, other.results))


def test_queries_count_three_per_step_and_one_per_confirmation(spread):
    net, imgs, labels = spread
    rep = sparse_pgd(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=1, **BUDGET)
    t = rep.table()
    failed, won = t[~t.success], t[t.success]
    assert len(failed) and len(won)
    assert (failed.queries == STEP_COST * BUDGET["steps"] * BUDGET["restarts"]).all()
    assert (failed.generations == BUDGET["steps"] * BUDGET["restarts"]).all()
    # each search step scores the exact uint8 image, so its fp32 confirmation agrees: one confirmation per success
    assert (won.queries == STEP_COST * won.generations + 1).all()
    assert rep.model_queries == STEP_COST * t.generations.sum()
    assert rep.settings["step_cost"] == STEP_COST and rep.settings["variants"] == ["unprojected", "projected"]


def test_queries_keyword_sets_steps_and_attack_dispatches(spread):
    net, imgs, labels = spread
    pipe = ClassifierPixelPipeline(net, labels, 3)
    rep = attack(pipe, imgs[:4], k=1, method="sparse-pgd", queries=60)
    assert rep.settings["steps"] == 60 // (STEP_COST * 2) and (rep.table().queries <= 60 + 10).all()
    assert METHODS["sparse-pgd"] is sparse_pgd and METHODS["ensemble"] is ensemble
    ens = attack(pipe, imgs[:4], k=1, method="ensemble", queries=30, steps=3)
    assert ens.settings["method"] == "ensemble" and ens.settings["queries"] == 30 and "member" in ens.table()
    assert ens.members["black-box"].settings["queries"] == 30 and ens.members["white-box"].settings["steps"] == 3


def test_bad_inputs_raise_clear_errors(spread):
    net, imgs, labels = spread
    pipe = ClassifierPixelPipeline(net, labels, 3)
    with pytest.raises(ValueError, match="sparse.py: need steps >= 1"):
        sparse_pgd(pipe, imgs, pixels=1, steps=0)
    with pytest.raises(ValueError, match="pixels must be between"):
        sparse_pgd(pipe, imgs, pixels=0)

    class Detached(ClassifierPixelPipeline):
        def scores(self, x, rows, changed_xy=None):
            return super().scores(x.detach(), rows)

    with pytest.raises(ValueError, match="not differentiable from the pixels"):
        sparse_pgd(Detached(net, labels, 3), imgs, pixels=1)


def test_gradients_flow_through_the_emotic_body_crop():
    """The body crop is re-derived from the photo: a head reading only the body still gets a gradient."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())

    class BodyOnly(nn.Module):
        inputs = ("body",)

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 26)

        def forward(self, body):
            return self.lin(body)

    rng = np.random.default_rng(1)
    imgs = rng.integers(60, 200, (6, 24, 24, 3)).astype(np.uint8)
    boxes = np.tile([6.0, 4.0, 18.0, 20.0], (6, 1))
    pipe = EmoticPixelPipeline(enc, BodyOnly(), None, boxes, body_size=8)
    truth = np.zeros((6, 26), bool)
    truth[np.arange(6), score_images(pipe, imgs).argmax(1)] = True
    rep = sparse_pgd(pipe, imgs, truth=truth, pixels=8, **BUDGET)
    t = rep.table()
    assert t.success.any()
    for r in rep.results:  # a success changed at least one pixel where it reaches the body crop
        if r.success:
            x, y = r.pixels[:, 0], r.pixels[:, 1]
            assert ((x >= 5) & (x <= 18) & (y >= 3) & (y <= 20)).any()
    after = score_images(pipe, rep.adversarial)
    np.testing.assert_array_equal(~truth[np.arange(6), after.argmax(1)], t.success.to_numpy())


def test_ensemble_runs_the_black_box_member_only_on_what_the_white_box_member_left(spread, monkeypatch):
    net, imgs, labels = spread
    labels = labels.copy()
    labels[[0, 5]] = (labels[[0, 5]] + 1) % 3  # two images not attacked at all
    pipe = ClassifierPixelPipeline(net, labels, 3)
    seen = []
    real = search_module.sparse_rs

    def spy(pipeline, images, rows, truth, **kw):
        seen.append(np.asarray(rows).copy())
        return real(pipeline, images, rows, truth, **kw)

    monkeypatch.setattr(search_module, "sparse_rs", spy)
    white = sparse_pgd(pipe, imgs, pixels=2, steps=5, restarts=1).table()
    rep = ensemble(pipe, imgs, pixels=2, queries=300, steps=5, restarts=1)
    t = rep.table()
    left = np.flatnonzero(white.attacked & ~white.success)
    np.testing.assert_array_equal(seen[0], left)  # rows = positions here (rows=None)
    assert rep.settings["method"] == "ensemble" and list(t.columns[-4:]) == [
        "member", "white_box_success", "black_box_ran", "black_box_success"]
    np.testing.assert_array_equal(t.white_box_success, white.success)
    np.testing.assert_array_equal(t.black_box_ran, np.isin(np.arange(len(imgs)), left))
    assert set(t.member[white.success]) == {"white-box"}
    np.testing.assert_array_equal(t.member == "black-box", t.black_box_success)
    np.testing.assert_array_equal(t.success, white.success | t.black_box_success)
    assert (t.member[~t.attacked] == "").all() and (t.queries[~t.attacked] == 0).all()
    fooled = logits_of(net, rep.adversarial).argmax(1) != labels  # independent re-check of the ensemble
    np.testing.assert_array_equal(t.success.to_numpy(), fooled & t.attacked.to_numpy())
    assert t.black_box_success.any()  # the black-box member adds something at this budget
    # queries add up: white-box spend, then (on what it left) the black-box spend
    b = rep.members["black-box"].table()
    np.testing.assert_array_equal(t.queries[left], white.queries[left].to_numpy() + b.queries.to_numpy())
    back = from_arrays(to_arrays(rep, "ens"), "ens")  # which member fooled each item survives the .npz arrays
    assert back.settings["member"] == list(t.member)

    seen.clear()
    both = ensemble(pipe, imgs, pixels=2, queries=300, steps=5, restarts=1, black_box_all=True)
    np.testing.assert_array_equal(seen[0], np.flatnonzero(white.attacked))
    np.testing.assert_array_equal(both.table().success, t.success)
