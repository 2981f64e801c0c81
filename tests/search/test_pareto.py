"""Pareto frontier, beam search and the exact reference solvers (Sec. 3.2.3)."""

import numpy as np
import pytest

from adatsq.search.exact import brute_force, dynamic_programming, integer_costs
from adatsq.search.pareto import (
    _relaxed_mean_bits,
    beam_search,
    fill_budget,
    lagrangian_price,
    min_mean_bits,
    pareto_front,
)


def reference_front(bits, loss):
    """O(n^2) definition: non-dominated points, the first of exact duplicates, ordered by bits."""
    n = len(bits)
    kept = []
    for k in range(n):
        dominated = any(
            bits[j] <= bits[k] and loss[j] <= loss[k] and (bits[j] < bits[k] or loss[j] < loss[k])
            for j in range(n))
        earlier_duplicate = any(bits[j] == bits[k] and loss[j] == loss[k] for j in range(k))
        if not dominated and not earlier_duplicate:
            kept.append(k)
    return sorted(kept, key=lambda k: (bits[k], loss[k]))


def random_instance(rng, T, M, layers=None):
    """(avg_bits, losses, budget); avg bits on the 1/layers grid when ``layers`` is given."""
    if layers is None:
        avg_bits = rng.uniform(3.0, 8.0, size=(T, M))
    else:
        avg_bits = rng.integers(3 * layers, 8 * layers + 1, size=(T, M)) / layers
    losses = rng.exponential(1.0, size=(T, M)) * np.exp(-avg_bits)  # more bits, lower loss
    lo, hi = min_mean_bits(avg_bits), avg_bits.max(axis=1).mean()
    return avg_bits, losses, float(rng.uniform(lo, hi))


def path_cost(avg_bits, losses, path):
    steps = np.arange(len(path))
    return losses[steps, path].sum(), avg_bits[steps, path].mean()


@pytest.mark.parametrize("n,span", [(1, 3), (12, 3), (40, 5), (200, 20), (300, 1000)])
def test_pareto_front_matches_quadratic_definition(n, span):
    rng = np.random.default_rng(n + span)
    for _ in range(20):
        bits = rng.integers(0, span, size=n).astype(float)  # small spans force ties, duplicates
        loss = rng.integers(0, span, size=n).astype(float)
        assert pareto_front(bits, loss).tolist() == reference_front(bits, loss)


def test_pareto_front_rejects_bad_input():
    assert pareto_front(np.zeros(0), np.zeros(0)).size == 0
    with pytest.raises(ValueError):
        pareto_front(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError):
        pareto_front(np.array([1.0, np.nan]), np.zeros(2))


@pytest.mark.parametrize("layers", [None, 4])
@pytest.mark.parametrize("keep", ["origin", "lagrangian"])
def test_untruncated_beam_equals_brute_force(layers, keep):
    """With a beam wide enough to hold every frontier, the search is exact (200 instances)."""
    rng = np.random.default_rng(0 if layers is None else layers)
    for _ in range(200):
        T, M = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        avg_bits, losses, budget = random_instance(rng, T, M, layers)
        _, best_loss, _ = brute_force(avg_bits, losses, budget)
        result = beam_search(avg_bits, losses, beam_width=M**T, budget=budget, keep=keep)
        assert not result.truncated
        assert result.best_loss == pytest.approx(best_loss, rel=1e-12, abs=1e-15)
        assert result.best_mean_bits <= budget + 1e-9
        # The exactness condition is the frontier size, not the beam width as such.
        tight = beam_search(avg_bits, losses, beam_width=result.max_front_size, budget=budget,
                            keep=keep)
        assert not tight.truncated and tight.best_loss == pytest.approx(best_loss, rel=1e-12)
        literal = beam_search(avg_bits, losses, M**T, budget, prune_infeasible=False, keep=keep)
        assert literal.best_loss == pytest.approx(best_loss, rel=1e-12, abs=1e-15)


def test_search_result_is_consistent():
    rng = np.random.default_rng(1)
    avg_bits, losses, budget = random_instance(rng, T=12, M=6, layers=10)
    result = beam_search(avg_bits, losses, beam_width=6, budget=budget)
    P = result.paths.shape[0]
    assert result.paths.shape == (P, 12) and 1 <= P <= 6
    assert np.all(np.diff(result.mean_bits) > 0) and np.all(np.diff(result.total_loss) < 0)
    for path, loss, mean_bits in zip(result.paths, result.total_loss, result.mean_bits):
        assert path_cost(avg_bits, losses, path) == pytest.approx((loss, mean_bits), rel=1e-12)
    assert result.feasible.all()  # budget pruning leaves only completable paths
    assert result.best_loss == result.total_loss[result.feasible].min()


def test_dynamic_programming_equals_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(200):
        T, M, layers = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 9))
        avg_bits, losses, budget = random_instance(rng, T, M, layers)
        path, loss, mean_bits = brute_force(avg_bits, losses, budget)
        dp_path, dp_loss, dp_mean_bits = dynamic_programming(avg_bits, losses, budget)
        assert dp_loss == pytest.approx(loss, rel=1e-12)
        assert dp_path.tolist() == path.tolist()  # continuous losses: the optimum is unique
        assert dp_mean_bits == pytest.approx(mean_bits, rel=1e-12)
        assert dp_mean_bits <= budget + 1e-9


def test_dynamic_programming_equals_untruncated_beam_on_a_long_horizon():
    rng = np.random.default_rng(3)
    avg_bits, losses, _ = random_instance(rng, T=20, M=6, layers=10)
    lowest = min_mean_bits(avg_bits)
    for budget in (lowest, lowest + 0.3, lowest + 1.05, 8.0):
        _, dp_loss, _ = dynamic_programming(avg_bits, losses, budget, denominator=10)
        result = beam_search(avg_bits, losses, beam_width=10**6, budget=budget)
        assert not result.truncated
        assert result.best_loss == pytest.approx(dp_loss, rel=1e-12)


def test_integer_costs():
    costs, d = integer_costs(np.array([[3.0, 3.25], [35 / 9, 4.0]]))
    assert d == 36 and costs.tolist() == [[108, 117], [140, 144]]
    with pytest.raises(ValueError, match="integer multiples"):
        integer_costs(np.array([[3.0, 3.1]]), denominator=4)


@pytest.mark.parametrize("keep", ["origin", "lagrangian"])
def test_narrow_beam_is_feasible_and_never_below_optimum(keep, record_property):
    """Truncated searches stay feasible; the measured gap to the optimum is recorded, not tuned."""
    rng = np.random.default_rng(4)
    gaps = []
    for _ in range(100):
        avg_bits, losses, budget = random_instance(rng, T=8, M=4, layers=6)
        _, optimum, _ = dynamic_programming(avg_bits, losses, budget)
        result = beam_search(avg_bits, losses, beam_width=4, budget=budget, keep=keep)
        assert result.best_mean_bits <= budget + 1e-9
        assert result.best_loss >= optimum * (1 - 1e-12)
        gaps.append(result.best_loss / optimum - 1)
    record_property(f"median_relative_gap_{keep}", float(np.median(gaps)))
    record_property(f"max_relative_gap_{keep}", float(np.max(gaps)))


def test_lagrangian_beam_is_no_worse_than_the_relaxed_path():
    rng = np.random.default_rng(5)
    for _ in range(100):
        avg_bits, losses, budget = random_instance(rng, T=10, M=5, layers=8)
        price = lagrangian_price(avg_bits, losses, budget)
        relaxed = np.lexsort((avg_bits, losses + price * avg_bits), axis=-1)[:, 0]
        relaxed_loss, relaxed_bits = path_cost(avg_bits, losses, relaxed)
        assert relaxed_bits == pytest.approx(_relaxed_mean_bits(avg_bits, losses, price))
        assert relaxed_bits <= budget + 1e-9
        # A least price: no other price gives a feasible relaxed path of lower loss.
        for other in price * np.logspace(-4, 2, 61):
            path = np.lexsort((avg_bits, losses + other * avg_bits), axis=-1)[:, 0]
            loss, bits = path_cost(avg_bits, losses, path)
            assert bits > budget + 1e-9 or loss >= relaxed_loss * (1 - 1e-12)
        result = beam_search(avg_bits, losses, beam_width=2, budget=budget, keep="lagrangian")
        assert result.best_loss <= relaxed_loss * (1 + 1e-12)


def test_infeasible_budget_raises_with_the_minimum():
    avg_bits = np.array([[3.0, 8.0], [4.0, 8.0]])
    losses = np.ones((2, 2))
    for solve in (lambda: beam_search(avg_bits, losses, 2, budget=3.4),
                  lambda: brute_force(avg_bits, losses, 3.4),
                  lambda: dynamic_programming(avg_bits, losses, 3.4)):
        with pytest.raises(ValueError, match="minimum achievable average is 3.5 bits"):
            solve()
    assert beam_search(avg_bits, losses, 2, budget=3.5).best_path.tolist() == [0, 0]


def test_bad_arguments_raise():
    avg_bits, losses = np.full((2, 2), 4.0), np.ones((2, 2))
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(avg_bits, losses, 0, 4.0)
    with pytest.raises(ValueError, match="keep"):
        beam_search(avg_bits, losses, 2, 4.0, keep="nearest")
    with pytest.raises(ValueError, match="equal shape"):
        beam_search(avg_bits, losses[:1], 2, 4.0)


def test_fill_budget_spends_the_remainder_and_never_hurts():
    rng = np.random.default_rng(5)
    for _ in range(50):
        T, M = int(rng.integers(1, 8)), int(rng.integers(1, 6))
        bits = rng.uniform(3, 8, size=(T, M))
        losses = rng.uniform(0, 1, size=(T, M))
        budget = float(rng.uniform(bits.min(axis=1).mean(), bits.mean()))
        start = bits.argmin(axis=1)  # (T,) the cheapest path, feasible
        path = fill_budget(start, bits, losses, budget)
        steps = np.arange(T)
        spent = bits[steps, path].sum()
        assert spent <= T * budget + 1e-9
        assert losses[steps, path].sum() <= losses[steps, start].sum()
        # no single upgrade that lowers the loss still fits
        spare = T * budget - spent
        dB = bits - bits[steps, path][:, None]
        dE = losses[steps, path][:, None] - losses
        assert not ((dB > 0) & (dE > 0) & (dB <= spare - 1e-9)).any()
    with pytest.raises(ValueError, match="already exceeds"):
        fill_budget(np.array([1]), np.array([[3.0, 4.0]]), np.array([[1.0, 0.0]]), budget=3.5)


def test_origin_truncation_keeps_the_frontiers_knee_by_hand():
    """One step, five candidates on a convex frontier, a beam of two. Min-max scaled,
    bits (3..7) -> b' = 0, .25, .5, .75, 1 and losses (10, 4, 2, 1, 0) -> e' = 1, .4, .2, .1, 0:
    distances to the origin 1, .47, .54, .76, 1, so candidates 1 and 2 are kept (keeping the
    farthest would keep the two ends; distances without the shift by the minimum, 1.25, 1.08,
    1.27, 1.50, 1.75, would keep 0 and 1)."""
    avg_bits = np.array([[3.0, 4.0, 5.0, 6.0, 7.0]])
    losses = np.array([[10.0, 4.0, 2.0, 1.0, 0.0]])
    result = beam_search(avg_bits, losses, beam_width=2, budget=8.0, keep="origin")
    assert result.truncated and result.max_front_size == 5
    assert result.paths.tolist() == [[1], [2]]
    assert result.best_path.tolist() == [2] and result.best_loss == 2.0


def test_origin_truncation_decides_the_best_path_by_hand():
    """Two steps, beam 2, budget 6 mean bits (12 in total). Step 0 as above keeps (B, E) = (4, 4)
    and (5, 2). Step 1 offers (3 bits, loss 5) or (7, 0): the extensions (7, 9), (8, 7), (11, 4),
    (12, 2) are all on the frontier; scaled, b' = 0, .2, .8, 1 and e' = 1, 5/7, 2/7, 0, at
    distances 1, .74, .85, 1: (8, 7) and (11, 4) are kept and the best is path [1, 1] (loss 4,
    5.5 mean bits), not the optimum (12, 2). Keeping the farthest paths instead keeps candidates
    0 and 4 at step 0 and ends with [4, 0] (loss 5); unscaled distances end with [2, 0]
    (loss 7)."""
    avg_bits = np.array([[3.0, 4.0, 5.0, 6.0, 7.0], [3.0, 7.0, 7.0, 7.0, 7.0]])
    losses = np.array([[10.0, 4.0, 2.0, 1.0, 0.0], [5.0, 0.0, 0.0, 0.0, 0.0]])
    result = beam_search(avg_bits, losses, beam_width=2, budget=6.0, keep="origin")
    assert result.truncated
    assert result.paths.tolist() == [[2, 0], [1, 1]]
    assert result.total_loss.tolist() == [7.0, 4.0] and result.mean_bits.tolist() == [4.0, 5.5]
    assert result.best_path.tolist() == [1, 1] and result.best_loss == 4.0
    # the truncation decided: it cut (12, 2), the optimum [2, 1] a wide beam finds
    path, optimum, _ = dynamic_programming(avg_bits, losses, 6.0)
    assert path.tolist() == [2, 1] and optimum == 2.0
    wide = beam_search(avg_bits, losses, beam_width=10, budget=6.0)
    assert not wide.truncated and wide.best_path.tolist() == [2, 1]
