"""Quantization methods, one module each; importing this package registers them all."""

from adatsq.methods import (  # noqa: F401  (each module registers its method)
    adatsq,
    gptq,
    q_dit,
    quarot,
    rtn,
    smoothquant,
    svdquant,
    vidit_q,
)
from adatsq.methods.base import Method, register, registered

__all__ = ["Method", "get_method", "method_names", "register"]


def get_method(name: str) -> type[Method]:
    """The method class called ``name``.

    Example:
        >>> get_method("rtn").name
        'rtn'
    """
    methods = registered()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(methods))}")
    return methods[name]


def method_names() -> list[str]:
    """Names of every registered method."""
    return list(registered())
