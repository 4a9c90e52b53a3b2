"""Tests of `split-data cub-sprites` on a small CUB-style folder and its archives."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from preprocessing import cli, cub, schema, storage

BEAM_ARGV = ["--runner", "FnApiRunner"]
BIRD_COLOUR = (200, 40, 40)
BACKGROUND_COLOUR = (90, 160, 200)
# (height, width, centre row, centre column, radius, is_training_image); the third bird touches
# the photo's top-left corner, so its crop leaves the photo.
BIRDS = [
    (100, 120, 50, 60, 20, 1),
    (90, 140, 40, 90, 15, 1),
    (80, 80, 12, 14, 10, 1),
    (120, 100, 70, 40, 25, 0),
    (100, 100, 50, 50, 18, 0),
]
CLASS_FOLDER = "001.Black_footed_Albatross"


def _bird_photo(height, width, row, column, radius) -> tuple[np.ndarray, np.ndarray]:
    """A photo with a red disk (the bird) on blue, and its soft mask: 255 on the disk, 100 on a
    3-px ring around it (below the 127 threshold), 0 elsewhere."""
    rows, columns = np.mgrid[:height, :width]
    distance = np.hypot(rows - row, columns - column)
    photo = np.empty((height, width, 3), np.uint8)
    photo[:] = BACKGROUND_COLOUR
    photo[distance <= radius + 3] = BIRD_COLOUR
    mask = np.zeros((height, width), np.uint8)
    mask[distance <= radius + 3] = 100
    mask[distance <= radius] = 255
    return photo, mask


def _encode(image: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def _cub_files() -> dict[str, bytes]:
    """The files of a CUB_200_2011 folder with segmentations/ inside, by relative path."""
    files: dict[str, bytes] = {}
    images, boxes, splits = [], [], []
    for image_id, (height, width, row, column, radius, is_train) in enumerate(BIRDS, start=1):
        photo, mask = _bird_photo(height, width, row, column, radius)
        relative = f"{CLASS_FOLDER}/bird_{image_id:04d}"
        files[f"images/{relative}.jpg"] = _encode(photo, "JPEG")
        files[f"segmentations/{relative}.png"] = _encode(mask, "PNG")
        images.append(f"{image_id} {relative}.jpg")
        # 1-based box of the disk.
        boxes.append(f"{image_id} {column - radius + 1}.0 {row - radius + 1}.0 {2 * radius + 1}.0 {2 * radius + 1}.0")
        splits.append(f"{image_id} {is_train}")
    files["images.txt"] = ("\n".join(images) + "\n").encode()
    files["bounding_boxes.txt"] = ("\n".join(boxes) + "\n").encode()
    files["train_test_split.txt"] = ("\n".join(splits) + "\n").encode()
    return files


def _write_folder(root, files: dict[str, bytes]) -> str:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root)


def _write_tgz(path, files: dict[str, bytes], prefix: str) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for relative, data in sorted(files.items()):
            info = tarfile.TarInfo(prefix + relative)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def _run(output: str, *flags: str):
    args, beam_argv = cli.build_parser().parse_known_args(["cub-sprites", "--output", output, *flags])
    return cub.run(args, beam_argv + BEAM_ARGV)


def _read_split(output: str, split: str) -> list[dict]:
    manifest = schema.read_manifest(output)
    records = [schema.parse_example(record)
               for name in manifest.splits[split].files
               for record in storage.read_tfrecords(storage.join(output, name), manifest.compression)]
    return sorted(records, key=lambda record: record[schema.INDEX_KEY])


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    status = cli.main(argv + BEAM_ARGV)
    return status, capsys.readouterr().err


def test_crop_box_centres_padded_square():
    # Box of 30x10 px whose top-left pixel is (x=11, y=21) 1-based: centre (25, 25) 0-based.
    assert cub.crop_box(11.0, 21.0, 30.0, 10.0) == (-10, -10, 70)


def test_crop_with_zeros_fills_outside():
    image = np.arange(1, 17, dtype=np.uint8).reshape(4, 4)
    crop = cub.crop_with_zeros(image, -1, 2, 3)

    np.testing.assert_array_equal(crop, [[0, 0, 0], [3, 4, 0], [7, 8, 0]])


def test_sprite_background_is_exactly_black():
    photo, mask = _bird_photo(100, 120, 50, 60, 20, )
    sprite = cub.make_sprite(photo, mask, (41.0, 31.0, 41.0, 41.0))

    assert sprite.shape == (14, 14, 3)
    assert sprite.dtype == np.uint8
    # The 20-px padding around the box is blue in the photo and must be black in the sprite.
    for corner in (sprite[0, 0], sprite[0, -1], sprite[-1, 0], sprite[-1, -1]):
        np.testing.assert_array_equal(corner, (0, 0, 0))
    np.testing.assert_array_equal(sprite[7, 7], BIRD_COLOUR)
    # No blue and no ring pixel (mask 100) survives anywhere.
    assert not np.any(sprite[..., 2] > sprite[..., 0])


@pytest.mark.parametrize("mask_value, visible", [(127, False), (128, True)])
def test_sprite_binarizes_mask_at_127(mask_value, visible):
    photo = np.full((60, 60, 3), 77, np.uint8)
    mask = np.full((60, 60), mask_value, np.uint8)
    sprite = cub.make_sprite(photo, mask, (21.0, 21.0, 20.0, 20.0))

    assert bool(sprite.any()) == visible


def test_sprite_rejects_mask_of_other_size():
    with pytest.raises(ValueError, match="differ"):
        cub.make_sprite(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 10), np.uint8), (1.0, 1.0, 5.0, 5.0))


def test_cub_folder_makes_sprites_per_split(tmp_path):
    source = _write_folder(tmp_path / "CUB_200_2011", _cub_files())
    output = str(tmp_path / "out")
    _run(output, "--source", source, "--num_shards", "2")

    manifest = schema.read_manifest(output)
    assert manifest.splits["train"].num_records == 3
    assert manifest.splits["test"].num_records == 2
    assert manifest.image_shape == (14, 14, 3)
    for split in ("train", "test"):
        records = _read_split(output, split)
        assert [record["index"] for record in records] == list(range(len(records)))
        for record in records:
            sprite = record["image"]
            assert sprite.shape == (14, 14, 3)
            np.testing.assert_array_equal(sprite[0, 0], (0, 0, 0))
            np.testing.assert_array_equal(sprite[-1, -1], (0, 0, 0))
            # JPEG shifts the bird's colour a little.
            assert np.abs(sprite[7, 7].astype(int) - BIRD_COLOUR).max() <= 12


def test_cub_archives_give_same_records_as_folder(tmp_path):
    files = _cub_files()
    folder_output, archive_output = str(tmp_path / "from-folder"), str(tmp_path / "from-archives")
    _run(folder_output, "--source", _write_folder(tmp_path / "CUB_200_2011", files), "--num_shards", "1")

    # The official layout: the masks come in their own archive with a top folder segmentations/.
    photos = {name: data for name, data in files.items() if not name.startswith("segmentations/")}
    masks = {name: data for name, data in files.items() if name.startswith("segmentations/")}
    source = _write_tgz(tmp_path / "CUB_200_2011.tgz", photos, "CUB_200_2011/")
    segmentations = _write_tgz(tmp_path / "segmentations.tgz", masks, "")
    _run(archive_output, "--source", source, "--segmentations", segmentations, "--num_shards", "1")

    for split in ("train", "test"):
        name = schema.shard_name(split, 0, 1)
        assert (list(storage.read_tfrecords(storage.join(folder_output, name)))
                == list(storage.read_tfrecords(storage.join(archive_output, name))))


def test_cub_missing_mask_error(tmp_path, capsys):
    source = _write_folder(tmp_path / "CUB_200_2011", _cub_files())
    missing = tmp_path / "CUB_200_2011" / "segmentations" / CLASS_FOLDER / "bird_0004.png"
    missing.unlink()

    status, error = _run_cli(["cub-sprites", "--source", source, "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert f"{missing}: mask of image id 4 listed in images.txt not found" in error


def test_cub_archive_missing_photo_error(tmp_path, capsys):
    files = _cub_files()
    del files[f"images/{CLASS_FOLDER}/bird_0002.jpg"]
    source = _write_tgz(tmp_path / "CUB_200_2011.tgz", files, "CUB_200_2011/")

    status, error = _run_cli(["cub-sprites", "--source", source, "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert f"CUB_200_2011/images/{CLASS_FOLDER}/bird_0002.jpg: photo of image id 2" in error


def test_cub_missing_metadata_file_error(tmp_path, capsys):
    files = _cub_files()
    del files["bounding_boxes.txt"]
    source = _write_folder(tmp_path / "CUB_200_2011", files)

    status, error = _run_cli(["cub-sprites", "--source", source, "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "CUB_200_2011/bounding_boxes.txt: file not found" in error


def test_cub_undecodable_photo_is_skipped(tmp_path):
    files = _cub_files()
    files[f"images/{CLASS_FOLDER}/bird_0005.jpg"] = b"not a JPEG"
    source = _write_folder(tmp_path / "CUB_200_2011", files)
    output = str(tmp_path / "out")
    result = _run(output, "--source", source, "--num_shards", "1")

    from apache_beam.metrics.metric import MetricsFilter

    counters = result.metrics().query(MetricsFilter().with_name("invalid_birds"))["counters"]
    assert sum(counter.committed for counter in counters) == 1
    assert [record["index"] for record in _read_split(output, "test")] == [0]


def test_cub_truncated_archive_error(tmp_path, capsys):
    source = _write_tgz(tmp_path / "CUB_200_2011.tgz", _cub_files(), "CUB_200_2011/")
    data = (tmp_path / "CUB_200_2011.tgz").read_bytes()
    (tmp_path / "CUB_200_2011.tgz").write_bytes(data[:len(data) // 2])

    status, error = _run_cli(["cub-sprites", "--source", source, "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "CUB_200_2011.tgz: not a readable tar archive" in error
