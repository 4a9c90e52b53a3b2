"""Command-line entry points: `split-train`, `split-evaluate` and `split-figures`.

Every command ends a bad invocation (unknown preset, invalid flag value, a data folder without
a manifest) with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Callable

from preprocessing.schema import ManifestError
from trainer import config as config_module
from trainer import presets

# Exit statuses beyond argparse's 2 for usage errors.
EXIT_INVALID = 2
EXIT_NON_FINITE_LOSS = 3
# Preempted (SIGTERM) after saving a checkpoint: EX_TEMPFAIL of sysexits.h, "try again later",
# which a restart policy (for example a Kubernetes Job's podFailurePolicy) can match to retry.
EXIT_PREEMPTED = 75

_EXPECTED_ERRORS = (ValueError, FileNotFoundError, config_module.ConfigError, ManifestError)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's own INFO lines (absl) drown the progress line.
    logging.getLogger("absl").setLevel(logging.WARNING)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add one `--NAME` flag per config field (the original hyperparameter names).

    A boolean field is a switch: `--NAME` (or the original single-dash `-NAME`) turns it on and
    `--no-NAME` off.
    """
    for config_class in (config_module.ModelConfig, config_module.TrainConfig):
        group = parser.add_argument_group(f"{config_class.__name__} overrides (default: the preset's value)")
        for field in dataclasses.fields(config_class):
            type_name = field.type if isinstance(field.type, str) else field.type.__name__
            if type_name == "bool":
                group.add_argument(f"-{field.name}", f"--{field.name}", dest=field.name,
                                   action=argparse.BooleanOptionalAction, default=None,
                                   help=f"switch {field.name} on (off: --no-{field.name})")
                continue
            kind = {"int": int, "float": float, "str": str}[type_name]
            choices = None
            if field.name == "model":
                choices = config_module.MODELS
            elif field.name == "augmentation":
                choices = config_module.AUGMENTATIONS
            elif field.name == "cluster_kl":
                choices = config_module.CLUSTER_KL_MODES
            group.add_argument(f"--{field.name}", type=kind, default=None, choices=choices,
                               help=f"{field.name} ({field.type})")


def resolve_config(args: argparse.Namespace) -> config_module.ExperimentConfig:
    """Return the preset named by `--preset` with every given flag applied, validated."""
    config = presets.get_preset(args.preset)
    overrides = {name: getattr(args, name) for name in config_module.OVERRIDABLE_FIELDS
                 if getattr(args, name, None) is not None}
    config = config_module.override(config, overrides)
    config.validate()
    return config


def _run(command: str, body: Callable[[], int | None]) -> int:
    try:
        status = body()
    except FloatingPointError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return EXIT_NON_FINITE_LOSS
    except _EXPECTED_ERRORS as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return EXIT_INVALID
    return status or 0


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="split-train",
        description="Train a SPLIT model from a preset; rerunning with the same --run_dir resumes from "
                    "its newest checkpoint.")
    parser.add_argument("--preset", required=True, help=f"one of: {', '.join(sorted(presets.PRESETS))}")
    parser.add_argument("--data", required=True, help="prepared dataset folder (local or gs://) with dataset.json")
    parser.add_argument("--run_dir", required=True, help="run directory (local or gs://); created if missing")
    _add_config_flags(parser)
    args = parser.parse_args(argv)
    _configure_logging()

    def body() -> int | None:
        from trainer import loop  # TensorFlow loads only once the flags are valid.

        config = resolve_config(args)
        try:
            result = loop.train(config, args.data, args.run_dir)
        except loop.TrainingPreempted as stop:
            print(f"split-train: {stop}", file=sys.stderr)
            return EXIT_PREEMPTED
        print(f"trained {config.preset} to step {result.final_step}; run directory: {result.run_dir}")
        return None

    return _run("split-train", body)


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="split-evaluate",
        description="Evaluate a trained run on its test split; writes RUN_DIR/metrics.json and prints a table.")
    parser.add_argument("--run_dir", required=True, help="run directory written by split-train")
    parser.add_argument("--data", default=None, help="dataset folder (default: the one the run trained on)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--classifier_dir", default=None,
                        help="digit classifier of split-classifier for the disentanglement table"
                             " (default: DATA/classifier; the table is skipped when none exists)")
    args = parser.parse_args(argv)
    _configure_logging()

    def body() -> None:
        from trainer import disentanglement, evaluation

        report = evaluation.evaluate_run(args.run_dir, data_dir=args.data, split=args.split)
        print(report.table)
        print(f"metrics: {report.metrics_path}")
        table = disentanglement.evaluate_if_available(args.run_dir, data_dir=args.data,
                                                      classifier_dir=args.classifier_dir, split=args.split)
        if table is not None:
            print(table.table)

    return _run("split-evaluate", body)


def figures_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="split-figures",
        description="Draw the paper's figures for a trained run into RUN_DIR/figures/ with a report.html.")
    parser.add_argument("--run_dir", required=True, help="run directory written by split-train")
    parser.add_argument("--data", default=None, help="dataset folder (default: the one the run trained on)")
    args = parser.parse_args(argv)
    _configure_logging()

    def body() -> None:
        from trainer import figures

        paths = figures.draw_figures(args.run_dir, data_dir=args.data)
        for path in paths:
            print(path)

    return _run("split-figures", body)
