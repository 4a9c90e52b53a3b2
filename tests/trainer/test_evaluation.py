"""End-to-end tests of split-evaluate and split-figures on a briefly trained run."""

import json

import pytest
from PIL import Image

from trainer import cli, config as config_module, evaluation, figures, loop, presets


@pytest.fixture(scope="module")
def trained_runs(tiny_digits, tmp_path_factory):
    runs = {}
    for preset in ("digits-split-gmvae", "digits-split-vae", "digits-gmvae"):
        config = config_module.override(presets.get_preset(preset), {
            "training_steps": 3, "batch_size": 16, "checkpoint_every": 3, "log_every": 3})
        run_dir = tmp_path_factory.mktemp(preset)
        loop.train(config, str(tiny_digits), str(run_dir))
        runs[preset] = run_dir
    return runs


def test_evaluate_writes_metrics(trained_runs, capsys):
    run_dir = trained_runs["digits-split-gmvae"]
    assert cli.evaluate_main(["--run_dir", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((run_dir / "metrics.json").read_text())

    assert results["step"] == 3
    assert results["num_examples"] == 80
    for method in ("clusters", "chance", "kmeans_pixels", "kmeans_z_g"):
        assert 0.0 <= results[method]["majority_accuracy"] <= 1.0
        assert -1.0 <= results[method]["ari"] <= 1.0
    assert len(results["confusion_matrix"]) == 30
    assert set(results["cluster_factor_nmi"]) == {"background_kind", "background_hue", "foreground_hue"}
    assert "random assignment (K=30)" in printed
    assert "k-means on pixels" in printed


def test_evaluate_without_clusters_scores_baselines(trained_runs):
    report = evaluation.evaluate_run(str(trained_runs["digits-split-vae"]))
    assert "clusters" not in report.metrics
    assert report.metrics["num_clusters"] == 10
    assert "hungarian_accuracy" in report.metrics["kmeans_z_g"]


@pytest.mark.parametrize("preset,expected", [
    ("digits-split-gmvae", {"fig4_prior_samples", "fig4_fixed_global", "fig4_fixed_local", "fig5_style_transfer",
                            "fig6_clusters_fixed_local", "fig6_clusters_sampled_local", "fig7_test_clusters"}),
    ("digits-gmvae", {"fig4_prior_samples", "fig6_clusters", "fig7_test_clusters"}),
    ("digits-split-vae", {"fig4_prior_samples", "fig4_fixed_global", "fig4_fixed_local", "fig5_style_transfer"}),
])
def test_figures_written(trained_runs, preset, expected):
    run_dir = trained_runs[preset]
    paths = figures.draw_figures(str(run_dir))
    names = {path.rsplit("/", 1)[1].removesuffix(".png") for path in paths if path.endswith(".png")}
    assert names == expected
    for path in paths[:-1]:
        with Image.open(path) as image:
            assert image.size[0] > 100
    report = (run_dir / "figures" / "report.html").read_text()
    assert report.count("<img") == len(expected)


def test_evaluate_rejects_missing_run(tmp_path, capsys):
    assert cli.evaluate_main(["--run_dir", str(tmp_path)]) == 2
    assert "run config not found" in capsys.readouterr().err
