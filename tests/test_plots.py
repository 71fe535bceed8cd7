"""Plot helpers draw what they are given: bar lengths, curve points and saved PNGs checked against the data."""
import numpy as np
import pytest
from PIL import Image

from utils import plots
from utils.labels import CATEGORIES


def test_ap_bars_draws_each_ap_sorted_and_skips_undefined(tmp_path):
    ap = {"Anger": 10.0, "Fear": np.nan, "Peace": 70.0, "Pain": 40.0}
    fig = plots.ap_bars(ap, prevalence=[0.1, 0.0, 0.5, 0.2], path=tmp_path / "ap.png")
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == [10.0, 40.0, 70.0]  # NaN skipped; ascending bottom-up so the best is on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Anger", "Pain", "Peace"]
    with Image.open(tmp_path / "ap.png") as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 50


def test_pr_curves_plot_sklearn_curve_for_the_most_frequent_categories():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(0)
    labels = (rng.random((60, 26)) < np.linspace(0.05, 0.6, 26)).astype(int)
    scores = rng.random((60, 26)) + labels
    fig = plots.pr_curves(scores, labels, which=2)
    ax = fig.axes[0]
    top2 = np.argsort(-labels.sum(0), kind="stable")[:2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [CATEGORIES[i] for i in top2]
    p, r, _ = precision_recall_curve(labels[:, top2[0]], scores[:, top2[0]])
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), r)
    np.testing.assert_allclose(line.get_ydata(), p)


def test_training_curves_plot_history_per_epoch():
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_mAP": 10.0 * e} for e in (1, 2, 3)]
    fig = plots.training_curves(history, ["mAP"])
    loss_ax, metric_ax = fig.axes
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(metric_ax.lines[0].get_ydata(), [10.0, 20.0, 30.0])
    with pytest.raises(ValueError, match="empty history"):
        plots.training_curves([], ["mAP"])
