"""Building blocks that both model families use: convolutions, float32 casts, Gaussian heads."""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer import losses, spatial


def conv(filters: int, kernel: int, stride: int, activation: str | None) -> keras.layers.Conv2D:
    """Return a `same`-padded 2-D convolution."""
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", activation=activation)


def float32(values: tf.Tensor) -> tf.Tensor:
    # Under the mixed_bfloat16 policy layers compute in bfloat16. Distribution parameters are
    # cast back so that sampling, the KL terms and the likelihoods run in float32.
    return tf.cast(values, tf.float32)


def float32_sigmoid(pre_activation: tf.Tensor) -> tf.Tensor:
    """Return `sigmoid(x)` computed in float32, for outputs that a likelihood compares with pixels.

    In bfloat16 the sigmoid rounds to exactly 1 above x = 6.2. There its gradient and that of the
    clipped cross-entropy vanish, so such a pixel stops learning. In float32 that happens above 17.
    """
    return tf.sigmoid(float32(pre_activation))


def positive(pre_activation: tf.Tensor) -> tf.Tensor:
    """Return `softplus(x) + 1e-6` in float32; the floor keeps log(sigma) finite in the KL terms."""
    return tf.nn.softplus(float32(pre_activation)) + losses.SIGMA_FLOOR


class ConvGaussianEncoder(keras.layers.Layer):
    """Conv(32, k0, 2), Conv(64, k1, 2), Conv(128, k2, 2), all relu, flatten, then a Gaussian head.

    The VAE family uses kernels (6, 6, 4), the SPAIR family's background and local encoders (3, 3, 3).
    """

    def __init__(self, latent_dims: int, kernels: tuple[int, int, int], **kwargs):
        super().__init__(**kwargs)
        self.convolutions = [conv(filters, kernel, 2, "relu") for filters, kernel in zip((32, 64, 128), kernels)]
        self.flatten = keras.layers.Flatten()
        self.mean = keras.layers.Dense(latent_dims)
        self.sigma = keras.layers.Dense(latent_dims)

    def call(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Map `[batch, height, width, channels]` to (mean, sigma), each `[batch, latent_dims]`."""
        features = images
        for convolution in self.convolutions:
            features = convolution(features)
        features = self.flatten(features)
        return float32(self.mean(features)), positive(self.sigma(features))


class BilinearResize(keras.layers.Layer):
    """Resize `[batch, h, w, channels]` to `[batch, height, width, channels]`, bilinearly.

    The values are those of `tf.image.resize(..., "bilinear")` (half-pixel centres, no
    antialiasing, edge pixels clamped), computed as one interpolation matrix per axis: two
    matrix products forward and two backward. In the `lg_spair` training step on the CPU,
    TensorFlow's resize and its gradient took 68 ms of CPU time per step and these products 43 ms
    (profile in benchmarks/results/spair_speed.md). They also run in bfloat16 under the mixed
    policy, where TensorFlow's resize kernel is slow.
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height = height
        self.width = width

    def call(self, images: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(images)[0]
        rows, columns, channels = images.shape[1], images.shape[2], images.shape[3]
        row_weights = spatial.interpolation_weights(spatial.pixel_centres(self.height, images.dtype), rows)
        column_weights = spatial.interpolation_weights(spatial.pixel_centres(self.width, images.dtype), columns)
        # Rows first on `[batch, rows, columns * channels]`, then columns on
        # `[batch * height, columns, channels]`: both are matmuls with no transposes.
        resized = tf.matmul(row_weights, tf.reshape(images, [batch, rows, columns * channels]))
        resized = tf.matmul(column_weights, tf.reshape(resized, [batch * self.height, columns, channels]))
        return tf.reshape(resized, [batch, self.height, self.width, channels])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])
