"""Model adapters; importing this package imports every module in it, which registers every
adapter and pipeline family (a new architecture is one module here, no import line to add)."""

import importlib
import pkgutil

from adatsq.models.base import Adapter, ModulationSite, adapter_for, register, registered
from adatsq.models.massive import massive_activations_

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Adapter", "ModulationSite", "adapter_for", "massive_activations_", "register",
           "registered"]
