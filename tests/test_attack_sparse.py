"""Sparse random search: at most k pixels at cube corners, successes real (independent forward pass), budget and
early stop respected, batching invariance, Sparse-RS's alpha schedule, and the chooser returning one result type."""
import numpy as np
import pytest

from test_attack_de import logits_of, near_boundary, tiny_net  # noqa: F401 (fixture)
from utils.attack import ClassifierPixelPipeline, apply_pixels, attack, sparse_rs
from utils.attack.sparse import alpha_schedule, initial_pixels, propose
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py
BUDGET = dict(queries=120, candidates=3)


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
    short = sparse_rs(pipe, imgs, pixels=1, queries=30, candidates=4).table()
    long = sparse_rs(pipe, imgs, pixels=1, queries=150, candidates=4).table()
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
    image = np.full((1, 6, 6, 3), 255, np.uint8)  # white: a new pixel must get another corner colour
    px = initial_pixels(image[0], 10, row=3, seed=1)
    assert len({(x, y) for x, y in px[:, :2]}) == 10 and not (px[:, 2:] == 255).all(1).any()
    m = np.array([1, 3, 10, 3])
    props = propose(image, np.zeros(4, int), np.repeat(px[None], 4, 0), np.array([3, 3, 3, 4]),
                    np.array([5, 5, 5, 5]), m, seed=1)
    for new, mi in zip(props, m):
        kept = (new == px).all(1)
        assert kept.sum() == 10 - mi
        old_pos = {(x, y) for x, y in px[:, :2]}
        assert all((x, y) not in old_pos for x, y in new[~kept, :2])  # moved pixels land on unused positions
        assert len({(x, y) for x, y in new[:, :2]}) == 10
        assert set(np.unique(new[:, 2:])) <= {0, 255} and not (new[:, 2:] == 255).all(1).any()
    # the random numbers belong to (seed, row, query): the same query of the same row gives the same proposal,
    # whatever else is proposed in the same call; another row or query gives another one
    alone = propose(image, np.zeros(1, int), px[None], np.array([3]), np.array([5]), np.array([3]), seed=1)
    np.testing.assert_array_equal(alone[0], props[1])
    assert not np.array_equal(props[1], props[3])
    with pytest.raises(ValueError, match="only 0 positions are free"):
        full = initial_pixels(image[0], 36)
        propose(image, np.zeros(1, int), full[None], np.array([0]), np.array([1]), np.array([1]), seed=0)


def test_corner_colours_are_uniform_and_never_the_original():
    """Over many draws, each of the 7 corners other than a corner-coloured original comes up about equally."""
    from utils.attack.sparse import _corners, random_bits

    bits = random_bits(0, np.arange(20000), np.zeros(20000, int), 3, 1)[:, 0]
    for original, allowed in (([255, 0, 255], 7), ([12, 200, 90], 8)):
        c = _corners(bits, np.tile(original, (20000, 1)))
        code = (c[:, 0] > 0) * 4 + (c[:, 1] > 0) * 2 + (c[:, 2] > 0)
        counts = np.bincount(code, minlength=8)
        assert (counts > 0).sum() == allowed and not (c == original).all(1).any()
        expected = 20000 / allowed
        assert np.abs(counts[counts > 0] - expected).max() < 5 * np.sqrt(expected)


def test_chooser_runs_both_searches_with_one_budget(near_boundary):
    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    de = attack(pipe, imgs, None, 2, method="de", queries=80, popsize=20)
    sp = attack(pipe, imgs, None, 2, method="sparse", queries=80)
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


def test_acceptance_is_strict():
    """Sparse-RS keeps a proposal only when the margin strictly decreases: on a model whose margin never moves,
    the starting pixels are never replaced (with "not worse" acceptance every proposal would be)."""
    from test_attack_pixels import toy_images

    class Flat(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).expand(len(x), 2) + 0 * x.sum((1, 2, 3))[:, None]

    imgs = toy_images(np.array([1, 2, 3]))
    rep = sparse_rs(ClassifierPixelPipeline(Flat(), np.zeros(7, int), 2), imgs, rows=[4, 5, 6], pixels=3,
                    queries=50, seed=2)
    for img, row, r in zip(imgs, (4, 5, 6), rep.results):
        start = initial_pixels(img, 3, row=row, seed=2)
        np.testing.assert_array_equal(r.adversarial, apply_pixels(img[None], start[None])[0])
        assert (r.queries, r.generations, r.success) == (50, 0, False)


def test_proposals_adapt_to_the_active_images(near_boundary, monkeypatch):
    """After the starting pixels (one each), every call fills whole batches: ceil(active / batch_size) batches,
    spread evenly over the active images in order (within each image's budget); the result equals the
    one-proposal-per-call search exactly."""
    from utils.attack.pipelines import Scorer

    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    calls = []
    original = Scorer.search

    def spy(self, idx, cands):
        calls.append(np.bincount(idx, minlength=len(imgs)))
        return original(self, idx, cands)

    monkeypatch.setattr(Scorer, "search", spy)
    adaptive = sparse_rs(pipe, imgs, pixels=2, queries=60, batch_size=5)
    per_call, calls = calls, []
    one = sparse_rs(pipe, imgs, pixels=2, queries=60, batch_size=5, candidates=1)
    assert all(c.max() == 1 for c in calls)
    assert set(per_call[0][per_call[0] > 0]) == {1}  # query 1: the starting pixels
    spent = per_call[0].copy()
    saw_uneven = False
    for c in per_call[1:]:
        on = np.flatnonzero(c)
        total = -(-len(on) // 5) * 5
        want = total // len(on) + (np.arange(len(on)) < total % len(on))  # e.g. 7 active: 2 2 2 1 1 1 1
        assert (c[on] == np.minimum(want, 60 - spent[on])).all()
        saw_uneven |= len(set(want)) > 1
        spent += c  # an upper bound on what each image used: a discarded proposal is not a query
    assert saw_uneven and any(c.sum() % 5 == 0 and c.max() > 1 for c in per_call)
    # speculative proposals reproduce the one-at-a-time search: same pixels, successes, and queries (a success's
    # query is the one that fooled it; discarded proposals are not counted)
    assert adaptive.table().equals(one.table()) and adaptive.model_queries > one.model_queries
    for x, y in zip(adaptive.results, one.results):
        np.testing.assert_array_equal(x.adversarial, y.adversarial)


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
    rep = attack(pipe, imgs, None, 8, method=method, **budget)
    lead = lambda x: (lambda z: z[:, 0] - z[:, 1])(logits_of(Confident(), x))  # noqa: E731 (independent pass)
    np.testing.assert_allclose(lead(imgs), 30.0, rtol=1e-6)
    after = lead(rep.adversarial)
    assert rep.table().attacked.all()
    if method == "sparse":  # corner colours: white is one of them, so the search flips all three
        assert rep.table().success.all() and (after < 0).all()
    else:  # DE's continuous colours rarely make a pixel fully white: its margin moved by at least two pixels' worth
        assert (after <= 30 - 2 * 4).all()
    np.testing.assert_allclose(rep.table().margin_after, after, atol=1e-5)  # the saved margin is on the logits


def test_candidate_batches_equal_the_uint8_images_bit_for_bit(near_boundary, monkeypatch):
    """Each batch the search builds must equal the uint8 image with the pixels written (apply_pixels) converted as
    usual, also with repeated positions (later pixels win), padding rows, and calls larger than one batch."""
    from utils.attack import pipelines
    from utils.attack.pipelines import prepare_attack, to_input

    net, imgs, labels = near_boundary
    pipe = ClassifierPixelPipeline(net, labels, 3)
    scorer = prepare_attack(pipe, imgs, None, None, 3, 4, "test")
    builders, real = [], pipelines.score_chunks  # the batch builder Scorer.search hands to score_chunks

    def spy(pipeline, images, *args):
        builders.append(images)
        return real(pipeline, images, *args)

    monkeypatch.setattr(pipelines, "score_chunks", spy)
    rng = np.random.default_rng(0)
    for call in range(6):
        m = int(rng.integers(1, 12))
        idx = rng.integers(0, len(imgs), m) if call % 2 else np.sort(rng.choice(len(imgs), min(m, 10), False))
        m = len(idx)
        cands = np.concatenate([rng.integers(0, 12, (m, 3, 2)), rng.integers(0, 256, (m, 3, 3))], -1)
        cands[:, 2, :2] = cands[:, 0, :2]  # a repeated position: the later pixel wins
        cands[0, 1] = -1  # padding
        scorer.search(idx, cands)
        build = builders[-1]
        want = to_input(apply_pixels(imgs[idx], cands), pipe.device, pipe.channels_last)
        for s in range(0, m, 4):
            assert torch.equal(build(s, min(s + 4, m)), want[s:s + 4]), (call, s)


def test_a_traced_search_confirms_each_success_eagerly(monkeypatch):
    from utils.attack.pipelines import Scorer
    from utils.encoders import load_image_encoder
    enc = load_image_encoder("mobilenet_v2", device="cpu")  # an ImageEncoder: the searches trace its backbone
    net = torch.nn.Sequential(enc, enc.head).eval()
    imgs = np.random.default_rng(0).integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    eager = lambda a: net(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255)  # noqa: E731
    with torch.inference_mode():
        labels = eager(imgs).argmax(1).numpy()
    confirmed, real = [], Scorer.confirm
    monkeypatch.setattr(Scorer, "confirm", lambda self, idx, c: confirmed.extend(idx.tolist()) or real(self, idx, c))
    reports = {g: sparse_rs(ClassifierPixelPipeline(net, labels, 1000), imgs, pixels=4, queries=40, batch_size=4,
                            graph=g) for g in ("traced", "eager")}
    won = [i for i, r in enumerate(reports["traced"].results) if r.success]
    assert reports["traced"].settings["graph"] == "traced" and len(won) >= 2  # fooled in this setting
    assert sorted(set(confirmed)) == won and len(confirmed) == len(won)  # then none by the eager search
    with torch.inference_mode():
        after = eager(np.stack([reports["traced"].results[i].adversarial for i in won]))
    np.testing.assert_array_equal(after.argmax(1).numpy() != labels[won], True)
    np.testing.assert_allclose(np.stack([reports["traced"].results[i].scores_after for i in won]), after.numpy(),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="graph one of \\['traced', 'eager'\\], got 'float32' and 'frozen'"):
        sparse_rs(ClassifierPixelPipeline(net, labels, 1000), imgs, graph="frozen")
