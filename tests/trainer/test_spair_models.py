"""Tests of the SPAIR family's shapes, parameter counts, renderer, loss terms and tracing."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import spatial
from trainer.config import ConfigError, ModelConfig
from trainer.models import build_model, layers, spair

SEED = tf.constant([1, 2], tf.int32)
SPAIR_FIELDS = {"beta": 0.5, "tau": 0.8, "patch_size": 4}


def _config(model, **fields):
    return ModelConfig(model=model, **{**SPAIR_FIELDS, **fields})


def _conv(kernel, channels_in, filters):
    return kernel * kernel * channels_in * filters + filters


def _dense(inputs, outputs):
    return inputs * outputs + outputs


def _image_encoder(dense, height, width, channels, latent):
    if dense:
        return _dense(height * width * channels, 1024) + _dense(1024, 500) + 2 * _dense(500, latent)
    flat = (height // 8) * (width // 8) * 128
    return _conv(3, channels, 32) + _conv(3, 32, 64) + _conv(3, 64, 128) + 2 * _dense(flat, latent)


def _image_decoder(dense, height, width, channels, latent):
    if dense:
        return _dense(latent, 500) + _dense(500, 1024) + _dense(1024, height * width * channels)
    return (_dense(latent, (height // 8) * (width // 8) * 128) + _conv(3, 128, 128) + _conv(3, 128, 64)
            + _conv(3, 64, 32) + _conv(3, 32, channels))


def _expected_parameters(config, height=48, width=48, channels=3):
    """Count the parameters from the layer list of SPAIR and SPLIT-SPAIR."""
    what, size = config.latent_size, config.object_size
    backbone = (_conv(4, channels, 128) + _conv(4, 128, 128) + _conv(4, 128, 128)
                + _conv(1, 128, 128) + _conv(1, 128, 128) + _conv(1, 128, 100))
    where = _dense(100, 128) + _dense(128, 64) + _dense(64, 16)
    flat_glimpse = (size // 4) * (size // 4) * 64
    object_encoder = (_conv(3, channels, 32) + _conv(3, 32, 64) + _dense(flat_glimpse, 2 * what)
                      + 2 * _dense(2 * what, what))
    depth = _dense(100 + 8 + 4 + what, 64) + _dense(64, 10)
    presence = _dense(100 + 8 + 4 + what + 1, 64) + _dense(64, 1)
    code = what + (config.local_latent_size if config.model == "lg_spair" and config.concat_z_what else 0)
    object_decoder = (_dense(code, 2 * code) + _dense(2 * code, (size // 4) ** 2 * 32) + _conv(3, 32, 64)
                      + _conv(3, 64, 32) + _conv(3, 32, channels + 1))
    count = backbone + where + object_encoder + depth + presence + object_decoder
    if config.model in ("bg_spair", "lg_spair"):
        background_code = config.bg_latent_size
        if config.model == "lg_spair" and config.concat_z_bg:
            background_code += config.local_latent_size
        count += _image_encoder(config.dense_bg, height, width, channels, config.bg_latent_size)
        count += _image_decoder(config.dense_bg, height, width, channels, background_code)
    if config.model == "lg_spair":
        count += _image_encoder(config.dense_local, height, width, channels, config.local_latent_size)
        count += _image_decoder(config.dense_local, height, width, channels, config.local_latent_size)
    return count


CONFIGS = {
    "spair": _config("spair"),
    "bg_spair": _config("bg_spair", latent_size=64),
    "bg_spair_dense": _config("bg_spair", latent_size=64, bg_latent_size=64, dense_bg=True),
    "lg_spair_conv": _config("lg_spair", split_z_l=True),
    "lg_spair_easy": _config("lg_spair", patch_size=8, latent_size=64, bg_latent_size=4, local_latent_size=4,
                             split_z_l=True, concat_z_what=True, dense_local=True, dense_bg=True),
    "lg_spair_concat_bg": _config("lg_spair", concat_z_what=True, concat_z_bg=True, object_size=16),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count(name):
    config = CONFIGS[name]
    model = build_model(config, (48, 48, 3))
    assert model.count_params() == _expected_parameters(config)


def test_parameter_count_known_values():
    # Fixed numbers guard the formula above against drifting with the code.
    assert build_model(CONFIGS["bg_spair"], (48, 48, 3)).count_params() == 1_887_214
    assert build_model(CONFIGS["lg_spair_easy"], (48, 48, 3)).count_params() == 31_902_283


@pytest.mark.parametrize("name,terms", [
    ("spair", {"bce_x", "kl_what", "kl_depth", "kl_shift", "kl_zoom", "kl_pres", "loss"}),
    ("bg_spair", {"bce_x", "kl_what", "kl_depth", "kl_shift", "kl_zoom", "kl_pres", "kl_bg", "loss"}),
    ("lg_spair_easy", {"bce_x", "kl_what", "kl_depth", "kl_shift", "kl_zoom", "kl_pres", "kl_bg", "kl_local",
                       "bce_x_hat", "loss"}),
])
def test_loss_terms_and_output_shapes(name, terms):
    config = CONFIGS[name]
    model = build_model(config, (48, 48, 3))
    channels = 6 if config.model == "lg_spair" else 3
    assert model.input_channels == channels
    assert model.grid_shape == (4, 4)
    inputs = tf.random.stateless_uniform([3, 48, 48, channels], seed=[0, 1])
    losses = model.compute_losses(inputs, SEED, step=tf.constant(100, tf.int64), training=True)
    assert set(losses) == terms
    for name_, value in losses.items():
        assert value.shape == (3,), name_
        assert np.all(np.isfinite(value.numpy())), name_

    outputs = model.infer(inputs)
    size = config.object_size
    assert outputs["reconstruction"].shape == (3, 48, 48, 3)
    assert outputs["background"].shape == (3, 48, 48, 3)
    assert outputs["boxes"].shape == (3, 16, 4)
    assert outputs["glimpses"].shape == (3, 16, size, size, 3)
    assert outputs["objects"].shape == (3, 16, size, size, 4)
    assert outputs["what_mean"].shape == (3, 16, config.latent_size)
    assert outputs["count"].shape == (3,)
    if config.model == "lg_spair":
        assert outputs["x_hat_reconstruction"].shape == (3, 48, 48, 3)


@pytest.mark.parametrize("image_shape,grid", [((96, 96, 3), (8, 8)), ((48, 96, 3), (4, 8)), ((72, 48, 1), (6, 4))])
def test_grid_follows_image_shape(image_shape, grid):
    model = build_model(_config("bg_spair", latent_size=16, object_size=16), image_shape)
    assert model.grid_shape == grid
    outputs = model.infer(tf.zeros([2, *image_shape]))
    assert outputs["boxes"].shape == (2, grid[0] * grid[1], 4)
    assert outputs["reconstruction"].shape == (2, *image_shape)


def test_cell_centres_tile_the_image():
    centres = spair.grid_cell_centres(2, 3).numpy()
    expected = [(-2 / 3, -0.5), (0.0, -0.5), (2 / 3, -0.5), (-2 / 3, 0.5), (0.0, 0.5), (2 / 3, 0.5)]
    np.testing.assert_allclose(centres, expected, atol=1e-6)


def test_image_size_must_fit_grid():
    with pytest.raises(ConfigError, match="multiple of 24"):
        build_model(_config("bg_spair"), (60, 60, 3))
    # Without a convolutional decoder the 12-pixel grid cell is the only constraint.
    assert build_model(_config("spair", latent_size=8, object_size=8), (60, 60, 3)).grid_shape == (5, 5)


def test_evaluation_presence_is_rounded_and_counted():
    model = build_model(CONFIGS["bg_spair"], (48, 48, 3))
    outputs = model.infer(tf.random.stateless_uniform([4, 48, 48, 3], seed=[3, 4]))
    presence = outputs["presence"].numpy()
    assert set(np.unique(presence)) <= {0.0, 1.0}
    np.testing.assert_array_equal(outputs["count"].numpy(), presence.sum(axis=1))
    np.testing.assert_array_equal(presence, (outputs["logits"].numpy() > 0).astype(np.float32))


def test_renderer_one_opaque_object():
    height, width = 48, 48
    colour = tf.random.stateless_uniform([1, 1, 16, 16, 3], seed=[5, 6])
    alpha = tf.ones([1, 1, 16, 16, 1])
    # Two objects: the first present and opaque, the second absent.
    objects = tf.concat([tf.concat([colour, alpha], -1), tf.random.stateless_uniform([1, 1, 16, 16, 4], seed=[7, 8])],
                        axis=1)
    boxes = tf.constant([[[1 / 6, 1 / 6, -0.5, 0.0], [0.4, 0.4, 0.3, -0.2]]])
    placed = spatial.place_objects(objects, boxes, height, width)
    background = tf.random.stateless_uniform([1, height, width, 3], seed=[9, 10])
    rendered = spair.render(placed[..., :3], placed[..., 3:], presence=tf.constant([[1.0, 0.0]]),
                            depth=tf.constant([[0.3, -2.0]]), background=background)
    image = rendered["image"][0].numpy()

    # The first box spans rows 20..27 and columns 8..15 (8 x 8 pixels).
    inside = np.zeros((height, width), bool)
    inside[20:28, 8:16] = True
    expected_inside = tf.image.resize(colour[0], [8, 8]).numpy()
    np.testing.assert_allclose(image[20:28, 8:16], expected_inside[0], atol=1e-5)
    np.testing.assert_allclose(image[~inside], background[0].numpy()[~inside], atol=1e-6)
    np.testing.assert_allclose(rendered["coverage"][0, ..., 0].numpy(), inside.astype(np.float32), atol=1e-6)


def test_renderer_front_object_weighs_more():
    ones = tf.ones([1, 2, 4, 4, 1])
    colours = tf.concat([tf.zeros([1, 1, 4, 4, 1]), tf.ones([1, 1, 4, 4, 1])], axis=1)
    rendered = spair.render(colours, ones, presence=tf.ones([1, 2]), depth=tf.constant([[-3.0, 3.0]]),
                            background=tf.zeros([1, 4, 4, 1]))
    # The object at depth -3 (colour 0) is in front and pulls the canvas below 1/2.
    assert float(rendered["canvas"][0, 0, 0, 0]) < 0.5


def test_loss_combines_terms_with_weights():
    config = _config("lg_spair", beta=0.7, z_what_beta=0.3, z_bg_beta=2.0, z_l_beta=0.2, split_z_l=True,
                     latent_size=16, object_size=16)
    model = build_model(config, (48, 48, 3))
    inputs = tf.random.stateless_uniform([2, 48, 48, 6], seed=[11, 12])
    terms = {name: value.numpy() for name, value in model.compute_losses(inputs, SEED, step=50).items()}
    expected = (terms["bce_x"] + 0.7 * (0.3 * terms["kl_what"] + terms["kl_depth"] + terms["kl_shift"]
                                       + terms["kl_zoom"] + terms["kl_pres"])
                + 2.0 * terms["kl_bg"] + 0.2 * terms["kl_local"] + terms["bce_x_hat"])
    np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)


def test_zoom_prior_anneals_with_step():
    model = build_model(_config("spair", latent_size=8, object_size=8, z_pres_anneal_step=100), (48, 48, 3))
    inputs = tf.zeros([1, 48, 48, 3])
    early = model.compute_losses(inputs, SEED, step=0, training=False)["kl_zoom"].numpy()
    late = model.compute_losses(inputs, SEED, step=100, training=False)["kl_zoom"].numpy()
    # The where means start near 0: far from the prior mean 10 at step 0, close to 0 at the end.
    assert early[0] > 10 * late[0]


def test_noise_follows_seed():
    model = build_model(_config("bg_spair", latent_size=16, object_size=16), (48, 48, 3))
    inputs = tf.random.stateless_uniform([2, 48, 48, 3], seed=[13, 14])
    first = model.compute_losses(inputs, SEED)["loss"].numpy()
    again = model.compute_losses(inputs, SEED)["loss"].numpy()
    other = model.compute_losses(inputs, tf.constant([1, 3], tf.int32))["loss"].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def _gradient_step_tracing_seconds(image_size):
    model = build_model(_config("bg_spair", latent_size=16), (image_size, image_size, 3))

    @tf.function
    def gradients(inputs, seed, step):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.compute_losses(inputs, seed, step=step, training=True)["loss"])
        return tape.gradient(loss, model.trainable_variables)

    start = time.perf_counter()
    gradients.get_concrete_function(tf.TensorSpec([8, image_size, image_size, 3]), tf.TensorSpec([2], tf.int32),
                                    tf.TensorSpec([], tf.int64))
    return time.perf_counter() - start, model.num_cells


def test_tracing_time_does_not_grow_with_grid():
    small, large = [], []
    # Interleaved and the best of two, so that a change in machine load falls on both sizes.
    for _ in range(2):
        seconds, cells = _gradient_step_tracing_seconds(48)
        small.append(seconds)
        assert cells == 16
        seconds, cells = _gradient_step_tracing_seconds(96)
        large.append(seconds)
        assert cells == 64
    assert min(large) < 1.5 * min(small)


def test_training_lowers_loss():
    keras.utils.set_random_seed(0)
    # No annealing (a fixed zoom prior and count prior), so only learning can change the loss.
    config = _config("bg_spair", latent_size=16, object_size=16, prior_z_zoom_start=0.0, z_pres_anneal_step=1)
    model = build_model(config, (48, 48, 3))
    optimizer = keras.optimizers.Adam(1e-3, clipnorm=1.0)
    optimizer.build(model.trainable_variables)
    scenes = np.full([8, 48, 48, 3], 0.2, np.float32)
    scenes[:, 10:22, 14:26] = 0.9
    inputs = tf.constant(scenes)

    @tf.function
    def train_step(seed):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.compute_losses(inputs, seed, step=optimizer.iterations)["loss"])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    losses = [float(train_step(tf.constant([0, step]))) for step in range(40)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * losses[0]


def test_bfloat16_keeps_heads_float32():
    # In bfloat16, sigmoid(8) rounds to exactly 1, where the cross-entropy's gradient vanishes.
    assert tf.sigmoid(tf.constant(8.0, tf.bfloat16)).numpy() == 1.0
    assert layers.float32_sigmoid(tf.constant(8.0, tf.bfloat16)).numpy() < 1.0

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(_config("lg_spair", dense_bg=True, dense_local=True, concat_z_what=True),
                            (48, 48, 3))
        inputs = tf.random.stateless_uniform([2, 48, 48, model.input_channels], seed=[3, 4])
        outputs = model.forward(inputs, SEED, training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.object_decoder.output_convolution.compute_dtype == "bfloat16"
    assert model.backbone.convolutions[0].compute_dtype == "bfloat16"
    heads = [*model.where_head.hidden, model.where_head.output_layer, model.object_encoder.mean,
             model.object_encoder.sigma, model.depth_head.output_layer, model.presence_head.logit]
    for head in heads:
        assert head.compute_dtype == "float32", head.name
    for name in ("objects", "background", "x_hat_reconstruction", "reconstruction"):
        assert outputs[name].dtype == tf.float32, name
