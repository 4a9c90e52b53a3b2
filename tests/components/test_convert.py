"""Tests of the conversions from library results to KFP artifact metadata."""

from __future__ import annotations

import json
import math

import pytest

from components import convert
from preprocessing import schema


def test_majority_confusion_matrix_maps_clusters():
    # Cluster 0 -> class 0, cluster 1 -> class 2, cluster 2 ties 0 and 1 -> class 0, cluster 3 is empty.
    counts = [[5, 1, 0], [0, 0, 3], [2, 2, 0], [0, 0, 0]]

    categories, matrix = convert.majority_confusion_matrix(counts)

    assert categories == ["0", "1", "2"]
    assert matrix == [[7, 0, 0], [3, 0, 0], [0, 0, 3]]


def test_majority_confusion_matrix_keeps_every_example():
    counts = [[4, 0, 1, 0], [0, 6, 0, 2], [1, 1, 1, 1], [0, 0, 0, 9], [3, 0, 0, 0]]

    _, matrix = convert.majority_confusion_matrix(counts)

    assert sum(map(sum, matrix)) == sum(map(sum, counts))
    for true_class in range(4):
        assert sum(matrix[true_class]) == sum(row[true_class] for row in counts)


def test_majority_confusion_matrix_uses_class_names():
    categories, _ = convert.majority_confusion_matrix([[1, 0], [0, 1]], class_names=["cat", "dog"])

    assert categories == ["cat", "dog"]


@pytest.mark.parametrize("counts, names, message", [
    ([], None, "empty"),
    ([[1, 2], [3]], None, "differ in length"),
    ([[1, 2]], ["only one"], "1 class names for 2 classes"),
])
def test_majority_confusion_matrix_rejects_bad_input(counts, names, message):
    with pytest.raises(ValueError, match=message):
        convert.majority_confusion_matrix(counts, class_names=names)


def test_headline_metrics_flattens_one_level():
    results = {
        "preset": "digits-split-gmvae",
        "step": 20,
        "num_examples": 360,
        "clusters": {"nmi": 0.5, "clusters_used": 12, "hungarian_accuracy": None},
        "kmeans_z_g": {"majority_accuracy": 0.25},
        "cluster_factor_nmi": {"background_hue": 0.1},
        "confusion_matrix": [[1, 2], [3, 4]],
        "resumed": True,
        "loss": math.nan,
    }

    flat = convert.headline_metrics(results)

    assert flat == {
        "step": 20.0,
        "num_examples": 360.0,
        "clusters_nmi": 0.5,
        "clusters_clusters_used": 12.0,
        "kmeans_z_g_majority_accuracy": 0.25,
        "cluster_factor_nmi_background_hue": 0.1,
    }


def test_manifest_metadata_matches_dataset_json():
    manifest = schema.Manifest(
        name="toy", image_shape=(8, 8, 3), splits={"train": schema.SplitInfo(3, ("train-00000-of-00001.tfrecord",))},
        label_meaning="class", num_classes=2, seed=1, source_fingerprint="abc", factors={"colour": 3})

    metadata = convert.manifest_metadata(manifest)

    assert metadata == json.loads(manifest.to_json())
    assert metadata["image_shape"] == [8, 8, 3]
    assert metadata["splits"]["train"]["num_records"] == 3
