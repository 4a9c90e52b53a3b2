"""`split-compare`: the evaluation tables of several runs side by side.

Reads each run's `metrics.json` (written by `split-evaluate`) and, where it exists, its
`disentanglement.json`, and writes into the output folder:
    clustering.md / .csv        one row per run and method: the model's clusters, the random
                                assignment, k-means on pixels and on the z_g mean
    cluster_factors.md / .csv   one row per mixture run: NMI of its clusters with the label and
                                each recorded local factor (datasets with factors only)
    disentanglement.md / .csv   one row per run with a disentanglement table

Usage:
    split-compare --run_dir runs/gmvae --run_dir runs/split-gmvae --output runs/comparison
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Sequence

import tensorflow as tf

from preprocessing import schema
from trainer import disentanglement, evaluation, tables

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunResults:
    """One run's evaluation files: `metrics.json` and, when present, `disentanglement.json`."""

    label: str
    run_dir: str
    metrics: dict
    disentanglement: dict | None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The comparison tables by file stem, the written paths and all tables as one Markdown text."""

    tables: dict[str, tables.Table]
    paths: list[str]
    markdown: str


def read_run(run_dir: str, label: str | None = None) -> RunResults:
    """Read a run's evaluation files; raise FileNotFoundError when it has no `metrics.json`."""
    path = schema.join_path(run_dir, evaluation.METRICS_NAME)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: metrics not found; run split-evaluate --run_dir {run_dir} first")
    with tf.io.gfile.GFile(path) as handle:
        try:
            results = json.loads(handle.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error}); run split-evaluate --run_dir {run_dir} again") from None
    return RunResults(label or tables.run_label(run_dir), run_dir, results, disentanglement.read_results(run_dir))


def _unique_labels(run_dirs: Sequence[str]) -> list[str]:
    """Name runs by their last path component, or by their whole path where two share one."""
    labels = [tables.run_label(run_dir) for run_dir in run_dirs]
    if len(set(labels)) == len(labels):
        return labels
    return [str(run_dir).rstrip("/") for run_dir in run_dirs]


def comparison_tables(runs: Sequence[RunResults]) -> dict[str, tables.Table]:
    """Build the tables that have at least one row, keyed by file stem."""
    metric_pairs = [(run.label, run.metrics) for run in runs]
    disentanglement_pairs = [(run.label, run.disentanglement) for run in runs if run.disentanglement is not None]
    candidates = {
        tables.CLUSTERING_STEM: tables.clustering_table(metric_pairs),
        tables.FACTORS_STEM: tables.factor_table(metric_pairs),
        tables.DISENTANGLEMENT_STEM: tables.disentanglement_table(disentanglement_pairs),
    }
    return {stem: table for stem, table in candidates.items() if table.rows}


def compare_runs(run_dirs: Sequence[str], output_dir: str) -> Comparison:
    """Read every run, write the comparison tables into `output_dir` and return them."""
    if not run_dirs:
        raise ValueError("no runs to compare; pass --run_dir at least once")
    runs = [read_run(run_dir, label) for run_dir, label in zip(run_dirs, _unique_labels(run_dirs))]
    datasets = sorted({str(run.metrics.get("dataset")) for run in runs})
    if len(datasets) > 1:
        _LOGGER.warning("comparing runs on different datasets (%s); their scores are not comparable",
                        ", ".join(datasets))

    built = comparison_tables(runs)
    if not built:
        raise ValueError(f"no scores to compare: {', '.join(run_dirs)} hold no clustering or disentanglement"
                         " results (a dataset without class labels has none)")
    tf.io.gfile.makedirs(output_dir)
    paths: list[str] = []
    sections = []
    for stem, table in built.items():
        paths += tables.write_table(output_dir, stem, table)
        sections.append(f"## {stem}\n\n{table.markdown()}")
    return Comparison(built, paths, "\n".join(sections))


def main(argv: list[str] | None = None) -> int:
    """Run the `split-compare` command; return its exit status."""
    from trainer import cli

    parser = argparse.ArgumentParser(
        prog="split-compare",
        description="Compare the evaluation tables of several runs (each evaluated with split-evaluate) in one"
                    " clustering table, one factor table and one disentanglement table, as Markdown and CSV.")
    parser.add_argument("--run_dir", action="append", required=True,
                        help="run directory with metrics.json; repeat the flag once per run")
    parser.add_argument("--output", required=True, help="folder for the comparison tables (local or gs://)")
    args = parser.parse_args(argv)
    cli._configure_logging()

    def body() -> None:
        comparison = compare_runs(args.run_dir, args.output)
        print(comparison.markdown)
        for path in comparison.paths:
            print(path)

    return cli._run("split-compare", body)
