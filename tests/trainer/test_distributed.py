"""Distributed and preemption-safe training: replicas, workers, checkpoints, SIGTERM and NaN.

TensorFlow configures its devices and collective operations once per process. So the checks
with two logical CPU devices or two workers run in fresh processes (`distributed_worker.py`
beside this file), and the tests assert on what those processes wrote.
"""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import distributed_worker
from preprocessing import schema
from trainer import cli, data, loop
from trainer.config import ConfigError, TrainConfig
from trainer.models import vae

WORKER_SCRIPT = pathlib.Path(__file__).with_name("distributed_worker.py")
SUBPROCESS_TIMEOUT_SECONDS = 600
# Kubernetes' default grace period between SIGTERM and SIGKILL.
PREEMPTION_GRACE_SECONDS = 30
RELATIVE_TOLERANCE = 1e-5
# Float32 rounding of the replica sums moved lggmvae's cluster KL (about 6e-3) by 6e-8, which is
# more than the relative tolerance allows. So terms near zero get an absolute tolerance as well.
ABSOLUTE_TOLERANCE = 1e-6


def _load_arrays(path) -> dict[str, np.ndarray]:
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _assert_same_state(expected: dict, actual: dict) -> None:
    assert sorted(expected) == sorted(actual)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def _run_worker_script(arguments: list[str], prefix: list[str] = ()) -> None:
    completed = subprocess.run([*prefix, sys.executable, str(WORKER_SCRIPT), *arguments],
                               capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.fixture(scope="module")
def one_replica_checkpoint(tiny_digits, tmp_path_factory):
    """A checkpoint written on one device after two steps, and the state it holds."""
    directory = tmp_path_factory.mktemp("one_replica")
    config = distributed_worker.tiny_config("lggmvae")
    manifest = schema.read_manifest(str(tiny_digits))
    strategy = tf.distribute.get_strategy()
    model, optimizer, checkpoint = loop.build_training_state(config, manifest.image_shape, strategy)
    train_step = loop._make_train_step(model, optimizer, strategy, config)
    batch = next(iter(data.training_dataset(str(tiny_digits), manifest, config)))
    for _ in range(2):
        train_step(batch)
    path = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=1).save(checkpoint_number=2)
    return path, distributed_worker.state_arrays(model, optimizer)


@pytest.fixture(scope="module")
def replica_run(tiny_digits, one_replica_checkpoint, tmp_path_factory):
    """The results of `distributed_worker.py replicas` (two logical CPU devices) and its folder."""
    output = tmp_path_factory.mktemp("two_replicas")
    _run_worker_script(["replicas", "--data", str(tiny_digits), "--output", str(output),
                        "--checkpoint", one_replica_checkpoint[0]])
    return json.loads((output / "results.json").read_text()), output


# lgvae also clips its gradients (Adam's clipnorm on one device, the train step on two).
@pytest.mark.parametrize("model,clipnorm", [("lgvae", distributed_worker.EQUIVALENCE_CLIPNORM), ("lggmvae", 0.0)])
def test_two_replicas_match_one_device(model, clipnorm, replica_run):
    results = replica_run[0]["equivalence"][model]
    assert results["clipnorm"] == clipnorm
    assert replica_run[0]["num_replicas"] == 2
    assert results["replica_batch_sizes"] == [8, 8]
    assert results["iterations"] == [2, 2]
    for one, two in zip(results["losses_one_replica"], results["losses_two_replicas"]):
        assert one.keys() == two.keys()
        for name in one:
            assert two[name] == pytest.approx(one[name], rel=RELATIVE_TOLERANCE, abs=ABSOLUTE_TOLERANCE), name
    # The weights moved (by about the learning rate per step) and moved the same way.
    assert results["max_weight_change"] > 1e-4
    assert results["max_weight_difference"] < 1e-5


def test_replicas_draw_different_noise(replica_run):
    noise = replica_run[0]["noise"]
    seeds = [noise[step]["seed"] for step in ("step_0", "step_1")]
    assert seeds[0][0] != seeds[0][1]
    assert seeds[1][0] != seeds[1][1]
    assert seeds[0][0] != seeds[1][0]
    # Both replicas saw the same examples, so only their noise can make the losses differ.
    first_replica, second_replica = np.array(noise["step_0"]["loss"])
    assert np.all(np.isfinite(first_replica))
    assert np.all(first_replica != second_replica)


def test_gathered_clusters_match_one_device(replica_run):
    clusters = replica_run[0]["clusters"]
    one, two = clusters["one_replica"], clusters["two_replicas"]
    assert len(one["clusters"]) == 80
    assert len(set(one["clusters"])) > 2
    assert two["labels"] == one["labels"]
    assert two["clusters"] == one["clusters"]
    assert two["hungarian_accuracy"] == one["hungarian_accuracy"]
    assert two["majority_accuracy"] == one["majority_accuracy"]


def test_one_replica_checkpoint_restores_on_two(replica_run, one_replica_checkpoint):
    results, output = replica_run
    restored = _load_arrays(output / "restored_on_two.npz")
    _assert_same_state(one_replica_checkpoint[1], restored)
    assert int(restored["iterations"]) == 2
    assert results["checkpoints"]["replica_copies_agree_after_restore"]


def test_two_replica_checkpoint_restores_on_one(replica_run, tiny_digits):
    results, output = replica_run
    written = _load_arrays(output / "written_on_two.npz")
    config = distributed_worker.tiny_config("lggmvae")
    manifest = schema.read_manifest(str(tiny_digits))
    model, optimizer, checkpoint = loop.build_training_state(config, manifest.image_shape,
                                                             tf.distribute.get_strategy())
    checkpoint.restore(results["checkpoints"]["two_replica_checkpoint"]).assert_existing_objects_matched()
    _assert_same_state(written, distributed_worker.state_arrays(model, optimizer))
    assert int(optimizer.iterations.numpy()) == distributed_worker.EQUIVALENCE_STEPS


def test_two_replica_run_resumes_on_one(replica_run, tiny_digits):
    run_dir = replica_run[0]["loop"]["run_dir"]
    assert replica_run[0]["loop"]["final_step"] == 2
    result = loop.train(distributed_worker.tiny_config("lggmvae", training_steps=3), str(tiny_digits), run_dir)
    assert result.start_step == 2
    assert result.final_step == 3


def _private_network_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "--map-root-user", "true"], capture_output=True)
    return probe.returncode == 0


NETWORK_NAMESPACE = ["unshare", "--net", "--map-root-user"]
needs_private_network = pytest.mark.skipif(
    not _private_network_available(),
    reason="needs `unshare --net`: TensorFlow's gRPC servers listen on every interface, so the"
           " workers run in a private network namespace that only has 127.0.0.1")


def _run_cluster(tiny_digits, tmp_path, resume: bool) -> tuple[dict, pathlib.Path, pathlib.Path]:
    output, run_dir = tmp_path / "cluster", tmp_path / "run"
    output.mkdir()
    _run_worker_script(["cluster", "--data", str(tiny_digits), "--run_dir", str(run_dir), "--output", str(output)]
                       + (["--resume"] if resume else []), prefix=NETWORK_NAMESPACE)
    return json.loads((output / "statuses.json").read_text()), output, run_dir


@needs_private_network
def test_workers_stop_together_on_sigterm(tiny_digits, tmp_path):
    statuses, output, run_dir = _run_cluster(tiny_digits, tmp_path, resume=False)
    assert statuses["preempted"] == [cli.EXIT_PREEMPTED, cli.EXIT_PREEMPTED]

    chief = _load_arrays(output / "preempted_worker_0.npz")
    other = _load_arrays(output / "preempted_worker_1.npz")
    _assert_same_state(chief, other)
    stop_step = int(chief["iterations"])
    assert distributed_worker.SIGTERM_AFTER_STEP < stop_step < distributed_worker.PREEMPTED_RUN_STEPS
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith(f"ckpt-{stop_step}")

    # Only the chief writes into the run directory.
    assert len(list((run_dir / "tensorboard").iterdir())) == 1
    assert not (run_dir / "export").exists()
    assert "the chief worker saved its checkpoint" in (output / "preempted_worker_1.log").read_text()


@pytest.mark.slow
@needs_private_network
def test_workers_resume_after_sigterm(tiny_digits, tmp_path):
    statuses, output, run_dir = _run_cluster(tiny_digits, tmp_path, resume=True)
    assert statuses["resumed"] == [0, 0]
    chief = _load_arrays(output / "resumed_worker_0.npz")
    _assert_same_state(chief, _load_arrays(output / "resumed_worker_1.npz"))
    stop_step = int(_load_arrays(output / "preempted_worker_0.npz")["iterations"])
    assert int(chief["iterations"]) == stop_step + distributed_worker.RESUMED_STEPS
    assert (run_dir / "export" / "model.weights.h5").exists()


def _train_command(data_dir, run_dir, steps: int) -> list[str]:
    return [sys.executable, "-c", "import sys; from trainer.cli import train_main; sys.exit(train_main())",
            "--preset", "digits-gmvae", "--data", str(data_dir), "--run_dir", str(run_dir),
            "--training_steps", str(steps), "--batch_size", "16", "--checkpoint_every", "20", "--log_every", "2"]


def test_sigterm_saves_checkpoint_and_rerun_finishes(tiny_digits, tmp_path):
    run_dir = tmp_path / "run"
    # Enough steps that the run is still going when SIGTERM arrives after step 2.
    steps = 20
    process = subprocess.Popen(_train_command(tiny_digits, run_dir, steps), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if f"step 2/{steps}" in line:
                break
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=PREEMPTION_GRACE_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    stopped_within = time.monotonic() - signalled

    assert process.returncode == cli.EXIT_PREEMPTED, rest[-2000:]
    assert stopped_within < PREEMPTION_GRACE_SECONDS
    message = rest.strip().splitlines()[-1]
    assert message.startswith("split-train: stopped by SIGTERM after step ")
    stop_step = int(message.split("after step ")[1].split(";")[0])
    assert 2 <= stop_step < steps
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith(f"ckpt-{stop_step}")
    assert int(tf.train.load_variable(latest, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == stop_step

    # The rerun resumes there and ends where an uninterrupted run ends.
    assert cli.train_main(_train_command(tiny_digits, run_dir, steps)[3:]) == 0
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith(f"ckpt-{steps}")
    assert int(tf.train.load_variable(latest, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == steps


def test_nan_loss_stops_with_one_line_error(tiny_digits, tmp_path, monkeypatch, capsys):
    compute_losses = vae.SplitVAE.compute_losses
    poisoned_from = 5  # the optimizer's iteration count while computing step 6

    def compute_losses_with_nan(self, inputs, seed, step=0, training=True):
        terms = dict(compute_losses(self, inputs, seed, step=step, training=training))
        poison = tf.where(tf.cast(step, tf.int64) >= poisoned_from, float("nan"), 0.0)
        terms["kl_global"] = terms["kl_global"] + poison
        terms["loss"] = terms["loss"] + poison
        return terms

    monkeypatch.setattr(vae.SplitVAE, "compute_losses", compute_losses_with_nan)
    run_dir = tmp_path / "run"
    status = cli.train_main(["--preset", "digits-gmvae", "--data", str(tiny_digits), "--run_dir", str(run_dir),
                             "--training_steps", "12", "--batch_size", "16", "--checkpoint_every", "2",
                             "--log_every", "4"])
    error = capsys.readouterr().err.strip()
    assert status == cli.EXIT_NON_FINITE_LOSS
    assert len(error.splitlines()) == 1
    assert "loss term kl_global is nan at step 6" in error

    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith("ckpt-4")
    assert latest in error
    for name, _ in tf.train.list_variables(latest):
        value = tf.train.load_variable(latest, name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name


def test_mixed_precision_keeps_float32_state(tiny_digits):
    config = distributed_worker.tiny_config("lgvae", mixed_precision="mixed_bfloat16")
    manifest = schema.read_manifest(str(tiny_digits))
    strategy = tf.distribute.get_strategy()
    model, optimizer, _ = loop.build_training_state(config, manifest.image_shape, strategy)
    assert keras.config.dtype_policy().name == "float32"
    assert model.decoder.dense.compute_dtype == "bfloat16"
    assert {variable.dtype for variable in model.variables} == {"float32"}

    train_step = loop._make_train_step(model, optimizer, strategy, config)
    terms = train_step(next(iter(data.training_dataset(str(tiny_digits), manifest, config))))
    for name, value in terms.items():
        assert value.dtype == tf.float32, name
        assert np.isfinite(value.numpy()), name


def test_select_strategy_defaults_to_one_device():
    assert loop.select_strategy(TrainConfig()) is tf.distribute.get_strategy()


@pytest.mark.parametrize("fields,message", [
    ({"strategy": "mirrored", "devices": 4}, "--devices 4 but only 1 logical CPU device"),
    ({"strategy": "multi_worker", "devices": 2}, "--devices applies to --strategy mirrored"),
    ({"devices": 2}, "--devices 2 needs several GPUs"),
])
def test_select_strategy_rejects_device_count(fields, message):
    with pytest.raises(ConfigError, match=message):
        loop.select_strategy(TrainConfig(**fields))


def test_select_strategy_rejects_bad_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        loop.select_strategy(TrainConfig())


@pytest.mark.parametrize("flags,message", [
    (["--strategy", "horovod"], "--strategy 'horovod' is not one of auto, default, mirrored, multi_worker"),
    (["--mixed_precision", "float16"], "--mixed_precision 'float16' is not one of float32, mixed_bfloat16"),
    (["--devices", "-1"], "--devices must be non-negative"),
])
def test_bad_distribution_flags_give_one_line_error(flags, message, tmp_path, capsys):
    status = cli.train_main(["--preset", "digits-gmvae", "--data", str(tmp_path), "--run_dir", str(tmp_path / "run")]
                            + flags)
    error = capsys.readouterr().err.strip()
    assert status == cli.EXIT_INVALID
    assert message in error
    assert len(error.splitlines()) == 1
