"""The object-detection family: SPAIR (`spair`), background SPAIR (`bg_spair`) and SPLIT-SPAIR (`lg_spair`).

SPAIR (Crawford and Pineau, 2019) reads an image with a convolutional backbone into a grid of
cells, and every cell proposes one object. The object has a box (`z_where`), an appearance code
(`z_what`) of the glimpse inside the box, a depth (`z_depth`) and a relaxed-Bernoulli presence
(`z_pres`). An object decoder draws each object's colour and alpha, and the objects are placed
back into the image and blended over a background. `bg_spair` learns the background with a small VAE; plain `spair`
uses black. SPLIT-SPAIR (Charakorn et al., 2020, arXiv 2001.08957) adds a local latent `z_l`
inferred from the auxiliary view `x_hat` and decoded back into it, and can hand `z_l` to the
object decoder (`concat_z_what`) and the background decoder (`concat_z_bg`).

Every per-cell step runs on all cells at once (`[batch * num_cells, ...]`), so the traced graph
does not grow with the grid. All randomness is stateless and derived from the `seed` passed in.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer import augment, losses, spair_losses, spatial
from trainer.config import SPAIR_CELL_PIXELS, ModelConfig
from trainer.models import layers

BACKBONE_FEATURES = 100
WHERE_DIMS = 4
PASS_THROUGH_FEATURES = 8
# The where head's pre-sigmas are shifted down before the softplus, so boxes start near-certain.
WHERE_SIGMA_SHIFT = 1.0
# Box scales are at most half the image's [-1, 1] extent, and box centres at most half of it away
# from their cell's centre.
MAX_BOX_SCALE = 0.5
MAX_BOX_SHIFT = 0.5
ZOOM_PRIOR_SIGMA = 0.5
PRESENCE_LOGIT_LIMIT = 10.0
MAX_COUNT_PRIOR_SUCCESS = 0.99
DEPTH_IMPORTANCE_OFFSET = 0.5
RENDER_EPSILON = 1e-8
OBJECT_COLOUR_NOISE = 0.01
# The per-cell heads (where, the Gaussian head of z_what, depth, presence) decide boxes and
# presences and are small, so they compute in float32 under every dtype policy. With bfloat16
# heads, lg_spair counted many digits twice (benchmarks/results/spair_speed.md).
HEAD_DTYPE = "float32"


# The model's Python has no control flow that depends on tensor values, so autograph's rewrite of
# it inside a tf.function only costs time. It took 6 of the 8.6 s of tracing the forward and
# backward pass of `bg_spair` (batch 32, a loaded 2-core CPU). The entry points skip it, and so
# does everything they call.
_without_autograph = tf.autograph.experimental.do_not_convert


def _gaussian_sample(mean: tf.Tensor, sigma: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
    """Return `mean + sigma * eps` in training and the mean in evaluation."""
    if not training:
        return mean
    return mean + sigma * tf.random.stateless_normal(tf.shape(mean), seed=seed, dtype=mean.dtype)


def _logistic_noise(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    uniform = tf.random.stateless_uniform(shape, seed=seed, minval=1e-6, maxval=1.0 - 1e-6)
    return tf.math.log(uniform) - tf.math.log1p(-uniform)


class Backbone(keras.layers.Layer):
    """Conv(128,4,2), Conv(128,4,2), Conv(128,4,3), then 1x1 convs of 128, 128 and 100, all relu.

    Maps `[batch, height, width, channels]` to a `[batch, height / 12, width / 12, 100]` grid.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.convolutions = [
            layers.conv(128, 4, 2, "relu"), layers.conv(128, 4, 2, "relu"), layers.conv(128, 4, 3, "relu"),
            layers.conv(128, 1, 1, "relu"), layers.conv(128, 1, 1, "relu"), layers.conv(BACKBONE_FEATURES, 1, 1, "relu"),
        ]

    def call(self, images: tf.Tensor) -> tf.Tensor:
        features = images
        for convolution in self.convolutions:
            features = convolution(features)
        return layers.float32(features)


class WhereHead(keras.layers.Layer):
    """MLP 128, 64 (relu) to the mean and sigma of `z_where` (4 each) and 8 pass-through features."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(128, activation="relu", dtype=HEAD_DTYPE),
                       keras.layers.Dense(64, activation="relu", dtype=HEAD_DTYPE)]
        self.output_layer = keras.layers.Dense(2 * WHERE_DIMS + PASS_THROUGH_FEATURES, dtype=HEAD_DTYPE)

    def call(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Map `[cells, 100]` to mean `[cells, 4]`, sigma `[cells, 4]` and pass-through `[cells, 8]`."""
        hidden = features
        for layer in self.hidden:
            hidden = layer(hidden)
        mean, pre_sigma, pass_through = tf.split(
            layers.float32(self.output_layer(hidden)), [WHERE_DIMS, WHERE_DIMS, PASS_THROUGH_FEATURES], axis=-1)
        return mean, layers.positive(pre_sigma - WHERE_SIGMA_SHIFT), tf.nn.relu(pass_through)


class ObjectEncoder(keras.layers.Layer):
    """Conv(32,3,2), Conv(64,3,2), flatten, Dense(2 d) (all relu), then the mean and sigma of `z_what`."""

    def __init__(self, latent_size: int, **kwargs):
        super().__init__(**kwargs)
        self.convolutions = [layers.conv(32, 3, 2, "relu"), layers.conv(64, 3, 2, "relu")]
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(2 * latent_size, activation="relu", dtype=HEAD_DTYPE)
        self.mean = keras.layers.Dense(latent_size, dtype=HEAD_DTYPE)
        self.sigma = keras.layers.Dense(latent_size, dtype=HEAD_DTYPE)

    def call(self, glimpses: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Map glimpses `[cells, size, size, channels]` to mean and sigma, each `[cells, latent_size]`."""
        features = glimpses
        for convolution in self.convolutions:
            features = convolution(features)
        hidden = self.hidden(self.flatten(features))
        return layers.float32(self.mean(hidden)), layers.positive(self.sigma(hidden))


class DepthHead(keras.layers.Layer):
    """MLP 64 (relu) to the mean and sigma of `z_depth` and 8 pass-through features."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(64, activation="relu", dtype=HEAD_DTYPE)
        self.output_layer = keras.layers.Dense(2 + PASS_THROUGH_FEATURES, dtype=HEAD_DTYPE)

    def call(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Map `[cells, features]` to mean `[cells, 1]`, sigma `[cells, 1]` and pass-through `[cells, 8]`."""
        mean, pre_sigma, pass_through = tf.split(
            layers.float32(self.output_layer(self.hidden(inputs))), [1, 1, PASS_THROUGH_FEATURES], axis=-1)
        return mean, layers.positive(pre_sigma), tf.nn.relu(pass_through)


class PresenceHead(keras.layers.Layer):
    """MLP 64 (relu) to the presence logit, clipped to [-10, 10]."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(64, activation="relu", dtype=HEAD_DTYPE)
        self.logit = keras.layers.Dense(1, dtype=HEAD_DTYPE)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        """Map `[cells, features]` to logits `[cells]`."""
        logit = layers.float32(self.logit(self.hidden(inputs)))[:, 0]
        return tf.clip_by_value(logit, -PRESENCE_LOGIT_LIMIT, PRESENCE_LOGIT_LIMIT)


class ObjectDecoder(keras.layers.Layer):
    """Dense(2 d), Dense(os/4 * os/4 * 32), Conv(64,3,1), up(os/2), Conv(32,3,1), up(os), Conv(C+1,3,1).

    Maps codes `[cells, d]` to objects `[cells, os, os, C + 1]` in [0, 1]: colour, then alpha.
    """

    def __init__(self, latent_size: int, object_size: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        quarter = object_size // 4
        self.hidden = keras.layers.Dense(2 * latent_size, activation="relu")
        self.dense = keras.layers.Dense(quarter * quarter * 32, activation="relu")
        self.reshape = keras.layers.Reshape((quarter, quarter, 32))
        self.stages = [
            (layers.conv(64, 3, 1, "relu"), layers.BilinearResize(2 * quarter, 2 * quarter)),
            (layers.conv(32, 3, 1, "relu"), layers.BilinearResize(object_size, object_size)),
        ]
        self.output_convolution = layers.conv(channels + 1, 3, 1, None)

    def call(self, codes: tf.Tensor) -> tf.Tensor:
        features = self.reshape(self.dense(self.hidden(codes)))
        for convolution, upsample in self.stages:
            features = upsample(convolution(features))
        return layers.float32_sigmoid(self.output_convolution(features))


class DenseImageEncoder(keras.layers.Layer):
    """Flatten, Dense 1024, Dense 500 (relu), then a Gaussian head of `latent_size`."""

    def __init__(self, latent_size: int, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.hidden = [keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(500, activation="relu")]
        self.mean = keras.layers.Dense(latent_size)
        self.sigma = keras.layers.Dense(latent_size)

    def call(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features = self.flatten(images)
        for layer in self.hidden:
            features = layer(features)
        return layers.float32(self.mean(features)), layers.positive(self.sigma(features))


class ConvImageDecoder(keras.layers.Layer):
    """Dense(H/8 * W/8 * 128) relu, then Conv(128) relu, Conv(64) relu, Conv(32) sigmoid, Conv(C) sigmoid.

    All convolutions are 3x3 with stride 1, each of the first three followed by a 2x bilinear
    upsampling. Maps codes `[batch, d]` to images `[batch, height, width, channels]` in [0, 1].
    """

    def __init__(self, height: int, width: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense((height // 8) * (width // 8) * 128, activation="relu")
        self.reshape = keras.layers.Reshape((height // 8, width // 8, 128))
        self.stages = [
            (layers.conv(128, 3, 1, "relu"), layers.BilinearResize(height // 4, width // 4)),
            (layers.conv(64, 3, 1, "relu"), layers.BilinearResize(height // 2, width // 2)),
            (layers.conv(32, 3, 1, "sigmoid"), layers.BilinearResize(height, width)),
        ]
        self.output_convolution = layers.conv(channels, 3, 1, None)

    def call(self, codes: tf.Tensor) -> tf.Tensor:
        features = self.reshape(self.dense(codes))
        for convolution, upsample in self.stages:
            features = upsample(convolution(features))
        return layers.float32_sigmoid(self.output_convolution(features))


class DenseImageDecoder(keras.layers.Layer):
    """Dense 500, Dense 1024 (relu), Dense(H * W * C) sigmoid: codes `[batch, d]` to images in [0, 1]."""

    def __init__(self, height: int, width: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [keras.layers.Dense(500, activation="relu"), keras.layers.Dense(1024, activation="relu")]
        self.output_layer = keras.layers.Dense(height * width * channels)
        self.reshape = keras.layers.Reshape((height, width, channels))

    def call(self, codes: tf.Tensor) -> tf.Tensor:
        features = codes
        for layer in self.hidden:
            features = layer(features)
        return layers.float32_sigmoid(self.reshape(self.output_layer(features)))


def _image_autoencoder(dense: bool, latent_size: int, image_shape: tuple[int, int, int],
                       prefix: str) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    height, width, channels = image_shape
    if dense:
        return (DenseImageEncoder(latent_size, name=f"{prefix}_encoder"),
                DenseImageDecoder(height, width, channels, name=f"{prefix}_decoder"))
    return (layers.ConvGaussianEncoder(latent_size, (3, 3, 3), name=f"{prefix}_encoder"),
            ConvImageDecoder(height, width, channels, name=f"{prefix}_decoder"))


def boxes_from_where(where: tf.Tensor, cell_centres: tf.Tensor) -> tf.Tensor:
    """Turn `z_where` samples `[batch, cells, 4]` into boxes `(sx, sy, tx, ty)` `[batch, cells, 4]`.

    `sx = 0.5 sigmoid(w0)`, `sy = 0.5 sigmoid(w1)`, `tx = 0.5 tanh(w2) + cx`,
    `ty = 0.5 tanh(w3) + cy`, with `cell_centres` `[cells, 2]` holding each cell's `(cx, cy)`.
    """
    scale = MAX_BOX_SCALE * tf.sigmoid(where[..., :2])
    shift = MAX_BOX_SHIFT * tf.tanh(where[..., 2:]) + cell_centres
    return tf.concat([scale, shift], axis=-1)


def grid_cell_centres(grid_height: int, grid_width: int) -> tf.Tensor:
    """Return the `[grid_height * grid_width, 2]` centres `(cx, cy)` of the cells, row-major, in [-1, 1]."""
    cy, cx = tf.meshgrid(spatial.pixel_centres(grid_height), spatial.pixel_centres(grid_width), indexing="ij")
    return tf.reshape(tf.stack([cx, cy], axis=-1), [grid_height * grid_width, 2])


def render(colours: tf.Tensor, alphas: tf.Tensor, presence: tf.Tensor, depth: tf.Tensor,
           background: tf.Tensor) -> dict[str, tf.Tensor]:
    """Blend placed objects over a background.

    Every object's importance is `z_pres * alpha * (sigmoid(-z_depth) + 0.5)`; the canvas is the
    importance-weighted mean colour, the coverage the importance-weighted mean of
    `z_pres * alpha`, and the image `coverage * canvas + (1 - coverage) * background`.

    Args:
      colours: `[batch, objects, height, width, channels]` placed colours in [0, 1].
      alphas: `[batch, objects, height, width, 1]` placed alphas, zero outside each box.
      presence: `[batch, objects]` `z_pres` in [0, 1].
      depth: `[batch, objects]` `z_depth`; smaller depths weigh more.
      background: `[batch, height, width, channels]`.

    Returns:
      `image`, `canvas` (`[batch, height, width, channels]`) and `coverage` (`[batch, height, width, 1]`).
    """
    presence = presence[:, :, None, None, None]
    visible = presence * alphas
    importance = visible * (tf.sigmoid(-depth)[:, :, None, None, None] + DEPTH_IMPORTANCE_OFFSET)
    total_importance = tf.reduce_sum(importance, axis=1) + RENDER_EPSILON
    canvas = tf.reduce_sum(importance * colours, axis=1) / total_importance
    coverage = tf.reduce_sum(visible * importance, axis=1) / total_importance
    image = coverage * canvas + (1.0 - coverage) * background
    return {"image": image, "canvas": canvas, "coverage": coverage}


class Spair(keras.Model):
    """`spair`, `bg_spair` or `lg_spair` for images of a given shape in [0, 1].

    Inputs are `[batch, height, width, channels + view_channels]`: the image `x` and, for
    `lg_spair`, the auxiliary view `x_hat` after it. The grid has one cell per 12 x 12 pixels
    (4 x 4 for 48 x 48 images), and every cell proposes one object.
    """

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int], **kwargs):
        super().__init__(**kwargs)
        config.validate()
        config.validate_image_shape(image_shape)
        height, width, channels = image_shape
        self.config = config
        self.image_shape = tuple(image_shape)
        self.grid_shape = (height // SPAIR_CELL_PIXELS, width // SPAIR_CELL_PIXELS)
        self.num_cells = self.grid_shape[0] * self.grid_shape[1]
        self.has_background = config.model in ("bg_spair", "lg_spair")
        self.has_local_path = config.model == "lg_spair"
        self.view_channels = augment.view_channels(config.augmentation, channels) if self.has_local_path else 0
        self.cell_centres = grid_cell_centres(*self.grid_shape)

        self.backbone = Backbone(name="backbone")
        self.where_head = WhereHead(name="where_head")
        self.object_encoder = ObjectEncoder(config.latent_size, name="object_encoder")
        self.depth_head = DepthHead(name="depth_head")
        self.presence_head = PresenceHead(name="presence_head")
        object_code_size = config.latent_size
        if self.has_local_path and config.concat_z_what:
            object_code_size += config.local_latent_size
        self.object_decoder = ObjectDecoder(object_code_size, config.object_size, channels, name="object_decoder")
        if self.has_background:
            self.background_encoder, self.background_decoder = _image_autoencoder(
                config.dense_bg, config.bg_latent_size, self.image_shape, "background")
        if self.has_local_path:
            self.local_encoder, self.local_decoder = _image_autoencoder(
                config.dense_local, config.local_latent_size, (height, width, self.view_channels), "local")

    @property
    def input_channels(self) -> int:
        return self.image_shape[-1] + self.view_channels

    def build_variables(self) -> None:
        """Create every variable (needed before `optimizer.build` under a distribution strategy)."""
        self.build((None, *self.image_shape[:2], self.input_channels))

    def build(self, input_shape) -> None:
        # One forward pass on zeros builds every sublayer with its real input shape.
        self.forward(tf.zeros((1, *input_shape[1:])), tf.constant([0, 0], tf.int32), training=False)
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        return self.compute_losses(inputs, tf.constant([0, 0], tf.int32), step=0, training=training)

    @_without_autograph
    def forward(self, inputs: tf.Tensor, seed: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
        """Run inference and rendering; return every intermediate by name.

        In training every latent is sampled and `z_pres` is relaxed. In evaluation the latents are
        their posterior means and `z_pres = round(sigmoid(logit))`.

        Returns:
          The per-cell tensors of `propose_objects` (except `placed`), and
          - `reconstruction`, `background`: `[batch, height, width, channels]`;
          - with a background model, `background_mean` and `background_sigma` of its code;
          - for `lg_spair`, `local_mean` and `local_sigma` of `z_l`, and `x_hat` and
            `x_hat_reconstruction` `[batch, height, width, view channels]`.
        """
        config = self.config
        channels = self.image_shape[-1]
        local_seed, cells_seed, background_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
        x = inputs[..., :channels]
        out: dict[str, tf.Tensor] = {}

        local_code = None
        if self.has_local_path:
            x_hat = inputs[..., channels:]
            out["local_mean"], out["local_sigma"] = self.local_encoder(x_hat)
            local_code = _gaussian_sample(out["local_mean"], out["local_sigma"], local_seed, training)
            out["x_hat"] = x_hat
            out["x_hat_reconstruction"] = self.local_decoder(local_code)

        features = tf.reshape(self.backbone(x), [tf.shape(x)[0], self.num_cells, BACKBONE_FEATURES])
        out.update(self.propose_objects(x, features, self.cell_centres, local_code, cells_seed, training))

        if self.has_background:
            out["background_mean"], out["background_sigma"] = self.background_encoder(x)
            background_code = _gaussian_sample(out["background_mean"], out["background_sigma"], background_seed,
                                               training)
            if local_code is not None and config.concat_z_bg:
                background_code = tf.concat([background_code, local_code], axis=-1)
            background = self.background_decoder(background_code)
        else:
            background = tf.zeros_like(x)

        placed_colours, placed_alphas = tf.split(out.pop("placed"), [channels, 1], axis=-1)
        rendered = render(placed_colours, placed_alphas, out["presence"], out["depth"], background)
        out["reconstruction"] = rendered["image"]
        out["background"] = background
        return out

    def propose_objects(self, x: tf.Tensor, features: tf.Tensor, cell_centres: tf.Tensor,
                        local_code: tf.Tensor | None, seed: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
        """Infer and decode the object of every cell, all cells at once.

        Args:
          x: images `[B, H, W, C]`.
          features: backbone features `[B, N, 100]` of `N` cells.
          cell_centres: `[N, 2]` the cells' centres `(cx, cy)`.
          local_code: `z_l` `[B, d_l]` for `lg_spair`, else None.
          seed: `[2]` stateless seed.
          training: sample (True) or take posterior means and rounded presences (False).

        Returns:
          - `boxes` `[B, N, 4]` as `(sx, sy, tx, ty)`;
          - `glimpses` `[B, N, os, os, C]`;
          - `objects`, the decoded colour and alpha, `[B, N, os, os, C + 1]`;
          - `placed`, the objects in the image frame (with colour noise in training), `[B, N, H, W, C + 1]`;
          - `presence`, `logits`, `pre_sigmoid`, `depth` `[B, N]`;
          - the Gaussian parameters `where_mean`, `where_sigma` `[B, N, 4]`, `what_mean`,
            `what_sigma` `[B, N, d]`, `depth_mean`, `depth_sigma` `[B, N]`.
        """
        config = self.config
        height, width, channels = self.image_shape
        size = config.object_size
        batch = tf.shape(x)[0]
        num_cells = features.shape[1]
        cells = batch * num_cells
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=5))
        features = tf.reshape(features, [cells, BACKBONE_FEATURES])

        where_mean, where_sigma, where_pass_through = self.where_head(features)
        where = _gaussian_sample(where_mean, where_sigma, seeds[0], training)
        boxes = boxes_from_where(tf.reshape(where, [batch, num_cells, WHERE_DIMS]), cell_centres)

        glimpses = spatial.extract_glimpses(x, boxes, size)
        what_mean, what_sigma = self.object_encoder(tf.reshape(glimpses, [cells, size, size, channels]))
        what = _gaussian_sample(what_mean, what_sigma, seeds[1], training)

        depth_mean, depth_sigma, depth_pass_through = self.depth_head(
            tf.concat([features, where_pass_through, where, what], axis=-1))
        depth = _gaussian_sample(depth_mean, depth_sigma, seeds[2], training)

        logits = self.presence_head(tf.concat([features, depth_pass_through, where, what, depth], axis=-1))
        logits = tf.reshape(logits, [batch, num_cells])
        if training:
            pre_sigmoid = (logits + _logistic_noise(tf.shape(logits), seeds[3])) / config.tau
            presence = tf.sigmoid(pre_sigmoid)
        else:
            pre_sigmoid = logits / config.tau
            presence = tf.round(tf.sigmoid(logits))

        codes = what
        if local_code is not None and config.concat_z_what:
            codes = tf.concat([what, tf.repeat(local_code, num_cells, axis=0)], axis=-1)
        objects = tf.reshape(self.object_decoder(codes), [batch, num_cells, size, size, channels + 1])
        to_place = objects
        if training:
            # Split and concatenate rather than slice: the gradient of a slice pads a full-size zero tensor.
            colours, alphas = tf.split(objects, [channels, 1], axis=-1)
            noise = OBJECT_COLOUR_NOISE * tf.random.stateless_normal(tf.shape(colours), seed=seeds[4])
            to_place = tf.concat([tf.clip_by_value(colours + noise, 0.0, 1.0), alphas], axis=-1)

        return {
            "boxes": boxes,
            "glimpses": glimpses,
            "objects": objects,
            "placed": spatial.place_objects(to_place, boxes, height, width),
            "presence": presence,
            "logits": logits,
            "pre_sigmoid": pre_sigmoid,
            "depth": tf.reshape(depth, [batch, num_cells]),
            "where_mean": tf.reshape(where_mean, [batch, num_cells, WHERE_DIMS]),
            "where_sigma": tf.reshape(where_sigma, [batch, num_cells, WHERE_DIMS]),
            "what_mean": tf.reshape(what_mean, [batch, num_cells, -1]),
            "what_sigma": tf.reshape(what_sigma, [batch, num_cells, -1]),
            "depth_mean": tf.reshape(depth_mean, [batch, num_cells]),
            "depth_sigma": tf.reshape(depth_sigma, [batch, num_cells]),
        }

    def prior_presence_log_odds(self, presence: tf.Tensor, step) -> tf.Tensor:
        """Return the count prior's log-odds `[batch, cells]` given hard presences `[batch, cells]`.

        The prior's success probability `q` grows linearly from 0 to 0.99 over
        `z_pres_anneal_step` steps, so the prior favours fewer objects as training goes on.
        """
        success = spair_losses.linear_anneal(step, 0.0, MAX_COUNT_PRIOR_SUCCESS, self.config.z_pres_anneal_step)
        return spair_losses.count_prior_log_odds(presence, success)

    @_without_autograph
    def compute_losses(self, inputs: tf.Tensor, seed: tf.Tensor, step=0, training: bool = True) -> dict[str, tf.Tensor]:
        """Compute every loss term per example; `loss` is the objective the optimiser minimises.

        Returns a dict of `[batch]` tensors: `bce_x`, `kl_what`, `kl_depth`, `kl_shift`, `kl_zoom`,
        `kl_pres`, with a background `kl_bg`, for `lg_spair` `kl_local` and `bce_x_hat`; then `loss`.
        `step` (the optimizer's iteration count) drives the zoom prior and the count prior.
        """
        config = self.config
        out = self.forward(inputs, seed, training)
        terms: dict[str, tf.Tensor] = {}

        terms["bce_x"] = spair_losses.bernoulli_cross_entropy(inputs[..., :self.image_shape[-1]], out["reconstruction"])
        terms["kl_what"] = _kl_over_cells(out["what_mean"], out["what_sigma"])
        terms["kl_depth"] = _kl_over_cells(out["depth_mean"][..., None], out["depth_sigma"][..., None])
        terms["kl_shift"] = _kl_over_cells(out["where_mean"][..., 2:], out["where_sigma"][..., 2:])
        zoom_prior_mean = spair_losses.linear_anneal(step, config.prior_z_zoom_start, config.prior_z_zoom,
                                                     config.z_pres_anneal_step)
        terms["kl_zoom"] = _kl_over_cells(out["where_mean"][..., :2], out["where_sigma"][..., :2],
                                          zoom_prior_mean, ZOOM_PRIOR_SIGMA)
        present = tf.cast(out["pre_sigmoid"] > 0.0, tf.float32)
        terms["kl_pres"] = spair_losses.presence_kl(
            out["pre_sigmoid"], out["logits"], self.prior_presence_log_odds(present, step), config.tau)

        loss = terms["bce_x"] + config.beta * (
            config.z_what_beta * terms["kl_what"] + terms["kl_depth"] + terms["kl_shift"] + terms["kl_zoom"]
            + terms["kl_pres"])
        if self.has_background:
            terms["kl_bg"] = losses.gaussian_kl(out["background_mean"], out["background_sigma"])
            loss += config.z_bg_beta * terms["kl_bg"]
        if self.has_local_path:
            terms["kl_local"] = losses.gaussian_kl(out["local_mean"], out["local_sigma"])
            terms["bce_x_hat"] = spair_losses.bernoulli_cross_entropy(out["x_hat"], out["x_hat_reconstruction"])
            # Without `split_z_l` the local KL is weighted like the object KLs instead of on its own.
            local_beta = config.z_l_beta if config.split_z_l else config.beta
            loss += local_beta * terms["kl_local"] + terms["bce_x_hat"]
        terms["loss"] = loss
        return terms

    # Inference helpers for evaluation and figures: deterministic (posterior means, rounded z_pres).

    @_without_autograph
    def infer(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """Return the deterministic `forward` outputs with `count` `[batch]` (int32) added."""
        out = self.forward(inputs, tf.constant([0, 0], tf.int32), training=False)
        out["count"] = tf.cast(tf.reduce_sum(out["presence"], axis=-1), tf.int32)
        return out


def _kl_over_cells(mean: tf.Tensor, sigma: tf.Tensor, prior_mean=0.0, prior_sigma=1.0) -> tf.Tensor:
    """Gaussian KL summed over cells and dimensions: `[batch, cells, dims]` -> `[batch]`."""
    batch = tf.shape(mean)[0]
    flat_mean = tf.reshape(mean, [batch, -1])
    flat_sigma = tf.reshape(sigma, [batch, -1])
    return losses.gaussian_kl(flat_mean, flat_sigma, prior_mean, prior_sigma)
