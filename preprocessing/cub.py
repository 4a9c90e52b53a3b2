"""`split-data cub-sprites`: 14x14 bird sprites on an exactly black background, from CUB-200-2011.

The source is the `CUB_200_2011` folder or its `.tgz`, local or on `gs://`, holding:

- `images.txt`: `image_id relative_path` per line;
- `bounding_boxes.txt`: `image_id x y width height`, floats, `x` and `y` 1-based;
- `train_test_split.txt`: `image_id is_training_image` (1 train, 0 test);
- `images/RELATIVE_PATH`: the photos;
- `segmentations/RELATIVE_PATH` with `.png` for `.jpg`: soft masks, 0..255. CUB ships these in
  a separate `segmentations.tgz`; unpack it into the source folder or name it (folder or
  `.tgz`) with `--segmentations`.

Each bird becomes a sprite: a square crop centred on its box with side `max(w, h) + 2 * 20` px
(zero-filled where it leaves the photo), multiplied by the binary mask `mask > 127`, resized to
14x14 with PIL's bilinear filter. That filter averages the whole source footprint of each output
pixel, so a pixel whose footprint lies wholly outside the mask stays exactly 0. Splits follow `train_test_split.txt`; `index` counts images
of a split in `images.txt` order, and `label` is -1 (the sprites feed renders, not classifiers).

A listed file that is missing stops the job before it starts, with an error naming it. A photo
or mask that does not decode, or whose sizes differ, is counted (`cub-sprites/invalid_birds`),
logged and skipped.

Folders are read file by file on many workers. A `.tgz` cannot be read at random, so the job
starts by reading each archive once to check the listing. Then one worker streams it again for
the photos and one for the masks, and the two meet in a CoGroupByKey. A local runner keeps that
in memory, roughly the size of the archives: over 1 GB for the full CUB (an estimate).

    split-data cub-sprites --source /data/CUB_200_2011 --output /tmp/cub-sprites
    split-data cub-sprites --source /data/CUB_200_2011.tgz --segmentations /data/segmentations.tgz \\
        --output /tmp/cub-sprites
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import tarfile
import zlib
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np

from preprocessing import jobs, schema, sink, storage

_LOGGER = logging.getLogger(__name__)

HELP = "14x14 masked bird sprites from CUB-200-2011 (folder or .tgz) for Multi-Bird renders"
NAME = "cub-sprites"
SPRITE_SIZE = 14
IMAGE_SHAPE = (SPRITE_SIZE, SPRITE_SIZE, 3)
PADDING = 20
MASK_THRESHOLD = 127
SPLITS = ("train", "test")

IMAGES_FILE = "images.txt"
BOXES_FILE = "bounding_boxes.txt"
SPLIT_FILE = "train_test_split.txt"
METADATA_FILES = (IMAGES_FILE, BOXES_FILE, SPLIT_FILE)
IMAGES_DIR = "images"
SEGMENTATIONS_DIR = "segmentations"
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")


# --- Sprites (pure functions) ------------------------------------------------------------------

def crop_box(x: float, y: float, width: float, height: float) -> tuple[int, int, int]:
    """Return the square crop `(top, left, side)` in 0-based pixels for a 1-based CUB box.

    The square is centred on the box centre and has side `max(width, height) + 2 * PADDING`,
    rounded to whole pixels (halves up).
    """
    centre_x = (x - 1) + width / 2
    centre_y = (y - 1) + height / 2
    side = int(np.floor(max(width, height) + 2 * PADDING + 0.5))
    left = int(np.floor(centre_x - side / 2 + 0.5))
    top = int(np.floor(centre_y - side / 2 + 0.5))
    return top, left, side


def crop_with_zeros(image: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """Crop `image[top:top+side, left:left+side]`, filling with zeros where it leaves the image."""
    height, width = image.shape[:2]
    crop = np.zeros((side, side) + image.shape[2:], image.dtype)
    source_top, source_left = max(top, 0), max(left, 0)
    source_bottom, source_right = min(top + side, height), min(left + side, width)
    if source_top < source_bottom and source_left < source_right:
        crop[source_top - top:source_bottom - top, source_left - left:source_right - left] = (
            image[source_top:source_bottom, source_left:source_right])
    return crop


def make_sprite(photo: np.ndarray, mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Cut one bird out of its photo.

    Args:
      photo: uint8 `[height, width, 3]`.
      mask: uint8 `[height, width]`, the soft segmentation, 0..255.
      box: the CUB bounding box `(x, y, width, height)`, `x` and `y` 1-based.
    Returns:
      uint8 `[14, 14, 3]`, exactly 0 wherever the resized footprint contains no masked pixel.
    """
    from PIL import Image

    if photo.shape[:2] != mask.shape:
        raise ValueError(f"photo {photo.shape[1]}x{photo.shape[0]} and mask {mask.shape[1]}x{mask.shape[0]} differ")
    top, left, side = crop_box(*box)
    binary = (crop_with_zeros(mask, top, left, side) > MASK_THRESHOLD).astype(np.uint8)
    masked = crop_with_zeros(photo, top, left, side) * binary[..., None]
    resized = Image.fromarray(masked).resize((SPRITE_SIZE, SPRITE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def decode_photo(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_mask(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


# --- Metadata ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bird:
    """One listed photo: its id, split, index in the split, relative path and box."""

    image_id: int
    split: str
    index: int
    path: str  # relative to images/, as images.txt lists it
    box: tuple[float, float, float, float]

    @property
    def mask_path(self) -> str:
        stem, dot, _ = self.path.rpartition(".")
        return (stem if dot else self.path) + ".png"


def _parse_table(text: str, file_name: str, num_values: int) -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != num_values + 1 or not fields[0].isdigit():
            raise ValueError(f"{file_name}:{line_number}: expected an image id and {num_values} values,"
                             f" got {line.strip()!r}")
        table[int(fields[0])] = fields[1:]
    return table


def parse_metadata(texts: dict[str, str], source: str) -> list[Bird]:
    """Join images.txt, bounding_boxes.txt and train_test_split.txt into birds in id order."""
    paths = _parse_table(texts[IMAGES_FILE], storage.join(source, IMAGES_FILE), 1)
    boxes = _parse_table(texts[BOXES_FILE], storage.join(source, BOXES_FILE), 4)
    flags = _parse_table(texts[SPLIT_FILE], storage.join(source, SPLIT_FILE), 1)
    if not paths:
        raise ValueError(f"{storage.join(source, IMAGES_FILE)}: lists no images")

    birds = []
    counts = dict.fromkeys(SPLITS, 0)
    for image_id in sorted(paths):
        for table, file_name in ((boxes, BOXES_FILE), (flags, SPLIT_FILE)):
            if image_id not in table:
                raise ValueError(f"{storage.join(source, file_name)}: no line for image id {image_id}")
        try:
            box = tuple(float(value) for value in boxes[image_id])
        except ValueError:
            raise ValueError(f"{storage.join(source, BOXES_FILE)}: invalid box for image id {image_id}:"
                             f" {' '.join(boxes[image_id])}") from None
        if flags[image_id][0] not in ("0", "1"):
            raise ValueError(f"{storage.join(source, SPLIT_FILE)}: is_training_image of image id {image_id}"
                             f" is {flags[image_id][0]!r}, expected 0 or 1")
        split = "train" if flags[image_id][0] == "1" else "test"
        birds.append(Bird(image_id, split, counts[split], paths[image_id][0], box))
        counts[split] += 1
    return birds


# --- File trees: folders and archives ----------------------------------------------------------

def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


@contextlib.contextmanager
def _open_tar_stream(path: str) -> Iterator[tarfile.TarFile]:
    # "r|*": a forward-only stream, as gzip allows no seeking; compression is detected. A
    # TarFile does not close a file object it was given, so both are closed here.
    with storage.open_file(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
        yield archive


def scan_archive(path: str, text_names: Iterable[str] = ()) -> tuple[set[str], dict[str, bytes]]:
    """Read an archive once: return the names of its files and the bytes of every file whose
    base name is in `text_names` (the metadata files, found at any depth)."""
    wanted = set(text_names)
    names: set[str] = set()
    texts: dict[str, bytes] = {}
    try:
        with _open_tar_stream(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                names.add(member.name)
                if member.name.rpartition("/")[2] in wanted:
                    texts[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a readable tar archive ({error})") from None
    return names, texts


@dataclasses.dataclass(frozen=True)
class FileTree:
    """A location of files: a folder (`prefix` ""), or the members of an archive below `prefix`."""

    location: str
    prefix: str = ""

    @property
    def archived(self) -> bool:
        return is_archive(self.location)

    def member(self, relative: str) -> str:
        return f"{self.prefix}{relative}" if self.archived else storage.join(self.location, relative)

    def describe(self, relative: str) -> str:
        return f"{self.location}:{self.prefix}{relative}" if self.archived else storage.join(self.location, relative)


@dataclasses.dataclass(frozen=True)
class CubSource:
    """The located photos and masks, and the birds listed in the metadata."""

    images: FileTree
    masks: FileTree
    birds: list[Bird]
    fingerprint_parts: list[str]


def _root_prefix(names: Iterable[str], path: str) -> str:
    candidates = sorted((name for name in names if name.rpartition("/")[2] == IMAGES_FILE),
                        key=lambda name: (name.count("/"), name))
    if not candidates:
        raise FileNotFoundError(f"{path}: no {IMAGES_FILE} in the archive; expected the CUB_200_2011 folder")
    folder = candidates[0].rpartition("/")[0]
    return folder + "/" if folder else ""


def locate_source(source: str, segmentations: str | None) -> CubSource:
    """Read the metadata and check that every listed photo and mask exists.

    Raises:
      FileNotFoundError: naming the source, a metadata file, or the first missing photo or mask.
      ValueError: malformed metadata or an unreadable archive.
    """
    root = ""  # The folder of images.txt inside an archive source.
    if is_archive(source):
        if not storage.is_file(source):
            raise FileNotFoundError(f"{source}: file not found")
        names, raw_texts = scan_archive(source, METADATA_FILES)
        root = _root_prefix(names, source)
        texts = {}
        for name in METADATA_FILES:
            if root + name not in raw_texts:
                raise FileNotFoundError(f"{source}: {root}{name} not found in the archive")
            texts[name] = raw_texts[root + name].decode()
        images = FileTree(source, root + IMAGES_DIR + "/")
        source_files = names
    else:
        if not storage.is_dir(source):
            raise FileNotFoundError(f"{source}: not found; --source must be the CUB_200_2011 folder or its .tgz")
        texts = {}
        for name in METADATA_FILES:
            path = storage.join(source, name)
            if not storage.is_file(path):
                raise FileNotFoundError(f"{path}: file not found; --source must be the CUB_200_2011 folder")
            texts[name] = storage.read_bytes(path).decode()
        images = FileTree(storage.join(source, IMAGES_DIR))
        source_files = None

    if segmentations is None:
        masks = (FileTree(source, root + SEGMENTATIONS_DIR + "/")
                 if images.archived else FileTree(storage.join(source, SEGMENTATIONS_DIR)))
        mask_files = source_files
    elif is_archive(segmentations):
        if not storage.is_file(segmentations):
            raise FileNotFoundError(f"{segmentations}: file not found")
        mask_files, _ = scan_archive(segmentations)
        # The official segmentations.tgz contains one top folder, segmentations/.
        has_folder = any(name.startswith(SEGMENTATIONS_DIR + "/") for name in mask_files)
        masks = FileTree(segmentations, SEGMENTATIONS_DIR + "/" if has_folder else "")
    else:
        if not storage.is_dir(segmentations):
            raise FileNotFoundError(f"{segmentations}: not found; --segmentations must be a folder or .tgz")
        masks = FileTree(segmentations)
        mask_files = None

    birds = parse_metadata(texts, source)
    _check_listed_files(birds, images, masks, source_files, mask_files)
    fingerprint_parts = [texts[name] for name in METADATA_FILES]
    return CubSource(images, masks, birds, fingerprint_parts)


def _check_listed_files(birds: list[Bird], images: FileTree, masks: FileTree,
                        archived_images: set[str] | None, archived_masks: set[str] | None) -> None:
    image_files = archived_images if images.archived else storage.list_tree(images.location)
    mask_files = archived_masks if masks.archived else storage.list_tree(masks.location)
    for bird in birds:
        for tree, files, relative, what in ((images, image_files, bird.path, "photo"),
                                            (masks, mask_files, bird.mask_path, "mask")):
            name = tree.member(relative) if tree.archived else relative
            if name not in files:
                raise FileNotFoundError(f"{tree.describe(relative)}: {what} of image id {bird.image_id}"
                                        f" listed in {IMAGES_FILE} not found")


# --- Beam transforms ---------------------------------------------------------------------------

class ReadBirdFiles(beam.DoFn):
    """Read the photo and mask of one bird from folders; output `(bird, photo bytes, mask bytes)`."""

    def __init__(self, images: FileTree, masks: FileTree):
        self._images = images
        self._masks = masks

    def process(self, bird: Bird) -> Iterator[tuple[Bird, bytes, bytes]]:
        yield (bird, storage.read_bytes(self._images.member(bird.path)),
               storage.read_bytes(self._masks.member(bird.mask_path)))


class StreamArchiveFiles(beam.DoFn):
    """Stream one archive; output `(image_id, bytes)` for each wanted member."""

    def __init__(self, wanted: dict[str, int]):
        self._wanted = wanted

    def process(self, archive_path: str) -> Iterator[tuple[int, bytes]]:
        with _open_tar_stream(archive_path) as archive:
            for member in archive:
                if member.isfile() and member.name in self._wanted:
                    yield self._wanted[member.name], archive.extractfile(member).read()


class ReadFolderFiles(beam.DoFn):
    """Read one file of a bird from a folder; output `(image_id, bytes)`."""

    def __init__(self, tree: FileTree, kind: str):
        self._tree = tree
        self._kind = kind

    def process(self, bird: Bird) -> Iterator[tuple[int, bytes]]:
        relative = bird.path if self._kind == "photo" else bird.mask_path
        yield bird.image_id, storage.read_bytes(self._tree.member(relative))


class MakeSprite(beam.DoFn):
    """Decode a bird's photo and mask and cut its sprite; output `(split, index, sprite uint8 [14, 14, 3])`."""

    def __init__(self):
        self._invalid = beam.metrics.Metrics.counter(NAME, "invalid_birds")
        self._made = beam.metrics.Metrics.counter(NAME, "sprites_made")

    def process(self, element: tuple[Bird, bytes, bytes]) -> Iterator[tuple[str, int, np.ndarray]]:
        bird, photo_bytes, mask_bytes = element
        try:
            sprite = make_sprite(decode_photo(photo_bytes), decode_mask(mask_bytes), bird.box)
        except (OSError, ValueError) as error:
            self._invalid.inc()
            _LOGGER.warning("skipping image id %d (%s): %s", bird.image_id, bird.path, error)
            return
        self._made.inc()
        yield bird.split, bird.index, sprite


def _join_files(joined: tuple[int, dict[str, list]]) -> Iterator[tuple[Bird, bytes, bytes]]:
    _, parts = joined
    if parts["bird"] and parts["photo"] and parts["mask"]:
        yield parts["bird"][0], parts["photo"][0], parts["mask"][0]


def serialize_sprite(split: str, index: int, sprite: np.ndarray) -> tuple[str, int, bytes]:
    return split, index, schema.serialize_example(sprite, schema.UNLABELLED, index)


class MakeSprites(beam.PTransform):
    """Turn the listed birds into `(split, index, serialized_example)` triples."""

    def __init__(self, source: CubSource):
        super().__init__()
        self._source = source

    def expand(self, pipeline):
        source = self._source
        birds = (pipeline
                 | "CreateBirds" >> beam.Create(source.birds)
                 | "SpreadBirds" >> beam.Reshuffle())
        if not source.images.archived and not source.masks.archived:
            pairs = birds | "ReadBirdFiles" >> beam.ParDo(ReadBirdFiles(source.images, source.masks))
        else:
            photos = self._fetch(pipeline, birds, source.images, "photo")
            masks = self._fetch(pipeline, birds, source.masks, "mask")
            keyed_birds = birds | "KeyBirdsById" >> beam.Map(lambda bird: (bird.image_id, bird))
            pairs = ({"bird": keyed_birds, "photo": photos, "mask": masks}
                     | "JoinFiles" >> beam.CoGroupByKey()
                     | "PairFiles" >> beam.FlatMap(_join_files))
        return (pairs
                | "MakeSprite" >> beam.ParDo(MakeSprite())
                | "SerializeExample" >> beam.MapTuple(serialize_sprite))

    def _fetch(self, pipeline, birds, tree: FileTree, kind: str):
        title = kind.capitalize()
        if not tree.archived:
            return birds | f"Read{title}s" >> beam.ParDo(ReadFolderFiles(tree, kind))
        wanted = {tree.member(bird.path if kind == "photo" else bird.mask_path): bird.image_id
                  for bird in self._source.birds}
        return (pipeline
                | f"Create{title}Archive" >> beam.Create([tree.location])
                | f"Stream{title}s" >> beam.ParDo(StreamArchiveFiles(wanted)))


# --- Command line ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name  # One dataset of this module.
    parser.add_argument("--source", required=True,
                        help="CUB_200_2011 folder or its .tgz (images.txt, bounding_boxes.txt,"
                             " train_test_split.txt, images/), local or gs://")
    parser.add_argument("--segmentations",
                        help="folder or .tgz of the segmentation masks; default: segmentations/ inside --source")


def run(args: argparse.Namespace, beam_argv: list[str]) -> beam.runners.runner.PipelineResult:
    """Build and run the pipeline; `beam_argv` goes to `PipelineOptions` untouched."""
    jobs.validate_common(args)
    source = locate_source(args.source, args.segmentations)
    counts = {split: sum(bird.split == split for bird in source.birds) for split in SPLITS}
    _LOGGER.info("%s: %d train and %d test birds", args.source, counts["train"], counts["test"])
    compression = jobs.compression_type(args)
    template = sink.ManifestTemplate(
        name=NAME,
        image_shape=IMAGE_SHAPE,
        label_meaning="none",
        num_classes=0,
        seed=args.seed,
        source_fingerprint=schema.fingerprint(source.fingerprint_parts),
        compression=compression,
        options={"padding": PADDING, "mask_threshold": MASK_THRESHOLD},
    )

    def build(pipeline: beam.Pipeline) -> None:
        sprites = pipeline | "MakeSprites" >> MakeSprites(source)
        by_split = sprites | "PartitionBySplit" >> beam.Partition(
            lambda sprite, num_splits: SPLITS.index(sprite[0]), len(SPLITS))
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
