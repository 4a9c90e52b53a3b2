"""The one training loop of every model family, under a `tf.distribute` strategy.

The loop owns the strategy, the step counter (the optimizer's `iterations`), checkpoints,
TensorBoard summaries and the progress line; a model only computes its per-example loss terms
(`trainer.models`). Rerunning with the same run directory resumes from the newest checkpoint.

Run directory layout:
    config.json        the resolved experiment config
    run.json           the data folder, image shape and dataset fingerprint the run trained on
    checkpoints/       tf.train.CheckpointManager files (model, optimizer, step)
    tensorboard/       scalars of every loss term and the throughput
    export/            the final weights (`model.weights.h5`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time

import keras
import tensorflow as tf

from preprocessing import schema
from trainer import data
from trainer.config import GMVAE_MODELS, ConfigError, ExperimentConfig
from trainer.models import build_model

_LOGGER = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
RUN_INFO_NAME = "run.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
EXPORT_WEIGHTS_NAME = "model.weights.h5"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished (or resumed and finished) run reports."""

    run_dir: str
    final_step: int
    start_step: int
    images_per_second: float
    losses: dict[str, float]


def select_strategy() -> tf.distribute.Strategy:
    """Pick the strategy from the environment: multi-worker, several GPUs, or the default one."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    return tf.distribute.get_strategy()


def write_text(path: str, text: str) -> None:
    """Write a small text file atomically (temporary name, then rename), local or gs://."""
    temporary = f"{path}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as handle:
        handle.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def read_config(run_dir: str) -> ExperimentConfig:
    path = schema.join_path(run_dir, CONFIG_NAME)
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{path}: run config not found; is {run_dir} a run directory of split-train?")
    with tf.io.gfile.GFile(path) as handle:
        return ExperimentConfig.from_json(handle.read())


def read_run_info(run_dir: str) -> dict:
    path = schema.join_path(run_dir, RUN_INFO_NAME)
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{path}: run information not found; is {run_dir} a run directory of split-train?")
    with tf.io.gfile.GFile(path) as handle:
        return json.loads(handle.read())


def _prepare_run_dir(run_dir: str, config: ExperimentConfig, data_dir: str, manifest: schema.Manifest) -> None:
    """Save the config, or check that a resumed run keeps the model and data it started with."""
    tf.io.gfile.makedirs(run_dir)
    config_path = schema.join_path(run_dir, CONFIG_NAME)
    if tf.io.gfile.exists(config_path):
        previous = read_config(run_dir)
        if previous.model != config.model:
            raise ConfigError(
                f"{config_path}: this run directory holds a {previous.model.model} run with other model"
                " settings; use a new --run_dir or the same settings")
    write_text(config_path, config.to_json())
    run_info = {
        "data_dir": data_dir,
        "dataset": manifest.name,
        "image_shape": list(manifest.image_shape),
        "source_fingerprint": manifest.source_fingerprint,
    }
    write_text(schema.join_path(run_dir, RUN_INFO_NAME), json.dumps(run_info, indent=2) + "\n")


def learning_rate(config: ExperimentConfig):
    """Adam's learning rate: constant, or staircase decay for the GMVAE models."""
    if config.model.model in GMVAE_MODELS:
        return keras.optimizers.schedules.ExponentialDecay(
            config.train.learning_rate, decay_steps=config.train.lr_decay_steps,
            decay_rate=config.train.lr_decay_rate, staircase=True)
    return config.train.learning_rate


def build_training_state(config: ExperimentConfig, image_shape, strategy: tf.distribute.Strategy):
    """Build the model, the optimizer (with its slots) and the checkpoint under `strategy`."""
    with strategy.scope():
        model = build_model(config.model, image_shape)
        optimizer = keras.optimizers.Adam(learning_rate(config))
        # Keras 3 optimizers must create their slots before the first distributed step.
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return model, optimizer, checkpoint


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def train(config: ExperimentConfig, data_dir: str, run_dir: str,
          strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Train `config` on the prepared data in `data_dir`, writing to (or resuming) `run_dir`."""
    config.validate()
    manifest = schema.read_manifest(data_dir)
    config.model.validate_image_shape(manifest.image_shape)
    if manifest.name != config.dataset:
        _LOGGER.warning("preset %s expects dataset %r, %s holds %r", config.preset, config.dataset,
                        data_dir, manifest.name)
    _prepare_run_dir(run_dir, config, data_dir, manifest)

    strategy = strategy or select_strategy()
    model, optimizer, checkpoint = build_training_state(config, manifest.image_shape, strategy)
    manager = tf.train.CheckpointManager(checkpoint, schema.join_path(run_dir, CHECKPOINT_DIR),
                                         max_to_keep=config.train.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        _LOGGER.info("resumed from %s", manager.latest_checkpoint)
    start_step = int(optimizer.iterations.numpy())
    total_steps = config.train.training_steps
    if start_step >= total_steps:
        _LOGGER.info("run %s is already at step %d of %d", run_dir, start_step, total_steps)
        return TrainResult(run_dir, start_step, start_step, 0.0, {})

    dataset = data.training_dataset(data_dir, manifest, config, start_step=start_step)
    batches = iter(strategy.experimental_distribute_dataset(dataset))
    train_step = _make_train_step(model, optimizer, strategy, config)
    writer = tf.summary.create_file_writer(schema.join_path(run_dir, TENSORBOARD_DIR))

    _LOGGER.info("training %s (%s) on %s from step %d to %d, %d replica(s)", config.preset, config.model.model,
                 data_dir, start_step, total_steps, strategy.num_replicas_in_sync)
    step = start_step
    window_start, window_steps, losses = time.perf_counter(), 0, {}
    images_per_second = 0.0
    sums: dict[str, tf.Tensor] = {}
    run_start = time.perf_counter()
    while step < total_steps:
        terms = train_step(next(batches))
        # Sums stay on the device; the host reads them only at log points.
        sums = terms if not sums else {name: sums[name] + value for name, value in terms.items()}
        step += 1
        window_steps += 1
        last = step == total_steps
        if step % config.train.log_every == 0 or last:
            losses = {name: float(value) / window_steps for name, value in sums.items()}
            _check_finite(losses, step)
            elapsed = time.perf_counter() - window_start
            steps_per_second = window_steps / max(elapsed, 1e-9)
            images_per_second = steps_per_second * config.train.batch_size
            with writer.as_default(step=step):
                for name, value in losses.items():
                    tf.summary.scalar(f"loss/{name}", value)
                tf.summary.scalar("throughput/images_per_second", images_per_second)
            _LOGGER.info("step %d/%d (%.0f%%) loss %.1f | %.2f steps/s, %.0f images/s | left %s",
                         step, total_steps, 100.0 * step / total_steps, losses["loss"], steps_per_second,
                         images_per_second, _format_duration((total_steps - step) / steps_per_second))
            window_start, window_steps, sums = time.perf_counter(), 0, {}
        if step % config.train.checkpoint_every == 0 or last:
            path = manager.save(checkpoint_number=step)
            _LOGGER.info("saved checkpoint %s", path)
    writer.flush()
    export_weights(model, run_dir)
    _LOGGER.info("finished %d steps in %s", step - start_step, _format_duration(time.perf_counter() - run_start))
    return TrainResult(run_dir, step, start_step, images_per_second, losses)


def _check_finite(losses: dict[str, float], step: int) -> None:
    for name, value in losses.items():
        if value != value or value in (float("inf"), float("-inf")):
            raise FloatingPointError(
                f"loss term {name} is {value} by step {step}; the newest checkpoint before it is kept")


def _make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                     strategy: tf.distribute.Strategy, config: ExperimentConfig):
    global_batch_size = config.train.batch_size
    run_seed = tf.constant([config.train.seed, 0], tf.int64)

    def replica_step(inputs):
        # Noise differs per step and per replica, and is reproducible from the run seed.
        context = tf.distribute.get_replica_context()
        seed = tf.random.experimental.stateless_fold_in(run_seed, tf.cast(optimizer.iterations, tf.int64))
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(context.replica_id_in_sync_group, tf.int64))
        seed = tf.cast(seed, tf.int32)
        with tf.GradientTape() as tape:
            terms = model.compute_losses(inputs, seed, step=optimizer.iterations, training=True)
            # Averaging over the global batch makes the summed replica gradients the global mean.
            loss = tf.nn.compute_average_loss(terms["loss"], global_batch_size=global_batch_size)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return {name: tf.nn.compute_average_loss(value, global_batch_size=global_batch_size)
                for name, value in terms.items()}

    @tf.function
    def train_step(inputs):
        per_replica = strategy.run(replica_step, args=(inputs,))
        return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for name, value in per_replica.items()}

    return train_step


def export_weights(model: keras.Model, run_dir: str) -> str:
    """Write the final weights to `run_dir/export/model.weights.h5` (copied, so gs:// works)."""
    export_dir = schema.join_path(run_dir, EXPORT_DIR)
    tf.io.gfile.makedirs(export_dir)
    path = schema.join_path(export_dir, EXPORT_WEIGHTS_NAME)
    with tempfile.TemporaryDirectory() as local_dir:
        local_path = os.path.join(local_dir, EXPORT_WEIGHTS_NAME)
        model.save_weights(local_path)
        tf.io.gfile.copy(local_path, path, overwrite=True)
    return path


def load_trained_model(run_dir: str) -> tuple[keras.Model, ExperimentConfig, dict]:
    """Rebuild a run's model from its config and restore its newest checkpoint."""
    config = read_config(run_dir)
    run_info = read_run_info(run_dir)
    model = build_model(config.model, tuple(run_info["image_shape"]))
    checkpoint_dir = schema.join_path(run_dir, CHECKPOINT_DIR)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise ConfigError(f"{checkpoint_dir}: no checkpoint found; train the run first with split-train")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    return model, config, run_info
