"""Tests that the table of split-data jobs agrees with `split-data` itself and covers every preset."""

from __future__ import annotations

import importlib

import pytest

from pipelines import datasets
from preprocessing import cli as data_cli
from trainer import presets

SAMPLE_VALUES = {int: ("7", 7), str: ("gs://bucket/folder", "gs://bucket/folder")}


def _installed(job: datasets.DataJob) -> bool:
    module_name = data_cli.DATASETS[job.split_data_name]
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return False
    return True


def _parse(job: datasets.DataJob, option_arguments: list[str]):
    arguments = [job.split_data_name, "--output", "/tmp/unused", *job.extra_arguments, *option_arguments]
    return data_cli.build_parser().parse_known_args(arguments)


@pytest.fixture(params=sorted(datasets.DATA_JOBS))
def job(request) -> datasets.DataJob:
    job = datasets.DATA_JOBS[request.param]
    if job.split_data_name not in data_cli.DATASETS:
        pytest.fail(f"split-data has no dataset {job.split_data_name!r}")
    if not _installed(job):
        pytest.skip(f"the split-data module of {job.split_data_name} is not installed")
    return job


def test_every_preset_has_a_data_job():
    missing = sorted({config.dataset for config in presets.PRESETS.values()} - set(datasets.DATA_JOBS))

    assert not missing, f"add split-data jobs for these datasets to pipelines/datasets.py: {missing}"


def test_data_job_options_are_split_data_flags(job):
    option_arguments = []
    for option in job.options:
        option_arguments += [f"--{option.name}", SAMPLE_VALUES[option.type][0]]

    args, unknown = _parse(job, option_arguments)

    assert not unknown, f"split-data {job.split_data_name} has no flags {unknown}"
    for option in job.options:
        assert getattr(args, option.name) == SAMPLE_VALUES[option.type][1], option.name


def test_data_job_defaults_match_split_data(job):
    required_arguments = []
    for option in job.options:
        if option.required:
            required_arguments += [f"--{option.name}", SAMPLE_VALUES[option.type][0]]

    args, unknown = _parse(job, required_arguments)

    assert not unknown
    for option in job.options:
        if not option.required:
            expected = None if option.default == datasets.NOT_PASSED else option.default
            assert getattr(args, option.name) == expected, option.name
    common = {parameter.name: parameter.default for parameter in datasets.COMMON_DATA_PARAMETERS}
    assert args.seed == common["data_seed"]
    assert args.num_shards == common["num_shards"]
    assert args.compression == common["compression"]


def test_data_job_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="no split-data job is known for dataset 'mnist'"):
        datasets.data_job("mnist")
