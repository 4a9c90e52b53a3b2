"""The record schema and the dataset manifest, defined once for every dataset.

A prepared dataset is a folder (local or `gs://`) that holds TFRecord shards named
`{split}-{shard:05d}-of-{num_shards:05d}.tfrecord[.gz]` and, written last, `dataset.json`.
Each record is a `tf.train.Example` with:

- `image`: the PNG encoding of a uint8 image `[height, width, channels]`;
- `label`: int64, the class (digits, SVHN), the number of objects (Multi-Bird) or -1 (unlabelled);
- `index`: int64, the example's index inside its split (renders are a pure function of it);
- `factor/NAME`: int64, one per local factor named in the manifest (the embedded digits record
  the background kind and hues so that evaluation can measure what clusters follow).

The trainer reads this module and nothing else from `preprocessing`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 1
MANIFEST_NAME = "dataset.json"
IMAGE_KEY = "image"
LABEL_KEY = "label"
INDEX_KEY = "index"
FACTOR_PREFIX = "factor/"
UNLABELLED = -1

LABEL_MEANINGS = ("class", "count", "none")


class ManifestError(ValueError):
    """A dataset folder whose manifest is missing, unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One split of a prepared dataset: its record count and shard files (names, not paths)."""

    num_records: int
    files: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The contents of a prepared dataset; the trainer validates it before it reads a shard."""

    name: str
    image_shape: tuple[int, int, int]
    splits: Mapping[str, SplitInfo]
    label_meaning: str
    num_classes: int
    seed: int
    source_fingerprint: str
    factors: Mapping[str, int] = dataclasses.field(default_factory=dict)
    compression: str = ""
    schema_version: int = SCHEMA_VERSION
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        payload = dataclasses.asdict(self)
        payload["image_shape"] = list(self.image_shape)
        payload["splits"] = {
            name: {"num_records": info.num_records, "files": list(info.files)}
            for name, info in sorted(self.splits.items())
        }
        payload["factors"] = dict(sorted(self.factors.items()))
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "Manifest":
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{source}: invalid JSON ({error})") from None
        if not isinstance(payload, dict):
            raise ManifestError(f"{source}: expected a JSON object")

        version = payload.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{source}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION});"
                " prepare the data again with this version of split-data")
        missing = [field.name for field in dataclasses.fields(cls)
                   if field.name not in payload and field.default is dataclasses.MISSING
                   and field.default_factory is dataclasses.MISSING]
        if missing:
            raise ManifestError(f"{source}: missing fields {', '.join(missing)}")

        try:
            splits = {
                name: SplitInfo(int(info["num_records"]), tuple(str(f) for f in info["files"]))
                for name, info in payload["splits"].items()
            }
            manifest = cls(
                name=str(payload["name"]),
                image_shape=tuple(int(v) for v in payload["image_shape"]),
                splits=splits,
                label_meaning=str(payload["label_meaning"]),
                num_classes=int(payload["num_classes"]),
                seed=int(payload["seed"]),
                source_fingerprint=str(payload["source_fingerprint"]),
                factors={str(k): int(v) for k, v in payload.get("factors", {}).items()},
                compression=str(payload.get("compression", "")),
                schema_version=int(version),
                options=dict(payload.get("options", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ManifestError(f"{source}: malformed field ({error})") from None
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ManifestError(f"{source}: image_shape {list(self.image_shape)} is not [height, width, channels]")
        if self.label_meaning not in LABEL_MEANINGS:
            raise ManifestError(f"{source}: label_meaning {self.label_meaning!r} is not one of {LABEL_MEANINGS}")
        if not self.splits:
            raise ManifestError(f"{source}: no splits")
        for name, info in self.splits.items():
            if info.num_records < 0 or (info.num_records > 0 and not info.files):
                raise ManifestError(f"{source}: split {name!r} lists {info.num_records} records in no files")
        if self.compression not in ("", "GZIP"):
            raise ManifestError(f"{source}: compression {self.compression!r} is not '' or 'GZIP'")


def shard_name(split: str, shard: int, num_shards: int, compression: str = "") -> str:
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return f"{split}-{shard:05d}-of-{num_shards:05d}{suffix}"


def join_path(directory: str, name: str) -> str:
    """Join a local or `gs://` folder and a file name (os.path.join would mangle nothing here,
    but keeps backslashes on Windows, which `gs://` must not have)."""
    return directory.rstrip("/") + "/" + name


def manifest_path(directory: str) -> str:
    return join_path(directory, MANIFEST_NAME)


def write_manifest(directory: str, manifest: Manifest) -> str:
    """Write `dataset.json` atomically: a reader sees the old manifest, none, or the whole new one."""
    from preprocessing import storage  # Deferred: only writers and readers of real folders need it.

    manifest.validate(directory)
    path = manifest_path(directory)
    temporary = join_path(directory, f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp")
    with storage.open_file(temporary, "w") as handle:
        handle.write(manifest.to_json())
    storage.rename(temporary, path)
    return path


def read_manifest(directory: str) -> Manifest:
    """Read and validate `DIR/dataset.json`; raise ManifestError naming the path otherwise."""
    from preprocessing import storage

    path = manifest_path(directory)
    if not storage.is_file(path):
        raise ManifestError(
            f"{path}: dataset manifest not found; prepare the data with `split-data NAME --output {directory}`"
            " (the manifest is written last, so a missing one also means an unfinished job)")
    with storage.open_file(path, "r") as handle:
        manifest = Manifest.from_json(handle.read(), source=path)
    for split, info in manifest.splits.items():
        for name in info.files:
            if not storage.is_file(join_path(directory, name)):
                raise ManifestError(f"{path}: shard {name} of split {split!r} not found in {directory}")
    return manifest


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 `[height, width, channels]` image as PNG (deterministic bytes)."""
    from PIL import Image  # Pillow comes with matplotlib and scikit-image.

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected a uint8 [height, width, 1 or 3] image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def serialize_example(image: np.ndarray, label: int, index: int,
                      factors: Mapping[str, int] | None = None) -> bytes:
    """Build one serialized `tf.train.Example` of this schema."""
    import tensorflow as tf

    def int_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(image)])),
        LABEL_KEY: int_feature(label),
        INDEX_KEY: int_feature(index),
    }
    for name, value in sorted((factors or {}).items()):
        feature[FACTOR_PREFIX + name] = int_feature(value)
    # Deterministic: map fields otherwise serialize in an order that can differ between processes.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def feature_spec(factor_names: Sequence[str] = ()) -> dict[str, Any]:
    """Return the `tf.io.parse_example` spec for records with the given factors."""
    import tensorflow as tf

    spec = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
    }
    for name in factor_names:
        spec[FACTOR_PREFIX + name] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def parse_example(serialized: bytes) -> dict[str, Any]:
    """Decode one serialized record into numpy values (for tests and small tools)."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    features = example.features.feature
    record: dict[str, Any] = {
        IMAGE_KEY: decode_png(features[IMAGE_KEY].bytes_list.value[0]),
        LABEL_KEY: int(features[LABEL_KEY].int64_list.value[0]),
        INDEX_KEY: int(features[INDEX_KEY].int64_list.value[0]),
    }
    for key in features:
        if key.startswith(FACTOR_PREFIX):
            record[key] = int(features[key].int64_list.value[0])
    return record


def fingerprint(parts: Sequence[str | bytes]) -> str:
    """Return a short SHA-256 fingerprint of the source description (file names, sizes, options)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]
