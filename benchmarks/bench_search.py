"""Speed and optimality gap of the Pareto beam search (Sec. 3.2.3) against the exact DP optimum.

Instances mimic a DiT calibration: T = 50 timesteps, L = 34 layers, Fisher scores log-normal across
layers with a per-layer temporal profile (some layers matter early, others late), candidates from
:func:`adatsq.search.candidates.generate_candidates`, and step losses
``sum_l I_{t,l} 4^{-b_l}`` times log-normal measurement noise (decreasing in every layer's bits).
Beam width = M, as in the paper. Writes ``benchmarks/results/search.json``.

    python benchmarks/bench_search.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from adatsq.search.candidates import CandidateConfig, generate_candidates
from adatsq.search.exact import dynamic_programming
from adatsq.search.pareto import beam_search, lagrangian_price

T, L = 50, 34
RESULTS = Path(__file__).parent / "results" / "search.json"


def make_instance(seed: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    """(avg_bits, losses), both (T, M), for one synthetic calibration run."""
    rng = np.random.default_rng(seed)
    base = np.exp(rng.normal(0.0, 1.5, size=L))  # (L,) layer sensitivity
    peak = rng.uniform(0.0, 1.0, size=L)  # (L,) phase where each layer matters most
    phase = np.linspace(0.0, 1.0, T)  # (T,)
    profile = np.exp(-((phase[:, None] - peak[None, :]) ** 2) / 0.08)  # (T, L)
    fisher = base * (0.2 + profile) * np.exp(rng.normal(0.0, 0.3, size=(T, L)))  # (T, L)
    config = CandidateConfig(num_candidates=M)
    avg_bits = np.zeros((T, M))
    losses = np.zeros((T, M))
    for t in range(T):
        candidates = generate_candidates(fisher[t], config)
        assert candidates.bits.shape[0] == M
        avg_bits[t] = candidates.avg_bits
        losses[t] = candidates.noise_proxy * np.exp(rng.normal(0.0, 0.2, size=M))
    return avg_bits, losses


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    rows = []
    for M in (8, 16, 32):
        for seed in range(args.seeds):
            start = time.perf_counter()
            avg_bits, losses = make_instance(seed, M)
            generate_ms = 1e3 * (time.perf_counter() - start) / T
            for budget in (4.0, 4.5, 6.0):
                start = time.perf_counter()
                _, dp_loss, _ = dynamic_programming(avg_bits, losses, budget, denominator=L)
                dp_ms = 1e3 * (time.perf_counter() - start)
                price = lagrangian_price(avg_bits, losses, budget)
                relaxed = np.lexsort((avg_bits, losses + price * avg_bits), axis=-1)[:, 0]
                relaxed_loss = float(losses[np.arange(T), relaxed].sum())
                for keep in ("origin", "lagrangian"):
                    result = beam_search(avg_bits, losses, M, budget, keep=keep)
                    beam_ms = median_ms(lambda: beam_search(avg_bits, losses, M, budget,
                                                            keep=keep), args.repeats)
                    rows.append(dict(
                        M=M, seed=seed, budget=budget, keep=keep, beam_ms=beam_ms, dp_ms=dp_ms,
                        generate_ms_per_step=generate_ms, beam_loss=result.best_loss,
                        beam_mean_bits=result.best_mean_bits, dp_loss=dp_loss,
                        gap=result.best_loss / dp_loss - 1, relaxed_gap=relaxed_loss / dp_loss - 1,
                        max_front_size=result.max_front_size, survivors=len(result.total_loss)))

    print(f"T={T} L={L}, beam width = M; medians over {args.seeds} seeds; "
          "gap = beam loss / DP optimum - 1")
    print(f"{'M':>3} {'budget':>6} {'keep':>10} {'beam ms':>8} {'DP ms':>7} {'gap':>9} "
          f"{'max gap':>9} {'mean bits':>9} {'relaxed gap':>11}")
    summary = []
    for M in (8, 16, 32):
        for budget in (4.0, 4.5, 6.0):
            for keep in ("origin", "lagrangian"):
                group = [r for r in rows if (r["M"], r["budget"], r["keep"]) == (M, budget, keep)]
                line = dict(M=M, budget=budget, keep=keep,
                            beam_ms=float(np.median([r["beam_ms"] for r in group])),
                            dp_ms=float(np.median([r["dp_ms"] for r in group])),
                            gap=float(np.median([r["gap"] for r in group])),
                            max_gap=float(np.max([r["gap"] for r in group])),
                            beam_mean_bits=float(np.median([r["beam_mean_bits"] for r in group])),
                            relaxed_gap=float(np.median([r["relaxed_gap"] for r in group])))
                summary.append(line)
                print(f"{M:>3} {budget:>6.2f} {keep:>10} {line['beam_ms']:>8.2f} "
                      f"{line['dp_ms']:>7.1f} {line['gap']:>9.2%} {line['max_gap']:>9.2%} "
                      f"{line['beam_mean_bits']:>9.3f} {line['relaxed_gap']:>11.2%}")
    generate = float(np.median([r["generate_ms_per_step"] for r in rows]))
    print(f"candidate generation: {generate:.2f} ms per timestep")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(dict(T=T, L=L, bit_choices=[3, 4, 8], summary=summary,
                                       generate_ms_per_step=generate, runs=rows), indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
