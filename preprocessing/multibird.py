"""`split-data multibird` and `split-data multidigit`: 48x48 scenes of 0..5 sprites, label = count.

Multi-Bird pastes 14x14 bird sprites (a prepared `cub-sprites` folder, `--sprites`); Multi-Digit
pastes 14x14 sprites made from scikit-learn's `load_digits` and needs no download, so that small
sets render on a CPU in tests. Both follow the Multi-Bird rules of SPLIT (Charakorn et al.,
arXiv 2001.08957):

- the count is uniform in 0..5. Each sprite (uniform over the split's sprites) goes at a
  top-left corner uniform in [0, 34)^2, redrawn while its 14x14 box would cover more than 15%
  of any box placed before it. When four boxes leave no such corner, the scene's boxes are
  placed again;
- a sprite pixel is opaque where any channel is above 0 and then replaces the canvas pixel;
  later sprites cover earlier ones;
- `easy`: a solid background, one colour of `EASY_COLOURS`;
- `hard`: a checkerboard of 6-px cells in two distinct colours of `HARD_COLOURS`, drawn on a
  192x192 canvas, rotated by an angle uniform in [-90, 90) degrees with bilinear interpolation
  and centre-cropped to 48x48;
- splits `train` (train sprites, training colours), `test` (test sprites, training colours) and
  `unseen` (test sprites, the unseen colours).

Every image is a pure function of (seed, split, index) and the sprites, so any runner, worker
count and sharding give the same bytes. The hard background is computed without the 192x192
canvas: each output pixel is mapped back into the unrotated checkerboard and the checkerboard's
four neighbouring pixels are blended, which is what bilinear rotation of the canvas computes
(`skimage.transform.rotate` convention) at a 16th of the pixels.

    split-data multidigit --variant hard --output /tmp/multidigit-hard
    split-data multibird --variant easy --sprites /tmp/cub-sprites --output /tmp/multibird-easy \\
        --direct_num_workers 2 --direct_running_mode multi_processing
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import logging
import math
from typing import Iterator, Protocol

import apache_beam as beam
import numpy as np

from preprocessing import jobs, schema, sink, storage

_LOGGER = logging.getLogger(__name__)

HELP = "Multi-Bird (CUB sprites) or Multi-Digit (embedded digit sprites) scenes of 0..5 sprites, label = count"
DESCRIPTIONS = {
    "multibird": "Render Multi-Bird scenes: 48x48, 0..5 CUB bird sprites from a cub-sprites folder on solid"
                 " (easy) or rotated-checkerboard (hard) backgrounds; label = number of birds.",
    "multidigit": "Render Multi-Digit scenes: the Multi-Bird renderer with 14x14 sprites of scikit-learn's"
                  " digits (no download), sized for CPU tests; label = number of digits.",
}

CANVAS_SIZE = 48
IMAGE_SHAPE = (CANVAS_SIZE, CANVAS_SIZE, 3)
SPRITE_SIZE = 14
MAX_OBJECTS = 5
NUM_CLASSES = MAX_OBJECTS + 1
# Corners are uniform in [0, CANVAS_SIZE - SPRITE_SIZE), so a box never leaves the canvas.
CORNER_LIMIT = CANVAS_SIZE - SPRITE_SIZE
MAX_OVERLAP_FRACTION = 0.15
MAX_OVERLAP_PIXELS = MAX_OVERLAP_FRACTION * SPRITE_SIZE * SPRITE_SIZE
# Placing the boxes of a scene again is rare (see `place_boxes`), so this many attempts means a bug.
MAX_PLACEMENT_ATTEMPTS = 100
CELL_SIZE = 6
CHECKERBOARD_SIZE = 192
MAX_ANGLE_DEGREES = 90.0

VARIANTS = ("easy", "hard")
SPLITS = ("train", "test", "unseen")
# Each split's background palette ("train" or "unseen" colours) and sprite split.
SPLIT_PALETTES = {"train": "train", "test": "train", "unseen": "unseen"}
SPLIT_SPRITES = {"train": "train", "test": "test", "unseen": "test"}
# Keeps the random streams of the three splits apart for one seed.
SPLIT_STREAMS = {"train": 0, "test": 1, "unseen": 2}

EASY_COLOURS = {
    "train": ((100, 209, 72), (209, 72, 100), (209, 127, 72), (72, 129, 209),
              (84, 184, 209), (209, 109, 84), (184, 209, 84), (109, 84, 209)),
    "unseen": ((222, 222, 102), (100, 100, 219), (219, 100, 219), (100, 219, 100)),
}
HARD_COLOURS = {
    "train": ((195, 135, 255), (193, 255, 135), (255, 165, 135), (81, 197, 255), (255, 229, 81), (255, 81, 139)),
    "unseen": ((255, 125, 227), (125, 255, 184), (255, 205, 125)),
}
PALETTES = {"easy": EASY_COLOURS, "hard": HARD_COLOURS}

DEFAULT_SIZES = {
    "multibird": {"train": 100_000, "test": 1_000, "unseen": 1_000},
    "multidigit": {"train": 10_000, "test": 1_000, "unseen": 1_000},
}
SPRITES_DATASET = "cub-sprites"
INDICES_PER_RANGE = 1_000

# Multi-Digit sprites: a digit's 8x8 intensities (0..16), upscaled to 14x14, weight one colour of
# full value and this saturation. Its hue steps by the golden ratio from one source digit to the
# next, so that neighbouring digits differ in colour.
DIGIT_SATURATION = 0.85
GOLDEN_RATIO_CONJUGATE = (math.sqrt(5) - 1) / 2
DIGIT_MAX_INTENSITY = 16.0


# --- Layout and rendering (pure functions) ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """The contents of one scene, drawn from its random generator."""

    corners: np.ndarray  # int [count, 2]: top-left (row, column) of each sprite
    sprite_ids: np.ndarray  # int [count]: index into the split's sprites
    colours: np.ndarray  # uint8 [1, 3] (easy) or [2, 3] (hard: cells of even, odd parity)
    angle: float  # checkerboard rotation in degrees, counter-clockwise; 0 for easy

    @property
    def count(self) -> int:
        return len(self.sprite_ids)


def box_overlap(corner: tuple[int, int], other: tuple[int, int]) -> int:
    """Return the pixels shared by two SPRITE_SIZE boxes with top-left (row, column) corners."""
    rows = max(0, SPRITE_SIZE - abs(corner[0] - other[0]))
    columns = max(0, SPRITE_SIZE - abs(corner[1] - other[1]))
    return rows * columns


def _forbidden_corners() -> np.ndarray:
    positions = np.arange(CORNER_LIMIT)
    # extent[a, b]: the rows (or columns) shared by boxes starting at rows a and b.
    extent = np.clip(SPRITE_SIZE - np.abs(positions[:, None] - positions[None, :]), 0, None)
    return extent[:, None, :, None] * extent[None, :, None, :] > MAX_OVERLAP_PIXELS


# FORBIDDEN_CORNERS[r, c, r2, c2]: a box at corner (r2, c2) would cover more than 15% of the box at
# (r, c). Overlap is symmetric, so the reverse is true as well. 34^4 booleans, 1.3 MB.
FORBIDDEN_CORNERS = _forbidden_corners()


def place_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Draw `count` top-left corners, int `[count, 2]`, none covering over 15% of an earlier box.

    Redrawing a uniform corner until it fits gives a corner uniform over the corners that fit,
    so each box is drawn from those directly. Four boxes can leave no corner that fits, for
    example at (5, 8), (5, 25), (24, 8) and (24, 25), and there redrawing would never end. The
    boxes of the scene are then placed again from the start.
    """
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        free = np.ones((CORNER_LIMIT, CORNER_LIMIT), dtype=bool)
        corners: list[tuple[int, int]] = []
        for _ in range(count):
            fitting = np.flatnonzero(free)
            if fitting.size == 0:
                break
            row, column = divmod(int(fitting[rng.integers(fitting.size)]), CORNER_LIMIT)
            corners.append((row, column))
            free &= ~FORBIDDEN_CORNERS[row, column]
        else:
            return np.array(corners, dtype=np.int64).reshape(count, 2)
    raise RuntimeError(f"no room for {count} boxes after {MAX_PLACEMENT_ATTEMPTS} attempts")


def draw_layout(rng: np.random.Generator, variant: str, palette: np.ndarray, num_sprites: int) -> Layout:
    """Draw a scene: the count, the boxes, the sprites, then the background colours and angle.

    Args:
      palette: uint8 `[num_colours, 3]`, the colours of the split and variant.
    """
    count = int(rng.integers(0, MAX_OBJECTS + 1))
    corners = place_boxes(rng, count)
    sprite_ids = rng.integers(0, num_sprites, size=count)
    if variant == "easy":
        colours = palette[[rng.integers(len(palette))]]
        angle = 0.0
    else:
        # An ordered pair of distinct colours, uniform over all such pairs.
        first = int(rng.integers(len(palette)))
        second = int(rng.integers(len(palette) - 1))
        colours = palette[[first, second + (second >= first)]]
        angle = float(rng.uniform(-MAX_ANGLE_DEGREES, MAX_ANGLE_DEGREES))
    return Layout(corners, sprite_ids, colours, angle)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Return the generator of one scene, a pure function of its arguments."""
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


# Canvas coordinates of the centre crop, relative to the rotation centre. skimage's `rotate`
# turns about ((size - 1) / 2, (size - 1) / 2); the crop starts at (size - 48) / 2.
_ROTATION_CENTRE = (CHECKERBOARD_SIZE - 1) / 2
_CROP_START = (CHECKERBOARD_SIZE - CANVAS_SIZE) // 2
_CROP_ROWS, _CROP_COLUMNS = np.mgrid[_CROP_START:_CROP_START + CANVAS_SIZE,
                                     _CROP_START:_CROP_START + CANVAS_SIZE].astype(np.float64) - _ROTATION_CENTRE
# s(line) is +1 on the board rows (or columns) of even cells and -1 on odd ones. With its step to
# the next line, s at a fractional coordinate y is s(floor y) + (y - floor y) * step(floor y).
_LINE_SIGNS = 1.0 - 2.0 * ((np.arange(CHECKERBOARD_SIZE + 1) // CELL_SIZE) % 2)
_LINE_STEPS = np.append(np.diff(_LINE_SIGNS), 0.0)


def _interpolate_signs(coordinates: np.ndarray) -> np.ndarray:
    lines = np.floor(coordinates)
    index = lines.astype(np.intp)
    return _LINE_SIGNS[index] + (coordinates - lines) * _LINE_STEPS[index]


def rotated_checkerboard(colours: np.ndarray, angle: float) -> np.ndarray:
    """Compute the 48x48 centre of a rotated 192x192 checkerboard without drawing the canvas.

    Equal (up to float rounding) to `skimage.transform.rotate(board, angle, order=1)[72:120,
    72:120]` for the board whose 6-px cell (i, j) has colour `colours[(i + j) % 2]`. Each output
    pixel is mapped back by the inverse rotation, as skimage does, and the board is interpolated
    there. The board is `even + odd_weight * (odd - even)` with `1 - 2 * odd_weight = s(row) *
    s(column)`, where `s` is +1 on even cell lines and -1 on odd ones. Bilinear weights are
    separable, so the bilinear interpolation of that product is the product of two linear
    interpolations of `s`. The crop's corners map at most 34 px from the centre, inside the
    board, so no sample needs border handling.

    Args:
      colours: `[2, 3]`, the colours of even and odd cells, 0..255.
      angle: degrees, counter-clockwise as in skimage.
    Returns:
      float64 `[48, 48, 3]` in 0..255.
    """
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # skimage maps output (column x, row y) to input R(theta) (x - c, y - c) + c.
    source_columns = cos * _CROP_COLUMNS - sin * _CROP_ROWS + _ROTATION_CENTRE
    source_rows = sin * _CROP_COLUMNS + cos * _CROP_ROWS + _ROTATION_CENTRE
    odd_weight = 0.5 - 0.5 * _interpolate_signs(source_rows) * _interpolate_signs(source_columns)
    # Each pixel is the convex combination [1 - w, w] of the two colours.
    return np.stack([1.0 - odd_weight, odd_weight], axis=-1) @ colours.astype(np.float64)


def paste_sprites(canvas: np.ndarray, layout: Layout, sprites: np.ndarray, opaque: np.ndarray) -> None:
    """Paste the layout's sprites into `canvas` (uint8 `[48, 48, 3]`) in place, in order.

    Args:
      sprites: uint8 `[num_sprites, 14, 14, 3]`.
      opaque: bool `[num_sprites, 14, 14, 1]`, where any channel of the sprite is above 0.
    """
    for (row, column), sprite_id in zip(layout.corners, layout.sprite_ids):
        region = canvas[row:row + SPRITE_SIZE, column:column + SPRITE_SIZE]
        np.copyto(region, sprites[sprite_id], where=opaque[sprite_id])


def render_background(layout: Layout) -> np.ndarray:
    """Return the scene's background, uint8 `[48, 48, 3]`."""
    if layout.colours.shape[0] == 1:
        # np.tile copies whole rows. np.full with a colour fills pixel by pixel, about three times
        # slower (numpy 2.4 on the 2-core benchmark machine).
        return np.tile(layout.colours[0], (CANVAS_SIZE, CANVAS_SIZE, 1))
    board = rotated_checkerboard(layout.colours, layout.angle)
    return np.rint(board).astype(np.uint8)


def opaque_pixels(sprites: np.ndarray) -> np.ndarray:
    """Return bool `[num_sprites, 14, 14, 1]`: where a sprite pixel replaces the canvas."""
    return np.any(sprites > 0, axis=-1, keepdims=True)


class SceneRenderer:
    """Render scenes of one split and variant from that split's sprites."""

    def __init__(self, seed: int, split: str, variant: str, sprites: np.ndarray):
        if variant not in VARIANTS:
            raise ValueError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if len(sprites) == 0:
            raise ValueError(f"no sprites for split {split!r}")
        self._seed = seed
        self._split = split
        self._variant = variant
        self._palette = np.array(PALETTES[variant][SPLIT_PALETTES[split]], dtype=np.uint8)
        self._sprites = np.ascontiguousarray(sprites, dtype=np.uint8)
        self._opaque = opaque_pixels(self._sprites)

    def layout(self, index: int) -> Layout:
        rng = scene_rng(self._seed, self._split, index)
        return draw_layout(rng, self._variant, self._palette, len(self._sprites))

    def render(self, index: int) -> tuple[np.ndarray, int]:
        """Return scene `index`: uint8 `[48, 48, 3]` and its sprite count."""
        layout = self.layout(index)
        canvas = render_background(layout)
        paste_sprites(canvas, layout, self._sprites, self._opaque)
        return canvas, layout.count


# --- Sprite sources ----------------------------------------------------------------------------

class SpriteSource(Protocol):
    """A source of a renderer's sprites, loaded once per worker."""

    def load(self, split: str) -> np.ndarray:
        """Return uint8 `[num_sprites, 14, 14, 3]` of `split` ("train" or "test")."""

    def describe(self) -> dict:
        """Return what the manifest records about the sprites."""


def check_sprite_dataset(directory: str) -> schema.Manifest:
    """Read a `cub-sprites` manifest and raise ValueError unless it lists 14x14 train and test sprites."""
    manifest = schema.read_manifest(directory)
    if manifest.name != SPRITES_DATASET or tuple(manifest.image_shape) != (SPRITE_SIZE, SPRITE_SIZE, 3):
        raise ValueError(f"{directory}: dataset {manifest.name!r} of {list(manifest.image_shape)} images;"
                         f" --sprites must be a {SPRITES_DATASET} folder of 14x14x3 sprites")
    for split in ("train", "test"):
        if split not in manifest.splits or manifest.splits[split].num_records == 0:
            raise ValueError(f"{directory}: no {split} sprites; --sprites must be a {SPRITES_DATASET} folder")
    return manifest


@dataclasses.dataclass(frozen=True)
class ShardSprites:
    """Sprites of a prepared `cub-sprites` folder, local or gs://, ordered by record index."""

    directory: str

    def load(self, split: str) -> np.ndarray:
        manifest = check_sprite_dataset(self.directory)
        records = [schema.parse_example(record)
                   for name in manifest.splits[split].files
                   for record in storage.read_tfrecords(storage.join(self.directory, name), manifest.compression)]
        records.sort(key=lambda record: record[schema.INDEX_KEY])
        return np.stack([record[schema.IMAGE_KEY] for record in records])

    def describe(self) -> dict:
        return {"sprites": self.directory}


def digit_sprite(intensities: np.ndarray, hue: float) -> np.ndarray:
    """Colour one 8x8 digit (intensities 0..16) as a 14x14 sprite on exact black.

    Returns:
      uint8 `[14, 14, 3]`: `round(colour * intensity / 16)` after bilinear upscaling, 0 where
      the upscaled intensity is 0.
    """
    from skimage import transform

    alpha = transform.resize(intensities / DIGIT_MAX_INTENSITY, (SPRITE_SIZE, SPRITE_SIZE), order=1,
                             mode="edge", anti_aliasing=False, preserve_range=True)
    colour = np.array(colorsys.hsv_to_rgb(hue, DIGIT_SATURATION, 1.0)) * 255
    return np.rint(np.clip(alpha, 0, 1)[..., None] * colour).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class DigitSprites:
    """Sprites made from scikit-learn's digits, split like the `digits` dataset for this seed."""

    seed: int

    def load(self, split: str) -> np.ndarray:
        from preprocessing import digits

        images, labels = digits.load_source_digits()
        sources = digits.split_sources(labels, self.seed)[split]
        return np.stack([digit_sprite(images[source], (source * GOLDEN_RATIO_CONJUGATE) % 1.0)
                         for source in sources])

    def describe(self) -> dict:
        return {"sprites": "scikit-learn load_digits", "digit_saturation": DIGIT_SATURATION}


# --- Beam transforms ---------------------------------------------------------------------------

class RenderScene(beam.DoFn):
    """Render one scene; output `(index, serialized_example)` with label = sprite count."""

    def __init__(self, seed: int, split: str, variant: str, sprites: SpriteSource):
        self._seed = seed
        self._split = split
        self._variant = variant
        self._sprites = sprites
        self._renderer: SceneRenderer | None = None
        self._rendered = beam.metrics.Metrics.counter("multibird", "scenes_rendered")

    def setup(self):
        # Once per worker: reading the sprites costs far more than a scene.
        sprites = self._sprites.load(SPLIT_SPRITES[self._split])
        self._renderer = SceneRenderer(self._seed, self._split, self._variant, sprites)

    def process(self, index: int) -> Iterator[tuple[int, bytes]]:
        image, count = self._renderer.render(index)
        self._rendered.inc()
        yield index, schema.serialize_example(image, count, index)


def _expand_range(index_range: tuple[int, int]) -> range:
    return range(*index_range)


class RenderSplit(beam.PTransform):
    """Render scenes `0..size-1` of one split into `(index, serialized_example)` pairs."""

    def __init__(self, seed: int, split: str, size: int, variant: str, sprites: SpriteSource):
        super().__init__()
        self._seed = seed
        self._split = split
        self._size = size
        self._variant = variant
        self._sprites = sprites

    def expand(self, pipeline):
        return (
            pipeline
            | "CreateRanges" >> beam.Create(jobs.index_ranges(self._size, INDICES_PER_RANGE))
            # Create emits few bundles; reshuffling the ranges lets a runner spread them over workers.
            | "SpreadRanges" >> beam.Reshuffle()
            | "ExpandRange" >> beam.FlatMap(_expand_range)
            | "RenderScene" >> beam.ParDo(RenderScene(self._seed, self._split, self._variant, self._sprites))
        )


# --- Command line ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = DESCRIPTIONS[name]
    parser.add_argument("--variant", help="easy (solid backgrounds) or hard (rotated checkerboards); required")
    if name == "multibird":
        parser.add_argument("--sprites", help=f"a prepared {SPRITES_DATASET} folder, local or gs://; required")
    sizes = DEFAULT_SIZES[name]
    contents = {"train": "train sprites, training colours", "test": "test sprites, training colours",
                "unseen": "test sprites, background colours never used in training"}
    for split in SPLITS:
        parser.add_argument(f"--{split}_size", type=int, default=sizes[split],
                            help=f"scenes in the {split} split ({contents[split]}; default {sizes[split]:,})")
    parser.set_defaults(scene_dataset=name)


def _validate(args: argparse.Namespace) -> None:
    jobs.validate_common(args)
    if args.variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {', '.join(VARIANTS)}, got {args.variant!r}")
    for split in SPLITS:
        size = getattr(args, f"{split}_size")
        if size < 0:
            raise ValueError(f"--{split}_size must be at least 0, got {size}")


def _sprite_source(args: argparse.Namespace) -> SpriteSource:
    if args.scene_dataset == "multidigit":
        return DigitSprites(args.seed)
    if not args.sprites:
        raise ValueError(f"--sprites is required: a folder prepared by split-data {SPRITES_DATASET}")
    check_sprite_dataset(args.sprites)
    return ShardSprites(args.sprites)


def run(args: argparse.Namespace, beam_argv: list[str]) -> beam.runners.runner.PipelineResult:
    """Build and run the pipeline; `beam_argv` goes to `PipelineOptions` untouched."""
    _validate(args)
    sprites = _sprite_source(args)
    sprite_sets = {split: sprites.load(split) for split in ("train", "test")}
    sizes = {split: getattr(args, f"{split}_size") for split in SPLITS}
    compression = jobs.compression_type(args)
    template = sink.ManifestTemplate(
        name=f"{args.scene_dataset}-{args.variant}",
        image_shape=IMAGE_SHAPE,
        label_meaning="count",
        num_classes=NUM_CLASSES,
        seed=args.seed,
        source_fingerprint=schema.fingerprint([sprite_sets["train"].tobytes(), sprite_sets["test"].tobytes()]),
        compression=compression,
        options={"variant": args.variant, "sizes": sizes,
                 "num_sprites": {split: len(values) for split, values in sprite_sets.items()},
                 **sprites.describe()},
    )
    _LOGGER.info("rendering %s %s scenes: %s", args.scene_dataset, args.variant,
                 ", ".join(f"{size} {split}" for split, size in sizes.items()))

    def build(pipeline: beam.Pipeline) -> None:
        shard_results = []
        for split, size in sizes.items():
            title = jobs.title(split)
            shard_results.append(
                pipeline
                | f"Render{title}" >> RenderSplit(args.seed, split, size, args.variant, sprites)
                | f"Write{title}Shards" >> sink.WriteShards(args.output, split, args.num_shards, compression))
        (shard_results
         | "FlattenShardResults" >> beam.Flatten()
         | "WriteManifest" >> sink.WriteManifest(args.output, template))

    return jobs.run_pipeline(args.output, beam_argv, build)
