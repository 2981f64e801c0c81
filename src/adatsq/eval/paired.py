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

from adatsq.search.selection import Z95, paired_difference

__all__ = ["VERDICTS", "Z95", "paired_difference", "verdict"]

VERDICTS = ("beats", "ties", "loses")


def verdict(interval: dict[str, float]) -> str:
    """``"beats"`` if the 95% interval of ``a - b`` lies above 0, ``"loses"`` if below, else
    ``"ties"``."""
    if interval["lo"] > 0:
        return "beats"
    if interval["hi"] < 0:
        return "loses"
    return "ties"
