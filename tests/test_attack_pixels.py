"""Pixels needed: on a toy classifier built to need exactly k_i white pixels for image i, the routine returns the
smallest k of its schedule that is >= k_i, stops solved images, and reuses the previous k's pixels."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from utils.attack import ClassifierPixelPipeline, pixels_needed
from utils.robustness import success_table

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
T = 8  # white pixels in the region that flip the label


class WhiteCounter(nn.Module):
    """Label 0 while fewer than T pixels of the left half are white, label 1 from T on. A pixel counts by its
    darkest channel: 0 up to 0.6, 1 when white; corner colours other than white count 0."""

    def forward(self, x):
        darkest = x.amin(1)[..., : x.shape[-1] // 2]
        count = ((darkest - 0.6) / 0.4).clamp(0, 1).sum((1, 2))
        return torch.stack([torch.zeros_like(count), count - (T - 0.5)], 1)


def toy_images(needed):
    """8x8 grey images; image i already has T - needed[i] white pixels in the left half."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(90, 140, (len(needed), 8, 8, 3)).astype(np.uint8)
    for img, k in zip(imgs, needed):
        spots = rng.choice(32, T - k, replace=False)
        img[spots // 4, spots % 4] = 255
    return imgs


def test_toy_model_needs_exactly_k_pixels():
    needed = np.array([1, 3])
    imgs = toy_images(needed)
    net = WhiteCounter()
    with torch.no_grad():
        lo = net(torch.tensor(imgs).permute(0, 3, 1, 2).float() / 255).numpy()
    assert (lo.argmax(1) == 0).all()
    for img, k in zip(imgs, needed):  # k white pixels in the free left-half cells flip it, k - 1 do not
        free = np.argwhere((img[:, :4] != 255).any(-1))
        for j, flips in ((k - 1, False), (k, True)):
            adv = img.copy()
            adv[free[:j, 0], free[:j, 1]] = 255
            with torch.no_grad():
                out = net(torch.tensor(adv[None]).permute(0, 3, 1, 2).float() / 255).numpy()
            assert (out.argmax(1)[0] == 1) == flips


@pytest.mark.parametrize("method, budget", [("sparse", dict(queries=1500, candidates=4)),
                                            ("de", dict(queries=4000, popsize=40))])
def test_returns_smallest_k_of_schedule(method, budget):
    needed = np.array([1, 2, 3, 5, 2]) if method == "sparse" else np.array([1, 2, 1, 2, 3])
    schedule = (1, 2, 3, 4, 6, 8) if method == "sparse" else (1, 2, 4)
    imgs = toy_images(needed)
    pipe = ClassifierPixelPipeline(WhiteCounter(), np.zeros(len(imgs), int), 2)
    res = pixels_needed(pipe, imgs, schedule=schedule, method=method, **budget)
    want = np.array([min(k for k in schedule if k >= n) for n in needed])
    np.testing.assert_array_equal(res.k_needed, want)
    assert res.attacked.all()
    # a solved image is not attacked again: the report at k holds exactly the images unsolved before k
    for k, rep in res.reports.items():
        assert sorted(r.row for r in rep.results) == sorted(np.flatnonzero(want >= k).tolist())
    spent = {i: sum(r.queries for rep in res.reports.values() for r in rep.results if r.row == i)
             for i in range(len(imgs))}
    np.testing.assert_array_equal(res.queries, [spent[i] for i in range(len(imgs))])
    curve = success_table({"toy": res})  # the success-against-k curve of the robustness notebooks
    assert list(curve.pixels) == list(schedule)
    np.testing.assert_array_equal(curve.successes, [(want <= k).sum() for k in schedule])


def test_never_fooled_and_not_attacked_are_marked():
    needed = np.array([6, 1])
    imgs = toy_images(needed)
    labels = np.array([0, 1])  # image 1 is misclassified already: not attacked
    pipe = ClassifierPixelPipeline(WhiteCounter(), labels, 2)
    res = pixels_needed(pipe, imgs, schedule=(1, 2), queries=200)
    np.testing.assert_array_equal(res.k_needed, [-1, -1])
    np.testing.assert_array_equal(res.attacked, [True, False])
    curve = success_table({"toy": res})
    assert curve["success %"].tolist() == [0.0, 0.0] and (curve.attacked == 1).all()
    assert res.queries[0] == 400 and res.queries[1] == 0
    with pytest.raises(ValueError, match="schedule must be increasing"):
        pixels_needed(pipe, imgs, schedule=(2, 1))


def test_warm_start_keeps_the_previous_pixels():
    """With warm start, the next k starts from the previous k's best pixels: a k=2 run seeded with them makes its
    first query on a candidate that contains them."""
    from utils.attack.sparse import initial_pixels

    img = toy_images(np.array([3]))[0]
    prev = np.array([[1, 2, 255, 255, 255], [-1, -1, -1, -1, -1]])
    px = initial_pixels(img, 3, init=prev)
    np.testing.assert_array_equal(px[0], prev[0])
    assert len({(x, y) for x, y in px[:, :2]}) == 3
