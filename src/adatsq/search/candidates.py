"""Fisher-guided candidate bit configurations for one timestep (paper Sec. 3.2.2).

The ``L`` quantizable layers are clustered by sensitivity (their log Fisher score at timestep ``t``)
into ``G`` groups ordered from least to most sensitive. A candidate gives every layer of a group the
same bit width, never fewer bits to a more sensitive group than to a less sensitive one, so the
candidate set is the monotone maps from ``G`` groups onto the ``K`` bit choices, ``C(G + K - 1, G)``
of them. Each is scored by

* its average bits ``sum_l w_l b_l / sum_l w_l`` (``w`` uniform as in Eq. 3, or e.g. layer MACs),
* a Fisher-weighted noise proxy ``sum_l I_{t,l} 4^{-b_l}``: uniform quantization noise has variance
  proportional to the squared step ``(range / 2^b)^2``, and the Fisher score ``I_{t,l}`` converts a
  layer's perturbation into task loss (Sec. 3.1).

``M`` candidates are kept: the ``K`` uniform configurations, then configurations from the
(average bits, noise proxy) Pareto frontier picked farthest-point along the average-bits axis, so
that the candidates span ``[min(bits), max(bits)]`` evenly and each one spends its bits where the
Fisher information says they matter. Their true step loss (Eq. 2) is measured later by the model.

*Budget-aware* candidates (a ``budget`` given): a path's mean width must stay at most the budget,
so candidates far above it are nearly useless (at a 3.1-bit budget a step may spend 8 bits only if
most others spend 3), while the steps near it decide how much of the budget a path can spend. The
candidates are then drawn from ``[min(bits), budget + reach]``: the uniform configurations inside
it, the frontier configurations that bracket the budget (the ``brackets`` nearest at most the
budget and above it; neighbours on the frontier differ by one group's width), then farthest-point
spread over the rest of that window. Mixing the brackets over the steps, a path can spend the budget
to within a fraction of one group's width.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from adatsq.quant.primitives import check_bits
from adatsq.search.pareto import pareto_front
from adatsq.strict import check_keys

CLUSTER_METHODS = ("kmeans", "quantile")
MAX_CONFIGURATIONS = 200_000
"""Most monotone group-to-bits maps enumerated for one timestep."""


@dataclass(frozen=True)
class CandidateConfig:
    """How candidate configurations are generated.

    Attributes:
        bit_choices: allowed per-layer bit widths, strictly increasing (16 = not quantized).
        num_candidates: ``M``, the most candidates per timestep; at least ``len(bit_choices)``.
        method: sensitivity grouping: ``"kmeans"`` (optimal 1-D k-means on log Fisher) or
            ``"quantile"`` (equal-count groups by Fisher rank).
        num_clusters: ``G``, the most sensitivity groups (the finer, the closer a path can spend
            its budget; ``C(G + K - 1, G)`` configurations are enumerated).
        reach: with a budget, candidates have average bits at most ``budget + reach``.
        brackets: with a budget, the frontier configurations kept on each side of it (the
            nearest ``brackets`` at most the budget and above it).
        version: schema version of this config.

    Example:
        >>> CandidateConfig(bit_choices=(4, 8), num_candidates=6, num_clusters=8).num_configurations
        9
    """

    bit_choices: tuple[int, ...] = (3, 4, 8)
    num_candidates: int = 8
    method: str = "kmeans"
    num_clusters: int = 32
    reach: float = 1.0
    brackets: int = 2
    version: int = 1

    def __post_init__(self):
        if not isinstance(self.bit_choices, tuple) or not self.bit_choices:
            raise ValueError(f"bit_choices must be a non-empty tuple, got {self.bit_choices!r}")
        for bits in self.bit_choices:
            check_bits(bits, "candidate bit width")
        if any(a >= b for a, b in zip(self.bit_choices, self.bit_choices[1:])):
            raise ValueError(f"bit_choices must be strictly increasing, got {self.bit_choices}")
        if self.num_candidates < len(self.bit_choices):
            raise ValueError(f"num_candidates ({self.num_candidates}) must be at least the number "
                             f"of bit choices ({len(self.bit_choices)}) to hold the uniform ones")
        if self.method not in CLUSTER_METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of "
                             f"{', '.join(CLUSTER_METHODS)}")
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be positive, got {self.num_clusters}")
        if self.brackets < 1:
            raise ValueError(f"brackets must be positive, got {self.brackets}")
        if not (math.isfinite(self.reach) and self.reach >= 0):
            raise ValueError(f"reach must be a non-negative number of bits, got {self.reach}")
        if self.num_configurations > MAX_CONFIGURATIONS:
            raise ValueError(f"{self.num_clusters} clusters and {len(self.bit_choices)} bit "
                             f"choices give {self.num_configurations} configurations, more "
                             f"than {MAX_CONFIGURATIONS}")
        if self.version != 1:
            raise ValueError(f"unsupported CandidateConfig version {self.version}")

    @property
    def num_configurations(self) -> int:
        """Monotone group-to-bits maps at most enumerated, ``C(G + K - 1, G)``."""
        return math.comb(self.num_clusters + len(self.bit_choices) - 1, self.num_clusters)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        out = asdict(self)
        out["bit_choices"] = list(self.bit_choices)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CandidateConfig:
        """Inverse of :meth:`to_dict`; rejects unknown keys."""
        data = dict(check_keys(data, (f.name for f in fields(cls)), "CandidateConfig"))
        if "bit_choices" in data:
            data["bit_choices"] = tuple(data["bit_choices"])
        return cls(**data)


@dataclass(frozen=True)
class Candidates:
    """The candidate configurations of one timestep, sorted by average bits (arrays read-only).

    Attributes:
        bits: (M, L) int bit width of every layer in every candidate.
        avg_bits: (M,) layer-weighted average bit width of each candidate.
        noise_proxy: (M,) Fisher-weighted noise ``sum_l I_{t,l} 4^{-b_l}``.
        clusters: (L,) sensitivity group of each layer, 0 = least sensitive.
    """

    bits: np.ndarray
    avg_bits: np.ndarray
    noise_proxy: np.ndarray
    clusters: np.ndarray

    def __post_init__(self):
        for array in (self.bits, self.avg_bits, self.noise_proxy, self.clusters):
            array.setflags(write=False)


def sensitivity_clusters(fisher_t: np.ndarray, num_clusters: int,
                         method: str = "kmeans") -> np.ndarray:
    """Groups layers by sensitivity; groups are intervals of Fisher score, numbered upward.

    Layers with equal scores always share a group, and there are at most ``num_clusters`` groups
    (fewer when there are fewer distinct scores), numbered ``0..G-1`` without gaps.

    Args:
        fisher_t: (L,) non-negative Fisher score of each layer at one timestep.
        num_clusters: the most groups.
        method: ``"kmeans"`` (least squares on log Fisher, solved exactly by dynamic programming
            over the sorted distinct values) or ``"quantile"`` (equal-count groups by rank).

    Returns:
        (L,) int group of each layer; a higher group never has a lower score.

    Example:
        >>> sensitivity_clusters(np.array([1e-4, 2e-4, 1.0, 0.9, 1e-4]), 2).tolist()
        [0, 0, 1, 1, 0]
    """
    fisher_t = _check_fisher(fisher_t)
    if method not in CLUSTER_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(CLUSTER_METHODS)}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be positive, got {num_clusters}")
    # Zero scores sit just below the smallest positive one on the log scale.
    floor = fisher_t[fisher_t > 0].min() * 1e-3 if (fisher_t > 0).any() else 1.0
    log_fisher = np.log(np.maximum(fisher_t, floor))  # (L,)
    values, layer_to_value, counts = np.unique(log_fisher, return_inverse=True,
                                               return_counts=True)  # (n,), (L,), (n,)
    G = min(num_clusters, values.size)
    if method == "kmeans":
        value_cluster = _kmeans_1d(values, counts.astype(np.float64), G)  # (n,)
    else:
        midrank = np.cumsum(counts) - counts / 2  # (n,) middle rank of each distinct value
        value_cluster = np.minimum((G * midrank / fisher_t.size).astype(np.int64), G - 1)  # (n,)
        value_cluster = np.unique(value_cluster, return_inverse=True)[1]  # no empty groups
    return value_cluster[layer_to_value].astype(np.int64)


def generate_candidates(fisher_t: np.ndarray, config: CandidateConfig = CandidateConfig(),
                        layer_weights: np.ndarray | None = None,
                        budget: float | None = None) -> Candidates:
    """Candidate per-layer bit configurations for one timestep from its Fisher scores.

    Args:
        fisher_t: (L,) non-negative Fisher score of each quantizable layer at this timestep.
        config: bit choices, number of candidates and grouping method.
        layer_weights: (L,) positive weight of each layer in the average bit width (e.g. MACs);
            None weighs layers uniformly as in Eq. 3.
        budget: the search's target mean width; candidates then lie in
            ``[min(bits), budget + reach]`` and bracket it (see the module docstring). None
            spreads them over every width.

    Returns:
        At most ``config.num_candidates`` distinct candidates, sorted by average bits. The uniform
        configurations (with a budget, those inside the window) are always among them; fewer than
        ``M`` come back only when fewer monotone configurations exist (few distinct Fisher scores
        or small ``num_clusters``).

    Example:
        >>> fisher_t = np.array([1e-4, 2e-4, 1.0, 0.9, 1e-4])
        >>> config = CandidateConfig(num_candidates=4, num_clusters=2)
        >>> candidates = generate_candidates(fisher_t, config)
        >>> candidates.bits.tolist()
        [[3, 3, 3, 3, 3], [4, 4, 4, 4, 4], [4, 4, 8, 8, 4], [8, 8, 8, 8, 8]]
        >>> candidates.avg_bits.tolist()
        [3.0, 4.0, 5.6, 8.0]
    """
    fisher_t = _check_fisher(fisher_t)
    L = fisher_t.size
    if layer_weights is None:
        layer_weights = np.ones(L)
    layer_weights = np.asarray(layer_weights, dtype=np.float64)
    if layer_weights.shape != (L,) or not np.isfinite(layer_weights).all() or (
            layer_weights <= 0).any():
        raise ValueError(f"layer_weights must be ({L},) positive and finite, got shape "
                         f"{layer_weights.shape}")
    choices = np.asarray(config.bit_choices, dtype=np.int64)  # (K,)
    K = choices.size
    clusters = sensitivity_clusters(fisher_t, config.num_clusters, config.method)  # (L,)
    G = int(clusters.max()) + 1

    # Non-decreasing level sequences over groups = monotone maps groups -> bit choices.
    levels = np.array(list(itertools.combinations_with_replacement(range(K), G)),
                      dtype=np.int64)  # (N, G)
    bits = choices[levels][:, clusters]  # (N, L)
    avg_bits = bits @ layer_weights / layer_weights.sum()  # (N,)
    noise_proxy = np.exp2(-2.0 * bits) @ fisher_t  # (N,)

    uniform = np.flatnonzero((levels == levels[:, :1]).all(axis=1))  # (K,)
    front = pareto_front(avg_bits, noise_proxy)  # (F,)
    rest = np.setdiff1d(np.arange(levels.shape[0]), front)
    forced = uniform
    if budget is not None:
        if not np.isfinite(budget) or budget < choices[0]:
            raise ValueError(f"budget of {budget} bits is below the smallest bit choice "
                             f"{choices[0]}")
        window = avg_bits <= budget + config.reach + 1e-9  # (N,)
        below = front[avg_bits[front] <= budget + 1e-9]  # the lowest uniform at least
        above = front[(avg_bits[front] > budget + 1e-9) & window[front]]
        k = config.brackets
        brackets = [*below[np.argsort(-avg_bits[below], kind="stable")[:k]],
                    *above[np.argsort(avg_bits[above], kind="stable")[:k]]]
        # the cheapest configuration and the brackets first, if M cannot hold every uniform one
        forced = list(dict.fromkeys([uniform[0], *brackets, *uniform[window[uniform]]]))
        forced = np.asarray(forced[:config.num_candidates], dtype=np.int64)
        front, rest = front[window[front]], rest[window[rest]]
    front = front[~np.isin(front, forced)]
    rest = rest[~np.isin(rest, forced)]
    chosen = _spread(avg_bits, forced, front, config.num_candidates)
    chosen = _spread(avg_bits, chosen, rest, config.num_candidates)  # dominated ones fill up only

    order = np.lexsort((noise_proxy[chosen], avg_bits[chosen]))
    chosen = chosen[order]
    return Candidates(bits=bits[chosen], avg_bits=avg_bits[chosen],
                      noise_proxy=noise_proxy[chosen], clusters=clusters)


def _check_fisher(fisher_t: np.ndarray) -> np.ndarray:
    """Float64 (L,) Fisher scores, or ``ValueError``."""
    fisher_t = np.asarray(fisher_t, dtype=np.float64)
    if fisher_t.ndim != 1 or fisher_t.size == 0:
        raise ValueError(f"fisher_t must be a non-empty (L,) array, got shape {fisher_t.shape}")
    if not np.isfinite(fisher_t).all() or (fisher_t < 0).any():
        raise ValueError("fisher_t must be finite and non-negative")
    return fisher_t


def _kmeans_1d(x: np.ndarray, w: np.ndarray, G: int) -> np.ndarray:
    """Optimal weighted k-means of sorted distinct ``x`` (n,) into ``G`` intervals; (n,) labels."""
    n = x.size
    S0 = np.concatenate(([0.0], np.cumsum(w)))  # (n + 1,)
    S1 = np.concatenate(([0.0], np.cumsum(w * x)))  # (n + 1,)
    S2 = np.concatenate(([0.0], np.cumsum(w * x * x)))  # (n + 1,)
    i, j = np.triu_indices(n + 1, k=1)
    cost = np.full((n + 1, n + 1), np.inf)  # (n + 1, n + 1) within-sum of squares of x[i:j]
    cost[i, j] = np.maximum(S2[j] - S2[i] - (S1[j] - S1[i]) ** 2 / (S0[j] - S0[i]), 0.0)
    D = cost[0]  # (n + 1,) best cost of x[:j] in one group
    starts = np.zeros((G, n + 1), dtype=np.int64)  # (G, n + 1) start of the last group
    for g in range(1, G):
        total = D[:, None] + cost  # (n + 1, n + 1): first g groups on x[:i], one more on x[i:j]
        starts[g] = np.argmin(total, axis=0)
        D = total[starts[g], np.arange(n + 1)]
    labels = np.zeros(n, dtype=np.int64)
    end = n
    for g in range(G - 1, -1, -1):
        start = starts[g, end]
        labels[start:end] = g
        end = start
    return labels


def _spread(avg_bits: np.ndarray, forced: np.ndarray, pool: np.ndarray, m: int) -> np.ndarray:
    """``forced`` plus pool items, each farthest in ``avg_bits`` from those chosen, up to ``m``."""
    chosen = list(forced)
    gap = np.abs(avg_bits[pool][:, None] - avg_bits[forced][None, :]).min(axis=1)  # (pool,)
    taken = np.zeros(pool.size, dtype=bool)
    while len(chosen) < m and not taken.all():
        k = int(np.argmax(np.where(taken, -np.inf, gap)))  # first item on ties
        chosen.append(pool[k])
        taken[k] = True
        gap = np.minimum(gap, np.abs(avg_bits[pool] - avg_bits[pool[k]]))
    return np.asarray(chosen, dtype=np.int64)
