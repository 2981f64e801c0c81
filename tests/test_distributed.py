"""Work split over ranks: shares partition the items, ``map_items`` resumes and returns every
result in order, two gloo processes under torchrun produce the single process's artifact up to
float summation order, and a killed two-rank run resumes to the identical artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adatsq.distributed import Ranks, current, map_items

QUICK = ["flux-digits", "--calib-prompts", "4", "--steps", "6"]
ADATSQ = json.dumps({"fisher_prompts": 2, "step_prompts": 2, "select_prompts": 4,
                     "select_paths": 2})


@pytest.mark.parametrize("n", [0, 1, 5, 7, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shares_partition_the_items_in_order(n, world):
    shares = [Ranks(r, world).share(n) for r in range(world)]
    assert [i for s in shares for i in s] == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_map_items_resumes_and_reports_each_new_result_in_order():
    seen = []
    out = map_items(5, lambda i: i * 10, done={1: "kept", 3: "kept"},
                    on_result=lambda i, v: seen.append((i, v)), progress=False)
    assert out == [0, "kept", 20, "kept", 40]
    assert seen == [(0, 0), (2, 20), (4, 40)]
    assert current() == Ranks(0, 1) and Ranks().main


def _quantize(out, *args, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "adatsq.cli"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={ranks}", "-m", "adatsq.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "quantize", *QUICK, *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.slow
def test_two_gloo_ranks_reproduce_one_process_up_to_summation_order(tmp_path):
    from adatsq.pipeline import load

    _quantize(tmp_path / "one", "--method", "gptq")
    done = _quantize(tmp_path / "two", "--method", "gptq", ranks=2)
    assert "on 2 ranks" in done.stdout
    (one, p1), (two, p2) = load(tmp_path / "one"), load(tmp_path / "two")
    assert p1.layers == p2.layers  # same bits everywhere
    m1, m2 = dict(one.transformer.named_modules()), dict(two.transformer.named_modules())
    differ = total = 0
    for name in p1.layers:
        differ += int((m1[name].codes != m2[name].codes).sum())
        total += m1[name].codes.numel()
    # The Hessians are sums of x xᵀ over the same rows, added in another order (each rank's
    # share, then the reduction): they agree to float32 rounding, and GPTQ's rounding of a
    # weight moves only where it sat within that rounding of a decision boundary.
    assert differ / total < 1e-3, differ / total
    rest = [k for k in one.transformer.state_dict() if not k.endswith(("qweight", "scale",
                                                                        "zero"))]
    s1, s2 = one.transformer.state_dict(), two.transformer.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in rest)  # the 16-bit rest is untouched


@pytest.mark.slow
def test_adatsq_search_split_over_two_ranks(tmp_path):
    _quantize(tmp_path / "one", "--method", "adatsq", "--options", ADATSQ)
    _quantize(tmp_path / "two", "--method", "adatsq", "--options", ADATSQ, ranks=2)
    s1, s2 = [json.loads((tmp_path / d / "policy.json").read_text())["settings"]
              for d in ("one", "two")]
    f1, f2 = np.array(s1["fisher"]["scores"]), np.array(s2["fisher"]["scores"])
    assert np.abs(f1 - f2).max() <= 1e-5 * np.abs(f1).max()  # Fisher sums over the ranks
    for s in (s1, s2):  # a full search on each: every step scored, every path tried
        assert len(s["search"]["candidate_losses"]) == 6
        assert len(s["search"]["selection_scores"]) == len(s["search"]["tried"]["paths"])
        assert s["search"]["mean_bits"] <= s["search"]["budget"] + 1e-9


def _kill_all(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker`` (torchrun and its ranks: the
    ranks run in sessions of their own)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(
                    errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_to_the_identical_artifact(tmp_path):
    options = ["--method", "adatsq", "--options", ADATSQ]
    _quantize(tmp_path / "reference", *options, ranks=2)
    out = tmp_path / "out"
    scored = out / "checkpoint" / "results-step_losses.json"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", "-m", "adatsq.cli", "quantize", *QUICK, *options,
                "--out", str(out)]
    proc = subprocess.Popen(launcher, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if scored.is_file() and len(json.loads(scored.read_text())) >= 2:
            _kill_all(str(out))
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert not (out / "manifest.json").exists(), "the run ended before it could be killed"
    done = _quantize(out, *options, ranks=2)
    assert "resumed from its checkpoint" in done.stdout
    assert (out / "model.safetensors").read_bytes() == \
        (tmp_path / "reference" / "model.safetensors").read_bytes()
    policies = [json.loads((d / "policy.json").read_text()) for d in (tmp_path / "reference", out)]
    for p in policies:
        del p["settings"]["seconds"], p["settings"]["phases"]
    assert policies[0] == policies[1]


def _two_rank_errors(rank: int, store: str, out: str) -> None:
    """A rank of the test below: records what each collective helper raised on this rank."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    seen = {}

    def compute(i):
        if i == 3:  # rank 1's item of the second round
            raise KeyError("boom")
        return i

    for name, call in (("map", lambda: map_items(4, compute, progress=False)),
                       ("agree", lambda: current().agree(rank, "test values"))):
        try:
            call()
            seen[name] = "returned"
        except Exception as exc:  # noqa: BLE001 - recorded for the test to check
            seen[name] = f"{type(exc).__name__}: {exc}"
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))


def test_an_error_on_one_rank_is_raised_on_every_rank(tmp_path):
    """A rank that fails inside ``map_items`` (or sees other checkpoint contents) makes every
    rank raise, instead of leaving the others waiting in a collective forever."""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_errors, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
             join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[1]["map"] == "KeyError: 'boom'"  # its own error where it happened
    assert seen[0]["map"] == "ValueError: rank 1 failed: KeyError: 'boom'"
    assert all("ranks see different test values" in s["agree"] for s in seen)
