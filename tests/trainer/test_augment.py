"""Tests of the auxiliary views: what each keeps of the image and what it destroys."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import augment

SEED = tf.constant([3, 7], tf.int32)


def _patches(image: np.ndarray, size: int) -> list[bytes]:
    """Return the image's non-overlapping patches as sortable byte strings."""
    height, width, _ = image.shape
    return sorted(image[r:r + size, c:c + size].tobytes()
                  for r in range(0, height, size) for c in range(0, width, size))


def _random_images(batch=4, height=32, width=32, channels=3, seed=0) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(-1, 1, (batch, height, width, channels)).astype(np.float32))


@pytest.mark.parametrize("patch_size", [1, 4, 8])
def test_scramble_keeps_patch_multiset(patch_size):
    images = _random_images()
    scrambled = augment.scramble(images, patch_size, SEED).numpy()
    for original, view in zip(images.numpy(), scrambled):
        assert _patches(original, patch_size) == _patches(view, patch_size)


@pytest.mark.parametrize("patch_size", [1, 4, 8])
def test_scramble_moves_patches(patch_size):
    images = _random_images()
    scrambled = augment.scramble(images, patch_size, SEED).numpy()
    for original, view in zip(images.numpy(), scrambled):
        assert not np.array_equal(original, view)


def test_scramble_differs_between_examples():
    # The same image repeated in a batch must get a different permutation in each slot.
    image = _random_images(batch=1)
    batch = tf.repeat(image, 4, axis=0)
    scrambled = augment.scramble(batch, 4, SEED).numpy()
    for first in range(4):
        for second in range(first + 1, 4):
            assert not np.array_equal(scrambled[first], scrambled[second])


def test_scramble_same_seed_reproduces():
    images = _random_images()
    first = augment.scramble(images, 4, SEED).numpy()
    second = augment.scramble(images, 4, SEED).numpy()
    other = augment.scramble(images, 4, tf.constant([3, 8], tf.int32)).numpy()
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_scramble_rejects_non_divisor():
    with pytest.raises(ValueError, match="patch_size 5"):
        augment.scramble(_random_images(), 5, SEED)


def test_mix_scramble_keeps_pixel_multiset():
    images = _random_images()
    mixed = augment.mix_scramble(images, SEED).numpy()
    for original, view in zip(images.numpy(), mixed):
        assert _patches(original, 1) == _patches(view, 1)
        # Every size in {1, 2, 4, 8} keeps the 8x8 patches' pixels, not necessarily the patches.
        assert not np.array_equal(original, view)


def test_blur_keeps_constant_image():
    images = tf.fill([2, 32, 32, 3], 0.25)
    blurred = augment.blur(images, SEED).numpy()
    np.testing.assert_allclose(blurred, 0.25, atol=1e-5)


def test_blur_smooths_noise():
    images = _random_images()
    blurred = augment.blur(images, SEED).numpy()
    assert blurred.shape == images.shape
    assert blurred.std() < 0.5 * images.numpy().std()


def test_high_low_pass_sums_to_image():
    images = _random_images(batch=2)
    view = augment.high_low_pass(images, 2).numpy()
    assert view.shape == (2, 32, 32, 6)
    np.testing.assert_allclose(view[..., :3] + view[..., 3:], images.numpy(), atol=1e-5)
    assert augment.view_channels("high_low_pass", 3) == 6


def test_no_op_returns_input():
    images = _random_images(batch=2)
    np.testing.assert_array_equal(augment.make_view(images, "no_op", 1, SEED).numpy(), images.numpy())


def test_make_view_rejects_unknown():
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.make_view(_random_images(), "rotate", 1, SEED)
