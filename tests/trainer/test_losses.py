"""Tests of the loss terms against closed forms and tensorflow-probability."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from trainer import losses

tfd = tfp.distributions


def _sigmoid(value):
    return 1.0 / (1.0 + math.exp(-value))


def _nll_one_pixel(x, mean, log_scale):
    return float(losses.discretized_logistic_nll(
        tf.constant([[[[x]]]], tf.float32), tf.constant([[[[mean]]]], tf.float32),
        tf.constant([[[[log_scale]]]], tf.float32))[0])


@pytest.mark.parametrize("mean,log_scale", [(-0.9, -2.0), (0.0, -1.0), (0.5, -3.0)])
def test_nll_lowest_bin_is_cdf(mean, log_scale):
    scale = math.exp(log_scale)
    expected = -math.log(_sigmoid((-1.0 - mean + 1 / 255) / scale))
    assert _nll_one_pixel(-1.0, mean, log_scale) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("mean,log_scale", [(0.9, -2.0), (0.0, -1.0), (-0.5, -3.0)])
def test_nll_highest_bin_is_survival(mean, log_scale):
    scale = math.exp(log_scale)
    expected = -math.log(1.0 - _sigmoid((1.0 - mean - 1 / 255) / scale))
    assert _nll_one_pixel(1.0, mean, log_scale) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("x,mean,log_scale", [(0.2, 0.25, -3.0), (-0.5, -0.4, -2.0), (0.0, 0.0, -5.0)])
def test_nll_interior_is_bin_mass(x, mean, log_scale):
    scale = math.exp(log_scale)
    mass = _sigmoid((x - mean + 1 / 255) / scale) - _sigmoid((x - mean - 1 / 255) / scale)
    assert _nll_one_pixel(x, mean, log_scale) == pytest.approx(-math.log(mass), rel=1e-4)


def test_nll_tiny_mass_uses_density():
    x, mean, log_scale = 0.5, -0.5, -5.0
    scale = math.exp(log_scale)
    z = (x - mean) / scale
    log_density = z - log_scale - 2 * math.log1p(math.exp(z)) if z < 30 else -z - log_scale
    expected = -(log_density + math.log(2 / 255))
    assert _nll_one_pixel(x, mean, log_scale) == pytest.approx(expected, rel=1e-4)


def test_nll_clamps_log_scale():
    assert _nll_one_pixel(0.0, 0.0, -20.0) == pytest.approx(_nll_one_pixel(0.0, 0.0, -7.0))


def test_nll_matches_quantized_logistic():
    # On the 0..255 scale the same model is a quantised logistic (agreement where mass > 1e-5).
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 8, 8, 3))
    x = (pixels / 127.5 - 1.0).astype(np.float32)
    mean = np.clip(x + rng.normal(0, 0.05, x.shape), -1, 1).astype(np.float32)
    log_scale = rng.uniform(-4, -2, x.shape).astype(np.float32)
    ours = losses.discretized_logistic_nll(x, mean, log_scale).numpy()
    logistic = tfd.Logistic((mean + 1.0) * 127.5 - 0.5, np.exp(log_scale) * 127.5)
    quantized = tfd.QuantizedDistribution(logistic, low=0.0, high=255.0)
    reference = -tf.reduce_sum(quantized.log_prob(pixels.astype(np.float32)), axis=[1, 2, 3]).numpy()
    np.testing.assert_allclose(ours, reference, atol=0.005 * 8 * 8 * 3)


def test_gaussian_kl_closed_form():
    mean = np.array([[0.5, -1.0]], np.float32)
    sigma = np.array([[2.0, 0.5]], np.float32)
    expected = np.sum(np.log(1 / sigma) + (sigma ** 2 + mean ** 2) / 2 - 0.5)
    assert float(losses.gaussian_kl(mean, sigma)[0]) == pytest.approx(expected, rel=1e-5)


def test_gaussian_kl_against_prior():
    mean, sigma = np.array([[1.0]], np.float32), np.array([[1.0]], np.float32)
    kl = float(losses.gaussian_kl(mean, sigma, prior_mean=np.array([[1.0]], np.float32),
                                  prior_sigma=np.array([[1.0]], np.float32))[0])
    assert kl == pytest.approx(0.0, abs=1e-6)


def test_categorical_kl_to_uniform():
    logits = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))
    probabilities = np.array([0.7, 0.2, 0.1])
    expected = math.log(3) + np.sum(probabilities * np.log(probabilities))
    assert float(losses.categorical_kl_to_uniform(logits)[0]) == pytest.approx(expected, rel=1e-5)
    assert float(losses.categorical_kl_to_uniform(np.zeros((1, 30), np.float32))[0]) == pytest.approx(0.0, abs=1e-6)


def test_batch_categorical_kl_to_uniform():
    # Two confident examples on different clusters: the batch uses both clusters of K = 2 evenly.
    confident = np.log(np.array([[0.999999, 0.000001], [0.000001, 0.999999]], np.float32))
    assert float(losses.batch_categorical_kl_to_uniform(confident)) == pytest.approx(0.0, abs=1e-4)
    same = np.log(np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]], np.float32))
    assert float(losses.batch_categorical_kl_to_uniform(same)) == pytest.approx(
        float(losses.categorical_kl_to_uniform(same)[0]), rel=1e-5)
