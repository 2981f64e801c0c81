"""Fisher-guided candidate configurations (Sec. 3.2.2)."""

import itertools
import json

import numpy as np
import pytest

from adatsq.search.candidates import (
    CandidateConfig,
    generate_candidates,
    sensitivity_clusters,
)
from adatsq.search.pareto import beam_search, fill_budget, pareto_front

BIT_SETS = [(3, 4, 8), (2, 4), (4, 6, 8, 16), (8,)]


def random_fisher(rng, L):
    """Log-normal scores with some exact ties and a zero, like Fisher traces of real layers."""
    fisher = np.exp(rng.normal(0.0, 2.0, size=L))
    fisher[rng.integers(0, L, size=L // 5)] = fisher[0]
    fisher[-1] = 0.0
    return fisher


@pytest.mark.parametrize("method", ["kmeans", "quantile"])
@pytest.mark.parametrize("bit_choices", BIT_SETS)
def test_candidate_properties(bit_choices, method):
    rng = np.random.default_rng(len(bit_choices))
    for L in (1, 5, 34, 120):
        fisher = random_fisher(rng, L)
        config = CandidateConfig(bit_choices=bit_choices, num_candidates=8, method=method)
        candidates = generate_candidates(fisher, config)
        M = candidates.bits.shape[0]
        assert candidates.bits.shape == (M, L) and candidates.avg_bits.shape == (M,)
        assert candidates.bits.dtype.kind == "i"
        assert len(bit_choices) <= M <= 8
        assert set(np.unique(candidates.bits)) <= set(bit_choices)
        # Every uniform configuration is present.
        for bits in bit_choices:
            assert any((row == bits).all() for row in candidates.bits)
        # Average bits span [min, max], sorted; no repeated configuration.
        assert candidates.avg_bits[0] == min(bit_choices)
        assert candidates.avg_bits[-1] == max(bit_choices)
        assert np.all(np.diff(candidates.avg_bits) >= 0)
        assert len({row.tobytes() for row in candidates.bits}) == M
        np.testing.assert_allclose(candidates.avg_bits, candidates.bits.mean(axis=1))
        # Monotone: a more sensitive layer never gets fewer bits, equal scores equal bits.
        more = fisher[:, None] > fisher[None, :]  # (L, L)
        same = fisher[:, None] == fisher[None, :]  # (L, L)
        for row in candidates.bits:
            assert (row[:, None] >= row[None, :])[more].all()
            assert (row[:, None] == row[None, :])[same].all()


def test_full_set_of_candidates_when_enough_configurations_exist():
    fisher = np.exp(np.random.default_rng(0).normal(0.0, 2.0, size=34))
    for M in (8, 16, 32):
        candidates = generate_candidates(fisher, CandidateConfig(num_candidates=M))
        assert candidates.bits.shape == (M, 34)


def test_non_uniform_candidates_are_on_the_proxy_frontier():
    """Each mixed candidate spends its bits as well as any monotone configuration can."""
    rng = np.random.default_rng(1)
    fisher = np.exp(rng.normal(0.0, 2.0, size=12))
    config = CandidateConfig(num_candidates=6, num_clusters=4)
    candidates = generate_candidates(fisher, config)
    G = candidates.clusters.max() + 1
    choices = np.array(config.bit_choices)
    every = np.array([choices[list(levels)][candidates.clusters]
                      for levels in itertools.combinations_with_replacement(range(3), G)])
    avg_bits, noise = every.mean(axis=1), np.exp2(-2.0 * every) @ fisher
    for row, bits, proxy in zip(candidates.bits, candidates.avg_bits, candidates.noise_proxy):
        if len(set(row)) > 1:
            assert not np.any((avg_bits <= bits + 1e-12) & (noise < proxy * (1 - 1e-12)))


def test_layer_weights_give_compute_weighted_average():
    rng = np.random.default_rng(2)
    fisher, macs = random_fisher(rng, 20), rng.uniform(1.0, 100.0, size=20)
    candidates = generate_candidates(fisher, CandidateConfig(), layer_weights=macs)
    np.testing.assert_allclose(candidates.avg_bits, candidates.bits @ macs / macs.sum())
    assert candidates.avg_bits[0] == pytest.approx(3.0)
    assert candidates.avg_bits[-1] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="layer_weights"):
        generate_candidates(fisher, CandidateConfig(), layer_weights=-macs)


def test_indistinguishable_layers_give_only_uniform_candidates():
    candidates = generate_candidates(np.full(10, 0.5), CandidateConfig(num_candidates=8))
    assert candidates.avg_bits.tolist() == [3.0, 4.0, 8.0]
    assert generate_candidates(np.zeros(4)).bits.shape == (3, 4)


def test_kmeans_clusters_are_optimal_intervals():
    """Exact 1-D k-means equals the best of all interval partitions of the sorted log scores."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        fisher = np.exp(rng.normal(0.0, 3.0, size=9))
        log_sorted = np.sort(np.log(fisher))
        for G in (1, 2, 3, 4):
            labels = sensitivity_clusters(fisher, G)
            assert sorted(set(labels)) == list(range(G))
            cost = sum(((np.log(fisher[labels == g]) - np.log(fisher[labels == g]).mean()) ** 2)
                       .sum() for g in range(G))
            best = min(
                sum(((part - part.mean()) ** 2).sum() for part in np.split(log_sorted, cuts))
                for cuts in itertools.combinations(range(1, 9), G - 1))
            assert cost == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_quantile_clusters_have_equal_counts():
    labels = sensitivity_clusters(np.arange(1.0, 13.0), 4, method="quantile")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_candidates_are_read_only():
    candidates = generate_candidates(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        candidates.bits[0, 0] = 8


def test_config_validates_and_round_trips():
    config = CandidateConfig(bit_choices=(2, 4, 16), num_candidates=5, method="quantile",
                             num_clusters=3)
    assert CandidateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in (dict(bit_choices=(4, 3)), dict(bit_choices=(3, 9)), dict(bit_choices=[3, 4]),
                dict(num_candidates=2), dict(method="agglomerative"), dict(num_clusters=0),
                dict(num_clusters=500, bit_choices=(2, 3, 4, 5, 6, 8)), dict(version=2)):
        with pytest.raises(ValueError):
            CandidateConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        CandidateConfig.from_dict({"bits": [3, 4]})
    with pytest.raises(ValueError, match="fisher_t"):
        generate_candidates(np.array([1.0, -1.0]))


@pytest.mark.parametrize("budget", [3.0, 3.1, 3.5, 4.1, 7.9])
def test_budget_aware_candidates_stay_in_reach_and_bracket_the_budget(budget):
    rng = np.random.default_rng(int(budget * 10))
    fisher = random_fisher(rng, 45)
    config = CandidateConfig(num_candidates=8, reach=1.0)
    c = generate_candidates(fisher, config, budget=budget)
    assert c.avg_bits.max() <= budget + 1.0 + 1e-9
    assert (c.bits[0] == 3).all()  # the cheapest configuration is always there
    # the brackets: the frontier's most bits at most the budget, and its fewest above it
    every = generate_candidates(fisher, CandidateConfig(num_candidates=10_000))
    front = every.avg_bits[pareto_front(every.avg_bits, every.noise_proxy)]
    below, above = front[front <= budget + 1e-9], front[front > budget + 1e-9]
    assert np.isclose(c.avg_bits, below.max()).any()
    if above.size and above.min() <= budget + 1.0:
        assert np.isclose(c.avg_bits, above.min()).any()
    with pytest.raises(ValueError, match="below the smallest bit choice"):
        generate_candidates(fisher, config, budget=2.5)


@pytest.mark.parametrize("steps", [4, 10, 50])
@pytest.mark.parametrize("budget", [3.1, 3.5, 4.1])
def test_searched_paths_spend_the_budget_within_a_hundredth_of_a_bit(steps, budget):
    """With losses that fall with bits (the Fisher-weighted noise proxy, scaled per step), the
    best path over budget-aware candidates, filled, reaches the target width within 0.01 bit."""
    rng = np.random.default_rng(steps)
    L, M = 45, 8
    fisher = np.exp(rng.normal(0.0, 2.0, size=(steps, L)))  # (T, L)
    config = CandidateConfig(num_candidates=M)
    cands = [generate_candidates(f, config, budget=budget) for f in fisher]
    pad = lambda x: np.pad(x, (0, M - x.size), mode="edge")  # noqa: E731
    bits = np.stack([pad(c.avg_bits) for c in cands])  # (T, M)
    losses = np.stack([pad(c.noise_proxy) * rng.uniform(0.5, 2.0) for c in cands])  # (T, M)
    result = beam_search(bits, losses, beam_width=M, budget=budget, keep="lagrangian")
    path = fill_budget(result.best_path, bits, losses, budget)
    assert budget - 0.01 <= bits[np.arange(steps), path].mean() <= budget + 1e-9
    assert losses[np.arange(steps), path].sum() <= result.best_loss
