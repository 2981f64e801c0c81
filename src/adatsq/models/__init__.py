"""Model adapters; importing this package registers every adapter."""

from adatsq.models import flux, wan, zimage  # noqa: F401  (registers the adapters)
from adatsq.models.base import Adapter, adapter_for, register, registered

__all__ = ["Adapter", "adapter_for", "register", "registered"]
