"""Tests of the digit classifier: its architecture, one short training run, saving and reuse."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from preprocessing import schema
from trainer import classifier


@pytest.fixture(scope="module")
def trained(tiny_digits, tmp_path_factory):
    output = tmp_path_factory.mktemp("classifier")
    return classifier.train_classifier(str(tiny_digits), str(output), epochs=1)


def test_classifier_parameter_count():
    model = classifier.build_classifier((32, 32, 3), num_classes=10)
    batch_norms = 2 * 2 * (3 + 32 + 64)  # gamma, beta, moving mean and variance per channel
    convolutions = (6 * 6 * 3 + 1) * 32 + (6 * 6 * 32 + 1) * 64 + (4 * 4 * 64 + 1) * 256
    dense = (4 * 4 * 256 + 1) * 256 + (256 + 1) * 64 + (64 + 1) * 10
    assert model.count_params() == batch_norms + convolutions + dense == 1_406_006
    assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)


def test_classifier_layer_order():
    kinds = [type(layer).__name__ for layer in classifier.build_classifier((32, 32, 3), 10).layers]
    assert kinds == ["BatchNormalization", "Conv2D", "BatchNormalization", "Conv2D", "BatchNormalization",
                     "Conv2D", "Flatten", "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense"]


def test_train_writes_weights_and_info(trained, tiny_digits):
    assert sorted(os.listdir(trained.directory)) == [classifier.INFO_NAME, classifier.WEIGHTS_NAME]
    with open(os.path.join(trained.directory, classifier.INFO_NAME)) as handle:
        info = json.load(handle)
    manifest = schema.read_manifest(str(tiny_digits))
    assert info["dataset"]["name"] == "digits"
    assert info["dataset"]["train_records"] == manifest.splits["train"].num_records
    assert info["epochs"] == 1
    assert info["batch_size"] == 32
    assert 0.0 <= info["test_accuracy"] <= 1.0
    assert info["training_seconds"] > 0


def test_load_restores_predictions(trained, tiny_digits):
    manifest = schema.read_manifest(str(tiny_digits))
    loaded = classifier.load_classifier(trained.directory, manifest)
    images = next(iter(classifier.labelled_images(str(tiny_digits), manifest, "test").batch(40)))[0]
    np.testing.assert_allclose(loaded.model(images, training=False), trained.model(images, training=False),
                               rtol=1e-5, atol=1e-5)
    assert classifier.accuracy_on_split(loaded.model, str(tiny_digits), manifest, "test") == pytest.approx(
        trained.info["test_accuracy"])


@pytest.mark.parametrize("field, value", [("seed", 99), ("source_fingerprint", "0000"), ("image_shape", (28, 28, 3))])
def test_load_rejects_other_dataset(trained, tiny_digits, field, value):
    manifest = dataclasses.replace(schema.read_manifest(str(tiny_digits)), **{field: value})
    with pytest.raises(ValueError, match=f"trained on other data \\({field} differ"):
        classifier.load_classifier(trained.directory, manifest)


def test_load_missing_classifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="split-classifier"):
        classifier.load_classifier(str(tmp_path))


def test_cli_reuses_saved_classifier(trained, tiny_digits, capsys):
    weights = os.path.join(trained.directory, classifier.WEIGHTS_NAME)
    modified = os.path.getmtime(weights)
    status = classifier.main(["--data", str(tiny_digits), "--output", trained.directory])
    assert status == 0
    assert "already contains a classifier" in capsys.readouterr().out
    assert os.path.getmtime(weights) == modified


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch_size", "100000"], "fewer than --batch_size 100000"),
])
def test_cli_rejects_bad_flags(tiny_digits, tmp_path, capsys, flags, message):
    status = classifier.main(["--data", str(tiny_digits), "--output", str(tmp_path / "out"), *flags])
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("split-classifier: error:")
    assert message in error


def test_cli_rejects_count_labels(tiny_digits, tmp_path, capsys):
    counted = tmp_path / "counted"
    shutil.copytree(tiny_digits, counted)
    manifest = schema.read_manifest(str(counted))
    schema.write_manifest(str(counted), dataclasses.replace(manifest, label_meaning="count"))
    assert classifier.main(["--data", str(counted)]) == 2
    assert "needs class labels" in capsys.readouterr().err
