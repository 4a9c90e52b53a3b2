"""Tests of the SPAIR family's config fields, flags and presets."""

import argparse
import dataclasses

import pytest

from trainer import cli, presets
from trainer.config import ConfigError, ExperimentConfig, ModelConfig, override

SPAIR_PRESETS = ("multibird-easy-bg-spair", "multibird-easy-split-spair", "multibird-hard-bg-spair",
                 "multibird-hard-split-spair", "multidigit-easy-bg-spair", "multidigit-easy-split-spair")


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli._add_config_flags(parser)
    return parser.parse_args(argv)


def test_spec_defaults():
    config = ModelConfig(model="bg_spair")
    assert (config.latent_size, config.bg_latent_size, config.local_latent_size, config.object_size) == (128, 4, 64, 32)
    assert (config.z_what_beta, config.z_l_beta, config.z_bg_beta) == (0.1, 0.1, 10.0)
    assert (config.prior_z_zoom, config.prior_z_zoom_start, config.z_pres_anneal_step) == (0.0, 10.0, 10_000)
    assert not any((config.split_z_l, config.concat_z_what, config.dense_local, config.dense_bg, config.concat_z_bg))


def test_vae_defaults_unchanged():
    config = ModelConfig()
    assert (config.model, config.beta, config.tau, config.patch_size) == ("lggmvae", 40.0, 0.4, 1)


@pytest.mark.parametrize("spelling", ["-split_z_l", "--split_z_l"])
def test_boolean_flag_spellings(spelling):
    args = _parse([spelling, "-concat_z_what", "--model", "lg_spair", "--z_bg_beta", "1"])
    assert args.split_z_l is True
    assert args.concat_z_what is True
    assert args.dense_bg is None
    assert args.model == "lg_spair"
    assert args.z_bg_beta == 1.0


def test_boolean_flag_turns_off():
    assert _parse(["--no-dense_bg"]).dense_bg is False


def test_original_command_flags_override_preset():
    # The Multi-Bird Hard SPLIT-SPAIR command of the original list, on top of the easy preset.
    argv = ["--preset", "multibird-easy-split-spair", "--z_bg_beta", "1", "--patch_size", "8", "--latent_size", "64",
            "--bg_latent_size", "64", "--local_latent_size", "64", "--model", "lg_spair", "-split_z_l",
            "--z_what_beta", "0.5", "-concat_z_what", "-dense_local", "-dense_bg"]
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset")
    cli._add_config_flags(parser)
    config = cli.resolve_config(parser.parse_args(argv))
    assert config.model == presets.get_preset("multibird-hard-split-spair").model


@pytest.mark.parametrize("name", SPAIR_PRESETS)
def test_spair_preset_training_settings(name):
    config = presets.get_preset(name)
    config.validate()
    config.model.validate_image_shape((48, 48, 3))
    assert (config.model.beta, config.model.tau) == (0.5, 0.8)
    assert (config.train.batch_size, config.train.clipnorm) == (32, 1.0)
    if name.startswith("multibird"):
        assert config.model.object_size == 32
        assert config.train.learning_rate == 1e-4
    assert config.dataset == name.rsplit("-", 2)[0]


@pytest.mark.parametrize("name,fields", [
    ("multibird-easy-bg-spair", dict(model="bg_spair", z_bg_beta=10.0, latent_size=64, bg_latent_size=4,
                                     patch_size=4, dense_bg=False)),
    ("multibird-easy-split-spair", dict(model="lg_spair", z_bg_beta=10.0, patch_size=8, latent_size=64,
                                        bg_latent_size=4, local_latent_size=4, split_z_l=True, concat_z_what=True,
                                        dense_local=True, dense_bg=True, z_what_beta=0.1, concat_z_bg=False)),
    ("multibird-hard-bg-spair", dict(model="bg_spair", z_bg_beta=1.0, latent_size=64, bg_latent_size=64,
                                     dense_bg=False)),
    ("multibird-hard-split-spair", dict(model="lg_spair", z_bg_beta=1.0, patch_size=8, latent_size=64,
                                        bg_latent_size=64, local_latent_size=64, split_z_l=True, z_what_beta=0.5,
                                        concat_z_what=True, dense_local=True, dense_bg=True)),
])
def test_multibird_presets_follow_original_commands(name, fields):
    config = presets.get_preset(name)
    assert config.train.training_steps == 200_000
    for field, value in fields.items():
        assert getattr(config.model, field) == value, field


@pytest.mark.parametrize("variant", ["bg-spair", "split-spair"])
def test_multidigit_presets_mirror_multibird_easy(variant):
    small = presets.get_preset(f"multidigit-easy-{variant}")
    full = presets.get_preset(f"multibird-easy-{variant}")
    assert small.dataset == "multidigit-easy"
    assert small.train.training_steps < full.train.training_steps
    assert small.model.z_pres_anneal_step <= small.train.training_steps
    assert small.train.learning_rate == 1e-3
    # Only the documented short-run fields differ from the Multi-Bird Easy preset.
    short_run_fields = {"z_pres_anneal_step", "object_size", "prior_z_zoom"}
    restored = dataclasses.replace(small.model, **{name: getattr(full.model, name) for name in short_run_fields})
    assert restored == full.model


def test_config_round_trip_keeps_booleans():
    config = presets.get_preset("multibird-hard-split-spair")
    again = ExperimentConfig.from_json(config.to_json())
    assert again == config
    assert again.model.split_z_l is True


@pytest.mark.parametrize("fields,message", [
    (dict(model="lg_spair", augmentation="high_low_pass"), "outside \\[0, 1\\]"),
    (dict(model="bg_spair", object_size=30), "multiple of 4"),
    (dict(model="spair", latent_size=0), "latent_size"),
    (dict(model="bg_spair", z_bg_beta=-1.0), "z_bg_beta"),
    (dict(model="bg_spair", z_pres_anneal_step=0), "z_pres_anneal_step"),
])
def test_invalid_spair_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields).validate()


def test_image_shape_divisor_follows_decoders():
    # Dense background and local models lift the 8-pixel constraint of the convolutional ones.
    dense = ModelConfig(model="lg_spair", dense_bg=True, dense_local=True, patch_size=4)
    dense.validate_image_shape((36, 36, 3))
    with pytest.raises(ConfigError, match="multiple of 24"):
        override(ExperimentConfig("p", "d", dense, presets.get_preset("multibird-easy-split-spair").train),
                 {"dense_local": False}).model.validate_image_shape((36, 36, 3))
