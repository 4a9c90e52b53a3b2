"""The evaluate component: clustering scores of a trained run as Metrics and ClassificationMetrics.

This module has no `from __future__ import annotations`: KFP reads the annotations of the
component function as live types, and the function's source runs on its own inside the image.
"""

from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(
    run: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    table: Output[Markdown],
    split: str = "test",
):
    """Evaluate the run on `split` of `dataset`.

    `metrics` logs every number of metrics.json (`clusters_nmi`, `chance_nmi`, ...), and its
    file contains the whole metrics.json. `confusion_matrix` maps each cluster to its majority
    class; it stays empty unless a mixture model ran on labelled data. `table` is the Markdown
    table of the model's clusters beside the baselines.
    """
    import json

    from components import convert
    from trainer import evaluation

    # NOTE: evaluate_run also writes metrics.json into the run directory. On kfp.local and on
    # Vertex AI (a /gcs/ mount) that is the train task's artifact. On Kubeflow the run directory
    # is a downloaded copy whose changes are lost, so downstream tasks read `metrics` instead.
    report = evaluation.evaluate_run(run.path, data_dir=dataset.path, split=split)

    for name, value in convert.headline_metrics(report.metrics).items():
        metrics.log_metric(name, value)
    with open(metrics.path, "w") as handle:
        handle.write(json.dumps(report.metrics, indent=2, sort_keys=True) + "\n")

    if "confusion_matrix" in report.metrics:
        categories, matrix = convert.majority_confusion_matrix(report.metrics["confusion_matrix"])
        confusion_matrix.log_confusion_matrix(categories, matrix)

    with open(table.path, "w") as handle:
        handle.write(report.table + "\n")
