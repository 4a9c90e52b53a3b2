"""The digit classifier that scores the disentanglement table (SPLIT, arXiv 2001.08957, Table 1).

A small CNN: BatchNorm before each of Conv(32,6,2), Conv(64,6,2) and Conv(256,4,2), all relu,
then Dropout 0.25, Dense 256 relu, Dropout, Dense 64 relu, Dropout and a linear Dense of one
logit per class. It trains with Adam (learning rate 1e-4, AMSGrad) for 20 epochs at batch 32
on the training split only. The original also trained on the test split, which leaks the test
images into the score. Images enter in [-1, 1], the range the VAE decoders produce.

The classifier is trained once per prepared dataset and saved in a folder (by default
`DATA_DIR/classifier/`) as:
    classifier.weights.h5   the Keras weights
    classifier.json         the dataset it was trained on, its recipe and its test accuracy

Usage:
    split-classifier --data /tmp/digits                      # writes /tmp/digits/classifier/
    split-classifier --data gs://bucket/svhn --output gs://bucket/svhn-classifier --epochs 20
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from preprocessing import schema
from trainer import data, loop

_LOGGER = logging.getLogger(__name__)

DEFAULT_DIR_NAME = "classifier"
WEIGHTS_NAME = "classifier.weights.h5"
INFO_NAME = "classifier.json"
EPOCHS = 20
BATCH_SIZE = 32
LEARNING_RATE = 1e-4
# The recipe names one rate, 0.25, for the first dropout; the two later dropouts use it too.
DROPOUT_RATE = 0.25
SHUFFLE_BUFFER = 10_000
PREDICT_BATCH_SIZE = 256
# Manifest fields that identify a prepared dataset. A classifier is reused only on data that
# matches all of them, so that its training split is the run's training split.
_DATASET_IDENTITY_FIELDS = ("name", "source_fingerprint", "seed", "image_shape", "num_classes", "options")


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
    """A classifier with the contents of its `classifier.json`."""

    model: keras.Model
    info: dict
    directory: str


def default_dir(data_dir: str) -> str:
    """Return the folder where the classifier of `data_dir` lives by default."""
    return schema.join_path(data_dir, DEFAULT_DIR_NAME)


def build_classifier(image_shape: tuple[int, int, int], num_classes: int, seed: int = 0) -> keras.Model:
    """Build the CNN for images `[batch, height, width, channels]` in [-1, 1].

    Returns a model that maps images to logits `[batch, num_classes]`. Every initializer and
    dropout layer gets its own seed derived from `seed`, so that training is reproducible
    without setting Keras's global seed.
    """
    seeds = itertools.count(seed * 100)

    def conv(filters: int, kernel: int) -> keras.layers.Conv2D:
        return keras.layers.Conv2D(filters, kernel, strides=2, padding="same", activation="relu",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)))

    def dense(units: int, activation: str | None) -> keras.layers.Dense:
        return keras.layers.Dense(units, activation=activation,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)))

    def dropout() -> keras.layers.Dropout:
        return keras.layers.Dropout(DROPOUT_RATE, seed=next(seeds))

    return keras.Sequential([
        keras.Input(shape=tuple(image_shape)),
        keras.layers.BatchNormalization(),
        conv(32, 6),
        keras.layers.BatchNormalization(),
        conv(64, 6),
        keras.layers.BatchNormalization(),
        conv(256, 4),
        keras.layers.Flatten(),
        dropout(),
        dense(256, "relu"),
        dropout(),
        dense(64, "relu"),
        dropout(),
        dense(num_classes, None),
    ], name="digit_classifier")


def _check_labelled(data_dir: str, manifest: schema.Manifest) -> None:
    if manifest.label_meaning != "class":
        raise ValueError(
            f"{schema.manifest_path(data_dir)}: the classifier needs class labels, but this dataset's"
            f" labels are {manifest.label_meaning!r}")


def labelled_images(data_dir: str, manifest: schema.Manifest, split: str) -> tf.data.Dataset:
    """Return a dataset of (image `[height, width, channels]` float32 in [-1, 1], label int64) pairs."""
    return data.read_records(data_dir, manifest, split).map(
        lambda record: (data.to_signed_unit(record[schema.IMAGE_KEY]), record[schema.LABEL_KEY]),
        num_parallel_calls=tf.data.AUTOTUNE)


def dataset_identity(manifest: schema.Manifest) -> dict:
    """Return the manifest fields that identify a prepared dataset, as JSON-ready values."""
    identity = {name: getattr(manifest, name) for name in _DATASET_IDENTITY_FIELDS}
    identity["image_shape"] = list(manifest.image_shape)
    identity["options"] = json.loads(json.dumps(dict(manifest.options)))
    identity["train_records"] = manifest.splits["train"].num_records if "train" in manifest.splits else 0
    return identity


def predict_classes(model: keras.Model, images) -> np.ndarray:
    """Return the predicted class ids `[batch]` of images `[batch, height, width, channels]` in [-1, 1]."""
    logits = model(images, training=False)
    return tf.argmax(logits, axis=-1, output_type=tf.int32).numpy()


def accuracy_on_split(model: keras.Model, data_dir: str, manifest: schema.Manifest, split: str) -> float:
    """Return the fraction of `split`'s images whose predicted class is their label."""
    correct, total = 0, 0
    for images, labels in labelled_images(data_dir, manifest, split).batch(PREDICT_BATCH_SIZE):
        correct += int(np.sum(predict_classes(model, images) == labels.numpy()))
        total += int(labels.shape[0])
    return correct / total


def train_classifier(data_dir: str, output_dir: str | None = None, epochs: int = EPOCHS,
                     batch_size: int = BATCH_SIZE, seed: int = 0) -> TrainedClassifier:
    """Train the classifier on `data_dir`'s training split and save it in `output_dir`.

    `output_dir` defaults to `DATA_DIR/classifier`. The saved `classifier.json` records the
    dataset identity, the recipe, the accuracy on the test split (when it exists) and the
    training time.
    """
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {batch_size}")
    manifest = schema.read_manifest(data_dir)
    _check_labelled(data_dir, manifest)
    output_dir = output_dir or default_dir(data_dir)
    num_train = manifest.splits["train"].num_records if "train" in manifest.splits else 0
    if num_train < batch_size:
        raise ValueError(f"{data_dir}: the train split has {num_train} records, fewer than --batch_size {batch_size}")

    model = build_classifier(manifest.image_shape, manifest.num_classes, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE, amsgrad=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    # The known size lets Keras end each epoch without an out-of-data warning.
    train = labelled_images(data_dir, manifest, "train").apply(tf.data.experimental.assert_cardinality(num_train))
    image_bytes = num_train * int(np.prod(manifest.image_shape)) * 4
    if image_bytes <= data.CACHE_LIMIT_BYTES:
        train = train.cache()
    train = train.shuffle(min(SHUFFLE_BUFFER, num_train), seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    _LOGGER.info("training the classifier on %s (%d images) for %d epochs", data_dir, num_train, epochs)
    start = time.perf_counter()
    history = model.fit(train, epochs=epochs, shuffle=False, verbose=2)
    seconds = time.perf_counter() - start

    test_accuracy = accuracy_on_split(model, data_dir, manifest, "test") if "test" in manifest.splits else None
    info = {
        "dataset": dataset_identity(manifest),
        "data_dir": data_dir,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": LEARNING_RATE,
        "seed": seed,
        "train_accuracy_last_epoch": float(history.history["accuracy"][-1]),
        "test_accuracy": test_accuracy,
        "training_seconds": round(seconds, 1),
    }
    save_classifier(model, info, output_dir)
    _LOGGER.info("classifier saved in %s: test accuracy %s after %.0f s", output_dir, test_accuracy, seconds)
    return TrainedClassifier(model, info, output_dir)


def save_classifier(model: keras.Model, info: dict, output_dir: str) -> None:
    """Write the weights and `classifier.json` (last, so that a folder with it is complete)."""
    tf.io.gfile.makedirs(output_dir)
    with tempfile.TemporaryDirectory() as local_dir:
        local_path = os.path.join(local_dir, WEIGHTS_NAME)
        model.save_weights(local_path)
        tf.io.gfile.copy(local_path, schema.join_path(output_dir, WEIGHTS_NAME), overwrite=True)
    loop.write_text(schema.join_path(output_dir, INFO_NAME), json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_info(classifier_dir: str) -> dict:
    """Return the contents of `classifier_dir/classifier.json`, or raise FileNotFoundError."""
    path = schema.join_path(classifier_dir, INFO_NAME)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path}: no trained classifier found; train one with split-classifier --data DATA_DIR")
    with tf.io.gfile.GFile(path) as handle:
        return json.loads(handle.read())


def load_classifier(classifier_dir: str, manifest: schema.Manifest | None = None) -> TrainedClassifier:
    """Load a saved classifier; with `manifest`, check that it was trained on that dataset.

    Raises FileNotFoundError when the folder contains no classifier and ValueError when it was
    trained on other data (another dataset, source, seed, options or image shape).
    """
    info = read_info(classifier_dir)
    trained_on = info["dataset"]
    if manifest is not None:
        expected = dataset_identity(manifest)
        differing = [name for name in expected if trained_on.get(name) != expected[name]]
        if differing:
            raise ValueError(
                f"{classifier_dir}: the classifier was trained on other data ({', '.join(differing)} differ:"
                f" {', '.join(f'{name} {trained_on.get(name)!r} not {expected[name]!r}' for name in differing)});"
                " train one for this dataset with split-classifier --data DATA_DIR --output NEW_DIR")

    model = build_classifier(tuple(trained_on["image_shape"]), trained_on["num_classes"])
    with tempfile.TemporaryDirectory() as local_dir:
        local_path = os.path.join(local_dir, WEIGHTS_NAME)
        tf.io.gfile.copy(schema.join_path(classifier_dir, WEIGHTS_NAME), local_path, overwrite=True)
        model.load_weights(local_path)
    return TrainedClassifier(model, info, classifier_dir)


def main(argv: list[str] | None = None) -> int:
    """Run the `split-classifier` command; return its exit status."""
    from trainer import cli

    parser = argparse.ArgumentParser(
        prog="split-classifier",
        description="Train the digit classifier of the disentanglement table on a prepared dataset's train"
                    " split and save it; split-evaluate reuses it.")
    parser.add_argument("--data", required=True, help="prepared dataset folder (local or gs://) with dataset.json")
    parser.add_argument("--output", default=None,
                        help=f"folder for the classifier (default: DATA/{DEFAULT_DIR_NAME})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default: {EPOCHS})")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help=f"batch size (default: {BATCH_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights, dropout and shuffling")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again even when the folder already contains a classifier of this dataset")
    args = parser.parse_args(argv)
    cli._configure_logging()

    def body() -> None:
        output_dir = args.output or default_dir(args.data)
        if not args.overwrite and tf.io.gfile.exists(schema.join_path(output_dir, INFO_NAME)):
            existing = load_classifier(output_dir, schema.read_manifest(args.data))
            print(f"{output_dir} already contains a classifier of this dataset (test accuracy"
                  f" {existing.info['test_accuracy']}); pass --overwrite to train it again")
            return
        trained = train_classifier(args.data, output_dir, epochs=args.epochs, batch_size=args.batch_size,
                                   seed=args.seed)
        print(f"test accuracy {trained.info['test_accuracy']} after {trained.info['training_seconds']} s;"
              f" classifier: {output_dir}")

    return cli._run("split-classifier", body)
