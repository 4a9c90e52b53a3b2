"""Tests of the component interfaces: the inputs match the library they wrap."""

from __future__ import annotations

import dataclasses

import pytest

from components import image, stages
from components import train as train_component
from pipelines import datasets
from trainer import config as config_module

KFP_TYPES = {"bool": "Boolean", "int": "Integer", "float": "Float", "str": "String"}


@pytest.fixture(scope="module")
def built() -> stages.Components:
    return stages.build_components("example.com/split-pipeline:test")


def test_train_inputs_are_config_fields(built):
    inputs = built.train.component_spec.inputs
    config_inputs = {name for name in inputs if name not in train_component.NON_CONFIG_INPUTS}

    missing = sorted(set(config_module.OVERRIDABLE_FIELDS) - config_inputs)
    extra = sorted(config_inputs - set(config_module.OVERRIDABLE_FIELDS))
    assert not missing, f"add these config fields to components/train.py: {missing}"
    assert not extra, f"components/train.py has inputs that are no config field: {extra}"


def test_train_input_types_match_config(built):
    inputs = built.train.component_spec.inputs
    for config_class in (config_module.ModelConfig, config_module.TrainConfig):
        for field in dataclasses.fields(config_class):
            type_name = field.type if isinstance(field.type, str) else field.type.__name__
            assert inputs[field.name].type == KFP_TYPES[type_name], field.name


def test_prepare_data_takes_every_data_option(built):
    inputs = built.prepare_data.component_spec.inputs
    options = {option.name for job in datasets.DATA_JOBS.values() for option in job.options}
    common = {parameter.name for parameter in datasets.COMMON_DATA_PARAMETERS}

    assert options | common <= set(inputs)


def test_components_use_the_given_image(built):
    for component in dataclasses.astuple(built):
        container = component.component_spec.implementation.container
        assert container.image == "example.com/split-pipeline:test"
        assert not any("pip install" in part for part in container.command)


def test_resolve_image_prefers_flag_then_env(monkeypatch):
    monkeypatch.delenv(image.IMAGE_ENV, raising=False)
    assert image.resolve_image() == image.DEFAULT_IMAGE

    monkeypatch.setenv(image.IMAGE_ENV, "registry.example.com/split:env")
    assert image.resolve_image() == "registry.example.com/split:env"
    assert image.resolve_image("registry.example.com/split:flag") == "registry.example.com/split:flag"
