"""Bad command lines end with a one-line ``adatsq: error: ...`` and exit code 2, before any model is
loaded or anything is written: fast, in-process, part of ``make test-unit`` (the end-to-end CLI
tests are in test_cli.py, marked slow)."""

import json

import pytest

from adatsq.cli import main
from adatsq.io import FORMAT, FORMAT_VERSION

LOADS: set[str] = set()
"""The tests whose refusal comes after the pipeline is loaded (none)."""


@pytest.fixture(autouse=True)
def _no_model_loads(request, monkeypatch):
    """Every refusal here comes before a pipeline is built (minutes for a diffusers model), except
    in the tests of :data:`LOADS`."""
    if request.node.originalname in LOADS:
        return
    import adatsq.commands

    def refuse(*args, **kwargs):
        pytest.fail("a pipeline was loaded for a command line that should have been refused")

    for name in ("load", "load_pipeline", "quantize_", "compare"):
        monkeypatch.setattr(adatsq.commands, name, refuse)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("adatsq: error:") and "\n" not in err and "Traceback" not in err
    assert captured.out == ""
    return err


@pytest.mark.parametrize("argv, words", [
    (["quantize", "no-such-model", "--out", "x"], "unknown model 'no-such-model'"),
    (["quantize", "flux-digits", "--w-bits", "9", "--out", "x"], "weight bit width"),
    (["quantize", "flux-digits", "--a-bits", "1", "--out", "x"], "activation bit width"),
    (["quantize", "flux-digits", "--method", "magic", "--out", "x"], "unknown method 'magic'"),
    (["quantize", "flux-digits", "--options", "{\"alpha\": 2}", "--method", "smoothquant",
      "--out", "x"], "alpha"),
    (["quantize", "flux-digits", "--options", "{\"nope\": 1}", "--out", "x"],
     "nope; it takes none"),
    (["quantize", "flux-digits", "--options", "[1]", "--out", "x"], "RTNOptions"),
    (["quantize", "flux-digits", "--options", "{not json", "--out", "x"], "--options is not"),
    (["quantize", "flux-digits", "--recipe", "r.yaml", "--w-bits", "8", "--out", "x"],
     "--w-bits"),
    (["quantize", "flux-digits", "--recipe", "missing.yaml", "--out", "x"],
     "recipe file 'missing.yaml' not found"),
    (["quantize", "flux-digits", "--calib-prompts", "0", "--out", "x"], "--calib-prompts"),
    (["generate", "--artifact", "missing-dir", "--prompt", "a 3"], "no manifest"),
    (["generate", "--artifact", "missing-dir", "--prompt", "a 3", "--out", "/dev/null/x.png"],
     "no manifest"),  # the arguments in their order: the artifact before --out
    (["generate", "--prompt", "a 3"], "name a model"),
    (["generate", "flux-digits", "--base", "b", "--prompt", "a 3"], "--base"),
    (["generate", "no-such-model", "--prompt", "a 3"], "unknown model"),
    (["generate", "flux-digits", "--prompt", "a 3", "--out", "a.mp4"], ".png"),
    (["generate", "flux-digits", "--prompt", "a 3", "--out", "/dev/null/x.png"], "--out"),
    (["generate", "flux-digits", "--prompts-file", "missing.txt"], "does not exist"),
    (["generate", "flux-digits"], "no prompts given"),
    (["generate", "flux-digits", "--prompt", "a 3", "--steps", "0"], "--steps must be positive"),
    (["generate", "flux-digits", "--prompt", "a 3", "--height", "-8"], "--height"),
    (["evaluate", "flux-digits", "--bits", "W4", "--out", "x"], "W4A4"),
    (["evaluate", "flux-digits", "--bits", "W4A", "--out", "x"], "W4A4"),
    (["evaluate", "flux-digits", "--bits", "W9A9", "--out", "x"], "weight bit width"),
    (["evaluate", "flux-digits", "--methods", "fp,magic", "--out", "x"], "unknown method"),
    (["evaluate", "flux-digits", "--per-category", "-1", "--out", "x"], "--per-category"),
    (["evaluate", "no-such-model", "--out", "x"], "unknown model"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    assert words in _error(capsys, argv)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_an_infeasible_bit_target_is_refused(capsys, tmp_path, monkeypatch):
    """Found by the method's constructor, before the pipeline is loaded (minutes for a hub
    model)."""
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["quantize", "flux-digits", "--method", "adatsq", "--a-bits", "2",
                          "--out", "x"])
    assert "infeasible bit target" in err and "A2" in err
    assert list(tmp_path.iterdir()) == []


def _artifact(folder, manifest) -> str:
    folder.mkdir()
    if manifest is not None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        (folder / "manifest.json").write_text(text)
    return str(folder)


@pytest.mark.parametrize("manifest, words", [
    ("{\"format\": ", "manifest.json is corrupt"),
    ({"format": "something-else", "version": 1}, "not an adatsq artifact"),
    ({"format": FORMAT, "version": FORMAT_VERSION + 1}, "not an adatsq artifact of a version"),
    ({"format": FORMAT, "version": FORMAT_VERSION, "model": "flux-digits"},
     "'model_class' is missing"),
    ({"format": FORMAT, "version": FORMAT_VERSION, "model": "m", "model_class": "c",
      "config": {}, "layers": {"a": {"in_features": "x"}}, "sha256": "0"},
     "layout of layer a is corrupt"),
    (None, "no manifest.json"),
])
def test_a_corrupt_artifact_is_named(capsys, tmp_path, manifest, words):
    art = _artifact(tmp_path / "art", manifest)
    err = _error(capsys, ["generate", "--artifact", art, "--prompt", "a 3", "--out",
                          str(tmp_path / "a.png")])
    assert words in err and art in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_unfinished_run_is_not_an_artifact(capsys, tmp_path):
    art = _artifact(tmp_path / "art", None)
    (tmp_path / "art" / "checkpoint").mkdir()
    err = _error(capsys, ["generate", "--artifact", art, "--prompt", "a 3"])
    assert "unfinished quantization run" in err and "adatsq quantize" in err


def test_existing_outputs_are_refused_before_any_work(capsys, tmp_path):
    image, folder = tmp_path / "a.png", tmp_path / "art"
    image.write_bytes(b"not replaced")
    folder.mkdir()
    assert "exists; pass --overwrite" in _error(
        capsys, ["generate", "flux-digits", "--prompt", "a 3", "--out", str(image)])
    assert "exists; pass --overwrite" in _error(  # a folder takes one file per prompt
        capsys, ["generate", "flux-digits", "--prompt", "a 3", "--out", str(folder)])
    assert "is a folder" in _error(
        capsys, ["generate", "flux-digits", "--prompt", "a 3", "--grid", "--out", str(folder)])
    assert "exists; pass --overwrite" in _error(
        capsys, ["quantize", "flux-digits", "--out", str(folder)])
    assert "is a file" in _error(capsys, ["quantize", "flux-digits", "--out", str(image)])
    assert "exists; pass --overwrite" in _error(
        capsys, ["evaluate", "flux-digits", "--out", str(folder)])
    prompts = tmp_path / "prompts.png"  # an image name, so only the input rule refuses it
    prompts.write_text("a 3\n")
    assert "being read" in _error(capsys, ["generate", "flux-digits", "--prompts-file",
                                           str(prompts), "--out", str(prompts)])
    assert image.read_bytes() == b"not replaced" and list(folder.iterdir()) == []


def test_empty_prompt_file_is_refused(capsys, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    assert "no prompts" in _error(capsys, ["generate", "flux-digits", "--prompts-file", str(empty)])


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


@pytest.mark.parametrize("argv, words", [
    (["quantize", "flux-digits", "--w-bits", "four", "--out", "x"], "--w-bits: invalid int"),
    (["quantize", "flux-digits"], "--out"),
    (["generate", "flux-digits", "--dtype", "int8"], "--dtype: invalid choice"),
    (["compress", "flux-digits"], "invalid choice: 'compress'"),
])
def test_argument_syntax_errors_exit_2_from_the_parser(capsys, argv, words):
    """What argparse refuses ends there: exit code 2, its usage line and a one-line error."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: adatsq") and "error:" in err[-1] and words in err[-1]
