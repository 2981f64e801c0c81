"""Pareto frontier and the Pareto-optimal beam search over timestep paths (Sec. 3.2.3, Eqs. 3-5).

A *path* picks one candidate configuration ``c_t`` per timestep. With per-candidate average bits
``avg_bits[t, c]`` and step losses ``losses[t, c]`` (the MSE of Eq. 2), a path accumulates

    E_t = E_{t-1} + losses[t, c_t]        (Eq. 4, cumulative loss)
    B_t = B_{t-1} + avg_bits[t, c_t]      (Eq. 5, cumulative bits)

and Eq. 3 asks for the path of least ``E_T`` with mean bits ``B_T / T <= B_target``. (Eq. 3 averages
over the ``T * L`` layer-steps; ``avg_bits[t, c]`` is already the mean over the ``L`` layers, so the
two constraints coincide.) Nothing here assumes the candidate set is the same at every timestep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUDGET_TOLERANCE = 1e-9
"""Slack on mean bits when testing ``mean_bits <= budget``; absorbs float summation error only."""


def pareto_front(bits: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points when minimizing both ``bits`` and ``loss``.

    Point ``j`` dominates ``k`` if ``bits[j] <= bits[k]`` and ``loss[j] <= loss[k]`` with at least
    one strict inequality. Of several exact duplicates (equal bits and equal loss) only the one with
    the smallest index is kept, so the result is deterministic and has no repeated point.

    Args:
        bits: (n,) first objective, e.g. cumulative bits of each path.
        loss: (n,) second objective, e.g. cumulative loss of each path.

    Returns:
        (k,) int indices into the inputs, ordered by increasing bits (hence strictly decreasing
        loss).

    Example:
        >>> pareto_front(np.array([1.0, 2.0, 2.0, 3.0]), np.array([5.0, 1.0, 4.0, 1.0])).tolist()
        [0, 1]
    """
    bits = np.asarray(bits, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if bits.ndim != 1 or bits.shape != loss.shape:
        raise ValueError(f"bits and loss must be 1-D of equal length, got {bits.shape} and "
                         f"{loss.shape}")
    if not (np.isfinite(bits).all() and np.isfinite(loss).all()):
        raise ValueError("bits and loss must be finite")
    return _front(bits, loss)


def _front(bits: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """:func:`pareto_front` without input checks, for the search loop."""
    if bits.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Sorted by (bits, loss, index), a point survives iff its loss is strictly below every loss
    # before it: an earlier point has bits <= and, failing that test, loss <= (a duplicate or
    # a dominator).
    order = np.lexsort((loss, bits))  # (n,) stable, so equal points stay in index order
    sorted_loss = loss[order]  # (n,)
    best_before = np.minimum.accumulate(sorted_loss)  # (n,)
    survives = np.empty(bits.size, dtype=bool)  # (n,)
    survives[0] = True
    survives[1:] = sorted_loss[1:] < best_before[:-1]
    return order[survives]


@dataclass(frozen=True)
class SearchResult:
    """The paths that survive the beam search, ordered by increasing mean bits.

    Attributes:
        paths: (P, T) candidate index chosen at every timestep, one row per surviving path.
        mean_bits: (P,) ``B_T / T``, the average bit width of each path.
        total_loss: (P,) ``E_T``, the summed step loss of each path.
        feasible: (P,) whether ``mean_bits <= budget`` (up to :data:`BUDGET_TOLERANCE`).
        best: row of ``paths`` with the least loss among the feasible ones.
        budget: the target average bit width ``B_target``.
        truncated: whether the frontier ever exceeded the beam width and was cut. When False the
            search was exact: ``paths[best]`` is a global optimum of Eq. 3.
        max_front_size: the largest frontier met (after budget pruning, before truncation).
    """

    paths: np.ndarray
    mean_bits: np.ndarray
    total_loss: np.ndarray
    feasible: np.ndarray
    best: int
    budget: float
    truncated: bool
    max_front_size: int

    @property
    def best_path(self) -> np.ndarray:
        """(T,) candidate index per timestep of the best feasible path."""
        return self.paths[self.best]

    @property
    def best_loss(self) -> float:
        """Total loss of the best feasible path."""
        return float(self.total_loss[self.best])

    @property
    def best_mean_bits(self) -> float:
        """Mean bits of the best feasible path."""
        return float(self.mean_bits[self.best])


def check_search_inputs(avg_bits: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``avg_bits`` and ``losses`` as float64 (T, M) arrays, or ``ValueError``."""
    avg_bits = np.asarray(avg_bits, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if avg_bits.ndim != 2 or avg_bits.shape != losses.shape or 0 in avg_bits.shape:
        raise ValueError(f"avg_bits and losses must be non-empty (T, M) arrays of equal shape, got "
                         f"{avg_bits.shape} and {losses.shape}")
    if not (np.isfinite(avg_bits).all() and np.isfinite(losses).all()):
        raise ValueError("avg_bits and losses must be finite")
    return avg_bits, losses


def min_mean_bits(avg_bits: np.ndarray) -> float:
    """Least achievable mean bits: the cheapest candidate at every step of ``avg_bits`` (T, M)."""
    avg_bits = np.asarray(avg_bits, dtype=np.float64)
    return float(avg_bits.min(axis=1).mean())


def check_budget(avg_bits: np.ndarray, budget: float) -> None:
    """Raises a one-line ``ValueError`` if no path of ``avg_bits`` (T, M) meets ``budget``."""
    lowest = min_mean_bits(avg_bits)
    if lowest > budget + BUDGET_TOLERANCE:
        raise ValueError(f"budget of {budget:g} average bits is infeasible: the minimum achievable "
                         f"average is {lowest:.6g} bits")


KEEP_RULES = ("origin", "lagrangian")


def beam_search(avg_bits: np.ndarray, losses: np.ndarray, beam_width: int, budget: float,
                prune_infeasible: bool = True, keep: str = "origin") -> SearchResult:
    """Pareto-optimal beam search for the timestep path of Eq. 3.

    Starting from the empty path, every kept path is extended by every candidate of timestep ``t``
    (Eqs. 4-5); of these ``P * M`` paths the Pareto frontier in the (bits, loss) plane is kept, and
    when it holds more than ``beam_width`` paths, the ``beam_width`` closest to the origin of a
    normalized plane, chosen by ``keep``:

    * ``"origin"`` (the paper's rule, literally): min-max scaling of the current frontier,
      ``b' = (B - min B) / (max B - min B)`` and ``e' = (E - min E) / (max E - min E)``
      (nonzero ranges: a frontier of two or more paths has distinct bits and losses), Euclidean
      distance. The origin is the frontier's ideal point, both axes weigh equally whatever their
      units, and the kept paths are the frontier's knee. The rule ignores the budget, so on long
      horizons the beam drifts to cheap paths well below it.
    * ``"lagrangian"``: bits are priced in loss units by the budget's dual price ``lambda*``
      (:func:`lagrangian_price`: a least ``lambda`` for which the relaxation
      ``min sum_t losses[t, c] + lambda avg_bits[t, c]``, one independent choice per step, meets
      the budget); the distance is the L1 norm ``E + lambda* B``, whose level lines are parallel
      to the budget's supporting line. The prefixes of that relaxed path minimize
      ``E_t + lambda* B_t`` among all prefixes, so (barring float near-ties) they are never cut
      and the result is never worse than the relaxed path, the classic Lagrangian heuristic; the
      beam refines it near the budget.

    Ties in distance are broken by bits, then loss, then position.

    *Budget pruning* (``prune_infeasible``, exact and safe). A partial path with cumulative bits
    ``B_t`` can at best finish with ``B_t + sum_{s > t} min_c avg_bits[s, c]``; if that exceeds
    ``T * budget`` no completion is feasible and the path is dropped before the frontier is formed.
    No feasible path is ever lost this way, and every survivor can still be completed within the
    budget, so the search always ends with a feasible path.

    *Exactness.* If the frontier never exceeds ``beam_width`` (``result.truncated`` is False), the
    search returns a global optimum. Proof: let ``P*`` be optimal. Invariant: after step ``t`` some
    kept prefix ``q`` has ``B(q) <= B(P*[:t])`` and ``E(q) <= E(P*[:t])``; it holds for the empty
    prefix. Extending ``q`` by ``P*``'s candidate at ``t + 1`` gives a path no worse in either
    objective than ``P*[:t + 1]``; it can still be completed feasibly (with ``P*``'s suffix), so
    budget pruning keeps it, and it is either on the new frontier or dominated by (or a duplicate
    of) a frontier path that is no worse still. Without truncation that path is kept. At ``t = T``
    the kept path ``q`` has bits ``<= B(P*)``, so it is feasible, and loss ``<= E(P*)``. The
    argument needs only that both objectives are sums over timesteps (Eqs. 4-5).

    Args:
        avg_bits: (T, M) average bit width of candidate ``c`` at timestep ``t``.
        losses: (T, M) step loss (Eq. 2) of candidate ``c`` at timestep ``t``.
        beam_width: most paths kept per step (the paper uses ``M``).
        budget: ``B_target``, the largest allowed mean bit width of a path.
        prune_infeasible: drop partial paths that can no longer meet the budget (see above).
            Without it the search follows the paper literally and may end with no feasible path.
        keep: which frontier paths survive truncation, ``"origin"`` or ``"lagrangian"``.

    Returns:
        The surviving paths with their mean bits, total losses, feasibility and the best one.

    Raises:
        ValueError: if the budget is below the minimum achievable mean bits (the message gives
            that minimum), or, with ``prune_infeasible=False``, if no surviving path meets it.

    Example:
        >>> avg_bits = np.array([[3.0, 4.0, 8.0], [3.0, 4.0, 8.0]])
        >>> losses = np.array([[9.0, 3.0, 0.0], [1.0, 0.5, 0.0]])
        >>> result = beam_search(avg_bits, losses, beam_width=3, budget=4.0)
        >>> result.best_path.tolist(), result.best_loss, result.best_mean_bits
        ([1, 1], 3.5, 4.0)
    """
    avg_bits, losses = check_search_inputs(avg_bits, losses)
    if int(beam_width) != beam_width or beam_width < 1:
        raise ValueError(f"beam_width must be a positive integer, got {beam_width!r}")
    if not np.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget!r}")
    if keep not in KEEP_RULES:
        raise ValueError(f"unknown keep rule {keep!r}; use one of {', '.join(KEEP_RULES)}")
    check_budget(avg_bits, budget)
    T, M = avg_bits.shape
    beam_width = int(beam_width)
    total_budget = T * (budget + BUDGET_TOLERANCE)
    cheapest = avg_bits.min(axis=1)  # (T,)
    cheapest_after = np.concatenate((np.cumsum(cheapest[::-1])[::-1][1:], [0.0]))  # (T,)
    price = lagrangian_price(avg_bits, losses, budget) if keep == "lagrangian" else 0.0

    parents = []  # per step, (P,) row of the previous beam each kept path extends
    choices = []  # per step, (P,) candidate each kept path appends
    B = np.zeros(1)  # (P,)
    E = np.zeros(1)  # (P,)
    truncated = False
    max_front_size = 1
    for t in range(T):
        B_next = (B[:, None] + avg_bits[t]).ravel()  # (P * M,) row-major: parent * M + candidate
        E_next = (E[:, None] + losses[t]).ravel()  # (P * M,)
        if prune_infeasible:
            alive = np.flatnonzero(B_next + cheapest_after[t] <= total_budget)  # (A,)
            keep_rows = alive[_front(B_next[alive], E_next[alive])]  # (F,)
        else:
            keep_rows = _front(B_next, E_next)  # (F,)
        max_front_size = max(max_front_size, keep_rows.size)
        if keep_rows.size > beam_width:
            truncated = True
            B_front, E_front = B_next[keep_rows], E_next[keep_rows]  # (F,), (F,)
            if keep == "origin":
                # Along the frontier bits rise and loss falls strictly, so the ranges are nonzero.
                b = (B_front - B_front[0]) / (B_front[-1] - B_front[0])  # (F,)
                e = (E_front - E_front[-1]) / (E_front[0] - E_front[-1])  # (F,)
                distance = np.hypot(b, e)  # (F,)
            else:
                distance = E_front + price * B_front  # (F,)
            # The frontier is sorted by bits then loss, so a stable sort settles ties that way.
            keep_rows = keep_rows[np.sort(np.argsort(distance, kind="stable")[:beam_width])]
        parent, candidate = np.divmod(keep_rows, M)
        parents.append(parent)
        choices.append(candidate)
        B, E = B_next[keep_rows], E_next[keep_rows]

    paths = np.zeros((B.size, T), dtype=np.int64)  # (P, T)
    row = np.arange(B.size)  # (P,)
    for t in range(T - 1, -1, -1):
        paths[:, t] = choices[t][row]
        row = parents[t][row]
    mean_bits = B / T  # (P,) already sorted by bits, the frontier's order
    feasible = mean_bits <= budget + BUDGET_TOLERANCE  # (P,)
    if not feasible.any():
        raise ValueError(f"no surviving path meets the budget of {budget:g} average bits (the "
                         f"lowest reached {mean_bits.min():.6g}); raise beam_width or prune "
                         f"infeasible paths")
    feasible_rows = np.flatnonzero(feasible)
    best = int(feasible_rows[np.argmin(E[feasible_rows])])
    return SearchResult(paths=paths, mean_bits=mean_bits, total_loss=E, feasible=feasible,
                        best=best, budget=float(budget), truncated=truncated,
                        max_front_size=int(max_front_size))


def lagrangian_price(avg_bits: np.ndarray, losses: np.ndarray, budget: float) -> float:
    """The budget's dual price: a least ``lambda >= 0`` whose relaxed path meets ``budget``.

    The relaxed path picks, independently at every step, the candidate minimizing
    ``losses[t, c] + lambda * avg_bits[t, c]``. It changes only at breakpoints ``lambda`` where two
    candidates of a step tie, so it is constant between consecutive breakpoints, and its mean bits
    fall as ``lambda`` grows. The result lies inside the first interval whose relaxed path meets
    the budget (its midpoint; past the last breakpoint, twice it), away from ties, so float rounding
    cannot decide which candidate a step picks; any price in that interval gives the same path.

    Args:
        avg_bits: (T, M) average bit width of each candidate.
        losses: (T, M) step loss of each candidate.
        budget: largest allowed mean bit width (must be feasible).

    Returns:
        A price in loss units per bit.

    Example:
        >>> lagrangian_price(np.array([[3.0, 4.0, 8.0]]), np.array([[9.0, 3.0, 0.0]]), 4.0)
        1.275
    """
    avg_bits, losses = check_search_inputs(avg_bits, losses)
    check_budget(avg_bits, budget)
    dB = avg_bits[:, None, :] - avg_bits[:, :, None]  # (T, M, M) bits of j over i
    dE = losses[:, :, None] - losses[:, None, :]  # (T, M, M) loss of i over j
    trade = (dB > 0) & (dE > 0)  # (T, M, M) j buys a lower loss with more bits
    breakpoints = np.unique(np.concatenate(([0.0], dE[trade] / dB[trade])))  # (K,)
    last = 2 * breakpoints[-1] if breakpoints[-1] > 0 else 1.0
    prices = (breakpoints + np.append(breakpoints[1:], last)) / 2  # (K,) one inside each interval
    # The last interval selects the cheapest candidate of every step, which meets the budget.
    lo, hi = -1, prices.size - 1  # invariant: prices[lo] overspends (or lo = -1), prices[hi] not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _relaxed_mean_bits(avg_bits, losses, prices[mid]) <= budget + BUDGET_TOLERANCE:
            hi = mid
        else:
            lo = mid
    return float(prices[hi])


def _relaxed_mean_bits(avg_bits: np.ndarray, losses: np.ndarray, price: float) -> float:
    """Mean bits of the per-step minimizers of ``loss + price * bits`` (ties to fewer bits)."""
    first = np.lexsort((avg_bits, losses + price * avg_bits), axis=-1)[:, 0]  # (T,)
    return float(avg_bits[np.arange(avg_bits.shape[0]), first].mean())



def fill_budget(path: np.ndarray, avg_bits: np.ndarray, losses: np.ndarray,
                budget: float) -> np.ndarray:
    """Spends what a path leaves of the budget: greedy upgrades that lower its loss.

    While some step can switch to a candidate with more bits and a lower loss that still fits the
    remaining budget ``T * budget - B_T``, the switch with the largest loss decrease per added bit
    is made. The path never gets worse (its loss only falls) and stays feasible; it stops when
    no upgrade fits, so the unspent remainder is below the cheapest upgrade left.

    Args:
        path: (T,) candidate index per step of a feasible path.
        avg_bits: (T, M) average bit width of each candidate.
        losses: (T, M) step loss of each candidate.
        budget: the largest allowed mean bit width.

    Returns:
        (T,) the filled path (a new array).

    Example:
        >>> avg_bits = np.array([[3.0, 3.5, 4.0], [3.0, 3.5, 4.0]])
        >>> losses = np.array([[4.0, 2.0, 1.0], [4.0, 3.0, 2.5]])
        >>> fill_budget(np.array([0, 0]), avg_bits, losses, budget=3.5).tolist()
        [2, 0]
    """
    avg_bits, losses = check_search_inputs(avg_bits, losses)
    path = np.array(path, dtype=np.int64)
    steps = np.arange(path.size)
    total = avg_bits.shape[0] * (budget + BUDGET_TOLERANCE)
    if avg_bits[steps, path].sum() > total:
        raise ValueError(f"the path to fill already exceeds the budget of {budget:g} bits")
    while True:
        spare = total - avg_bits[steps, path].sum()
        dB = avg_bits - avg_bits[steps, path][:, None]  # (T, M) added bits
        dE = losses[steps, path][:, None] - losses  # (T, M) loss saved
        fits = (dB > 0) & (dE > 0) & (dB <= spare)
        if not fits.any():
            return path
        gain = np.where(fits, dE / np.where(dB > 0, dB, 1.0), -np.inf)
        t, c = np.unravel_index(np.argmax(gain), gain.shape)
        path[t] = c
