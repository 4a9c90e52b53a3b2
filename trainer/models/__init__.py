"""Model families behind one small protocol that the training loop, evaluation and figures use.

A model is a `keras.Model` with `build_variables()`, `input_channels` and
`compute_losses(inputs, seed, step, training) -> dict` of `[batch]` loss terms whose `loss` entry
is the objective. Families add their own inference helpers (`encode`, `decode`, ...).
"""

from __future__ import annotations

import keras

from trainer.config import SPAIR_MODELS, VAE_MODELS, ConfigError, ModelConfig


def build_model(config: ModelConfig, image_shape: tuple[int, int, int]) -> keras.Model:
    """Build the model named by `config.model` for images `[height, width, channels]`, variables created."""
    if config.model in VAE_MODELS:
        from trainer.models import vae

        model = vae.SplitVAE(config, tuple(image_shape), name=config.model)
    elif config.model in SPAIR_MODELS:
        from trainer.models import spair

        model = spair.Spair(config, tuple(image_shape), name=config.model)
    else:
        raise ConfigError(f"--model {config.model!r} is not known")
    model.build_variables()
    return model
