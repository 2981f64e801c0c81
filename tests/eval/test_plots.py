"""Figures of the benchmark scripts: written atomically as readable PNGs from their reports."""

import numpy as np
from PIL import Image

from adatsq.eval.plots import selection_plot, step_damage_plot


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_selection_plot_is_a_png_and_leaves_no_temporary(tmp_path):
    rows = [{"selection_psnr": 20.0 + i, "test_psnr": 21.0 + 0.5 * i,
             "selection_task": 0.8, "test_total": 0.85 + 0.01 * i} for i in range(4)]
    report = {"model": "tiny", "bits": "W3A3", "rows": rows, "chosen": 3}
    path = selection_plot(report, tmp_path / "selection.png")
    image = _read(path)
    assert image.shape[1] > image.shape[0] > 100  # two panels side by side
    assert (image < 128).any()  # something drawn
    assert [p.name for p in tmp_path.iterdir()] == ["selection.png"]


def test_step_damage_plot_normalizes_each_curve(tmp_path):
    report = {"model": "tiny", "bits": "W16A3", "damage": [4.0, 2.0, 1.0],
              "losses": {"guided": [1.0, 2.0, 3.0]}, "spearman": {"guided": -1.0}}
    image = _read(step_damage_plot(report, tmp_path / "damage.png"))
    assert image.ndim == 3 and image.shape[0] > 100
