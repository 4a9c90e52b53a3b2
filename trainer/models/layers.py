"""Building blocks that both model families use: convolutions, float32 casts, Gaussian heads."""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer import losses


def conv(filters: int, kernel: int, stride: int, activation: str | None) -> keras.layers.Conv2D:
    """Return a `same`-padded 2-D convolution."""
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", activation=activation)


def float32(values: tf.Tensor) -> tf.Tensor:
    # Under the mixed_bfloat16 policy layers compute in bfloat16. Distribution parameters are
    # cast back so that sampling, the KL terms and the likelihoods run in float32.
    return tf.cast(values, tf.float32)


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
