"""Tests of the embedded textured digits: the pure rendering functions and the Beam job."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import cli, digits, schema

# A small job: 60 source digits (12 of them test), 2 renders each, in about 5 s.
NUM_SOURCES = 60
RENDERS = 2
SMALL_JOB = ["--max_source_digits", str(NUM_SOURCES), "--renders_per_digit", str(RENDERS)]


@pytest.fixture(scope="module")
def sources() -> tuple[np.ndarray, np.ndarray]:
    return digits.load_source_digits()


@pytest.fixture(scope="module")
def textures() -> tuple[np.ndarray, ...]:
    return digits.load_textures()


# --- Pure functions ----------------------------------------------------------------------------

def test_upscale_digit_shape_and_padding(sources):
    images, _ = sources
    digit = digits.upscale_digit(images[0])

    assert digit.shape == (32, 32)
    assert np.all(digit[:2] == 0)
    assert np.all(digit[-2:] == 0)
    assert np.all(digit[:, :2] == 0)
    assert np.all(digit[:, -2:] == 0)
    assert digit.min() >= 0
    assert digit.max() <= 16
    full = digits.upscale_digit(np.full((8, 8), 16.0))
    np.testing.assert_allclose(full[2:30, 2:30], 16.0)


def test_upscale_digit_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"expected an \[8, 8\] digit"):
        digits.upscale_digit(np.zeros((28, 28)))


def test_textures_are_coarse_grayscale(textures):
    assert len(textures) == 3
    for texture in textures:
        assert texture.shape == (256, 256)
        assert texture.min() >= 0.0
        assert texture.max() <= 1.0
        assert texture.std() > 0.05


def test_composite_hand_case():
    background = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (1, 4, 3))
    intensity = np.array([[0.0, 4.0, 8.0, 16.0]])
    image = digits.to_uint8(digits.composite(background, np.array([1.0, 0.0, 0.0]), intensity))

    # Alpha 0, 1/4, 1/2 and 1 turn blue into red. 0.25 * 255 = 63.75 and 0.5 * 255 = 127.5 round up.
    expected = np.array([[[0, 0, 255], [64, 0, 191], [128, 0, 128], [255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(image, expected)


def test_tint_texture_range():
    texture = np.array([[0.0, 0.5, 1.0]])
    tinted = digits.tint_texture(texture, np.array([0.8, 0.4, 0.0]))

    np.testing.assert_allclose(tinted[0, 0], [0.2, 0.1, 0.0])
    np.testing.assert_allclose(tinted[0, 1], [0.5, 0.25, 0.0])
    np.testing.assert_allclose(tinted[0, 2], [0.8, 0.4, 0.0])


@pytest.mark.parametrize("colour, expected", [
    ((1.0, 0.0, 0.0), 0),  # red, hue 0
    ((1.0, 1.0, 0.0), 2),  # yellow, hue 1/6
    ((0.0, 1.0, 0.0), 4),  # green, hue 1/3
    ((0.0, 0.0, 1.0), 8),  # blue, hue 2/3
    ((1.0, 0.0, 0.1), 11),  # just short of red again
    ((0.5, 0.5, 0.5), 0),  # gray has hue 0
])
def test_hue_bin_known_colours(colour, expected):
    assert digits.hue_bin(np.array(colour)) == expected


def _renders(sources, textures, count: int) -> list[tuple[np.ndarray, digits.DigitRender]]:
    images, _ = sources
    renders = []
    for render_index in range(count):
        intensity = digits.upscale_digit(images[render_index % len(images)])
        rng = digits.render_rng(seed=123, source_index=render_index % len(images), render_index=render_index)
        renders.append((intensity, digits.render_digit(intensity, textures, rng)))
    return renders


def test_render_foreground_contrasts_background(sources, textures):
    for intensity, render in _renders(sources, textures, 500):
        assert np.linalg.norm(render.foreground_colour - render.background_colour) > 0.5
        assert render.image.shape == (32, 32, 3)
        assert render.image.dtype == np.uint8

        # Where the digit has full intensity the pixel is the foreground colour.
        opaque = intensity == 16
        if opaque.any():
            np.testing.assert_array_equal(render.image[opaque],
                                          np.broadcast_to(digits.to_uint8(render.foreground_colour),
                                                          (opaque.sum(), 3)))


def test_render_background_kinds_balanced(sources, textures):
    renders = _renders(sources, textures, 3000)
    kinds = collections.Counter(render.background_kind for _, render in renders)

    # Binomial standard deviations: 0.009 for the solid share, 0.007 for each texture's.
    assert abs(kinds[0] / 3000 - 0.5) < 0.04
    for kind in (1, 2, 3):
        assert abs(kinds[kind] / 3000 - 1 / 6) < 0.03

    for intensity, render in renders[:200]:
        border = render.image[intensity == 0]
        if render.background_kind == 0:
            assert np.all(border == border[0])
        else:
            assert border.std() > 0


def test_render_is_pure_function_of_rng(sources, textures):
    images, _ = sources
    intensity = digits.upscale_digit(images[5])
    first = digits.render_digit(intensity, textures, digits.render_rng(3, 5, 1))
    again = digits.render_digit(intensity, textures, digits.render_rng(3, 5, 1))
    other = digits.render_digit(intensity, textures, digits.render_rng(3, 5, 2))

    assert first.image.tobytes() == again.image.tobytes()
    assert first.factors() == again.factors()
    assert first.image.tobytes() != other.image.tobytes()


def test_split_sources_disjoint_and_stratified(sources):
    _, labels = sources
    split = digits.split_sources(labels, seed=0)
    train, test = split["train"], split["test"]

    assert len(train) == 1437
    assert len(test) == 360
    assert not set(train) & set(test)
    assert sorted(set(train) | set(test)) == list(range(len(labels)))
    for label in range(10):
        in_test = np.sum(labels[test] == label)
        in_train = np.sum(labels[train] == label)
        assert 0.18 < in_test / (in_test + in_train) < 0.22, label

    np.testing.assert_array_equal(digits.split_sources(labels, seed=0)["test"], test)
    assert not np.array_equal(digits.split_sources(labels, seed=1)["test"], test)


def test_validation_split_comes_from_train_only(sources):
    _, labels = sources
    plain = digits.split_sources(labels, seed=0)
    split = digits.split_sources(labels, seed=0, validation_fraction=0.15)

    np.testing.assert_array_equal(split["test"], plain["test"])
    assert len(split["validation"]) == 216
    assert not set(split["validation"]) & set(split["train"])
    assert sorted(set(split["validation"]) | set(split["train"])) == plain["train"].tolist()
    assert set(labels[split["validation"]]) == set(range(10))
    plan = digits.plan_work(labels, renders_per_digit=2, seed=0, validation_fraction=0.15)
    assert plan["test"] == digits.plan_work(labels, renders_per_digit=2, seed=0)["test"]
    assert len(plan["validation"]) == 432


def test_plan_work_default_sizes(sources):
    _, labels = sources
    plan = digits.plan_work(labels, renders_per_digit=10, seed=0)
    split = digits.split_sources(labels, seed=0)

    assert len(plan["train"]) == 14_370
    assert len(plan["test"]) == 3_600
    for name, items in plan.items():
        assert [item[1] for item in items] == list(range(len(items)))
        assert {item[0] for item in items} == {name}
        pairs = collections.Counter((item[2], item[3]) for item in items)
        assert set(pairs.values()) == {1}
        assert {source for source, _ in pairs} == set(split[name].tolist())
        assert {render for _, render in pairs} == set(range(10))


# --- The Beam job ------------------------------------------------------------------------------

def _prepare(output: str, *flags: str) -> int:
    return cli.main(["digits", "--output", output, *SMALL_JOB, *flags])


def _read_split(output: str, manifest: schema.Manifest, split: str) -> list[bytes]:
    compression = manifest.compression
    records = []
    for name in manifest.splits[split].files:
        path = schema.join_path(output, name)
        records += [record.numpy() for record in tf.data.TFRecordDataset(path, compression_type=compression)]
    return records


def _shard_bytes(output: str) -> dict[str, bytes]:
    contents = {}
    for name in sorted(os.listdir(output)):
        with open(os.path.join(output, name), "rb") as handle:
            contents[name] = handle.read()
    return contents


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("digits"))
    assert _prepare(output) == 0
    return output


def test_job_writes_manifest(prepared):
    manifest = schema.read_manifest(prepared)

    assert manifest.name == "digits"
    assert manifest.image_shape == (32, 32, 3)
    assert manifest.label_meaning == "class"
    assert manifest.num_classes == 10
    assert manifest.factors == {"background_kind": 4, "background_hue": 12, "foreground_hue": 12}
    assert manifest.compression == ""
    assert manifest.seed == 0
    assert manifest.options["renders_per_digit"] == RENDERS
    assert manifest.options["num_source_digits"] == NUM_SOURCES
    # ceil(0.2 * 60) = 12 test digits.
    assert manifest.splits["train"].num_records == 48 * RENDERS
    assert manifest.splits["test"].num_records == 12 * RENDERS
    assert len(manifest.splits["train"].files) == 4


def test_job_records_valid(prepared):
    manifest = schema.read_manifest(prepared)
    pixels = []
    for split in manifest.splits:
        records = [schema.parse_example(record) for record in _read_split(prepared, manifest, split)]

        assert len(records) == manifest.splits[split].num_records
        assert sorted(record["index"] for record in records) == list(range(len(records)))
        for record in records:
            assert record["image"].shape == (32, 32, 3)
            assert record["image"].dtype == np.uint8
            assert 0 <= record["label"] < 10
            for name, num_values in manifest.factors.items():
                assert 0 <= record["factor/" + name] < num_values
            pixels.append(record["image"])

    pixels = np.stack(pixels)
    assert pixels.min() < 20
    assert pixels.max() > 235


def test_job_records_match_plan(prepared, sources, textures):
    """Every record is the planned render of its planned source digit, so the splits share no digit."""
    images, labels = sources
    manifest = schema.read_manifest(prepared)
    plan = digits.plan_work(labels[:NUM_SOURCES], RENDERS, seed=0)
    planned_sources = {split: {item[2] for item in items} for split, items in plan.items()}
    assert not planned_sources["train"] & planned_sources["test"]

    for split in manifest.splits:
        for serialized in _read_split(prepared, manifest, split):
            record = schema.parse_example(serialized)
            _, index, source, render_index = plan[split][record["index"]]
            expected = digits.render_digit(digits.upscale_digit(images[source]), textures,
                                           digits.render_rng(0, source, render_index))

            assert record["label"] == labels[source]
            np.testing.assert_array_equal(record["image"], expected.image)
            assert {name: record["factor/" + name] for name in digits.FACTORS} == expected.factors()


def test_job_same_seed_same_bytes(prepared, tmp_path):
    again = str(tmp_path / "again")
    assert _prepare(again) == 0

    assert _shard_bytes(again) == _shard_bytes(prepared)


def test_job_multiprocess_same_bytes(prepared, tmp_path):
    # Worker processes must agree with the single-process run byte for byte.
    parallel = str(tmp_path / "parallel")
    assert _prepare(parallel, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing") == 0

    assert _shard_bytes(parallel) == _shard_bytes(prepared)


def test_job_other_seed_other_bytes(prepared, tmp_path):
    other = str(tmp_path / "other")
    assert _prepare(other, "--seed", "1") == 0

    first, second = _shard_bytes(prepared), _shard_bytes(other)
    assert first.keys() == second.keys()
    for name in first:
        if name != schema.MANIFEST_NAME:
            assert first[name] != second[name], name


def test_job_shards_and_gzip_keep_records(prepared, tmp_path):
    regrouped = str(tmp_path / "regrouped")
    assert _prepare(regrouped, "--num_shards", "3", "--compression", "gzip") == 0

    manifest = schema.read_manifest(regrouped)
    assert manifest.compression == "GZIP"
    assert manifest.splits["test"].files == tuple(f"test-{shard:05d}-of-00003.tfrecord.gz" for shard in range(3))
    original = schema.read_manifest(prepared)
    for split in original.splits:
        assert sorted(_read_split(regrouped, manifest, split)) == sorted(_read_split(prepared, original, split))


def test_job_writes_validation_split(prepared, tmp_path):
    output = str(tmp_path / "with-validation")
    assert _prepare(output, "--max_source_digits", "100", "--validation_fraction", "0.2") == 0

    manifest = schema.read_manifest(output)
    assert sorted(manifest.splits) == ["test", "train", "validation"]
    # 100 digits: 20 test, then 16 of the 80 training digits move to validation.
    assert {split: info.num_records for split, info in manifest.splits.items()} == {
        "train": 64 * RENDERS, "test": 20 * RENDERS, "validation": 16 * RENDERS}
    plain = str(tmp_path / "plain")
    assert _prepare(plain, "--max_source_digits", "100") == 0
    assert _read_split(output, manifest, "test") == _read_split(plain, schema.read_manifest(plain), "test")


def test_job_removes_stale_manifest(tmp_path, capsys):
    stale = tmp_path / schema.MANIFEST_NAME
    stale.write_text("{}")

    # The runner name is checked only when the pipeline starts, after the stale manifest is gone.
    assert _prepare(str(tmp_path), "--runner", "NoSuchRunner") == 2
    assert not stale.exists()
    assert "NoSuchRunner" in capsys.readouterr().err


def test_cli_rejects_zero_shards(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        _prepare(str(tmp_path), "--num_shards", "0")

    assert raised.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--num_shards must be at least 1, got 0")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--renders_per_digit", "0"], "--renders_per_digit must be at least 1, got 0"),
    (["--max_source_digits", "10"], "--max_source_digits must be between 50 and 1797, got 10"),
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--validation_fraction", "0.5"], "--validation_fraction must be in [0, 0.5), got 0.5"),
    (["--validation_fraction", "0.1"], "--validation_fraction 0.1 moves 5 of the 48 training digits to validation; it needs at least 10,"
     " one per class (raise it or --max_source_digits)"),
])
def test_cli_rejects_bad_flags(tmp_path, capsys, flags, message):
    assert _prepare(str(tmp_path), *flags) == 2

    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"split-data digits: error: {message}"]
    assert not os.listdir(tmp_path)
