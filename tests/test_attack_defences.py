"""The median filter inside the attacked pipeline: its scores equal scipy's filter then the bare pipeline, value by
value; its gradient is the undefended pipeline's gradient at the filtered image (BPDA, checked by hand); and both
members of the ensemble attack it with the same budget, every success re-checked by independent code."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from test_attack_de import logits_of, tiny_net
from utils.attack import ClassifierPixelPipeline, EmoticPixelPipeline, MedianDefended, attack, ensemble, score_images

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def scipy_median(images: np.ndarray, size: int) -> np.ndarray:
    """The reference filter: each channel on its own, mirrored edges (scipy's 'reflect')."""
    return ndimage.median_filter(images, size=(1, size, size, 1), mode="reflect")


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 14, 14, 3)).astype(np.uint8)


@pytest.mark.parametrize("size", [3, 5])
def test_forward_is_filter_then_pipeline_value_by_value(photos, size):
    net = tiny_net(seed=1)
    labels = logits_of(net, photos).argmax(1)
    pipe = ClassifierPixelPipeline(net, labels, 3)
    defended = MedianDefended(pipe, size)
    np.testing.assert_array_equal(score_images(defended, photos), score_images(pipe, scipy_median(photos, size)))
    np.testing.assert_array_equal(defended.truth(np.arange(4)), pipe.truth(np.arange(4)))
    assert not np.array_equal(score_images(defended, photos), score_images(pipe, photos))  # the filter acts


def test_emotic_pipeline_defended_filters_the_scene_and_the_body_crop(photos):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    class Head(nn.Module):
        inputs = ("body", "context")

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 26)

        def forward(self, body, context):
            return self.lin(torch.cat([body, context], 1))

    boxes = np.tile([2.0, 3.0, 11.0, 12.0], (len(photos), 1))
    pipe = EmoticPixelPipeline(enc, Head(), None, boxes, body_size=6)
    # one fixed batch for both sides: a probed batch size follows the machine's load, and the last float bits with it
    n = len(photos)
    np.testing.assert_array_equal(score_images(MedianDefended(pipe, 3), photos, batch_size=n),
                                  score_images(pipe, scipy_median(photos, 3), batch_size=n))


def test_gradient_passes_straight_through_the_filter(photos):
    """BPDA by hand: d(w . scores_defended)/dx at x equals d(w . scores)/dz at z = the filtered x."""
    net = tiny_net(seed=2)
    labels = logits_of(net, photos).argmax(1)
    pipe = ClassifierPixelPipeline(net, labels, 3, channels_last=False)
    defended = MedianDefended(pipe, 3)
    rows = torch.arange(len(photos))
    w = torch.randn(len(photos), 3, generator=torch.Generator().manual_seed(0))
    x = (torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255).requires_grad_(True)
    (g_def,) = torch.autograd.grad((defended.scores(x, rows) * w).sum(), x)
    z = (torch.from_numpy(scipy_median(photos, 3)).permute(0, 3, 1, 2).float() / 255).contiguous().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((pipe.scores(z, rows) * w).sum(), z)  # same layout as the filter output: exact
    torch.testing.assert_close(g_def, g_ref, rtol=0, atol=0)
    (g_at_x,) = torch.autograd.grad((pipe.scores(x, rows) * w).sum(), x)
    assert not torch.allclose(g_def, g_at_x)  # it is the gradient at the filtered image, not at x


def test_both_members_attack_the_defended_pipeline_with_the_same_budget(photos):
    net = tiny_net(seed=0)
    rng = np.random.default_rng(0)
    imgs = rng.integers(80, 176, (300, 12, 12, 3)).astype(np.uint8)
    lo = logits_of(net, scipy_median(imgs, 3))
    top2 = np.sort(lo, 1)[:, -2:]
    order = np.argsort(top2[:, 1] - top2[:, 0])[::15][:16]
    imgs, labels = imgs[order], lo.argmax(1)[order]
    defended = MedianDefended(ClassifierPixelPipeline(net, labels, 3), 3)
    budget = dict(queries=300, steps=20, restarts=2)
    rep = ensemble(defended, imgs, pixels=6, **budget)
    t = rep.table()
    assert t.attacked.all() and t.white_box_success.any() and t.success.any()
    assert rep.members["white-box"].settings["steps"] == budget["steps"]
    assert rep.members["black-box"].settings["queries"] == budget["queries"]
    # independent re-check: scipy's filter on the returned uint8 image, then the bare model
    adv = rep.adversarial
    assert ((adv != imgs).any(-1).sum((1, 2)) <= 6).all()
    fooled = logits_of(net, scipy_median(adv, 3)).argmax(1) != labels
    np.testing.assert_array_equal(t.success.to_numpy(), fooled)
    # the black-box search alone attacks the same defended pipeline through attack(), re-checked the same way
    alone = attack(defended, imgs, k=6, method="sparse", queries=300)
    fooled = logits_of(net, scipy_median(alone.adversarial, 3)).argmax(1) != labels
    np.testing.assert_array_equal(alone.table().success.to_numpy(), fooled)


def test_bad_size_is_refused():
    pipe = ClassifierPixelPipeline(tiny_net(), [0], 3)
    for size in (0, 2, -3):
        with pytest.raises(ValueError, match="poisoning.py: MedianFilter size must be odd and positive"):
            MedianDefended(pipe, size)
