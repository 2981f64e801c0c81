"""Resumable quantization: the progress of a run kept in a folder, read back after a crash.

:func:`adatsq.pipeline.quantize_` given ``checkpoint=folder`` saves, as each piece is done:

* ``run.json``: the model and the recipe (a folder of another run is refused, never mixed);
* ``stats-<group>.safetensors``: the calibration statistics of each calibration group
  (rewritten without Hessians once the group's layers are solved);
* ``derived.safetensors``: what the method computed from them before solving layers (AdaTSQ's
  Fisher scores, FP velocities and selection references);
* ``layers/<layer>.safetensors``: every solved layer's state (packed codes, scales, ...) and
  layout, exactly as an artifact stores it;
* ``results-<name>.json``: finished items of a method's later loops (AdaTSQ's step losses and
  selection scores), floats written as JSON (exact).

Every file is written beside its target and renamed (:mod:`adatsq.files`), so a kill -9 leaves
each file whole or absent; the same run restarted reads them back bit for bit and produces the
same artifact. The folder holds no artifact: the CLI keeps it under the output directory, whose
``manifest.json`` (written last) is what marks a finished artifact.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from adatsq.calib.capture import CalibrationStats
from adatsq.calib.fisher import FisherResult
from adatsq.files import atomic_path, write_json
from adatsq.io import ArtifactError, read_tensors, write_tensors
from adatsq.quant.qlinear import QuantLinear

log = logging.getLogger(__name__)

FORMAT = "adatsq-checkpoint"
VERSION = 1
_STATS_FIELDS = ("rows", "absmax", "minmax", "samples", "hessian")


class CheckpointError(ValueError):
    """A checkpoint folder that belongs to another run or cannot be read."""


class Checkpoint:
    """The progress of one run in ``folder``.

    Args:
        folder: where the progress lives (created).
        run: what identifies the run (model and recipe, as JSON): an existing folder with
            another ``run`` is refused.
        writer: whether this process writes (rank 0 of a distributed run; the others read).

    Example:
        >>> import tempfile
        >>> ckpt = Checkpoint(Path(tempfile.mkdtemp()) / "ckpt", {"model": "m"})
        >>> ckpt.save_result("losses", 0, [0.5, 0.25])
        >>> Checkpoint(ckpt.folder, {"model": "m"}).results("losses")
        {0: [0.5, 0.25]}
    """

    def __init__(self, folder: str | Path, run: dict[str, Any], writer: bool = True):
        self.folder = Path(folder)
        self.writer = writer
        run = json.loads(json.dumps(run))  # as JSON stores it
        marker = self.folder / "run.json"
        if marker.is_file():
            try:
                kept = json.loads(marker.read_text())
            except json.JSONDecodeError:
                kept = None
            if not isinstance(kept, dict) or kept.get("format") != FORMAT:
                raise CheckpointError(f"{self.folder} is not a readable checkpoint; remove it "
                                      "(or pass --overwrite) to start over")
            if kept.get("run") != run:
                raise CheckpointError(f"{self.folder} holds the checkpoint of another run "
                                      f"({_difference(kept.get('run'), run)}); rerun that "
                                      "command, or pass --overwrite to start this one over")
            log.info("resuming from %s", self.folder)
            if writer:  # what a kill left half-written (atomic_path's hidden names)
                for stale in [*self.folder.glob(".*.tmp*"), *self.folder.glob("layers/.*.tmp*")]:
                    stale.unlink(missing_ok=True)
        elif writer:
            if self.folder.is_dir():  # content without run.json: a kill before it was written
                shutil.rmtree(self.folder)
            write_json({"format": FORMAT, "version": VERSION, "run": run}, marker)

    # -- calibration statistics ----------------------------------------------------------------
    def save_stats(self, group: int, stats: CalibrationStats, hessians: bool = True) -> None:
        """Saves the statistics of calibration group ``group`` (without Hessians if asked)."""
        if not self.writer:
            return
        tensors = {}
        for name in _STATS_FIELDS:
            if name == "hessian" and not hessians:
                continue
            for layer, t in getattr(stats, name).items():
                tensors[f"{name}/{layer}"] = t
        for name in ("latents", "sigmas"):
            if getattr(stats, name) is not None:
                tensors[name] = getattr(stats, name)
        for key, t in (stats.cond or {}).items():
            tensors[f"cond/{key}"] = t
        meta = {"layers": json.dumps(stats.layers), "steps": str(stats.steps),
                "cond": json.dumps(stats.cond is not None)}
        self._write(f"stats-{group}.safetensors", tensors, meta)

    def stats(self, group: int) -> CalibrationStats | None:
        """The saved statistics of ``group``, or None."""
        loaded = self._read(f"stats-{group}.safetensors")
        if loaded is None:
            return None
        tensors, meta = loaded
        layers = json.loads(meta["layers"])
        fields = {name: {} for name in _STATS_FIELDS}
        cond = {}
        for key, t in tensors.items():
            head, _, rest = key.partition("/")
            if head in fields:
                fields[head][rest] = t
            elif head == "cond":
                cond[rest] = t
        return CalibrationStats(layers=layers, steps=int(meta["steps"]), **fields,
                                latents=tensors.get("latents"), sigmas=tensors.get("sigmas"),
                                cond=cond if json.loads(meta["cond"]) else None)

    # -- what a method derived from them -------------------------------------------------------
    def save_derived(self, derived: dict) -> None:
        """Saves ``CalibrationStats.derived`` (tensors and Fisher results, by key)."""
        if not self.writer or not derived:
            return
        tensors, entries = {}, []
        for i, (key, value) in enumerate(derived.items()):
            if isinstance(value, FisherResult):
                tensors[f"{i}/scores"] = torch.from_numpy(value.scores)
                tensors[f"{i}/sigmas"] = torch.from_numpy(value.sigmas)
                entries.append([repr(key), "fisher", value.layers])
            elif isinstance(value, torch.Tensor):
                tensors[f"{i}/value"] = value
                entries.append([repr(key), "tensor", None])
            else:
                raise TypeError(f"cannot checkpoint a derived {type(value).__name__}")
        self._write("derived.safetensors", tensors, {"entries": json.dumps(entries)})

    def derived(self) -> dict:
        """The saved derived results (empty if none)."""
        loaded = self._read("derived.safetensors")
        if loaded is None:
            return {}
        tensors, meta = loaded
        out = {}
        for i, (key, kind, layers) in enumerate(json.loads(meta["entries"])):
            if kind == "fisher":
                out[ast.literal_eval(key)] = FisherResult(layers, tensors[f"{i}/scores"].numpy(),
                                                          tensors[f"{i}/sigmas"].numpy())
            else:
                out[ast.literal_eval(key)] = tensors[f"{i}/value"]
        return out

    # -- solved layers -------------------------------------------------------------------------
    def save_layer(self, name: str, layer: QuantLinear) -> None:
        """Saves a solved layer's state and layout."""
        if self.writer:
            meta = {"layout": json.dumps(layer.layout()),
                    "activation_bits": json.dumps(layer.activation.bits)}
            self._write(f"layers/{name}.safetensors", layer.state_dict(), meta)

    def layers(self) -> dict[str, QuantLinear]:
        """Every saved layer, rebuilt (:meth:`QuantLinear.from_state`) in its stored dtype."""
        out = {}
        folder = self.folder / "layers"
        for path in sorted(folder.glob("[!.]*.safetensors")) if folder.is_dir() else []:
            tensors, meta = self._read(f"layers/{path.name}")
            bits = json.loads(meta["activation_bits"])
            out[path.name.removesuffix(".safetensors")] = QuantLinear.from_state(
                json.loads(meta["layout"]), tensors,
                tuple(bits) if isinstance(bits, list) else bits, dtype=None)
        return out

    # -- finished items of later loops ---------------------------------------------------------
    def save_result(self, name: str, index: int, value: Any) -> None:
        """Adds item ``index`` of loop ``name`` (a JSON value)."""
        if self.writer:
            done = self.results(name)
            done[index] = value
            write_json({str(i): v for i, v in sorted(done.items())},
                       self.folder / f"results-{name}.json", indent=None)

    def results(self, name: str) -> dict[int, Any]:
        """The finished items of loop ``name`` by index."""
        path = self.folder / f"results-{name}.json"
        if not path.is_file():
            return {}
        try:
            return {int(i): v for i, v in json.loads(path.read_text()).items()}
        except (json.JSONDecodeError, ValueError, AttributeError):
            raise CheckpointError(f"{path} is corrupt; remove {self.folder} (or pass "
                                  "--overwrite) to start over") from None

    # -- files ---------------------------------------------------------------------------------
    def _write(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        # where each tensor lived, so that a resumed run holds it there again
        devices = {k: v.device.type for k, v in tensors.items() if v.device.type != "cpu"}
        with atomic_path(self.folder / name, suffix=".safetensors") as tmp:
            write_tensors(tensors, tmp, metadata={**meta, "devices": json.dumps(devices)})

    def _read(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        path = self.folder / name
        if not path.is_file():
            return None
        try:
            tensors, meta = read_tensors(path)
            devices = json.loads(meta.get("devices", "{}"))
        except (ArtifactError, OSError, ValueError):
            raise CheckpointError(f"{path} is corrupt; remove {self.folder} (or pass "
                                  "--overwrite) to start over") from None
        for key, device in devices.items():
            if device == "cuda" and torch.cuda.is_available():
                tensors[key] = tensors[key].to("cuda")
        return tensors, meta


def digest(value: Any) -> str:
    """A short hash of a JSON value: names a checkpointed loop by its inputs.

    Example:
        >>> digest([1, 2]) == digest([1, 2]) != digest([2, 1])
        True
    """
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:12]


def _difference(kept: Any, run: dict[str, Any]) -> str:
    """The first field where two runs differ, for the error message."""
    if not isinstance(kept, dict):
        return "unreadable run"
    for key in sorted(set(kept) | set(run)):
        if kept.get(key) != run.get(key):
            return f"its {key} differs"
    return "same"
