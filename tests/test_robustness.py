"""utils/robustness.py: who is attacked, and the tables built from pixels-needed results, against plain references."""
from math import comb

import numpy as np
import pytest
from scipy.stats import binomtest

from utils import robustness as R
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
    sentence = R.paired_sentence(tests.reset_index(), "a", "b")
    assert "at 1 pixels" in sentence and "no detectable difference" in sentence  # 4 vs 1 discordant: p = 0.375


def test_paired_sentence_names_the_model_fooled_less_often():
    a = needed([1] * 12 + [-1] * 2)
    b = needed([-1] * 12 + [-1] * 2)
    tests = R.paired_attack_tests({"a": a, "b": b}, [("a", "b")])
    assert R.paired_sentence(tests, "a", "b").endswith("b is fooled less often")
    assert R.paired_sentence(R.paired_attack_tests({"a": b, "b": a}, [("a", "b")]), "a", "b").endswith(
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
