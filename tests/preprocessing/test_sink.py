"""Tests of the deterministic shard writer and the manifest written last."""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from preprocessing import schema, sink

# Beam 2.77's DirectRunner first tries to download the Prism runner from GitHub and then falls
# back to the FnApiRunner. Naming the FnApiRunner skips the download.
RUNNER = "FnApiRunner"


def _read_records(path: str, compression: str = "") -> list[bytes]:
    return [record.numpy() for record in tf.data.TFRecordDataset(path, compression_type=compression)]


def _template(compression: str = "") -> sink.ManifestTemplate:
    return sink.ManifestTemplate(
        name="toy", image_shape=(2, 2, 3), label_meaning="class", num_classes=2, seed=7,
        source_fingerprint="0123456789abcdef", factors={"colour": 3}, compression=compression,
        options={"note": "test"})


def test_write_shards_writes_empty_shards(tmp_path):
    output = str(tmp_path)
    with test_pipeline.TestPipeline(runner=RUNNER) as pipeline:
        results = (pipeline
                   | beam.Create([(0, b"record-0"), (1, b"record-1")])
                   | sink.WriteShards(output, "train", num_shards=4))
        assert_that(results, equal_to([
            ("train", schema.shard_name("train", 0, 4), 1),
            ("train", schema.shard_name("train", 1, 4), 1),
            ("train", schema.shard_name("train", 2, 4), 0),
            ("train", schema.shard_name("train", 3, 4), 0),
        ]))

    assert sorted(os.listdir(output)) == [schema.shard_name("train", shard, 4) for shard in range(4)]
    assert _read_records(os.path.join(output, schema.shard_name("train", 1, 4))) == [b"record-1"]
    assert _read_records(os.path.join(output, schema.shard_name("train", 3, 4))) == []


def test_write_shards_orders_by_index(tmp_path):
    output = str(tmp_path)
    indices = [9, 2, 7, 4, 0, 5, 8, 1]
    with test_pipeline.TestPipeline(runner=RUNNER) as pipeline:
        _ = (pipeline
             | beam.Create([(index, f"record-{index}".encode()) for index in indices])
             | sink.WriteShards(output, "train", num_shards=2))

    even = _read_records(os.path.join(output, schema.shard_name("train", 0, 2)))
    odd = _read_records(os.path.join(output, schema.shard_name("train", 1, 2)))
    assert even == [b"record-0", b"record-2", b"record-4", b"record-8"]
    assert odd == [b"record-1", b"record-5", b"record-7", b"record-9"]


def test_write_shards_rejects_zero_shards(tmp_path):
    with pytest.raises(ValueError, match="--num_shards must be at least 1, got 0"):
        sink.WriteShards(str(tmp_path), "train", num_shards=0)


def _write_two_splits(pipeline, output: str, test_output: str) -> None:
    train = (pipeline
             | "CreateTrain" >> beam.Create([(index, b"train-%d" % index) for index in range(5)])
             | "WriteTrain" >> sink.WriteShards(output, "train", num_shards=2))
    test = (pipeline
            | "CreateTest" >> beam.Create([(0, b"test-0")])
            | "WriteTest" >> sink.WriteShards(test_output, "test", num_shards=3))
    _ = (train, test) | beam.Flatten() | sink.WriteManifest(output, _template())


def test_manifest_lists_written_shards(tmp_path):
    output = str(tmp_path)
    with test_pipeline.TestPipeline(runner=RUNNER) as pipeline:
        _write_two_splits(pipeline, output, output)

    manifest = schema.read_manifest(output)
    assert manifest.splits["train"] == schema.SplitInfo(
        5, (schema.shard_name("train", 0, 2), schema.shard_name("train", 1, 2)))
    assert manifest.splits["test"] == schema.SplitInfo(
        1, tuple(schema.shard_name("test", shard, 3) for shard in range(3)))
    assert manifest.name == "toy"
    assert manifest.factors == {"colour": 3}
    assert manifest.options == {"note": "test"}

    manifest_time = os.stat(schema.manifest_path(output)).st_mtime_ns
    for info in manifest.splits.values():
        for name in info.files:
            assert os.stat(os.path.join(output, name)).st_mtime_ns <= manifest_time
    assert not [name for name in os.listdir(output) if name.endswith(".tmp")]


def test_manifest_absent_when_a_shard_fails(tmp_path):
    output = str(tmp_path)
    missing_folder = str(tmp_path / "missing" / "folder")  # TFRecordWriter creates no folders.
    # The FnApiRunner wraps the writer's NotFoundError in a RuntimeError.
    with pytest.raises(RuntimeError, match="missing/folder.*No such file or directory"):
        with test_pipeline.TestPipeline(runner=RUNNER) as pipeline:
            _write_two_splits(pipeline, output, missing_folder)

    assert not os.path.exists(schema.manifest_path(output))


def test_read_manifest_missing_names_path(tmp_path):
    with pytest.raises(schema.ManifestError) as raised:
        schema.read_manifest(str(tmp_path))

    assert schema.manifest_path(str(tmp_path)) in str(raised.value)
    assert "not found" in str(raised.value)


def test_gzip_round_trip(tmp_path):
    output = str(tmp_path)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(2, 2, 3), dtype=np.uint8) for _ in range(3)]
    records = [(index, schema.serialize_example(image, label=index % 2, index=index, factors={"colour": index}))
               for index, image in enumerate(images)]
    with test_pipeline.TestPipeline(runner=RUNNER) as pipeline:
        shards = (pipeline
                  | beam.Create(records)
                  | sink.WriteShards(output, "train", num_shards=1, compression="GZIP"))
        _ = shards | sink.WriteManifest(output, _template("GZIP"))

    manifest = schema.read_manifest(output)
    assert manifest.compression == "GZIP"
    assert manifest.splits["train"].files == ("train-00000-of-00001.tfrecord.gz",)
    path = os.path.join(output, "train-00000-of-00001.tfrecord.gz")
    with open(path, "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"  # The gzip magic number.

    parsed = [schema.parse_example(record) for record in _read_records(path, "GZIP")]
    assert [record["index"] for record in parsed] == [0, 1, 2]
    assert [record["label"] for record in parsed] == [0, 1, 0]
    assert [record["factor/colour"] for record in parsed] == [0, 1, 2]
    for record, image in zip(parsed, images):
        np.testing.assert_array_equal(record["image"], image)


def test_serialized_features_in_key_order():
    # Shards are byte-identical across worker processes only if every process serializes the
    # feature map in the same order, and the deterministic form sorts it by key.
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    for factors in ({"b": 1, "a": 2}, {"zeta": 3, "alpha": 4, "mid": 5}):
        record = schema.serialize_example(image, label=1, index=2, factors=factors)
        assert record == tf.train.Example.FromString(record).SerializeToString(deterministic=True)
