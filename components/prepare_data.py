"""The prepare-data component: `split-data` into a Dataset artifact.

This module has no `from __future__ import annotations`: KFP reads the annotations of the
component function as live types, and the function's source runs on its own inside the image.
"""

from typing import List

from kfp.dsl import Dataset, Output


def prepare_data(
    split_data_name: str,
    extra_arguments: List[str],
    data_seed: int,
    num_shards: int,
    compression: str,
    beam_options: str,
    dataset: Output[Dataset],
    source: str = "",
    renders_per_digit: int = -1,
    max_source_digits: int = -1,
    sprites: str = "",
    train_size: int = -1,
    test_size: int = -1,
    unseen_size: int = -1,
):
    """Run `split-data SPLIT_DATA_NAME --output DATASET ...` and record the manifest.

    `extra_arguments` are fixed flags of the dataset, and `beam_options` are Beam pipeline
    options written as a shell command line. Every input from `source` on is the `split-data`
    flag of the same name. A negative integer or an empty string leaves the flag out, so that
    split-data's default applies; None cannot mark that, because kfp.local 2.17.3 fails on an
    unset optional integer. The folder at `dataset.path` receives the shards and
    `dataset.json`, and the artifact's metadata contains the manifest's fields.
    """
    import shlex

    from components import convert
    from preprocessing import cli, schema

    arguments = [split_data_name, "--output", dataset.path, "--seed", str(data_seed),
                 "--num_shards", str(num_shards), "--compression", compression, *extra_arguments]
    options = {"source": source, "renders_per_digit": renders_per_digit, "max_source_digits": max_source_digits,
               "sprites": sprites, "train_size": train_size, "test_size": test_size, "unseen_size": unseen_size}
    for flag, value in options.items():
        if value != "" and not (isinstance(value, int) and value < 0):
            arguments += [f"--{flag}", str(value)]
    arguments += shlex.split(beam_options)

    status = cli.main(arguments)
    if status != 0:
        raise RuntimeError(f"split-data {shlex.join(arguments)} failed with exit status {status}")
    dataset.metadata.update(convert.manifest_metadata(schema.read_manifest(dataset.path)))
