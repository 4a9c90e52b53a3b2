"""The train component: one preset, every hyperparameter overridable, into a Model artifact.

This module has no `from __future__ import annotations`: KFP reads the annotations of the
component function as live types, and the function's source runs on its own inside the image.
"""

from kfp.dsl import Dataset, Input, Model, Output

# Inputs of `train` that are not config fields; every other input is one. The function body
# repeats this tuple because KFP runs the function's source without the rest of this module.
NON_CONFIG_INPUTS = ("preset", "dataset", "run")


def train(
    preset: str,
    dataset: Input[Dataset],
    run: Output[Model],
    model: str,
    global_latent_dims: int,
    local_latent_dims: int,
    y_size: int,
    tau: float,
    beta: float,
    alpha: float,
    augmentation: str,
    patch_size: int,
    cluster_kl: str,
    kl_warmup_steps: int,
    local_beta_scale: float,
    latent_size: int,
    bg_latent_size: int,
    local_latent_size: int,
    object_size: int,
    z_what_beta: float,
    z_l_beta: float,
    z_bg_beta: float,
    prior_z_zoom: float,
    prior_z_zoom_start: float,
    z_pres_anneal_step: int,
    split_z_l: bool,
    concat_z_what: bool,
    dense_local: bool,
    dense_bg: bool,
    concat_z_bg: bool,
    training_steps: int,
    batch_size: int,
    learning_rate: float,
    lr_decay_steps: int,
    lr_decay_rate: float,
    seed: int,
    checkpoint_every: int,
    keep_checkpoints: int,
    log_every: int,
    shuffle_buffer: int,
    clipnorm: float,
    strategy: str,
    devices: int,
    jit_compile: bool,
    mixed_precision: str,
):
    """Train `preset` with the given config fields on `dataset`; `run.path` becomes the run directory.

    Every input except `preset`, `dataset` and `run` is a field of `trainer.config` under its
    original flag name. The run directory contains config.json, run.json, checkpoints/,
    tensorboard/ and export/; rerunning into the same directory resumes from its newest
    checkpoint.
    """
    # First statement, so that locals() contains exactly the inputs.
    config_fields = {name: value for name, value in locals().items() if name not in ("preset", "dataset", "run")}

    from trainer import config as config_module
    from trainer import loop, presets

    config = config_module.override(presets.get_preset(preset), config_fields)
    config.validate()
    result = loop.train(config, dataset.path, run.path)

    run.metadata.update({
        "framework": "tensorflow",
        "preset": config.preset,
        "model": config.model.model,
        "dataset": config.dataset,
        "final_step": result.final_step,
        "images_per_second": result.images_per_second,
        "final_losses": result.losses,
    })
