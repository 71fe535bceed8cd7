"""Results round-trip through the flat arrays a .npz holds (no pickle), value by value, for both searches."""
import numpy as np
import pytest

from test_attack_de import near_boundary  # noqa: F401 (fixture)
from utils.attack import ClassifierPixelPipeline, attack, from_arrays, to_arrays

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.mark.parametrize("method", ["de", "sparse"])
def test_round_trip_through_npz(near_boundary, method, tmp_path):
    net, imgs, labels = near_boundary
    budget = dict(popsize=20) if method == "de" else dict(candidates=2)
    rep = attack(ClassifierPixelPipeline(net, labels, 3), imgs, None, 3, method=method, queries=60,
                 **budget)
    arrays = {**to_arrays(rep, "run_a"), "other": np.arange(3)}
    assert arrays["run_a_pixels"].shape == (10, 3, 5)
    np.savez(tmp_path / "r.npz", **arrays)
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        back = from_arrays(z, "run_a", images=imgs)
        bare = from_arrays(z, "run_a")
    assert back.settings == rep.settings and back.settings["method"] == method
    assert (back.seconds, back.model_queries, back.search_seconds, back.model_seconds) == \
        (rep.seconds, rep.model_queries, rep.search_seconds, rep.model_seconds)
    assert back.table().equals(rep.table()) and back.summary() == rep.summary()
    for a, b, c in zip(rep.results, back.results, bare.results):
        assert (a.row, a.attacked, a.success, a.queries, a.generations) == (b.row, b.attacked, b.success, b.queries,
                                                                          b.generations)
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.scores_before, b.scores_before)
        np.testing.assert_array_equal(a.scores_after, b.scores_after)
        np.testing.assert_array_equal(a.truth, b.truth)
        np.testing.assert_array_equal(a.adversarial, b.adversarial)  # rebuilt from clean images + pixels
        assert c.adversarial is None
    with pytest.raises(ValueError, match="read back without the clean images"):
        bare.adversarial
    with pytest.raises(KeyError, match="arrays lack run_b_rows"):
        from_arrays(arrays, "run_b")
    with pytest.raises(ValueError, match="3 images for 10 results"):
        from_arrays(arrays, "run_a", images=imgs[:3])
