"""The input pipeline: prepared shards to batches of `concat([x, x_hat])`.

Images are decoded from PNG, scaled to the model family's range ([-1, 1] for the VAE family,
[0, 1] for the SPAIR family), batched, and the auxiliary view is computed on whole batches with
a stateless seed derived from (run seed, batch number), so that a run is reproducible and no
per-image Python work runs in the pipeline.
"""

from __future__ import annotations

import tensorflow as tf

from preprocessing import schema
from trainer import augment
from trainer.config import LOCAL_PATH_MODELS, SPAIR_MODELS, ExperimentConfig


CACHE_LIMIT_BYTES = 2 * 1024**3


class DataError(ValueError):
    """A dataset that does not fit the experiment."""


def split_files(data_dir: str, manifest: schema.Manifest, split: str) -> list[str]:
    if split not in manifest.splits:
        raise DataError(f"{schema.manifest_path(data_dir)}: no split {split!r} (it has {', '.join(manifest.splits)})")
    info = manifest.splits[split]
    if info.num_records == 0:
        raise DataError(f"{schema.manifest_path(data_dir)}: split {split!r} is empty")
    return [schema.join_path(data_dir, name) for name in info.files]


def read_records(data_dir: str, manifest: schema.Manifest, split: str, stride: int = 1) -> tf.data.Dataset:
    """Return a dataset of parsed records: `image` uint8 `[height, width, channels]`, `label`,
    `index` and one `factor/NAME` per manifest factor, in shard order.

    With `stride` > 1 only every stride-th record is parsed, an evenly spread subset of the split.
    """
    files = split_files(data_dir, manifest, split)
    spec = schema.feature_spec(sorted(manifest.factors))
    shape = manifest.image_shape

    def parse(serialized):
        record = tf.io.parse_single_example(serialized, spec)
        image = tf.io.decode_png(record[schema.IMAGE_KEY], channels=shape[-1])
        record[schema.IMAGE_KEY] = tf.ensure_shape(image, shape)
        return record

    records = tf.data.TFRecordDataset(files, compression_type=manifest.compression or None,
                                      num_parallel_reads=min(len(files), 4))
    if stride > 1:
        records = records.shard(stride, 0)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def to_signed_unit(images: tf.Tensor) -> tf.Tensor:
    """Scale uint8 images to float32 in [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_model_range(images: tf.Tensor, config: ExperimentConfig) -> tf.Tensor:
    """Scale uint8 images to float32 in the model's range: [0, 1] for the SPAIR family, else [-1, 1]."""
    if config.model.model in SPAIR_MODELS:
        return tf.cast(images, tf.float32) / 255.0
    return to_signed_unit(images)


def from_signed_unit(images):
    """Scale [-1, 1] images (tensors or arrays) to [0, 1] for display."""
    return (images + 1.0) / 2.0


def with_view(images: tf.Tensor, config: ExperimentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Return the model input for a batch of images in the model's range: `x`, or `concat([x, x_hat])`."""
    if config.model.model not in LOCAL_PATH_MODELS:
        return images
    view = augment.make_view(images, config.model.augmentation, config.model.patch_size, seed)
    return tf.concat([images, view], axis=-1)


def training_dataset(data_dir: str, manifest: schema.Manifest, config: ExperimentConfig,
                     start_step: int = 0, split: str = "train") -> tf.data.Dataset:
    """Return an endless dataset of model inputs `[batch_size, height, width, input_channels]`.

    The shuffle order and the views depend on the run seed and on `start_step`, so a resumed run
    continues with fresh batches instead of replaying the first ones.
    """
    batch_size = config.train.batch_size
    seed = config.train.seed
    num_records = manifest.splits[split].num_records if split in manifest.splits else 0
    if num_records and num_records < batch_size:
        raise DataError(f"{data_dir}: split {split!r} has {num_records} records, fewer than --batch_size {batch_size}")

    images = read_records(data_dir, manifest, split).map(
        lambda record: record[schema.IMAGE_KEY], num_parallel_calls=tf.data.AUTOTUNE)
    # Decoded images stay in memory when they fit a modest budget; larger sets (full SVHN or
    # CelebA) are decoded again each epoch, which the parallel map keeps off the critical path.
    image_bytes = num_records * manifest.image_shape[0] * manifest.image_shape[1] * manifest.image_shape[2]
    if image_bytes <= CACHE_LIMIT_BYTES:
        images = images.cache()
    images = images.repeat()
    images = images.shuffle(min(config.train.shuffle_buffer, max(num_records, 1)), seed=seed + start_step)
    batches = images.batch(batch_size, drop_remainder=True).map(lambda batch: to_model_range(batch, config))

    base_seed = tf.constant([seed, start_step], tf.int64)

    def add_view(batch_number, batch):
        batch_seed = tf.random.experimental.stateless_fold_in(base_seed, batch_number)
        return with_view(batch, config, tf.cast(batch_seed, tf.int32))

    batches = batches.enumerate().map(add_view, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def evaluation_batches(data_dir: str, manifest: schema.Manifest, config: ExperimentConfig, split: str,
                       batch_size: int = 256, seed: int = 0, stride: int = 1) -> tf.data.Dataset:
    """Return batches of whole records with `inputs` added (model input with a fixed-seed view)."""
    base_seed = tf.constant([seed, 1], tf.int64)

    def add_inputs(batch_number, records):
        batch_seed = tf.cast(tf.random.experimental.stateless_fold_in(base_seed, batch_number), tf.int32)
        records = dict(records)
        records["inputs"] = with_view(to_model_range(records[schema.IMAGE_KEY], config), config, batch_seed)
        return records

    records = read_records(data_dir, manifest, split, stride=stride).batch(batch_size)
    return records.enumerate().map(add_inputs).prefetch(tf.data.AUTOTUNE)
