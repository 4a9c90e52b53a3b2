"""The VAE family: SPLIT-VAE (`lgvae`), the GMVAE baseline (`gmvae`) and SPLIT-GMVAE (`lggmvae`).

One model class, `SplitVAE`, composed of a global path (a Gaussian encoder, or the GMVAE
encoder with its cluster variable `y`), an optional local path that encodes the auxiliary view
`x_hat` into `z_l` and decodes it back, and the image decoder that reads `[z_g, z_l]`.

Layer sizes follow SPLIT (Charakorn et al., 2020, arXiv 2001.08957). All randomness is
stateless and derived from the `seed` passed in, so a step is reproducible from (run seed,
step, replica).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer import augment, losses
from trainer.config import GMVAE_MODELS, LOCAL_PATH_MODELS, ModelConfig
from trainer.models import layers

DROPOUT_RATE = 0.2
VAE_ENCODER_KERNELS = (6, 6, 4)


def _bilinear_resize(height: int, width: int) -> keras.layers.Resizing:
    # float32 under every policy: TensorFlow's CPU resize kernel is slower in bfloat16, which cost
    # the mixed_bfloat16 lgvae step about 10% (benchmarks/train_speed.py, 2-core AVX-512 CPU).
    return keras.layers.Resizing(height, width, interpolation="bilinear", dtype="float32")


def _gaussian_sample(mean: tf.Tensor, sigma: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return mean + sigma * tf.random.stateless_normal(tf.shape(mean), seed=seed, dtype=mean.dtype)


def _dropout(values: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
    if not training:
        return values
    return tf.nn.experimental.stateless_dropout(values, rate=DROPOUT_RATE, seed=seed)


class Decoder(keras.layers.Layer):
    """Dense to an H/8 x W/8 x 128 map, three conv + bilinear-upsampling stages, then Conv(2C, 6, 1).

    Returns the mean and log-scale of a discretised logistic per pixel, each
    `[batch, height, width, channels]`.
    """

    def __init__(self, height: int, width: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.dense = keras.layers.Dense((height // 8) * (width // 8) * 128, activation="relu")
        self.reshape = keras.layers.Reshape((height // 8, width // 8, 128))
        self.stages = [
            (layers.conv(128, 4, 1, "relu"), _bilinear_resize(height // 4, width // 4)),
            (layers.conv(64, 4, 1, "relu"), _bilinear_resize(height // 2, width // 2)),
            (layers.conv(32, 6, 1, "relu"), _bilinear_resize(height, width)),
        ]
        self.output_convolution = layers.conv(2 * channels, 6, 1, None)

    def call(self, latent: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features = self.reshape(self.dense(latent))
        for convolution, upsample in self.stages:
            features = upsample(convolution(features))
        parameters = layers.float32(self.output_convolution(features))
        return parameters[..., :self.channels], parameters[..., self.channels:]


class MixtureEncoder(keras.layers.Layer):
    """The GMVAE encoder: features of x, the cluster logits, p(z | y) and q(z | x, y)."""

    def __init__(self, latent_dims: int, num_clusters: int, **kwargs):
        super().__init__(**kwargs)
        self.convolutions = [layers.conv(128, 6, 2, "elu"), layers.conv(128, 6, 2, "elu"), layers.conv(128, 4, 2, "elu")]
        self.flatten = keras.layers.Flatten()
        self.cluster_hidden = keras.layers.Dense(1024, activation="elu")
        self.cluster_bottleneck = keras.layers.Dense(128, activation="elu")
        self.cluster_logits = keras.layers.Dense(num_clusters)
        ones = keras.initializers.Constant(1.0)
        self.prior_mean = keras.layers.Dense(latent_dims)
        self.prior_sigma = keras.layers.Dense(latent_dims, bias_initializer=ones)
        self.posterior_from_features = keras.layers.Dense(512, activation="elu")
        self.posterior_from_cluster = keras.layers.Dense(512, activation="elu")
        self.posterior_mean = keras.layers.Dense(latent_dims)
        self.posterior_sigma = keras.layers.Dense(latent_dims, bias_initializer=ones)

    def features(self, images: tf.Tensor) -> tf.Tensor:
        features = images
        for convolution in self.convolutions:
            features = convolution(features)
        return self.flatten(features)

    def logits(self, features: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
        hidden = _dropout(self.cluster_hidden(features), seed, training)
        return layers.float32(self.cluster_logits(self.cluster_bottleneck(hidden)))

    def prior(self, cluster: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Return the mean and sigma of p(z | y) for (relaxed) one-hot `y` `[batch, K]`."""
        return layers.float32(self.prior_mean(cluster)), layers.positive(self.prior_sigma(cluster))

    def posterior(self, features: tf.Tensor, cluster: tf.Tensor, seed: tf.Tensor,
                  training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        hidden = (self.posterior_from_features(_dropout(features, seed, training))
                  + self.posterior_from_cluster(cluster))
        return layers.float32(self.posterior_mean(hidden)), layers.positive(self.posterior_sigma(hidden))


def relaxed_one_hot(logits: tf.Tensor, temperature: float, seed: tf.Tensor) -> tf.Tensor:
    """Draw a Gumbel-softmax (concrete) sample `[batch, K]` at `temperature` (Jang et al., 2017)."""
    uniform = tf.random.stateless_uniform(tf.shape(logits), seed=seed, minval=1e-20, maxval=1.0,
                                          dtype=logits.dtype)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    return tf.nn.softmax((logits + gumbel) / temperature, axis=-1)


def kl_warmup(step, warmup_steps: int) -> tf.Tensor:
    """Return the KL weights' scale at `step`: rising linearly from 0 to 1 over `warmup_steps`, then 1."""
    if warmup_steps <= 0:
        return tf.constant(1.0)
    return tf.minimum(tf.cast(step, tf.float32) / float(warmup_steps), 1.0)


class SplitVAE(keras.Model):
    """`lgvae`, `gmvae` or `lggmvae` for images of a given shape.

    Inputs are `[batch, height, width, channels + view_channels]`: the image `x` in [-1, 1] and,
    for models with a local path, the auxiliary view `x_hat` after it.
    """

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int], **kwargs):
        super().__init__(**kwargs)
        config.validate()
        config.validate_image_shape(image_shape)
        height, width, channels = image_shape
        self.config = config
        self.image_shape = tuple(image_shape)
        self.is_mixture = config.model in GMVAE_MODELS
        self.has_local_path = config.model in LOCAL_PATH_MODELS
        self.view_channels = augment.view_channels(config.augmentation, channels) if self.has_local_path else 0

        if self.is_mixture:
            self.global_encoder = MixtureEncoder(config.global_latent_dims, config.y_size, name="global_encoder")
        else:
            self.global_encoder = layers.ConvGaussianEncoder(config.global_latent_dims, VAE_ENCODER_KERNELS,
                                                             name="global_encoder")
        if self.has_local_path:
            self.local_encoder = layers.ConvGaussianEncoder(config.local_latent_dims, VAE_ENCODER_KERNELS,
                                                            name="local_encoder")
            self.local_decoder = Decoder(height, width, self.view_channels, name="local_decoder")
        self.decoder = Decoder(height, width, channels, name="decoder")

    @property
    def input_channels(self) -> int:
        return self.image_shape[-1] + self.view_channels

    def build_variables(self) -> None:
        """Create every variable (needed before `optimizer.build` under a distribution strategy)."""
        self.build((None, *self.image_shape[:2], self.input_channels))

    def build(self, input_shape) -> None:
        # One forward pass on zeros builds every sublayer with its real input shape.
        self.compute_losses(tf.zeros((1, *input_shape[1:])), tf.constant([0, 0], tf.int32), training=False)
        # The mixture encoder is used through its methods, never called, so Keras cannot mark it.
        self.global_encoder.built = True
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        # A fixed seed would freeze every noise draw, so training must pass its own seed.
        if training:
            raise ValueError("SplitVAE is trained through compute_losses(inputs, seed, ...), not call()")
        return self.compute_losses(inputs, tf.constant([0, 0], tf.int32), step=0, training=False)

    def _split(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        channels = self.image_shape[-1]
        return inputs[..., :channels], inputs[..., channels:]

    def compute_losses(self, inputs: tf.Tensor, seed: tf.Tensor, step=0, training: bool = True) -> dict[str, tf.Tensor]:
        """Compute every loss term per example; `loss` is the objective the optimiser minimises.

        Returns a dict of `[batch]` tensors: `nll_x`, `kl_global`, and where they exist `nll_x_hat`,
        `kl_local`, `kl_cluster`; then `loss`. `step` drives the optional KL warm-up
        (`kl_warmup_steps`); with a warm-up, step 0 (the default, and what `call` uses) weighs
        the KL terms by 0. With `cluster_kl="batch"` the cluster term is one batch-wide value,
        repeated for every example.
        """
        config = self.config
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=6))
        x, x_hat = self._split(inputs)
        terms: dict[str, tf.Tensor] = {}

        if self.is_mixture:
            features = self.global_encoder.features(x)
            logits = self.global_encoder.logits(features, seeds[0], training)
            cluster = relaxed_one_hot(logits, config.tau, seeds[1])
            prior_mean, prior_sigma = self.global_encoder.prior(cluster)
            mean, sigma = self.global_encoder.posterior(features, cluster, seeds[2], training)
            terms["kl_global"] = losses.gaussian_kl(mean, sigma, prior_mean, prior_sigma)
            if config.cluster_kl == "batch":
                terms["kl_cluster"] = tf.fill(tf.shape(logits)[:1], losses.batch_categorical_kl_to_uniform(logits))
            else:
                terms["kl_cluster"] = losses.categorical_kl_to_uniform(logits)
        else:
            mean, sigma = self.global_encoder(x)
            terms["kl_global"] = losses.gaussian_kl(mean, sigma)
        latents = [_gaussian_sample(mean, sigma, seeds[3])]

        if self.has_local_path:
            local_mean, local_sigma = self.local_encoder(x_hat)
            local_latent = _gaussian_sample(local_mean, local_sigma, seeds[4])
            terms["kl_local"] = losses.gaussian_kl(local_mean, local_sigma)
            view_mean, view_log_scale = self.local_decoder(local_latent)
            terms["nll_x_hat"] = losses.discretized_logistic_nll(x_hat, view_mean, view_log_scale)
            latents.append(local_latent)

        image_mean, image_log_scale = self.decoder(tf.concat(latents, axis=-1))
        terms["nll_x"] = losses.discretized_logistic_nll(x, image_mean, image_log_scale)

        warmup = kl_warmup(step, config.kl_warmup_steps)
        beta, alpha = warmup * config.beta, warmup * config.alpha
        loss = terms["nll_x"] + beta * terms["kl_global"]
        if self.has_local_path:
            loss += terms["nll_x_hat"] + config.local_beta_scale * beta * terms["kl_local"]
        if self.is_mixture:
            loss += alpha * terms["kl_cluster"]
        terms["loss"] = loss
        return terms

    # Inference helpers for evaluation and figures: deterministic (posterior means, argmax
    # clusters, distribution means as images).

    def encode(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """Return `z_g` `[batch, d_g]` and, where they exist, `z_l`, `logits` and `cluster`."""
        x, x_hat = self._split(inputs)
        codes: dict[str, tf.Tensor] = {}
        if self.is_mixture:
            features = self.global_encoder.features(x)
            logits = self.global_encoder.logits(features, tf.constant([0, 0], tf.int32), training=False)
            cluster = tf.argmax(logits, axis=-1, output_type=tf.int32)
            one_hot = tf.one_hot(cluster, self.config.y_size, dtype=logits.dtype)
            codes["z_g"], _ = self.global_encoder.posterior(features, one_hot, tf.constant([0, 0], tf.int32),
                                                            training=False)
            codes["logits"], codes["cluster"] = logits, cluster
        else:
            codes["z_g"], _ = self.global_encoder(x)
        if self.has_local_path:
            codes["z_l"], _ = self.local_encoder(x_hat)
        return codes

    def decode(self, z_g: tf.Tensor, z_l: tf.Tensor | None = None) -> tf.Tensor:
        """Return the decoded image means `[batch, height, width, channels]` clipped to [-1, 1]."""
        latents = [z_g] if z_l is None else [z_g, z_l]
        mean, _ = self.decoder(tf.concat(latents, axis=-1))
        return tf.clip_by_value(mean, -1.0, 1.0)

    def decode_view(self, z_l: tf.Tensor) -> tf.Tensor:
        """Return the decoded means of `x_hat` from `z_l`."""
        mean, _ = self.local_decoder(z_l)
        return tf.clip_by_value(mean, -1.0, 1.0)

    def sample_global(self, count: int, seed: tf.Tensor, cluster: tf.Tensor | None = None) -> tf.Tensor:
        """Sample `z_g` from its prior: N(0, I), or p(z | y) for the given cluster ids `[count]`."""
        if not self.is_mixture:
            return tf.random.stateless_normal([count, self.config.global_latent_dims], seed=seed)
        if cluster is None:
            cluster = tf.random.stateless_uniform([count], seed=seed, maxval=self.config.y_size, dtype=tf.int32)
            seed = tf.random.experimental.stateless_fold_in(seed, 1)
        mean, sigma = self.global_encoder.prior(tf.one_hot(cluster, self.config.y_size))
        return _gaussian_sample(mean, sigma, seed)

    def sample_local(self, count: int, seed: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_normal([count, self.config.local_latent_dims], seed=seed)
