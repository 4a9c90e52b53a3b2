"""`split-data celeba`: CelebA faces, centre-cropped and resized to 64x64x3, as TFRecord shards.

The source is the folder of aligned 178x218 JPEGs (`img_align_celeba/`) or its zip, local or on
`gs://`. File names are sorted so that the split is reproducible: the first 10% (rounded down)
are the test split, the rest train. Each image is centre-cropped to 178x178 and resized to 64x64
by bilinear interpolation (no anti-aliasing filter). Records are unlabelled (`label` -1).

A file that does not decode as an image, or is smaller than the crop, is skipped: the
`celeba/unreadable_images` counter counts it and a warning names it, and the job goes on.
Its index stays unused, so the other images keep their indices. A zip with an entry
whose path is absolute or climbs out with `..` is rejected before the job starts. Nothing is
extracted here, but such an archive is malformed or hostile, and an extracting tool would write
outside its target folder.

    split-data celeba --source /data/img_align_celeba.zip --output /tmp/celeba
    split-data celeba --source gs://BUCKET/img_align_celeba --output gs://BUCKET/celeba \\
        --runner DataflowRunner --project PROJECT --region REGION --temp_location gs://BUCKET/tmp
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import pathlib
import zipfile
from typing import Iterator

import apache_beam as beam
import numpy as np

from preprocessing import jobs, schema, sink, storage

_LOGGER = logging.getLogger(__name__)

HELP = "CelebA aligned faces (folder or zip of 178x218 JPEGs), centre-cropped and resized to 64x64"
NAME = "celeba"
CROP_SIZE = 178
IMAGE_SIZE = 64
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
TEST_PERCENT = 10
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg")
# A zip member is fetched from gs:// in requests of this size instead of the client's 40 MiB.
ZIP_READ_CHUNK_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class FaceFile:
    """One source image: its split, its index in the split, its file or zip member name."""

    split: str
    index: int
    name: str


def _is_zip(source: str) -> bool:
    return source.lower().endswith(".zip")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def check_member_name(archive: str, name: str) -> None:
    """Raise ValueError if an archive member's path is absolute or leaves its folder with `..`."""
    normalized = name.replace("\\", "/")
    path = pathlib.PurePosixPath(normalized)
    has_drive = len(normalized) > 1 and normalized[1] == ":"
    if path.is_absolute() or has_drive or ".." in path.parts:
        raise ValueError(f"{archive}: member {name!r} has a path outside the archive's folder"
                         " (absolute or with '..'); refusing the archive")


def _open_zip(source: str) -> zipfile.ZipFile:
    handle = storage.open_file(source, "rb", chunk_size=ZIP_READ_CHUNK_BYTES)
    try:
        return zipfile.ZipFile(handle)
    except zipfile.BadZipFile as error:
        handle.close()
        raise ValueError(f"{source}: not a readable zip file ({error})") from None


def list_images(source: str) -> list[tuple[str, int]]:
    """List the JPEGs of a folder or zip as sorted `(name, size in bytes)` pairs.

    Raises:
      FileNotFoundError: the source is neither a folder nor a .zip file.
      ValueError: the zip is unreadable or has a member path outside its folder, or the
        source contains no JPEG.
    """
    if _is_zip(source):
        if not storage.is_file(source):
            raise FileNotFoundError(f"{source}: file not found")
        with _open_zip(source) as archive:
            members = archive.infolist()
        for member in members:
            check_member_name(source, member.filename)
        images = sorted((member.filename, member.file_size) for member in members
                        if not member.is_dir() and _is_image_name(member.filename))
    elif storage.is_dir(source):
        images = [(name, size) for name, size in storage.list_files(source) if _is_image_name(name)]
    else:
        raise FileNotFoundError(f"{source}: not found; --source must be a folder of JPEGs or a .zip of them")
    if not images:
        raise ValueError(f"{source}: no .jpg files found; --source must be img_align_celeba/ or its zip")
    return images


def num_test_images(num_images: int) -> int:
    return num_images * TEST_PERCENT // 100


def assign_splits(names: list[str]) -> list[FaceFile]:
    """Give sorted names their split and index: the first 10% (rounded down) test, the rest train."""
    names = sorted(names)
    num_test = num_test_images(len(names))
    return ([FaceFile("test", index, name) for index, name in enumerate(names[:num_test])]
            + [FaceFile("train", index, name) for index, name in enumerate(names[num_test:])])


def crop_and_resize(image: np.ndarray) -> np.ndarray:
    """Centre-crop a face to 178x178 and resize it to 64x64 (bilinear, no anti-aliasing).

    Args:
      image: uint8 `[height, width, 3]`, both sides at least 178.
    Returns:
      uint8 `[64, 64, 3]`.
    """
    from skimage import transform

    height, width = image.shape[:2]
    if height < CROP_SIZE or width < CROP_SIZE:
        raise ValueError(f"image of {width}x{height} is smaller than the {CROP_SIZE}x{CROP_SIZE} crop")
    top = (height - CROP_SIZE) // 2
    left = (width - CROP_SIZE) // 2
    crop = image[top:top + CROP_SIZE, left:left + CROP_SIZE].astype(np.float64)
    # Half-pixel-centred bilinear sampling, as tf.image.resize(..., "bilinear") does.
    resized = transform.resize(crop, (IMAGE_SIZE, IMAGE_SIZE), order=1, mode="edge",
                               anti_aliasing=False, preserve_range=True)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode an image file to uint8 `[height, width, 3]`; raise OSError or ValueError if it is not one."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class ListFaces(beam.DoFn):
    """List the source once inside the job; output one `FaceFile` per JPEG.

    Listing here rather than in `beam.Create` keeps 200,000 names out of the job graph.
    """

    def process(self, source: str) -> Iterator[FaceFile]:
        yield from assign_splits([name for name, _ in list_images(source)])


class CropFace(beam.DoFn):
    """Read, decode, crop and resize one face; output `(split, index, image uint8 [64, 64, 3])`.

    Files that do not decode (or are too small) are counted, logged and skipped.
    """

    def __init__(self, source: str):
        self._source = source
        self._archive: zipfile.ZipFile | None = None
        self._unreadable = beam.metrics.Metrics.counter(NAME, "unreadable_images")
        self._cropped = beam.metrics.Metrics.counter(NAME, "images_cropped")

    def setup(self):
        if _is_zip(self._source):
            self._archive = _open_zip(self._source)

    def teardown(self):
        if self._archive is not None:
            self._archive.close()

    def _read(self, name: str) -> bytes:
        if self._archive is not None:
            return self._archive.read(name)
        return storage.read_bytes(storage.join(self._source, name))

    def process(self, face: FaceFile) -> Iterator[tuple[str, int, np.ndarray]]:
        from PIL import Image

        try:
            image = crop_and_resize(decode_rgb(self._read(face.name)))
        except (OSError, ValueError, zipfile.BadZipFile, Image.DecompressionBombError) as error:
            self._unreadable.inc()
            _LOGGER.warning("skipping %s in %s: not a readable image of at least %dx%d (%s)",
                            face.name, self._source, CROP_SIZE, CROP_SIZE, error)
            return
        self._cropped.inc()
        yield face.split, face.index, image


def serialize_face(split: str, index: int, image: np.ndarray) -> tuple[str, int, bytes]:
    return split, index, schema.serialize_example(image, schema.UNLABELLED, index)


class ReadFaces(beam.PTransform):
    """Read a CelebA source into `(split, index, serialized_example)` triples."""

    def __init__(self, source: str):
        super().__init__()
        self._source = source

    def expand(self, pipeline):
        return (
            pipeline
            | "CreateSource" >> beam.Create([self._source])
            | "ListFaces" >> beam.ParDo(ListFaces())
            # One element listed them all; reshuffling spreads the decoding over workers.
            | "SpreadFaces" >> beam.Reshuffle()
            | "CropFace" >> beam.ParDo(CropFace(self._source))
            | "SerializeExample" >> beam.MapTuple(serialize_face)
        )


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name  # One dataset of this module.
    parser.add_argument("--source", required=True,
                        help="img_align_celeba/ folder or its .zip (178x218 JPEGs), local or gs://")


def run(args: argparse.Namespace, beam_argv: list[str]) -> beam.runners.runner.PipelineResult:
    """Build and run the pipeline; `beam_argv` goes to `PipelineOptions` untouched."""
    jobs.validate_common(args)
    images = list_images(args.source)
    _LOGGER.info("%s: %d images, the first %d (sorted by name) for the test split",
                 args.source, len(images), num_test_images(len(images)))
    compression = jobs.compression_type(args)
    template = sink.ManifestTemplate(
        name=NAME,
        image_shape=IMAGE_SHAPE,
        label_meaning="none",
        num_classes=0,
        seed=args.seed,
        source_fingerprint=schema.fingerprint([f"{name}:{size}" for name, size in images]),
        compression=compression,
        options={"crop_size": CROP_SIZE, "test_percent": TEST_PERCENT,
                 "source_kind": "zip" if _is_zip(args.source) else "folder"},
    )

    def build(pipeline: beam.Pipeline) -> None:
        faces = pipeline | "ReadFaces" >> ReadFaces(args.source)
        by_split = faces | "PartitionBySplit" >> beam.Partition(
            lambda face, num_splits: SPLITS.index(face[0]), len(SPLITS))
        shard_results = []
        for split, records in zip(SPLITS, by_split):
            title = jobs.title(split)
            shard_results.append(
                records
                | f"Key{title}ByIndex" >> beam.MapTuple(lambda _, index, record: (index, record))
                | f"Write{title}Shards" >> sink.WriteShards(args.output, split, args.num_shards, compression))
        (shard_results
         | "FlattenShardResults" >> beam.Flatten()
         | "WriteManifest" >> sink.WriteManifest(args.output, template))

    return jobs.run_pipeline(args.output, beam_argv, build)
