"""The command line end to end: listing, quantize -> artifact -> generate, outputs that never
replace inputs. The one-line errors (exit 2) of bad command lines are in test_cli_errors.py, which
runs in ``make test-unit``."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from adatsq.cli import main

pytestmark = pytest.mark.slow  # end to end (make test-unit skips it)


def test_zoo_json_lists_the_embedded_models(capsys):
    assert main(["zoo", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    flux = next(e for e in entries if e["name"] == "flux-digits")
    assert flux["model_class"] == "FluxTransformer2DModel" and flux["steps"] == 50
    assert flux["trained"]


def test_quantize_then_generate_from_the_artifact(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["quantize", "flux-digits", "--method", "rtn", "--w-bits", "4", "--a-bits", "4",
                 "--out", str(art)]) == 0
    assert {p.name for p in art.iterdir()} == {"model.safetensors", "manifest.json", "policy.json",
                                               "config.json", "README.md"}
    out = tmp_path / "samples.png"
    assert main(["generate", "--artifact", str(art), "--prompt", "a red 3", "--steps", "2",
                 "--out", str(out)]) == 0
    with Image.open(out) as image:  # the sample itself, at the model's resolution
        assert image.size == (16, 16) and image.format == "PNG"
    folder = tmp_path / "many"
    assert main(["generate", "--artifact", str(art), "--prompt", "a red 3", "--prompt", "two 5s",
                 "--steps", "2", "--out", f"{folder}/"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["sample-000.png", "sample-001.png"]
    sheet = tmp_path / "sheet.png"
    assert main(["generate", "--artifact", str(art), "--prompt", "a red 3", "--prompt", "two 5s",
                 "--steps", "2", "--grid", "--out", str(sheet)]) == 0
    with Image.open(sheet) as image:  # labelled: larger than the two samples side by side
        assert image.size[0] > 32 and image.size[1] > 16


def test_nan_in_calibration_is_refused(calibrated):
    import torch

    from adatsq.calib.capture import capture
    from tests.conftest import fresh_copy

    pipe = fresh_copy(calibrated[0])
    layer = next(iter(pipe.adapter.quantizable_layers(pipe.transformer).values()))
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        capture(pipe, ["a 3"], progress=False)


def test_outputs_never_overwrite_inputs_or_existing_files(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["quantize", "flux-digits", "--method", "rtn", "--out", str(art)]) == 0
    weights = (art / "model.safetensors").read_bytes()
    capsys.readouterr()
    cases = [
        ["generate", "--artifact", str(art), "--prompt", "a 3", "--out",
         str(art / "model.safetensors")],  # inside the artifact being read
        ["generate", "flux-digits", "--prompt", "a 3", "--out", str(art)],  # a folder
        ["quantize", "flux-digits", "--method", "rtn", "--out", str(art)],  # exists
        ["quantize", "flux-digits", "--method", "rtn", "--out",
         str(art / "model.safetensors")],  # a file where a folder goes
        ["generate", "flux-digits", "--prompt", "a 3", "--out", "/dev/null/x.png"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--out" in err, (argv, err)
    assert (art / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in art.iterdir()) == ["README.md", "config.json", "manifest.json",
                                                      "model.safetensors", "policy.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_help_version_and_methods(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("adatsq ")
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = capsys.readouterr().out
    assert "(default: rtn)" in text and "(default: 4)" in text and "--dtype" in text
    assert main(["methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"rtn", "gptq", "smoothquant", "quarot", "vidit_q", "svdquant", "q_dit",
            "adatsq"} <= set(listed)


def test_the_parser_imports_nothing_heavy():
    """``adatsq --help`` must answer without torch, diffusers or matplotlib (its time is in
    BENCHMARKS.md, not asserted here)."""
    code = ("import sys, adatsq.cli; adatsq.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'matplotlib', 'scipy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
