"""Paired differences: hand-computed values, the variance pairing removes, strata, verdicts."""

import numpy as np
import pytest

from adatsq.eval.paired import Z95, paired_difference, verdict


def test_matches_the_hand_computed_paired_standard_error():
    a, b = [1, 1, 0, 1, 0], [0, 1, 0, 0, 0]
    d = np.array(a) - np.array(b)
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(0.4)
    assert r["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(5))
    assert r["lo"] == pytest.approx(0.4 - Z95 * r["se"]) and r["hi"] > r["diff"]


def test_pairing_removes_the_shared_variance():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, 400)  # shared by both configurations (prompt, seed)
    a = difficulty + 0.1 + rng.normal(0, 0.05, 400)
    b = difficulty + rng.normal(0, 0.05, 400)
    r = paired_difference(a, b)
    unpaired = np.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 400)
    assert r["se"] < unpaired / 10
    assert verdict(r) == "beats"  # the unpaired interval (±0.14) would call it a tie
    assert abs(0.1) < Z95 * unpaired


def test_stratified_difference_is_the_mean_of_group_differences():
    # group x: 2 prompts, difference 1 each; group y: 4 prompts, difference 0
    a, b = [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]
    strata = ["x", "x", "y", "y", "y", "y"]
    assert paired_difference(a, b, strata)["diff"] == pytest.approx(0.5)
    assert paired_difference(a, b)["diff"] == pytest.approx(2 / 6)


def test_verdicts_follow_the_interval():
    assert verdict({"lo": 0.01, "hi": 0.2}) == "beats"
    assert verdict({"lo": -0.2, "hi": -0.01}) == "loses"
    assert verdict({"lo": -0.1, "hi": 0.1}) == "ties"
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert same["se"] == 0 and verdict(same) == "ties"


@pytest.mark.parametrize("a, b", [([1, 2], [1]), ([], []), ([1, np.nan], [0, 0])])
def test_bad_input_is_refused(a, b):
    with pytest.raises(ValueError):
        paired_difference(a, b)
