"""The side-by-side report on tiny locally built zoo models of every class (image and video)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from adatsq.bench import combine, compare, make_rows, paired_analysis, parse_bits
from adatsq.config import CalibrationSpec
from adatsq.zoo import clips, registry

pytestmark = pytest.mark.slow  # end to end (make test-unit skips it)

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


def test_bit_settings_parse_wide_and_narrow_widths():
    assert parse_bits("W16A4") == (16, 4) and parse_bits("w4a16") == (4, 16)
    rows = make_rows(["svdquant_r32", "+pareto"], ["W16A3"])
    assert [r.label for r in rows] == ["svdquant_r32 W16A3", "+pareto W16A3"]
    assert rows[0].recipe.options.changed() == {"rank": 32} and rows[0].recipe.method == "svdquant"
    assert rows[0].recipe.weights.bits == 16 and rows[0].recipe.activations.bits == 3
    for bad in ("W4", "A4W4", "W4Ax", "4A4"):
        with pytest.raises(ValueError, match="not of the form"):
            parse_bits(bad)


def _synthetic(per):
    rows = [{"method": m, "label": f"{m} {b}", "bits": b, "psnr": None if m == "fp" else 20.0,
             "eval": {"total": 0.0}, **({"validation": v} if v else {})}
            for m, b, v in [("fp", "W16A16", None), ("adatsq", "W4A4", None),
                            ("rtn", "W4A4", {"total": 0.5, "psnr": 20.0}),
                            ("quarot", "W4A4", {"total": 0.9, "psnr": 22.0}),
                            ("svdquant_r32", "W4A4", {"total": 1.0, "psnr": 30.0})]]
    samples = {"strata": ["a", "a", "b", "b"], "rows": {
        f"{m} {'W16A16' if m == 'fp' else 'W4A4'}": {"total": t, "psnr": p, "ssim": p}
        for m, (t, p) in per.items()}}
    return rows, samples


def test_paired_analysis_gives_one_verdict_per_baseline_and_metric():
    rows, samples = _synthetic({
        "fp": ([1, 1, 1, 1], None),
        "adatsq": ([1, 1, 1, 0], [30, 31, 32, 33]),
        "rtn": ([0, 0, 0, 0], [20, 21, 22, 23]),
        "quarot": ([1, 1, 1, 0], [30, 30, 32, 33]),
        "svdquant_r32": ([1, 1, 1, 1], [40, 41, 42, 43]),
    })
    result = paired_analysis(rows, samples)
    got = {(v["baseline"], v["metric"]): v for v in result["verdicts"]}
    assert set(got) == {(b, m) for b in ("rtn", "quarot", "svdquant_r32")
                        for m in ("total", "psnr", "ssim")}
    assert got["rtn", "psnr"]["verdict"] == "beats" and got["rtn", "psnr"]["diff"] == 10
    assert got["svdquant_r32", "psnr"]["verdict"] == "loses"
    assert got["quarot", "total"]["verdict"] == "ties" and got["quarot", "total"]["diff"] == 0
    # strata: total = mean of the group means; adatsq loses 1 of 2 in group b
    assert rows[1]["paired"]["fp"]["total"]["diff"] == pytest.approx(-0.25)
    assert rows[1]["paired"]["rtn"]["psnr"]["diff"] == pytest.approx(10)
    # the strongest equal-size baseline comes from the validation scores (r32 is not one)
    assert result["strongest"]["W4A4"]["baseline"] == "quarot"
    assert got["quarot", "total"]["strongest"] and not got["rtn", "total"]["strongest"]


def test_paired_analysis_judges_faithfulness_where_every_quantized_row_has_it():
    per = {"fp": ([1, 1, 1, 1], None), "adatsq": ([1, 1, 1, 1], [30, 31, 32, 33]),
           "rtn": ([1, 1, 1, 1], [20, 21, 22, 23]), "quarot": ([1, 1, 1, 1], [30, 30, 32, 33]),
           "svdquant_r32": ([1, 1, 1, 1], [40, 41, 42, 43])}
    faithful = {"adatsq": [1.0, 1.0, 0.75, 1.0], "rtn": [0.25, 0.5, 0.25, 0.5],
                "quarot": [1.0, 1.0, 0.75, 1.0], "svdquant_r32": [1.0, 1.0, 1.0, 1.0]}
    rows, samples = _synthetic(per)
    for method, scores in faithful.items():
        samples["rows"][f"{method} W4A4"]["faithful"] = scores
    got = {(v["baseline"], v["metric"]): v for v in paired_analysis(rows, samples)["verdicts"]}
    # the task total ties everywhere (saturated); faithfulness tells rtn apart
    assert got["rtn", "total"]["verdict"] == "ties"
    assert got["rtn", "faithful"]["verdict"] == "beats"
    assert got["rtn", "faithful"]["diff"] == pytest.approx(0.5625)
    assert got["quarot", "faithful"]["verdict"] == "ties"
    assert rows[1]["paired"]["rtn"]["faithful"]["diff"] == pytest.approx(0.5625)
    # a report from before faithfulness (one row without it) gets no faithful verdicts
    del samples["rows"]["quarot W4A4"]["faithful"]
    assert all(v["metric"] != "faithful" for v in paired_analysis(rows, samples)["verdicts"])


def test_report_has_paired_intervals_validation_and_environment(tiny_zoo):
    out = tiny_zoo / "paired"
    rows = _small(make_rows(["fp", "rtn", "svdquant"], ["W4A4"]))
    report = compare("tiny-zimage", rows, 2, out, progress=False, figures=False, validation=6)
    env = report["environment"]
    assert set(env) == {"commit", "torch", "diffusers", "threads", "seed"}
    assert env["threads"] == torch.get_num_threads() and env["seed"] == 0
    assert report["validation"]["num_prompts"] == 6
    samples = json.loads((out / "per_sample.json").read_text())
    fp, rtn, svd = report["rows"]
    for row in (rtn, svd):
        per = samples["rows"][row["label"]]
        assert len(per["total"]) == report["num_prompts"] == 12
        assert np.mean(per["psnr"]) == pytest.approx(row["psnr"])
        # the stratified mean of the per-prompt scores is the task total
        strata = np.array(samples["strata"])
        means = [np.mean(np.array(per["total"])[strata == c]) for c in np.unique(strata)]
        assert np.mean(means) == pytest.approx(row["eval"]["total"])
        assert row["paired"]["fp"]["total"]["diff"] == pytest.approx(
            row["eval"]["total"] - fp["eval"]["total"])
        assert row["validation"]["num_prompts"] == 6 and row["bops"] > 0
    assert set(svd["paired"]["rtn"]) == {"total", "psnr", "ssim", "faithful"}
    for row in (rtn, svd):
        faithful = samples["rows"][row["label"]]["faithful"]
        assert np.mean(faithful) == pytest.approx(row["faithful"]) and 0 <= row["faithful"] <= 1
    assert "Δ FP [95%]" in (out / "report.md").read_text()
