"""Sparse random search: at most k pixels at cube corners, successes real (independent forward pass), budget and
early stop respected, batching invariance, Sparse-RS's alpha schedule, and the chooser returning one result type."""
import numpy as np
import pytest

from test_attack_de import logits_of, near_boundary, tiny_net  # noqa: F401 (fixture)
from utils.attack import ClassifierPixelPipeline, apply_pixels, attack, sparse_rs
from utils.attack.sparse import alpha_schedule, initial_pixels, propose

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
BUDGET = dict(queries=120, candidates=3, progress=False)


def test_at_most_k_pixels_in_range_at_cube_corners(near_boundary):
    net, imgs, labels = near_boundary
    k = 4
    rep = sparse_rs(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=k, **BUDGET)
    assert len(rep.results) == len(imgs) and rep.settings["method"] == "sparse"
    for img, r in zip(imgs, rep.results):
        changed = np.argwhere((r.adversarial != img).any(-1))
        assert len(changed) <= k and len(r.pixels) == len(changed)
        assert r.adversarial.dtype == np.uint8 and r.adversarial.shape == img.shape
        if len(r.pixels):
            assert r.pixels[:, :2].min() >= 0 and r.pixels[:, 0].max() < 12 and r.pixels[:, 1].max() < 12
            assert set(np.unique(r.pixels[:, 2:])) <= {0, 255}  # colours at corners of the RGB cube
            np.testing.assert_array_equal(r.adversarial[r.pixels[:, 1], r.pixels[:, 0]], r.pixels[:, 2:])
            assert np.array_equal(apply_pixels(img[None], r.pixels[None])[0], r.adversarial)
        if not r.attacked:
            assert np.array_equal(r.adversarial, img) and r.queries == 0
        else:
            assert r.queries <= BUDGET["queries"]  # fp32 search: no confirmation pass needed


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_success_reported_only_when_prediction_really_changed(near_boundary, precision):
    net, imgs, labels = near_boundary
    rep = sparse_rs(ClassifierPixelPipeline(net, labels, 3), imgs, pixels=2, batch_size=16, precision=precision,
                    **BUDGET)
    clean = logits_of(net, imgs).argmax(1)
    adv = logits_of(net, rep.adversarial).argmax(1)  # independent plain forward pass on the uint8 images
    t = rep.table()
    np.testing.assert_array_equal(t.attacked.to_numpy(), clean == labels)
    np.testing.assert_array_equal(t.success.to_numpy(), (clean == labels) & (adv != labels))
    assert t.success.sum() > 0
    with_conf = BUDGET["queries"] + (precision != "float32") * BUDGET["queries"]  # each confirmation is 1 query
    assert (t.queries <= with_conf).all()


def test_early_stop_and_budget(near_boundary):
    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    short = sparse_rs(pipe, imgs, pixels=1, queries=30, candidates=4, progress=False).table()
    long = sparse_rs(pipe, imgs, pixels=1, queries=150, candidates=4, progress=False).table()
    solved = short.success.to_numpy()
    assert solved.any() and not solved[short.attacked].all()
    np.testing.assert_array_equal(short.queries[solved], long.queries[solved])  # nothing spent after a success
    failed = short.attacked & ~short.success
    assert (short.queries[failed] == 30).all()  # a failure used exactly its budget
    assert (long.queries[long.attacked & ~long.success] == 150).all()


def test_batched_and_per_image_runs_agree(near_boundary):
    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    together = sparse_rs(pipe, imgs, pixels=3, seed=5, batch_size=64, **BUDGET)
    for i in (1, 3, 4, 8):
        alone = sparse_rs(pipe, imgs[i:i + 1], rows=[i], pixels=3, seed=5, batch_size=5, **BUDGET).results[0]
        r = together.results[i]
        assert (alone.success, alone.queries, alone.generations) == (r.success, r.queries, r.generations)
        np.testing.assert_array_equal(alone.adversarial, r.adversarial)
    other = sparse_rs(pipe, imgs, pixels=3, seed=6, batch_size=64, **BUDGET)
    assert any(not np.array_equal(a.adversarial, b.adversarial) for a, b in zip(together.results, other.results))


def test_alpha_follows_sparse_rs_l0_schedule():
    # on 10,000 queries: p_init until 0 is passed, then /2 up to 50, /4 up to 200, ..., /20 after 8000
    assert alpha_schedule(0, 10000) == pytest.approx(0.3)
    assert alpha_schedule(1, 10000) == pytest.approx(0.15) and alpha_schedule(50, 10000) == pytest.approx(0.15)
    assert alpha_schedule(51, 10000) == pytest.approx(0.075)
    assert alpha_schedule(4500, 10000) == pytest.approx(0.3 / 12)
    assert alpha_schedule(9999, 10000) == pytest.approx(0.015)
    # rescaled: 1,000 queries behave like 10,000 at ten times the count
    assert alpha_schedule(5, 1000) == pytest.approx(0.15) and alpha_schedule(6, 1000) == pytest.approx(0.075)
    assert alpha_schedule(100, 1000) == pytest.approx(0.3 / 6)


def test_proposal_moves_m_pixels_to_unused_positions():
    rng = np.random.default_rng(0)
    image = np.full((6, 6, 3), 255, np.uint8)  # white: a new pixel must get another corner colour
    px = initial_pixels(rng, image, 10)
    assert len({(x, y) for x, y in px[:, :2]}) == 10 and not (px[:, 2:] == 255).all(1).any()
    for m in (1, 3, 10):
        new = propose(rng, image, px, m)
        kept = (new == px).all(1)
        assert kept.sum() == 10 - m
        old_pos = {(x, y) for x, y in px[:, :2]}
        assert all((x, y) not in old_pos for x, y in new[~kept, :2])  # moved pixels land on unused positions
        assert len({(x, y) for x, y in new[:, :2]}) == 10
        assert set(np.unique(new[:, 2:])) <= {0, 255} and not (new[:, 2:] == 255).all(1).any()
    with pytest.raises(ValueError, match="only 0 positions are free"):
        propose(rng, image, initial_pixels(rng, image, 36), 1)


def test_chooser_runs_both_searches_with_one_budget(near_boundary):
    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    de = attack(pipe, imgs, None, 2, method="de", queries=80, popsize=20, progress=False)
    sp = attack(pipe, imgs, None, 2, method="sparse", queries=80, progress=False)
    assert de.settings["generations"] == 3 and sp.settings["queries"] == 80
    assert type(de) is type(sp) and list(de.table().columns) == list(sp.table().columns)
    for rep in (de, sp):
        assert (rep.table().queries <= 80).all()
    with pytest.raises(ValueError, match="method must be one of"):
        attack(pipe, imgs, None, 2, method="cma")
    with pytest.raises(ValueError, match="sparse.py: images must be uint8"):
        sparse_rs(pipe, imgs.astype(np.float32))
    with pytest.raises(ValueError, match="pixels must be between 1 and 144"):
        sparse_rs(pipe, imgs, pixels=145)


def test_a_step_keeps_the_best_proposal_only_when_not_worse():
    """Sparse-RS's acceptance: the margin of an image's current pixels never gets worse."""
    from test_attack_pixels import WhiteCounter, toy_images
    from utils.attack.pipelines import Scorer, prepare_attack
    from utils.attack.sparse import SparseImage, _step

    imgs = toy_images(np.array([4]))
    pipe = ClassifierPixelPipeline(WhiteCounter(), [0], 2)
    scorer = Scorer(pipe, prepare_attack(pipe, imgs, None, None, 2, 8, "test"), 8)
    free = np.argwhere((imgs[0, :, :4] != 255).any(-1))[:2]  # (y, x) of two non-white left-half cells
    white = lambda j: [free[j, 1], free[j, 0], 255, 255, 255]  # noqa: E731
    right = [[6, 0, 0, 0, 0], [7, 1, 0, 0, 0]]  # black pixels in the right half: count nothing
    one, two, none = np.array([white(0), right[0]]), np.array([white(0), white(1)]), np.array(right)
    st = SparseImage(index=0, rng=np.random.default_rng(0), pixels=one)
    _step(scorer, [st], [one[None]])
    m_one = st.margin
    _step(scorer, [st], [np.stack([none, none])])  # only worse proposals: nothing changes
    np.testing.assert_array_equal(st.pixels, one)
    assert st.margin == m_one
    _step(scorer, [st], [np.stack([none, two, none])])  # the better one is kept
    np.testing.assert_array_equal(st.pixels, two)
    assert st.margin < m_one and st.queries == 6 and st.active


@pytest.mark.parametrize("method, budget", [("sparse", dict(queries=400)), ("de", dict(queries=2000, popsize=40))])
def test_a_true_logit_leading_by_30_is_still_attackable(method, budget):
    """On probabilities a lead of 30 is p = 1.0 exactly in float32 and the search sees no signal; on logits its
    margin moves pixel by pixel. The toy model needs 8 white pixels in the left half to flip (lead 30 = 4 x 7.5)."""
    from test_attack_pixels import WhiteCounter, toy_images

    class Confident(WhiteCounter):
        def forward(self, x):
            return 4 * super().forward(x)

    imgs = toy_images(np.array([8, 8, 8]))  # no white pixel yet: label 0 leads by 30
    pipe = ClassifierPixelPipeline(Confident(), np.zeros(3, int), 2)
    rep = attack(pipe, imgs, None, 8, method=method, progress=False, **budget)
    lead = lambda x: (lambda z: z[:, 0] - z[:, 1])(logits_of(Confident(), x))  # noqa: E731 (independent pass)
    np.testing.assert_allclose(lead(imgs), 30.0, rtol=1e-6)
    after = lead(rep.adversarial)
    assert rep.table().attacked.all()
    if method == "sparse":  # corner colours: white is one of them, so the search flips all three
        assert rep.table().success.all() and (after < 0).all()
    else:  # DE's continuous colours rarely make a pixel fully white: its margin moved by at least two pixels' worth
        assert (after <= 30 - 2 * 4).all()
    np.testing.assert_allclose(rep.table().margin_after, after, atol=1e-5)  # the saved margin is on the logits
