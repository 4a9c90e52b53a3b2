"""Tests of the VAE family's shapes, parameter counts and loss terms."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import losses
from trainer.config import ConfigError, ModelConfig
from trainer.models import build_model

SEED = tf.constant([1, 2], tf.int32)


def _conv(kernel, channels_in, filters):
    return kernel * kernel * channels_in * filters + filters


def _dense(inputs, outputs):
    return inputs * outputs + outputs


def _gaussian_encoder(height, width, channels, latent):
    flat = (height // 8) * (width // 8) * 128
    return (_conv(6, channels, 32) + _conv(6, 32, 64) + _conv(4, 64, 128)
            + 2 * _dense(flat, latent))


def _decoder(height, width, channels, latent):
    return (_dense(latent, (height // 8) * (width // 8) * 128) + _conv(4, 128, 128) + _conv(4, 128, 64)
            + _conv(6, 64, 32) + _conv(6, 32, 2 * channels))


def _mixture_encoder(height, width, channels, latent, clusters):
    flat = (height // 8) * (width // 8) * 128
    return (_conv(6, channels, 128) + _conv(6, 128, 128) + _conv(4, 128, 128)
            + _dense(flat, 1024) + _dense(1024, 128) + _dense(128, clusters)
            + 2 * _dense(clusters, latent)
            + _dense(flat, 512) + _dense(clusters, 512) + 2 * _dense(512, latent))


def _expected_parameters(model, height, width, global_dims=128, local_dims=128, clusters=30):
    """Count the parameters from the layer list of the SPLIT architecture."""
    count = 0
    if model in ("gmvae", "lggmvae"):
        count += _mixture_encoder(height, width, 3, global_dims, clusters)
    else:
        count += _gaussian_encoder(height, width, 3, global_dims)
    decoder_latent = global_dims
    if model in ("lgvae", "lggmvae"):
        count += _gaussian_encoder(height, width, 3, local_dims) + _decoder(height, width, 3, local_dims)
        decoder_latent += local_dims
    return count + _decoder(height, width, 3, decoder_latent)


@pytest.mark.parametrize("model_name", ["lgvae", "gmvae", "lggmvae"])
@pytest.mark.parametrize("size", [32, 64])
def test_parameter_count(model_name, size):
    model = build_model(ModelConfig(model=model_name, patch_size=4), (size, size, 3))
    assert model.count_params() == _expected_parameters(model_name, size, size)


def test_parameter_count_known_value():
    # A fixed number guards the formula above against drifting with the code.
    model = build_model(ModelConfig(model="lggmvae", patch_size=4), (32, 32, 3))
    assert model.count_params() == 6_775_370


@pytest.mark.parametrize("model_name,terms", [
    ("lgvae", {"nll_x", "nll_x_hat", "kl_global", "kl_local", "loss"}),
    ("gmvae", {"nll_x", "kl_global", "kl_cluster", "loss"}),
    ("lggmvae", {"nll_x", "nll_x_hat", "kl_global", "kl_local", "kl_cluster", "loss"}),
])
@pytest.mark.parametrize("size", [32, 64])
def test_loss_terms_and_output_shapes(model_name, terms, size):
    model = build_model(ModelConfig(model=model_name, patch_size=4), (size, size, 3))
    channels = 6 if model_name != "gmvae" else 3
    assert model.input_channels == channels
    inputs = tf.random.uniform([4, size, size, channels], -1, 1, seed=0)
    losses = model.compute_losses(inputs, SEED, training=True)
    assert set(losses) == terms
    for value in losses.values():
        assert value.shape == (4,)
        assert np.all(np.isfinite(value.numpy()))

    codes = model.encode(inputs)
    assert codes["z_g"].shape == (4, 128)
    assert model.decode(codes["z_g"], codes.get("z_l")).shape == (4, size, size, 3)
    if model_name != "lgvae":
        assert codes["logits"].shape == (4, 30)
        assert codes["cluster"].shape == (4,)


def test_loss_combines_terms_with_weights():
    config = ModelConfig(model="lggmvae", beta=3.0, alpha=5.0, patch_size=4, local_beta_scale=0.5)
    model = build_model(config, (32, 32, 3))
    inputs = tf.random.uniform([2, 32, 32, 6], -1, 1, seed=1)
    terms = {name: value.numpy() for name, value in model.compute_losses(inputs, SEED).items()}
    expected = (terms["nll_x"] + terms["nll_x_hat"] + 3.0 * terms["kl_global"] + 1.5 * terms["kl_local"]
                + 5.0 * terms["kl_cluster"])
    np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)


def test_batch_cluster_kl_and_warmup():
    config = ModelConfig(model="gmvae", beta=3.0, alpha=5.0, cluster_kl="batch", kl_warmup_steps=10)
    model = build_model(config, (32, 32, 3))
    inputs = tf.random.uniform([3, 32, 32, 3], -1, 1, seed=3)
    logits = model.encode(inputs)["logits"]
    terms = {name: value.numpy() for name, value in model.compute_losses(inputs, SEED, step=4, training=False).items()}
    np.testing.assert_allclose(terms["kl_cluster"], np.full(3, float(losses.batch_categorical_kl_to_uniform(logits))),
                               rtol=1e-5)
    expected = terms["nll_x"] + 0.4 * (3.0 * terms["kl_global"] + 5.0 * terms["kl_cluster"])
    np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)
    after = model.compute_losses(inputs, SEED, step=25, training=False)
    np.testing.assert_allclose(after["loss"].numpy(), after["nll_x"].numpy() + 3.0 * after["kl_global"].numpy()
                               + 5.0 * after["kl_cluster"].numpy(), rtol=1e-5)


def test_noise_follows_seed():
    model = build_model(ModelConfig(model="lgvae", patch_size=4), (32, 32, 3))
    inputs = tf.random.uniform([2, 32, 32, 6], -1, 1, seed=2)
    first = model.compute_losses(inputs, SEED)["loss"].numpy()
    again = model.compute_losses(inputs, SEED)["loss"].numpy()
    other = model.compute_losses(inputs, tf.constant([1, 3], tf.int32))["loss"].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_high_low_pass_view_has_six_channels():
    model = build_model(ModelConfig(model="lgvae", augmentation="high_low_pass", patch_size=2), (32, 32, 3))
    assert model.input_channels == 9
    losses = model.compute_losses(tf.zeros([2, 32, 32, 9]), SEED)
    assert losses["nll_x_hat"].shape == (2,)


def test_cluster_prior_samples_per_cluster():
    model = build_model(ModelConfig(model="gmvae"), (32, 32, 3))
    samples = model.sample_global(6, SEED, cluster=tf.constant([0, 0, 0, 1, 1, 1]))
    assert samples.shape == (6, 128)


@pytest.mark.parametrize("fields", [{"cluster_kl": "marginal"}, {"kl_warmup_steps": -1},
                                    {"local_beta_scale": -0.5}])
def test_objective_options_are_validated(fields):
    with pytest.raises(ConfigError, match=next(iter(fields))):
        ModelConfig(model="gmvae", **fields).validate()
