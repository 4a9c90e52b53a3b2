"""Adam with TensorFlow's fused update kernel.

Keras 3's `Adam.update_step` is written in backend-neutral ops: about ten element-wise
TensorFlow ops per variable, each of which reads and writes the whole tensor. The Multi-Bird
presets of lg_spair carry 32 million parameters (the dense background and local autoencoders).
There those ops took about a fifth of the CPU time of a training step (profile in
benchmarks/results/spair_speed.md).
`tf.raw_ops.ResourceApplyAdam` does the same update in one pass over each variable.

The update is the one Keras documents:

    m <- m + (g - m) (1 - beta_1)
    v <- v + (g^2 - v) (1 - beta_2)
    variable <- variable - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

with `t` the 1-based step. The kernel computes the same formula, so the two agree to float32
rounding (tests/trainer/test_adam.py). Slots, their names and the checkpoint layout are Keras'
own, so checkpoints of either optimizer restore into the other.

`clipnorm` is cheaper too. Keras squares, sums, multiplies and divides every gradient in
separate passes. Here the squared norm is one `l2_loss`, and the gradient is scaled once.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose dense float32 updates run as one fused TensorFlow kernel.

    AMSGrad and variables of other dtypes take Keras' own update.
    """

    # Overrides a private hook of Keras 3.15: `BaseOptimizer._clip_gradients` calls it for
    # `clipnorm`. constraints.txt pins that version, and tests/trainer/test_adam.py checks the result.
    def _clip_by_norm(self, values, axes=None):
        if axes is not None:
            return super()._clip_by_norm(values, axes)
        norm = tf.sqrt(2.0 * tf.nn.l2_loss(values))
        return values * (self.clipnorm / tf.maximum(norm, self.clipnorm))

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or variable.dtype != tf.float32:
            super().update_step(gradient, variable, learning_rate)
            return
        gradient = tf.convert_to_tensor(gradient, tf.float32)
        step = tf.cast(self.iterations + 1, tf.float32)
        index = self._get_variable_index(variable)
        # Under a distribution strategy `variable` is one device's copy, and the slots' handles
        # resolve to the same device inside the strategy's update call.
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.constant(self.beta_1, tf.float32), step),
            beta2_power=tf.pow(tf.constant(self.beta_2, tf.float32), step),
            lr=tf.cast(learning_rate, tf.float32),
            beta1=tf.constant(self.beta_1, tf.float32),
            beta2=tf.constant(self.beta_2, tf.float32),
            epsilon=tf.constant(self.epsilon, tf.float32),
            grad=gradient,
            use_locking=False,
        )
