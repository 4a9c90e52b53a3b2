"""The loss terms of the VAE family, as pure per-example functions.

Every function returns one value per example (`[batch]`), summed over pixels or latent
dimensions; the training loop averages over the global batch.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

# PixelCNN++ conventions for 8-bit data scaled to [-1, 1]: bins of width 2/255, edges at +-0.999.
BIN_HALF_WIDTH = 1.0 / 255.0
EDGE = 0.999
MIN_BIN_MASS = 1e-5
MIN_LOG_SCALE = -7.0
SIGMA_FLOOR = 1e-6


def discretized_logistic_nll(x: tf.Tensor, mean: tf.Tensor, log_scale: tf.Tensor) -> tf.Tensor:
    """Negative log-likelihood of 8-bit data under a discretised logistic, summed per example.

    The single-logistic form of PixelCNN++ (Salimans et al., 2017, eq. 2): the mass of the
    pixel's bin, the CDF up to the upper edge for the lowest bin and one minus the CDF at the
    lower edge for the highest; where a bin's mass is under 1e-5, the density at the bin's centre
    times the bin width.

    Args:
      x: data `[batch, height, width, channels]` in [-1, 1].
      mean, log_scale: the distribution's parameters, same shape; `log_scale` is clamped at -7.
    Returns:
      `[batch]` negative log-likelihood in nats.
    """
    log_scale = tf.maximum(log_scale, MIN_LOG_SCALE)
    inverse_scale = tf.exp(-log_scale)
    centred = x - mean

    upper = inverse_scale * (centred + BIN_HALF_WIDTH)
    lower = inverse_scale * (centred - BIN_HALF_WIDTH)
    log_cdf_upper = upper - tf.nn.softplus(upper)
    log_survival_lower = -tf.nn.softplus(lower)
    bin_mass = tf.sigmoid(upper) - tf.sigmoid(lower)

    middle = inverse_scale * centred
    log_density_middle = middle - log_scale - 2.0 * tf.nn.softplus(middle)
    log_density_times_width = log_density_middle + math.log(2.0 * BIN_HALF_WIDTH)

    interior = tf.where(bin_mass > MIN_BIN_MASS,
                        tf.math.log(tf.maximum(bin_mass, 1e-12)),
                        log_density_times_width)
    log_likelihood = tf.where(x < -EDGE, log_cdf_upper, tf.where(x > EDGE, log_survival_lower, interior))
    return -tf.reduce_sum(log_likelihood, axis=[1, 2, 3])


def gaussian_kl(mean: tf.Tensor, sigma: tf.Tensor,
                prior_mean: tf.Tensor | float = 0.0, prior_sigma: tf.Tensor | float = 1.0) -> tf.Tensor:
    """Analytic KL(N(mean, sigma) || N(prior_mean, prior_sigma)) summed over `[batch, dims]` -> `[batch]`."""
    posterior = tfd.Normal(mean, sigma)
    prior = tfd.Normal(tf.broadcast_to(tf.cast(prior_mean, mean.dtype), tf.shape(mean)),
                       tf.broadcast_to(tf.cast(prior_sigma, mean.dtype), tf.shape(mean)))
    return tf.reduce_sum(tfd.kl_divergence(posterior, prior), axis=-1)


def categorical_kl_to_uniform(logits: tf.Tensor) -> tf.Tensor:
    """KL(softmax(logits) || Uniform(K)) per example, `[batch, K]` -> `[batch]`."""
    uniform = tfd.Categorical(logits=tf.zeros_like(logits))
    return tfd.kl_divergence(tfd.Categorical(logits=logits), uniform)


def batch_categorical_kl_to_uniform(logits: tf.Tensor) -> tf.Tensor:
    """KL(mean over the batch of softmax(logits) || Uniform(K)), a scalar, from `[batch, K]` logits.

    Under a strategy with several replicas, each replica averages its own part of the batch, as
    unsynchronised batch normalisation does. An all-reduce cannot run inside the replica's nested
    tf.function, so the value depends on the per-replica batch size, and the loop warns.
    """
    average = tf.reduce_mean(tf.nn.softmax(logits, axis=-1), axis=0)
    num_clusters = tf.cast(tf.shape(logits)[-1], logits.dtype)
    return tf.reduce_sum(average * tf.math.log(tf.maximum(average, 1e-12))) + tf.math.log(num_clusters)
