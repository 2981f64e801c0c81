"""Strict reading of user data: a key nobody knows is an error, never silently ignored."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_keys(data: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    """``data`` if it is a mapping whose keys are all in ``allowed``, else a one-line ValueError
    naming ``where``, the unknown keys and the allowed ones.

    Example:
        >>> check_keys({"rank": 4}, ["rank", "alpha"], "SVDQuant options")
        {'rank': 4}
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    allowed = set(allowed)
    unknown = set(data) - allowed
    if unknown:
        accepted = f"allowed: {', '.join(sorted(allowed))}" if allowed else "it takes none"
        raise ValueError(f"unknown key(s) in {where}: {', '.join(sorted(map(str, unknown)))}; "
                         f"{accepted}")
    return data
