"""Model adapters; importing this package registers every adapter."""

from adatsq.models import flux, wan, zimage  # noqa: F401  (registers the adapters)
from adatsq.models.base import Adapter, ModulationSite, adapter_for, register, registered
from adatsq.models.massive import massive_activations_

__all__ = ["Adapter", "ModulationSite", "adapter_for", "massive_activations_", "register",
           "registered"]
