"""Tests of `split-data celeba` on small 178x218 JPEGs, in a folder and zipped."""

from __future__ import annotations

import io
import logging
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from PIL import Image

from preprocessing import celeba, cli, schema, storage
from tests.gcs_emulator import gcs_bucket  # noqa: F401  (a pytest fixture)

BEAM_ARGV = ["--runner", "FnApiRunner"]
WIDTH, HEIGHT = 178, 218
NUM_IMAGES = 12
CORRUPT_NAME = "000005.jpg"
RED, BLUE, GREEN, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255), (0, 0, 0)


def _quadrant_face() -> np.ndarray:
    """A 178x218 image: red bands above and below the central 178x178 square, whose quadrants
    are blue, green (top) and white, black (bottom)."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, :] = RED
    top = (HEIGHT - WIDTH) // 2
    half = WIDTH // 2
    image[top:top + half, :half] = BLUE
    image[top:top + half, half:] = GREEN
    image[top + half:top + WIDTH, :half] = WHITE
    image[top + half:top + WIDTH, half:] = BLACK
    return image


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _faces() -> dict[str, bytes]:
    """Twelve JPEGs named like CelebA's, each a different flat colour; one file is corrupt."""
    files = {}
    for number in range(1, NUM_IMAGES + 1):
        name = f"{number:06d}.jpg"
        image = np.full((HEIGHT, WIDTH, 3), 20 * number, np.uint8)
        files[name] = _jpeg(image)
    files[CORRUPT_NAME] = b"\xff\xd8\xff\xe0 this is not a JPEG"
    return files


def _write_folder(directory, files: dict[str, bytes]) -> str:
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return str(directory)


def _write_zip(path, files: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("img_align_celeba/", b"")
        for name, data in files.items():
            archive.writestr(f"img_align_celeba/{name}", data)
    return str(path)


def _run(source: str, output: str, *flags: str):
    args, beam_argv = cli.build_parser().parse_known_args(["celeba", "--source", source, "--output", output, *flags])
    return celeba.run(args, beam_argv + BEAM_ARGV)


def _read_split(output: str, split: str) -> list[dict]:
    manifest = schema.read_manifest(output)
    records = [schema.parse_example(record)
               for name in manifest.splits[split].files
               for record in storage.read_tfrecords(storage.join(output, name), manifest.compression)]
    return sorted(records, key=lambda record: record[schema.INDEX_KEY])


def _counter(result, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(counter.committed for counter in counters)


def test_crop_keeps_central_square():
    face = celeba.crop_and_resize(_quadrant_face())

    assert face.shape == (64, 64, 3)
    assert face.dtype == np.uint8
    # No pixel of the red bands may survive the crop.
    assert not np.any((face[..., 0] > 128) & (face[..., 1] < 128) & (face[..., 2] < 128))
    np.testing.assert_array_equal(face[10, 10], BLUE)
    np.testing.assert_array_equal(face[10, 53], GREEN)
    np.testing.assert_array_equal(face[53, 10], WHITE)
    np.testing.assert_array_equal(face[53, 53], BLACK)


def test_crop_matches_tensorflow_bilinear_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    reference = tf.image.resize(image[20:198].astype(np.float32), (64, 64), method="bilinear", antialias=False)
    reference = np.rint(reference.numpy())

    difference = np.abs(celeba.crop_and_resize(image).astype(np.float64) - reference)
    assert difference.max() <= 1.0


def test_celeba_folder_counts_and_skips_corrupt(tmp_path, caplog):
    source = _write_folder(tmp_path / "img_align_celeba", _faces())
    output = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        result = _run(source, output, "--num_shards", "2")

    assert _counter(result, "unreadable_images") == 1
    assert CORRUPT_NAME in caplog.text
    manifest = schema.read_manifest(output)
    assert manifest.splits["test"].num_records == 1
    assert manifest.splits["train"].num_records == NUM_IMAGES - 2
    assert manifest.label_meaning == "none"

    test = _read_split(output, "test")
    assert [record["index"] for record in test] == [0]
    assert test[0]["label"] == schema.UNLABELLED
    assert test[0]["image"].shape == (64, 64, 3)
    # 000001.jpg is the first name, grey level 20.
    assert abs(int(test[0]["image"].mean()) - 20) <= 2

    train = _read_split(output, "train")
    # Train indices follow sorted names from 000002.jpg; 000005.jpg (train index 3) is missing.
    assert [record["index"] for record in train] == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert abs(int(train[-1]["image"].mean()) - 20 * NUM_IMAGES) <= 2


def test_celeba_zip_gives_same_records_as_folder(tmp_path):
    files = _faces()
    folder_output, zip_output = str(tmp_path / "from-folder"), str(tmp_path / "from-zip")
    _run(_write_folder(tmp_path / "img_align_celeba", files), folder_output, "--num_shards", "1")
    result = _run(_write_zip(tmp_path / "img_align_celeba.zip", files), zip_output, "--num_shards", "1")

    assert _counter(result, "unreadable_images") == 1
    for split in ("train", "test"):
        name = schema.shard_name(split, 0, 1)
        folder_records = list(storage.read_tfrecords(storage.join(folder_output, name)))
        zip_records = list(storage.read_tfrecords(storage.join(zip_output, name)))
        assert folder_records == zip_records
    assert schema.read_manifest(zip_output).options["source_kind"] == "zip"


@pytest.mark.parametrize("member", ["../outside.jpg", "/etc/outside.jpg", "img_align_celeba/../../x.jpg"])
def test_celeba_zip_with_escaping_member_is_rejected(tmp_path, capsys, member):
    files = _faces()
    path = _write_zip(tmp_path / "img_align_celeba.zip", files)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, files["000001.jpg"])

    status = cli.main(["celeba", "--source", path, "--output", str(tmp_path / "out")] + BEAM_ARGV)
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1
    assert f"member {member!r} has a path outside the archive's folder" in error
    assert not (tmp_path / "out").exists()


def test_celeba_empty_folder_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()

    status = cli.main(["celeba", "--source", str(tmp_path / "empty"), "--output", str(tmp_path / "out")] + BEAM_ARGV)
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1
    assert "empty: no .jpg files found" in error


def test_celeba_missing_source_error(tmp_path, capsys):
    status = cli.main(["celeba", "--source", str(tmp_path / "missing.zip"), "--output", str(tmp_path / "out")]
                      + BEAM_ARGV)
    error = capsys.readouterr().err
    assert status == 2
    assert "missing.zip: file not found" in error


def test_celeba_zip_on_gcs(tmp_path, gcs_bucket):
    local_zip = _write_zip(tmp_path / "img_align_celeba.zip", _faces())
    source, output = f"{gcs_bucket}/celeba/img_align_celeba.zip", f"{gcs_bucket}/celeba-64"
    with open(local_zip, "rb") as local, storage.open_file(source, "wb") as remote:
        remote.write(local.read())
    result = _run(source, output, "--num_shards", "2")

    assert _counter(result, "unreadable_images") == 1
    manifest = schema.read_manifest(output)
    assert manifest.splits["train"].num_records == NUM_IMAGES - 2
    assert [record["index"] for record in _read_split(output, "test")] == [0]
