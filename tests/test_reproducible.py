"""A small bench configuration rerun and compared with its committed reference.

The committed reports must be what the landed code produces. This reruns a small slice of
``make bench`` (flux-digits-schnell, 12 test and 12 validation prompts, four rows) and compares
every reported number with ``tests/data/bench_reference.json``. After a change that is meant to
alter results, regenerate it (and the reports) with
``ADATSQ_WRITE_REFERENCE=1 .venv/bin/python -m pytest tests/test_reproducible.py``.
"""

import json
import os
from pathlib import Path

import pytest

from adatsq.bench import compare, make_rows

pytestmark = pytest.mark.slow  # end to end (make test-unit skips it)

REFERENCE = Path(__file__).parent / "data" / "bench_reference.json"
KEYS = ("method", "label", "bits", "w_bits", "a_bits", "psnr", "ssim", "faithful", "fd",
        "model_bytes", "bops", "eval", "eval_se", "paired", "validation")


def _numbers_equal(a, b, path="report"):
    """Every number equal within 1e-9 relative (float sums may differ in the last bits)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _numbers_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _numbers_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def test_a_small_bench_reproduces_its_committed_reference(tmp_path):
    rows = make_rows(["fp"], []) + make_rows(["rtn", "svdquant"], ["W4A4"]) \
        + make_rows(["adatsq"], ["W3A3"])
    report = compare("flux-digits-schnell", rows, 2, tmp_path, progress=False, figures=False,
                     validation=12)
    got = {"rows": [{k: r.get(k) for k in KEYS} for r in report["rows"]],
           "verdicts": report["verdicts"], "strongest": report["validation"]["strongest"]}
    if os.environ.get("ADATSQ_WRITE_REFERENCE"):
        REFERENCE.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(REFERENCE.read_text())
    _numbers_equal(got, expected)
