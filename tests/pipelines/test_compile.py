"""Tests of the compiled pipeline specs: checked-in references, GPUs, caching, retries, parameters.

When a change to a component, a preset or the builder is intended, regenerate the references:

    env -u SPLIT_PIPELINE_IMAGE split-pipeline compile --all -o pipelines/reference
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib

import pytest
import yaml

from components import image
from pipelines import cli, experiments
from trainer import presets

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[2] / "pipelines" / "reference"
REGENERATE = "env -u SPLIT_PIPELINE_IMAGE split-pipeline compile --all -o pipelines/reference"
# Keys that name the SDK that compiled a spec; they change with every kfp release.
SDK_VERSION_KEYS = ("sdkVersion",)
DEFAULT_SETTINGS = experiments.BuildSettings(image=image.DEFAULT_IMAGE)
GPU_SETTINGS = experiments.BuildSettings(image=image.DEFAULT_IMAGE, accelerator_type="NVIDIA_L4", accelerator_count=4)


def _without_sdk_version(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith(tuple(f"{key}:" for key in SDK_VERSION_KEYS)))


def _compile(preset: str, folder: pathlib.Path,
             settings: experiments.BuildSettings = DEFAULT_SETTINGS) -> dict:
    path = experiments.compile_pipeline(preset, str(folder / f"{preset}.yaml"), settings)
    return yaml.safe_load(pathlib.Path(path).read_text())


@pytest.fixture(scope="module")
def default_specs(tmp_path_factory) -> dict[str, str]:
    """Compile every preset once with the default settings: preset -> YAML text."""
    folder = tmp_path_factory.mktemp("default_specs")
    return {preset: pathlib.Path(experiments.compile_pipeline(
        preset, str(folder / f"{preset}.yaml"), DEFAULT_SETTINGS)).read_text() for preset in presets.PRESETS}


@pytest.fixture(scope="module")
def gpu_specs(tmp_path_factory) -> dict[str, dict]:
    """Compile every preset once with four NVIDIA_L4 accelerators: preset -> spec."""
    folder = tmp_path_factory.mktemp("gpu_specs")
    return {preset: _compile(preset, folder, GPU_SETTINGS) for preset in presets.PRESETS}


def _task_inputs(spec: dict, task: str) -> dict:
    return spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]


def _container(spec: dict, task: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_compiled_spec_matches_reference(preset, default_specs):
    name = experiments.pipeline_name(preset)
    reference = REFERENCE_DIR / f"{name}.yaml"
    assert reference.exists(), f"{reference} is missing; regenerate the references with `{REGENERATE}`"

    compiled = _without_sdk_version(default_specs[preset])
    expected = _without_sdk_version(reference.read_text())

    if yaml.safe_load(compiled) != yaml.safe_load(expected):
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), compiled.splitlines(keepends=True),
                                            fromfile=str(reference), tofile="compiled now"))
        pytest.fail(f"{name} differs from its reference; if intended, run `{REGENERATE}`\n{diff}")


def test_reference_folder_has_no_stale_specs():
    expected = {f"{name}.yaml" for name in experiments.pipeline_names()}
    present = {path.name for path in REFERENCE_DIR.glob("*.yaml")}

    assert present - expected == set(), f"references of no preset: {sorted(present - expected)}"


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_train_task_requests_configured_gpus(preset, gpu_specs):
    spec = gpu_specs[preset]

    accelerator = _container(spec, "train")["resources"]["accelerator"]
    assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"
    assert accelerator["resourceType"] == "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}"
    train_inputs = _task_inputs(spec, "train")
    assert train_inputs["pipelinechannel--accelerator_count"]["componentInputParameter"] == "accelerator_count"
    assert train_inputs["pipelinechannel--accelerator_type"]["componentInputParameter"] == "accelerator_type"
    root_parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert root_parameters["accelerator_count"]["defaultValue"] == 4
    assert root_parameters["accelerator_type"]["defaultValue"] == "NVIDIA_L4"
    for task in ("prepare-data", "evaluate", "export-figures"):
        assert "accelerator" not in _container(spec, task)["resources"], task


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_default_gpu_request_is_one(preset, default_specs):
    spec = yaml.safe_load(default_specs[preset])

    accelerator = _container(spec, "train")["resources"]["accelerator"]
    assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}"
    root_parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert root_parameters["accelerator_count"]["defaultValue"] == experiments.DEFAULT_ACCELERATOR_COUNT == 1
    assert root_parameters["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"


def test_caching_retries_and_requests(tmp_path):
    spec = _compile("digits-split-gmvae", tmp_path)
    tasks = spec["root"]["dag"]["tasks"]

    assert tasks["prepare-data"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train"]["cachingOptions"] == {}
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == experiments.DEFAULT_TRAIN_RETRIES
    assert tasks["train"]["retryPolicy"]["backoffDuration"] == experiments.TRAIN_RETRY_BACKOFF
    for task, (cpu, memory) in experiments.RESOURCE_REQUESTS.items():
        resources = _container(spec, task)["resources"]
        assert resources["resourceCpuRequest"] == cpu, task
        assert resources["resourceMemoryRequest"] == memory, task


def test_task_chain_passes_artifacts(tmp_path):
    tasks = _compile("digits-split-gmvae", tmp_path)["root"]["dag"]["tasks"]

    def producer(task: str, artifact: str) -> tuple[str, str]:
        source = tasks[task]["inputs"]["artifacts"][artifact]["taskOutputArtifact"]
        return source["producerTask"], source["outputArtifactKey"]

    assert producer("train", "dataset") == ("prepare-data", "dataset")
    assert producer("evaluate", "run") == ("train", "run")
    assert producer("export-figures", "run") == ("train", "run")
    assert producer("export-figures", "metrics") == ("evaluate", "metrics")


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_config_fields_default_to_preset_values(preset, default_specs):
    config = presets.get_preset(preset)
    spec = yaml.safe_load(default_specs[preset])
    root_parameters = spec["root"]["inputDefinitions"]["parameters"]
    train_inputs = _task_inputs(spec, "train")

    for part in (config.model, config.train):
        for field in dataclasses.fields(part):
            assert root_parameters[field.name]["defaultValue"] == getattr(part, field.name), field.name
            assert train_inputs[field.name] == {"componentInputParameter": field.name}, field.name


def test_raw_data_location_is_required(tmp_path):
    root_parameters = _compile("svhn-split-gmvae-clustering", tmp_path)["root"]["inputDefinitions"]["parameters"]

    assert "defaultValue" not in root_parameters["source"]
    assert not root_parameters["source"].get("isOptional", False)


def test_image_flag_reaches_every_task(tmp_path):
    settings = experiments.BuildSettings(image="registry.example.com/split:1")
    containers = _compile("digits-gmvae", tmp_path, settings)["deploymentSpec"]["executors"]

    assert {executor["container"]["image"] for executor in containers.values()} == {"registry.example.com/split:1"}


def test_compile_command_writes_every_preset(tmp_path, capsys):
    status = cli.main(["compile", "--all", "-o", str(tmp_path), "--image", image.DEFAULT_IMAGE])

    assert status == 0
    assert {path.name for path in tmp_path.glob("*.yaml")} == {f"{name}.yaml" for name in experiments.pipeline_names()}
    assert len(capsys.readouterr().out.splitlines()) == len(presets.PRESETS)


@pytest.mark.parametrize("argv, message", [
    (["compile", "--preset", "mnist-vae", "-o", "x.yaml"], "--preset 'mnist-vae' is not known"),
    (["compile", "--preset", "digits-gmvae", "-o", "x.yaml", "--accelerator_count", "-1"],
     "--accelerator_count must be at least 0"),
])
def test_compile_command_rejects_bad_input(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    status = cli.main(argv)

    error = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_INVALID
    assert len(error) == 1
    assert error[0].startswith("split-pipeline compile: error: ")
    assert message in error[0]
