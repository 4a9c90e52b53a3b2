"""The auxiliary views `x_hat`: transformations that keep local statistics and destroy layout.

Every function takes a whole batch `[batch, height, width, channels]` and a stateless seed
(`[2]` int32), so one call augments a batch with a fresh draw per example, and the same seed
reproduces it. The input pipeline calls `make_view` and hands the model
`concat([x, x_hat], axis=-1)`.
"""

from __future__ import annotations

import tensorflow as tf

MIX_SCRAMBLE_PATCH_SIZES = (1, 2, 4, 8)
BLUR_SIGMA_RANGE = (5.0, 10.0)
# Kernel half-widths are drawn from [3, 7), so every kernel fits in 2 * 6 + 1 taps.
BLUR_HALF_WIDTH_RANGE = (3, 7)
HIGH_LOW_PASS_SIGMA = 1.0


def view_channels(augmentation: str, channels: int) -> int:
    """Return the number of channels of `x_hat` for images of `channels` channels."""
    return 2 * channels if augmentation == "high_low_pass" else channels


def scramble(images: tf.Tensor, patch_size: int, seed: tf.Tensor) -> tf.Tensor:
    """Permute the non-overlapping `patch_size` squares of each image, a fresh permutation each.

    Args:
      images: `[batch, height, width, channels]`; `patch_size` must divide height and width.
      seed: `[2]` int32 stateless seed.
    Returns:
      `[batch, height, width, channels]` holding exactly the same patches, moved.
    """
    batch, height, width, channels = _static_shape(images)
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size {patch_size} does not divide the {height}x{width} images")
    rows, columns = height // patch_size, width // patch_size

    patches = tf.reshape(images, [-1, rows, patch_size, columns, patch_size, channels])
    patches = tf.transpose(patches, [0, 1, 3, 2, 4, 5])
    patches = tf.reshape(patches, [-1, rows * columns, patch_size, patch_size, channels])

    # Sorting uniform keys gives a uniformly random permutation per example.
    keys = tf.random.stateless_uniform([tf.shape(images)[0], rows * columns], seed=seed)
    permutation = tf.argsort(keys, axis=1)
    patches = tf.gather(patches, permutation, axis=1, batch_dims=1)

    patches = tf.reshape(patches, [-1, rows, columns, patch_size, patch_size, channels])
    patches = tf.transpose(patches, [0, 1, 3, 2, 4, 5])
    return tf.reshape(patches, [-1, height, width, channels])


def mix_scramble(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Scramble each example with a patch size drawn uniformly from {1, 2, 4, 8}."""
    seeds = tf.random.experimental.stateless_split(seed, num=len(MIX_SCRAMBLE_PATCH_SIZES) + 1)
    choice = tf.random.stateless_uniform(
        [tf.shape(images)[0]], seed=seeds[0], maxval=len(MIX_SCRAMBLE_PATCH_SIZES), dtype=tf.int32)
    # Computing all four and selecting keeps the batch one static-shaped tensor.
    candidates = tf.stack(
        [scramble(images, size, seeds[i + 1]) for i, size in enumerate(MIX_SCRAMBLE_PATCH_SIZES)], axis=1)
    return tf.gather(candidates, choice, axis=1, batch_dims=1)


def _gaussian_taps(sigma: tf.Tensor, half_width: tf.Tensor, max_half_width: int) -> tf.Tensor:
    """Return normalised Gaussian taps `[batch, 2 * max_half_width + 1]`, zero beyond `half_width`."""
    offsets = tf.range(-max_half_width, max_half_width + 1, dtype=tf.float32)[None, :]
    taps = tf.exp(-0.5 * tf.square(offsets / sigma[:, None]))
    taps *= tf.cast(tf.abs(offsets) <= tf.cast(half_width[:, None], tf.float32), tf.float32)
    return taps / tf.reduce_sum(taps, axis=1, keepdims=True)


def _separable_blur(images: tf.Tensor, taps: tf.Tensor, max_half_width: int) -> tf.Tensor:
    """Blur with per-example separable taps and symmetric padding.

    Taps beyond an example's half-width are zero, so padding every example by the largest
    half-width gives the same result as padding each by its own.
    """
    _, height, width, _ = _static_shape(images)
    size = 2 * max_half_width + 1
    padded = tf.pad(images, [[0, 0], [max_half_width] * 2, [max_half_width] * 2, [0, 0]], mode="SYMMETRIC")
    weights = taps[:, :, None, None, None]
    rows = tf.add_n([weights[:, t] * padded[:, t:t + height, :, :] for t in range(size)])
    return tf.add_n([weights[:, t] * rows[:, :, t:t + width, :] for t in range(size)])


def blur(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Gaussian blur, sigma uniform in [5, 10] and half-width uniform in {3, ..., 6} per example."""
    sigma_seed, width_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    batch = tf.shape(images)[0]
    sigma = tf.random.stateless_uniform([batch], seed=sigma_seed, minval=BLUR_SIGMA_RANGE[0],
                                        maxval=BLUR_SIGMA_RANGE[1])
    half_width = tf.random.stateless_uniform([batch], seed=width_seed, minval=BLUR_HALF_WIDTH_RANGE[0],
                                             maxval=BLUR_HALF_WIDTH_RANGE[1], dtype=tf.int32)
    max_half_width = BLUR_HALF_WIDTH_RANGE[1] - 1
    return _separable_blur(images, _gaussian_taps(sigma, half_width, max_half_width), max_half_width)


def high_low_pass(images: tf.Tensor, patch_size: int) -> tf.Tensor:
    """Return `[x - low, low]` where `low` is a fixed Gaussian blur (half-width `patch_size`, sigma 1)."""
    batch = tf.shape(images)[0]
    sigma = tf.fill([batch], HIGH_LOW_PASS_SIGMA)
    half_width = tf.fill([batch], patch_size)
    low = _separable_blur(images, _gaussian_taps(sigma, half_width, patch_size), patch_size)
    return tf.concat([images - low, low], axis=-1)


def make_view(images: tf.Tensor, augmentation: str, patch_size: int, seed: tf.Tensor) -> tf.Tensor:
    """Return the auxiliary view `x_hat` of a batch for the named augmentation."""
    if augmentation == "scramble":
        return scramble(images, patch_size, seed)
    if augmentation == "mix_scramble":
        return mix_scramble(images, seed)
    if augmentation == "blur":
        return blur(images, seed)
    if augmentation == "high_low_pass":
        return high_low_pass(images, patch_size)
    if augmentation == "no_op":
        return tf.identity(images)
    raise ValueError(f"unknown augmentation {augmentation!r}")


def _static_shape(images: tf.Tensor) -> tuple:
    shape = images.shape
    if shape.rank != 4 or None in shape[1:]:
        raise ValueError(f"expected images [batch, height, width, channels] with static sizes, got {shape}")
    return tuple(shape)
