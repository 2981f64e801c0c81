"""Quantization methods, one module each; importing this package registers them all."""

from adatsq.methods import (  # noqa: F401
    adatsq,
    gptq,
    q_dit,
    quarot,
    rtn,
    smoothquant,
    svdquant,
    vidit_q,
)
from adatsq.methods.base import Method, get_method, method_names, register

__all__ = ["Method", "get_method", "method_names", "register"]
