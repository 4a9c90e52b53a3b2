"""Tests of the table files and of split-compare on hand-written evaluation results."""

import csv
import io
import json

import pytest

from trainer import compare, tables


def scores(majority: float, nmi: float, clusters_used: int) -> dict:
    return {"majority_accuracy": majority, "nmi": nmi, "ari": nmi / 2, "clusters_used": clusters_used,
            "num_examples": 80}


# The shapes that `evaluation.evaluate_run` writes for a mixture run with factors and for `lgvae`.
SPLIT_GMVAE_METRICS = {
    "model": "lggmvae", "dataset": "digits", "step": 1500, "num_clusters": 30, "num_examples": 80,
    "clusters": scores(0.4, 0.35, 27), "chance": scores(0.15, 0.12, 30),
    "kmeans_pixels": scores(0.2, 0.1, 30), "kmeans_z_g": scores(0.3, 0.25, 30),
    "cluster_factor_nmi": {"background_hue": 0.05, "background_kind": 0.02, "foreground_hue": 0.04},
}
SPLIT_VAE_METRICS = {
    "model": "lgvae", "dataset": "digits", "step": 1500, "num_clusters": 10, "num_examples": 80,
    "chance": {**scores(0.12, 0.03, 10), "hungarian_accuracy": 0.11},
    "kmeans_pixels": {**scores(0.2, 0.1, 10), "hungarian_accuracy": 0.18},
    "kmeans_z_g": {**scores(0.3, 0.2, 10), "hungarian_accuracy": 0.27},
}
SPLIT_VAE_DISENTANGLEMENT = {
    "model": "lgvae", "step": 1500, "num_draws": 3, "z_g_prior": "N(0, I)", "chance": 0.1,
    "accuracy": {
        "test_images": {"mean": 0.98, "std": 0.0, "draws": [0.98]},
        "reconstructions": {"mean": 0.9, "std": 0.0, "draws": [0.9]},
        "random_z_l": {"mean": 0.85, "std": 0.01, "draws": [0.84, 0.85, 0.86]},
        "random_z_g": {"mean": 0.12, "std": 0.02, "draws": [0.1, 0.12, 0.14]},
    },
}


def write_run(directory, metrics, disentanglement=None):
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    if disentanglement is not None:
        (directory / "disentanglement.json").write_text(json.dumps(disentanglement))
    return str(directory)


def read_csv(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_compare_writes_three_tables(tmp_path):
    runs = [write_run(tmp_path / "split-gmvae", SPLIT_GMVAE_METRICS),
            write_run(tmp_path / "split-vae", SPLIT_VAE_METRICS, SPLIT_VAE_DISENTANGLEMENT)]
    comparison = compare.compare_runs(runs, str(tmp_path / "comparison"))

    assert sorted(path.rsplit("/", 1)[1] for path in comparison.paths) == [
        "cluster_factors.csv", "cluster_factors.md", "clustering.csv", "clustering.md",
        "disentanglement.csv", "disentanglement.md"]
    clustering = read_csv(tmp_path / "comparison" / "clustering.csv")
    assert [(row["run"], row["method"]) for row in clustering] == [
        ("split-gmvae", "model clusters (K=30)"), ("split-gmvae", "random assignment (K=30)"),
        ("split-gmvae", "k-means on pixels (K=30)"), ("split-gmvae", "k-means on z_g mean (K=30)"),
        ("split-vae", "random assignment (K=10)"), ("split-vae", "k-means on pixels (K=10)"),
        ("split-vae", "k-means on z_g mean (K=10)")]
    assert clustering[0]["majority_accuracy"] == "0.400"
    assert clustering[0]["hungarian_accuracy"] == ""
    assert clustering[6]["hungarian_accuracy"] == "0.270"
    assert clustering[0]["clusters_used"] == "27"

    [factors] = read_csv(tmp_path / "comparison" / "cluster_factors.csv")
    assert factors == {"run": "split-gmvae", "model": "lggmvae", "step": "1500", "label": "0.350",
                       "background_hue": "0.050", "background_kind": "0.020", "foreground_hue": "0.040"}

    [disentangled] = read_csv(tmp_path / "comparison" / "disentanglement.csv")
    assert disentangled["run"] == "split-vae"
    assert disentangled["random_z_l"] == "0.850"
    assert disentangled["random_z_g_std"] == "0.020"
    assert disentangled["draws"] == "3"


def test_comparison_markdown_matches_csv(tmp_path):
    runs = [write_run(tmp_path / "a", SPLIT_GMVAE_METRICS), write_run(tmp_path / "b", SPLIT_VAE_METRICS)]
    comparison = compare.compare_runs(runs, str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "clustering.md").read_text()
    lines = markdown.strip().splitlines()
    assert lines[0] == "| " + " | ".join(tables.CLUSTERING_COLUMNS) + " |"
    assert len(lines) == 2 + len(read_csv(tmp_path / "out" / "clustering.csv"))
    assert "| a | lggmvae | 1500 | model clusters (K=30) | 0.400 | n/a | 0.350 | 0.175 | 27 |" in lines
    assert "## clustering" in comparison.markdown
    assert "disentanglement" not in comparison.tables


def test_same_run_names_get_full_paths(tmp_path):
    runs = [write_run(tmp_path / "seed0" / "run", SPLIT_GMVAE_METRICS),
            write_run(tmp_path / "seed1" / "run", SPLIT_GMVAE_METRICS)]
    comparison = compare.compare_runs(runs, str(tmp_path / "out"))
    assert {row["run"] for row in comparison.tables["clustering"].rows} == set(runs)


def test_write_run_tables_next_to_metrics(tmp_path):
    run_dir = write_run(tmp_path / "run", SPLIT_GMVAE_METRICS)
    written = tables.write_run_tables(run_dir, SPLIT_GMVAE_METRICS)
    assert sorted(path.rsplit("/", 1)[1] for path in written) == [
        "cluster_factors.csv", "cluster_factors.md", "clustering.csv", "clustering.md"]
    assert len(read_csv(tmp_path / "run" / "clustering.csv")) == 4
    assert tables.write_run_tables(str(tmp_path), {"model": "lggmvae", "num_examples": 5}) == []


def test_cli_prints_tables(tmp_path, capsys):
    run = write_run(tmp_path / "split-vae", SPLIT_VAE_METRICS, SPLIT_VAE_DISENTANGLEMENT)
    assert compare.main(["--run_dir", run, "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "## disentanglement" in printed
    assert str(tmp_path / "out" / "clustering.csv") in printed


@pytest.mark.parametrize("contents, message", [
    (None, "metrics not found; run split-evaluate --run_dir"),
    ("{not json", "invalid JSON"),
    ("{}", "no scores to compare"),
])
def test_cli_rejects_bad_runs(tmp_path, capsys, contents, message):
    run = tmp_path / "run"
    run.mkdir()
    if contents is not None:
        (run / "metrics.json").write_text(contents)
    assert compare.main(["--run_dir", str(run), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("split-compare: error:")
    assert message in error


def test_table_csv_quotes_commas():
    table = tables.Table([{"run": "a,b", "nmi": 0.5}], ("run", "nmi"))
    assert list(csv.reader(io.StringIO(table.csv()))) == [["run", "nmi"], ["a,b", "0.500"]]
