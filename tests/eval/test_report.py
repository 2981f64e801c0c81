"""The side-by-side report on tiny locally built zoo models of every class (image and video)."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from adatsq.config import CalibrationSpec
from adatsq.eval.report import combine, compare, make_rows
from adatsq.zoo import clips, registry

TINY = {
    "tiny-zimage": registry.ZooEntry(
        "tiny-zimage", "ZImageTransformer2DModel",
        dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=12, dim=32, n_layers=1,
             n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=384, axes_dims=[4, 6, 6],
             axes_lens=[64, 16, 16]),
        "tiny-zimage", steps=3, guidance_scale=2.0),
    "tiny-wan": registry.ZooEntry(
        "tiny-wan", "WanTransformer3DModel",
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=12,
             out_channels=12, text_dim=384, freq_dim=32, ffn_dim=64, num_layers=1,
             rope_max_seq_len=32),
        "tiny-wan", steps=3, guidance_scale=2.0, frames=clips.FRAMES),
}


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """Registers the tiny entries with random weights saved where the zoo looks for them."""
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    for name, entry in TINY.items():
        torch.manual_seed(0)
        save_file(entry.build_model().state_dict(), str(entry.weights_path()))
        monkeypatch.setitem(registry.ENTRIES, name, entry)
    return tmp_path


def _small(rows):
    return [dataclasses.replace(r, recipe=dataclasses.replace(
        r.recipe, calibration=CalibrationSpec(num_prompts=4))) if r.recipe else r for r in rows]


def test_video_report_has_the_video_metrics_and_fidelity(tiny_zoo):
    out = tiny_zoo / "wan"
    rows = _small(make_rows(["fp", "rtn"], ["W8A8", "W3A3"]))
    report = compare("tiny-wan", rows, 3, out, progress=False, figures=False)
    fp, w8, w3 = report["rows"]
    assert fp["method"] == "fp" and fp["psnr"] is None
    for row in report["rows"]:
        assert {"per_frame", "dynamic_degree", "total"} <= set(row["eval"])
        assert {"subject_consistency", "background_consistency", "motion_smoothness",
                "temporal_flicker"} <= set(row["video"])
        assert row["fd"] is None
    assert w8["psnr"] > w3["psnr"] and w8["ssim"] > w3["ssim"]  # 8 bits stay closer to FP
    assert json.loads((out / "report.json").read_text())["rows"][2]["video"] == w3["video"]
    table = (out / "report.md").read_text()
    assert "| subj |" in table and "dynamic_degree" in table
    assert (out / "samples.png").stat().st_size > 0


def test_zimage_report_and_the_combined_report(tiny_zoo):
    rows = _small(make_rows(["fp", "rtn"], ["W4A4", "W3A3"]))
    compare("tiny-zimage", rows, 1, tiny_zoo / "bench" / "tiny-zimage", progress=False,
            figures=False)
    compare("tiny-wan", rows, 2, tiny_zoo / "bench" / "tiny-wan", progress=False,
            figures=False)
    path = combine(tiny_zoo / "bench", ["tiny-zimage", "tiny-wan"])
    text = path.read_text()
    assert "| rtn | W4A4 |" in text and "tiny-zimage" in text and "tiny-wan" in text
    assert (tiny_zoo / "bench" / "radar.png").exists()
