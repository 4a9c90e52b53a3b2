"""Tests of `split-data svhn` on small .mat files written with SVHN's layout."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
import scipy.io

from preprocessing import cli, matlab, schema, storage, svhn
from tests.gcs_emulator import gcs_bucket  # noqa: F401  (a pytest fixture)

BEAM_ARGV = ["--runner", "FnApiRunner"]
SIZES = {"train_32x32.mat": 7, "extra_32x32.mat": 5, "test_32x32.mat": 4}


def _write_mat(path: str, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    """Write images `[N, 32, 32, 3]` and labels `[N]` as SVHN does: X `[32, 32, 3, N]`, y `[N, 1]`."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": np.moveaxis(images, 0, -1), "y": labels.reshape(-1, 1).astype(np.float64)},
                     do_compression=compress)
    with storage.open_file(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _make_source(directory: str, sizes: dict[str, int] = SIZES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the three files with random images and labels cycling through 1..10."""
    rng = np.random.default_rng(0)
    storage.make_dirs(directory)
    contents = {}
    for position, (name, count) in enumerate(sizes.items()):
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        labels = (np.arange(count) + 3 * position) % 10 + 1
        # One uncompressed file, so both ways of locating a range are exercised.
        _write_mat(storage.join(directory, name), images, labels, compress=name != "test_32x32.mat")
        contents[name] = (images, labels)
    return contents


def _parse(argv: list[str]):
    args, beam_argv = cli.build_parser().parse_known_args(argv)
    return args, beam_argv + BEAM_ARGV


def _read_split(output: str, split: str) -> list[dict]:
    manifest = schema.read_manifest(output)
    records = [schema.parse_example(record)
               for name in manifest.splits[split].files
               for record in storage.read_tfrecords(storage.join(output, name), manifest.compression)]
    return sorted(records, key=lambda record: record[schema.INDEX_KEY])


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    status = cli.main(argv + BEAM_ARGV)
    return status, capsys.readouterr().err


def test_matlab_reader_matches_scipy():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, size=(32, 32, 3, 50), dtype=np.uint8)
    for compress in (False, True):
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {"y": np.ones((50, 1)), "X": array}, do_compression=compress)
        examples = list(matlab.iter_uint8_examples(buffer, "X", 13, 41))
        assert len(examples) == 28
        np.testing.assert_array_equal(np.stack(examples, axis=-1), array[..., 13:41])


def test_matlab_reader_rejects_missing_variable():
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"y": np.ones((3, 1))})
    with pytest.raises(matlab.MatFileError, match="no variable 'X'"):
        list(matlab.iter_uint8_examples(buffer, "X", 0, 1, path="file.mat"))


def test_svhn_counts_labels_and_pixels(tmp_path):
    source, output = str(tmp_path / "source"), str(tmp_path / "out")
    contents = _make_source(source)
    args, beam_argv = _parse(["svhn", "--source", source, "--output", output, "--num_shards", "2"])
    svhn.run(args, beam_argv, images_per_range=3)

    manifest = schema.read_manifest(output)
    assert manifest.splits["train"].num_records == 12
    assert manifest.splits["test"].num_records == 4
    assert manifest.image_shape == (32, 32, 3)
    assert manifest.label_meaning == "class"

    train = _read_split(output, "train")
    expected_images = np.concatenate([contents["train_32x32.mat"][0], contents["extra_32x32.mat"][0]])
    expected_labels = np.concatenate([contents["train_32x32.mat"][1], contents["extra_32x32.mat"][1]])
    assert [record["index"] for record in train] == list(range(12))
    for record, image, label in zip(train, expected_images, expected_labels):
        np.testing.assert_array_equal(record["image"], image)
        assert record["label"] == (0 if label == 10 else label)

    test = _read_split(output, "test")
    test_images, test_labels = contents["test_32x32.mat"]
    np.testing.assert_array_equal(np.stack([record["image"] for record in test]), test_images)
    assert [record["label"] for record in test] == [0 if label == 10 else label for label in test_labels]


def test_svhn_maps_only_ten_to_zero():
    assert svhn.to_class(10) == 0
    assert [svhn.to_class(label) for label in range(1, 10)] == list(range(1, 10))


def test_svhn_no_extra_leaves_extra_out(tmp_path):
    source, output = str(tmp_path / "source"), str(tmp_path / "out")
    _make_source(source)
    args, beam_argv = _parse(["svhn", "--source", source, "--output", output, "--no_extra",
                              "--num_shards", "1", "--compression", "gzip"])
    svhn.run(args, beam_argv)

    manifest = schema.read_manifest(output)
    assert manifest.splits["train"].num_records == 7
    assert manifest.compression == "GZIP"
    assert manifest.options["extra"] is False
    assert len(_read_split(output, "train")) == 7


def test_svhn_replaces_stale_manifest(tmp_path):
    source, output = str(tmp_path / "source"), str(tmp_path / "out")
    _make_source(source)
    os.makedirs(output)
    (tmp_path / "out" / schema.MANIFEST_NAME).write_text("stale")
    args, beam_argv = _parse(["svhn", "--source", source, "--output", output, "--num_shards", "1"])
    svhn.run(args, beam_argv)

    assert schema.read_manifest(output).splits["test"].num_records == 4


def test_svhn_wrong_layout_error(tmp_path, capsys):
    source = str(tmp_path / "source")
    _make_source(source)
    # Images first, as a Python user might save them: [N, 32, 32, 3].
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": np.zeros((4, 32, 32, 3), np.uint8), "y": np.ones((4, 1))})
    (tmp_path / "source" / "test_32x32.mat").write_bytes(buffer.getvalue())

    status, error = _run_cli(["svhn", "--source", source, "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "test_32x32.mat: X is uint8 [4, 32, 32, 3]; expected X uint8 [32, 32, 3, N]" in error


def test_svhn_label_outside_range_error(tmp_path, capsys):
    source = str(tmp_path / "source")
    _make_source(source)
    _write_mat(str(tmp_path / "source" / "test_32x32.mat"), np.zeros((2, 32, 32, 3), np.uint8),
               np.array([3, 11]), compress=False)

    status, error = _run_cli(["svhn", "--source", source, "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "test_32x32.mat: label 11 is outside 1..10" in error


def test_svhn_rejects_non_mat_file(tmp_path, capsys):
    source = str(tmp_path / "source")
    _make_source(source)
    (tmp_path / "source" / "extra_32x32.mat").write_bytes(b"not a mat file" * 20)

    status, error = _run_cli(["svhn", "--source", source, "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "extra_32x32.mat: not a readable MATLAB .mat file" in error


def test_svhn_empty_source_names_missing_file(tmp_path, capsys):
    source = tmp_path / "empty"
    source.mkdir()

    status, error = _run_cli(["svhn", "--source", str(source), "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert f"{source}/train_32x32.mat: file not found" in error


def test_svhn_tfds_without_package_error(tmp_path, capsys, monkeypatch):
    # A None entry makes `import tensorflow_datasets` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)

    status, error = _run_cli(["svhn", "--tfds_data_dir", str(tmp_path), "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "pip install 'split-pipeline[tfds]'" in error


def test_svhn_gcs_round_trip(gcs_bucket):
    source, output = f"{gcs_bucket}/svhn-mat", f"{gcs_bucket}/svhn"
    contents = _make_source(source, {"train_32x32.mat": 3, "extra_32x32.mat": 2, "test_32x32.mat": 2})
    args, beam_argv = _parse(["svhn", "--source", source, "--output", output, "--num_shards", "2"])
    svhn.run(args, beam_argv)

    manifest = schema.read_manifest(output)
    assert manifest.splits["train"].num_records == 5
    assert sorted(name for name, _ in storage.list_files(output)) == sorted(
        [schema.MANIFEST_NAME] + [name for info in manifest.splits.values() for name in info.files])
    test = _read_split(output, "test")
    np.testing.assert_array_equal(np.stack([record["image"] for record in test]), contents["test_32x32.mat"][0])
