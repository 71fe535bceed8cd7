"""The figure helpers the Emotic notebooks use (``utils.plots.metric_curves``, ``utils.plots.person_examples``):
what they draw is read back from the matplotlib objects and compared with the inputs."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from utils import plots


def _history(values, key="val_mAP"):
    return [{"epoch": i + 1, key: v, "train_loss": 1.0 / (i + 1)} for i, v in enumerate(values)]


def test_metric_curves_draws_every_run_and_marks_its_best_epoch(tmp_path):
    runs = {"a": _history([10.0, 30.0, 20.0]), "b": _history([5.0, 6.0, 7.0, 8.0])}
    fig = plots.metric_curves(runs, "val_mAP", path=tmp_path / "curves.png")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"a", "b"}
    np.testing.assert_array_equal(lines["b"].get_ydata(), [5, 6, 7, 8])
    marked = sorted(tuple(c.get_offsets()[0]) for c in ax.collections)
    assert marked == [(2.0, 30.0), (4.0, 8.0)]           # argmax of each run
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_metric_curves_marks_the_minimum_of_a_loss_and_names_a_missing_key():
    fig = plots.metric_curves({"run": _history([3.0, 1.0, 2.0], key="train_align_loss")}, "train_align_loss")
    assert tuple(fig.axes[0].collections[0].get_offsets()[0]) == (2.0, 1.0)
    with pytest.raises(KeyError, match="'run'.*val_mAP"):
        plots.metric_curves({"run": _history([1.0], key="train_loss")}, "val_mAP")


def test_person_examples_draws_boxes_truth_and_marked_predictions(tmp_path):
    images = np.zeros((2, 32, 48, 3), np.uint8)
    boxes = np.array([[2, 3, 12, 20], [10, 0, 47, 31]], np.float32)
    truths = ["Happiness;Peace", ["Anger"]]
    predictions = [[("Happiness", 0.9), ("Fear", 0.4), ("Peace", 0.3)], [("Anger", 0.7), ("Pain", 0.2)]]
    fig = plots.person_examples(images, boxes, ["a person by a lake", "a man shouting"], truths, predictions,
                                title="t", path=tmp_path / "people.png")
    assert len(fig.axes) == 4
    for row, box in enumerate(boxes):
        rect = next(p for p in fig.axes[2 * row].patches if isinstance(p, Rectangle))
        assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == pytest.approx(
            (box[0], box[1], box[2] - box[0], box[3] - box[1]))
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert texts[1] == "true: Happiness, Peace"
    green = [t.get_text() for ax in fig.axes[1::2] for t in ax.texts if to_hex(t.get_color()) == "#2a7d2a"]
    red = [t.get_text() for ax in fig.axes[1::2] for t in ax.texts if to_hex(t.get_color()) == "#b03030"]
    assert green == ["✓ Happiness 0.90", "✓ Peace 0.30", "✓ Anger 0.70"]
    assert red == ["✗ Fear 0.40", "✗ Pain 0.20"]
    assert (tmp_path / "people.png").stat().st_size > 0


def test_person_examples_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="argument 2 is shorter than argument 1"):
        plots.person_examples(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((1, 4)), ["a", "b"], ["x", "y"], [[], []])
