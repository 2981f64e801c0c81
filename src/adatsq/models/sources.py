"""Where a diffusers pipeline comes from: a local folder or a hub id (offline from the local
Hugging Face cache), its pipeline class, and its transformer read tensor by tensor.

Loading reads only local files when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached, so a
hub id works offline once it is in the local Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from adatsq import io

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub opens within ``timeout`` seconds."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def reference(model: str) -> str:
    """How an artifact records the pipeline it was made from: a hub id, or a folder as the
    user gave it when relative; an absolute folder by its name alone, so that no path of the
    maker's machine is stored (``load(path, base=...)`` names the folder where it is).

    Example:
        >>> reference("/home/me/models/flux-tiny"), reference("black-forest-labs/FLUX.1-dev")
        ('flux-tiny', 'black-forest-labs/FLUX.1-dev')
    """
    path = Path(model).expanduser()
    return path.name if path.is_absolute() else model


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pipeline_class_of(model: str) -> tuple[str, str, bool]:
    """(pipeline class name, resolved model, local files only) of a folder or hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(f"{model} is not a diffusers pipeline folder (no model_index.json); "
                             "write one with pipeline.save_pretrained(folder)")
        return json.loads(index.read_text()).get("_class_name", "?"), str(path.resolve()), True
    if path.exists() or not _REPO_ID.match(model):
        raise ValueError(f"{model}: no such pipeline folder (and not a hub id 'owner/name')")
    from huggingface_hub import hf_hub_download

    offline = _env_offline() or not hub_reachable()
    try:
        index = hf_hub_download(model, "model_index.json", local_files_only=offline)
    except Exception as exc:  # the hub's errors have many types; all mean the same here
        if offline:
            raise ValueError(f"{model} is neither a local folder nor in the local Hugging Face "
                             f"cache (offline); download it first ('hf download {model}') or "
                             "pass a folder") from None
        raise ValueError(f"cannot fetch {model} from the Hugging Face hub "
                         f"({first_line(exc)}); check the id or pass a folder") from None
    return json.loads(Path(index).read_text()).get("_class_name", "?"), model, offline


def read_transformer(resolved: str, model_class: str, dtype: torch.dtype,
                     local_only: bool, device: str = "cpu") -> nn.Module | None:
    """The transformer of a pipeline folder or cached hub snapshot, read tensor by tensor into a
    meta-device skeleton (:func:`adatsq.io.load_weights_`): diffusers' own loader maps the
    files, and the pages it touches stay resident beside the copy it makes, up to two copies of
    the weights. Tensors go to ``device`` one at a time. None where the transformer is not
    stored as safetensors (diffusers loads it).
    """
    import diffusers

    if Path(resolved).is_dir():
        folder = Path(resolved) / "transformer"
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(resolved, allow_patterns=["transformer/*"],
                                            local_files_only=local_only)) / "transformer"
        except Exception:  # the hub's errors have many types; diffusers reports them better
            return None
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():  # shards
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = [folder / "diffusion_pytorch_model.safetensors"]
    cls = getattr(diffusers, model_class)
    if not all(f.is_file() for f in files) or not (folder / "config.json").is_file():
        return None
    with io.empty_weights():
        skeleton = cls.from_config(cls.load_config(folder))
    return io.load_weights_(skeleton, files, dtype, device).eval().requires_grad_(False)


def check_transformer(model: str, model_class: str, config: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming the first difference when the transformer class or config
    (as an artifact's manifest records them) is not that of ``model``'s own transformer (the
    folder's or cached hub snapshot's ``transformer/config.json``; keys it omits take defaults).
    """
    _, resolved, local_only = pipeline_class_of(model)
    if Path(resolved).is_dir():
        stored = Path(resolved) / "transformer" / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            stored = Path(hf_hub_download(resolved, "transformer/config.json",
                                          local_files_only=local_only))
        except Exception as exc:  # the hub's errors have many types; all mean the same here
            raise ValueError(f"cannot read the transformer config of {model} "
                             f"({first_line(exc)})") from None
    if not stored.is_file():
        raise ValueError(f"{model} has no transformer/config.json to check the artifact against")
    own = json.loads(stored.read_text())
    if own.get("_class_name") not in (None, model_class):
        raise ValueError(f"the artifact holds a {model_class} but {model} has a "
                         f"{own['_class_name']}")
    for key, value in own.items():
        if not key.startswith("_") and key in config and config[key] != value:
            raise ValueError(f"the artifact's transformer has {key}={config[key]!r} but that "
                             f"of {model} has {key}={value!r}")


def dtype_keyword() -> str:
    """``dtype`` for diffusers versions that renamed ``torch_dtype``."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def cast_like_diffusers(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` in ``dtype``, except the modules its class keeps in float32 (as diffusers'
    ``from_pretrained`` does)."""
    if next(model.parameters()).dtype == dtype:
        return model
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            module.float()
    return model
