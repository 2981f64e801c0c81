"""The end-to-end selection of AdaTSQ (Sec. 3.2.4): which of the surviving paths to keep.

Every path samples the same selection prompts with the same noise, so two paths are compared
prompt by prompt: the paired difference of their per-prompt scores, with its 95% interval (a
stratified mean where the task total averages groups first). The rule is :func:`select_path`.
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


def _mean(x) -> float:
    return float(np.mean(x))


def select_path(task: list, fidelity: list) -> int:
    """The selection rule of AdaTSQ (Sec. 3.2.4) over the paths tried.

    The best path by the task metric sets the bar; a path *ties* with it when the task metric
    cannot tell them apart: the paired 95% interval of the per-prompt difference reaches 0 (with
    one score per path, only an exact tie). Of the tied paths the one with the highest mean
    fidelity to the FP samples wins (a task metric that saturates then does not decide on
    noise); further ties go to the earlier path (least step loss).

    Args:
        task: per path, the task metric per prompt (N,) or a scalar (higher is better).
        fidelity: per path, the fidelity (e.g. PSNR) per prompt (N,) or a scalar.

    Returns:
        The index of the chosen path.

    Example:
        >>> select_path([np.array([1.0, 1, 0, 1]), np.array([1.0, 1, 1, 0])], [20.0, 22.0])
        1
    """
    if not task or len(task) != len(fidelity):
        raise ValueError("select_path needs one task score and one fidelity per path")
    means = [_mean(t) for t in task]
    top = int(np.argmax(means))

    def ties(i: int) -> bool:
        a, b = np.atleast_1d(task[top]), np.atleast_1d(task[i])
        if a.size > 1 and a.shape == b.shape:
            return paired_difference(a, b)["lo"] <= 0.0
        return means[i] == means[top]

    tied = [i for i in range(len(task)) if ties(i)]
    return max(tied, key=lambda i: (_mean(fidelity[i]), -i))
