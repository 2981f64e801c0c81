"""Figures of the benchmark scripts: written atomically as readable PNGs from their reports."""

import numpy as np
from PIL import Image

from adatsq.eval.plots import frame_strips, sample_grid, selection_plot, step_damage_plot


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


def _widest_blank_band(image: np.ndarray) -> int:
    """The most consecutive all-white rows of an image."""
    blank = (image >= 250).all(axis=(1, 2))
    best = run = 0
    for b in blank:
        run = run + 1 if b else 0
        best = max(best, run)
    return best


def test_sample_sheets_have_no_blank_band(tmp_path):
    """Tall sheets (a bench's 39 methods) and frame strips: the title sits right above the grid,
    and no white band is taller than a tenth of one sample row."""
    grey = np.zeros((12, 3, 32, 32))
    tall = sample_grid({f"method {i}": grey for i in range(39)}, [f"a {i}" for i in range(12)],
                       tmp_path / "tall.png", title="tiny: rows = methods, columns = prompts")
    clips = frame_strips(np.zeros((4, 3, 5, 32, 32)))
    wide = sample_grid({f"method {i}": clips for i in range(3)}, [f"a {i}" for i in range(4)],
                       tmp_path / "clips.png", title="tiny video")
    for path, rows in ((tall, 39), (wide, 3)):
        image = _read(path)
        assert _widest_blank_band(image) < image.shape[0] / rows / 3, path.name
