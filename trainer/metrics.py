"""Clustering, counting and table metrics: pure numpy, SciPy and scikit-learn, no TensorFlow.

Clustering (the SPLIT paper's Table 2, arXiv 2001.08957): a model assigns each test example to
one of K clusters (the argmax of its cluster logits). The majority mapping sends every cluster to
the most frequent true class among its members, so that its accuracy can only grow with K. The
one-to-one (Hungarian) mapping sends at most one cluster to each class. NMI and ARI come from
scikit-learn. The same scores for a random assignment to K clusters give the chance level, and
k-means fit on the training split gives the classical baseline.

Counting (SPAIR on Multi-Bird): exact-count accuracy, mean absolute error and the confusion of
true against predicted object counts.

Every function takes 1-D arrays of non-negative integer ids, `[num_examples]`, and raises
ValueError on empty or mismatched inputs.
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize
from sklearn import cluster as sklearn_cluster
from sklearn import metrics as sklearn_metrics

RANDOM_ASSIGNMENT_REPEATS = 5
# k-means is fit on a seeded subsample of at most this many training examples: full-batch
# k-means on all 604,388 SVHN training images would need about 7 GB of float32 pixels.
KMEANS_MAX_FIT_EXAMPLES = 20_000
KMEANS_INITIALISATIONS = 3
TABLE_FLOAT_FORMAT = "{:.3f}"
MARKDOWN_MISSING_CELL = "n/a"


def _as_ids(values: object, name: str) -> np.ndarray:
    """Convert integer-valued input to a 1-D int64 array `[num_examples]`, or raise ValueError."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array [num_examples], got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty, but at least one example is needed")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer values, got non-integer floats")
    elif array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    ids = array.astype(np.int64)
    if ids.min() < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {ids.min()}")
    return ids


def _as_id_pair(clusters: object, labels: object,
                clusters_name: str = "clusters", labels_name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    cluster_ids = _as_ids(clusters, clusters_name)
    label_ids = _as_ids(labels, labels_name)
    if cluster_ids.shape != label_ids.shape:
        raise ValueError(
            f"{clusters_name} and {labels_name} must have the same length, got {cluster_ids.size} and {label_ids.size}")
    return cluster_ids, label_ids


def _check_below(ids: np.ndarray, limit: int, name: str, limit_name: str) -> None:
    if limit < 1:
        raise ValueError(f"{limit_name} must be at least 1, got {limit}")
    if ids.max() >= limit:
        raise ValueError(f"{name} must be below {limit_name}={limit}, got {ids.max()}")


def _contingency(clusters: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Count examples per (used cluster, present class): `[clusters_used, classes_present]`."""
    _, cluster_index = np.unique(clusters, return_inverse=True)
    _, label_index = np.unique(labels, return_inverse=True)
    counts = np.zeros((cluster_index.max() + 1, label_index.max() + 1), dtype=np.int64)
    np.add.at(counts, (cluster_index, label_index), 1)
    return counts


def confusion_matrix(clusters: object, labels: object, num_clusters: int, num_classes: int) -> np.ndarray:
    """Count the examples of each class in each cluster.

    Returns int64 `[num_clusters, num_classes]`: row k, column c is the number of examples
    assigned to cluster k whose true class is c. Unused clusters give rows of zeros.
    """
    cluster_ids, label_ids = _as_id_pair(clusters, labels)
    _check_below(cluster_ids, num_clusters, "clusters", "num_clusters")
    _check_below(label_ids, num_classes, "labels", "num_classes")

    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (cluster_ids, label_ids), 1)
    return counts


def majority_mapping_accuracy(clusters: object, labels: object) -> float:
    """Map each cluster to its most frequent true class and return the accuracy of that mapping.

    Several clusters may map to the same class, so the score never decreases as K grows: K equal
    to the number of examples scores 1.0. Ties between classes do not change the score.
    """
    cluster_ids, label_ids = _as_id_pair(clusters, labels)
    counts = _contingency(cluster_ids, label_ids)
    return float(counts.max(axis=1).sum() / cluster_ids.size)


def hungarian_accuracy(clusters: object, labels: object) -> float:
    """Return the accuracy of the best one-to-one mapping of clusters to classes.

    The mapping maximises the number of correctly mapped examples (scipy's
    `linear_sum_assignment`). With more clusters than classes the unmatched clusters count as
    wrong, so the score is at most the majority-mapping accuracy.
    """
    cluster_ids, label_ids = _as_id_pair(clusters, labels)
    counts = _contingency(cluster_ids, label_ids)
    rows, columns = optimize.linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, columns].sum() / cluster_ids.size)


def clustering_scores(clusters: object, labels: object, num_clusters: int, num_classes: int) -> dict[str, float | int]:
    """Score a clustering against the true classes.

    Args:
      clusters: `[num_examples]` cluster ids in [0, num_clusters).
      labels: `[num_examples]` class ids in [0, num_classes).

    Returns:
      `majority_accuracy`, `hungarian_accuracy` (only when num_clusters == num_classes), `nmi`
      and `ari` as floats, and `clusters_used` (clusters with at least one member) and
      `num_examples` as ints.
    """
    cluster_ids, label_ids = _as_id_pair(clusters, labels)
    _check_below(cluster_ids, num_clusters, "clusters", "num_clusters")
    _check_below(label_ids, num_classes, "labels", "num_classes")

    scores: dict[str, float | int] = {"majority_accuracy": majority_mapping_accuracy(cluster_ids, label_ids)}
    if num_clusters == num_classes:
        scores["hungarian_accuracy"] = hungarian_accuracy(cluster_ids, label_ids)
    scores["nmi"] = float(sklearn_metrics.normalized_mutual_info_score(label_ids, cluster_ids))
    scores["ari"] = float(sklearn_metrics.adjusted_rand_score(label_ids, cluster_ids))
    scores["clusters_used"] = int(np.unique(cluster_ids).size)
    scores["num_examples"] = int(cluster_ids.size)
    return scores


def random_assignment_scores(labels: object, num_clusters: int, num_classes: int, seed: int,
                             repeats: int = RANDOM_ASSIGNMENT_REPEATS) -> dict[str, float | int]:
    """Score uniform random assignments to `num_clusters` clusters: the chance level.

    The majority-mapping chance level grows with K (an expected 0.146 for K = 30 on 3,600
    examples of 10 balanced classes), which is why tables report it beside the model. Returns the keys of
    `clustering_scores`, each the mean over `repeats` assignments drawn from `seed`, and `repeats`.
    """
    label_ids = _as_ids(labels, "labels")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    _check_below(label_ids, num_classes, "labels", "num_classes")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be at least 1, got {num_clusters}")

    generator = np.random.default_rng(seed)
    draws = [
        clustering_scores(generator.integers(num_clusters, size=label_ids.size), label_ids, num_clusters, num_classes)
        for _ in range(repeats)
    ]
    scores: dict[str, float | int] = {key: float(np.mean([draw[key] for draw in draws])) for key in draws[0]}
    scores["num_examples"] = int(label_ids.size)
    scores["repeats"] = repeats
    return scores


def _as_features(features: object, name: str) -> np.ndarray:
    """Flatten `[num_examples, ...]` features to float32 `[num_examples, num_features]`."""
    array = np.asarray(features)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty array [num_examples, ...], got shape {array.shape}")
    flat = array.reshape(array.shape[0], -1).astype(np.float32)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return flat


def kmeans_scores(train_features: object, test_features: object, test_labels: object,
                  num_clusters: int, num_classes: int, seed: int,
                  max_fit_examples: int = KMEANS_MAX_FIT_EXAMPLES) -> dict[str, float | int]:
    """Fit k-means on the training split, assign the test split and score it.

    Args:
      train_features: `[num_train, ...]` pixels or codes; flattened per example.
      test_features: `[num_test, ...]` with the same per-example shape.
      test_labels: `[num_test]` class ids.
      max_fit_examples: k-means is fit on a subsample of this many training examples, drawn
        from `seed`, when the training split is larger.

    Returns:
      The keys of `clustering_scores` for the test split, and `fit_examples`, the number of
      training examples k-means was fit on.
    """
    train = _as_features(train_features, "train_features")
    test = _as_features(test_features, "test_features")
    label_ids = _as_ids(test_labels, "test_labels")
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"train_features and test_features must have the same size per example, got {train.shape[1]} and {test.shape[1]}")
    if test.shape[0] != label_ids.size:
        raise ValueError(f"test_features and test_labels must have the same length, got {test.shape[0]} and {label_ids.size}")
    if not 1 <= num_clusters <= train.shape[0]:
        raise ValueError(f"num_clusters must be in [1, {train.shape[0]}] (the training examples), got {num_clusters}")

    generator = np.random.default_rng(seed)
    if train.shape[0] > max_fit_examples:
        logging.info("k-means: fitting on %s of %s training examples", max_fit_examples, train.shape[0])
        train = train[np.sort(generator.choice(train.shape[0], size=max_fit_examples, replace=False))]

    kmeans = sklearn_cluster.KMeans(
        n_clusters=num_clusters, n_init=KMEANS_INITIALISATIONS, random_state=seed)
    kmeans.fit(train)
    scores = clustering_scores(kmeans.predict(test), label_ids, num_clusters, num_classes)
    scores["fit_examples"] = int(train.shape[0])
    return scores


def factor_nmi(clusters: object, factors: Mapping[str, object]) -> dict[str, float]:
    """Return the NMI of the clusters with each factor, keyed by factor name.

    Factors are `[num_examples]` integer ids such as the digit, the background kind or a hue
    bin: a clustering that follows the digit and ignores the local factors scores high on the
    first and near 0 on the others.
    """
    cluster_ids = _as_ids(clusters, "clusters")
    scores = {}
    for name, values in factors.items():
        _, factor_ids = _as_id_pair(cluster_ids, values, "clusters", f"factor {name!r}")
        scores[name] = float(sklearn_metrics.normalized_mutual_info_score(factor_ids, cluster_ids))
    return scores


def counting_scores(predicted: object, true: object, max_count: int | None = None) -> dict[str, object]:
    """Score predicted object counts against the true counts.

    Args:
      predicted: `[num_examples]` predicted counts (integer-valued).
      true: `[num_examples]` true counts.
      max_count: the last row and column of the confusion matrix; defaults to the largest count
        seen. Predicted counts above it are tallied in the last column, and true counts above it
        raise ValueError.

    Returns:
      `accuracy` (exact-count), `mean_absolute_error`, `confusion` (a nested list, true count
      rows x predicted count columns, both 0..max_count), `max_count` and `num_examples`.
    """
    predicted_ids, true_ids = _as_id_pair(predicted, true, "predicted", "true")
    if max_count is None:
        max_count = int(max(predicted_ids.max(), true_ids.max()))
    _check_below(true_ids, max_count + 1, "true counts", "max_count + 1")

    confusion = np.zeros((max_count + 1, max_count + 1), dtype=np.int64)
    np.add.at(confusion, (true_ids, np.minimum(predicted_ids, max_count)), 1)
    return {
        "accuracy": float(np.mean(predicted_ids == true_ids)),
        "mean_absolute_error": float(np.mean(np.abs(predicted_ids - true_ids))),
        "confusion": confusion.tolist(),
        "max_count": int(max_count),
        "num_examples": int(true_ids.size),
    }


def _format_cell(value: object, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return TABLE_FLOAT_FORMAT.format(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """Format rows as a GitHub-flavoured Markdown table, one line per row.

    Floats get 3 decimals, a key missing from a row (or None) shows as "n/a", and `|` inside a
    cell is escaped as `\\|`. The text ends with a newline.
    """
    if not columns:
        raise ValueError("columns is empty, but a table needs at least one column")

    def format_line(cells: Sequence[str]) -> str:
        escaped = [cell.replace("|", "\\|").replace("\n", " ") for cell in cells]
        return "| " + " | ".join(escaped) + " |"

    lines = [format_line(list(columns)), "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append(format_line([_format_cell(row.get(column), MARKDOWN_MISSING_CELL) for column in columns]))
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """Format rows as CSV with a header line. Floats get 3 decimals, and a missing key is an empty cell."""
    if not columns:
        raise ValueError("columns is empty, but a table needs at least one column")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row.get(column), "") for column in columns])
    return buffer.getvalue()
