"""adatsq: post-training quantization of Diffusion Transformers (AdaTSQ and its baselines).

The whole public API::

    import adatsq

    pipe = adatsq.load_pipeline("flux-digits")  # a zoo name, a diffusers folder or a hub id
    policy = adatsq.quantize_(pipe, adatsq.Recipe(method="adatsq"))  # in place
    adatsq.save(pipe, policy, "flux-w4a4")  # safetensors + JSON
    pipe, policy = adatsq.load("flux-w4a4")
    transformer = adatsq.load_transformer("flux-w4a4")  # for a diffusers pipeline's transformer=

The names are loaded on first use (:func:`lazy`), so that ``import adatsq`` (and the command
line's ``--help``) does not import torch and diffusers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

try:
    __version__ = importlib.metadata.version("adatsq")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

_API = {"Recipe": "adatsq.config", "Policy": "adatsq.policy", "load": "adatsq.pipeline",
        "load_pipeline": "adatsq.pipeline", "load_transformer": "adatsq.pipeline",
        "quantize_": "adatsq.pipeline",
        "save": "adatsq.pipeline"}
__all__ = sorted(_API)


def lazy(module: str) -> ModuleType:
    """The module named ``module``, imported now if it was not yet: the one place adatsq defers
    an import (its public names below, and the command line's commands)."""
    return importlib.import_module(module)


def __getattr__(name: str):
    if name in _API:
        return getattr(lazy(_API[name]), name)
    raise AttributeError(f"module 'adatsq' has no attribute {name!r}")
