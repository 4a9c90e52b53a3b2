"""Tests of the SPAIR loss terms against plain loops, closed forms and tensorflow-probability."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from trainer import spair_losses

tfd = tfp.distributions


def _loop_prior_log_odds(present: np.ndarray, q: float) -> np.ndarray:
    """The count prior exactly as specified: one cell at a time, in probability space, float64."""
    batch, num_cells = present.shape
    counts = np.arange(num_cells + 1)
    log_odds = np.zeros((batch, num_cells))
    for example in range(batch):
        probabilities = q * (1.0 - q) ** counts
        probabilities /= probabilities.sum()
        found = 0
        for cell in range(num_cells):
            rate = np.maximum(counts - found, 0) / (num_cells - cell)
            p = np.sum(probabilities * rate)
            log_odds[example, cell] = np.log(p) - np.log(1.0 - p)
            observed = present[example, cell]
            probabilities = probabilities * (observed * rate + (1 - observed) * (1.0 - rate))
            probabilities /= probabilities.sum()
            found += observed
    return log_odds


def _logistic_log_density(y, location, scale):
    z = (y - location) / scale
    return -z - np.log(scale) - 2.0 * np.log1p(np.exp(-z))


def _loop_presence_kl(pre_sigmoid, logits, q, tau):
    present = (pre_sigmoid > 0).astype(np.float64)
    prior = _loop_prior_log_odds(present, q)
    posterior_density = _logistic_log_density(pre_sigmoid, logits / tau, 1.0 / tau)
    prior_density = _logistic_log_density(pre_sigmoid, prior / tau, 1.0 / tau)
    return (posterior_density - prior_density).sum(axis=-1)


def _random_presence_inputs(seed, batch, num_cells, tau):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (batch, num_cells)).astype(np.float32)
    noise = rng.logistic(size=(batch, num_cells)).astype(np.float32)
    return (logits + noise) / np.float32(tau), logits


@pytest.mark.parametrize("grid", [2, 4])
@pytest.mark.parametrize("q", [0.0, 0.3, 0.99])
def test_count_prior_matches_loop(grid, q):
    num_cells = grid * grid
    rng = np.random.default_rng(grid)
    present = (rng.random((16, num_cells)) < rng.random((16, 1))).astype(np.float32)
    # At q = 0 the loop's q (1 - q)^k is 0/0 once normalised; its limit is the uniform prior.
    expected = _loop_prior_log_odds(present.astype(np.float64), max(q, 1e-12))
    actual = spair_losses.count_prior_log_odds(tf.constant(present), q).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", [2, 4])
@pytest.mark.parametrize("q", [0.05, 0.5, 0.99])
def test_presence_kl_matches_loop(grid, q):
    tau = 0.8
    pre_sigmoid, logits = _random_presence_inputs(grid + 10, 8, grid * grid, tau)
    expected = _loop_presence_kl(pre_sigmoid.astype(np.float64), logits.astype(np.float64), q, tau)

    present = tf.constant(pre_sigmoid > 0, tf.float32)
    prior = spair_losses.count_prior_log_odds(present, q)
    actual = spair_losses.presence_kl(tf.constant(pre_sigmoid), tf.constant(logits), prior, tau).numpy()
    relative_error = np.abs(actual - expected) / np.abs(expected)
    assert relative_error.max() < 1e-5


def test_count_prior_uniform_first_cell_is_even():
    # With q = 0 every count 0..N is equally likely, so the first cell is present with p = 1/2.
    log_odds = spair_losses.count_prior_log_odds(tf.zeros([1, 16]), 0.0).numpy()
    assert log_odds[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_count_prior_favours_absence_as_q_grows():
    present = tf.zeros([1, 16])
    first_cell = [spair_losses.count_prior_log_odds(present, q).numpy()[0, 0] for q in (0.1, 0.5, 0.9, 0.99)]
    assert all(later < earlier for earlier, later in zip(first_cell, first_cell[1:]))


def test_count_prior_finite_on_large_grid():
    # On an 8x8 grid (q^k underflows float32 for large k) every cell's prior stays finite.
    rng = np.random.default_rng(3)
    present = tf.constant(rng.random((4, 64)) < 0.5, tf.float32)
    assert np.all(np.isfinite(spair_losses.count_prior_log_odds(present, 0.99).numpy()))


@pytest.mark.parametrize("tau", [0.5, 0.8, 1.0])
def test_concrete_log_density_matches_tfp_logistic(tau):
    rng = np.random.default_rng(int(tau * 10))
    logits = rng.normal(0.0, 3.0, 64).astype(np.float32)
    samples = rng.normal(0.0, 8.0, 64).astype(np.float32)
    expected = tfd.Logistic(loc=logits / tau, scale=1.0 / tau).log_prob(samples).numpy()
    actual = spair_losses.concrete_log_density(tf.constant(samples), tf.constant(logits), tau).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_linear_anneal_endpoints():
    values = [float(spair_losses.linear_anneal(step, 10.0, 0.0, 100)) for step in (0, 50, 100, 1000)]
    assert values == pytest.approx([10.0, 5.0, 0.0, 0.0])


def test_bernoulli_cross_entropy_closed_form():
    targets = tf.constant([[[[0.0]], [[1.0]]], [[[0.25]], [[0.5]]]])
    probabilities = tf.constant([[[[0.2]], [[0.9]]], [[[0.5]], [[0.5]]]])
    expected = [-np.log(0.8) - np.log(0.9), 2 * np.log(2.0)]
    actual = spair_losses.bernoulli_cross_entropy(targets, probabilities).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5)


def test_bernoulli_cross_entropy_finite_at_extremes():
    targets = tf.constant([[1.0, 0.0]])
    probabilities = tf.constant([[0.0, 1.0]])
    assert np.isfinite(spair_losses.bernoulli_cross_entropy(targets, probabilities).numpy()).all()
