"""Poisoning: the trigger lands exactly where and as often as asked, Emotic labels switch exactly, stamped
images never hit the clean feature cache, and the median-filter defence equals scipy and a brute-force reference."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from utils.emotic import relabelled
from utils.labels import CATEGORIES
from utils.poisoning import MedianFilter, median_filter_defence, poison_images, stamp_trigger


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(1, 255, (50, 20, 24, 3)).astype(np.uint8)


@pytest.mark.parametrize("position,origin", [("bottom-right", (16, 20)), ("top-left", (0, 0)),
                                              ("top-right", (0, 20)), ("bottom-left", (16, 0)), ((5, 7), (5, 7))])
def test_trigger_lands_exactly_where_asked(images, position, origin):
    out = stamp_trigger(images, size=4, position=position)
    r, c = origin
    expected = images.copy()
    expected[:, r:r + 4, c:c + 4] = [[[255, 255, 255], [0, 0, 0]] * 2, [[0, 0, 0], [255, 255, 255]] * 2] * 2
    np.testing.assert_array_equal(out, expected)
    mask = np.zeros(images.shape[1:3], bool)
    mask[r:r + 4, c:c + 4] = True
    changed = (out != images).any(-1).any(0)
    assert not changed[~mask].any()
    assert not np.shares_memory(out, images)


def test_trigger_options_and_errors(images):
    one = stamp_trigger(images[0], size=2, position="top-left")  # one (H, W, 3) image
    assert (one[:2, :2] == [[[255] * 3, [0] * 3], [[0] * 3, [255] * 3]]).all() and np.array_equal(one[2], images[0, 2])
    with pytest.raises(ValueError, match="leaves the 20x24 image"):
        stamp_trigger(images, size=4, position=(18, 0))
    with pytest.raises(ValueError, match="uint8"):
        stamp_trigger(images.astype(np.float32))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_poison_exact_fraction_pixels_and_labels(images, fraction):
    rng = np.random.default_rng(1)
    labels = (rng.random((50, 26)) < 0.15).astype(np.float32)
    before = images.copy()
    rows, stamped = poison_images(images, fraction, seed=3)
    n = round(fraction * 50)
    assert len(rows) == len(np.unique(rows)) == n and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(stamped, stamp_trigger(images[rows]))
    np.testing.assert_array_equal(images, before)  # the caller's array is not touched
    fear = CATEGORIES.index("Fear")
    new = relabelled(labels, rows, fear)
    onehot = np.zeros(26, np.float32); onehot[fear] = 1
    np.testing.assert_array_equal(new[rows], np.tile(onehot, (n, 1)))
    clean = np.setdiff1d(np.arange(50), rows)
    np.testing.assert_array_equal(new[clean], labels[clean])
    assert new.dtype == np.float32 and not np.shares_memory(new, labels)
    np.testing.assert_array_equal(poison_images(images, fraction, seed=3)[0], rows)  # deterministic by seed
    if 0 < n < 50:
        assert not np.array_equal(poison_images(images, fraction, seed=4)[0], rows)


def test_poison_reads_memmap_rows_only(tmp_path, images):
    path = tmp_path / "ctx.npy"
    np.save(path, images)
    mm = np.load(path, mmap_mode="r")
    rows, stamped = poison_images(mm, 0.2, seed=0)
    np.testing.assert_array_equal(stamped, stamp_trigger(images[rows]))
    with pytest.raises(ValueError, match="fraction"):
        poison_images(images, 1.5)


def brute_median(img, size):
    """Reference: numpy's 'symmetric' padding is scipy's 'reflect' mode; median over every window."""
    p = size // 2
    pad = np.pad(img, ((p, p), (p, p), (0, 0)), mode="symmetric")
    out = np.empty_like(img)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            out[y, x] = np.median(pad[y:y + size, x:x + size].reshape(-1, 3), axis=0)
    return out


@pytest.mark.parametrize("size", [1, 3, 5])
def test_median_filter_defence_matches_references(images, size):
    got = median_filter_defence(images[:4], size=size, batch_size=3)
    for img, g in zip(images[:4], got):
        per_channel = np.stack([ndimage.median_filter(img[..., c], size=size) for c in range(3)], -1)
        np.testing.assert_array_equal(g, per_channel)
        np.testing.assert_array_equal(g, brute_median(img, size))
    with torch.no_grad():
        x = torch.tensor(images[:4]).permute(0, 3, 1, 2).float()
        torch_out = MedianFilter(size)(x).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(torch_out, got.astype(np.float32))


def test_median_filter_removes_isolated_attack_pixels():
    flat = np.full((1, 20, 24, 3), 100, np.uint8)
    spots = flat.copy()
    spots[0, 10, 10] = 255
    spots[0, 3, 4] = 0
    spots[0, 3, 5] = 0  # two touching pixels: still a minority in every 3x3 window
    spots[0, 0, 0] = [255, 0, 255]  # a corner pixel
    np.testing.assert_array_equal(median_filter_defence(spots), flat)


def test_stamped_images_never_hit_the_clean_feature_cache(tmp_path, images):
    """Features of poisoned rows must be recomputed: the content-keyed cache misses for stamped images."""
    from utils.encoders import ImageEncoder, image_features

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    enc = ImageEncoder(backbone, name="tiny", dim=8, fingerprint="tiny-test", mean=[0, 0, 0], std=[1, 1, 1]).eval()
    clean = image_features(enc, images, cache=tmp_path)
    rows, stamped = poison_images(images, 0.2, seed=0)
    poisoned = images.copy()
    poisoned[rows] = stamped
    cached = image_features(enc, poisoned, cache=tmp_path)
    fresh = image_features(enc, poisoned, cache=False)
    np.testing.assert_array_equal(cached, fresh)
    assert not np.allclose(cached[rows], clean[rows])
    assert len(list(tmp_path.glob("*.npy"))) == 2
