"""Typed experiment configs: what to train, on which data, for how long.

An experiment is an `ExperimentConfig` of two frozen parts: `ModelConfig` holds the model and
its objective with the original command-line names (`beta`, `alpha`, `y_size`, `patch_size`,
...), `TrainConfig` the optimisation and bookkeeping. Presets (`trainer.presets`) name complete
configs; command-line flags override single fields. The resolved config is saved as
`config.json` in the run directory and read back by evaluation and figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

VAE_MODELS = ("lgvae", "gmvae", "lggmvae")
GMVAE_MODELS = ("gmvae", "lggmvae")
# Object detection: SPAIR with a black background, with a learned background, and SPLIT-SPAIR.
SPAIR_MODELS = ("spair", "bg_spair", "lg_spair")
MODELS = VAE_MODELS + SPAIR_MODELS
LOCAL_PATH_MODELS = ("lgvae", "lggmvae", "lg_spair")
AUGMENTATIONS = ("scramble", "mix_scramble", "blur", "high_low_pass", "no_op")
# Augmentations whose view stays in the image's value range; the SPAIR family scores its
# reconstruction of `x_hat` with a Bernoulli likelihood, which needs values in [0, 1].
BOUNDED_AUGMENTATIONS = ("scramble", "mix_scramble", "blur", "no_op")
# The SPAIR backbone's strides (2, 2, 3) make one grid cell of 12 x 12 pixels, and the
# convolutional background and local decoders start from an H/8 x W/8 map.
SPAIR_CELL_PIXELS = 12
CONV_DECODER_DIVISOR = 8
# `TrainConfig.strategy`: "auto" picks multi_worker when TF_CONFIG names a cluster, mirrored when
# more than one GPU is used, and the default (one-device) strategy otherwise.
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# `TrainConfig.mixed_precision`: Keras dtype policies; variables and losses stay float32 in both.
PRECISIONS = ("float32", "mixed_bfloat16")
# `ModelConfig.cluster_kl`: the mixture models' KL of the cluster variable to the uniform prior,
# per example (the paper) or on the batch-average assignment (a deviation from the paper, which
# penalises unbalanced cluster use but lets each example's assignment be confident).
CLUSTER_KL_MODES = ("example", "batch")


class ConfigError(ValueError):
    """An invalid experiment config or flag value."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model, its sizes and its objective; field names are the original flag names."""

    model: str = "lggmvae"
    global_latent_dims: int = 128
    local_latent_dims: int = 128
    y_size: int = 30
    tau: float = 0.4
    beta: float = 40.0
    alpha: float = 40.0
    augmentation: str = "scramble"
    patch_size: int = 1
    # The next three change the VAE family's objective and are deviations from the paper unless
    # left at their defaults; the SPAIR family ignores them. `gmvae`/`lggmvae`: see CLUSTER_KL_MODES.
    cluster_kl: str = "example"
    # Every VAE model: scale beta and alpha linearly from 0 to their values over the first N steps;
    # 0 (the paper) applies them from the first step.
    kl_warmup_steps: int = 0
    # `lgvae`/`lggmvae`: z_l's KL weight as a multiple of beta; 1 is the paper. Below 1, z_l is the
    # cheaper carrier of what both paths can see, such as colours.
    local_beta_scale: float = 1.0
    # The SPAIR family (`spair`, `bg_spair`, `lg_spair`). Its own defaults for the shared names
    # above (beta 0.5, tau 0.8, patch_size 4) are set by its presets.
    latent_size: int = 128
    bg_latent_size: int = 4
    local_latent_size: int = 64
    object_size: int = 32
    z_what_beta: float = 0.1
    z_l_beta: float = 0.1
    z_bg_beta: float = 10.0
    prior_z_zoom: float = 0.0
    prior_z_zoom_start: float = 10.0
    z_pres_anneal_step: int = 10_000
    split_z_l: bool = False
    concat_z_what: bool = False
    dense_local: bool = False
    dense_bg: bool = False
    concat_z_bg: bool = False

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"--model {self.model!r} is not one of {', '.join(MODELS)}")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(
                f"--augmentation {self.augmentation!r} is not one of {', '.join(AUGMENTATIONS)}")
        if self.cluster_kl not in CLUSTER_KL_MODES:
            raise ConfigError(f"--cluster_kl {self.cluster_kl!r} is not one of {', '.join(CLUSTER_KL_MODES)}")
        if self.local_beta_scale < 0:
            raise ConfigError(f"--local_beta_scale must be non-negative, got {self.local_beta_scale}")
        if self.kl_warmup_steps < 0:
            raise ConfigError(f"--kl_warmup_steps must be non-negative (0 turns warm-up off), got {self.kl_warmup_steps}")
        for name in ("global_latent_dims", "local_latent_dims", "y_size", "patch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.tau <= 0:
            raise ConfigError(f"--tau must be positive, got {self.tau}")
        if self.beta < 0 or self.alpha < 0:
            raise ConfigError(f"--beta and --alpha must be non-negative, got {self.beta} and {self.alpha}")
        if self.model in SPAIR_MODELS:
            self._validate_spair()

    def _validate_spair(self) -> None:
        for name in ("latent_size", "bg_latent_size", "local_latent_size", "z_pres_anneal_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.object_size < 4 or self.object_size % 4:
            raise ConfigError(
                f"--object_size must be a positive multiple of 4 (the object decoder starts at a quarter"
                f" of it), got {self.object_size}")
        for name in ("z_what_beta", "z_l_beta", "z_bg_beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be non-negative, got {getattr(self, name)}")
        if self.model == "lg_spair" and self.augmentation not in BOUNDED_AUGMENTATIONS:
            raise ConfigError(
                f"--augmentation {self.augmentation!r} makes a view outside [0, 1], which lg_spair cannot"
                f" score; choose one of {', '.join(BOUNDED_AUGMENTATIONS)}")

    def _spair_size_divisor(self) -> int:
        """Return the number that must divide the image height and width of a SPAIR-family model."""
        divisor = SPAIR_CELL_PIXELS
        uses_conv_decoder = (self.model != "spair" and not self.dense_bg) or (
            self.model == "lg_spair" and not self.dense_local)
        if uses_conv_decoder:
            divisor = math.lcm(divisor, CONV_DECODER_DIVISOR)
        return divisor

    def validate_image_shape(self, image_shape: tuple[int, int, int]) -> None:
        """Check what depends on the data: patch size, the decoders' H/8 x W/8 start, SPAIR's grid."""
        height, width, _ = image_shape
        if self.model in SPAIR_MODELS:
            divisor = self._spair_size_divisor()
            if height % divisor or width % divisor:
                raise ConfigError(
                    f"image size {height}x{width} is not a multiple of {divisor}, which {self.model} needs"
                    f" (a grid cell is {SPAIR_CELL_PIXELS} pixels; convolutional decoders start at H/8 x W/8)")
        elif height % 8 or width % 8:
            raise ConfigError(f"image size {height}x{width} is not a multiple of 8, which the decoder needs")
        if self.augmentation in ("scramble", "high_low_pass") and (height % self.patch_size or width % self.patch_size):
            raise ConfigError(
                f"--patch_size {self.patch_size} does not divide the {height}x{width} images;"
                " choose a divisor of both sides")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one run."""

    training_steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-4
    # The original multiplied the GMVAE learning rate by 0.4 every 1,000,000 steps (staircase).
    lr_decay_steps: int = 1_000_000
    lr_decay_rate: float = 0.4
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    shuffle_buffer: int = 10_000
    # Adam's per-variable gradient clipping (Keras `clipnorm`); 0 turns it off. SPAIR uses 1.0.
    clipnorm: float = 0.0
    strategy: str = "auto"
    # Replicas of a mirrored run: the first N GPUs, or on a machine without GPUs the first N
    # logical CPU devices the process configured. 0 uses every one of them.
    devices: int = 0
    # Compile each replica's forward and backward pass with XLA. Off by default because on CPU
    # it is slower (benchmarks/train_speed.py measures both).
    jit_compile: bool = False
    mixed_precision: str = "float32"

    def validate(self) -> None:
        for name in ("training_steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every",
                     "lr_decay_steps", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.clipnorm < 0:
            raise ConfigError(f"--clipnorm must be non-negative (0 turns clipping off), got {self.clipnorm}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.devices < 0:
            raise ConfigError(f"--devices must be non-negative (0 uses every device), got {self.devices}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(
                f"--mixed_precision {self.mixed_precision!r} is not one of {', '.join(PRECISIONS)}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A complete experiment: the preset it came from, the expected dataset, model and training."""

    preset: str
    dataset: str
    model: ModelConfig
    train: TrainConfig
    description: str = ""

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "ExperimentConfig":
        try:
            return cls(
                preset=payload["preset"],
                dataset=payload["dataset"],
                model=ModelConfig(**payload["model"]),
                train=TrainConfig(**payload["train"]),
                description=payload.get("description", ""),
            )
        except (KeyError, TypeError) as error:
            raise ConfigError(f"invalid experiment config ({error})") from None

    @classmethod
    def from_json(cls, text: str) -> "ExperimentConfig":
        return cls.from_dict(json.loads(text))


# Each overridable flag and the config part that holds it, derived from the dataclasses so that a
# new field is a new flag with no second list to update.
OVERRIDABLE_FIELDS: dict[str, str] = {
    **{field.name: "model" for field in dataclasses.fields(ModelConfig)},
    **{field.name: "train" for field in dataclasses.fields(TrainConfig)},
}


def override(config: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """Return `config` with the named fields replaced; unknown names raise ConfigError."""
    parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for name, value in values.items():
        if name not in OVERRIDABLE_FIELDS:
            raise ConfigError(f"unknown config field --{name}")
        parts[OVERRIDABLE_FIELDS[name]][name] = value
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, **parts["model"]),
        train=dataclasses.replace(config.train, **parts["train"]),
    )
