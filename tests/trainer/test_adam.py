"""Tests of the fused Adam optimizer against Keras' own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.adam import FusedAdam

SHAPES = [(7, 5), (3,), (2, 3, 4)]


def _train(optimizer_class, learning_rate, clipnorm, gradient_scale):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in SHAPES]
    optimizer = optimizer_class(learning_rate, clipnorm=clipnorm)
    optimizer.build(variables)

    @tf.function
    def step(gradients):
        optimizer.apply_gradients(zip(gradients, variables))

    for _ in range(6):
        step([tf.constant(gradient_scale * rng.normal(size=shape).astype("float32")) for shape in SHAPES])
    return [variable.numpy() for variable in variables], [slot.numpy() for slot in optimizer.variables]


@pytest.mark.parametrize("clipnorm, gradient_scale", [(None, 1.0), (1.0, 1.0), (1.0, 0.01)])
def test_matches_keras_adam(clipnorm, gradient_scale):
    def schedule():
        return keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=2, decay_rate=0.5, staircase=True)

    keras_variables, keras_slots = _train(keras.optimizers.Adam, schedule(), clipnorm, gradient_scale)
    fused_variables, fused_slots = _train(FusedAdam, schedule(), clipnorm, gradient_scale)
    for expected, actual in zip(keras_variables + keras_slots, fused_variables + fused_slots):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # The variables moved away from their initial values, so the comparison above covers updates.
    initial = np.random.default_rng(0).normal(size=SHAPES[0])
    assert not np.allclose(fused_variables[0], initial, atol=1e-3)


def test_clip_by_norm_scales_long_gradients_only():
    optimizer = FusedAdam(1e-3, clipnorm=2.0)
    long_gradient = tf.constant([3.0, 4.0])
    short_gradient = tf.constant([0.3, 0.4])
    np.testing.assert_allclose(optimizer._clip_by_norm(long_gradient).numpy(), [1.2, 1.6], rtol=1e-6)
    np.testing.assert_allclose(optimizer._clip_by_norm(short_gradient).numpy(), [0.3, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(optimizer._clip_by_norm(tf.zeros([3])).numpy(), [0.0, 0.0, 0.0])


def test_slots_match_keras_adam_for_checkpoints():
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in SHAPES]
    keras_adam = keras.optimizers.Adam(1e-3)
    fused = FusedAdam(1e-3)
    keras_adam.build(variables)
    fused.build(variables)
    assert [(slot.name, slot.shape) for slot in fused.variables] == \
        [(slot.name, slot.shape) for slot in keras_adam.variables]


def test_checkpoint_restores_across_optimizers(tmp_path):
    variables = [keras.Variable(np.ones(shape, "float32")) for shape in SHAPES]
    keras_adam = keras.optimizers.Adam(1e-2)
    keras_adam.build(variables)
    keras_adam.apply_gradients(zip([tf.ones(shape) for shape in SHAPES], variables))
    path = tf.train.Checkpoint(optimizer=keras_adam).save(str(tmp_path / "ckpt"))

    fused = FusedAdam(1e-2)
    fused.build(variables)
    tf.train.Checkpoint(optimizer=fused).restore(path).assert_existing_objects_matched()
    assert int(fused.iterations.numpy()) == 1
    for expected, actual in zip(keras_adam.variables, fused.variables):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy())
