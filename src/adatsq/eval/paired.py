"""Paired comparisons: two configurations scored on the same prompts and seeds.

Every row of a report samples the same prompts with the same noise, so the difference between two
rows is best measured prompt by prompt: the per-prompt differences ``d_i = a_i - b_i`` cancel the
variance the two rows share (prompt difficulty, noise), which the unpaired ``sqrt(se_a² + se_b²)``
counts twice. A task total that averages groups first (DigitEval: the mean of the category
accuracies) is a stratified mean, and so is its paired difference:

    diff = (1/C) Σ_c mean_c(d),    se² = (1/C²) Σ_c var_c(d) / n_c

with ``var_c`` the sample variance (ddof 1) of the differences in group ``c``. The 95% interval is
``diff ± 1.96 se`` (normal approximation; the test sets hold 100-600 prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal."""

VERDICTS = ("beats", "ties", "loses")


def paired_difference(a: Sequence[float], b: Sequence[float],
                      strata: Sequence[str] | None = None) -> dict[str, float]:
    """The paired difference ``a - b`` of two per-prompt score lists with its 95% interval.

    Args:
        a: per-prompt scores of one configuration (N,).
        b: per-prompt scores of the other on the same prompts and seeds (N,).
        strata: the group of every prompt (N,) when the total is a mean of group means
            (DigitEval's categories); None for a plain mean.

    Returns:
        ``{"diff", "se", "lo", "hi"}``: the difference of the (stratified) means, its paired
        standard error and the 95% interval.

    Example:
        >>> r = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
        >>> r["diff"], round(r["se"], 3)
        (0.5, 0.289)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores need two equal-length, non-empty lists, got shapes "
                         f"{a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite")
    d = a - b  # (N,)
    groups = np.zeros(len(d), dtype=int) if strata is None else \
        np.unique(np.asarray(strata), return_inverse=True)[1]
    if len(groups) != len(d):
        raise ValueError(f"{len(groups)} strata for {len(d)} paired scores")
    means, variances = [], []
    for g in np.unique(groups):
        dg = d[groups == g]
        means.append(dg.mean())
        variances.append(dg.var(ddof=1) / len(dg) if len(dg) > 1 else 0.0)
    C = len(means)
    diff = float(np.mean(means))
    se = float(np.sqrt(np.sum(variances)) / C)
    return {"diff": diff, "se": se, "lo": diff - Z95 * se, "hi": diff + Z95 * se}


def verdict(interval: dict[str, float]) -> str:
    """``"beats"`` if the 95% interval of ``a - b`` lies above 0, ``"loses"`` if below, else
    ``"ties"``."""
    if interval["lo"] > 0:
        return "beats"
    if interval["hi"] < 0:
        return "loses"
    return "ties"
