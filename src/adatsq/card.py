"""The model card (``README.md``) and diffusers ``config.json`` of an artifact.

The card says what a user needs before downloading: the base model, the method and bits, the
activation bits per step, the library versions that made it, the command that makes it again, and
its quality against full precision where the run measured it. The ``config.json`` is the
transformer's diffusers config with a ``quantization_config`` naming ``adatsq``: diffusers' own
``from_pretrained`` on the artifact then stops with "Unknown quantization type, got adatsq"
instead of building a model with random weights.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np

from adatsq.policy import Policy

QUANT_METHOD = "adatsq"
LOADER = "adatsq.load_transformer"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries an artifact was made with."""
    return {p: _version(p) for p in ("adatsq", "torch", "diffusers", "safetensors")}


def diffusers_config(source: dict[str, Any], format_version: int) -> dict[str, Any]:
    """The transformer's diffusers ``config.json`` with the artifact's ``quantization_config``."""
    return {"_class_name": source["model_class"], "_diffusers_version": _version("diffusers"),
            **source["config"],
            "quantization_config": {"quant_method": QUANT_METHOD, "format": format_version,
                                    "load_with": f"{LOADER}(path)"}}


def _bits_line(policy: Policy) -> str:
    bits = policy.bit_matrix()  # (L, T)
    if bits.size == 0:
        return "no quantized activations"
    per_step = bits.mean(axis=0)
    if np.all(bits == bits.flat[0]):
        return f"{int(bits.flat[0])} bits at every step and layer"
    return (f"{policy.average_activation_bits:.2f} on average; per step from "
            f"{per_step.min():.2f} to {per_step.max():.2f} (layers take "
            f"{', '.join(str(int(b)) for b in np.unique(bits))} bits)")


def _quality(policy: Policy) -> str:
    search = policy.settings.get("search")
    if not search or "selection_scores" not in search:
        return "not measured when it was made (`make bench` measures it on the embedded models)"
    psnr = search["selection_scores"][search["chosen"]][1]
    return (f"{psnr:.2f} dB PSNR against full-precision samples of the same prompts and seeds "
            "(the selection prompts of AdaTSQ's search, Sec. 3.2.4)")


def model_card(policy: Policy, source: dict[str, Any], command: str | None = None) -> str:
    """The artifact's ``README.md`` (Hugging Face model card with YAML front matter)."""
    base = source["model"]
    label = f"W{policy.weight_bits}A{policy.average_activation_bits:g}"
    made = command or "adatsq.quantize_(pipe, adatsq.Recipe.from_dict(<the recipe in policy.json>))"
    lib = "\n".join(f"- {name} {v}" for name, v in versions().items())
    return f"""---
base_model: {base}
library_name: diffusers
tags:
- adatsq
- quantized
- {policy.method}
---

# {base}, {policy.method} {label}

The transformer ({source["model_class"]}) of `{base}` quantized with adatsq's `{policy.method}`:
{policy.weight_bits}-bit weights, activation bits {_bits_line(policy)},
over {policy.steps} sampling steps.

## Use

```python
import adatsq

transformer = adatsq.load_transformer("path/to/this/folder")
# any diffusers pipeline of the base model takes it:
# pipe = <PipelineClass>.from_pretrained("{base}", transformer=transformer)
pipe, policy = adatsq.load("path/to/this/folder")  # or the whole pipeline, base = {base}
```

Plain diffusers cannot read the packed weights: `from_pretrained` on this folder stops with
"Unknown quantization type, got adatsq".

## Quality against full precision

{_quality(policy)}

## Made with

`{made}`

{lib}

Files: `model.safetensors` (packed codes and 16-bit floats), `manifest.json` (layout and
checksum), `policy.json` (the recipe and the activation bits of every layer at every step),
`config.json` (the transformer's diffusers config).
"""
