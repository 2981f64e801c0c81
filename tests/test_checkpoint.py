"""Resumable runs: what a checkpoint saves reads back bit for bit, a resumed run equals an
uninterrupted one (in process and after a real kill -9 of the CLI), and another run's folder
is refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from adatsq import pipeline as flow
from adatsq.calib.fisher import FisherResult
from adatsq.checkpoint import Checkpoint, CheckpointError
from adatsq.config import CalibrationSpec, Recipe
from adatsq.pipeline import quantize_
from tests.conftest import fresh_copy

GPTQ = Recipe(method="gptq", calibration=CalibrationSpec(num_prompts=4, steps=4))


def _same_models(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _without_timing(policy) -> dict:
    data = policy.to_dict()
    data["settings"] = {k: v for k, v in data["settings"].items()
                        if k not in ("seconds", "phases")}
    return data


def test_stats_derived_and_results_read_back_bit_for_bit(calibrated, tmp_path):
    _, stats = calibrated
    ckpt = Checkpoint(tmp_path / "c", {"model": "tiny"})
    ckpt.save_stats(0, stats)
    back = ckpt.stats(0)
    assert back.layers == stats.layers and back.steps == stats.steps
    for field in ("rows", "absmax", "minmax", "samples", "hessian"):
        for name, t in getattr(stats, field).items():
            assert torch.equal(getattr(back, field)[name], t), (field, name)
    assert torch.equal(back.latents, stats.latents) and torch.equal(back.sigmas, stats.sigmas)
    assert all(torch.equal(back.cond[k], v) for k, v in stats.cond.items())
    ckpt.save_stats(0, stats, hessians=False)
    assert ckpt.stats(0).hessian == {}

    scores = np.random.default_rng(0).random((3, 4))
    derived = {("fisher", 16, 1, 4, "velocity"): FisherResult(["a", "b", "c"], scores,
                                                              np.linspace(1, 0.1, 4)),
               ("fp_out", 2.0, "guided", 16): torch.randn(4, 2, 3)}
    ckpt.save_derived(derived)
    again = Checkpoint(tmp_path / "c", {"model": "tiny"}).derived()
    assert again.keys() == derived.keys()
    fisher = again[("fisher", 16, 1, 4, "velocity")]
    assert fisher.layers == ["a", "b", "c"] and np.array_equal(fisher.scores, scores)
    assert torch.equal(again[("fp_out", 2.0, "guided", 16)], derived[("fp_out", 2.0, "guided",
                                                                       16)])
    ckpt.save_result("losses", 3, [0.1 + 0.2, 1e-300])
    assert ckpt.results("losses") == {3: [0.1 + 0.2, 1e-300]}  # JSON floats are exact


def test_another_runs_folder_is_refused(tmp_path):
    Checkpoint(tmp_path / "c", {"model": "tiny", "recipe": {"bits": 4}})
    with pytest.raises(CheckpointError, match="another run.*recipe differs"):
        Checkpoint(tmp_path / "c", {"model": "tiny", "recipe": {"bits": 3}})
    (tmp_path / "c" / "stats-0.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"garbage!")
    with pytest.raises(CheckpointError, match="corrupt"):
        Checkpoint(tmp_path / "c", {"model": "tiny", "recipe": {"bits": 4}}).stats(0)


def test_resumed_run_equals_an_uninterrupted_one(tiny_pipeline, tmp_path, monkeypatch):
    reference = fresh_copy(tiny_pipeline)
    expected = quantize_(reference, GPTQ, progress=False)
    first = fresh_copy(tiny_pipeline)
    policy = quantize_(first, GPTQ, progress=False, checkpoint=tmp_path / "ckpt")
    assert _without_timing(policy) == _without_timing(expected)  # checkpointing changes nothing
    _same_models(first.transformer, reference.transformer)

    # as if killed after half the layers: the statistics are read back, not captured again
    saved = sorted((tmp_path / "ckpt" / "layers").glob("*.safetensors"))
    assert len(saved) == len(expected.layers)
    for path in saved[::2]:
        path.unlink()
    stale = tmp_path / "ckpt" / "layers" / f".{saved[0].name}.k2x9.tmp.safetensors"
    stale.write_bytes(b"half a file")  # what a kill during a write leaves
    monkeypatch.setattr(flow, "capture", lambda *a, **k: pytest.fail("captured again"))
    resumed = fresh_copy(tiny_pipeline)
    policy = quantize_(resumed, GPTQ, progress=False, checkpoint=tmp_path / "ckpt")
    assert _without_timing(policy) == _without_timing(expected) and not stale.exists()
    _same_models(resumed.transformer, reference.transformer)

    with pytest.raises(CheckpointError, match="another run"):
        quantize_(fresh_copy(tiny_pipeline), Recipe(method="gptq", calibration=GPTQ.calibration,
                                                    options={"damp": 0.1}),
                  progress=False, checkpoint=tmp_path / "ckpt")


QUICK = ["flux-digits", "--method", "adatsq", "--calib-prompts", "4", "--steps", "6",
         "--options", json.dumps({"fisher_prompts": 2, "step_prompts": 2, "select_prompts": 4,
                                  "select_paths": 2})]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "adatsq.cli", "quantize", *QUICK, *args]


def _run_until(argv: list[str], done) -> bool:
    """Runs ``argv`` and kills it with SIGKILL as soon as ``done()``; True if it was killed
    (a run that ends first must have succeeded)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            while proc.poll() is None:
                if done():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return True
                time.sleep(0.002)
            err.seek(0)
            assert proc.returncode == 0, err.read()[-2000:]
            return False
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_identical_artifact(tmp_path):
    reference = tmp_path / "reference"
    assert subprocess.run(_cli("--out", str(reference)), capture_output=True).returncode == 0
    out = tmp_path / "out"
    ckpt = out / "checkpoint"

    def layers_saved() -> int:
        folder = ckpt / "layers"
        return len(list(folder.glob("*.safetensors"))) if folder.is_dir() else 0

    def steps_scored() -> int:
        path = ckpt / "results-step_losses.json"
        return len(json.loads(path.read_text())) if path.is_file() else 0

    # killed while solving layers, then again while scoring the search's steps
    assert _run_until(_cli("--out", str(out)), lambda: layers_saved() >= 5)
    assert not (out / "manifest.json").exists() and 5 <= layers_saved() < 39
    from adatsq.pipeline import load  # a partial folder is never taken for an artifact
    with pytest.raises(ValueError, match="unfinished quantization run"):
        load(out)
    assert _run_until(_cli("--out", str(out)), lambda: steps_scored() >= 2)
    assert 2 <= steps_scored() < 6 and layers_saved() == 39
    done = subprocess.run(_cli("--out", str(out)), capture_output=True, text=True)
    assert done.returncode == 0 and "resumed from its checkpoint" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "manifest.json",
                                                     "model.safetensors", "policy.json"]
    tensors = [(d / "model.safetensors").read_bytes() for d in (reference, out)]
    assert tensors[0] == tensors[1]
    policies = [json.loads((d / "policy.json").read_text()) for d in (reference, out)]
    for p in policies:
        del p["settings"]["seconds"], p["settings"]["phases"]
    assert policies[0] == policies[1]


@pytest.mark.slow
def test_a_checkpoint_of_another_command_is_refused_by_the_cli(tmp_path):
    out = tmp_path / "out"
    assert _run_until(_cli("--out", str(out)), lambda: (out / "checkpoint" / "run.json").exists())
    other = subprocess.run(_cli("--out", str(out), "--w-bits", "3"), capture_output=True,
                           text=True)
    assert other.returncode == 2 and "another run" in other.stderr
    assert other.stderr.count("\n") == 1 and "Traceback" not in other.stderr
    assert (out / "checkpoint" / "run.json").exists()  # kept: the first command can resume
