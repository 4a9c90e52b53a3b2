"""The export-figures component: the figures of the SPLIT paper (Charakorn et al., arXiv 2001.08957)
as PNGs and a self-contained HTML report.

This module has no `from __future__ import annotations`: KFP reads the annotations of the
component function as live types, and the function's source runs on its own inside the image.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def export_figures(
    run: Input[Model],
    dataset: Input[Dataset],
    metrics: Input[Metrics],
    report: Output[HTML],
    figures: Output[Artifact],
):
    """Draw every figure that the run's model supports.

    `report` is report.html with the images embedded, which the Kubeflow UI shows; `figures` is
    a folder of the PNGs. The report's tables come from the run's metrics.json, copied from
    `metrics` when the run directory lacks it.
    """
    import os
    import shutil

    from trainer.evaluation import METRICS_NAME
    from trainer.figures import draw_figures

    run_metrics_path = os.path.join(run.path, METRICS_NAME)
    if not os.path.exists(run_metrics_path) and os.path.exists(metrics.path):
        shutil.copyfile(metrics.path, run_metrics_path)

    written = draw_figures(run.path, data_dir=dataset.path)
    report_path, image_paths = written[-1], written[:-1]

    shutil.copyfile(report_path, report.path)
    os.makedirs(figures.path, exist_ok=True)
    for path in image_paths:
        shutil.copyfile(path, os.path.join(figures.path, os.path.basename(path)))
    figures.metadata["files"] = sorted(os.path.basename(path) for path in image_paths)
