"""Quantization methods, one module each; importing this package registers them all."""

from adatsq.methods import rtn  # noqa: F401
from adatsq.methods.base import Method, get_method, method_names, register

__all__ = ["Method", "get_method", "method_names", "register"]
