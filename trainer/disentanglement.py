"""The disentanglement table (SPLIT, arXiv 2001.08957, Table 1) of an `lgvae` or `lggmvae` run.

A digit classifier trained on the training split (`trainer.classifier`) scores four sets of
images made from the test split:
    (a) test_images       the test images themselves
    (b) reconstructions   decode(z_g, z_l) of the posterior means
    (c) random_z_l        decode(z_g, z_l ~ N(0, I))
    (d) random_z_g        decode(z_g ~ prior, z_l): N(0, I) for `lgvae`, p(z | y) with y uniform
                          over the K clusters for `lggmvae`
If z_g carries the digit and z_l only the style, (c) stays near (b) and (d) falls towards chance.
(c) and (d) are averaged over several noise draws and reported with their spread.

`evaluate_disentanglement` writes `RUN_DIR/disentanglement.json` and the table as
`disentanglement.md` and `disentanglement.csv`.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import tensorflow as tf

from preprocessing import schema
from trainer import classifier, data, evaluation, loop, tables
from trainer.config import LOCAL_PATH_MODELS, VAE_MODELS

_LOGGER = logging.getLogger(__name__)

RESULTS_NAME = "disentanglement.json"
SUPPORTED_MODELS = tuple(model for model in VAE_MODELS if model in LOCAL_PATH_MODELS)
NUM_DRAWS = 5
BATCH_SIZE = 256
# Offsets folded into a draw's seed so that (c) and (d) never share noise.
_LOCAL_NOISE, _GLOBAL_NOISE = 0, 1


@dataclasses.dataclass(frozen=True)
class DisentanglementReport:
    """The contents of `disentanglement.json`, where it is, and the table as Markdown."""

    results: dict
    results_path: str
    table: str


def _correct(classifier_model, images: tf.Tensor, labels: np.ndarray) -> int:
    return int(np.sum(classifier.predict_classes(classifier_model, images) == labels))


def _noise_seed(seed: int, draw: int, batch_number: int, purpose: int) -> tf.Tensor:
    base = tf.constant([seed, draw], tf.int64)
    folded = tf.random.experimental.stateless_fold_in(base, batch_number)
    return tf.cast(tf.random.experimental.stateless_fold_in(folded, purpose), tf.int32)


def score_images(model, classifier_model, batches, num_draws: int = NUM_DRAWS, seed: int = 0,
                 max_examples: int | None = None) -> dict[str, np.ndarray]:
    """Count the classifier's correct predictions under each condition of the table.

    Args:
      model: a `SplitVAE` with a local path.
      classifier_model: maps `[batch, height, width, channels]` images in [-1, 1] to logits.
      batches: iterable of dicts with `inputs` (`concat([x, x_hat])`, `[batch, height, width,
        input_channels]`) and `label` (`[batch]`), as `data.evaluation_batches` yields them.
      max_examples: stop after this many examples (whole batches, then truncated).

    Returns:
      `num_examples` (an int), `label_counts` `[num_classes seen]`, and for each condition an
      int array of correct counts: `[1]` for the deterministic (a) and (b), `[num_draws]` for
      (c) and (d).
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be at least 1, got {num_draws}")
    channels = model.image_shape[-1]
    correct = {"test_images": np.zeros(1, np.int64), "reconstructions": np.zeros(1, np.int64),
               "random_z_l": np.zeros(num_draws, np.int64), "random_z_g": np.zeros(num_draws, np.int64)}
    labels_seen: list[np.ndarray] = []

    for batch_number, batch in enumerate(batches):
        inputs = batch["inputs"]
        labels = batch[schema.LABEL_KEY].numpy()
        if max_examples is not None:
            remaining = max_examples - sum(len(part) for part in labels_seen)
            if remaining <= 0:
                break
            inputs, labels = inputs[:remaining], labels[:remaining]
        count = len(labels)
        codes = model.encode(inputs)
        z_g, z_l = codes["z_g"], codes["z_l"]

        correct["test_images"][0] += _correct(classifier_model, inputs[..., :channels], labels)
        correct["reconstructions"][0] += _correct(classifier_model, model.decode(z_g, z_l), labels)
        for draw in range(num_draws):
            random_local = model.sample_local(count, _noise_seed(seed, draw, batch_number, _LOCAL_NOISE))
            correct["random_z_l"][draw] += _correct(classifier_model, model.decode(z_g, random_local), labels)
            random_global = model.sample_global(count, _noise_seed(seed, draw, batch_number, _GLOBAL_NOISE))
            correct["random_z_g"][draw] += _correct(classifier_model, model.decode(random_global, z_l), labels)
        labels_seen.append(labels)

    if not labels_seen:
        raise ValueError("no examples to score: the split is empty or max_examples is 0")
    all_labels = np.concatenate(labels_seen)
    return {"num_examples": int(all_labels.size), "label_counts": np.bincount(all_labels), **correct}


def summarise(counts: dict) -> dict:
    """Turn correct counts into accuracies: per condition the mean, sample std and each draw's value."""
    total = counts["num_examples"]
    accuracy = {}
    for condition in tables.DISENTANGLEMENT_CONDITIONS:
        draws = counts[condition] / total
        # Both come from the integer counts, so that equal counts give exactly equal means and a zero spread.
        spread = float(np.std(counts[condition], ddof=1) / total) if draws.size > 1 else 0.0
        mean = float(counts[condition].sum() / (total * draws.size))
        accuracy[condition] = {"mean": mean, "std": spread, "draws": draws.tolist()}
    return {
        "num_examples": total,
        "chance": float(np.max(counts["label_counts"]) / total),
        "accuracy": accuracy,
    }


def _global_prior(model_name: str) -> str:
    return "p(z | y), y uniform" if model_name == "lggmvae" else "N(0, I)"


def evaluate_disentanglement(run_dir: str, data_dir: str | None = None, classifier_dir: str | None = None,
                             split: str = "test", num_draws: int = NUM_DRAWS, seed: int = 0,
                             max_examples: int | None = None) -> DisentanglementReport:
    """Score `run_dir` with the saved classifier and write `disentanglement.json`, `.md` and `.csv`.

    `data_dir` defaults to the data the run trained on, and `classifier_dir` to
    `DATA_DIR/classifier`. Raises ValueError for a model without both z_g and z_l, and
    FileNotFoundError when no classifier has been trained (`split-classifier`).
    """
    model_name = loop.read_config(run_dir).model.model
    if model_name not in SUPPORTED_MODELS:
        raise ValueError(
            f"{run_dir}: the disentanglement table needs a model with z_g and z_l ({', '.join(SUPPORTED_MODELS)}),"
            f" but this run trained {model_name}")
    model, config, run_info = loop.load_trained_model(run_dir)
    data_dir = data_dir or run_info["data_dir"]
    manifest = schema.read_manifest(data_dir)
    classifier_dir = classifier_dir or classifier.default_dir(data_dir)
    trained = classifier.load_classifier(classifier_dir, manifest)

    batches = data.evaluation_batches(data_dir, manifest, config, split, batch_size=BATCH_SIZE, seed=seed)
    counts = score_images(model, trained.model, batches, num_draws=num_draws, seed=seed, max_examples=max_examples)
    results = {
        "model": config.model.model,
        "preset": config.preset,
        "dataset": manifest.name,
        "split": split,
        "step": evaluation.checkpoint_step(run_dir),
        "num_draws": num_draws,
        "seed": seed,
        "z_g_prior": _global_prior(config.model.model),
        "classifier_dir": classifier_dir,
        **summarise(counts),
    }

    path = schema.join_path(run_dir, RESULTS_NAME)
    loop.write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    table = tables.disentanglement_table([(tables.run_label(run_dir), results)])
    tables.write_table(run_dir, tables.DISENTANGLEMENT_STEM, table)
    _LOGGER.info("disentanglement of %s: reconstructions %.3f, random z_l %.3f, random z_g %.3f",
                 run_dir, results["accuracy"]["reconstructions"]["mean"], results["accuracy"]["random_z_l"]["mean"],
                 results["accuracy"]["random_z_g"]["mean"])
    return DisentanglementReport(results, path, table.markdown())


def evaluate_if_available(run_dir: str, data_dir: str | None = None, classifier_dir: str | None = None,
                          split: str = "test") -> DisentanglementReport | None:
    """Write the disentanglement table when the run's model has z_l and a saved classifier exists.

    Returns None, and logs why, for other models and when no classifier has been trained yet.
    """
    model_name = loop.read_config(run_dir).model.model
    if model_name not in SUPPORTED_MODELS:
        _LOGGER.info("no disentanglement table for %s: %s has no z_l", run_dir, model_name)
        return None
    data_dir = data_dir or loop.read_run_info(run_dir)["data_dir"]
    classifier_dir = classifier_dir or classifier.default_dir(data_dir)
    if not tf.io.gfile.exists(schema.join_path(classifier_dir, classifier.INFO_NAME)):
        _LOGGER.warning("no disentanglement table for %s: no classifier in %s; train one with"
                        " split-classifier --data %s", run_dir, classifier_dir, data_dir)
        return None
    return evaluate_disentanglement(run_dir, data_dir=data_dir, classifier_dir=classifier_dir, split=split)


def read_results(run_dir: str) -> dict | None:
    """Return the run's `disentanglement.json`, or None when it has none."""
    path = schema.join_path(run_dir, RESULTS_NAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.loads(handle.read())


def report_tables(run_dir: str) -> list[tuple[str, str]]:
    """Return `[(caption, Markdown)]` of the run's disentanglement table for `report.html`, or `[]`."""
    results = read_results(run_dir)
    if results is None:
        return []
    table = tables.disentanglement_table([(tables.run_label(run_dir), results)])
    return [(f"Disentanglement ({RESULTS_NAME})", table.markdown())]
