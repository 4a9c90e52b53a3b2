"""Subprocess side of tests/trainer/test_distributed.py: runs that need a fresh TensorFlow.

Logical CPU devices and MultiWorkerMirroredStrategy must be configured before TensorFlow
starts, so each check runs in its own process and writes what it measured into an output
folder (`results.json` plus `.npz` arrays) for the test to assert on.

    python tests/trainer/distributed_worker.py replicas --data DIR --output DIR --checkpoint PREFIX
    python tests/trainer/distributed_worker.py worker --data DIR --run_dir DIR --steps N --output FILE.npz
    python tests/trainer/distributed_worker.py cluster --data DIR --run_dir DIR --output DIR [--resume]

`cluster` starts two `worker` processes under MultiWorkerMirroredStrategy on 127.0.0.1. It
expects to run in a private network namespace (`unshare --net`), because TensorFlow's gRPC
server listens on every interface, and brings the namespace's loopback interface up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Iterator

LOGICAL_CPU_DEVICES = 2
GLOBAL_BATCH_SIZE = 16
EQUIVALENCE_STEPS = 2
EQUIVALENCE_LEARNING_RATE = 1e-4
EQUIVALENCE_CLIPNORM = 1.0
# Fixed initial weights. With random ones, 3 draws in 16 gave some lggmvae weights a gradient so
# close to zero that the rounding of the replica sums changed it. Adam then moved those weights
# differently on one and two replicas, by up to the learning rate.
EQUIVALENCE_SEED = 0
NUM_WORKERS = 2
# SIGTERM stops the first cluster run after a few of its PREEMPTED_RUN_STEPS steps, long before
# its end. The second run resumes it and trains RESUMED_STEPS more.
PREEMPTED_RUN_STEPS = 200
SIGTERM_AFTER_STEP = 2
RESUMED_STEPS = 2
CLUSTER_TIMEOUT_SECONDS = 240


def tiny_config(model: str, **overrides):
    """Return a small digits config: batch 16, patch 4, a few steps, the per-example cluster KL.

    The batch cluster KL of the digits presets averages per replica, so it is not expected to
    match one device.
    """
    from trainer import config as config_module, presets

    values = {"model": model, "training_steps": 4, "batch_size": GLOBAL_BATCH_SIZE, "log_every": 2,
              "checkpoint_every": 2, "patch_size": 4, "learning_rate": 1e-3,
              "cluster_kl": "example"}
    values.update(overrides)
    return config_module.override(presets.get_preset("digits-split-gmvae"), values)


def state_arrays(model, optimizer) -> dict:
    """Return the model weights, the optimizer variables and the step as named numpy arrays."""
    arrays = {f"weight_{index}": value for index, value in enumerate(model.get_weights())}
    for index, variable in enumerate(optimizer.variables):
        arrays[f"optimizer_{index}"] = variable.numpy()
    arrays["iterations"] = optimizer.iterations.numpy()
    return arrays


@contextlib.contextmanager
def fixed_noise() -> Iterator[None]:
    """Replace the VAE family's sampling and dropout by their deterministic values, then restore them.

    Latent samples become the posterior means, the Gumbel-softmax sample becomes the softmax of
    the logits at the same temperature, and dropout keeps every unit.
    """
    import tensorflow as tf
    from trainer.models import vae

    originals = (vae._gaussian_sample, vae.relaxed_one_hot, vae._dropout)
    vae._gaussian_sample = lambda mean, sigma, seed: mean
    vae.relaxed_one_hot = lambda logits, temperature, seed: tf.nn.softmax(logits / temperature, axis=-1)
    vae._dropout = lambda values, seed, training: values
    try:
        yield
    finally:
        vae._gaussian_sample, vae.relaxed_one_hot, vae._dropout = originals


def configure_logical_cpus(count: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def _first_batch(config, data_dir: str):
    from preprocessing import schema
    from trainer import data

    manifest = schema.read_manifest(data_dir)
    return manifest, next(iter(data.training_dataset(data_dir, manifest, config)))


@dataclasses.dataclass
class TrainedPair:
    """One model trained on 1 replica and on 2 from the same initial weights and batches."""

    config: object
    manifest: object
    single: tuple  # (model, optimizer, checkpoint) under the default strategy
    mirrored: tuple  # the same under MirroredStrategy over two logical CPU devices
    results: dict


def _train_pair(model_name: str, data_dir: str, single, mirrored, clipnorm: float = 0.0) -> TrainedPair:
    """Train the same initial weights on the same global batch on 1 and 2 replicas, noise fixed."""
    import keras
    import numpy as np
    import tensorflow as tf
    from trainer import loop

    keras.utils.set_random_seed(EQUIVALENCE_SEED)
    # The preset's learning rate: Adam's first steps move every weight by about the learning rate,
    # and weights whose gradients are near Adam's epsilon move by a fraction of it that float32
    # rounding of the replica sums can change.
    config = tiny_config(model_name, learning_rate=EQUIVALENCE_LEARNING_RATE, clipnorm=clipnorm)
    manifest, batch = _first_batch(config, data_dir)
    with fixed_noise():
        state_1 = loop.build_training_state(config, manifest.image_shape, single)
        state_2 = loop.build_training_state(config, manifest.image_shape, mirrored)
        initial_weights = state_1[0].get_weights()
        state_2[0].set_weights(initial_weights)
        step_1 = loop._make_train_step(state_1[0], state_1[1], single, config)
        step_2 = loop._make_train_step(state_2[0], state_2[1], mirrored, config)
        distributed_batch = next(iter(mirrored.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(batch))))
        losses_1, losses_2 = [], []
        for _ in range(EQUIVALENCE_STEPS):
            losses_1.append({name: float(value) for name, value in step_1(batch).items()})
            losses_2.append({name: float(value) for name, value in step_2(distributed_batch).items()})
    weights_1, weights_2 = state_1[0].get_weights(), state_2[0].get_weights()
    results = {
        "losses_one_replica": losses_1,
        "losses_two_replicas": losses_2,
        "max_weight_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(weights_1, weights_2)),
        "max_weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(weights_1, initial_weights)),
        "replica_batch_sizes": [int(part.shape[0])
                                for part in mirrored.experimental_local_results(distributed_batch)],
        "iterations": [int(state_1[1].iterations.numpy()), int(state_2[1].iterations.numpy())],
        "clipnorm": clipnorm,
    }
    return TrainedPair(config, manifest, state_1, state_2, results)


def _replica_noise(pair: TrainedPair, data_dir: str, mirrored) -> dict:
    """Run the loss on the same examples on both replicas, with the loop's per-replica seeds."""
    import tensorflow as tf
    from trainer import loop

    model = pair.mirrored[0]
    _, batch = _first_batch(pair.config, data_dir)
    examples = batch[:GLOBAL_BATCH_SIZE // LOGICAL_CPU_DEVICES]
    same_examples = mirrored.experimental_distribute_values_from_function(lambda context: examples)

    @tf.function
    def replica_outputs(inputs, step):
        def per_replica(replica_inputs):
            seed = loop.replica_seed(pair.config.train.seed, step)
            return {"seed": seed, "loss": model.compute_losses(replica_inputs, seed, step=step)["loss"]}

        return mirrored.run(per_replica, args=(inputs,))

    results = {}
    for step in (0, 1):
        outputs = replica_outputs(same_examples, tf.constant(step, tf.int64))
        results[f"step_{step}"] = {
            name: [part.numpy().tolist() for part in mirrored.experimental_local_results(value)]
            for name, value in outputs.items()
        }
    return results


def _gathered_clusters(pair: TrainedPair, data_dir: str, single, mirrored) -> dict:
    """Predict the test split's clusters on 1 and 2 replicas from the same weights, then score both."""
    import numpy as np
    from preprocessing import schema
    from trainer import data, loop, metrics

    model_1, model_2 = pair.single[0], pair.mirrored[0]
    # Perturbed weights spread the clusters beyond the few that a barely trained model uses,
    # so that the accuracy depends on every prediction.
    weights = [value + 0.05 * np.random.default_rng(index).standard_normal(value.shape).astype(value.dtype)
               for index, value in enumerate(model_1.get_weights())]
    model_1.set_weights(weights)
    model_2.set_weights(weights)
    # 30 does not divide the 80 test images, so the last batch is short and splits unevenly.
    batches = data.evaluation_batches(data_dir, pair.manifest, pair.config, "test", batch_size=30)
    results = {}
    for name, model, strategy in (("one_replica", model_1, single), ("two_replicas", model_2, mirrored)):
        def predict(batch, model=model):
            return {"cluster": model.encode(batch["inputs"])["cluster"], "label": batch[schema.LABEL_KEY]}

        predictions = loop.gather_predictions(strategy, predict, batches)
        results[name] = {
            "clusters": predictions["cluster"].tolist(),
            "labels": predictions["label"].tolist(),
            "hungarian_accuracy": metrics.hungarian_accuracy(predictions["cluster"], predictions["label"]),
            "majority_accuracy": metrics.majority_mapping_accuracy(predictions["cluster"], predictions["label"]),
        }
    return results


def _checkpoints_across_replicas(pair: TrainedPair, one_replica_checkpoint: str, output: pathlib.Path) -> dict:
    """Write a 2-replica checkpoint for the test to restore on 1, then restore its 1-replica one on 2."""
    import numpy as np
    import tensorflow as tf

    model, optimizer, checkpoint = pair.mirrored
    manager = tf.train.CheckpointManager(checkpoint, str(output / "two_replica_checkpoints"), max_to_keep=1)
    path = manager.save(checkpoint_number=int(optimizer.iterations.numpy()))
    np.savez(output / "written_on_two.npz", **state_arrays(model, optimizer))

    checkpoint.restore(one_replica_checkpoint).assert_existing_objects_matched()
    np.savez(output / "restored_on_two.npz", **state_arrays(model, optimizer))
    copies_agree = all(
        all(np.array_equal(copy.numpy(), variable.value.values[0].numpy()) for copy in variable.value.values)
        for variable in model.weights)
    return {"replica_copies_agree_after_restore": copies_agree, "two_replica_checkpoint": path}


def _train_run_on_two_replicas(data_dir: str, mirrored, output: pathlib.Path) -> dict:
    """Run the whole loop on 2 replicas for 2 steps, for the test to resume on 1."""
    from trainer import loop

    run_dir = output / "two_replica_run"
    result = loop.train(tiny_config("lggmvae", training_steps=2), data_dir, str(run_dir), strategy=mirrored)
    return {"run_dir": str(run_dir), "final_step": result.final_step}


def run_replica_checks(args: argparse.Namespace) -> None:
    configure_logical_cpus(LOGICAL_CPU_DEVICES)
    import tensorflow as tf

    output = pathlib.Path(args.output)
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    single = tf.distribute.get_strategy()
    mirrored = tf.distribute.MirroredStrategy(cpus)
    results = {"num_replicas": mirrored.num_replicas_in_sync, "equivalence": {}, "seconds": {}}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        results["seconds"][name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    # lgvae clips its gradients as the SPAIR presets do, which on several replicas the train step
    # does itself. lggmvae leaves them unclipped, which is Adam's plain path.
    results["equivalence"]["lgvae"] = _train_pair("lgvae", args.data, single, mirrored,
                                                  clipnorm=EQUIVALENCE_CLIPNORM).results
    lap("lgvae")
    pair = _train_pair("lggmvae", args.data, single, mirrored)
    results["equivalence"]["lggmvae"] = pair.results
    lap("lggmvae")
    # The checkpoint check runs before the others change the weights.
    results["checkpoints"] = _checkpoints_across_replicas(pair, args.checkpoint, output)
    lap("checkpoints")
    results["noise"] = _replica_noise(pair, args.data, mirrored)
    lap("noise")
    results["clusters"] = _gathered_clusters(pair, args.data, single, mirrored)
    lap("clusters")
    results["loop"] = _train_run_on_two_replicas(args.data, mirrored, output)
    lap("loop")
    (output / "results.json").write_text(json.dumps(results))


def run_worker(args: argparse.Namespace) -> int:
    """Train under this process's TF_CONFIG; save this worker's final state, preempted or not."""
    import numpy as np
    from trainer import cli, loop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    built = {}
    build_training_state = loop.build_training_state

    def keep_state(*arguments, **keywords):
        built["state"] = build_training_state(*arguments, **keywords)
        return built["state"]

    loop.build_training_state = keep_state
    try:
        loop.train(tiny_config("lggmvae", training_steps=args.steps), args.data, args.run_dir)
    except loop.TrainingPreempted as stop:
        logging.warning("%s", stop)
        status = cli.EXIT_PREEMPTED
    else:
        status = 0
    model, optimizer, _ = built["state"]
    np.savez(args.output, **state_arrays(model, optimizer))
    return status


def _bring_loopback_up() -> None:
    """Set the IFF_UP flag of `lo`; a new network namespace starts with it down."""
    get_flags, set_flags, up = 0x8913, 0x8914, 0x1  # SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP (linux/sockios.h)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(handle, get_flags, request))[1]
        fcntl.ioctl(handle, set_flags, struct.pack("16sH22x", b"lo", flags | up))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _start_workers(args: argparse.Namespace, phase: str, steps: int) -> list[subprocess.Popen]:
    output = pathlib.Path(args.output)
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(NUM_WORKERS)]
    processes = []
    for index in range(NUM_WORKERS):
        environment = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}))
        with open(output / f"{phase}_worker_{index}.log", "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, __file__, "worker", "--data", args.data, "--run_dir", args.run_dir,
                 "--steps", str(steps), "--output", str(output / f"{phase}_worker_{index}.npz")],
                env=environment, stdout=log, stderr=subprocess.STDOUT))
    return processes


def _wait_for_line(path: pathlib.Path, text: str, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + CLUSTER_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if text in path.read_text():
            return True
        time.sleep(0.1)
    return False


def _wait_all(processes: list[subprocess.Popen]) -> list[int]:
    statuses = []
    for process in processes:
        try:
            statuses.append(process.wait(timeout=CLUSTER_TIMEOUT_SECONDS))
        except subprocess.TimeoutExpired:
            process.kill()
            statuses.append(process.wait())
    return statuses


def run_cluster(args: argparse.Namespace) -> int:
    """Preempt a two-worker run with SIGTERM to the second worker; with --resume, resume it.

    Writes `statuses.json` with the exit statuses of the preempted run and of the resumed one.
    """
    _bring_loopback_up()
    output = pathlib.Path(args.output)
    results = {}

    processes = _start_workers(args, "preempted", PREEMPTED_RUN_STEPS)
    non_chief_log = output / "preempted_worker_1.log"
    if _wait_for_line(non_chief_log, f"step {SIGTERM_AFTER_STEP}/", processes[1]):
        processes[1].send_signal(signal.SIGTERM)
    results["preempted"] = _wait_all(processes)

    if args.resume:
        stop_step = _saved_step(output / "preempted_worker_0.npz")
        results["resumed"] = _wait_all(_start_workers(args, "resumed", stop_step + RESUMED_STEPS))
    (output / "statuses.json").write_text(json.dumps(results))
    return 0


def _saved_step(path: pathlib.Path) -> int:
    """Read the step that a worker saved, without importing TensorFlow into the launcher."""
    import numpy as np

    with np.load(path) as arrays:
        return int(arrays["iterations"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("replicas", "worker", "cluster"))
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--run_dir")
    parser.add_argument("--checkpoint")
    parser.add_argument("--steps", type=int, default=PREEMPTED_RUN_STEPS)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.command == "replicas":
        run_replica_checks(args)
        return 0
    if args.command == "worker":
        return run_worker(args)
    return run_cluster(args)


if __name__ == "__main__":
    sys.exit(main())
