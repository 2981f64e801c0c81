"""Reference optima of Eq. 3, to check the beam search against.

Both solvers pick one candidate per timestep to minimize the summed loss subject to mean bits
``<= budget``, for the same (T, M) inputs as :func:`adatsq.search.pareto.beam_search`. Among paths
of equal loss both return one of least bits; :func:`brute_force` then the lexicographically first.

* :func:`brute_force` enumerates all ``M^T`` paths (tiny instances only).
* :func:`dynamic_programming` runs over (timestep, cumulative bits) with exact integer bits. Average
  bits of candidates are rationals (``sum_l b_l / L`` for integer per-layer bits), so scaling by a
  common denominator ``d`` (``L`` for uniform layer averaging) makes every cost an integer, and the
  budget test ``sum_t cost_t <= floor(T * d * budget)`` is exact.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np

from adatsq.search.pareto import BUDGET_TOLERANCE, check_budget, check_search_inputs

MAX_BRUTE_FORCE_PATHS = 2_000_000
MAX_DENOMINATOR = 100_000


def brute_force(avg_bits: np.ndarray, losses: np.ndarray,
                budget: float) -> tuple[np.ndarray, float, float]:
    """Optimal path of Eq. 3 by enumerating every path.

    Args:
        avg_bits: (T, M) average bit width of candidate ``c`` at timestep ``t``.
        losses: (T, M) step loss of candidate ``c`` at timestep ``t``.
        budget: largest allowed mean bit width.

    Returns:
        ``(path, loss, mean_bits)``: (T,) candidate indices, their summed loss and mean bits.

    Raises:
        ValueError: if the budget is infeasible or ``M^T`` exceeds :data:`MAX_BRUTE_FORCE_PATHS`.

    Example:
        >>> path, loss, mean_bits = brute_force(np.array([[3.0, 8.0], [3.0, 8.0]]),
        ...                                     np.array([[5.0, 0.0], [1.0, 0.0]]), budget=5.5)
        >>> path.tolist(), loss, mean_bits
        ([1, 0], 1.0, 5.5)
    """
    avg_bits, losses = check_search_inputs(avg_bits, losses)
    check_budget(avg_bits, budget)
    T, M = avg_bits.shape
    if M**T > MAX_BRUTE_FORCE_PATHS:
        raise ValueError(f"{M}^{T} paths exceed the brute-force limit of {MAX_BRUTE_FORCE_PATHS}")
    paths = np.array(list(itertools.product(range(M), repeat=T)), dtype=np.int64)  # (M^T, T)
    steps = np.arange(T)  # (T,)
    mean_bits = avg_bits[steps, paths].sum(axis=1) / T  # (M^T,)
    total_loss = losses[steps, paths].sum(axis=1)  # (M^T,)
    feasible = np.flatnonzero(mean_bits <= budget + BUDGET_TOLERANCE)
    # lexsort is stable and product() enumerates paths in lexicographic order.
    best = feasible[np.lexsort((mean_bits[feasible], total_loss[feasible]))[0]]
    return paths[best], float(total_loss[best]), float(mean_bits[best])


def integer_costs(avg_bits: np.ndarray, denominator: int | None = None) -> tuple[np.ndarray, int]:
    """Average bits as exact integers ``avg_bits * denominator``.

    Args:
        avg_bits: (T, M) average bit widths, each a rational ``k / d``.
        denominator: the common denominator ``d`` (e.g. the number of layers ``L``); when None, the
            least common denominator of the entries is inferred (each up to
            :data:`MAX_DENOMINATOR`).

    Returns:
        ``(costs, denominator)``: (T, M) int64 costs and the denominator used.

    Raises:
        ValueError: if some ``avg_bits * denominator`` is not an integer (to 1e-6).

    Example:
        >>> costs, d = integer_costs(np.array([[3.0, 3.5, 11 / 3]]))
        >>> costs.tolist(), d
        ([[18, 21, 22]], 6)
    """
    avg_bits = np.asarray(avg_bits, dtype=np.float64)
    if denominator is None:
        denominator = 1
        for value in np.unique(avg_bits):
            fraction = Fraction(float(value)).limit_denominator(MAX_DENOMINATOR)
            denominator = math.lcm(denominator, fraction.denominator)
    if int(denominator) != denominator or denominator < 1:
        raise ValueError(f"denominator must be a positive integer, got {denominator!r}")
    scaled = avg_bits * denominator  # (T, M)
    costs = np.rint(scaled)  # (T, M)
    if np.abs(scaled - costs).max(initial=0.0) > 1e-6:
        raise ValueError(f"avg_bits are not integer multiples of 1/{denominator}; pass the common "
                         f"denominator (e.g. the number of layers) explicitly")
    return costs.astype(np.int64), int(denominator)


def dynamic_programming(avg_bits: np.ndarray, losses: np.ndarray, budget: float,
                        denominator: int | None = None) -> tuple[np.ndarray, float, float]:
    """Optimal path of Eq. 3 by dynamic programming over cumulative integer bits.

    ``D_t[c]`` is the least loss of a length-``t`` prefix whose integer bits sum to ``c`` (offset
    by the cheapest candidates, so states only count the bits spent above the minimum):
    ``D_t[c] = min_m D_{t-1}[c - cost[t, m]] + losses[t, m]``. Time and memory are
    ``O(T * M * C)`` with ``C`` the number of integer bit totals within the budget.

    Args:
        avg_bits: (T, M) average bit width of candidate ``c`` at timestep ``t``.
        losses: (T, M) step loss of candidate ``c`` at timestep ``t``.
        budget: largest allowed mean bit width.
        denominator: common denominator of ``avg_bits`` (see :func:`integer_costs`).

    Returns:
        ``(path, loss, mean_bits)``: (T,) candidate indices, their summed loss and mean bits.

    Raises:
        ValueError: if the budget is infeasible or ``avg_bits`` are not on the integer grid.

    Example:
        >>> path, loss, mean_bits = dynamic_programming(np.array([[3.0, 8.0], [3.0, 8.0]]),
        ...                                             np.array([[5.0, 0.0], [1.0, 0.0]]), 5.5)
        >>> path.tolist(), loss, mean_bits
        ([1, 0], 1.0, 5.5)
    """
    avg_bits, losses = check_search_inputs(avg_bits, losses)
    check_budget(avg_bits, budget)
    costs, denominator = integer_costs(avg_bits, denominator)  # (T, M)
    T, M = costs.shape
    base = costs.min(axis=1)  # (T,)
    extra = costs - base[:, None]  # (T, M) integer bits above the cheapest candidate
    capacity = math.floor(T * denominator * (budget + BUDGET_TOLERANCE)) - int(base.sum())
    if capacity < 0:  # only when the budget sits within float error below the minimum
        raise ValueError(f"budget of {budget:g} average bits is infeasible on the 1/{denominator} "
                         f"grid")
    width = min(capacity, int(extra.max(axis=1).sum())) + 1

    D = np.full(width, np.inf)  # (C,)
    D[0] = 0.0
    choice = np.zeros((T, width), dtype=np.int64)  # (T, C)
    for t in range(T):
        shifted = np.full((M, width), np.inf)  # (M, C)
        for m in range(M):
            k = extra[t, m]
            if k < width:
                shifted[m, k:] = D[: width - k] + losses[t, m]
        choice[t] = np.argmin(shifted, axis=0)  # first m on ties
        D = shifted[choice[t], np.arange(width)]  # (C,)

    end = int(np.argmin(D))  # least loss, then least bits
    path = np.zeros(T, dtype=np.int64)  # (T,)
    for t in range(T - 1, -1, -1):
        path[t] = choice[t, end]
        end -= extra[t, path[t]]
    steps = np.arange(T)
    mean_bits = float(costs[steps, path].sum()) / (T * denominator)
    return path, float(losses[steps, path].sum()), mean_bits
