"""Tests of trainer.plotting: grids read back from their PNGs, boxes, and the HTML report."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from trainer import metrics, plotting


def solid_color_grid(rows: int, columns: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return `[rows, columns, height, width, 3]` cells of distinct solid colours and the colours as uint8."""
    generator = np.random.default_rng(0)
    colors = generator.choice(np.arange(40, 216), size=(rows, columns, 3))
    images = np.broadcast_to(colors[:, :, None, None, :], (rows, columns, height, width, 3)) / 255.0
    return images, colors.astype(np.uint8)


def read_png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def color_box(pixels: np.ndarray, color: np.ndarray) -> tuple[int, int, int, int]:
    """Return (top, left, bottom, right) of the pixels that exactly match `color`."""
    rows, columns = np.nonzero(np.all(pixels == color, axis=-1))
    assert rows.size > 0, f"colour {color} not found in the PNG"
    return rows.min(), columns.min(), rows.max(), columns.max()


def test_image_grid_axes_and_cell_layout(tmp_path):
    images, colors = solid_color_grid(rows=2, columns=5, height=16, width=32)
    figure = plotting.image_grid(images)
    assert len(figure.axes) == 10
    assert all(len(axis.images) == 1 for axis in figure.axes)
    assert all(len(axis.get_xticks()) == 0 and len(axis.get_yticks()) == 0 for axis in figure.axes)

    path = plotting.save_figure(figure, str(tmp_path / "grid.png"))
    pixels = read_png(path)
    expected_width, expected_height = figure.get_size_inches() * plotting.DPI
    assert pixels.shape[1] == pytest.approx(expected_width, abs=1)
    assert pixels.shape[0] == pytest.approx(expected_height, abs=1)

    # Each cell keeps its image's 2:1 aspect ratio and sits at its row and column.
    boxes = {(row, column): color_box(pixels, colors[row, column]) for row in range(2) for column in range(5)}
    for top, left, bottom, right in boxes.values():
        assert (right - left + 1) / (bottom - top + 1) == pytest.approx(2.0, rel=0.1)
    assert all(boxes[0, column][2] < boxes[1, column][0] for column in range(5))
    assert all(boxes[row, column][3] < boxes[row, column + 1][1] for row in range(2) for column in range(4))


def test_image_grid_labels_and_title():
    images = np.zeros((3, 2, 8, 8, 1))
    figure = plotting.image_grid(images, row_labels=["a", "b", "cluster 12 (n=40)"],
                                 column_labels=["z_l fixed", "z_l sampled"], title="Fig. 6")
    assert [axis.get_ylabel() for axis in figure.axes[::2]] == ["a", "b", "cluster 12 (n=40)"]
    assert [axis.get_title() for axis in figure.axes[:2]] == ["z_l fixed", "z_l sampled"]
    assert figure.get_suptitle() == "Fig. 6"
    assert figure.axes[0].images[0].get_cmap().name == "gray"


def test_image_grid_figure_size_follows_grid():
    small = plotting.image_grid(np.zeros((2, 3, 8, 8, 3)))
    large = plotting.image_grid(np.zeros((4, 9, 8, 8, 3)))
    small_width, small_height = small.get_size_inches()
    large_width, large_height = large.get_size_inches()
    assert large_width > 2.5 * small_width
    assert large_height > 1.8 * small_height


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8, 3)), "rows, columns"),
    (np.zeros((1, 1, 8, 8, 2)), "1 or 3"),
    (np.full((1, 1, 8, 8, 3), -1.0), r"\[0, 1\]"),
    (np.full((1, 1, 8, 8, 3), np.nan), "NaN"),
])
def test_image_grid_rejects_invalid_images(images, message):
    with pytest.raises(ValueError, match=message):
        plotting.image_grid(images)


def test_image_grid_rejects_wrong_label_count():
    with pytest.raises(ValueError, match="row_labels"):
        plotting.image_grid(np.zeros((2, 2, 4, 4, 3)), row_labels=["only one"])


def test_image_rows_uneven_lengths(tmp_path):
    rows = [("cluster 0 (n=3)", np.ones((3, 8, 8, 3)) * 0.5),
            ("cluster 1 (n=0)", np.zeros((0, 8, 8, 3))),
            ("cluster 2 (n=6)", np.ones((6, 8, 8, 3), dtype=np.uint8) * 200)]
    figure = plotting.image_rows(rows, title="Fig. 7")
    assert len(figure.axes) == 3 * 6
    assert sum(len(axis.images) for axis in figure.axes) == 9
    assert [figure.axes[index].get_ylabel() for index in (0, 6, 12)] == [label for label, _ in rows]

    path = plotting.save_figure(figure, str(tmp_path / "rows.png"))
    assert read_png(path).shape[0] > 0
    assert os.listdir(tmp_path) == ["rows.png"]


def test_image_rows_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="same height and width"):
        plotting.image_rows([("a", np.zeros((1, 8, 8, 3))), ("b", np.zeros((1, 4, 4, 3)))])


def test_save_figure_through_gfile_scheme(tmp_path):
    figure = plotting.image_grid(np.zeros((1, 2, 4, 4, 3)))
    path = plotting.save_figure(figure, f"file://{tmp_path}/nested/grid.png")
    assert path.startswith("file://")
    with open(tmp_path / "nested" / "grid.png", "rb") as handle:
        assert handle.read().startswith(plotting.PNG_SIGNATURE)
    assert os.listdir(tmp_path / "nested") == ["grid.png"]


def test_draw_boxes_outline():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    result = plotting.draw_boxes(image, np.array([[2, 3, 6, 8]]), (255, 0, 0))
    assert result.dtype == np.uint8
    assert np.all(image == 0)

    expected = np.zeros((10, 10), dtype=bool)
    expected[2, 3:8] = expected[5, 3:8] = True
    expected[2:6, 3] = expected[2:6, 7] = True
    np.testing.assert_array_equal(result[..., 0] == 255, expected)
    assert np.all(result[..., 1:] == 0)


def test_draw_boxes_clips_and_skips():
    image = np.zeros((8, 8, 1), dtype=np.float32)
    outside = plotting.draw_boxes(image, np.array([[-5.0, -5.0, -1.0, -1.0], [9.0, 9.0, 12.0, 12.0]]), 1.0)
    assert np.all(outside == 0)

    clipped = plotting.draw_boxes(image, np.array([[4.0, 4.0, 20.0, 20.0]]), 1.0)
    assert clipped.dtype == np.float32
    assert np.all(clipped[4, 4:, 0] == 1)
    assert np.all(clipped[4:, 7, 0] == 1)
    assert clipped[5, 5, 0] == 0

    with pytest.raises(ValueError, match="color"):
        plotting.draw_boxes(np.zeros((4, 4, 3)), np.zeros((1, 4)), (1.0, 0.0))


class ReportParser(html.parser.HTMLParser):
    """Collect image sources, table count, captions and the config text of a report."""

    def __init__(self):
        super().__init__()
        self.image_sources: list[str] = []
        self.table_count = 0
        self.table_cells: list[str] = []
        self.captions: list[str] = []
        self.config_text = ""
        self._open: list[str] = []

    def handle_starttag(self, tag, attributes):
        self._open.append(tag)
        if tag == "img":
            self._open.pop()
            self.image_sources.append(dict(attributes)["src"])
        if tag == "table":
            self.table_count += 1

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        if not self._open:
            return
        if self._open[-1] == "figcaption":
            self.captions.append(data)
        elif self._open[-1] in ("td", "th"):
            self.table_cells.append(data)
        elif self._open[-1] == "code":
            self.config_text += data


def test_write_report_self_contained(tmp_path):
    figure_paths = []
    for index in range(2):
        figure = plotting.image_grid(np.full((1, 2, 4, 4, 3), index / 2))
        figure_paths.append(plotting.save_figure(figure, str(tmp_path / f"figure{index}.png")))
    markdown = metrics.markdown_table(
        [{"model": "<gmvae>", "nmi": 0.25}, {"model": "chance & co", "nmi": 0.01}], ["model", "nmi"])
    config = {"model": {"model": "lggmvae", "note": "<script>alert(1)</script>"}, "seed": 3}

    path = plotting.write_report(
        str(tmp_path / "report.html"), title="Run <1> & co", config=config,
        tables=[("Clustering: K = 30 & chance", markdown), ("Raw", "<table><tr><td>1</td></tr></table>")],
        figures=[("Fig. 4 <prior>", figure_paths[0]), ("Fig. 7", figure_paths[1])])
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    parser = ReportParser()
    parser.feed(text)

    assert len(parser.image_sources) == 2
    for source, figure_path in zip(parser.image_sources, figure_paths):
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        with open(figure_path, "rb") as handle:
            assert base64.b64decode(source[len(prefix):]) == handle.read()
    assert parser.table_count == 2
    assert ["model", "nmi", "<gmvae>", "0.250", "chance & co", "0.010"] == parser.table_cells[:6]
    assert parser.captions == ["Clustering: K = 30 & chance", "Raw", "Fig. 4 <prior>", "Fig. 7"]
    assert json.loads(parser.config_text) == config
    assert "<script>" not in text
    assert "<gmvae>" not in text
    assert "Run &lt;1&gt; &amp; co" in text
    assert sorted(os.listdir(tmp_path)) == ["figure0.png", "figure1.png", "report.html"]


def test_write_report_rejects_bad_inputs(tmp_path):
    not_png = tmp_path / "figure.png"
    not_png.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        plotting.write_report(str(tmp_path / "a.html"), "t", {}, [], [("x", str(not_png))])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        plotting.write_report(str(tmp_path / "b.html"), "t", {}, [], [("x", str(tmp_path / "missing.png"))])
    with pytest.raises(ValueError, match="2 cells"):
        plotting.write_report(str(tmp_path / "c.html"), "t", {}, [("x", "| a |\n|---|\n| 1 | 2 |\n")], [])
    assert not (tmp_path / "a.html").exists()


def test_markdown_table_to_html_round_trip():
    text = metrics.markdown_table([{"a": "x|y", "b": 1.5}], ["a", "b"])
    table = plotting.markdown_table_to_html(text)
    assert table == ('<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>x|y</td>'
                     '<td class="number">1.500</td></tr></tbody></table>')
    with pytest.raises(ValueError, match="2 cells"):
        plotting.markdown_table_to_html("| a |\n|---|\n| 1 | 2 |\n")
    with pytest.raises(ValueError, match="Markdown pipe table"):
        plotting.markdown_table_to_html("just a sentence")


def test_markdown_to_html_tables_and_paragraphs():
    first = metrics.markdown_table([{"method": "gmvae", "nmi": 0.5}], ["method", "nmi"])
    second = metrics.markdown_table([{"factor": "hue", "nmi": 0.1}], ["factor", "nmi"])
    text = first + "\n\nNMI with each factor, K < 30:\n\n" + second
    converted = plotting.markdown_to_html(text)
    assert converted.count("<table>") == 2
    assert converted.count("<p>") == 1
    assert "<p>NMI with each factor, K &lt; 30:</p>" in converted
    assert plotting.markdown_to_html("(no class labels)") == "<p>(no class labels)</p>"
