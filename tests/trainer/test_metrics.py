"""Tests of trainer.metrics on cases whose scores are known by hand or in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import datasets

from trainer import metrics


def expected_majority_chance(num_examples: int, num_clusters: int, num_classes: int) -> float:
    """Expected majority-mapping accuracy of a uniform random assignment, in closed form.

    A cluster's size is Binomial(num_examples, 1 / num_clusters), and given its size m its class
    counts are Multinomial(m, uniform), approximating balanced fixed labels. The multinomial is
    independent Poisson(m / num_classes) counts conditioned on their sum being m, so
    P(max <= t | m) is the m-th entry of the truncated Poisson pmf convolved num_classes times,
    divided by Poisson(m).pmf(m).
    """
    sizes = np.arange(num_examples + 1)
    size_probabilities = stats.binom.pmf(sizes, num_examples, 1 / num_clusters)
    expected_total = 0.0
    for size in sizes[size_probabilities > 1e-12]:
        if size == 0:
            continue
        pmf = stats.poisson.pmf(np.arange(size + 1), size / num_classes)
        sum_probability = stats.poisson.pmf(size, size)
        expected_max = 0.0
        for threshold in range(size):
            truncated = np.where(np.arange(size + 1) <= threshold, pmf, 0.0)
            total = np.array([1.0])
            for _ in range(num_classes):
                total = np.convolve(total, truncated)[: size + 1]
            expected_max += 1.0 - total[size] / sum_probability
        expected_total += size_probabilities[size] * expected_max
    return num_clusters * expected_total / num_examples


def test_perfect_clusters_score_one():
    labels = np.repeat(np.arange(10), 20)
    scores = metrics.clustering_scores(labels, labels, num_clusters=10, num_classes=10)
    assert scores["majority_accuracy"] == 1.0
    assert scores["hungarian_accuracy"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)
    assert scores["clusters_used"] == 10
    assert scores["num_examples"] == 200


def test_permuted_cluster_ids_score_one():
    labels = np.tile(np.arange(10), 15)
    permutation = np.random.default_rng(3).permutation(10)
    clusters = permutation[labels]
    assert not np.array_equal(clusters, labels)
    scores = metrics.clustering_scores(clusters, labels, num_clusters=10, num_classes=10)
    assert scores["majority_accuracy"] == 1.0
    assert scores["hungarian_accuracy"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)


def test_single_cluster_scores_majority_share():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    clusters = np.zeros_like(labels)
    scores = metrics.clustering_scores(clusters, labels, num_clusters=30, num_classes=3)
    assert scores["majority_accuracy"] == pytest.approx(0.6)
    assert scores["nmi"] == pytest.approx(0.0)
    assert scores["ari"] == pytest.approx(0.0)
    assert scores["clusters_used"] == 1
    assert "hungarian_accuracy" not in scores


def test_majority_and_hungarian_hand_case():
    # Cluster 0 contains classes {0, 0, 1}, cluster 1 {0, 0} and cluster 2 {1, 1, 2}. The majority
    # mapping sends 0 -> 0, 1 -> 0, 2 -> 1 and gets 6 of 8. One-to-one, clusters 0 and 1 compete
    # for class 0, so the best mapping gets 4 of 8 (for example 0 -> 0, 1 -> 2, 2 -> 1).
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    labels = np.array([0, 0, 1, 0, 0, 1, 1, 2])
    assert metrics.majority_mapping_accuracy(clusters, labels) == pytest.approx(0.75)
    assert metrics.hungarian_accuracy(clusters, labels) == pytest.approx(0.5)
    scores = metrics.clustering_scores(clusters, labels, num_clusters=3, num_classes=3)
    assert scores["hungarian_accuracy"] == pytest.approx(0.5)


def test_more_clusters_than_classes():
    generator = np.random.default_rng(0)
    labels = generator.integers(10, size=500)
    clusters = (labels * 3 + generator.integers(3, size=500)) % 30
    clusters[:100] = generator.integers(30, size=100)
    majority = metrics.majority_mapping_accuracy(clusters, labels)
    hungarian = metrics.hungarian_accuracy(clusters, labels)
    assert 0.0 <= majority <= 1.0
    assert 0.0 <= hungarian <= 1.0
    assert majority >= hungarian
    # Each class is split over 3 clusters, so one-to-one keeps at most about a third.
    assert hungarian < 0.5 < majority


def test_one_cluster_per_example_scores_one():
    labels = np.array([0, 1, 1, 2, 0])
    assert metrics.majority_mapping_accuracy(np.arange(5), labels) == 1.0


def test_confusion_matrix_counts():
    clusters = np.array([0, 0, 2, 2, 2])
    labels = np.array([1, 1, 0, 1, 1])
    confusion = metrics.confusion_matrix(clusters, labels, num_clusters=3, num_classes=2)
    np.testing.assert_array_equal(confusion, [[0, 2], [0, 0], [1, 2]])


def test_random_assignment_matches_closed_form():
    labels = np.repeat(np.arange(10), 360)
    expected = expected_majority_chance(num_examples=3600, num_clusters=30, num_classes=10)
    assert expected == pytest.approx(0.146, abs=0.003)

    scores = metrics.random_assignment_scores(labels, num_clusters=30, num_classes=10, seed=1)
    assert scores["majority_accuracy"] == pytest.approx(expected, abs=0.008)
    assert scores["nmi"] < 0.02
    assert abs(scores["ari"]) < 0.005
    assert scores["repeats"] == metrics.RANDOM_ASSIGNMENT_REPEATS
    assert scores["num_examples"] == 3600
    assert 29 <= scores["clusters_used"] <= 30


def test_random_assignment_depends_on_seed_only():
    labels = np.repeat(np.arange(4), 50)
    first = metrics.random_assignment_scores(labels, 8, 4, seed=5, repeats=3)
    second = metrics.random_assignment_scores(labels, 8, 4, seed=5, repeats=3)
    other = metrics.random_assignment_scores(labels, 8, 4, seed=6, repeats=3)
    assert first == second
    assert first["majority_accuracy"] != other["majority_accuracy"]


def test_kmeans_recovers_separated_blobs():
    centers = np.random.default_rng(0).uniform(-20, 20, size=(10, 8))
    train, _ = datasets.make_blobs(n_samples=1000, centers=centers, cluster_std=0.5, random_state=1)
    test, test_labels = datasets.make_blobs(n_samples=500, centers=centers, cluster_std=0.5, random_state=2)
    scores = metrics.kmeans_scores(train, test, test_labels, num_clusters=10, num_classes=10, seed=0)
    assert scores["nmi"] > 0.95
    assert scores["hungarian_accuracy"] > 0.95
    assert scores["num_examples"] == 500
    assert scores["fit_examples"] == 1000


def test_kmeans_flattens_images_and_subsamples():
    generator = np.random.default_rng(0)
    train = generator.random((300, 4, 4, 3))
    test = generator.random((50, 4, 4, 3))
    scores = metrics.kmeans_scores(train, test, generator.integers(3, size=50), num_clusters=5,
                                   num_classes=3, seed=0, max_fit_examples=100)
    assert scores["fit_examples"] == 100
    assert "hungarian_accuracy" not in scores
    assert 1 <= scores["clusters_used"] <= 5


def test_factor_nmi_identical_and_independent():
    generator = np.random.default_rng(0)
    clusters = generator.integers(10, size=20_000)
    scores = metrics.factor_nmi(clusters, {"same": clusters.copy(), "independent": generator.integers(5, size=20_000)})
    assert scores["same"] == pytest.approx(1.0)
    assert scores["independent"] < 0.01


def test_counting_perfect_predictions():
    counts = np.array([0, 1, 2, 3, 3, 5])
    scores = metrics.counting_scores(counts, counts)
    assert scores["accuracy"] == 1.0
    assert scores["mean_absolute_error"] == 0.0
    assert scores["max_count"] == 5
    np.testing.assert_array_equal(np.diag(scores["confusion"]), [1, 1, 1, 2, 0, 1])
    assert np.sum(scores["confusion"]) == 6


def test_counting_off_by_one():
    true = np.array([0, 1, 2, 3])
    predicted = np.array([0, 2, 2, 2])
    scores = metrics.counting_scores(predicted, true)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["mean_absolute_error"] == pytest.approx(0.5)
    assert scores["confusion"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert scores["num_examples"] == 4


def test_counting_clips_large_predictions():
    scores = metrics.counting_scores(np.array([1.0, 7.0]), np.array([1, 2]), max_count=2)
    assert scores["confusion"] == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert scores["mean_absolute_error"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="true counts"):
        metrics.counting_scores(np.array([1, 1]), np.array([1, 3]), max_count=2)


def test_markdown_table_exact():
    rows = [{"model": "gmvae", "majority_accuracy": 0.51234, "clusters_used": np.int64(30)},
            {"model": "a|b", "majority_accuracy": np.float32(1.0)}]
    text = metrics.markdown_table(rows, ["model", "majority_accuracy", "clusters_used"])
    assert text == (
        "| model | majority_accuracy | clusters_used |\n"
        "|---|---|---|\n"
        "| gmvae | 0.512 | 30 |\n"
        "| a\\|b | 1.000 | n/a |\n")


def test_csv_table_exact():
    rows = [{"model": "gmvae", "nmi": 0.12345, "note": "k=30, pixels"}, {"model": "chance", "nmi": 0.0}]
    text = metrics.csv_table(rows, ["model", "nmi", "note"])
    assert text == 'model,nmi,note\ngmvae,0.123,"k=30, pixels"\nchance,0.000,\n'


@pytest.mark.parametrize("clusters, labels, message", [
    ([0, 1, 2], [0, 1], "same length"),
    ([], [], "empty"),
    ([[0, 1]], [[0, 1]], "1-D"),
    ([0, -1], [0, 1], "non-negative"),
    ([0.5, 1.0], [0, 1], "integer"),
    (["a", "b"], [0, 1], "integers"),
])
def test_invalid_inputs_raise(clusters, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.majority_mapping_accuracy(clusters, labels)


def test_ids_out_of_range_raise():
    with pytest.raises(ValueError, match="num_clusters=3"):
        metrics.clustering_scores([0, 3], [0, 1], num_clusters=3, num_classes=2)
    with pytest.raises(ValueError, match="num_classes=2"):
        metrics.clustering_scores([0, 1], [0, 2], num_clusters=3, num_classes=2)
    with pytest.raises(ValueError, match="factor 'hue'"):
        metrics.factor_nmi([0, 1, 1], {"hue": [0, 1]})
    with pytest.raises(ValueError, match="size per example"):
        metrics.kmeans_scores(np.zeros((5, 3)), np.zeros((2, 4)), [0, 1], 2, 2, seed=0)
