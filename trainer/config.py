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
from typing import Any, Mapping

VAE_MODELS = ("lgvae", "gmvae", "lggmvae")
GMVAE_MODELS = ("gmvae", "lggmvae")
LOCAL_PATH_MODELS = ("lgvae", "lggmvae")
AUGMENTATIONS = ("scramble", "mix_scramble", "blur", "high_low_pass", "no_op")


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

    def validate(self) -> None:
        if self.model not in VAE_MODELS:
            raise ConfigError(f"--model {self.model!r} is not one of {', '.join(VAE_MODELS)}")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(
                f"--augmentation {self.augmentation!r} is not one of {', '.join(AUGMENTATIONS)}")
        for name in ("global_latent_dims", "local_latent_dims", "y_size", "patch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.tau <= 0:
            raise ConfigError(f"--tau must be positive, got {self.tau}")
        if self.beta < 0 or self.alpha < 0:
            raise ConfigError(f"--beta and --alpha must be non-negative, got {self.beta} and {self.alpha}")

    def validate_image_shape(self, image_shape: tuple[int, int, int]) -> None:
        """Check what depends on the data: patch size and the decoder's H/8 x W/8 start."""
        height, width, _ = image_shape
        if height % 8 or width % 8:
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

    def validate(self) -> None:
        for name in ("training_steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every",
                     "lr_decay_steps", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}")


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
