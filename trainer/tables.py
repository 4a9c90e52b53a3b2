"""The evaluation tables as rows, Markdown and CSV: clustering, what the clusters follow, disentanglement.

One run's table and the comparison of several runs share one layout, because a comparison is the
rows of each run one after another, tagged by a `run` column. Each table is written as
`STEM.md` and `STEM.csv` side by side: next to a run's `metrics.json` for one run, or in the
output folder of `split-compare` for several.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from preprocessing import schema
from trainer import loop, metrics

CLUSTERING_STEM = "clustering"
FACTORS_STEM = "cluster_factors"
DISENTANGLEMENT_STEM = "disentanglement"

CLUSTERING_COLUMNS = ("run", "model", "step", "method", "majority_accuracy", "hungarian_accuracy", "nmi", "ari",
                      "clusters_used")
# metrics.json keys of the clustering methods, in table order, with their row titles.
CLUSTERING_METHODS = (
    ("clusters", "model clusters"),
    ("chance", "random assignment"),
    ("kmeans_pixels", "k-means on pixels"),
    ("kmeans_z_g", "k-means on z_g mean"),
)
# disentanglement.json conditions in table order: (a) to (d) of SPLIT's Table 1 (arXiv 2001.08957).
DISENTANGLEMENT_CONDITIONS = ("test_images", "reconstructions", "random_z_l", "random_z_g")
# The conditions that depend on noise draws and so have a spread column.
RANDOMISED_CONDITIONS = ("random_z_l", "random_z_g")
DISENTANGLEMENT_CAPTION = (
    "Classifier accuracy on (a) test_images: the test images; (b) reconstructions: decode(z_g, z_l) of"
    " the posterior means; (c) random_z_l: decode(z_g, z_l ~ N(0, I)); (d) random_z_g: decode(z_g ~ prior,"
    " z_l), where the prior is N(0, I) for lgvae and p(z | y) with y uniform over the K clusters for"
    " lggmvae. (c) and (d) are means over `draws` noise draws with their sample standard deviation (_std)."
    " A disentangled model keeps (c) near (b) and drops (d) towards chance, the largest class share.")


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows of one table and its column order; a key missing from a row is an empty cell."""

    rows: list[dict]
    columns: tuple[str, ...]
    caption: str = ""

    def markdown(self) -> str:
        """Return the caption (when set) as a paragraph, then the GitHub-flavoured Markdown table."""
        table = metrics.markdown_table(self.rows, self.columns)
        return f"{self.caption}\n\n{table}" if self.caption else table

    def csv(self) -> str:
        return metrics.csv_table(self.rows, self.columns)


def run_label(run_dir: str) -> str:
    """Return the last component of a local or `gs://` run directory, the run's name in tables."""
    return str(run_dir).rstrip("/").rsplit("/", 1)[-1]


def clustering_table(runs: Sequence[tuple[str, dict]]) -> Table:
    """Build the clustering table (SPLIT's Table 2 and its baselines) of `(run label, metrics.json)` pairs.

    Each run contributes one row per method it has: the model's clusters (mixture models only),
    the random assignment, and k-means on pixels and on the posterior mean of z_g.
    """
    rows = []
    for label, results in runs:
        num_clusters = results.get("num_clusters")
        for key, title in CLUSTERING_METHODS:
            if key in results:
                rows.append({"run": label, "model": results.get("model"), "step": results.get("step"),
                             "method": f"{title} (K={num_clusters})", **results[key]})
    return Table(rows, CLUSTERING_COLUMNS)


def factor_table(runs: Sequence[tuple[str, dict]]) -> Table:
    """Build the table of what the clusters follow: NMI of each run's clusters with the label and each factor.

    Only runs whose metrics contain `cluster_factor_nmi` contribute a row. The factor columns are
    the union of the runs' factors, sorted.
    """
    scored = [(label, results) for label, results in runs if "cluster_factor_nmi" in results]
    factors = sorted({name for _, results in scored for name in results["cluster_factor_nmi"]})
    rows = [{"run": label, "model": results.get("model"), "step": results.get("step"),
             "label": results["clusters"]["nmi"], **results["cluster_factor_nmi"]}
            for label, results in scored]
    return Table(rows, ("run", "model", "step", "label", *factors),
                 caption="NMI of the model's clusters with the label and with each recorded local factor.")


def disentanglement_table(runs: Sequence[tuple[str, dict]]) -> Table:
    """Build the disentanglement table (SPLIT's Table 1) of `(run label, disentanglement.json)` pairs, one row per run."""
    columns = ["run", "model", "step", "z_g_prior"]
    for condition in DISENTANGLEMENT_CONDITIONS:
        columns.append(condition)
        if condition in RANDOMISED_CONDITIONS:
            columns.append(f"{condition}_std")
    columns += ["chance", "draws"]

    rows = []
    for label, results in runs:
        row = {"run": label, "model": results.get("model"), "step": results.get("step"),
               "z_g_prior": results.get("z_g_prior"), "chance": results.get("chance"),
               "draws": results.get("num_draws")}
        for condition in DISENTANGLEMENT_CONDITIONS:
            row[condition] = results["accuracy"][condition]["mean"]
        for condition in RANDOMISED_CONDITIONS:
            row[f"{condition}_std"] = results["accuracy"][condition]["std"]
        rows.append(row)
    return Table(rows, tuple(columns), caption=DISENTANGLEMENT_CAPTION)


def write_table(directory: str, stem: str, table: Table) -> list[str]:
    """Write `directory/STEM.md` and `directory/STEM.csv`; return both paths."""
    markdown_path = schema.join_path(directory, f"{stem}.md")
    csv_path = schema.join_path(directory, f"{stem}.csv")
    loop.write_text(markdown_path, table.markdown())
    loop.write_text(csv_path, table.csv())
    return [markdown_path, csv_path]


def write_run_tables(run_dir: str, results: dict) -> list[str]:
    """Write one run's clustering table and, where it has factors, its factor table next to `metrics.json`.

    Returns the written paths; a run without class labels (no clustering scores) writes none.
    """
    runs = [(run_label(run_dir), results)]
    written: list[str] = []
    for stem, table in ((CLUSTERING_STEM, clustering_table(runs)), (FACTORS_STEM, factor_table(runs))):
        if table.rows:
            written += write_table(run_dir, stem, table)
    return written
