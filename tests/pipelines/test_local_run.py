"""End-to-end runs of the digits pipeline with kfp.local, through `split-pipeline run --local`.

Tiny settings keep the run to a few minutes on 2 cores: 100 source digits rendered once (80
train and 20 test images), 20 training steps of batch 16.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

import pytest

from pipelines import cli

PRESET = "digits-split-gmvae"
TINY_PARAMETERS = ["renders_per_digit=1", "max_source_digits=100", "num_shards=1",
                   "training_steps=20", "batch_size=16", "log_every=10", "checkpoint_every=20"]
SUMMARY_LABELS = ("run directory", "metrics.json", "report.html", "artifacts")


def _run(root: pathlib.Path, *parameters: str) -> list[str]:
    argv = ["run", "--local", "--preset", PRESET, "--output", str(root)]
    for parameter in parameters:
        argv += ["--param", parameter]
    return argv


def _summary(stdout: str) -> dict[str, pathlib.Path]:
    """Read the paths that the command prints after a finished run."""
    paths = {}
    for line in stdout.splitlines():
        for label in SUMMARY_LABELS:
            if line.startswith(f"  {label} "):
                paths[label] = pathlib.Path(line[len(label) + 2:].strip())
    return paths


def _artifact(task_folder: pathlib.Path, output: str) -> dict:
    """Return an output artifact (uri and metadata) as the task's executor recorded it."""
    executor_output = json.loads((task_folder / "executor_output.json").read_text())
    return executor_output["artifacts"][output]["artifacts"][0]


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory) -> pathlib.Path:
    """One pipeline root for the module, so that later runs reuse the cached prepare-data task."""
    return tmp_path_factory.mktemp("local_runs")


@pytest.fixture(scope="module")
def finished_run(pipeline_root) -> tuple[int, str, str]:
    """Run the tiny pipeline once for the module: exit status, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = cli.main(_run(pipeline_root, *TINY_PARAMETERS))
    return status, stdout.getvalue(), stderr.getvalue()


def test_local_run_succeeds_and_prints_outputs(finished_run):
    status, stdout, stderr = finished_run

    assert status == 0, stderr[-3000:]
    paths = _summary(stdout)
    assert set(paths) == set(SUMMARY_LABELS), stdout[-2000:]
    assert paths["run directory"].is_dir()
    assert paths["metrics.json"] == paths["run directory"] / "metrics.json"
    assert paths["metrics.json"].is_file()
    assert paths["report.html"].is_file()
    assert "| lggmvae clusters |" in stdout
    assert "| k-means on z_g mean (K=30) |" in stdout


def test_local_run_outputs_are_typed_artifacts(finished_run):
    _, stdout, _ = finished_run
    run_folder = _summary(stdout)["artifacts"]

    dataset = _artifact(run_folder / "prepare-data", "dataset")
    assert (pathlib.Path(dataset["uri"]) / "dataset.json").is_file()
    assert dataset["metadata"]["name"] == "digits"
    assert dataset["metadata"]["splits"]["test"]["num_records"] == 20
    assert dataset["metadata"]["options"]["renders_per_digit"] == 1

    model = _artifact(run_folder / "train", "run")
    assert model["metadata"]["final_step"] == 20
    assert model["metadata"]["preset"] == PRESET
    for name in ("config.json", "run.json", "checkpoints", "export"):
        assert (pathlib.Path(model["uri"]) / name).exists(), name

    metrics = _artifact(run_folder / "evaluate", "metrics")
    for name in ("clusters_nmi", "clusters_majority_accuracy", "chance_nmi", "kmeans_pixels_nmi",
                 "kmeans_z_g_nmi", "cluster_factor_nmi_background_hue"):
        assert 0.0 <= metrics["metadata"][name] <= 1.0, name
    full_metrics = json.loads(pathlib.Path(metrics["uri"]).read_text())
    assert full_metrics["num_examples"] == 20
    assert full_metrics["clusters"]["nmi"] == metrics["metadata"]["clusters_nmi"]

    confusion = _artifact(run_folder / "evaluate", "confusion_matrix")["metadata"]["confusionMatrix"]
    assert [spec["displayName"] for spec in confusion["annotationSpecs"]] == [str(digit) for digit in range(10)]
    assert sum(sum(row["row"]) for row in confusion["rows"]) == 20

    assert "| method |" in pathlib.Path(_artifact(run_folder / "evaluate", "table")["uri"]).read_text()

    report = pathlib.Path(_artifact(run_folder / "export-figures", "report")["uri"]).read_text()
    assert report.lstrip().lower().startswith("<!doctype html")
    assert "data:image/png;base64," in report
    figures = _artifact(run_folder / "export-figures", "figures")
    pngs = sorted(path.name for path in pathlib.Path(figures["uri"]).glob("*.png"))
    assert pngs == figures["metadata"]["files"]
    assert "fig7_test_clusters.png" in pngs


def test_failed_task_fails_run_and_names_it(pipeline_root, finished_run, capsys):
    earlier_runs = set(pipeline_root.glob("split-*"))

    # A 5-pixel patch does not divide the 32x32 digits: the config is valid on its own, and the
    # train task rejects it once it reads the data.
    status = cli.main(_run(pipeline_root, *TINY_PARAMETERS, "patch_size=5"))

    captured = capsys.readouterr()
    assert status == cli.EXIT_FAILED
    assert captured.err.strip().splitlines()[-1] == (
        f"split-pipeline run: error: task train of split-{PRESET} failed; its log is above")
    assert "does not divide the 32x32 images" in captured.out
    [failed_run] = set(pipeline_root.glob("split-*")) - earlier_runs
    # The data equal those of the first run, so kfp.local's cache served prepare-data.
    assert not (failed_run / "prepare-data").exists()
    assert (failed_run / "train").is_dir()


def test_invalid_param_fails_before_running(pipeline_root, capsys):
    status = cli.main(_run(pipeline_root, "model=vqvae"))

    error = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_INVALID
    assert error == ["split-pipeline run: error: --model 'vqvae' is not one of lgvae, gmvae, lggmvae,"
                     " spair, bg_spair, lg_spair"]
    assert not any(path.name.startswith("split-") and "vqvae" in path.name for path in pipeline_root.iterdir())
