"""Loss terms and annealing schedules of SPAIR and SPLIT-SPAIR, as pure per-example functions.

SPAIR (Crawford and Pineau, 2019, "Spatially Invariant Unsupervised Object Detection with
Convolutional Neural Networks") scores the presence of the object of each grid cell with a
relaxed Bernoulli (concrete) variable, and sets its prior through a prior on the number of
objects in the image. Every function returns one value per example (`[batch]`), summed over cells
and dimensions, except the schedules and the prior log-odds.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

# Keeps log(p) and log(1 - p) finite in the cross-entropy of rendered images.
PROBABILITY_EPSILON = 1e-6


def linear_anneal(step: tf.Tensor | int, start: float, end: float, num_steps: int) -> tf.Tensor:
    """Return `start` moved linearly to `end` over `num_steps` steps, then held at `end` (float32 scalar)."""
    fraction = tf.minimum(tf.cast(step, tf.float32) / float(max(num_steps, 1)), 1.0)
    return start + (end - start) * fraction


def bernoulli_cross_entropy(targets: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of `targets` in [0, 1] under pixel probabilities, `[batch, ...]` -> `[batch]`."""
    probabilities = tf.clip_by_value(probabilities, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    log_likelihood = targets * tf.math.log(probabilities) + (1.0 - targets) * tf.math.log1p(-probabilities)
    return -tf.reduce_sum(tf.reshape(log_likelihood, [tf.shape(targets)[0], -1]), axis=1)


def concrete_log_density(pre_sigmoid: tf.Tensor, logits: tf.Tensor, temperature: float) -> tf.Tensor:
    """Log-density of a relaxed Bernoulli sample before its sigmoid (Maddison et al., 2017, eq. 5).

    A sample `y = (logits + L) / temperature` with standard logistic noise `L` follows a logistic
    distribution with location `logits / temperature` and scale `1 / temperature`; this returns
    its log-density at `pre_sigmoid`, elementwise.
    """
    standardised = temperature * pre_sigmoid - logits
    return math.log(temperature) - standardised - 2.0 * tf.nn.softplus(-standardised)


def _log_binomial_table(num_cells: int) -> np.ndarray:
    """Return `table[m, j] = log C(m, j)` for `0 <= j <= m <= num_cells`, and -inf where `j > m`."""
    table = np.full((num_cells + 1, num_cells + 1), -np.inf)
    for total in range(num_cells + 1):
        chosen = np.arange(total + 1)
        table[total, :total + 1] = (math.lgamma(total + 1) - np.array([math.lgamma(j + 1) for j in chosen])
                                    - np.array([math.lgamma(total - j + 1) for j in chosen]))
    return table


def count_prior_log_odds(present: tf.Tensor, success_probability: tf.Tensor | float) -> tf.Tensor:
    """Return the prior log-odds of presence of each cell under a prior on the object count.

    The prior draws a count `k` with `P(k) ∝ q (1 - q)^k` for `k = 0..N` (`N` cells,
    `q = success_probability`), then `k` of the `N` cells uniformly without replacement. Visiting
    the cells in row-major order with `s` objects found among the first `i`, cell `i` contains an
    object with probability `sum_k P(k | first i cells) (k - s) / (N - i)`, and `P(k | ...)` is
    `P(k)` reweighted after each cell by the probability of what was observed there.

    The reweighting telescopes: after a prefix of `i` cells with `s` objects, the weight of `k`
    is `C(N - i, k - s) / C(N, k)`, the chance that `k` uniformly chosen cells agree with the
    prefix. So every cell's prior is computed at once, without a loop over cells, from the
    exclusive running count `s`. The arithmetic runs in float64 and in log space, because the
    weights of large counts underflow float32 once `q` nears 1; the result carries no gradient.

    Args:
      present: `[batch, num_cells]`, 1 where the cell's (hard) presence is on, in row-major order.
      success_probability: `q` in [0, 1).

    Returns:
      `[batch, num_cells]` float32 prior log-odds `log p_i - log(1 - p_i)`.
    """
    num_cells = present.shape[-1]
    present = tf.cast(tf.stop_gradient(present), tf.float64)
    q = tf.cast(success_probability, tf.float64)

    counts = tf.range(num_cells + 1, dtype=tf.float64)
    # The factor q cancels in the normalisation, which keeps q = 0 (a uniform prior) well defined.
    log_prior = tf.math.multiply_no_nan(tf.math.log1p(-q), counts)

    found = tf.cast(tf.math.cumsum(present, axis=-1, exclusive=True), tf.int32)
    remaining = num_cells - tf.range(num_cells)
    still_to_find = tf.range(num_cells + 1)[None, None, :] - found[..., None]
    log_binomial = tf.constant(_log_binomial_table(num_cells), tf.float64)

    def log_choose(total: tf.Tensor, chosen: tf.Tensor) -> tf.Tensor:
        valid = (chosen >= 0) & (chosen <= total)
        safe = tf.stack([tf.broadcast_to(total, tf.shape(chosen)), tf.clip_by_value(chosen, 0, num_cells)], axis=-1)
        return tf.where(valid, tf.gather_nd(log_binomial, safe), tf.constant(-np.inf, tf.float64))

    # log of P(k) C(N - i, k - s) / C(N, k), unnormalised over k: `[batch, num_cells, num_counts]`.
    log_weight = (log_prior + log_choose(remaining[None, :, None], still_to_find)
                  - log_binomial[num_cells][None, None, :])

    # p_i and 1 - p_i share the normaliser sum_k weight(k) (N - i), which cancels in the odds.
    to_find = tf.cast(still_to_find, tf.float64)
    log_present = tf.reduce_logsumexp(log_weight + _safe_log(to_find), axis=-1)
    not_found = tf.cast(remaining[None, :, None], tf.float64) - to_find
    log_absent = tf.reduce_logsumexp(log_weight + _safe_log(not_found), axis=-1)
    return tf.cast(log_present - log_absent, tf.float32)


def _safe_log(values: tf.Tensor) -> tf.Tensor:
    """Return log(values) where positive and -inf elsewhere, without NaN gradients or warnings."""
    positive = values > 0
    return tf.where(positive, tf.math.log(tf.where(positive, values, tf.ones_like(values))),
                    tf.constant(-np.inf, values.dtype))


def presence_kl(pre_sigmoid: tf.Tensor, logits: tf.Tensor, prior_log_odds: tf.Tensor,
                temperature: float) -> tf.Tensor:
    """Sampled KL between the posterior and the prior relaxed Bernoulli of every cell, per example.

    Args:
      pre_sigmoid: `[batch, num_cells]` the sample `(logits + L) / temperature`.
      logits: `[batch, num_cells]` the posterior log-odds.
      prior_log_odds: `[batch, num_cells]` the prior log-odds (`count_prior_log_odds`).
      temperature: the relaxation temperature `tau` of both distributions.

    Returns:
      `[batch]` float32, the sum over cells of `log q(y) - log p(y)` at the sample `y`.
    """
    # The two log-densities are close, so float32 loses about 1e-5 of their difference to
    # cancellation. These tensors have one value per cell, and float64 costs nothing measurable.
    pre_sigmoid, logits, prior_log_odds = (tf.cast(value, tf.float64)
                                           for value in (pre_sigmoid, logits, prior_log_odds))
    posterior = concrete_log_density(pre_sigmoid, logits, temperature)
    prior = concrete_log_density(pre_sigmoid, prior_log_odds, temperature)
    return tf.cast(tf.reduce_sum(posterior - prior, axis=-1), tf.float32)
