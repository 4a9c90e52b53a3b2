"""`split-data svhn`: SVHN cropped digits (32x32x3) as TFRecord shards.

The source is a folder or `gs://` prefix with the official `train_32x32.mat`, `extra_32x32.mat`
and `test_32x32.mat`. They are MATLAB level 5 files with `X` uint8 `[32, 32, 3, N]` and `y`
`[N, 1]` in 1..10, where 10 is the digit 0. Alternatively `--tfds_data_dir` names the data_dir of
a prepared tensorflow-datasets `svhn_cropped`, which needs `pip install 'split-pipeline[tfds]'`.

- train = train + extra (604,388 images; `--no_extra` leaves extra out), test = test (26,032);
- label 10 becomes class 0, labels 1..9 stay;
- `index` is the position inside the split: train's images first, then extra's.

Each file is cut into ranges of example indices; a worker reads one range by streaming the
file (see `preprocessing.matlab`), so no element contains more than one image.

    split-data svhn --source /data/svhn --output /tmp/svhn
    split-data svhn --source gs://BUCKET/svhn-mat --output gs://BUCKET/svhn \\
        --runner DataflowRunner --project PROJECT --region REGION --temp_location gs://BUCKET/tmp
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Iterator

import apache_beam as beam
import numpy as np

from preprocessing import jobs, matlab, schema, sink, storage

_LOGGER = logging.getLogger(__name__)

HELP = "SVHN cropped digits from the official .mat files (or a prepared TFDS svhn_cropped)"
NAME = "svhn"
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
# The official files store the digit 0 as label 10.
ZERO_LABEL = 10

MAT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train_32x32.mat", "extra_32x32.mat"),
    "test": ("test_32x32.mat",),
}
EXTRA_FILE = "extra_32x32.mat"
TFDS_NAME = "svhn_cropped"
TFDS_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train", "extra"), "test": ("test",)}

# About 200 MB of pixels per range: few enough ranges that re-decompressing a compressed file up
# to each range's start stays cheap (extra_32x32.mat: 9 ranges), enough to keep 8 workers busy.
IMAGES_PER_RANGE = 65_536
_LABEL_VARIABLE = "y"
_IMAGE_VARIABLE = "X"


@dataclasses.dataclass(frozen=True)
class ReadRange:
    """Examples `[start, stop)` of one source part, stored at split indices from `first_index + start`."""

    split: str
    source: str  # a .mat path, or a TFDS split name with --tfds_data_dir
    first_index: int
    start: int
    stop: int


# --- The .mat source ---------------------------------------------------------------------------

def _mat_error_types() -> tuple[type[Exception], ...]:
    from scipy.io import matlab as scipy_matlab

    return ValueError, NotImplementedError, scipy_matlab.MatReadError


def load_labels(path: str) -> np.ndarray:
    """Load `y` of an SVHN .mat file as int64 `[N]`, values as stored (1..10)."""
    import scipy.io

    with storage.open_file(path, "rb") as handle:
        try:
            labels = scipy.io.loadmat(handle, variable_names=[_LABEL_VARIABLE])[_LABEL_VARIABLE]
        except _mat_error_types() as error:
            raise ValueError(f"{path}: cannot read {_LABEL_VARIABLE!r} ({error})") from None
    return np.asarray(labels).reshape(-1).astype(np.int64)


def inspect_mat_file(path: str) -> int:
    """Check the layout and labels of one SVHN .mat file and return its number of images.

    Raises:
      FileNotFoundError: the file is missing.
      ValueError: the file is not a level 5 .mat file with X uint8 [32, 32, 3, N] and y [N, 1]
        holding integers in 1..10.
    """
    import scipy.io

    expected = "X uint8 [32, 32, 3, N] and y [N, 1] with labels 1..10"
    with storage.open_file(path, "rb") as handle:
        try:
            variables = {name: (tuple(shape), kind) for name, shape, kind in scipy.io.whosmat(handle)}
        except _mat_error_types() as error:
            raise ValueError(f"{path}: not a readable MATLAB .mat file ({error}); expected {expected}") from None

    if _IMAGE_VARIABLE not in variables or _LABEL_VARIABLE not in variables:
        raise ValueError(f"{path}: variables {sorted(variables)} found; expected {expected}")
    image_shape, image_kind = variables[_IMAGE_VARIABLE]
    label_shape, _ = variables[_LABEL_VARIABLE]
    if len(image_shape) != 4 or image_shape[:3] != IMAGE_SHAPE or image_kind != "uint8":
        raise ValueError(f"{path}: X is {image_kind} {list(image_shape)}; expected {expected}")
    num_images = image_shape[3]
    if label_shape != (num_images, 1):
        raise ValueError(f"{path}: y is {list(label_shape)} for {num_images} images; expected {expected}")
    if num_images == 0:
        raise ValueError(f"{path}: contains no images; expected {expected}")

    labels = load_labels(path)
    invalid = labels[(labels < 1) | (labels > ZERO_LABEL)]
    if invalid.size:
        raise ValueError(f"{path}: label {invalid[0]} is outside 1..{ZERO_LABEL}; expected {expected}")
    return num_images


def to_class(label: int) -> int:
    """Map an SVHN label 1..10 to the class 0..9 (10 is the digit 0)."""
    return 0 if label == ZERO_LABEL else int(label)


class ReadMatImages(beam.DoFn):
    """Read one range of a .mat file; output `(index, image uint8 [32, 32, 3], class)`."""

    def __init__(self):
        self._labels: dict[str, np.ndarray] = {}
        self._images_read = beam.metrics.Metrics.counter(NAME, "images_read")

    def setup(self):
        self._labels = {}

    def process(self, item: ReadRange) -> Iterator[tuple[int, np.ndarray, int]]:
        if item.source not in self._labels:
            self._labels[item.source] = load_labels(item.source)
        labels = self._labels[item.source]
        with storage.open_file(item.source, "rb") as handle:
            images = matlab.iter_uint8_examples(handle, _IMAGE_VARIABLE, item.start, item.stop, path=item.source)
            for offset, image in enumerate(images, start=item.start):
                self._images_read.inc()
                yield item.first_index + offset, np.ascontiguousarray(image), to_class(labels[offset])


def plan_mat_ranges(source_dir: str, include_extra: bool,
                    images_per_range: int = IMAGES_PER_RANGE) -> tuple[dict[str, list[ReadRange]], list[str]]:
    """Check every .mat file and cut it into ranges.

    Returns:
      `{split: ranges}` and the fingerprint parts (file names and sizes).
    """
    plan: dict[str, list[ReadRange]] = {}
    fingerprint_parts: list[str] = []
    for split, names in MAT_FILES.items():
        ranges: list[ReadRange] = []
        first_index = 0
        for name in names:
            if name == EXTRA_FILE and not include_extra:
                continue
            path = storage.join(source_dir, name)
            if not storage.is_file(path):
                expected = ", ".join(name for names in MAT_FILES.values() for name in names)
                raise FileNotFoundError(f"{path}: file not found; --source must contain {expected}")
            num_images = inspect_mat_file(path)
            ranges += [ReadRange(split, path, first_index, start, stop)
                       for start, stop in jobs.index_ranges(num_images, images_per_range)]
            fingerprint_parts += [name, str(storage.size(path)), str(num_images)]
            _LOGGER.info("%s: %d images for split %s", path, num_images, split)
            first_index += num_images
        plan[split] = ranges
    return plan, fingerprint_parts


# --- The tensorflow-datasets source ------------------------------------------------------------

def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError("--tfds_data_dir needs tensorflow-datasets; install it with"
                         " pip install 'split-pipeline[tfds]'") from None
    return tfds


def _tfds_builder(data_dir: str):
    tfds = _import_tfds()
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f"{data_dir}: no prepared {TFDS_NAME} dataset; prepare it with"
                                f" tfds build {TFDS_NAME} --data_dir {data_dir}")
    return builder


class ReadTfdsImages(beam.DoFn):
    """Read one range of a TFDS split; output `(index, image uint8 [32, 32, 3], class)`."""

    def __init__(self, data_dir: str):
        self._data_dir = data_dir
        self._builder = None
        self._images_read = beam.metrics.Metrics.counter(NAME, "images_read")

    def setup(self):
        self._builder = _tfds_builder(self._data_dir)

    def process(self, item: ReadRange) -> Iterator[tuple[int, np.ndarray, int]]:
        # TFDS labels are already 0..9; without file shuffling the order of a slice is fixed.
        dataset = self._builder.as_dataset(split=f"{item.source}[{item.start}:{item.stop}]", shuffle_files=False)
        for offset, example in enumerate(dataset.as_numpy_iterator(), start=item.start):
            self._images_read.inc()
            yield item.first_index + offset, example["image"], int(example["label"])


# NOTE: the reading path below has not run against a real prepared svhn_cropped. Only the
# missing-package error is tested: tensorflow-datasets 4.9.10 in the development environment
# could not prepare any dataset (its import of importlib_resources failed).
def plan_tfds_ranges(data_dir: str, include_extra: bool,
                     images_per_range: int = IMAGES_PER_RANGE) -> tuple[dict[str, list[ReadRange]], list[str]]:
    builder = _tfds_builder(data_dir)
    plan: dict[str, list[ReadRange]] = {}
    fingerprint_parts = [TFDS_NAME, str(builder.info.version)]
    for split, names in TFDS_SPLITS.items():
        ranges: list[ReadRange] = []
        first_index = 0
        for name in names:
            if name == "extra" and not include_extra:
                continue
            num_images = builder.info.splits[name].num_examples
            ranges += [ReadRange(split, name, first_index, start, stop)
                       for start, stop in jobs.index_ranges(num_images, images_per_range)]
            fingerprint_parts += [name, str(num_images)]
            first_index += num_images
        plan[split] = ranges
    return plan, fingerprint_parts


# --- Beam transforms ---------------------------------------------------------------------------

def serialize_image(index: int, image: np.ndarray, label: int) -> tuple[int, bytes]:
    return index, schema.serialize_example(image, label, index)


class ReadSplit(beam.PTransform):
    """Read the ranges of one split into `(index, serialized_example)` pairs."""

    def __init__(self, ranges: list[ReadRange], read_fn: beam.DoFn):
        super().__init__()
        self._ranges = ranges
        self._read_fn = read_fn

    def expand(self, pipeline):
        return (
            pipeline
            | "CreateRanges" >> beam.Create(self._ranges)
            # Create emits few bundles; reshuffling lets a runner read ranges on several workers.
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadImages" >> beam.ParDo(self._read_fn)
            | "SerializeExample" >> beam.MapTuple(serialize_image)
        )


# --- Command line ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name  # One dataset of this module.
    parser.add_argument("--source", help="folder or gs:// prefix holding train_32x32.mat, extra_32x32.mat"
                                         " and test_32x32.mat")
    parser.add_argument("--tfds_data_dir", help="read a prepared tensorflow-datasets svhn_cropped from this"
                                                " data_dir instead of --source")
    parser.add_argument("--no_extra", action="store_true", help="leave extra_32x32.mat out of the train split")


def run(args: argparse.Namespace, beam_argv: list[str],
        images_per_range: int = IMAGES_PER_RANGE) -> beam.runners.runner.PipelineResult:
    """Build and run the pipeline; `beam_argv` goes to `PipelineOptions` untouched."""
    jobs.validate_common(args)
    if (args.source is None) == (args.tfds_data_dir is None):
        raise ValueError("give exactly one of --source (a folder of .mat files) and --tfds_data_dir")
    include_extra = not args.no_extra
    if args.source is not None:
        plan, fingerprint_parts = plan_mat_ranges(args.source, include_extra, images_per_range)
        read_fn: beam.DoFn = ReadMatImages()
        source_kind = "mat"
    else:
        plan, fingerprint_parts = plan_tfds_ranges(args.tfds_data_dir, include_extra, images_per_range)
        read_fn = ReadTfdsImages(args.tfds_data_dir)
        source_kind = "tfds"

    compression = jobs.compression_type(args)
    template = sink.ManifestTemplate(
        name=NAME,
        image_shape=IMAGE_SHAPE,
        label_meaning="class",
        num_classes=NUM_CLASSES,
        seed=args.seed,
        source_fingerprint=schema.fingerprint(fingerprint_parts),
        compression=compression,
        options={"source": source_kind, "extra": include_extra},
    )

    def build(pipeline: beam.Pipeline) -> None:
        shard_results = []
        for split, ranges in plan.items():
            title = jobs.title(split)
            shard_results.append(
                pipeline
                | f"Read{title}" >> ReadSplit(ranges, read_fn)
                | f"Write{title}Shards" >> sink.WriteShards(args.output, split, args.num_shards, compression))
        (shard_results
         | "FlattenShardResults" >> beam.Flatten()
         | "WriteManifest" >> sink.WriteManifest(args.output, template))

    return jobs.run_pipeline(args.output, beam_argv, build)
