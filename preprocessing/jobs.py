"""Helpers that every `split-data` job shares: flags, the runner default, the output folder."""

from __future__ import annotations

import argparse
import logging
from typing import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from preprocessing import schema, sink, storage

_LOGGER = logging.getLogger(__name__)

# `--compression` values of the command line -> TFRecord compression types.
COMPRESSION_TYPES = {"none": "", "gzip": "GZIP"}


def compression_type(args: argparse.Namespace) -> str:
    if args.compression not in COMPRESSION_TYPES:
        raise ValueError(f"--compression must be one of {', '.join(COMPRESSION_TYPES)}, got {args.compression!r}")
    return COMPRESSION_TYPES[args.compression]


def validate_common(args: argparse.Namespace) -> None:
    """Check the flags that `split-data` adds to every dataset."""
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    sink.validate_num_shards(args.num_shards)
    compression_type(args)


def index_ranges(total: int, range_size: int) -> list[tuple[int, int]]:
    """Cut `[0, total)` into `[start, stop)` ranges of at most `range_size` indices."""
    if range_size < 1:
        raise ValueError(f"range_size must be at least 1, got {range_size}")
    return [(start, min(start + range_size, total)) for start in range(0, total, range_size)]


def default_runner(options: PipelineOptions) -> str | None:
    """Return the FnApiRunner unless the options name a runner.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads its binary from
    GitHub, and falls back to the FnApiRunner when that fails. Naming the FnApiRunner skips the
    download, and the FnApiRunner honours --direct_num_workers and --direct_running_mode.
    """
    return None if options.view_as(StandardOptions).runner else "FnApiRunner"


def prepare_output(output_dir: str) -> None:
    """Create the output folder and delete a manifest left by an earlier run.

    The manifest is written last, so while the new job runs a reader finds no manifest rather
    than an old one that lists shards being overwritten.
    """
    storage.make_dirs(output_dir)
    path = schema.manifest_path(output_dir)
    if storage.remove(path):
        _LOGGER.info("removed %s of an earlier run; it is written again once every shard is", path)


def run_pipeline(output_dir: str, beam_argv: list[str],
                 build: Callable[[beam.Pipeline], None]) -> beam.runners.runner.PipelineResult:
    """Prepare `output_dir`, build the pipeline with `build`, run it and wait for it to finish.

    `beam_argv` goes to `PipelineOptions` untouched. Returns the finished result, whose
    `metrics()` contain the job's counters of skipped records.
    """
    prepare_output(output_dir)
    options = PipelineOptions(beam_argv)
    pipeline = beam.Pipeline(runner=default_runner(options), options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def title(split: str) -> str:
    """Return the CamelCase form of a split name for step labels: `unseen` -> `Unseen`."""
    return "".join(part.capitalize() for part in split.replace("-", "_").split("_"))
