"""The command line: listing, quantize -> artifact -> generate, and one-line errors (exit 2)."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from adatsq.cli import main

pytestmark = pytest.mark.slow  # end to end (make test-unit skips it)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adatsq: error:") and "\n" not in err and "Traceback" not in err
    return err


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


@pytest.mark.parametrize("argv, words", [
    (["quantize", "no-such-model", "--out", "x"], "unknown model"),
    (["quantize", "flux-digits", "--w-bits", "9", "--out", "x"], "bit width"),
    (["quantize", "flux-digits", "--method", "magic", "--out", "x"], "unknown method"),
    (["quantize", "flux-digits", "--method", "adatsq", "--a-bits", "2", "--out", "x"],
     "infeasible bit target"),
    (["quantize", "flux-digits", "--options", "{\"alpha\": 2}", "--method", "smoothquant",
      "--out", "x"], "alpha"),
    (["generate", "--artifact", "missing-dir", "--prompt", "a 3"], "no manifest"),
    (["generate", "--artifact", "missing-dir", "--prompt", "a 3", "--out", "/dev/null/x.png"],
     "no manifest"),  # the arguments in their order: the artifact before --out
    (["quantize", "flux-digits", "--recipe", "r.yaml", "--w-bits", "8", "--out", "x"],
     "--w-bits"),
    (["generate", "flux-digits", "--prompt", "a 3", "--out", "a.mp4"], ".png"),
    (["generate", "flux-digits", "--prompts-file", "missing.txt"], "does not exist"),
    (["evaluate", "flux-digits", "--bits", "W4", "--out", "x"], "W4A4"),
    (["generate", "flux-digits", "--prompt", "a 3", "--steps", "0"], "--steps must be positive"),
    (["quantize", "flux-digits", "--calib-prompts", "0", "--out", "x"], "--calib-prompts"),
    (["quantize", "flux-digits", "--options", "{not json", "--out", "x"], "--options is not"),
    (["evaluate", "flux-digits", "--per-category", "-1", "--out", "x"], "--per-category"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    assert words in _error(capsys, argv)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_empty_prompt_file_is_refused(capsys, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    assert "no prompts" in _error(capsys, ["generate", "flux-digits", "--prompts-file", str(empty)])


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


def test_evaluate_of_an_unknown_model_writes_nothing(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", "no-such-model", "--out", str(out)]) == 2
    assert "unknown model" in capsys.readouterr().err and not out.exists()


def test_a_non_utf8_prompt_file_is_named(capsys, tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"a red 3\n\xff\xfe\n")
    assert f"{bad} is not UTF-8" in _error(capsys, ["generate", "flux-digits",
                                                     "--prompts-file", str(bad)])


def test_a_recipe_field_of_the_wrong_type_is_named(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: rtn\nweights:\n  bits: four\n")
    err = _error(capsys, ["quantize", "flux-digits", "--recipe", str(recipe), "--out",
                          str(tmp_path / "x")])
    assert "weight bit width" in err and "'four'" in err


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
