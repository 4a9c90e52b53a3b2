"""`split-pipeline`: list, compile, run locally or submit the Kubeflow pipeline of a preset.

    split-pipeline list [--preset NAME]
    split-pipeline compile --preset digits-split-gmvae -o split-digits-split-gmvae.yaml
    split-pipeline compile --all -o pipelines/reference
    split-pipeline run --local --preset digits-split-gmvae [--output DIR] [--param NAME=VALUE ...]
    split-pipeline submit --host URL --preset NAME [--experiment E] [--param NAME=VALUE ...]

A bad invocation ends with one line on stderr and a non-zero exit status: 2 for invalid input
(unknown preset, invalid --param), 1 for a failed local task or a host that cannot be reached
or rejects the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable

from pipelines import datasets, experiments, local, parameters, remote
from trainer import config as config_module
from trainer import presets

EXIT_FAILED = 1
EXIT_INVALID = 2
DEFAULT_LOCAL_OUTPUT = "local_outputs"


def _add_build_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default=None,
                        help="container image of every task (default: $SPLIT_PIPELINE_IMAGE, else split-pipeline:0.1.0)")
    parser.add_argument("--accelerator_type", default=experiments.DEFAULT_ACCELERATOR_TYPE,
                        help="default of the accelerator_type parameter: the train task's accelerator"
                             f" (default {experiments.DEFAULT_ACCELERATOR_TYPE}; on Vertex AI, e.g. NVIDIA_TESLA_T4)")
    parser.add_argument("--accelerator_count", type=int, default=experiments.DEFAULT_ACCELERATOR_COUNT,
                        help="default of the accelerator_count parameter: accelerators of the train task"
                             f" (default {experiments.DEFAULT_ACCELERATOR_COUNT})")


def _add_param_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a pipeline parameter (repeatable); `split-pipeline list --preset NAME` lists them")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="split-pipeline",
        description="Compile, run locally or submit the Kubeflow pipeline (data, training, evaluation,"
                    " figures) of an experiment preset.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="list the pipelines, or the parameters of one")
    listing.add_argument("--preset", help="list this preset's pipeline parameters with their defaults")

    compiling = commands.add_parser("compile", help="compile pipelines to KFP v2 YAML")
    selection = compiling.add_mutually_exclusive_group(required=True)
    selection.add_argument("--preset", help=f"one of: {', '.join(sorted(presets.PRESETS))}")
    selection.add_argument("--all", action="store_true", help="every preset, as OUTPUT/split-<preset>.yaml")
    compiling.add_argument("-o", "--output", required=True, help="YAML file (--preset) or folder (--all)")
    _add_build_flags(compiling)

    running = commands.add_parser("run", help="run a pipeline on this machine with kfp.local (no Docker)")
    running.add_argument("--local", action="store_true",
                         help="run with kfp.local's SubprocessRunner in this Python environment (required)")
    running.add_argument("--preset", required=True, help="experiment preset")
    running.add_argument("--output", default=DEFAULT_LOCAL_OUTPUT,
                         help=f"pipeline root that receives every artifact (default: ./{DEFAULT_LOCAL_OUTPUT})")
    running.add_argument("--no_cache", action="store_true",
                         help="prepare the data again even when an earlier run under --output prepared equal data")
    _add_param_flag(running)

    submitting = commands.add_parser("submit", help="submit a run to a Kubeflow Pipelines host")
    submitting.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")
    submitting.add_argument("--preset", required=True, help="experiment preset")
    submitting.add_argument("--experiment", default="Default", help="experiment of the run (created if missing)")
    submitting.add_argument("--run_name", default=None, help="display name of the run (default: the pipeline name)")
    submitting.add_argument("--pipeline_root", default=None,
                            help="where the run's artifacts go, e.g. gs://BUCKET/root (default: the host's)")
    _add_param_flag(submitting)
    _add_build_flags(submitting)
    return parser


def _settings(args: argparse.Namespace) -> experiments.BuildSettings:
    settings = experiments.BuildSettings(image=args.image, accelerator_type=args.accelerator_type,
                                         accelerator_count=args.accelerator_count)
    settings.validate()
    return settings


def _pipeline_arguments(preset: str, assignments: list[str]) -> dict[str, Any]:
    """Parse `--param` values, check the required ones and validate the resulting config."""
    name = experiments.pipeline_name(preset)
    pipeline_parameters = experiments.pipeline_parameters(preset)
    values = parameters.parse_assignments(assignments, pipeline_parameters, name)
    parameters.check_required(values, pipeline_parameters, name)
    config_values = {key: value for key, value in values.items() if key in config_module.OVERRIDABLE_FIELDS}
    config_module.override(presets.get_preset(preset), config_values).validate()
    return values


def _list(args: argparse.Namespace) -> None:
    if args.preset:
        name = experiments.pipeline_name(args.preset)
        print(f"parameters of {name} (--param NAME=VALUE):")
        for parameter in experiments.pipeline_parameters(args.preset):
            default = "required" if parameter.required else f"default {parameter.default!r}"
            print(f"  {parameter.name} ({parameter.type.__name__}, {default}): {parameter.help}")
        return
    for name, preset in experiments.pipeline_names().items():
        config = presets.get_preset(preset)
        job = datasets.DATA_JOBS.get(config.dataset)
        required = [parameter.name for parameter in job.options if parameter.required] if job else []
        needs = f"; needs --param {', '.join(f'{item}=...' for item in required)}" if required else ""
        missing = "" if job else f"; no split-data job for dataset {config.dataset}"
        print(f"{name}: {config.model.model} on {config.dataset}, {config.train.training_steps} steps{needs}{missing}")


def _compile(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if not args.all:
        print(experiments.compile_pipeline(args.preset, args.output, settings))
        return
    os.makedirs(args.output, exist_ok=True)
    for name, preset in experiments.pipeline_names().items():
        print(experiments.compile_pipeline(preset, os.path.join(args.output, f"{name}.yaml"), settings))


def _run(args: argparse.Namespace) -> None:
    if not args.local:
        raise ValueError("run needs --local (kfp.local on this machine); use `split-pipeline submit` for a cluster")
    arguments = _pipeline_arguments(args.preset, args.param)
    result = local.run_local(args.preset, args.output, arguments, enable_caching=not args.no_cache)
    minutes, seconds = divmod(int(result.seconds), 60)
    print(f"\n{result.pipeline} finished in {minutes}m{seconds:02d}s")
    print(f"  run directory  {result.run_dir}")
    print(f"  metrics.json   {result.metrics_json}")
    print(f"  report.html    {result.run_report}")
    print(f"  artifacts      {result.run_folder}")
    print()
    print(result.table)


def _submit(args: argparse.Namespace) -> None:
    arguments = _pipeline_arguments(args.preset, args.param)
    result = remote.submit(args.preset, args.host, arguments, experiment=args.experiment,
                           run_name=args.run_name, pipeline_root=args.pipeline_root, settings=_settings(args))
    print(f"submitted run {result.run_id} of {experiments.pipeline_name(args.preset)}"
          f" to experiment {result.experiment}: {result.run_url}")


_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": _list,
    "compile": _compile,
    "run": _run,
    "submit": _submit,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        _COMMANDS[args.command](args)
    except (local.LocalRunError, remote.SubmitError) as error:
        print(f"split-pipeline {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError) as error:
        print(f"split-pipeline {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INVALID
    return 0


if __name__ == "__main__":
    sys.exit(main())
