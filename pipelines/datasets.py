"""The `split-data` job that prepares the dataset of each preset.

`DATA_JOBS` maps a preset's `config.dataset` to the `split-data` dataset name, its fixed flags
and the options that its pipelines expose as parameters. Each option's name is both the
`split-data` flag and an input of the prepare-data component. Datasets made from raw files get
a required `source` parameter, the folder (local or gs://) that contains them, and Multi-Bird a
required `sprites` parameter, a folder prepared by `split-data cub-sprites`.
"""

from __future__ import annotations

import dataclasses

from pipelines.parameters import PipelineParameter

# The flags that `split-data` adds to every dataset, with its defaults. `data_seed` is
# `--seed`, renamed so that it differs from the training seed.
COMMON_DATA_PARAMETERS = (
    PipelineParameter("data_seed", int, 0, "split-data --seed: the same seed gives the same shards"),
    PipelineParameter("num_shards", int, 4, "split-data --num_shards: TFRecord shards per split"),
    PipelineParameter("compression", str, "none", "split-data --compression: none or gzip"),
    PipelineParameter("beam_options", str, "",
                      "Beam pipeline options for split-data, as a shell command line"
                      " (for example --direct_num_workers 4 --direct_running_mode multi_processing)"),
)


@dataclasses.dataclass(frozen=True)
class DataJob:
    """The `split-data` job of one dataset: its name, its options as parameters, its fixed flags."""

    split_data_name: str
    options: tuple[PipelineParameter, ...] = ()
    extra_arguments: tuple[str, ...] = ()


# The value of an integer option that leaves its flag out, so that split-data's default applies;
# the prepare-data component skips negative integers and empty strings.
NOT_PASSED = -1


def _source(help_text: str) -> PipelineParameter:
    return PipelineParameter("source", str, None, help_text)


def _scene_sizes(train: int, test: int, unseen: int) -> tuple[PipelineParameter, ...]:
    defaults = {"train": train, "test": test, "unseen": unseen}
    return tuple(PipelineParameter(f"{split}_size", int, size, f"split-data --{split}_size: scenes in the {split} split")
                 for split, size in defaults.items())


def _multibird(variant: str) -> DataJob:
    sprites = PipelineParameter("sprites", str, None,
                                "folder (local or gs://) prepared by split-data cub-sprites from CUB-200-2011")
    return DataJob("multibird", options=(sprites, *_scene_sizes(100_000, 1_000, 1_000)),
                   extra_arguments=("--variant", variant))


def _multidigit(variant: str) -> DataJob:
    return DataJob("multidigit", options=_scene_sizes(10_000, 1_000, 1_000), extra_arguments=("--variant", variant))


DATA_JOBS: dict[str, DataJob] = {
    "digits": DataJob("digits", options=(
        PipelineParameter("renders_per_digit", int, 10, "split-data digits --renders_per_digit: renders of each source digit"),
        PipelineParameter("max_source_digits", int, NOT_PASSED,
                          "split-data digits --max_source_digits: use only the first N of the 1,797 source"
                          f" digits (at least 50); all when {NOT_PASSED}"),
    )),
    "svhn": DataJob("svhn", options=(
        _source("folder (local or gs://) of the official SVHN train_32x32.mat, extra_32x32.mat and test_32x32.mat"),
    )),
    "celeba": DataJob("celeba", options=(
        _source("img_align_celeba folder or its .zip (the aligned 178x218 CelebA JPEGs), local or gs://"),
    )),
    "multibird-easy": _multibird("easy"),
    "multibird-hard": _multibird("hard"),
    "multidigit-easy": _multidigit("easy"),
    "multidigit-hard": _multidigit("hard"),
}


def data_job(dataset: str) -> DataJob:
    """Return the job for `dataset`; raise ValueError naming the table to extend when there is none."""
    if dataset not in DATA_JOBS:
        raise ValueError(f"no split-data job is known for dataset {dataset!r}; add one to DATA_JOBS in"
                         f" pipelines/datasets.py (known: {', '.join(sorted(DATA_JOBS))})")
    return DATA_JOBS[dataset]
