"""Tests of the Multi-Bird renderer and of `split-data multibird` / `split-data multidigit`."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from skimage import transform

from preprocessing import cli, multibird, schema, storage
from tests.gcs_emulator import gcs_bucket  # noqa: F401  (a pytest fixture)

BEAM_ARGV = ["--runner", "FnApiRunner"]
TINY_SIZES = ["--train_size", "40", "--test_size", "12", "--unseen_size", "12"]


def _random_sprites(count: int, seed: int = 0) -> np.ndarray:
    """Sprites with a black border two pixels wide and random colours (never all zero) inside."""
    rng = np.random.default_rng(seed)
    sprites = np.zeros((count, 14, 14, 3), np.uint8)
    sprites[:, 2:-2, 2:-2] = rng.integers(1, 256, size=(count, 10, 10, 3), dtype=np.uint8)
    return sprites


def _checkerboard(colours: np.ndarray, size: int = 192, cell: int = 6) -> np.ndarray:
    cells = np.arange(size) // cell
    return colours[(cells[:, None] + cells[None, :]) % 2]


def _run(name: str, output: str, *flags: str):
    args, beam_argv = cli.build_parser().parse_known_args([name, "--output", output, *flags])
    return multibird.run(args, beam_argv + BEAM_ARGV)


def _read_split(output: str, split: str) -> list[dict]:
    manifest = schema.read_manifest(output)
    records = [schema.parse_example(record)
               for name in manifest.splits[split].files
               for record in storage.read_tfrecords(storage.join(output, name), manifest.compression)]
    return sorted(records, key=lambda record: record[schema.INDEX_KEY])


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    status = cli.main(argv + BEAM_ARGV)
    return status, capsys.readouterr().err


def _write_sprite_dataset(directory: str, sprites: dict[str, np.ndarray], name: str = "cub-sprites") -> None:
    """Write a sprite dataset as split-data cub-sprites would, without running that job."""
    storage.make_dirs(directory)
    splits = {}
    for split, images in sprites.items():
        shard = schema.shard_name(split, 0, 1)
        storage.write_tfrecords(storage.join(directory, shard),
                                [schema.serialize_example(image, -1, index) for index, image in enumerate(images)])
        splits[split] = schema.SplitInfo(len(images), (shard,))
    schema.write_manifest(directory, schema.Manifest(
        name=name, image_shape=(14, 14, 3), splits=splits, label_meaning="none", num_classes=0, seed=0,
        source_fingerprint="0" * 16))


# --- The renderer ------------------------------------------------------------------------------

@pytest.mark.parametrize("angle", [0.0, 13.7, -45.0, 60.0, 89.99, -90.0])
def test_rotated_checkerboard_matches_skimage_rotate(angle):
    colours = np.array([[195, 135, 255], [81, 197, 255]], np.uint8)
    board = _checkerboard(colours).astype(np.float64) / 255
    reference = transform.rotate(board, angle, order=1)[72:120, 72:120] * 255

    np.testing.assert_allclose(multibird.rotated_checkerboard(colours, angle), reference, atol=1e-6)


def test_unrotated_background_has_6px_cells():
    colours = np.array([[255, 229, 81], [255, 81, 139]], np.uint8)
    layout = multibird.Layout(np.zeros((0, 2), np.int64), np.zeros(0, np.int64), colours, 0.0)

    np.testing.assert_array_equal(multibird.render_background(layout), _checkerboard(colours)[72:120, 72:120])


def test_layouts_follow_placement_rules():
    renderer = multibird.SceneRenderer(seed=3, split="train", variant="hard", sprites=_random_sprites(7))
    counts = collections.Counter()
    for index in range(1500):
        layout = renderer.layout(index)
        counts[layout.count] += 1
        assert len(layout.corners) == layout.count
        assert np.all((layout.corners >= 0) & (layout.corners < 34))
        assert np.all((layout.sprite_ids >= 0) & (layout.sprite_ids < 7))
        for later in range(layout.count):
            for earlier in range(later):
                overlap = multibird.box_overlap(tuple(layout.corners[later]), tuple(layout.corners[earlier]))
                assert overlap <= 0.15 * 14 * 14
        assert -90.0 <= layout.angle <= 90.0
    assert sorted(counts) == [0, 1, 2, 3, 4, 5]
    # Uniform counts: each of the six near 250 of 1,500.
    assert min(counts.values()) > 180


def test_forbidden_corners_match_box_overlap():
    rng = np.random.default_rng(0)
    for corner, other in rng.integers(0, 34, size=(2000, 2, 2)).tolist():
        expected = multibird.box_overlap(tuple(corner), tuple(other)) > 0.15 * 14 * 14
        assert multibird.FORBIDDEN_CORNERS[corner[0], corner[1], other[0], other[1]] == expected


def test_four_boxes_can_leave_no_room():
    # Why place_boxes may start a scene again: no fifth corner fits next to these four.
    corners = [(5, 8), (5, 25), (24, 8), (24, 25)]
    forbidden = np.zeros((34, 34), bool)
    for row, column in corners:
        forbidden |= multibird.FORBIDDEN_CORNERS[row, column]

    assert forbidden.all()
    for later in range(4):
        for earlier in range(later):
            assert multibird.box_overlap(corners[later], corners[earlier]) == 0


@pytest.mark.parametrize("variant", ["easy", "hard"])
def test_background_colours_follow_split(variant):
    sprites = _random_sprites(3)
    palettes = multibird.PALETTES[variant]
    for split in ("train", "test", "unseen"):
        allowed = {tuple(colour) for colour in palettes["unseen" if split == "unseen" else "train"]}
        renderer = multibird.SceneRenderer(seed=0, split=split, variant=variant, sprites=sprites)
        used = set()
        for index in range(300):
            colours = [tuple(colour) for colour in renderer.layout(index).colours.tolist()]
            assert len(colours) == (1 if variant == "easy" else 2)
            assert len(set(colours)) == len(colours)
            assert set(colours) <= allowed
            used.update(colours)
        assert used == allowed


def test_hard_scene_shows_two_cell_colours():
    renderer = multibird.SceneRenderer(seed=0, split="unseen", variant="hard", sprites=_random_sprites(3))
    index = next(index for index in range(100) if renderer.layout(index).count == 0)
    image, count = renderer.render(index)
    colours = renderer.layout(index).colours

    assert count == 0
    # Bilinear edges blend the two colours; pixels inside cells carry one of them exactly.
    pixels = collections.Counter(map(tuple, image.reshape(-1, 3).tolist()))
    two_most_common = {colour for colour, _ in pixels.most_common(2)}
    assert two_most_common == {tuple(colour) for colour in colours.tolist()}


def test_opaque_sprite_pixels_replace_canvas():
    sprite = np.zeros((1, 14, 14, 3), np.uint8)
    sprite[0, 5, 5] = (0, 0, 1)  # opaque: one channel above 0
    sprite[0, 6, 6] = (10, 20, 30)
    layout = multibird.Layout(np.array([[10, 20]]), np.array([0]), np.array([[100, 209, 72]], np.uint8), 0.0)
    canvas = multibird.render_background(layout)
    multibird.paste_sprites(canvas, layout, sprite, multibird.opaque_pixels(sprite))

    np.testing.assert_array_equal(canvas[15, 25], (0, 0, 1))
    np.testing.assert_array_equal(canvas[16, 26], (10, 20, 30))
    np.testing.assert_array_equal(canvas[10, 20], (100, 209, 72))  # a black sprite pixel is transparent
    assert np.sum(np.any(canvas != (100, 209, 72), axis=-1)) == 2


def test_renders_are_pure_functions_of_seed_split_index():
    sprites = _random_sprites(5)
    first = multibird.SceneRenderer(seed=1, split="test", variant="hard", sprites=sprites)
    second = multibird.SceneRenderer(seed=1, split="test", variant="hard", sprites=sprites)
    other_split = multibird.SceneRenderer(seed=1, split="unseen", variant="hard", sprites=sprites)

    for index in (0, 7, 999):
        np.testing.assert_array_equal(first.render(index)[0], second.render(index)[0])
    assert not np.array_equal(first.render(7)[0], other_split.render(7)[0])


def test_digit_sprites_are_coloured_on_black():
    sprites = multibird.DigitSprites(seed=0)
    train, test = sprites.load("train"), sprites.load("test")

    assert train.shape[1:] == (14, 14, 3)
    assert test.shape[1:] == (14, 14, 3)
    assert len(train) + len(test) == 1797
    for sprite in np.concatenate([train, test]):
        np.testing.assert_array_equal(sprite[0, 0], (0, 0, 0))
        assert sprite.max() > 200


# --- The Beam jobs -----------------------------------------------------------------------------

def test_multidigit_job_counts_labels_and_images(tmp_path):
    output = str(tmp_path / "out")
    _run("multidigit", output, "--variant", "easy", "--num_shards", "2", *TINY_SIZES)

    manifest = schema.read_manifest(output)
    assert manifest.name == "multidigit-easy"
    assert manifest.label_meaning == "count"
    assert {split: info.num_records for split, info in manifest.splits.items()} == {
        "train": 40, "test": 12, "unseen": 12}

    sprites = multibird.DigitSprites(seed=0)
    for split in ("train", "test", "unseen"):
        renderer = multibird.SceneRenderer(0, split, "easy", sprites.load(multibird.SPLIT_SPRITES[split]))
        allowed = {tuple(colour) for colour in multibird.EASY_COLOURS["unseen" if split == "unseen" else "train"]}
        records = _read_split(output, split)
        assert [record["index"] for record in records] == list(range(len(records)))
        for record in records:
            image, count = renderer.render(record["index"])
            np.testing.assert_array_equal(record["image"], image)
            assert record["label"] == count
            assert 0 <= record["label"] <= 5
            # Sprites cover at most 5 * 196 of 2,304 pixels, so the background colour is the mode.
            pixels = collections.Counter(map(tuple, record["image"].reshape(-1, 3).tolist()))
            assert pixels.most_common(1)[0][0] in allowed


def test_multidigit_same_records_for_any_sharding_and_workers(tmp_path):
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    _run("multidigit", one, "--variant", "hard", "--num_shards", "1", *TINY_SIZES)
    _run("multidigit", many, "--variant", "hard", "--num_shards", "3", *TINY_SIZES,
         "--direct_num_workers", "2", "--direct_running_mode", "multi_threading")

    assert len(schema.read_manifest(many).splits["train"].files) == 3
    for split in ("train", "test", "unseen"):
        records_one = sorted(storage.read_tfrecords(storage.join(one, schema.shard_name(split, 0, 1))))
        records_many = sorted(record for shard in range(3)
                              for record in storage.read_tfrecords(storage.join(many, schema.shard_name(split, shard, 3))))
        assert records_one == records_many


@pytest.mark.slow
def test_multidigit_same_records_with_worker_processes(tmp_path):
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    _run("multidigit", one, "--variant", "easy", "--num_shards", "2", *TINY_SIZES)
    _run("multidigit", many, "--variant", "easy", "--num_shards", "2", *TINY_SIZES,
         "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")

    for split in ("train", "test", "unseen"):
        for shard in range(2):
            name = schema.shard_name(split, shard, 2)
            assert (list(storage.read_tfrecords(storage.join(one, name)))
                    == list(storage.read_tfrecords(storage.join(many, name))))


def test_multibird_job_reads_sprites_and_writes_gcs(gcs_bucket):
    sprites_dir, output = f"{gcs_bucket}/cub-sprites", f"{gcs_bucket}/multibird-hard"
    sprite_sets = {"train": _random_sprites(6, seed=1), "test": _random_sprites(4, seed=2)}
    _write_sprite_dataset(sprites_dir, sprite_sets)
    _run("multibird", output, "--variant", "hard", "--sprites", sprites_dir, "--num_shards", "2",
         "--train_size", "10", "--test_size", "4", "--unseen_size", "4", "--compression", "gzip")

    manifest = schema.read_manifest(output)
    assert manifest.name == "multibird-hard"
    assert manifest.compression == "GZIP"
    assert manifest.options["num_sprites"] == {"train": 6, "test": 4}
    renderer = multibird.SceneRenderer(0, "unseen", "hard", sprite_sets["test"])
    for record in _read_split(output, "unseen"):
        np.testing.assert_array_equal(record["image"], renderer.render(record["index"])[0])


def test_multibird_unknown_variant_error(tmp_path, capsys):
    status, error = _run_cli(["multidigit", "--variant", "medium", "--output", str(tmp_path / "out")], capsys)

    assert status == 2
    assert error.count("\n") == 1
    assert "--variant must be one of easy, hard, got 'medium'" in error


def test_multibird_without_sprites_error(tmp_path, capsys):
    status, error = _run_cli(["multibird", "--variant", "easy", "--output", str(tmp_path / "out")], capsys)

    assert status == 2
    assert error.count("\n") == 1
    assert "--sprites is required" in error


def test_multibird_rejects_other_dataset_as_sprites(tmp_path, capsys):
    _write_sprite_dataset(str(tmp_path / "svhn"), {"train": _random_sprites(2), "test": _random_sprites(2)},
                          name="svhn")

    status, error = _run_cli(["multibird", "--variant", "easy", "--sprites", str(tmp_path / "svhn"),
                              "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "--sprites must be a cub-sprites folder" in error


def test_multibird_sprites_without_manifest_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()

    status, error = _run_cli(["multibird", "--variant", "easy", "--sprites", str(tmp_path / "empty"),
                              "--output", str(tmp_path / "out")], capsys)
    assert status == 2
    assert error.count("\n") == 1
    assert "dataset manifest not found" in error


def test_multidigit_manifest_lists_every_shard(tmp_path):
    # An empty split still gets its (empty) shards, and no temporary file is left behind.
    output = str(tmp_path / "out")
    _run("multidigit", output, "--variant", "hard", "--num_shards", "2", "--train_size", "5",
         "--test_size", "0", "--unseen_size", "3")

    manifest = schema.read_manifest(output)
    listed = {name for info in manifest.splits.values() for name in info.files}
    assert {name for name, _ in storage.list_files(output)} == listed | {schema.MANIFEST_NAME}
    assert manifest.splits["test"].num_records == 0
