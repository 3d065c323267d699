"""Plots and atomic writes: real PNGs with content, and nothing half-written on failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import no_temp_files
from toolkit import io_utils, plots
from toolkit.io_utils import atomic_write, write_json
from toolkit.plots import plot_confusion_matrix, plot_pr_curve, plot_roc_curve, write_misclassified

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load_png(path: Path) -> np.ndarray:
    """Check the file is a complete PNG and return its RGB pixels (float 0..1)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()  # checksums; a truncated file fails here
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def _assert_not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 0.05
    assert (pixels.min(axis=2) < 0.5).mean() > 0.005  # some dark ink: text, lines


@pytest.fixture(scope="module")
def binary_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    return y, np.clip(0.35 * y + rng.uniform(0, 0.65, y.size), 0, 1)


def test_confusion_matrix_png(tmp_path: Path) -> None:
    cm = [[8, 2], [3, 7]]
    out = plot_confusion_matrix(cm, ["not hateful", "hateful"], tmp_path / "cm.png", title="val")
    assert out == tmp_path / "cm.png"
    px = _load_png(out)
    fig_inches = 2.5 + 0.9 * 2 + 0.5
    assert px.shape == (round(fig_inches * plots.DPI), round(fig_inches * plots.DPI), 3)
    _assert_not_blank(px)
    assert no_temp_files(tmp_path)

    # The heatmap is the blue region (text and ticks are black/white). Split it in 2x2 cells:
    # each cell is shaded, and the diagonal (80%, 70% of its row) is darker than the off-diagonal.
    blue = (px[..., 2] - px[..., 0]) > 0.1
    rows, cols = np.nonzero(blue)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    assert bottom - top > 100 and right - left > 100
    mid_r, mid_c = (top + bottom) // 2, (left + right) // 2
    cells = {
        (0, 0): px[top:mid_r, left:mid_c], (0, 1): px[top:mid_r, mid_c:right],
        (1, 0): px[mid_r:bottom, left:mid_c], (1, 1): px[mid_r:bottom, mid_c:right],
    }
    brightness = {k: np.median(v.mean(axis=2)) for k, v in cells.items()}
    assert brightness[(0, 0)] < brightness[(1, 0)] < brightness[(0, 1)]  # 80% < 30% < 20% shade order
    assert brightness[(1, 1)] < brightness[(1, 0)]
    for cell in cells.values():
        assert (cell[..., 2] - cell[..., 0] > 0.05).mean() > 0.5  # shaded background
        lum = cell.mean(axis=2)
        assert (np.abs(lum - np.median(lum)) > 0.3).mean() > 0.002  # the count/percentage text


def test_confusion_matrix_many_long_labels(tmp_path: Path) -> None:
    labels = [f"a rather long category name number {i} that would overlap its neighbours" for i in range(6)]
    cm = np.arange(36).reshape(6, 6)
    cm[2] = 0  # an empty row must not divide by zero
    px = _load_png(plot_confusion_matrix(cm, labels, tmp_path / "cm6.png"))
    _assert_not_blank(px)
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion_matrix(cm, labels[:5], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("plot", [plot_roc_curve, plot_pr_curve])
def test_curve_png(plot, tmp_path: Path, binary_scores) -> None:
    y, s = binary_scores
    px = _load_png(plot(y, s, tmp_path / "one.png", label="lora r=8"))
    assert px.shape == (500, 550, 3)
    _assert_not_blank(px)
    # The curve is drawn in matplotlib's first colour (C0, #1f77b4).
    c0 = np.array([0x1F, 0x77, 0xB4]) / 255
    assert (np.abs(px - c0).max(axis=2) < 0.08).sum() > 200

    # Several runs on one plot; a run whose labels hold one class is listed, not fatal.
    curves = {"r=4": (y, s), "r=16": (y, s ** 2), "tiny split": (np.ones(5, int), np.linspace(0, 1, 5))}
    px2 = _load_png(plot(curves, None, tmp_path / "many.png", title="compare"))
    _assert_not_blank(px2)
    assert no_temp_files(tmp_path)


def test_curve_argument_errors(tmp_path: Path, binary_scores) -> None:
    y, s = binary_scores
    with pytest.raises(ValueError, match="binary"):
        plot_roc_curve(np.full(y.size, 2), s, tmp_path / "x.png")
    with pytest.raises(ValueError, match="scores=None"):
        plot_pr_curve({"a": (y, s)}, s, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_rendering_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cm.png"
    target.write_bytes(b"previous run")

    def broken_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(PNG_SIGNATURE + b"half a picture")
        raise RuntimeError("killed mid-render")

    monkeypatch.setattr(plots.Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="mid-render"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], target)
    assert target.read_bytes() == b"previous run"
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def test_atomic_write_failure_removes_temp(tmp_path: Path) -> None:
    def half_then_raise(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt  # BaseException, like Ctrl-C or a pre-emption signal handler

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.bin", half_then_raise)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_success(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("done")

    out = atomic_write(tmp_path / "sub" / "file.txt", write)
    assert out.read_text() == "done"
    assert seen[0].parent == out.parent and seen[0].suffix == ".txt"  # same dir, format-preserving name
    assert not seen[0].exists()
    assert out.stat().st_mode & 0o777 == io_utils._FILE_MODE  # not mkstemp's 0600


def test_write_json_numpy(tmp_path: Path) -> None:
    obj = {"acc": np.float32(0.5), "n": np.int64(3), "cm": np.eye(2, dtype=int), "path": tmp_path, "none": None}
    out = write_json(tmp_path / "metrics.json", obj)
    assert json.loads(out.read_text()) == {"acc": 0.5, "n": 3, "cm": [[1, 0], [0, 1]], "path": str(tmp_path),
                                           "none": None}
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_write_misclassified(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {"text": ["pipes | and\nnewlines", "plain"], "true": ["neg", "pos"], "predicted": ["pos", "neg"],
         "confidence": [0.91234, 0.7], "p_true": [0.08766, 0.3]},
        index=pd.Index([7, 2], name="row"),
    )
    csv_path, md_path = write_misclassified(df, tmp_path / "errors")
    assert (csv_path.name, md_path.name) == ("errors.csv", "errors.md")
    back = pd.read_csv(csv_path, index_col="row")
    assert back["text"].tolist() == df["text"].tolist()  # full text, newline included
    assert back.index.tolist() == [7, 2]
    md = md_path.read_text().splitlines()
    assert md[0] == "| row | text | true | predicted | confidence | p_true |"
    assert md[2] == "| 7 | pipes \\| and newlines | neg | pos | 0.912 | 0.088 |"
    assert len(md) == 4
    assert no_temp_files(tmp_path)
