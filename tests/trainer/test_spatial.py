"""Tests of the axis-aligned spatial transformer: glimpses and the placement of objects."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import spatial
from trainer.models import layers


def _boxes(*values):
    """One batch element holding the given `(sx, sy, tx, ty)` boxes: `[1, num_boxes, 4]`."""
    return tf.constant([values], tf.float32)


def _smooth_object(size, channels):
    """A smooth pattern `[size, size, channels]`, so that resampling it twice changes it little."""
    grid = np.linspace(-1, 1, size)
    rows, columns = np.meshgrid(grid, grid, indexing="ij")
    planes = [0.5 + 0.4 * np.sin(2.0 * rows + c) * np.cos(1.5 * columns - c) for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.float32)


def test_pixel_centres_follow_half_pixel_convention():
    np.testing.assert_allclose(spatial.pixel_centres(4).numpy(), [-0.75, -0.25, 0.25, 0.75])


def test_interpolation_weights_rows_sum_to_one():
    positions = tf.constant([-1.0, -0.97, -0.3, 0.0, 0.51, 0.99, 1.0])
    weights = spatial.interpolation_weights(positions, 7).numpy()
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)
    assert np.all(weights >= 0)
    assert np.all((weights > 0).sum(axis=-1) <= 2)


@pytest.mark.parametrize("glimpse_size", [16, 32, 48, 64])
@pytest.mark.parametrize("height,width", [(48, 48), (36, 60)])
def test_identity_glimpse_is_resized_image(glimpse_size, height, width):
    images = tf.random.stateless_uniform([2, height, width, 3], seed=[0, 1])
    identity = tf.constant([[[1.0, 1.0, 0.0, 0.0]]] * 2)
    glimpses = spatial.extract_glimpses(images, identity, glimpse_size)
    assert glimpses.shape == (2, 1, glimpse_size, glimpse_size, 3)
    expected = tf.image.resize(images, [glimpse_size, glimpse_size], method="bilinear")
    np.testing.assert_allclose(glimpses[:, 0].numpy(), expected.numpy(), atol=1e-5)


def test_glimpse_of_aligned_box_is_exact_crop():
    images = tf.random.stateless_uniform([1, 48, 48, 3], seed=[2, 3])
    # The box covers rows 24..35 and columns 12..23: 12 pixels, the glimpse size.
    box = _boxes((0.25, 0.25, -0.25, 0.25))
    glimpses = spatial.extract_glimpses(images, box, 12)
    np.testing.assert_allclose(glimpses[0, 0].numpy(), images[0, 24:36, 12:24].numpy(), atol=1e-6)


def test_place_then_glimpse_returns_aligned_object():
    objects = tf.random.stateless_uniform([1, 2, 16, 16, 4], seed=[4, 5])
    # 16-pixel boxes on a 64-pixel image whose edges fall on pixel edges.
    boxes = _boxes((0.25, 0.25, -0.25, 0.5), (0.25, 0.25, 0.5, -0.75))
    placed = spatial.place_objects(objects, boxes, 64, 64)
    for index in range(2):
        glimpse = spatial.extract_glimpses(placed[:, index], boxes[:, index:index + 1], 16)
        np.testing.assert_allclose(glimpse[0, 0].numpy(), objects[0, index].numpy(), atol=1e-6)


def test_place_then_glimpse_returns_smooth_object():
    obj = _smooth_object(32, 4)
    objects = tf.constant(obj[None, None])
    # A box of 21.6 x 15.6 pixels whose edges fall between pixel centres.
    boxes = _boxes((0.45, 0.325, 0.113, -0.207))
    placed = spatial.place_objects(objects, boxes, 48, 48)
    glimpse = spatial.extract_glimpses(placed[:, 0], boxes, 32)[0, 0].numpy()
    # The outermost ring of the glimpse samples pixels that lie partly outside the box.
    np.testing.assert_allclose(glimpse[2:-2, 2:-2], obj[2:-2, 2:-2], atol=0.02)


@pytest.mark.parametrize("box", [(0.3, 0.2, 0.1, -0.4), (0.5, 0.5, 0.9, 0.9), (0.12, 0.4, -0.6, 0.05)])
def test_alpha_is_zero_outside_box(box):
    height, width = 48, 60
    objects = tf.ones([1, 1, 32, 32, 1])
    placed = spatial.place_objects(objects, _boxes(box), height, width)[0, 0, ..., 0].numpy()

    scale_x, scale_y, shift_x, shift_y = box
    rows = spatial.pixel_centres(height).numpy()[:, None]
    columns = spatial.pixel_centres(width).numpy()[None, :]
    inside = (np.abs(rows - shift_y) <= scale_y) & (np.abs(columns - shift_x) <= scale_x)
    assert inside.any()
    assert (~inside).any()
    assert np.all(placed[~inside] == 0.0)
    np.testing.assert_allclose(placed[inside], 1.0, rtol=1e-6)


def test_glimpse_and_placement_differentiate_boxes():
    images = tf.random.stateless_uniform([2, 48, 48, 3], seed=[6, 7])
    objects = tf.random.stateless_uniform([2, 3, 8, 8, 4], seed=[8, 9])
    boxes = tf.Variable(tf.random.stateless_uniform([2, 3, 4], seed=[10, 11], minval=0.1, maxval=0.4))
    with tf.GradientTape() as tape:
        total = (tf.reduce_sum(tf.square(spatial.extract_glimpses(images, boxes, 8)))
                 + tf.reduce_sum(tf.square(spatial.place_objects(objects, boxes, 48, 48))))
    gradient = tape.gradient(total, boxes).numpy()
    assert np.all(np.isfinite(gradient))
    assert np.all(np.abs(gradient).sum(axis=-1) > 0)


@pytest.mark.parametrize("source, target", [((4, 6), (8, 12)), ((8, 8), (13, 5)), ((12, 12), (12, 12))])
def test_bilinear_resize_matches_tensorflow(source, target):
    images = tf.random.stateless_uniform([3, *source, 5], seed=[4, 2])
    weights = tf.random.stateless_uniform([3, *target, 5], seed=[4, 3])
    layer = layers.BilinearResize(*target)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(images)
        ours = layer(images)
        theirs = tf.image.resize(images, target, "bilinear")
        ours_loss = tf.reduce_sum(ours * weights)
        theirs_loss = tf.reduce_sum(theirs * weights)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)
    np.testing.assert_allclose(tape.gradient(ours_loss, images).numpy(),
                               tape.gradient(theirs_loss, images).numpy(), atol=1e-5)
