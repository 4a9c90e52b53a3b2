"""Training speed of the VAE family: the plain configuration against each speed tuning, batch 64.

    python -m benchmarks.train_speed [--steps 30] [--loss_steps 500] [--models lgvae gmvae lggmvae]
                                     [--data DIR] [--output FILE.json]

Every case runs the trainer's own step (`trainer.loop`: the default strategy, Adam, losses
averaged over the global batch) on 32x32 digits prepared by `split-data digits`. Each runs in a
fresh subprocess, so that no trace, XLA cache or oneDNN primitive cache carries over:

- `plain`: the baseline. The auxiliary view is computed per image in the input map (a parallel
  `tf.data` map over single images, as a straightforward port does), float32, no XLA.
- `batched`: the view computed on whole batches, as `trainer.data.training_dataset` does.
- `bfloat16`: the plain pipeline with `--mixed_precision mixed_bfloat16` (bfloat16 layers,
  float32 variables and losses).
- `xla`: the plain pipeline with `--jit_compile` (each replica's forward and backward pass
  compiled by XLA).
- `batched+bfloat16`: both, as `split-train --mixed_precision mixed_bfloat16` runs.

`first step` is the wall time from creating the input iterator to the first step's loss on the
host: tracing, graph optimisation (and XLA compilation) and one step. Images/s counts `--steps`
steps after two warm-up steps, in wall time. Images per CPU-second divides by the process's user
and system time instead, which other load on the machine disturbs less. `gmvae` has no
auxiliary view, so its `plain` and `batched` cases are the same pipeline. The `plain` case runs
again at the end, so the table shows how much the machine's speed drifted during the run.

With `--loss_steps N`, the batched pipeline trains N steps in float32 and in mixed_bfloat16
from the same seed (same initial weights, batches and noise) and reports the mean loss of the
last `LOSS_WINDOW` steps of each, and their relative difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

MODELS = ("lgvae", "gmvae", "lggmvae")
PRESETS = {"lgvae": "digits-split-vae", "gmvae": "digits-gmvae", "lggmvae": "digits-split-gmvae"}
# Each case: (view computed per "image" or per "batch", Keras dtype policy, XLA).
CASES = {
    "plain": ("image", "float32", False),
    "batched": ("batch", "float32", False),
    "bfloat16": ("image", "mixed_bfloat16", False),
    "xla": ("image", "float32", True),
    "batched+bfloat16": ("batch", "mixed_bfloat16", False),
}
BATCH_SIZE = 64
WARMUP_STEPS = 2
LOSS_WINDOW = 20


def per_image_dataset(data_dir: str, manifest, config):
    """Return the trainer's batches with the view computed image by image in the input map."""
    import tensorflow as tf

    from preprocessing import schema
    from trainer import data

    seed = config.train.seed
    images = data.read_records(data_dir, manifest, "train").map(lambda record: record[schema.IMAGE_KEY])
    images = images.cache().repeat().shuffle(min(config.train.shuffle_buffer, manifest.splits["train"].num_records),
                                             seed=seed)
    base_seed = tf.constant([seed, 0], tf.int64)

    def add_view(index, image):
        image_seed = tf.cast(tf.random.experimental.stateless_fold_in(base_seed, index), tf.int32)
        return data.with_view(data.to_signed_unit(image)[None], config, image_seed)[0]

    inputs = images.enumerate().map(add_view, num_parallel_calls=tf.data.AUTOTUNE)
    return inputs.batch(config.train.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _case_config(model_name: str, case: str):
    from trainer import config as config_module, presets

    _, precision, xla = CASES[case]
    return config_module.override(presets.get_preset(PRESETS[model_name]), {
        "batch_size": BATCH_SIZE, "mixed_precision": precision, "jit_compile": xla})


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(model_name: str, case: str, steps: int, data_dir: str) -> dict:
    """Time one case's first step and throughput in this process; return the figures."""
    import tensorflow as tf

    from preprocessing import schema
    from trainer import data, loop

    config = _case_config(model_name, case)
    manifest = schema.read_manifest(data_dir)
    strategy = tf.distribute.get_strategy()
    model, optimizer, _ = loop.build_training_state(config, manifest.image_shape, strategy)
    train_step = loop._make_train_step(model, optimizer, strategy, config)
    if CASES[case][0] == "batch":
        dataset = data.training_dataset(data_dir, manifest, config)
    else:
        dataset = per_image_dataset(data_dir, manifest, config)

    start = time.perf_counter()
    batches = iter(dataset)
    float(train_step(next(batches))["loss"])
    first_step_seconds = time.perf_counter() - start
    for _ in range(WARMUP_STEPS):
        float(train_step(next(batches))["loss"])

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for _ in range(steps):
        terms = train_step(next(batches))
    float(terms["loss"])
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    return {
        "model": model_name,
        "case": case,
        "first_step_seconds": first_step_seconds,
        "images_per_second": steps * BATCH_SIZE / seconds,
        "images_per_cpu_second": steps * BATCH_SIZE / cpu_seconds,
    }


def run_loss(model_name: str, precision: str, steps: int, data_dir: str) -> dict:
    """Train `steps` steps of the batched pipeline at `precision`; return the losses of the last steps."""
    import keras
    import numpy as np
    import tensorflow as tf

    from preprocessing import schema
    from trainer import config as config_module, data, loop

    config = config_module.override(_case_config(model_name, "batched"), {"mixed_precision": precision})
    manifest = schema.read_manifest(data_dir)
    strategy = tf.distribute.get_strategy()
    # Unseeded Keras initialisers draw from the global seed, so both precisions start from the same weights.
    keras.utils.set_random_seed(config.train.seed)
    model, optimizer, _ = loop.build_training_state(config, manifest.image_shape, strategy)
    train_step = loop._make_train_step(model, optimizer, strategy, config)
    batches = iter(data.training_dataset(data_dir, manifest, config))
    losses = [train_step(next(batches))["loss"] for _ in range(steps)]
    last = np.array([float(value) for value in losses[-LOSS_WINDOW:]])
    return {"model": model_name, "precision": precision, "steps": steps, "first_loss": float(losses[0]),
            "mean_last_losses": float(last.mean()), "final_loss": float(last[-1])}


def _in_subprocess(arguments: list[str]) -> dict:
    command = [sys.executable, "-m", "benchmarks.train_speed", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _prepare_digits(folder: str) -> str:
    from preprocessing import cli

    status = cli.main(["digits", "--output", folder, "--renders_per_digit", "1", "--num_shards", "2", "--seed", "1"])
    if status != 0:
        raise RuntimeError(f"split-data digits --output {folder} failed with exit status {status}")
    return folder


def _speed_table(results: list[dict], models: list[str]) -> str:
    rows = ["| model | case | first step (s) | images/s | vs plain | images/CPU-s | vs plain |",
            "|---|---|---|---|---|---|---|"]
    for model_name in models:
        plain = next(result for result in results if result["model"] == model_name and result["case"] == "plain")
        for result in (result for result in results if result["model"] == model_name):
            label = result["case"] + (" (repeat)" if result.get("repeat") else "")
            rows.append(
                f"| {model_name} | {label} | {result['first_step_seconds']:.1f} | {result['images_per_second']:.0f} |"
                f" {result['images_per_second'] / plain['images_per_second']:.2f}x |"
                f" {result['images_per_cpu_second']:.0f} |"
                f" {result['images_per_cpu_second'] / plain['images_per_cpu_second']:.2f}x |")
    return "\n".join(rows)


def _loss_table(results: list[dict], models: list[str]) -> str:
    rows = [f"| model | steps | float32 loss (mean of last {LOSS_WINDOW}) | mixed_bfloat16 loss | difference |",
            "|---|---|---|---|---|"]
    for model_name in models:
        by_precision = {result["precision"]: result for result in results if result["model"] == model_name}
        reference = by_precision["float32"]["mean_last_losses"]
        mixed = by_precision["mixed_bfloat16"]["mean_last_losses"]
        rows.append(f"| {model_name} | {by_precision['float32']['steps']} | {reference:.1f} | {mixed:.1f} |"
                    f" {100 * (mixed - reference) / reference:+.2f}% |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per case (default 30)")
    parser.add_argument("--loss_steps", type=int, default=0,
                        help="also compare the loss after this many steps of float32 and mixed_bfloat16 (0: skip)")
    parser.add_argument("--loss_models", nargs="+", default=None, choices=MODELS,
                        help="models of the loss comparison (default: --models)")
    parser.add_argument("--data", default=None, help="a `split-data digits` folder (default: prepare one)")
    parser.add_argument("--output", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--loss", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.steps, args.data)))
        return 0
    if args.loss:
        print(json.dumps(run_loss(args.loss[0], args.loss[1], args.loss_steps, args.data)))
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data or _prepare_digits(os.path.join(scratch, "digits"))
        load_before = os.getloadavg()
        print(f"load average before: {load_before[0]:.1f}; {os.cpu_count()} CPUs", flush=True)
        speed = []
        for model_name in args.models:
            for case in args.cases:
                result = _in_subprocess(["--one", model_name, case, "--steps", str(args.steps), "--data", data_dir])
                speed.append(result)
                print(f"{model_name:8s} {case:17s} first step {result['first_step_seconds']:5.1f} s"
                      f"  {result['images_per_second']:6.1f} images/s", flush=True)
        for model_name in args.models:
            repeat = _in_subprocess(["--one", model_name, "plain", "--steps", str(args.steps), "--data", data_dir])
            speed.append({**repeat, "repeat": True})
            print(f"{model_name:8s} plain (repeat)    {repeat['images_per_second']:6.1f} images/s", flush=True)

        losses = []
        if args.loss_steps:
            for model_name in args.loss_models or args.models:
                for precision in ("float32", "mixed_bfloat16"):
                    losses.append(_in_subprocess(["--loss", model_name, precision, "--loss_steps",
                                                  str(args.loss_steps), "--data", data_dir]))
                    print(f"{model_name:8s} {precision:15s} loss {losses[-1]['mean_last_losses']:.1f}", flush=True)
        load_after = os.getloadavg()

    print()
    print(f"batch {BATCH_SIZE}, 32x32 digits, {args.steps} timed steps per case; load average"
          f" {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} CPUs")
    print()
    print(_speed_table(speed, args.models))
    if losses:
        print()
        print(_loss_table(losses, args.loss_models or args.models))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"speed": speed, "losses": losses, "load_average": [load_before, load_after]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
