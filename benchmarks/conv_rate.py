"""Speed of the SPAIR object decoder's largest convolution against a matmul of the same size.

    python -m benchmarks.conv_rate [--glimpses 512] [--steps 10] [--repeats 3]

The object decoder of the Multi-Bird presets decodes 512 glimpses (32 images x 16 cells) per
step, and its largest layer is a 3 x 3 convolution from 64 to 32 channels on 16 x 16 maps. The
script times that convolution, forward alone and forward with backward, and, as the baseline, one
float32 matmul with the same number of multiply-adds. It then times the forward and backward pass
in bfloat16, the type of the convolutions under `--mixed_precision mixed_bfloat16`. It prints
GFLOP/s and the ratio of each case to the matmul. A float32 ratio of 1 or more means that the
convolution already runs at least as fast as a dense matmul. A float32 step bound by these
convolutions then gains only by doing fewer of them or by computing them in bfloat16.
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf

HEIGHT = WIDTH = 16
IN_CHANNELS, OUT_CHANNELS, KERNEL = 64, 32, 3


def _seconds_per_call(function, *arguments, steps: int, repeats: int) -> float:
    """Return the best over `repeats` of the mean wall time of `steps` calls, after one warm-up call."""
    function(*arguments)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            result = function(*arguments)
        tf.nest.map_structure(lambda tensor: tensor.numpy(), result)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def measure(glimpses: int, steps: int, repeats: int) -> list[tuple[str, float, float]]:
    """Time each case on `glimpses` maps and return its name, seconds per call and FLOP/s."""
    maps = tf.random.normal([glimpses, HEIGHT, WIDTH, IN_CHANNELS])
    kernel = tf.Variable(tf.random.normal([KERNEL, KERNEL, IN_CHANNELS, OUT_CHANNELS]) * 0.05)
    patches = tf.random.normal([glimpses * HEIGHT * WIDTH, KERNEL * KERNEL * IN_CHANNELS])
    weights = tf.random.normal([KERNEL * KERNEL * IN_CHANNELS, OUT_CHANNELS])
    multiply_adds = glimpses * HEIGHT * WIDTH * KERNEL * KERNEL * IN_CHANNELS * OUT_CHANNELS

    @tf.function
    def forward(inputs):
        return tf.nn.conv2d(inputs, kernel, 1, "SAME")

    # The backward pass computes two products of the forward's size: the input and kernel gradients.
    @tf.function
    def forward_backward(inputs, dtype=tf.float32):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.nn.conv2d(tf.cast(inputs, dtype), tf.cast(kernel, dtype), 1, "SAME")
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32) ** 2)
        return tape.gradient(loss, [inputs, kernel])

    @tf.function
    def matmul(left, right):
        return left @ right

    # A case is a name, a function with its arguments, and how many forward-sized products it computes.
    cases = [
        ("matmul, same multiply-adds (baseline)", matmul, (patches, weights), 1),
        ("convolution, forward", forward, (maps,), 1),
        ("convolution, forward and backward", forward_backward, (maps,), 3),
        ("convolution, forward and backward, bfloat16", forward_backward,
         (tf.cast(maps, tf.bfloat16), tf.bfloat16), 3),
    ]
    results = []
    for name, function, arguments, products in cases:
        seconds = _seconds_per_call(function, *arguments, steps=steps, repeats=repeats)
        results.append((name, seconds, 2 * multiply_adds * products / seconds))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glimpses", type=int, default=512, help="glimpses per step (batch x cells)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    results = measure(args.glimpses, args.steps, args.repeats)
    baseline_rate = results[0][2]
    print("| case | ms | GFLOP/s | vs matmul |")
    print("|---|---|---|---|")
    for name, seconds, rate in results:
        print(f"| {name} | {seconds * 1e3:.1f} | {rate / 1e9:.0f} | {rate / baseline_rate:.2f}x |")


if __name__ == "__main__":
    main()
