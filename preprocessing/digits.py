"""`split-data digits`: the embedded textured digits, a dataset that needs no download.

Real handwritten digits from scikit-learn's `load_digits` (1,797 8x8 images, intensities 0..16,
10 classes) become 32x32x3 renders whose global factor is the digit and whose local factors are
colour and texture:

- each digit is upscaled to 28x28 (bilinear) and padded to 32x32;
- the background is a solid colour or, equally likely, a tinted texture: a random 32x32 crop of
  scikit-image's `brick`, `grass` or `gravel` (grayscale `g` in [0, 1]) downscaled 2x so that
  its grain is coarse, tinted as `colour * (0.25 + 0.75 g)`;
- the foreground colour is redrawn until it is more than 0.5 (RGB Euclidean distance, 0..1
  scale) from the mean background colour, and composited with alpha = intensity / 16.

Source digits are split 80/20 into train and test, stratified by class, and no source digit
appears in both splits. `--validation_fraction` moves that share of the training digits to a
third split, "validation", so that settings can be chosen without the test split. The test
split stays the same. Each source digit gets `--renders_per_digit` renders. Every render is a
pure function of (seed, source index, render index), and the work plan maps (seed, split, index)
to those. So any runner gives byte-identical shards, and any `--num_shards` the same records.
Each record carries the class as `label` and the local factors `factor/background_kind`
(0 solid, 1 brick, 2 grass, 3 gravel), `factor/background_hue` and `factor/foreground_hue`
(12 hue bins).

    split-data digits --output /tmp/digits                                    # in-process
    split-data digits --output /tmp/digits --direct_num_workers 2 \\
        --direct_running_mode multi_processing
    split-data digits --output gs://BUCKET/digits --runner DataflowRunner \\
        --project PROJECT --region REGION --temp_location gs://BUCKET/tmp \\
        --sdk_container_image IMAGE

NOTE: remote workers import this package, so they need an image that installs it (the
project's image, or `--setup_file`). Only the local runs above have been tried.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import logging
import math
from typing import Iterator, Sequence

import apache_beam as beam
import numpy as np

from preprocessing import jobs, schema, sink

_LOGGER = logging.getLogger(__name__)

HELP = "embedded textured digits (scikit-learn load_digits on scikit-image textures); no download"
NAME = "digits"

SOURCE_SIZE = 8
DIGIT_SIZE = 28
IMAGE_SIZE = 32
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
MAX_INTENSITY = 16.0
NUM_CLASSES = 10

TEXTURE_NAMES = ("brick", "grass", "gravel")
TEXTURE_DOWNSCALE = 2
# The darkest texture pixel keeps a quarter of the tint colour, so a texture never goes black.
TEXTURE_FLOOR = 0.25
SOLID_PROBABILITY = 0.5
MIN_COLOUR_DISTANCE = 0.5
# A uniform colour in the unit cube is farther than 0.5 from any point with probability at
# least 0.47 (the worst point is the cube's centre), so this many draws all failing means a bug.
MAX_COLOUR_DRAWS = 1_000
NUM_HUE_BINS = 12

SOLID_KIND = 0
FACTORS = {"background_kind": 1 + len(TEXTURE_NAMES), "background_hue": NUM_HUE_BINS,
           "foreground_hue": NUM_HUE_BINS}

# "validation" exists only with --validation_fraction; it comes last so that the other two
# splits' index orders do not depend on whether it is written.
SPLITS = ("train", "test", "validation")
TEST_FRACTION = 0.2
DEFAULT_RENDERS_PER_DIGIT = 10
# With the first 50 source digits every class has at least 3 members and the test split
# (ceil(0.2 * 50) = 10 digits) can hold every class once, which a stratified split requires.
MIN_SOURCE_DIGITS = 50

# Tags that keep the random streams of renders and of the index order apart for one seed.
_RENDER_STREAM = 0
_ORDER_STREAM = 1

# (split, index, source_index, render_index): one image to render.
WorkItem = tuple[str, int, int, int]


# --- Sources -----------------------------------------------------------------------------------

def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's digits: images float64 `[1797, 8, 8]` in 0..16 and labels int `[1797]`."""
    from sklearn.datasets import load_digits  # The wheel ships the data; nothing is downloaded.

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def load_textures() -> tuple[np.ndarray, ...]:
    """Load `brick`, `grass` and `gravel`, each downscaled 2x: float64 `[256, 256]` in [0, 1]."""
    from skimage import data, transform, util

    textures = []
    for name in TEXTURE_NAMES:
        gray = util.img_as_float(getattr(data, name)())
        textures.append(transform.downscale_local_mean(gray, (TEXTURE_DOWNSCALE, TEXTURE_DOWNSCALE)))
    return tuple(textures)


def source_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Fingerprint the digits and the raw texture images that every render is drawn from."""
    from skimage import data

    parts: list[bytes] = [np.ascontiguousarray(images).tobytes(), np.ascontiguousarray(labels).tobytes()]
    parts += [getattr(data, name)().tobytes() for name in TEXTURE_NAMES]
    return schema.fingerprint(parts)


def upscale_digit(source: np.ndarray) -> np.ndarray:
    """Upscale an 8x8 digit to 28x28 (bilinear) and pad it with zeros to 32x32.

    Args:
      source: float `[8, 8]`, intensities in 0..16.
    Returns:
      float64 `[32, 32]`, intensities in 0..16.
    """
    from skimage import transform

    if source.shape != (SOURCE_SIZE, SOURCE_SIZE):
        raise ValueError(f"expected an [{SOURCE_SIZE}, {SOURCE_SIZE}] digit, got {list(source.shape)}")
    digit = transform.resize(source.astype(np.float64), (DIGIT_SIZE, DIGIT_SIZE), order=1, mode="edge",
                             anti_aliasing=False, preserve_range=True)
    before = (IMAGE_SIZE - DIGIT_SIZE) // 2
    after = IMAGE_SIZE - DIGIT_SIZE - before
    return np.pad(digit, ((before, after), (before, after)))


# --- Rendering (pure functions) -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class DigitRender:
    """One rendered image and the local factors it was drawn with."""

    image: np.ndarray  # uint8 [32, 32, 3]
    background_kind: int  # 0 solid, 1 + the index into TEXTURE_NAMES otherwise
    background_colour: np.ndarray  # float [3] in [0, 1]: the mean colour of the background
    foreground_colour: np.ndarray  # float [3] in [0, 1]

    def factors(self) -> dict[str, int]:
        return {
            "background_kind": self.background_kind,
            "background_hue": hue_bin(self.background_colour),
            "foreground_hue": hue_bin(self.foreground_colour),
        }


def hue_bin(colour: np.ndarray, num_bins: int = NUM_HUE_BINS) -> int:
    """Return the hue bin (0..num_bins-1) of an RGB colour in [0, 1]. A gray has hue 0, so bin 0."""
    hue, _, _ = colorsys.rgb_to_hsv(*(float(channel) for channel in colour))
    return min(int(hue * num_bins), num_bins - 1)


def tint_texture(texture: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Tint a grayscale texture `[height, width]` in [0, 1] as `colour * (0.25 + 0.75 g)`.

    Returns float `[height, width, 3]` in [0, 1].
    """
    shade = TEXTURE_FLOOR + (1.0 - TEXTURE_FLOOR) * texture
    return shade[..., None] * np.asarray(colour, dtype=np.float64)


def composite(background: np.ndarray, colour: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Paint `colour` over `background` with alpha = intensity / 16.

    Args:
      background: float `[height, width, 3]` in [0, 1].
      colour: float `[3]` in [0, 1].
      intensity: float `[height, width]` in 0..16.
    Returns:
      float `[height, width, 3]` in [0, 1].
    """
    alpha = (np.asarray(intensity, dtype=np.float64) / MAX_INTENSITY)[..., None]
    return alpha * np.asarray(colour, dtype=np.float64) + (1.0 - alpha) * background


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise a float image in [0, 1] to uint8 0..255 (round to nearest)."""
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def draw_background(rng: np.random.Generator, textures: Sequence[np.ndarray]) -> tuple[int, np.ndarray]:
    """Draw a solid or, equally likely, a tinted texture background.

    Returns the background kind (0 solid, 1 + texture index) and float `[32, 32, 3]` in [0, 1].
    """
    colour = rng.random(3)
    if rng.random() < SOLID_PROBABILITY:
        return SOLID_KIND, np.broadcast_to(colour, IMAGE_SHAPE).copy()

    texture_index = int(rng.integers(len(textures)))
    texture = textures[texture_index]
    top = int(rng.integers(texture.shape[0] - IMAGE_SIZE + 1))
    left = int(rng.integers(texture.shape[1] - IMAGE_SIZE + 1))
    crop = texture[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
    return 1 + texture_index, tint_texture(crop, colour)


def draw_foreground_colour(rng: np.random.Generator, background_colour: np.ndarray) -> np.ndarray:
    """Draw a uniform RGB colour, redrawn until it is more than 0.5 from `background_colour`."""
    for _ in range(MAX_COLOUR_DRAWS):
        colour = rng.random(3)
        if np.linalg.norm(colour - background_colour) > MIN_COLOUR_DISTANCE:
            return colour
    raise RuntimeError(f"no foreground colour farther than {MIN_COLOUR_DISTANCE} from "
                       f"{background_colour.tolist()} in {MAX_COLOUR_DRAWS} draws")


def render_digit(intensity: np.ndarray, textures: Sequence[np.ndarray],
                 rng: np.random.Generator) -> DigitRender:
    """Render one digit on a random background in a random, contrasting colour.

    Args:
      intensity: float `[32, 32]` in 0..16, an upscaled and padded digit (`upscale_digit`).
      textures: grayscale textures, each float `[height, width]` in [0, 1], at least 32x32
        (`load_textures`).
      rng: the render's own generator (`render_rng`); the render is a pure function of it.
    """
    kind, background = draw_background(rng, textures)
    background_colour = background.mean(axis=(0, 1))
    foreground_colour = draw_foreground_colour(rng, background_colour)
    image = to_uint8(composite(background, foreground_colour, intensity))
    return DigitRender(image, kind, background_colour, foreground_colour)


def render_rng(seed: int, source_index: int, render_index: int) -> np.random.Generator:
    """Return the generator of one render, a pure function of its arguments."""
    return np.random.default_rng([seed, _RENDER_STREAM, source_index, render_index])


# --- The split and the work plan ----------------------------------------------------------------

def split_sources(labels: np.ndarray, seed: int, test_fraction: float = TEST_FRACTION,
                  validation_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Split source digits into disjoint train and test sets (and validation), stratified by class.

    Args:
      labels: int `[num_sources]`, the class of each source digit.
      validation_fraction: the share of the training digits moved to a "validation" split, for
        choosing settings without looking at the test split; 0 writes none. The test split is
        the same with and without it.
    Returns:
      `{"train": indices, "test": indices[, "validation": indices]}`, sorted int arrays into
      `labels`. The test split contains ceil(test_fraction * num_sources) digits (scikit-learn's
      rounding).
    """
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                   stratify=labels, random_state=seed)
    sources = {"train": np.sort(train), "test": np.sort(test)}
    if validation_fraction > 0:
        train, validation = train_test_split(sources["train"], test_size=validation_fraction,
                                             stratify=labels[sources["train"]], random_state=seed)
        sources["train"], sources["validation"] = np.sort(train), np.sort(validation)
    return sources


def plan_split(split: str, sources: np.ndarray, renders_per_digit: int, seed: int) -> list[WorkItem]:
    """List the work items of one split: every (source digit, render) once, at a random index.

    The index order is a seeded permutation, so that the first records of a split are a random
    sample of digits and renders rather than ten renders of the same digit.
    """
    pairs = [(int(source), render) for source in sources for render in range(renders_per_digit)]
    order = np.random.default_rng([seed, _ORDER_STREAM, SPLITS.index(split)]).permutation(len(pairs))
    return [(split, index, *pairs[position]) for index, position in enumerate(order)]


def plan_work(labels: np.ndarray, renders_per_digit: int, seed: int,
              validation_fraction: float = 0.0) -> dict[str, list[WorkItem]]:
    """Map each split to its work items, so that (seed, split, index) fixes the source and render."""
    sources = split_sources(labels, seed, validation_fraction=validation_fraction)
    return {split: plan_split(split, indices, renders_per_digit, seed) for split, indices in sources.items()}


# --- Beam transforms ---------------------------------------------------------------------------

class RenderDigitFn(beam.DoFn):
    """Render one work item; output `(index, DigitRender, label)`."""

    def __init__(self, seed: int):
        self._seed = seed
        self._intensities: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._textures: tuple[np.ndarray, ...] = ()
        self._rendered = beam.metrics.Metrics.counter(NAME, "images_rendered")

    def setup(self):
        # Once per worker: loading the sources and textures costs far more than a render.
        images, self._labels = load_source_digits()
        self._intensities = np.stack([upscale_digit(image) for image in images])
        self._textures = load_textures()

    def process(self, item: WorkItem) -> Iterator[tuple[int, DigitRender, int]]:
        _, index, source_index, render_index = item
        rng = render_rng(self._seed, source_index, render_index)
        render = render_digit(self._intensities[source_index], self._textures, rng)
        self._rendered.inc()
        yield index, render, int(self._labels[source_index])


def serialize_render(index: int, render: DigitRender, label: int) -> tuple[int, bytes]:
    """Serialize one render as a record of the dataset schema, keyed by its index."""
    return index, schema.serialize_example(render.image, label, index, render.factors())


class RenderSplit(beam.PTransform):
    """Render the work items of one split into `(index, serialized_example)` pairs."""

    def __init__(self, items: list[WorkItem], seed: int):
        super().__init__()
        self._items = items
        self._seed = seed

    def expand(self, pipeline):
        return (
            pipeline
            | "CreateWorkItems" >> beam.Create(self._items)
            # Create emits few bundles; reshuffling lets a runner spread renders over workers.
            | "SpreadWorkItems" >> beam.Reshuffle()
            | "RenderDigit" >> beam.ParDo(RenderDigitFn(self._seed))
            | "SerializeExample" >> beam.MapTuple(serialize_render)
        )


# --- Command line -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    del name  # One dataset of this module.
    parser.add_argument("--renders_per_digit", type=int, default=DEFAULT_RENDERS_PER_DIGIT,
                        help="renders of each source digit (at least 1)")
    parser.add_argument("--max_source_digits", type=int, default=None,
                        help=f"use only the first N of the 1,797 source digits (at least {MIN_SOURCE_DIGITS});"
                             " for quick tests")
    parser.add_argument("--validation_fraction", type=float, default=0.0,
                        help="share of the training digits written as a separate 'validation' split, for"
                             " choosing settings without the test split (default 0: none)")


def _validate(args: argparse.Namespace, num_sources: int) -> None:
    jobs.validate_common(args)
    if args.renders_per_digit < 1:
        raise ValueError(f"--renders_per_digit must be at least 1, got {args.renders_per_digit}")
    limit = args.max_source_digits
    if limit is not None and not MIN_SOURCE_DIGITS <= limit <= num_sources:
        raise ValueError(f"--max_source_digits must be between {MIN_SOURCE_DIGITS} and {num_sources},"
                         f" got {limit}")
    if not 0.0 <= args.validation_fraction < 0.5:
        raise ValueError(f"--validation_fraction must be in [0, 0.5), got {args.validation_fraction}")
    if args.validation_fraction > 0:
        # The stratified split needs every class in validation (scikit-learn's rounding: ceil).
        num_train = (limit or num_sources) - math.ceil(TEST_FRACTION * (limit or num_sources))
        num_validation = math.ceil(args.validation_fraction * num_train)
        if num_validation < NUM_CLASSES:
            raise ValueError(
                f"--validation_fraction {args.validation_fraction} moves {num_validation} of the {num_train} training"
                f" digits to validation; it needs at least {NUM_CLASSES}, one per class (raise it or"
                " --max_source_digits)")


def run(args: argparse.Namespace, beam_argv: list[str]) -> beam.runners.runner.PipelineResult:
    """Render the digits into train and test (and validation) shards and write the manifest last.

    `beam_argv` goes to `PipelineOptions` untouched. Returns the finished pipeline result.
    """
    images, labels = load_source_digits()
    _validate(args, len(labels))
    if args.max_source_digits is not None:
        images, labels = images[:args.max_source_digits], labels[:args.max_source_digits]
    compression = jobs.compression_type(args)
    plan = plan_work(labels, args.renders_per_digit, args.seed, args.validation_fraction)

    template = sink.ManifestTemplate(
        name=NAME,
        image_shape=IMAGE_SHAPE,
        label_meaning="class",
        num_classes=NUM_CLASSES,
        seed=args.seed,
        source_fingerprint=source_fingerprint(images, labels),
        factors=dict(FACTORS),
        compression=compression,
        options={
            "renders_per_digit": args.renders_per_digit,
            "num_source_digits": len(labels),
            "test_fraction": TEST_FRACTION,
            "validation_fraction": args.validation_fraction,
            "textures": list(TEXTURE_NAMES),
            "texture_downscale": TEXTURE_DOWNSCALE,
            "min_colour_distance": MIN_COLOUR_DISTANCE,
        },
    )
    _LOGGER.info("rendering %s", ", ".join(f"{len(items)} {split}" for split, items in plan.items()))

    def build(pipeline: beam.Pipeline) -> None:
        shard_results = []
        for split, items in plan.items():
            title = jobs.title(split)
            shard_results.append(
                pipeline
                | f"Render{title}" >> RenderSplit(items, args.seed)
                | f"Write{title}Shards" >> sink.WriteShards(args.output, split, args.num_shards, compression))
        _ = (shard_results
             | "FlattenShardResults" >> beam.Flatten()
             | "WriteManifest" >> sink.WriteManifest(args.output, template))

    return jobs.run_pipeline(args.output, beam_argv, build)
