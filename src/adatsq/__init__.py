"""adatsq: post-training quantization of Diffusion Transformers (AdaTSQ and its baselines).

The whole public API::

    import adatsq

    pipe = adatsq.load_pipeline("flux-digits")  # a zoo name, a diffusers folder or a hub id
    policy = adatsq.quantize_(pipe, adatsq.Recipe(method="adatsq"))  # in place
    adatsq.save(pipe, policy, "flux-w4a4")  # safetensors + JSON
    pipe, policy = adatsq.load("flux-w4a4")
"""

from adatsq.config import Recipe
from adatsq.pipeline import load, load_pipeline, quantize_, save
from adatsq.policy import Policy

__all__ = ["Policy", "Recipe", "load", "load_pipeline", "quantize_", "save"]
