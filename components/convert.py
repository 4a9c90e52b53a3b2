"""Conversions between the library's results and KFP artifact metadata.

Pure functions, so that the components stay thin and these rules are tested without a pipeline.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from preprocessing import schema


def manifest_metadata(manifest: schema.Manifest) -> dict[str, Any]:
    """Return the manifest's fields (as in `dataset.json`) for a Dataset artifact's metadata."""
    return json.loads(manifest.to_json())


def headline_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """Flatten the numbers of `metrics.json` into `Metrics.log_metric` names and values.

    A top-level number keeps its key (`num_examples`); a number inside a per-method dict is
    named `METHOD_KEY` (`clusters_nmi`, `kmeans_z_g_majority_accuracy`,
    `cluster_factor_nmi_background_kind`). Strings, lists (the confusion matrix), booleans,
    missing values and non-finite numbers are left out.
    """
    flat: dict[str, float] = {}
    for key, value in sorted(results.items()):
        if isinstance(value, Mapping):
            for inner_key, inner_value in sorted(value.items()):
                if _is_finite_number(inner_value):
                    flat[f"{key}_{inner_key}"] = float(inner_value)
        elif _is_finite_number(value):
            flat[key] = float(value)
    return flat


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def majority_confusion_matrix(cluster_counts: Sequence[Sequence[int]],
                              class_names: Sequence[str] | None = None) -> tuple[list[str], list[list[int]]]:
    """Map each cluster to its majority class and count true class against mapped class.

    Args:
      cluster_counts: `[num_clusters, num_classes]` counts; row k, column c is the number of
        examples in cluster k whose true class is c (evaluation's `confusion_matrix`).
      class_names: one name per class; the class ids `"0"`, `"1"`, ... by default.

    Returns:
      The category names and a `[num_classes, num_classes]` matrix whose row t, column p counts
      the examples of true class t in clusters mapped to class p, the layout of
      `ClassificationMetrics.log_confusion_matrix`. A tie maps a cluster to the lowest class id,
      and an empty cluster adds nothing.
    """
    if not cluster_counts or not cluster_counts[0]:
        raise ValueError("confusion matrix is empty; expected [num_clusters, num_classes] counts")
    num_classes = len(cluster_counts[0])
    if any(len(row) != num_classes for row in cluster_counts):
        raise ValueError(f"confusion matrix rows differ in length; expected {num_classes} classes in every row")
    names = list(class_names) if class_names is not None else [str(index) for index in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")

    matrix = [[0] * num_classes for _ in range(num_classes)]
    for row in cluster_counts:
        mapped_class = max(range(num_classes), key=lambda column: (row[column], -column))
        for true_class, count in enumerate(row):
            matrix[true_class][mapped_class] += int(count)
    return names, matrix
