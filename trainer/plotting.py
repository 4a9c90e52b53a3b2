"""Figure primitives and the self-contained HTML report; no model code.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot's global figure registry, so that drawing is safe in tests and worker processes. Paths
may be local or any scheme that `tf.io.gfile` supports (`gs://`).
TensorFlow is imported only for those.

Images are float arrays in [0, 1] (or uint8) with 1 or 3 channels, `[height, width, channels]`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import sys
import tempfile
import uuid
from typing import Mapping, Sequence

import numpy as np
from matplotlib import figure as matplotlib_figure
from matplotlib.backends import backend_agg
from skimage import draw as skimage_draw

# Size of one grid cell's longer side. The shorter side follows the image's aspect ratio.
CELL_INCHES = 0.8
# Gap between neighbouring cells, as a fraction of the cell width.
CELL_GAP_FRACTION = 0.06
MARGIN_INCHES = 0.1
LABEL_FONT_SIZE = 9
TITLE_FONT_SIZE = 12
# Rough width of one label character in inches at LABEL_FONT_SIZE, to size the left margin.
LABEL_CHARACTER_INCHES = 0.6 * LABEL_FONT_SIZE / 72
LABEL_LINE_INCHES = 1.6 * LABEL_FONT_SIZE / 72
TITLE_LINE_INCHES = 1.8 * TITLE_FONT_SIZE / 72
DPI = 100
# Pixel values may leave [0, 1] by this much (float round-off) before they count as invalid.
PIXEL_RANGE_TOLERANCE = 1e-3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _has_scheme(path: str) -> bool:
    return "://" in path


def _write_bytes_atomically(path: str, data: bytes) -> None:
    """Write `data` under a temporary name beside `path`, then rename it over `path`."""
    if _has_scheme(path):
        import tensorflow as tf  # Deferred: only remote paths need TensorFlow's file systems.

        directory = path.rsplit("/", 1)[0]
        tf.io.gfile.makedirs(directory)
        temporary = f"{directory}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        with tf.io.gfile.GFile(temporary, "wb") as handle:
            handle.write(data)
        tf.io.gfile.rename(temporary, path, overwrite=True)
        return

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _read_bytes(path: str) -> bytes:
    if _has_scheme(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path}: file not found")
        with tf.io.gfile.GFile(path, "rb") as handle:
            return handle.read()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as handle:
        return handle.read()


def _as_display_image(image: np.ndarray, name: str) -> np.ndarray:
    """Check one `[height, width, 1 or 3]` image and return it as float in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"{name} must have shape [height, width, 1 or 3], got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype.kind != "f":
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got dtype {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < -PIXEL_RANGE_TOLERANCE or high > 1 + PIXEL_RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must be in [0, 1], got values in [{low:.3f}, {high:.3f}]. Map [-1, 1] model outputs with (x + 1) / 2")
    return np.clip(image, 0.0, 1.0)


def _draw_grid(cells: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str] | None,
               column_labels: Sequence[str] | None, title: str | None) -> matplotlib_figure.Figure:
    """Draw a grid of images (None leaves a cell blank) with labels left and top.

    The figure size follows the grid: every cell has the images' aspect ratio, and the margins
    grow with the longest row label and with the title.
    """
    num_rows = len(cells)
    num_columns = max(len(row) for row in cells)
    images = [image for row in cells for image in row if image is not None]
    height, width = images[0].shape[:2] if images else (1, 1)
    if any(image.shape[:2] != (height, width) for image in images):
        raise ValueError("all images of a grid must have the same height and width")
    if row_labels is not None and len(row_labels) != num_rows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {num_rows} rows")
    if column_labels is not None and len(column_labels) != num_columns:
        raise ValueError(f"column_labels has {len(column_labels)} entries for {num_columns} columns")

    cell_width = CELL_INCHES * min(1.0, width / height)
    cell_height = CELL_INCHES * min(1.0, height / width)
    gap = CELL_GAP_FRACTION * cell_width
    longest_label = max((len(label) for label in row_labels), default=0) if row_labels else 0
    left = MARGIN_INCHES + longest_label * LABEL_CHARACTER_INCHES
    top = MARGIN_INCHES
    if column_labels:
        top += LABEL_LINE_INCHES
    if title:
        top += TITLE_LINE_INCHES
    grid_width = num_columns * cell_width + (num_columns - 1) * gap
    grid_height = num_rows * cell_height + (num_rows - 1) * gap
    figure_width = left + grid_width + MARGIN_INCHES
    figure_height = top + grid_height + MARGIN_INCHES

    figure = matplotlib_figure.Figure(figsize=(figure_width, figure_height), dpi=DPI)
    backend_agg.FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, num_columns, squeeze=False)
    figure.subplots_adjust(
        left=left / figure_width, right=1 - MARGIN_INCHES / figure_width,
        bottom=MARGIN_INCHES / figure_height, top=1 - top / figure_height,
        wspace=gap / cell_width, hspace=gap / cell_height)

    for row_index in range(num_rows):
        for column_index in range(num_columns):
            axis = axes[row_index, column_index]
            axis.set_xticks([])
            axis.set_yticks([])
            row = cells[row_index]
            image = row[column_index] if column_index < len(row) else None
            if image is None:
                # A blank cell keeps its axis (and so the row label) but shows no frame.
                for spine in axis.spines.values():
                    spine.set_visible(False)
            elif image.shape[-1] == 1:
                axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                axis.imshow(image, interpolation="nearest")
        if row_labels:
            axes[row_index, 0].set_ylabel(
                row_labels[row_index], rotation=0, ha="right", va="center", fontsize=LABEL_FONT_SIZE)
    if column_labels:
        for column_index, label in enumerate(column_labels):
            axes[0, column_index].set_title(label, fontsize=LABEL_FONT_SIZE, pad=4)
    if title:
        figure.suptitle(title, fontsize=TITLE_FONT_SIZE, y=1 - MARGIN_INCHES / figure_height, va="top")
    return figure


def image_grid(images: np.ndarray, row_labels: Sequence[str] | None = None,
               column_labels: Sequence[str] | None = None, title: str | None = None) -> matplotlib_figure.Figure:
    """Draw `[rows, columns, height, width, channels]` images as one grid without ticks.

    Images are float in [0, 1] or uint8, with 1 or 3 channels. Row labels go on the left,
    column labels on top and the title above both.
    """
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[0] == 0 or images.shape[1] == 0:
        raise ValueError(f"images must have shape [rows, columns, height, width, channels] with rows and columns"
                         f" at least 1, got {images.shape}")
    cells = [[_as_display_image(images[row, column], f"images[{row}, {column}]")
              for column in range(images.shape[1])]
             for row in range(images.shape[0])]
    return _draw_grid(cells, row_labels, column_labels, title)


def image_rows(rows: Sequence[tuple[str, np.ndarray]], title: str | None = None) -> matplotlib_figure.Figure:
    """Draw labelled rows of images. Rows may differ in length, and an empty row shows its label only.

    Each row is `(label, images)` with images `[count, height, width, channels]`, for example
    `("cluster 3 (n=120)", members)`. All images share one height and width.
    """
    if not rows:
        raise ValueError("rows is empty, but at least one labelled row is needed")
    cells = []
    for label, images in rows:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"row {label!r} must have shape [count, height, width, channels], got {images.shape}")
        cells.append([_as_display_image(image, f"row {label!r} image {index}") for index, image in enumerate(images)])
    if all(len(row) == 0 for row in cells):
        cells[0].append(None)
    return _draw_grid(cells, [label for label, _ in rows], None, title)


def save_figure(figure: matplotlib_figure.Figure, path: str) -> str:
    """Write the figure as PNG to a local or `gs://` path, atomically, and close it. Returns the path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    _write_bytes_atomically(path, buffer.getvalue())

    # A figure made through pyplot stays in its registry until closed; ours never enter it.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(figure)
    return path


def draw_boxes(image: np.ndarray, boxes: np.ndarray, color: Sequence[float] | float) -> np.ndarray:
    """Draw 1-pixel box outlines on a copy of `image`.

    Args:
      image: `[height, width, channels]` uint8 or float.
      boxes: `[num_boxes, 4]` as (y_min, x_min, y_max, x_max) in pixel coordinates where the
        image spans [0, height] x [0, width]; the outline runs along the outermost pixels
        inside the box. Parts outside the image are clipped, and boxes entirely outside it
        are skipped.
      color: one value per channel (or one value for all), in the image's value range.

    Returns:
      A new array of the image's shape and dtype.
    """
    image = np.asarray(image)
    boxes = np.asarray(boxes, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must have shape [height, width, channels], got {image.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [num_boxes, 4], got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("boxes contain NaN or infinite values")
    color_values = np.asarray(color, dtype=np.float64).reshape(-1)
    if color_values.size == 1:
        color_values = np.repeat(color_values, image.shape[-1])
    if color_values.size != image.shape[-1]:
        raise ValueError(f"color must have one value or {image.shape[-1]} (one per channel), got {color}")

    height, width = image.shape[:2]
    result = image.copy()
    for y_min, x_min, y_max, x_max in boxes:
        top, left = int(round(y_min)), int(round(x_min))
        bottom, right = int(round(y_max)) - 1, int(round(x_max)) - 1
        bottom, right = max(bottom, top), max(right, left)
        if bottom < 0 or right < 0 or top >= height or left >= width:
            continue
        top, left = max(top, 0), max(left, 0)
        bottom, right = min(bottom, height - 1), min(right, width - 1)
        rows, columns = skimage_draw.polygon_perimeter(
            [top, top, bottom, bottom], [left, right, right, left], shape=(height, width))
        result[rows, columns] = color_values.astype(image.dtype)
    return result


_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?%?$")


def _split_markdown_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _UNESCAPED_PIPE.split(line)]


def markdown_table_to_html(text: str) -> str:
    """Convert a pipe table (a header line, a `|---|` line, one line per row) to an HTML `<table>`.

    Cell text is escaped, and cells that read as numbers get `class="number"` for right alignment.
    Raises ValueError when the text is not such a table.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2 or not _TABLE_SEPARATOR.match(lines[1].strip()):
        raise ValueError(f"expected a Markdown pipe table (header line, then a |---| line), got {text[:80]!r}")
    header = _split_markdown_row(lines[0])

    parts = ["<table>", "<thead><tr>"]
    parts += [f"<th>{html.escape(cell)}</th>" for cell in header]
    parts.append("</tr></thead>")
    parts.append("<tbody>")
    for line in lines[2:]:
        cells = _split_markdown_row(line)
        if len(cells) != len(header):
            raise ValueError(f"table row {line!r} has {len(cells)} cells for {len(header)} columns")
        parts.append("<tr>")
        for cell in cells:
            css_class = ' class="number"' if _NUMBER.match(cell) else ""
            parts.append(f"<td{css_class}>{html.escape(cell)}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def markdown_to_html(text: str) -> str:
    """Convert Markdown of pipe tables and plain paragraphs, separated by blank lines, to HTML.

    A block whose second line is a `|---|` line becomes a `<table>` (see `markdown_table_to_html`)
    and any other block an escaped `<p>`. No other Markdown syntax is interpreted.
    """
    blocks = re.split(r"\n\s*\n", text.strip())
    parts = []
    for block in blocks:
        lines = block.strip().splitlines()
        if len(lines) >= 2 and _TABLE_SEPARATOR.match(lines[1].strip()):
            parts.append(markdown_table_to_html(block))
        elif block.strip():
            parts.append(f"<p>{html.escape(block.strip())}</p>")
    return "\n".join(parts)


_REPORT_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; }
th { background: #eee; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figcaption { font-weight: bold; margin: 0.4em 0; }
img { max-width: 100%; height: auto; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def write_report(path: str, title: str, config: Mapping[str, object], tables: Sequence[tuple[str, str]],
                 figures: Sequence[tuple[str, str]]) -> str:
    """Write one self-contained HTML report and return its path.

    Args:
      path: the `.html` file, local or `gs://`; written atomically.
      title: the page title and heading.
      config: the run's config, shown as pretty-printed JSON (values JSON cannot hold are
        shown with `str`).
      tables: `(caption, table)` pairs. A table is either Markdown (pipe tables as
        `trainer.metrics.markdown_table` writes them, and plain paragraphs between them) or a
        ready HTML fragment that starts with `<table`, which is inserted as given.
      figures: `(caption, png_path)` pairs; each PNG is embedded as a base64 data URI.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_REPORT_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]

    if tables:
        parts.append("<h2>Tables</h2>")
    for caption, table in tables:
        table_html = table if table.lstrip().lower().startswith("<table") else markdown_to_html(table)
        parts.append(f"<figure><figcaption>{html.escape(caption)}</figcaption>{table_html}</figure>")

    if figures:
        parts.append("<h2>Figures</h2>")
    for caption, figure_path in figures:
        data = _read_bytes(figure_path)
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"{figure_path}: not a PNG file")
        source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img src="{source}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    config_text = json.dumps(config, indent=2, sort_keys=True, default=str)
    parts += ["<h2>Config</h2>", f'<pre><code class="config">{html.escape(config_text)}</code></pre>',
              "</body>", "</html>", ""]
    _write_bytes_atomically(path, "\n".join(parts).encode("utf-8"))
    return path
