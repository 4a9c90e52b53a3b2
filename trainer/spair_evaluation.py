"""Counting scores and the Fig. 8/9 figures of a trained SPAIR-family run.

`counting_metrics` predicts the number of objects in every image of the test and unseen-background
test splits as the sum over cells of `round(sigmoid(logit))`. It scores the prediction against the
label (the true count) by exact-count accuracy, mean absolute error and the confusion matrix,
beside the baseline that always predicts the training split's most common count. `spair_figures` draws, on
the same splits, the inputs, their reconstructions with the predicted boxes, the learned
background, for `lg_spair` the auxiliary view and its reconstruction, and the glimpses of the
objects found.
"""

from __future__ import annotations

import collections
import logging

import numpy as np
import tensorflow as tf
from matplotlib import figure as matplotlib_figure

from preprocessing import schema
from trainer import data, metrics, plotting
from trainer.config import ExperimentConfig

_LOGGER = logging.getLogger(__name__)

COUNTING_SPLITS = ("test", "unseen")
SPLIT_TITLES = {"test": "test", "unseen": "unseen-background test"}
EVALUATION_BATCH_SIZE = 256
FIGURE_COLUMNS = 8
GLIMPSE_ROWS = 6
BOX_COLOUR = (1.0, 0.0, 0.0)


def _present_splits(manifest: schema.Manifest) -> list[str]:
    return [split for split in COUNTING_SPLITS
            if split in manifest.splits and manifest.splits[split].num_records > 0]


def most_common_count(data_dir: str, manifest: schema.Manifest, split: str = "train") -> int:
    """Return the most common label of `split`, reading only the labels (no image is decoded)."""
    spec = {schema.LABEL_KEY: schema.feature_spec()[schema.LABEL_KEY]}
    records = tf.data.TFRecordDataset(data.split_files(data_dir, manifest, split),
                                      compression_type=manifest.compression or None)
    labels = records.batch(4096).map(lambda serialized: tf.io.parse_example(serialized, spec)[schema.LABEL_KEY])
    tally: collections.Counter = collections.Counter()
    for batch in labels.as_numpy_iterator():
        tally.update(batch.tolist())
    return int(tally.most_common(1)[0][0])


def predict_counts(model, config: ExperimentConfig, data_dir: str, manifest: schema.Manifest,
                   split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the predicted and the true counts `[num_examples]` of every image of `split`."""
    count = tf.function(lambda inputs: model.infer(inputs)["count"])
    predicted, true = [], []
    for batch in data.evaluation_batches(data_dir, manifest, config, split, batch_size=EVALUATION_BATCH_SIZE):
        predicted.append(count(batch["inputs"]).numpy())
        true.append(batch[schema.LABEL_KEY].numpy())
    return np.concatenate(predicted), np.concatenate(true)


def counting_metrics(model, config: ExperimentConfig, data_dir: str, manifest: schema.Manifest) -> dict:
    """Score the predicted object counts on the test and unseen-background test splits.

    Returns:
      `baseline_count`, the training split's most common count, and for each split the dataset
      has, `metrics.counting_scores` (`accuracy`, `mean_absolute_error`, `confusion`,
      `max_count`, `num_examples`) with `baseline_accuracy` and `baseline_mean_absolute_error`,
      the scores of always predicting `baseline_count`.
    """
    if manifest.label_meaning != "count":
        raise ValueError(
            f"{schema.manifest_path(data_dir)}: labels are {manifest.label_meaning!r}, not object counts;"
            " counting needs a Multi-Bird or Multi-Digit dataset")
    splits = _present_splits(manifest)
    if not splits:
        raise ValueError(f"{schema.manifest_path(data_dir)}: no non-empty split among {', '.join(COUNTING_SPLITS)}")
    baseline_source = "train" if "train" in manifest.splits and manifest.splits["train"].num_records else splits[0]
    baseline = most_common_count(data_dir, manifest, baseline_source)

    results: dict = {"baseline_count": baseline}
    for split in splits:
        predicted, true = predict_counts(model, config, data_dir, manifest, split)
        scores = metrics.counting_scores(predicted, true)
        scores["baseline_accuracy"] = float(np.mean(true == baseline))
        scores["baseline_mean_absolute_error"] = float(np.mean(np.abs(true - baseline)))
        results[split] = scores
        _LOGGER.info("%s: exact-count accuracy %.3f (always %d: %.3f), mean absolute error %.3f",
                     split, scores["accuracy"], baseline, scores["baseline_accuracy"], scores["mean_absolute_error"])
    return results


def counting_table(results: dict) -> str:
    """Format `counting_metrics` results as a Markdown table, one row per split."""
    columns = ["split", "accuracy", "mean_absolute_error", "baseline_count", "baseline_accuracy",
               "baseline_mean_absolute_error", "num_examples"]
    rows = [{**results[split], "split": SPLIT_TITLES[split], "baseline_count": results["baseline_count"]}
            for split in COUNTING_SPLITS if split in results]
    return metrics.markdown_table(rows, columns)


def box_corners(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Convert boxes `[..., 4]` `(sx, sy, tx, ty)` in [-1, 1] coordinates to pixel corners.

    Returns `[..., 4]` as `(y_min, x_min, y_max, x_max)` where the image spans [0, height] x [0, width].
    """
    scale_x, scale_y, shift_x, shift_y = np.moveaxis(np.asarray(boxes, np.float64), -1, 0)
    return np.stack([(shift_y - scale_y + 1.0) * height / 2.0, (shift_x - scale_x + 1.0) * width / 2.0,
                     (shift_y + scale_y + 1.0) * height / 2.0, (shift_x + scale_x + 1.0) * width / 2.0], axis=-1)


def _reconstruction_rows(model, outputs: dict[str, np.ndarray], inputs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Return row labels and images `[rows, columns, H, W, C]` for one batch of inferred outputs."""
    height, width, channels = model.image_shape
    with_boxes = []
    for image, boxes, presence in zip(outputs["reconstruction"], outputs["boxes"], outputs["presence"]):
        corners = box_corners(boxes[presence > 0.5], height, width)
        with_boxes.append(plotting.draw_boxes(np.clip(image, 0.0, 1.0), corners, BOX_COLOUR))
    labels = ["input", "reconstruction and boxes", "background"]
    rows = [inputs[..., :channels], np.stack(with_boxes), outputs["background"]]
    if model.has_local_path:
        labels += ["x_hat", "x_hat reconstruction"]
        rows += [outputs["x_hat"], outputs["x_hat_reconstruction"]]
    return labels, np.clip(np.stack(rows), 0.0, 1.0)


def _glimpse_rows(outputs: dict[str, np.ndarray], limit: int) -> list[tuple[str, np.ndarray]]:
    rows = []
    for index in range(min(limit, len(outputs["count"]))):
        present = outputs["presence"][index] > 0.5
        rows.append((f"image {index} ({int(present.sum())} found)",
                     np.clip(outputs["glimpses"][index][present], 0.0, 1.0)))
    return rows


def spair_figures(model, config: ExperimentConfig, data_dir: str, manifest: schema.Manifest,
                  columns: int = FIGURE_COLUMNS) -> list[tuple[str, matplotlib_figure.Figure]]:
    """Draw the Fig. 8/9 panels of a SPAIR-family model on the test and unseen-background splits.

    Returns `(caption, figure)` pairs, two per split that the dataset has. The first shows the
    first `columns` images of the split in rows: inputs, reconstructions with the predicted boxes
    of present objects, the background, and for `lg_spair` `x_hat` and its reconstruction. The
    second shows the glimpses of the objects found in the first of those images, one row per image.
    """
    figures = []
    for split in _present_splits(manifest):
        batch = next(iter(data.evaluation_batches(data_dir, manifest, config, split, batch_size=columns)))
        inputs = batch["inputs"]
        outputs = {name: value.numpy() for name, value in model.infer(inputs).items()}
        title = SPLIT_TITLES[split]

        labels, grid = _reconstruction_rows(model, outputs, inputs.numpy())
        caption = f"Fig. 8/9 ({title}): inputs, reconstructions with predicted boxes, background"
        if model.has_local_path:
            caption += ", x_hat and its reconstruction"
        figures.append((caption, plotting.image_grid(grid, row_labels=labels, title=f"Fig. 8/9, {title}")))

        caption = f"Fig. 8/9 ({title}): glimpses of the objects found, one row per image"
        # The figure is as narrow as its longest row, so its title stays short.
        figures.append((caption, plotting.image_rows(_glimpse_rows(outputs, GLIMPSE_ROWS), title=f"glimpses, {split}")))
    return figures
