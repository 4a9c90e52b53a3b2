"""Axis-aligned spatial transformers: glimpses of boxes, and objects placed back into the image.

Coordinates follow the half-pixel convention of `tf.image.resize`: an image axis of `size`
pixels spans [-1, 1], from the outer edge of its first pixel to the outer edge of its last,
and pixel `i` has its centre at `-1 + (2 i + 1) / size`. A box `(sx, sy, tx, ty)` covers
`[tx - sx, tx + sx] x [ty - sy, ty + sy]`: the point `(u, v)` of the object's own frame, also
in [-1, 1], lies at `(sx * u + tx, sy * v + ty)` in the image (Jaderberg et al., 2015, "Spatial
Transformer Networks", restricted to scale and translation).

Because the boxes are axis-aligned, bilinear sampling factorises into one interpolation matrix
per axis. Extracting a glimpse and placing an object are then two batched matrix products each,
with no gathers, which keeps both the forward and the backward pass dense on CPU and GPU. The
sizes of every grid come from the tensor shapes.
"""

from __future__ import annotations

import tensorflow as tf

# The placement divides by the box scale; a sigmoid that underflowed to zero must not divide by 0.
MIN_SCALE = 1e-6


def pixel_centres(size: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Return the `[size]` centres of the pixels of an axis of `size` pixels, in [-1, 1]."""
    return (2.0 * tf.range(size, dtype=dtype) + 1.0) / size - 1.0


def interpolation_weights(positions: tf.Tensor, size: int) -> tf.Tensor:
    """Return the linear-interpolation weights that sample an axis of `size` pixels at `positions`.

    Args:
      positions: `[..., num_samples]` coordinates in the [-1, 1] frame of the axis. Positions
        beyond the outermost pixel centres take that pixel's value (edge clamping, as
        `tf.image.resize` does).
      size: the number of pixels of the sampled axis.

    Returns:
      `[..., num_samples, size]` weights; each row holds at most two non-zero entries summing to 1.
    """
    index = (positions + 1.0) * (size / 2.0) - 0.5
    index = tf.clip_by_value(index, 0.0, size - 1.0)
    pixels = tf.range(size, dtype=positions.dtype)
    return tf.nn.relu(1.0 - tf.abs(index[..., None] - pixels))


def _split_boxes(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Return `sx, sy, tx, ty`, each `[batch, num_boxes, 1]`, of boxes `[batch, num_boxes, 4]`."""
    scale_x, scale_y, shift_x, shift_y = tf.unstack(boxes[..., None], axis=2)
    return scale_x, scale_y, shift_x, shift_y


def extract_glimpses(images: tf.Tensor, boxes: tf.Tensor, glimpse_size: int) -> tf.Tensor:
    """Sample a `glimpse_size` square crop of each box, bilinearly.

    Args:
      images: `[batch, height, width, channels]`.
      boxes: `[batch, num_boxes, 4]` as `(sx, sy, tx, ty)` in image coordinates.
      glimpse_size: side of each glimpse in pixels.

    Returns:
      `[batch, num_boxes, glimpse_size, glimpse_size, channels]`. The box `(1, 1, 0, 0)` gives the
      whole image resized to the glimpse size, as `tf.image.resize(..., "bilinear")` does.
    """
    height, width = images.shape[1], images.shape[2]
    scale_x, scale_y, shift_x, shift_y = _split_boxes(boxes)
    frame = pixel_centres(glimpse_size, images.dtype)

    row_weights = interpolation_weights(scale_y * frame + shift_y, height)
    column_weights = interpolation_weights(scale_x * frame + shift_x, width)

    # Channels-first, every product is a plain batched matmul: [batch, 1, C, H, W] against
    # per-box [batch, boxes, 1, ., .] weights, with no transposes of the large intermediates.
    channels_first = tf.transpose(images, [0, 3, 1, 2])[:, None]
    columns_sampled = tf.matmul(channels_first, column_weights[:, :, None], transpose_b=True)
    glimpses = tf.matmul(row_weights[:, :, None], columns_sampled)
    return tf.transpose(glimpses, [0, 1, 3, 4, 2])


def placement_weights(boxes_scale: tf.Tensor, boxes_shift: tf.Tensor, image_size: int,
                      object_size: int) -> tf.Tensor:
    """Return the weights that sample an object's axis at each image pixel of one axis.

    Args:
      boxes_scale, boxes_shift: `[batch, num_boxes, 1]`, the box's half-size and centre on this axis.
      image_size: pixels of the image along this axis.
      object_size: pixels of the object along this axis.

    Returns:
      `[batch, num_boxes, image_size, object_size]`. Rows of image pixels whose centre lies outside
      the box are zero, so that nothing of the object (and in particular none of its alpha)
      reaches beyond its box.
    """
    position = (pixel_centres(image_size, boxes_shift.dtype) - boxes_shift) / tf.maximum(boxes_scale, MIN_SCALE)
    inside = tf.cast(tf.abs(position) <= 1.0, position.dtype)
    return interpolation_weights(position, object_size) * inside[..., None]


def place_objects(objects: tf.Tensor, boxes: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Resample objects from their own frame into the image frame (the inverse of a glimpse).

    Args:
      objects: `[batch, num_boxes, object_height, object_width, channels]`.
      boxes: `[batch, num_boxes, 4]` as `(sx, sy, tx, ty)` in image coordinates.
      height, width: size of the image frame in pixels.

    Returns:
      `[batch, num_boxes, height, width, channels]`, zero at every pixel whose centre lies outside
      the object's box.
    """
    object_height, object_width = objects.shape[2], objects.shape[3]
    scale_x, scale_y, shift_x, shift_y = _split_boxes(boxes)

    row_weights = placement_weights(scale_y, shift_y, height, object_height)
    column_weights = placement_weights(scale_x, shift_x, width, object_width)

    # As in `extract_glimpses`, channels-first turns both products into batched matmuls.
    channels_first = tf.transpose(objects, [0, 1, 4, 2, 3])
    columns_placed = tf.matmul(channels_first, column_weights[:, :, None], transpose_b=True)
    placed = tf.matmul(row_weights[:, :, None], columns_placed)
    return tf.transpose(placed, [0, 1, 3, 4, 2])
