"""One Kubeflow pipeline per experiment preset: prepare-data -> train -> evaluate -> export-figures.

Every preset in `trainer.presets.PRESETS` gets a pipeline named `split-<preset>`. Its parameters
are the `split-data` options of the preset's dataset (`pipelines.datasets`), every config field
of `trainer.config` (the train component's inputs) with the preset's value as default, and the
train task's accelerator type and count. The pipeline's outputs are the run directory, the
metrics, the confusion matrix, the Markdown table and the HTML report.

    from pipelines import experiments
    experiments.compile_pipeline("digits-split-gmvae", "split-digits-split-gmvae.yaml")
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from typing import Any, NamedTuple

from kfp import compiler, dsl
from kfp.dsl import HTML, ClassificationMetrics, Markdown, Metrics, Model, graph_component

from components import stages
from components import train as train_component
from pipelines import datasets
from pipelines.parameters import PipelineParameter
from trainer import config as config_module
from trainer import presets

_LOGGER = logging.getLogger(__name__)

PIPELINE_PREFIX = "split-"

# Kubernetes resource name of NVIDIA GPUs on Kubeflow; Vertex AI names machine accelerators
# such as NVIDIA_TESLA_T4 or NVIDIA_L4 instead.
DEFAULT_ACCELERATOR_TYPE = "nvidia.com/gpu"
DEFAULT_ACCELERATOR_COUNT = 1
DEFAULT_TRAIN_RETRIES = 2
# The first retry waits this long and each further one twice as long (KFP's default factor).
TRAIN_RETRY_BACKOFF = "60s"

# CPU and memory requests per task: (cpu, memory). Estimates, not measurements, sized for SVHN's
# 604,388 training images; evaluation's k-means on 20,000 pixel vectors of 3,072 floats needs
# about 0.5 GB.
RESOURCE_REQUESTS = {
    "prepare-data": ("2", "8G"),
    "train": ("4", "16G"),
    "evaluate": ("2", "8G"),
    "export-figures": ("1", "4G"),
}


# The artifacts that a pipeline run returns. The functional form keeps the field types live
# objects, which KFP needs and `from __future__ import annotations` would turn into strings.
PipelineOutputs = NamedTuple("PipelineOutputs", [
    ("run", Model),
    ("metrics", Metrics),
    ("confusion_matrix", ClassificationMetrics),
    ("table", Markdown),
    ("report", HTML),
])


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """Compile-time choices: the image, the accelerator defaults and the train task's retries."""

    image: str | None = None
    accelerator_type: str = DEFAULT_ACCELERATOR_TYPE
    accelerator_count: int = DEFAULT_ACCELERATOR_COUNT
    train_retries: int = DEFAULT_TRAIN_RETRIES

    def validate(self) -> None:
        if self.accelerator_count < 0:
            raise ValueError(f"--accelerator_count must be at least 0, got {self.accelerator_count}")
        if not self.accelerator_type:
            raise ValueError("--accelerator_type must not be empty")
        if self.train_retries < 0:
            raise ValueError(f"train retries must be at least 0, got {self.train_retries}")


def pipeline_name(preset: str) -> str:
    return PIPELINE_PREFIX + preset


def pipeline_names() -> dict[str, str]:
    """Return pipeline name -> preset for every preset."""
    return {pipeline_name(preset): preset for preset in sorted(presets.PRESETS)}


def config_parameters(config: config_module.ExperimentConfig) -> list[PipelineParameter]:
    """Return one parameter per config field that the train component takes, typed as the field
    and defaulting to the preset's value."""
    inputs = set(train_config_inputs())
    parameters = []
    for part_name in ("model", "train"):
        part = getattr(config, part_name)
        for field in dataclasses.fields(part):
            if field.name not in inputs:
                continue
            type_name = field.type if isinstance(field.type, str) else field.type.__name__
            field_type = {"bool": bool, "int": int, "float": float, "str": str}[type_name]
            parameters.append(PipelineParameter(
                field.name, field_type, getattr(part, field.name),
                f"{part_name} config field {field.name} (default: the preset's value)"))
    return parameters


def accelerator_parameters(settings: BuildSettings) -> list[PipelineParameter]:
    return [
        PipelineParameter("accelerator_type", str, settings.accelerator_type,
                          "accelerator of the train task (Kubeflow: a resource name such as nvidia.com/gpu;"
                          " Vertex AI: a type such as NVIDIA_TESLA_T4)"),
        PipelineParameter("accelerator_count", int, settings.accelerator_count,
                          "accelerators of that type for the train task"),
    ]


def pipeline_parameters(preset: str, settings: BuildSettings | None = None) -> list[PipelineParameter]:
    """Return every parameter of the preset's pipeline: data, config fields, accelerators.

    Required parameters come first, as a Python signature needs them before those with defaults.
    """
    settings = settings or BuildSettings()
    config = presets.get_preset(preset)
    job = datasets.data_job(config.dataset)
    parameters = [*datasets.COMMON_DATA_PARAMETERS, *job.options, *config_parameters(config),
                  *accelerator_parameters(settings)]
    names = [parameter.name for parameter in parameters]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"pipeline {pipeline_name(preset)} would have two parameters named {', '.join(duplicates)}")
    return sorted(parameters, key=lambda parameter: not parameter.required)


def _docstring(config: config_module.ExperimentConfig, parameters: list[PipelineParameter]) -> str:
    """Write the pipeline's docstring; KFP turns its Args section into parameter descriptions."""
    lines = [_description(config), "", "Args:"]
    lines += [f"    {parameter.name}: {parameter.help}" for parameter in parameters]
    return "\n".join(lines)


def _description(config: config_module.ExperimentConfig) -> str:
    return (f"{config.description}. Preset {config.preset}: {config.model.model} on {config.dataset},"
            f" {config.train.training_steps} steps by default.")


@functools.cache
def train_config_inputs() -> tuple[str, ...]:
    """Return the config fields that the train component takes.

    Raises ValueError when the component takes an input that is not a config field. A config
    field that the component lacks is logged and stays at the preset's value, so that a new
    field does not stop every pipeline from compiling. tests/components checks that both agree.
    """
    inputs = [name for name in inspect.signature(train_component.train).parameters
              if name not in train_component.NON_CONFIG_INPUTS]
    unknown = sorted(set(inputs) - set(config_module.OVERRIDABLE_FIELDS))
    if unknown:
        raise ValueError(f"the train component takes {', '.join(unknown)}, which are not config fields;"
                         " remove or rename them in components/train.py")
    missing = sorted(set(config_module.OVERRIDABLE_FIELDS) - set(inputs))
    if missing:
        _LOGGER.warning("config fields %s are missing from the inputs of components/train.py; pipelines keep the preset's"
                        " values for them", ", ".join(missing))
    return tuple(inputs)


def build_pipeline(preset: str, settings: BuildSettings | None = None) -> graph_component.GraphComponent:
    """Build the pipeline of `preset`: four tasks, one parameter per data option and config field."""
    settings = settings or BuildSettings()
    settings.validate()
    config = presets.get_preset(preset)
    job = datasets.data_job(config.dataset)
    parameters = pipeline_parameters(preset, settings)
    stage_components = stages.build_components(settings.image)

    config_field_names = train_config_inputs()
    data_names = [parameter.name for parameter in (*datasets.COMMON_DATA_PARAMETERS, *job.options)]

    def pipeline_function(*values: Any) -> PipelineOutputs:
        # KFP calls the function positionally, in the order of the signature set below.
        arguments = dict(zip([parameter.name for parameter in parameters], values))

        data_task = stage_components.prepare_data(
            split_data_name=job.split_data_name,
            extra_arguments=list(job.extra_arguments),
            **{name: arguments[name] for name in data_names})
        data_task.set_caching_options(enable_caching=True)
        dataset = data_task.outputs["dataset"]

        train_task = stage_components.train(preset=preset, dataset=dataset,
                                  **{name: arguments[name] for name in config_field_names})
        # Training is not cached: a rerun with equal inputs is a request for a new run.
        train_task.set_caching_options(enable_caching=False)
        train_task.set_accelerator_type(arguments["accelerator_type"])
        train_task.set_accelerator_limit(arguments["accelerator_count"])
        # NOTE: a retry resumes from the newest checkpoint only where the run directory outlives
        # the failed attempt, as on Vertex AI's /gcs/ mount. Kubeflow uploads outputs after a
        # success, so a retried attempt there trains from step 0. Neither was run on a cluster.
        if settings.train_retries:
            train_task.set_retry(num_retries=settings.train_retries, backoff_duration=TRAIN_RETRY_BACKOFF)
        run = train_task.outputs["run"]

        evaluate_task = stage_components.evaluate(run=run, dataset=dataset)
        figures_task = stage_components.export_figures(run=run, dataset=dataset, metrics=evaluate_task.outputs["metrics"])

        for task in (data_task, train_task, evaluate_task, figures_task):
            cpu, memory = RESOURCE_REQUESTS[task.name]
            task.set_cpu_request(cpu).set_memory_request(memory)

        return PipelineOutputs(
            run=run,
            metrics=evaluate_task.outputs["metrics"],
            confusion_matrix=evaluate_task.outputs["confusion_matrix"],
            table=evaluate_task.outputs["table"],
            report=figures_task.outputs["report"],
        )

    pipeline_function.__signature__ = inspect.Signature(
        [parameter.signature_parameter() for parameter in parameters], return_annotation=PipelineOutputs)
    pipeline_function.__doc__ = _docstring(config, parameters)
    pipeline_function.__name__ = pipeline_name(preset).replace("-", "_")
    return dsl.pipeline(pipeline_function, name=pipeline_name(preset), description=_description(config))


def compile_pipeline(preset: str, path: str, settings: BuildSettings | None = None) -> str:
    """Compile the pipeline of `preset` to the YAML file `path` and return the path."""
    compiler.Compiler().compile(build_pipeline(preset, settings), package_path=path)
    return path
