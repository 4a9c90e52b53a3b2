"""Tests of the SPAIR input range, a short training run through the loop, counting and figures."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import schema
from trainer import cli, data, loop, presets, spair_evaluation
from trainer.config import override

IMAGE_SHAPE = (48, 48, 3)
SQUARE = 12
SPLIT_SIZES = {"train": 40, "test": 24, "unseen": 16}
# Training counts lean towards 1, so that the most common count is known.
TRAIN_COUNTS = [1] * 16 + [0] * 8 + [2] * 8 + [3] * 8


def _scene(rng, count, background):
    image = np.empty(IMAGE_SHAPE, np.uint8)
    image[:] = background
    corners = rng.choice(4, size=count, replace=False)
    for corner in corners:
        top, left = 6 + 24 * (corner // 2), 6 + 24 * (corner % 2)
        image[top:top + SQUARE, left:left + SQUARE] = rng.integers(0, 256, 3)
    return image


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    """A prepared dataset of 48x48 scenes with 0..3 coloured squares, label = count."""
    directory = tmp_path_factory.mktemp("tiny_scenes")
    rng = np.random.default_rng(0)
    splits = {}
    for split, size in SPLIT_SIZES.items():
        counts = TRAIN_COUNTS if split == "train" else list(rng.integers(0, 4, size))
        background = (40, 60, 200) if split == "unseen" else (200, 180, 40)
        name = schema.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(str(directory / name)) as writer:
            for index, count in enumerate(counts):
                writer.write(schema.serialize_example(_scene(rng, int(count), background), int(count), index))
        splits[split] = schema.SplitInfo(len(counts), (name,))
    manifest = schema.Manifest(name="multidigit-easy", image_shape=IMAGE_SHAPE, splits=splits,
                               label_meaning="count", num_classes=4, seed=0,
                               source_fingerprint=schema.fingerprint(["tiny scenes"]))
    schema.write_manifest(str(directory), manifest)
    return str(directory)


def _small_config(name, **train_fields):
    config = presets.get_preset(name)
    config = override(config, {"latent_size": 8, "object_size": 16, "z_pres_anneal_step": 10})
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_fields))


def test_training_inputs_in_unit_range(tiny_scenes):
    config = _small_config("multidigit-easy-bg-spair", batch_size=8)
    manifest = schema.read_manifest(tiny_scenes)
    batch = next(iter(data.training_dataset(tiny_scenes, manifest, config))).numpy()
    assert batch.shape == (8, *IMAGE_SHAPE)
    assert batch.min() >= 0.0
    assert batch.max() <= 1.0
    assert batch.max() > 0.5


def test_split_spair_inputs_carry_scrambled_view(tiny_scenes):
    config = _small_config("multidigit-easy-split-spair", batch_size=8)
    manifest = schema.read_manifest(tiny_scenes)
    batch = next(iter(data.training_dataset(tiny_scenes, manifest, config))).numpy()
    assert batch.shape == (8, 48, 48, 6)
    image, view = batch[..., :3], batch[..., 3:]
    assert not np.array_equal(image, view)
    # Scrambling moves whole patches, so every image keeps its pixel values.
    for example in range(8):
        np.testing.assert_array_equal(np.sort(image[example].reshape(-1)), np.sort(view[example].reshape(-1)))


def test_most_common_count_reads_labels(tiny_scenes):
    manifest = schema.read_manifest(tiny_scenes)
    assert spair_evaluation.most_common_count(tiny_scenes, manifest, "train") == 1


def test_box_corners_in_pixels():
    corners = spair_evaluation.box_corners(np.array([[0.25, 0.5, -0.25, 0.0]]), height=48, width=64)
    np.testing.assert_allclose(corners, [[12.0, 16.0, 36.0, 32.0]])


@pytest.mark.parametrize("preset", ["multidigit-easy-bg-spair", "multidigit-easy-split-spair"])
def test_train_count_and_draw(tiny_scenes, tmp_path, preset):
    config = _small_config(preset, training_steps=4, batch_size=8, checkpoint_every=4, log_every=2)
    result = loop.train(config, tiny_scenes, str(tmp_path / "run"))
    assert result.final_step == 4
    assert np.isfinite(result.losses["loss"])

    model, run_config, _ = loop.load_trained_model(str(tmp_path / "run"))
    manifest = schema.read_manifest(tiny_scenes)
    results = spair_evaluation.counting_metrics(model, run_config, tiny_scenes, manifest)
    assert results["baseline_count"] == 1
    for split in ("test", "unseen"):
        scores = results[split]
        assert scores["num_examples"] == SPLIT_SIZES[split]
        predicted, true = spair_evaluation.predict_counts(model, run_config, tiny_scenes, manifest, split)
        assert scores["accuracy"] == pytest.approx(np.mean(predicted == true))
        assert scores["mean_absolute_error"] == pytest.approx(np.mean(np.abs(predicted - true)))
        assert scores["baseline_accuracy"] == pytest.approx(np.mean(true == 1))
        assert predicted.min() >= 0
        assert predicted.max() <= 16
    table = spair_evaluation.counting_table(results)
    assert "unseen-background test" in table

    figures = spair_evaluation.spair_figures(model, run_config, tiny_scenes, manifest, columns=4)
    assert len(figures) == 4
    captions = [caption for caption, _ in figures]
    assert sum("unseen" in caption for caption in captions) == 2
    assert ("x_hat" in captions[0]) == (run_config.model.model == "lg_spair")


def test_commands_count_and_draw(tiny_scenes, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = _small_config("multidigit-easy-bg-spair", training_steps=2, batch_size=8, checkpoint_every=2,
                           log_every=2)
    loop.train(config, tiny_scenes, str(run_dir))

    assert cli.evaluate_main(["--run_dir", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((run_dir / "metrics.json").read_text())
    assert set(results["counting"]) >= {"baseline_count", "test", "unseen"}
    assert "unseen-background test" in printed

    assert cli.figures_main(["--run_dir", str(run_dir)]) == 0
    pngs = sorted(path.name for path in (run_dir / "figures").glob("*.png"))
    assert len(pngs) == 4
    report = (run_dir / "figures" / "report.html").read_text()
    assert report.count("<img") == 4
    assert "<table" in report


def test_counting_rejects_class_labels(tiny_scenes, tmp_path):
    manifest = dataclasses.replace(schema.read_manifest(tiny_scenes), label_meaning="class")
    with pytest.raises(ValueError, match="not object counts"):
        spair_evaluation.counting_metrics(None, None, tiny_scenes, manifest)
