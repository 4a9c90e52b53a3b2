"""Evaluation of a trained run: clustering scores against the chance level and k-means baselines.

`evaluate_run` encodes a split with the run's newest checkpoint, scores the clusters
(`argmax` of the cluster logits) with the majority mapping, the one-to-one mapping where K
equals the number of classes, NMI and ARI, and compares them with a random assignment to the
same K clusters and with k-means fit on the training split (on pixels and on the posterior mean
of `z_g`). On datasets that record local factors it adds the NMI of the clusters with each.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import tensorflow as tf

from preprocessing import schema
from trainer import data, loop, metrics, tables
from trainer.config import SPAIR_MODELS

_LOGGER = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """The metrics written to `metrics.json`, where they are, and a printable table."""

    metrics: dict
    metrics_path: str
    table: str


def encode_split(model, config, data_dir: str, manifest: schema.Manifest, split: str,
                 max_examples: int | None = None, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Encode a split; return numpy arrays `labels`, `z_g`, `pixels` (flattened [0, 1] images),
    `cluster` for mixture models, and one entry per recorded factor (`factor/NAME`).

    With `max_examples`, the examples are spread evenly over the whole split (every k-th record),
    so that a capped SVHN train split still contains `extra` images, which come after `train`'s.
    """
    collected: dict[str, list[np.ndarray]] = {}
    seen = 0
    num_records = manifest.splits[split].num_records if split in manifest.splits else 0
    stride = max(1, -(-num_records // max_examples)) if max_examples else 1
    for batch in data.evaluation_batches(data_dir, manifest, config, split, batch_size=batch_size,
                                         stride=stride):
        codes = model.encode(batch["inputs"])
        values = {
            "labels": batch[schema.LABEL_KEY].numpy(),
            "z_g": codes["z_g"].numpy(),
            "pixels": batch[schema.IMAGE_KEY].numpy().reshape(len(batch[schema.LABEL_KEY]), -1).astype(np.float32)
            / np.float32(255.0),
        }
        if "cluster" in codes:
            values["cluster"] = codes["cluster"].numpy()
        for name in manifest.factors:
            values[schema.FACTOR_PREFIX + name] = batch[schema.FACTOR_PREFIX + name].numpy()
        for name, value in values.items():
            collected.setdefault(name, []).append(value)
        seen += len(values["labels"])
        if max_examples is not None and seen >= max_examples:
            break
    arrays = {name: np.concatenate(parts) for name, parts in collected.items()}
    if max_examples is not None:
        arrays = {name: value[:max_examples] for name, value in arrays.items()}
    return arrays


def evaluate_run(run_dir: str, data_dir: str | None = None, split: str = "test",
                 seed: int = 0) -> EvaluationReport:
    """Evaluate `run_dir` on `split`; write `run_dir/metrics.json` and return the report."""
    model, config, run_info = loop.load_trained_model(run_dir)
    data_dir = data_dir or run_info["data_dir"]
    manifest = schema.read_manifest(data_dir)
    step = checkpoint_step(run_dir)

    if config.model.model in SPAIR_MODELS:
        return _evaluate_counting(run_dir, model, config, data_dir, manifest, step)

    test = encode_split(model, config, data_dir, manifest, split)
    results: dict = {
        "preset": config.preset,
        "model": config.model.model,
        "dataset": manifest.name,
        "split": split,
        "step": step,
        "num_examples": int(len(test["labels"])),
    }
    if manifest.label_meaning == "class":
        num_classes = manifest.num_classes
        labels = test["labels"]
        num_clusters = config.model.y_size if "cluster" in test else num_classes
        if "cluster" in test:
            results["clusters"] = metrics.clustering_scores(test["cluster"], labels, num_clusters, num_classes)
            results["confusion_matrix"] = metrics.confusion_matrix(
                test["cluster"], labels, num_clusters, num_classes).tolist()
            factor_values = {name[len(schema.FACTOR_PREFIX):]: value for name, value in test.items()
                             if name.startswith(schema.FACTOR_PREFIX)}
            if factor_values:
                results["cluster_factor_nmi"] = metrics.factor_nmi(test["cluster"], factor_values)

        results["chance"] = metrics.random_assignment_scores(labels, num_clusters, num_classes, seed=seed)

        results["num_clusters"] = num_clusters
        train = encode_split(model, config, data_dir, manifest, "train", max_examples=metrics.KMEANS_MAX_FIT_EXAMPLES)
        for feature in ("pixels", "z_g"):
            results[f"kmeans_{feature}"] = metrics.kmeans_scores(
                train[feature], test[feature], labels, num_clusters, num_classes, seed=seed)
    else:
        _LOGGER.info("%s has no class labels (label_meaning %s); no clustering scores",
                     data_dir, manifest.label_meaning)

    path = schema.join_path(run_dir, METRICS_NAME)
    loop.write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    tables.write_run_tables(run_dir, results)
    return EvaluationReport(results, path, metrics_table(results))


def checkpoint_step(run_dir: str) -> int | None:
    """Return the step of the run's newest checkpoint, or None when it has none."""
    latest = tf.train.latest_checkpoint(schema.join_path(run_dir, loop.CHECKPOINT_DIR))
    if latest is None:
        return None
    try:
        return int(latest.rsplit("-", 1)[-1])
    except ValueError:
        return None


def _evaluate_counting(run_dir: str, model, config, data_dir: str, manifest: schema.Manifest,
                       step: int | None) -> EvaluationReport:
    """Score a SPAIR-family run by its object counts on the test and unseen-background splits."""
    from trainer import spair_evaluation  # Only SPAIR runs need the object-detection helpers.

    results = {
        "preset": config.preset,
        "model": config.model.model,
        "dataset": manifest.name,
        "step": step,
        "counting": spair_evaluation.counting_metrics(model, config, data_dir, manifest),
    }
    path = schema.join_path(run_dir, METRICS_NAME)
    loop.write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return EvaluationReport(results, path, metrics_table(results))


def metrics_table(results: dict) -> str:
    """Format `metrics.json` contents as Markdown: the model's clusters beside the baselines."""
    num_clusters = results.get("num_clusters")
    titles = [
        ("clusters", f"{results.get('model')} clusters"),
        ("chance", f"random assignment (K={num_clusters})"),
        ("kmeans_pixels", f"k-means on pixels (K={num_clusters})"),
        ("kmeans_z_g", f"k-means on z_g mean (K={num_clusters})"),
    ]
    if "counting" in results:
        from trainer import spair_evaluation

        return spair_evaluation.counting_table(results["counting"])
    rows = [{"method": title, **results[key]} for key, title in titles if key in results]
    if not rows:
        return "(no class labels: nothing to score)"
    columns = ["method", "majority_accuracy", "hungarian_accuracy", "nmi", "ari", "clusters_used"]
    table = metrics.markdown_table(rows, columns)
    if "cluster_factor_nmi" in results:
        factor_rows = [{"factor": "label", "nmi": results["clusters"]["nmi"]}]
        factor_rows += [{"factor": name, "nmi": value} for name, value in sorted(results["cluster_factor_nmi"].items())]
        table += "\n\nNMI of the clusters with the label and each local factor:\n\n"
        table += metrics.markdown_table(factor_rows, ["factor", "nmi"])
    return table
