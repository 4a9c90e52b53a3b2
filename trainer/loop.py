"""The one training loop of every model family, under a `tf.distribute` strategy.

The loop owns the strategy, the step counter (the optimizer's `iterations`), checkpoints,
TensorBoard summaries and the progress line; a model only computes its per-example loss terms
(`trainer.models`). Rerunning with the same run directory resumes from the newest checkpoint,
whatever the number of devices or workers of the run that wrote it.

Strategies (`select_strategy`): MultiWorkerMirroredStrategy when TF_CONFIG names a cluster,
MirroredStrategy over several GPUs (or configured logical CPU devices), the default strategy
otherwise. The global batch is `--batch_size`, split evenly between the replicas, and every loss
is averaged over the global batch, so the summed replica gradients are the gradient of the
global mean. Noise differs between replicas and steps: its seed is derived from (run seed, step,
replica).

Stopping early:
    SIGTERM            (Kubernetes' preemption notice) the current step finishes, a checkpoint is
                       saved and `TrainingPreempted` is raised; `split-train` exits with status 75.
    non-finite loss    `FloatingPointError` naming the step and the loss term. The losses are
                       checked before every checkpoint and at every log point, and the weights
                       before every checkpoint, so the newest checkpoint on disk is finite.

Run directory layout (written by the chief worker only):
    config.json        the resolved experiment config
    run.json           the data folder, image shape and dataset fingerprint the run trained on
    checkpoints/       tf.train.CheckpointManager files (model, optimizer, step)
    tensorboard/       scalars of every loss term and the throughput
    export/            the final weights (`model.weights.h5`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import tempfile
import threading
import time
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from preprocessing import schema
from trainer import adam, data
from trainer.config import GMVAE_MODELS, ConfigError, ExperimentConfig, TrainConfig
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
    """The outcome of a finished (or resumed and finished) run."""

    run_dir: str
    final_step: int
    start_step: int
    images_per_second: float
    losses: dict[str, float]


class TrainingPreempted(Exception):
    """Training stopped by SIGTERM after saving a checkpoint of its last step. Rerunning resumes there."""

    def __init__(self, step: int, checkpoint_path: str | None):
        self.step = step
        self.checkpoint_path = checkpoint_path
        saved = f"saved {checkpoint_path}" if checkpoint_path else "the chief worker saved its checkpoint"
        super().__init__(f"stopped by SIGTERM after step {step}; {saved}; rerun the same command to resume")


def _cluster_from_tf_config() -> dict:
    """Return the `cluster` of the TF_CONFIG environment variable, or {} when it is unset."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {text[:80]!r}")
    return payload.get("cluster") or {}


def _mirrored_devices(count: int) -> list[str]:
    """Return the names of the first `count` GPUs (0: all), or of logical CPU devices without GPUs."""
    devices = tf.config.list_logical_devices("GPU")
    kind = "GPU"
    if not devices:
        devices = tf.config.list_logical_devices("CPU")
        kind = "logical CPU"
    if count > len(devices):
        raise ConfigError(
            f"--devices {count} but only {len(devices)} {kind} device(s) are visible; on a machine without"
            " GPUs, configure logical CPU devices before TensorFlow starts")
    return [device.name for device in devices[:count or len(devices)]]


def select_strategy(config: TrainConfig | None = None) -> tf.distribute.Strategy:
    """Return the strategy named by `config.strategy`; "auto" picks one from the environment.

    "auto" is multi_worker when TF_CONFIG names a cluster, mirrored when more than one GPU is
    used (`--devices`, or every visible GPU), and the default strategy otherwise. Call this
    before any other TensorFlow operation: MultiWorkerMirroredStrategy configures the runtime.
    """
    config = config or TrainConfig()
    kind = config.strategy
    if kind == "auto":
        if _cluster_from_tf_config():
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1 and config.devices != 1:
            kind = "mirrored"
        else:
            kind = "default"

    if kind == "multi_worker":
        if config.devices:
            raise ConfigError(
                "--devices applies to --strategy mirrored; a multi-worker run uses every GPU of each worker"
                " (limit them with CUDA_VISIBLE_DEVICES)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(_mirrored_devices(config.devices))
    if config.devices > 1:
        raise ConfigError(
            f"--devices {config.devices} needs several GPUs, or --strategy mirrored with logical CPU devices")
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
                f"{config_path}: this run directory contains a {previous.model.model} run with other model"
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


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Set Keras' global dtype policy inside the block only, so nothing leaks into later models."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_training_state(config: ExperimentConfig, image_shape, strategy: tf.distribute.Strategy):
    """Build the model, the optimizer (with its slots) and the checkpoint under `strategy`.

    The layers take `--mixed_precision`'s dtype policy; variables are float32 under every policy,
    so a checkpoint restores into a model of either precision.
    """
    clipnorm = 0.0 if _clips_in_train_step(config, strategy) else config.train.clipnorm
    with strategy.scope():
        with _dtype_policy(config.train.mixed_precision):
            model = build_model(config.model, image_shape)
        optimizer = adam.FusedAdam(learning_rate(config), clipnorm=clipnorm or None)
        # Keras 3 optimizers must create their slots before the first distributed step.
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return model, optimizer, checkpoint


def _clips_in_train_step(config: ExperimentConfig, strategy: tf.distribute.Strategy) -> bool:
    """Return whether the train step, not Adam, clips the gradients (`--clipnorm` on several replicas).

    Keras 3.15 clips each replica's gradient before it sums them (`BaseOptimizer.apply`), which
    differs from clipping the global gradient that one device computes.
    """
    return config.train.clipnorm > 0 and strategy.num_replicas_in_sync > 1


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def train(config: ExperimentConfig, data_dir: str, run_dir: str,
          strategy: tf.distribute.Strategy | None = None) -> TrainResult:
    """Train `config` on the prepared data in `data_dir`, writing to (or resuming) `run_dir`.

    Raises `TrainingPreempted` after a SIGTERM (with a checkpoint saved) and `FloatingPointError`
    on a non-finite loss or weight (without saving one).
    """
    config.validate()
    strategy = strategy or select_strategy(config.train)
    manifest = schema.read_manifest(data_dir)
    config.model.validate_image_shape(manifest.image_shape)
    if manifest.name != config.dataset:
        _LOGGER.warning("preset %s expects dataset %r, %s holds %r", config.preset, config.dataset,
                        data_dir, manifest.name)
    if config.model.cluster_kl == "batch" and strategy.num_replicas_in_sync > 1:
        _LOGGER.warning("--cluster_kl batch averages the cluster assignments over each replica's %d examples, not"
                        " the global batch of %d", config.train.batch_size // strategy.num_replicas_in_sync,
                        config.train.batch_size)
    is_chief = strategy.extended.should_checkpoint
    if is_chief:
        _prepare_run_dir(run_dir, config, data_dir, manifest)

    model, optimizer, checkpoint = build_training_state(config, manifest.image_shape, strategy)
    checkpoint_dir = schema.join_path(run_dir, CHECKPOINT_DIR)
    # Every worker restores the chief's newest checkpoint; variables are saved once per
    # MirroredVariable, so any device count reads what any other wrote.
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        _LOGGER.info("resumed from %s", latest)
    start_step = int(optimizer.iterations.numpy())
    total_steps = config.train.training_steps
    if start_step >= total_steps:
        _LOGGER.info("run %s is already at step %d of %d", run_dir, start_step, total_steps)
        return TrainResult(run_dir, start_step, start_step, 0.0, {})

    # The input pipeline is not checkpointed: a resumed run reseeds its shuffle and views from
    # the start step (`data.training_dataset`), which saves writing the shuffle buffer each time.
    dataset = data.training_dataset(data_dir, manifest, config, start_step=start_step)
    batches = iter(strategy.experimental_distribute_dataset(dataset))
    if strategy.extended.should_save_summary:
        writer = tf.summary.create_file_writer(schema.join_path(run_dir, TENSORBOARD_DIR))
    else:
        writer = tf.summary.create_noop_writer()
    saver = _CheckpointSaver(checkpoint, checkpoint_dir, config.train.keep_checkpoints, is_chief)
    training_loop = _TrainingLoop(config, strategy, model, optimizer, saver, writer)

    _LOGGER.info("training %s (%s) on %s from step %d to %d: %d replica(s), %s, %s%s", config.preset,
                 config.model.model, data_dir, start_step, total_steps, strategy.num_replicas_in_sync,
                 type(strategy).__name__, config.train.mixed_precision,
                 ", XLA" if config.train.jit_compile else "")
    run_start = time.perf_counter()
    with _SigtermFlag() as sigterm:
        images_per_second, losses = training_loop.run(batches, start_step, sigterm)
    writer.flush()
    if is_chief:
        export_weights(model, run_dir)
    _LOGGER.info("finished %d steps in %s", total_steps - start_step,
                 _format_duration(time.perf_counter() - run_start))
    return TrainResult(run_dir, total_steps, start_step, images_per_second, losses)


class _SigtermFlag:
    """Record SIGTERM instead of dying at once, while the block runs.

    Kubernetes sends SIGTERM to preempt a pod and SIGKILL after the grace period (30 s by
    default), which leaves time to finish the current step and save a checkpoint. Python runs
    signal handlers in the main thread only, so elsewhere SIGTERM keeps its previous effect.

    NOTE: the flag is read between steps, so a SIGTERM during the first step's tracing (or XLA
    compilation) is acted on only after it, which may exceed the grace period on a large model.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._installed = False

    def _record(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def __enter__(self) -> "_SigtermFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._record)
            self._installed = True
        else:
            _LOGGER.warning("training outside the main thread: SIGTERM will stop it without a checkpoint")
        return self

    def __exit__(self, *exception_info) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)


class _StopAgreement:
    """Decide after each step whether training stops now, the same way on every worker.

    One worker decides from its own SIGTERM flag. Several workers sum their flags with an
    all-reduce every step. Each reads the sum one step late, so the host queues the next step
    before it waits. Every worker reads the same sum after the same step, so they stop together
    and no collective operation is left waiting for a worker that has exited.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self._strategy = strategy
        self._multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._pending_votes: tf.Tensor | None = None
        self._count_votes = tf.function(self._sum_flags)

    def _sum_flags(self, requested: tf.Tensor) -> tf.Tensor:
        votes = self._strategy.run(lambda flag: tf.cast(flag, tf.float32), args=(requested,))
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)

    def should_stop(self, requested: bool) -> bool:
        if not self._multi_worker:
            return requested
        previous = self._pending_votes
        self._pending_votes = self._count_votes(tf.constant(requested))
        return previous is not None and float(previous) > 0


class _CheckpointSaver:
    """Save checkpoints: the chief into the run directory, other workers into a deleted temporary one.

    Under MultiWorkerMirroredStrategy every worker must take part in a save, but only the
    chief's files are kept, so that workers do not overwrite each other's.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int, is_chief: bool):
        self._checkpoint = checkpoint
        self._is_chief = is_chief
        self.directory = directory
        self._manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep) if is_chief else None

    def save(self, step: int) -> str | None:
        """Save the state after `step`; return the chief's checkpoint path (None on other workers)."""
        if self._is_chief:
            return self._manager.save(checkpoint_number=step)
        scratch = tempfile.mkdtemp(prefix="split-train-worker-")
        try:
            tf.train.CheckpointManager(self._checkpoint, scratch, max_to_keep=1).save(checkpoint_number=step)
        finally:
            tf.io.gfile.rmtree(scratch)
        return None


class _TrainingLoop:
    """The steps of one run: train, check losses, log, checkpoint, and stop on SIGTERM."""

    def __init__(self, config: ExperimentConfig, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, saver: _CheckpointSaver, writer):
        self.config = config
        self.model = model
        self.saver = saver
        self.writer = writer
        self.train_step = _make_train_step(model, optimizer, strategy, config)
        self.stop_agreement = _StopAgreement(strategy)

    def run(self, batches, start_step: int, sigterm: _SigtermFlag) -> tuple[float, dict[str, float]]:
        """Train from `start_step` to the configured step; return the last images/s and mean losses."""
        train = self.config.train
        total_steps = train.training_steps
        step = start_step
        # The reduced loss terms of the steps since the last log point stay on the device until
        # a log or checkpoint reads them, so the host does not wait for every step.
        window: list[dict[str, tf.Tensor]] = []
        window_start = time.perf_counter()
        images_per_second, losses = 0.0, {}
        path = None
        while step < total_steps:
            window.append(self.train_step(next(batches)))
            step += 1
            if step == start_step + 1:
                # Reading the loss waits for the step to finish, so the time includes it.
                float(window[0]["loss"])
                _LOGGER.info("first step (tracing%s) took %.1f s", " and XLA compilation" if train.jit_compile
                             else "", time.perf_counter() - window_start)
            stopping = self.stop_agreement.should_stop(sigterm.requested)
            last = step == total_steps

            if step % train.log_every == 0 or last:
                values = self._checked_window(window, step)
                elapsed = time.perf_counter() - window_start
                steps_per_second = len(window) / max(elapsed, 1e-9)
                images_per_second = steps_per_second * train.batch_size
                losses = {name: float(series.mean()) for name, series in values.items()}
                self._log(step, losses, steps_per_second, images_per_second)
                window, window_start = [], time.perf_counter()

            if step % train.checkpoint_every == 0 or last or stopping:
                path = self._save(window, step)
            if stopping and not last:
                _LOGGER.warning("SIGTERM received: stopped after step %d with a checkpoint", step)
                self.writer.flush()
                raise TrainingPreempted(step, path)
        return images_per_second, losses

    def _checked_window(self, window: list[dict[str, tf.Tensor]], step: int) -> dict[str, np.ndarray]:
        """Read the window's loss terms (`[steps]` each) and raise if any is not finite."""
        if not window:
            return {}
        values = {name: tf.stack([terms[name] for terms in window]).numpy() for name in window[0]}
        problem = describe_non_finite(values, first_step=step - len(window) + 1)
        if problem:
            raise FloatingPointError(f"{problem}; stopped without saving, {self._newest_checkpoint()}")
        return values

    def _save(self, window: list[dict[str, tf.Tensor]], step: int) -> str | None:
        """Save a checkpoint after checking the unread losses and every weight; return its path."""
        self._checked_window(window, step)
        if not _all_finite(self.model.variables):
            raise FloatingPointError(
                f"a weight is not finite after step {step} although every loss term is; stopped without"
                f" saving, {self._newest_checkpoint()}")
        path = self.saver.save(step)
        if path:
            _LOGGER.info("saved checkpoint %s", path)
        return path

    def _newest_checkpoint(self) -> str:
        newest = tf.train.latest_checkpoint(self.saver.directory)
        return f"the newest checkpoint is {newest}" if newest else "no checkpoint exists yet"

    def _log(self, step: int, losses: dict[str, float], steps_per_second: float, images_per_second: float) -> None:
        total_steps = self.config.train.training_steps
        with self.writer.as_default(step=step):
            for name, value in losses.items():
                tf.summary.scalar(f"loss/{name}", value)
            tf.summary.scalar("throughput/images_per_second", images_per_second)
        _LOGGER.info("step %d/%d (%.0f%%) loss %.1f | %.2f steps/s, %.0f images/s | left %s",
                     step, total_steps, 100.0 * step / total_steps, losses["loss"], steps_per_second,
                     images_per_second, _format_duration((total_steps - step) / steps_per_second))


def describe_non_finite(values: dict[str, np.ndarray], first_step: int) -> str | None:
    """Name the first step and the loss terms that are NaN or infinite there, or return None.

    `values` maps each loss term to its values `[steps]` for the steps from `first_step` on.
    """
    finite_steps = np.all([np.isfinite(series) for series in values.values()], axis=0)
    if finite_steps.all():
        return None
    index = int(np.argmin(finite_steps))
    bad_terms = [name for name, series in values.items() if not np.isfinite(series[index])]
    # `loss` is computed from the other terms; name those when one of them is the cause.
    named = [name for name in bad_terms if name != "loss"] or bad_terms
    described = ", ".join(f"loss term {name} is {values[name][index]}" for name in named)
    return f"{described} at step {first_step + index}"


def _all_finite(variables) -> bool:
    floating = [variable for variable in variables if tf.as_dtype(variable.dtype).is_floating]
    return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(variable)) for variable in floating]))


def replica_seed(run_seed: int, step: tf.Tensor) -> tf.Tensor:
    """Return this replica's stateless seed `[2]` int32 for `step`, derived from (run seed, step, replica).

    Call in a replica context (inside `strategy.run`); the replica id counts across workers.
    """
    context = tf.distribute.get_replica_context()
    seed = tf.random.experimental.stateless_fold_in(tf.constant([run_seed, 0], tf.int64), tf.cast(step, tf.int64))
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(context.replica_id_in_sync_group, tf.int64))
    return tf.cast(seed, tf.int32)


def _make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                     strategy: tf.distribute.Strategy, config: ExperimentConfig):
    """Return `train_step(global_batch) -> {term: mean over the global batch}`, a tf.function.

    With `--jit_compile`, XLA compiles each replica's forward and backward pass; the gradient
    all-reduce and Adam's update run outside it because cross-replica calls cannot be compiled.
    """
    global_batch_size = config.train.batch_size
    clip_in_step = _clips_in_train_step(config, strategy)

    @tf.function(jit_compile=config.train.jit_compile)
    def compute_gradients(inputs, seed, step):
        with tf.GradientTape() as tape:
            terms = model.compute_losses(inputs, seed, step=step, training=True)
            # Averaging over the global batch makes the summed replica gradients the global mean.
            loss = tf.nn.compute_average_loss(terms["loss"], global_batch_size=global_batch_size)
        return terms, tape.gradient(loss, model.trainable_variables)

    # The terms travel as one stacked vector, so that reducing them is a single all-reduce; the
    # names are recorded while the replica step is traced.
    term_names: list[str] = []

    def replica_step(inputs):
        step = tf.convert_to_tensor(optimizer.iterations)
        terms, gradients = compute_gradients(inputs, replica_seed(config.train.seed, step), step)
        if clip_in_step:
            gradients = _clip_global_gradients(gradients, config.train.clipnorm, strategy.num_replicas_in_sync)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        term_names[:] = list(terms)
        return tf.stack([tf.nn.compute_average_loss(value, global_batch_size=global_batch_size)
                         for value in terms.values()])

    @tf.function
    def train_step(inputs):
        per_replica = strategy.run(replica_step, args=(inputs,))
        totals = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return dict(zip(term_names, tf.unstack(totals, num=len(term_names))))

    return train_step


def _clip_global_gradients(gradients: list, clipnorm: float, num_replicas: int) -> list:
    """Clip each variable's summed gradient to norm `clipnorm`; return this replica's share of it.

    Call in a replica context. Adam sums the replicas' gradients again, so each replica passes
    on 1/`num_replicas` of the clipped sum.
    NOTE: this costs a second all-reduce of the gradients, paid only when clipping on several replicas.
    """
    present = [index for index, gradient in enumerate(gradients) if gradient is not None]
    summed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, [gradients[index] for index in present])
    clipped = list(gradients)
    for index, gradient in zip(present, summed):
        clipped[index] = tf.clip_by_norm(gradient, clipnorm) / num_replicas
    return clipped


def gather_predictions(strategy: tf.distribute.Strategy, predict: Callable[[dict], dict],
                       dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    """Run `predict` on every batch of `dataset` on all replicas and concatenate what it returns.

    Metrics over a whole split (clustering accuracy, NMI, counting accuracy) are computed on
    these gathered predictions, never averaged over replicas. On one worker the rows keep the
    dataset's order. Across workers, each worker reads its own shard of the data, so `predict`
    should return the labels beside the predictions.

    Args:
      predict: maps a per-replica batch to a dict of tensors with a leading batch axis.
      dataset: batches of the global batch size (a short last batch is fine).
    Returns:
      Each entry of `predict`'s dict as one numpy array `[num_examples, ...]`.
    """

    # NOTE: tested with the default strategy and MirroredStrategy only, not across workers.
    @tf.function
    def gathered(batch):
        outputs = strategy.run(predict, args=(batch,))
        return tf.nest.map_structure(lambda value: strategy.gather(value, axis=0), outputs)

    parts: dict[str, list[np.ndarray]] = {}
    for batch in strategy.experimental_distribute_dataset(dataset):
        for name, value in gathered(batch).items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


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
    checkpoint_dir = schema.join_path(run_dir, CHECKPOINT_DIR)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise ConfigError(f"{checkpoint_dir}: no checkpoint found; train the run first with split-train")

    # Restore through the optimizer as training does: TensorFlow's checkpoint graph does not see
    # Keras 3 layers held in Python lists, but the optimizer tracks every trainable variable.
    model, _, checkpoint = build_training_state(config, tuple(run_info["image_shape"]), tf.distribute.get_strategy())
    checkpoint.restore(latest).expect_partial()
    return model, config, run_info
