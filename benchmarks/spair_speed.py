"""SPAIR training speed: our model against a plain configuration of the same model, at batch 32.

    python -m benchmarks.spair_speed [--models bg_spair lg_spair] [--steps 20] [--repeats 2] [--xla]

Cases, each in a fresh subprocess so that no trace, graph or oneDNN primitive cache carries over
from one case to the next:

- `plain`: the baseline, a straightforward port. It runs the per-cell part of the model (where,
  glimpse, what, depth, presence, object decoder, placement) in a Python loop over the grid
  cells, and the count prior as the sequential per-cell recurrence. The traced graph therefore
  contains one copy of each per cell. The decoders upsample with Keras' `Resizing` layer, and
  the optimizer is Keras' stock `Adam`. No XLA.
- `ours`: `trainer.models.spair.Spair` and `trainer.adam.FusedAdam`, as the trainer builds
  them: every cell at once, the count prior in closed form, upsampling by interpolation
  matrices, and Adam's fused kernel. No XLA.
- `ours-xla` (with `--xla`): the same step compiled with XLA, for information.
- `ours-bf16` (with `--bf16`): ours under Keras's `mixed_bfloat16` policy (`--mixed_precision
  mixed_bfloat16` of `split-train`). The convolutions and the autoencoders compute in
  bfloat16. The per-cell heads, the image outputs' sigmoids, the spatial transformer, the
  renderer, the losses and the variables stay float32.

Both configurations share every layer and weight shape and the loss. The step is the trainer's
(gradient tape, the loss averaged over the batch, Adam with `clipnorm` 1.0) on random images in
[0, 1]; speed does not depend on what the images show. `first step` is the wall time of the
first call (trace, graph optimisation and one step); images/s counts the steps after two more
warm-up steps. The configurations are the presets `multibird-easy-bg-spair` and
`multibird-easy-split-spair`. Cases alternate (plain, ours, plain, ours, ...) so that a change
in the machine's load falls on both, and each figure is the best over the repeats.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PRESETS = {"bg_spair": "multibird-easy-bg-spair", "lg_spair": "multibird-easy-split-spair"}
CASES = ("plain", "ours", "ours-xla", "ours-bf16")
IMAGE_SHAPE = (48, 48, 3)
WARMUP_STEPS = 2


def _plain_model_class():
    """Return the plain configuration: `Spair` with per-cell Python loops (imports TensorFlow)."""
    import keras
    import tensorflow as tf

    from trainer import spair_losses
    from trainer.models import spair

    class PlainCellLoopSpair(spair.Spair):
        """`Spair` that visits the grid cells one by one in Python, as a straightforward port would."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            decoders = [self.object_decoder, getattr(self, "background_decoder", None),
                        getattr(self, "local_decoder", None)]
            for decoder in decoders:
                if hasattr(decoder, "stages"):
                    decoder.stages = [(convolution, keras.layers.Resizing(upsample.height, upsample.width,
                                                                          interpolation="bilinear"))
                                      for convolution, upsample in decoder.stages]

        def propose_objects(self, x, features, cell_centres, local_code, seed, training):
            per_cell = []
            for cell in range(features.shape[1]):
                cell_seed = tf.random.experimental.stateless_fold_in(seed, cell)
                per_cell.append(super().propose_objects(x, features[:, cell:cell + 1], cell_centres[cell:cell + 1],
                                                        local_code, cell_seed, training))
            return {name: tf.concat([outputs[name] for outputs in per_cell], axis=1) for name in per_cell[0]}

        def prior_presence_log_odds(self, presence, step):
            success = spair_losses.linear_anneal(step, 0.0, spair.MAX_COUNT_PRIOR_SUCCESS,
                                                 self.config.z_pres_anneal_step)
            return sequential_count_prior_log_odds(presence, success)

    return PlainCellLoopSpair


def sequential_count_prior_log_odds(present, success_probability):
    """Compute the count prior's log-odds by the per-cell recurrence, one cell at a time (log space, float64)."""
    import tensorflow as tf

    num_cells = present.shape[-1]
    present = tf.cast(tf.stop_gradient(present), tf.float64)
    counts = tf.range(num_cells + 1, dtype=tf.float64)
    log_probabilities = tf.math.multiply_no_nan(tf.math.log1p(-tf.cast(success_probability, tf.float64)), counts)
    log_probabilities = tf.broadcast_to(log_probabilities - tf.reduce_logsumexp(log_probabilities),
                                        [tf.shape(present)[0], num_cells + 1])
    found = tf.zeros_like(present[:, :1])
    log_odds = []
    for cell in range(num_cells):
        rate = tf.nn.relu(counts - found) / float(num_cells - cell)
        log_rate = tf.math.log(rate)
        log_rest = tf.math.log1p(-tf.minimum(rate, 1.0))
        log_odds.append(tf.reduce_logsumexp(log_probabilities + log_rate, axis=-1)
                        - tf.reduce_logsumexp(log_probabilities + log_rest, axis=-1))
        observed = present[:, cell:cell + 1]
        log_probabilities += tf.where(observed > 0.5, log_rate, log_rest)
        log_probabilities -= tf.reduce_logsumexp(log_probabilities, axis=-1, keepdims=True)
        found += observed
    return tf.cast(tf.stack(log_odds, axis=-1), tf.float32)


def run_case(model_name: str, case: str, steps: int, batch_size: int) -> dict:
    """Build one configuration, time its first step and its throughput; return the figures."""
    import keras
    import tensorflow as tf

    from trainer import adam, augment, presets
    from trainer.models import spair

    config = presets.get_preset(PRESETS[model_name])
    if case == "ours-bf16":
        # Each case runs in its own process, so the global policy affects this case only.
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model_class = _plain_model_class() if case == "plain" else spair.Spair
    start = time.perf_counter()
    model = model_class(config.model, IMAGE_SHAPE, name=model_name)
    model.build_variables()
    optimizer_class = keras.optimizers.Adam if case == "plain" else adam.FusedAdam
    optimizer = optimizer_class(config.train.learning_rate, clipnorm=config.train.clipnorm)
    optimizer.build(model.trainable_variables)
    build_seconds = time.perf_counter() - start

    @tf.function(jit_compile=case == "ours-xla")
    def train_step(inputs, seed):
        with tf.GradientTape() as tape:
            terms = model.compute_losses(inputs, seed, step=optimizer.iterations, training=True)
            loss = tf.nn.compute_average_loss(terms["loss"], global_batch_size=batch_size)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    images = tf.random.stateless_uniform([batch_size, *IMAGE_SHAPE], seed=[0, 1])
    if model.has_local_path:
        view = augment.make_view(images, config.model.augmentation, config.model.patch_size, tf.constant([0, 2]))
        images = tf.concat([images, view], axis=-1)

    start = time.perf_counter()
    train_step(images, tf.constant([1, 0])).numpy()
    first_step_seconds = time.perf_counter() - start
    for step in range(WARMUP_STEPS):
        train_step(images, tf.constant([2, step])).numpy()
    start = time.perf_counter()
    for step in range(steps):
        loss = train_step(images, tf.constant([3, step]))
    loss.numpy()
    seconds = time.perf_counter() - start
    return {
        "model": model_name,
        "case": case,
        "build_seconds": build_seconds,
        "first_step_seconds": first_step_seconds,
        "images_per_second": steps * batch_size / seconds,
        "parameters": model.count_params(),
    }


def _run_in_subprocess(model_name: str, case: str, steps: int, batch_size: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.spair_speed", "--one", model_name, case,
               "--steps", str(steps), "--batch_size", str(batch_size)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"case {model_name}/{case} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spair_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per case (default 20)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each case; the best counts (default 2)")
    parser.add_argument("--xla", action="store_true", help="also time our step compiled with XLA")
    parser.add_argument("--bf16", action="store_true", help="also time our step under mixed_bfloat16")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.steps, args.batch_size)))
        return 0

    cases = ["plain", "ours"]
    if args.xla:
        cases.append("ours-xla")
    if args.bf16:
        cases.append("ours-bf16")
    best: dict[tuple[str, str], dict] = {}
    for repeat in range(args.repeats):
        for model_name in args.models:
            for case in cases:
                result = _run_in_subprocess(model_name, case, args.steps, args.batch_size)
                print(f"repeat {repeat + 1}: {model_name:9s} {case:9s} first step {result['first_step_seconds']:6.2f} s"
                      f"  {result['images_per_second']:6.1f} images/s", flush=True)
                key = (model_name, case)
                if key not in best:
                    best[key] = result
                else:
                    best[key] = {**result,
                                 "first_step_seconds": min(best[key]["first_step_seconds"],
                                                           result["first_step_seconds"]),
                                 "images_per_second": max(best[key]["images_per_second"],
                                                          result["images_per_second"])}

    print()
    print("| model | case | first step (s) | images/s | images/s, case / plain | first step, plain / case |")
    print("|---|---|---|---|---|---|")
    for model_name in args.models:
        plain = best[(model_name, "plain")]
        for case in cases:
            result = best[(model_name, case)]
            print(f"| {model_name} | {case} | {result['first_step_seconds']:.2f} | {result['images_per_second']:.1f} |"
                  f" {result['images_per_second'] / plain['images_per_second']:.2f}x |"
                  f" {plain['first_step_seconds'] / result['first_step_seconds']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
