"""Tests of the disentanglement table on briefly trained runs and a saved classifier."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import schema
from trainer import classifier, config as config_module, data, disentanglement, loop, plotting, presets, tables


def train_briefly(preset: str, data_dir, run_dir) -> str:
    config = config_module.override(presets.get_preset(preset), {
        "training_steps": 3, "batch_size": 16, "checkpoint_every": 3, "log_every": 3})
    loop.train(config, str(data_dir), str(run_dir))
    return str(run_dir)


@pytest.fixture(scope="module")
def classifier_dir(tiny_digits, tmp_path_factory):
    output = tmp_path_factory.mktemp("classifier")
    classifier.train_classifier(str(tiny_digits), str(output), epochs=1)
    return str(output)


@pytest.fixture(scope="module")
def split_vae_run(tiny_digits, tmp_path_factory):
    return train_briefly("digits-split-vae", tiny_digits, tmp_path_factory.mktemp("split-vae"))


def test_table_of_split_vae_run(split_vae_run, classifier_dir, tiny_digits):
    report = disentanglement.evaluate_disentanglement(split_vae_run, classifier_dir=classifier_dir, num_draws=3)
    with open(report.results_path) as handle:
        results = json.load(handle)
    manifest = schema.read_manifest(str(tiny_digits))
    trained = classifier.load_classifier(classifier_dir, manifest)

    assert results == report.results
    assert results["model"] == "lgvae"
    assert results["step"] == 3
    assert results["z_g_prior"] == "N(0, I)"
    assert results["num_examples"] == manifest.splits["test"].num_records
    for condition in tables.DISENTANGLEMENT_CONDITIONS:
        scores = results["accuracy"][condition]
        assert 0.0 <= scores["mean"] <= 1.0
        assert scores["mean"] == pytest.approx(np.mean(scores["draws"]))
    assert len(results["accuracy"]["random_z_l"]["draws"]) == 3
    assert len(results["accuracy"]["random_z_g"]["draws"]) == 3
    assert results["accuracy"]["reconstructions"]["std"] == 0.0
    # (a) scores the unchanged test images, so it must equal the classifier's own test accuracy.
    assert results["accuracy"]["test_images"]["mean"] == pytest.approx(
        classifier.accuracy_on_split(trained.model, str(tiny_digits), manifest, "test"))
    labels = np.concatenate([labels.numpy() for _, labels in classifier.labelled_images(
        str(tiny_digits), manifest, "test").batch(256)])
    assert results["chance"] == pytest.approx(np.bincount(labels).max() / labels.size)


def test_table_files_beside_results(split_vae_run, classifier_dir):
    disentanglement.evaluate_disentanglement(split_vae_run, classifier_dir=classifier_dir, num_draws=2)
    with open(f"{split_vae_run}/disentanglement.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert rows[0]["model"] == "lgvae"
    assert rows[0]["draws"] == "2"
    assert list(rows[0]) == ["run", "model", "step", "z_g_prior", "test_images", "reconstructions", "random_z_l",
                             "random_z_l_std", "random_z_g", "random_z_g_std", "chance", "draws"]
    with open(f"{split_vae_run}/disentanglement.md") as handle:
        markdown = handle.read()
    assert "(c) random_z_l" in markdown
    assert "| run | model | step | z_g_prior |" in markdown


def test_random_draws_are_reproducible(split_vae_run, classifier_dir):
    first = disentanglement.evaluate_disentanglement(split_vae_run, classifier_dir=classifier_dir, num_draws=2, seed=4)
    second = disentanglement.evaluate_disentanglement(split_vae_run, classifier_dir=classifier_dir, num_draws=2, seed=4)
    assert first.results["accuracy"] == second.results["accuracy"]


def test_decoder_ignoring_z_l_gives_c_equal_b(split_vae_run, classifier_dir, tiny_digits):
    model, config, _ = loop.load_trained_model(split_vae_run)
    manifest = schema.read_manifest(str(tiny_digits))
    trained = classifier.load_classifier(classifier_dir, manifest)
    batch = next(iter(data.evaluation_batches(str(tiny_digits), manifest, config, "test", batch_size=8)))
    codes = model.encode(batch["inputs"])
    random_local = model.sample_local(8, tf.constant([7, 7], tf.int32))
    # Before: the trained decoder reads z_l, so a random z_l changes the images.
    assert not np.allclose(model.decode(codes["z_g"], codes["z_l"]), model.decode(codes["z_g"], random_local))

    # The decoder's first layer reads concat([z_g, z_l]); zero the kernel rows that read z_l.
    kernel = model.decoder.dense.kernel
    global_dims = config.model.global_latent_dims
    kernel.assign(tf.concat([kernel[:global_dims], tf.zeros_like(kernel[global_dims:])], axis=0))
    np.testing.assert_array_equal(model.decode(codes["z_g"], codes["z_l"]), model.decode(codes["z_g"], random_local))

    batches = data.evaluation_batches(str(tiny_digits), manifest, config, "test", batch_size=32)
    counts = disentanglement.score_images(model, trained.model, batches, num_draws=3)
    results = disentanglement.summarise(counts)
    assert counts["random_z_l"].tolist() == [counts["reconstructions"][0]] * 3
    assert results["accuracy"]["random_z_l"]["mean"] == results["accuracy"]["reconstructions"]["mean"]
    assert results["accuracy"]["random_z_l"]["std"] == 0.0


def test_split_gmvae_uses_cluster_prior(tiny_digits, classifier_dir, tmp_path):
    run_dir = train_briefly("digits-split-gmvae", tiny_digits, tmp_path / "split-gmvae")
    report = disentanglement.evaluate_disentanglement(run_dir, classifier_dir=classifier_dir, num_draws=2,
                                                      max_examples=40)
    assert report.results["model"] == "lggmvae"
    assert report.results["z_g_prior"] == "p(z | y), y uniform"
    assert report.results["num_examples"] == 40
    assert 0.0 <= report.results["accuracy"]["random_z_g"]["mean"] <= 1.0


def test_rejects_model_without_local_path(tmp_path, classifier_dir):
    (tmp_path / loop.CONFIG_NAME).write_text(presets.get_preset("digits-gmvae").to_json())
    with pytest.raises(ValueError, match="needs a model with z_g and z_l .* this run trained gmvae"):
        disentanglement.evaluate_disentanglement(str(tmp_path), classifier_dir=classifier_dir)


def test_rejects_missing_classifier(split_vae_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="split-classifier --data"):
        disentanglement.evaluate_disentanglement(split_vae_run, classifier_dir=str(tmp_path / "none"))


def test_evaluate_if_available_skips(split_vae_run, tmp_path):
    assert disentanglement.evaluate_if_available(split_vae_run, classifier_dir=str(tmp_path / "none")) is None
    gmvae_dir = tmp_path / "gmvae"
    gmvae_dir.mkdir()
    (gmvae_dir / loop.CONFIG_NAME).write_text(presets.get_preset("digits-gmvae").to_json())
    assert disentanglement.evaluate_if_available(str(gmvae_dir)) is None


def test_evaluate_if_available_writes_table(split_vae_run, classifier_dir):
    report = disentanglement.evaluate_if_available(split_vae_run, classifier_dir=classifier_dir)
    assert report.results["num_draws"] == disentanglement.NUM_DRAWS
    assert report.results_path.endswith("/disentanglement.json")


def test_report_tables_render(split_vae_run, classifier_dir, tmp_path):
    assert disentanglement.report_tables(str(tmp_path)) == []
    disentanglement.evaluate_disentanglement(split_vae_run, classifier_dir=classifier_dir, num_draws=2)
    [(caption, markdown)] = disentanglement.report_tables(split_vae_run)
    assert "disentanglement.json" in caption
    rendered = plotting.markdown_to_html(markdown)
    assert rendered.count("<table>") == 1
    assert rendered.count("<p>") == 1
