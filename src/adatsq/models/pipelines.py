"""Full diffusers pipelines named by a local folder or a hub id.

Loading a user's diffusers pipeline (text encoders, VAE and transformer, from a folder or the local
hub cache) is not available in this version: the quantization flow runs on the embedded models.
"""

from __future__ import annotations


def load_diffusers_pipeline(model: str, transformer=None):
    """Raises a one-line error naming what works instead."""
    raise ValueError(f"cannot load {model!r}: diffusers pipelines by folder or hub id are not "
                     "supported yet; use an embedded model (see 'adatsq zoo')")
