"""utils/robustness.py: who is attacked, and the tables built from pixels-needed results, against plain references."""
from math import comb

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binomtest

from utils import robustness as R
from utils import attack as A
from utils.attack import PixelsNeeded

SCHEDULE = (1, 4, 16)


def needed(k_needed, attacked=None, queries=None) -> PixelsNeeded:
    k = np.asarray(k_needed, np.int64)
    n = len(k)
    return PixelsNeeded(rows=np.arange(10, 10 + n), attacked=np.ones(n, bool) if attacked is None else np.asarray(attacked),
                        k_needed=k, queries=np.full(n, 7) if queries is None else np.asarray(queries),
                        schedule=SCHEDULE, reports={})


def test_attacked_rows_are_random_among_rows_every_model_gets_right():
    right = {"a": np.array([1, 1, 0, 1, 1, 1, 0, 1], bool), "b": np.array([1, 0, 1, 1, 1, 1, 1, 1], bool)}
    rows = R.attacked_rows(right, 3, seed=0)
    assert len(rows) == 3 and np.all(np.diff(rows) > 0)
    assert set(rows) <= {0, 3, 4, 5, 7}
    assert np.array_equal(rows, R.attacked_rows(right, 3, seed=0))          # seeded
    assert np.array_equal(R.attacked_rows(right, 99, seed=1), [0, 3, 4, 5, 7])  # capped at the candidates


def test_success_table_counts_and_wilson_intervals():
    pn = needed([1, 4, -1, 16, 4], attacked=[1, 1, 1, 1, 0])
    table = R.success_table({"m": pn}).set_index("pixels")
    # attacked: the first four; fooled with at most k pixels: k=1 -> 1, k=4 -> 2, k=16 -> 3
    assert table["attacked"].tolist() == [4, 4, 4]
    assert table["successes"].tolist() == [1, 2, 3]
    for k, s in zip(SCHEDULE, [1, 2, 3]):
        ci = binomtest(s, 4).proportion_ci(method="wilson")
        assert table.loc[k, "success %"] == pytest.approx(100 * s / 4)
        assert table.loc[k, "success % low"] == pytest.approx(100 * ci.low)
        assert table.loc[k, "success % high"] == pytest.approx(100 * ci.high)


def test_median_pixels_and_never_fooled_items():
    cfg = {"pixels": list(SCHEDULE), "bootstrap": 200, "seed": 0}
    table = R.median_pixels({"most fooled": needed([1, 4, 4, 16, -1]), "few fooled": needed([-1, -1, -1, 4, 1])}, cfg)
    assert table.loc["most fooled", "median pixels"] == 4
    assert table.loc["most fooled", "low"] <= 4 <= table.loc["most fooled", "high"]
    assert np.isinf(table.loc["few fooled", "median pixels"])       # the median item was never fooled: "> 16"
    assert table.loc["most fooled", "fooled within schedule %"] == pytest.approx(80)
    assert table.loc["most fooled", "mean queries per item"] == 7


def test_paired_attack_tests_match_a_brute_force_mcnemar():
    a = needed([1, 1, 4, -1, 1, 16, 1, -1])
    b = needed([-1, 4, -1, -1, -1, 16, -1, 1])
    tests = R.paired_attack_tests({"a": a, "b": b}, [("a", "b")]).set_index("pixels")
    fooled_a, fooled_b = np.array([1, 1, 0, 0, 1, 0, 1, 0], bool), np.array([0, 0, 0, 0, 0, 0, 0, 1], bool)  # k <= 1
    only_a, only_b = int((fooled_a & ~fooled_b).sum()), int((fooled_b & ~fooled_a).sum())
    n = only_a + only_b
    p = min(1.0, 2 * sum(comb(n, i) for i in range(0, min(only_a, only_b) + 1)) / 2 ** n)
    assert (tests.loc[1, "only a fooled"], tests.loc[1, "only b fooled"]) == (only_a, only_b) == (4, 1)
    assert tests.loc[1, "p_value"] == pytest.approx(p)
    sentence = R.paired_sentence(tests.reset_index(), "a", "b")[0]
    # decided at the largest k (16): fooled a = items 0, 1, 2, 4, 5, 6; b = 1, 5, 7 -> 4 vs 1 discordant, p = 0.375
    assert tests.loc[16, "only a fooled"] == 4 and tests.loc[16, "only b fooled"] == 1
    assert "at 16 pixels" in sentence and sentence.endswith("; no detectable difference): no model is declared more robust")


def test_paired_sentence_names_the_model_fooled_less_often():
    a = needed([1] * 12 + [-1] * 2)
    b = needed([-1] * 12 + [-1] * 2)
    tests = R.paired_attack_tests({"a": a, "b": b}, [("a", "b")])
    sentence, verdict = R.paired_sentence(tests, "a", "b")
    assert sentence.endswith("b is fooled less often") and verdict == "b is fooled less often"
    assert R.paired_sentence(R.paired_attack_tests({"a": b, "b": a}, [("a", "b")]), "a", "b")[0].endswith(
        "a is fooled less often")


def test_backdoor_columns_rates_and_wilson_bounds_against_scipy():
    hit = np.array([True, True, False, True, False, False, True, False, False, False])
    control = np.array([False, True, False, False, False, False, False, False, False, False])
    cols = R.backdoor_columns(hit, control)
    for column, won in (("backdoor success %", 4), ("target top-1 on clean images %", 1)):
        ci = binomtest(won, 10).proportion_ci(method="wilson")
        assert cols[column] == pytest.approx(10 * won)
        assert (cols[f"{column} low"], cols[f"{column} high"]) == (pytest.approx(100 * ci.low), pytest.approx(100 * ci.high))
    assert cols["trigger adds (McNemar p)"] == pytest.approx(binomtest(3, 3, 0.5).pvalue)  # 3 discordant, all one way


# ------------------------------------------------------------------------------------------ Holm, paired rates
def _holm_by_closed_testing(p):
    """Holm's adjusted p-values by their definition as a closed test of Bonferroni tests: the largest, over every
    subset S holding hypothesis i, of min(1, |S| x the smallest p in S). Exponential, independent of the sort."""
    from itertools import combinations

    m = len(p)
    return [max(min(1.0, len(S) * min(p[j] for j in S)) for r in range(1, m + 1)
                for S in combinations(range(m), r) if i in S) for i in range(m)]


def test_holm_matches_a_hand_computation_in_the_statsmodels_manner():
    from utils.stats import holm

    # statsmodels' "holm": sort (0.005, 0.01, 0.03, 0.04), multiply by 4, 3, 2, 1 -> (0.02, 0.03, 0.06, 0.04), running
    # maximum -> (0.02, 0.03, 0.06, 0.06), cap at 1, back to the input order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.5, 0.01]) == pytest.approx([1.0, 1.0, 0.03])  # capped at 1; ties keep their order
    assert holm([0.2]) == pytest.approx([0.2]) and len(holm([])) == 0
    rng = np.random.default_rng(0)
    for m in (2, 3, 5, 6):
        p = rng.uniform(0, 0.2, m).tolist()
        assert holm(p) == pytest.approx(_holm_by_closed_testing(p))
    for bad in ([0.1, 1.2], [np.nan], [[0.1, 0.2]]):
        with pytest.raises(ValueError, match="holm"):
            holm(bad)


def _paired(both: int, only_a: int, only_b: int, neither: int):
    a = np.r_[np.ones(both + only_a), np.zeros(only_b + neither)].astype(bool)
    b = np.r_[np.ones(both), np.zeros(only_a), np.ones(only_b), np.zeros(neither)].astype(bool)
    return a, b


def test_paired_rate_difference_against_a_published_value_and_a_paired_bootstrap():
    from utils.stats import paired_rate_difference

    # Fagerland, Lydersen & Laake (2017), the Cavo et al. (2012) table [[59, 6], [16, 80]]: Newcombe's square-and-add
    # interval for the paired difference, estimate -0.0621 (95 % CI -0.1186 to -0.0046)
    d = paired_rate_difference(*_paired(59, 6, 16, 80))
    assert (d["difference"], d["low"], d["high"]) == (pytest.approx(-6.21, abs=0.005), pytest.approx(-11.86, abs=0.005),
                                                       pytest.approx(-0.46, abs=0.005))
    assert (d["a"], d["b"], d["n"]) == (pytest.approx(100 * 65 / 161), pytest.approx(100 * 75 / 161), 161)
    # a large sample: the paired percentile bootstrap (items resampled with both outcomes) agrees within 0.4 points
    a, b = _paired(700, 300, 150, 850)
    d = paired_rate_difference(a, b)
    rng = np.random.default_rng(1)
    boot = [a[i].mean() - b[i].mean() for i in (rng.integers(0, len(a), len(a)) for _ in range(2000))]
    lo, hi = 100 * np.percentile(boot, [2.5, 97.5])
    assert d["difference"] == pytest.approx(7.5) and abs(d["low"] - lo) < 0.4 and abs(d["high"] - hi) < 0.4
    # no discordant item: no difference, yet an interval that admits one (a bootstrap would collapse to a point)
    d = paired_rate_difference(*_paired(3, 0, 0, 17))
    assert d["difference"] == 0 and d["low"] < -5 and d["high"] > 5
    with pytest.raises(ValueError, match="equal length"):
        paired_rate_difference([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        paired_rate_difference([2, 0], [1, 0])


def test_the_poisoning_headline_is_the_trigger_effect_with_its_paired_interval():
    from utils.stats import paired_rate_difference

    hit, control = _paired(5, 9, 2, 24)  # backdoor 14 / 40, control 7 / 40 on the same items
    cols = R.backdoor_columns(hit, control)
    d = paired_rate_difference(hit, control)
    assert cols["trigger effect (points)"] == pytest.approx(100 * (14 - 7) / 40)
    assert cols["trigger effect low"] == pytest.approx(d["low"]) and cols["trigger effect high"] == pytest.approx(d["high"])
    row = pd.DataFrame([{"model": "m", "fraction": 0.25, **cols, "clean mAP": 30.0}])
    line, = R.poisoning_lines(row, {"poison_fractions": [0.0, 0.25]}, "mAP", "persons")
    assert line.startswith("poisoning 25 % of the training images, m: the trigger's effect +18 points (95 % interval")
    assert "backdoor success 35 %" in line and "against 18 %" in line


# ------------------------------------------------------------------------------- budgets that settle, or say so
def _result(row: int, success: bool, queries: int, k: int = 16):
    from utils.attack import AttackResult

    px = np.array([[j, 0, 255, 255, 255] for j in range(k if success else 0)], np.int64).reshape(-1, 5)
    return AttackResult(row=row, attacked=True, success=success, queries=queries, generations=queries // 3,
                        pixels=px, scores_before=np.zeros(3), scores_after=np.zeros(3), truth=np.eye(3, dtype=bool)[0],
                        adversarial=None)


def _run(k_needed, late_rows=(), settings=None, member_queries=24) -> PixelsNeeded:
    """A member search by hand: its per-item k_needed, and at the largest k a report whose successes came at query
    ``member_queries - 1`` (the last half of the budget) for ``late_rows`` and at query 3 otherwise."""
    pn = needed(k_needed)
    k_max = max(SCHEDULE)
    todo = [i for i, k in enumerate(pn.k_needed) if k in (k_max, -1)]
    settings = settings or {"method": "sparse", "pixels": k_max, "queries": member_queries}
    results = [_result(int(pn.rows[i]), pn.k_needed[i] == k_max,
                       member_queries - 1 if pn.rows[i] in late_rows
                       else 3 if pn.k_needed[i] == k_max else member_queries)
               for i in todo]
    pn.reports = {k_max: A.AttackReport(results=results, settings=settings, seconds=0.0, model_queries=0)}
    return pn


CFG = dict(pixels=list(SCHEDULE), bootstrap=200, seed=0, attack_method="sparse", attack_queries=24, attack_steps=5,
           attack_restarts=2)


def test_a_success_in_the_last_half_of_the_budget_makes_the_difference_not_settled():
    a = [1] * 10 + [16] * 3 + [-1]   # a: fooled on 13 of 14 items, three of them first at the largest k
    b = [-1] * 14                    # b: never fooled -> McNemar 13 vs 0 discordant, p = 2 / 2**13 (Holm x 3)
    settled = {"a [black-box]": _run(a, late_rows=()), "b [black-box]": _run(b)}
    rising = {"a [black-box]": _run(a, late_rows=(21,)), "b [black-box]": _run(b)}  # row 21: the 12th item, k = 16
    run = R.summarise(settled, ["a", "b"], CFG, [("a", "b")])
    assert run.status.loc["a", "settled"] and run.verdicts == ["b is fooled less often"]
    run = R.summarise(rising, ["a", "b"], CFG, [("a", "b")])
    assert not run.status.loc["a", "settled"] and run.status.loc["a", "fooled late"] == 1
    assert run.status.loc["a", "fooled at largest k"] == 3
    assert run.verdicts == ["no model is declared more robust"]  # the same words as "no detectable difference"
    assert run.sentences[0].endswith("; success still rising in the last half of the budget for a: not settled at this "
                                     "budget, the rates are lower bounds): no model is declared more robust")
    assert "b is fooled less often" not in run.sentences[0] and "sparse search, 24 queries per k" in run.sentences[0]
    assert "p = 0.00024" in run.sentences[0] and "Holm-adjusted over 3 k: 0.00073" in run.sentences[0]
    line = R.attack_lines(run, max(CFG["pixels"]), "persons")[0]
    assert line.startswith("a (sparse search, 24 queries per k): 93 % (95 % interval")
    assert "a lower bound: 1 of the 3 persons first fooled at 16 pixels" in line
    assert "settled: no success came in the last half" in R.attack_lines(run, max(CFG["pixels"]), "persons")[1]


def test_an_ensemble_is_late_only_when_every_member_that_fooled_the_item_was_late():
    cfg = dict(CFG, attack_method="ensemble")
    white = {"method": "sparse-pgd", "pixels": 16, "steps": 5, "restarts": 2, "step_cost": 3}  # budget 30
    k = [16, 16, -1, 1]
    early_white = _run(k, settings=white, member_queries=30)           # fooled rows 10, 11 at query 3 of 30
    late_white = _run(k, late_rows=(10, 11), settings=white, member_queries=30)
    late_black = _run(k, late_rows=(10,))
    assert R.budget_status({"white-box": early_white, "black-box": late_black})["settled"]
    st = R.budget_status({"white-box": late_white, "black-box": late_black})
    assert (st["fooled at largest k"], st["fooled late"], st["settled"]) == (2, 1, False)   # row 11: black early
    ens = R.ensemble_needed({"white-box": late_white, "black-box": needed([4, 16, -1, -1])})
    assert ens.k_needed.tolist() == [4, 16, -1, 1]
    assert R.budget_statement(cfg) == "ensemble: white-box sparse-PGD, 2 x 5 steps, and sparse search, 24 queries per k"
    with pytest.raises(ValueError, match="same items"):
        R.ensemble_needed({"white-box": needed([1, 1]), "black-box": needed([1, 1, 1])})


# ------------------------------------------------------------------------------------ adaptive vs transfer
class _Brightness(torch.nn.Module):
    """Class 1 once the image's mean brightness passes 0.37, so a few bright pixels can flip a dark image."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(m), 200 * (m - 0.37)], 1)


def test_adaptive_and_transfer_numbers_come_from_the_same_searches_and_budget(tmp_path, monkeypatch):
    from scipy import ndimage

    from utils import config

    monkeypatch.setenv("MMER_OUTPUT", str(tmp_path))
    torch.set_num_threads(1)
    images = np.random.default_rng(0).integers(70, 110, (8, 8, 8, 3)).astype(np.uint8)
    cfg = config.load("flickr8k", "smoke", environ={}, pixels=[1, 2, 8], attack_queries=40, attack_steps=5,
                      attack_restarts=2,
                      attack_threads=1, median_size=3)
    pipes = {"toy": A.ClassifierPixelPipeline(_Brightness(), np.zeros(8, np.int64), 2)}
    rows = np.arange(8)
    runs = R.pixels_needed(pipes, images, rows, cfg)  # unkeyed pipelines: always computed
    defended, adaptive = R.adaptive_attack(pipes, images, rows, cfg)
    assert sorted(adaptive) == sorted(runs) == ["toy [black-box]", "toy [white-box]"]
    assert all(set(pn.reports) == {8} for pn in adaptive.values()), "the adaptive attack runs at the largest k"
    single = R.pixels_needed(pipes, images, rows, {**cfg, "pixels": [8]})
    compared = 0
    for key, pn in [*runs.items(), *single.items()]:  # the adaptive attack ran with the attack's very settings
        for k in set(pn.reports) & set(adaptive[key].reports):
            assert adaptive[key].reports[k].settings == pn.reports[k].settings
            compared += 1
    assert compared >= 2
    table = R.defence_table(runs, adaptive, defended, images, cfg)
    row = table.loc["toy"]
    assert row["budget"] == R.budget_statement(cfg) == ("ensemble: white-box sparse-PGD, 2 x 5 steps, and sparse "
                                                        "search, 40 queries per k")
    # transfer, recomputed: each successful adversarial image median-filtered by scipy, then the model by hand
    won = [r for pn in runs.values() for rep in pn.reports.values() for r in rep.results if r.success]
    still = {r.row for r in won if ndimage.median_filter(A.apply_pixels(images[[r.row]], r.pixels[None])[0],
                                                         size=(3, 3, 1), mode="reflect").mean() / 255 > 0.37}
    assert (row["fooled"], row["still fooled behind the filter"]) == (len({r.row for r in won}), len(still))
    # adaptive, recomputed: an item is fooled when a member's adversarial image fools the filtered model
    fooled = {r.row for pn in adaptive.values() for rep in pn.reports.values() for r in rep.results if r.success
              and ndimage.median_filter(A.apply_pixels(images[[r.row]], r.pixels[None])[0], size=(3, 3, 1),
                                        mode="reflect").mean() / 255 > 0.37}
    lo, hi = binomtest(len(fooled), 8).proportion_ci(method="wilson")
    assert (row["adaptive: attacked"], row["adaptive: fooled"]) == (8, len(fooled)) and len(fooled) > len(still)
    assert (row["adaptive % low"], row["adaptive % high"]) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
    line, = R.defence_lines(table.assign(**{"clean mAP": 1.0, "clean mAP, filtered": 1.0}), "mAP", "items", 8)
    assert "of 8 items fooled with at most 8 pixels" in line
    assert f"adaptive attack ({R.budget_statement(cfg)}, gradients straight through the filter)" in line
    # run at another batch (as "auto" gives the filtered pipeline its own), the same search is still compared ...
    _, other_batch = R.adaptive_attack(pipes, images, rows, dict(cfg, attack_batch=3))
    assert other_batch["toy [black-box]"].reports[8].settings["batch_size"] == 3 != cfg["attack_batch"]
    assert R.defence_table(runs, other_batch, defended, images, cfg).loc["toy", "budget"] == row["budget"]
    # ... but an adaptive attack with another budget is refused, not shown beside the transfer
    _, cheaper = R.adaptive_attack(pipes, images, rows, dict(cfg, attack_queries=20))
    with pytest.raises(ValueError, match="adaptive attack on toy"):
        R.defence_table(runs, cheaper, defended, images, cfg)


def test_attack_batch_auto_scores_at_the_devices_batch_and_keeps_the_chunk_fixed(monkeypatch):
    from utils import config

    for experiment in config.EXPERIMENTS:
        assert config.load(experiment, "demo", environ={"MMER_DEVICE": "cpu"})["attack_batch"] == "auto"
        assert config.load(experiment, "full", environ={"MMER_DEVICE": "cpu"})["attack_batch"] == "auto"
    cfg = config.load("flickr8k", "smoke", environ={}, pixels=[2], attack_queries=10, attack_steps=2,
                      attack_restarts=1, attack_threads=1)
    assert (R.attack_batch(cfg), R.attack_chunk(cfg)) == (4, 1)
    auto = dict(cfg, attack_batch="auto")
    assert (R.attack_batch(auto), R.attack_chunk(auto), R.attack_chunk(dict(cfg, attack_batch=128))) == (None, 32, 32)
    for bad in (0, -4, 2.5, "fast", True, None):
        with pytest.raises(ValueError, match="attack_batch must be a positive integer or 'auto'"):
            R.attack_chunk(dict(cfg, attack_batch=bad))
    # "auto" reaches the searches as batch_size=None: they score at the batch utils.batching gives (pinned here)
    monkeypatch.setenv("MMER_INFERENCE_BATCH", "3")
    images = np.random.default_rng(0).integers(70, 110, (5, 8, 8, 3)).astype(np.uint8)
    pipes = {"toy": A.ClassifierPixelPipeline(_Brightness(), np.zeros(5, np.int64), 2)}
    runs = R.pixels_needed(pipes, images, np.arange(5), auto)
    assert R.members(auto)["black-box"]["batch_size"] is None
    assert runs["toy [black-box]"].reports[2].settings["batch_size"] == 3
    fixed = R.pixels_needed(pipes, images, np.arange(5), dict(auto, attack_batch=2))
    assert fixed["toy [black-box]"].reports[2].settings["batch_size"] == 2
    # attack_graph reaches the searches too, and a wrong one is refused by name
    assert cfg["attack_graph"] == "traced" == runs["toy [black-box]"].reports[2].settings["graph"]
    eager = R.pixels_needed(pipes, images, np.arange(5), dict(auto, attack_graph="eager"))
    assert eager["toy [black-box]"].reports[2].settings["graph"] == "eager"
    with pytest.raises(ValueError, match="graph one of \\['traced', 'eager'\\], got 'float32' and 'jit'"):
        R.pixels_needed(pipes, images, np.arange(5), dict(auto, attack_graph="jit"))


def test_precomputed_attacks_are_keyed_on_every_search_setting_and_the_search_code(monkeypatch):
    """A result computed with another search, budget, seed or search code must never be loaded in its place."""
    from utils import config, store

    images = np.random.default_rng(0).integers(70, 110, (4, 8, 8, 3)).astype(np.uint8)
    plain = A.ClassifierPixelPipeline(_Brightness(), np.zeros(4, np.int64), 2)
    cfg = config.load("flickr8k", "smoke", environ={})
    assert R.attack_key({"toy": plain}, images, np.arange(4), cfg) is None  # no key: always attacked in-process
    pipes = {"toy": R.keyed(plain, "toy")}
    key = R.attack_key(pipes, images, np.arange(4), cfg)
    assert R.attack_key(pipes, images, np.arange(4), dict(cfg, attack_threads=7)) == key  # threads change no result
    for change in (dict(attack_method="sparse"), dict(attack_steps=cfg["attack_steps"] + 1), dict(attack_seed=1),
                   dict(attack_restarts=2), dict(attack_queries=13), dict(pixels=[4, 255])):
        assert R.attack_key(pipes, images, np.arange(4), dict(cfg, **change)) != key, change
    assert R.attack_key({"toy": R.keyed(plain, "other model")}, images, np.arange(4), cfg) != key
    assert R.attack_key(pipes, images[::-1].copy(), np.arange(4), cfg) != key  # other photos
    monkeypatch.setattr(store, "code_digest", lambda *sources: "other search code")
    assert R.attack_key(pipes, images, np.arange(4), cfg) != key
