"""Deterministic TFRecord shards and a manifest written last, as Beam transforms.

Beam's own `WriteToTFRecord` spreads elements over shards starting at a random shard and in
bundle order, so two runs of the same job give different bytes. Every dataset here is a pure
function of (seed, split, index), so we place each record by its index instead: shard
`index % num_shards`, records sorted by index inside the shard. Any runner, any number of
workers, gives byte-identical files. A shard file appears only once it is complete (see
`storage.write_tfrecords`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable

import apache_beam as beam

from preprocessing import schema, storage

_LOGGER = logging.getLogger(__name__)


def validate_num_shards(num_shards: int, flag: str = "--num_shards") -> int:
    # Zero would mean "let the runner decide", which the DirectRunner does badly and which
    # breaks the one-shard-per-key layout above.
    if num_shards < 1:
        raise ValueError(f"{flag} must be at least 1, got {num_shards}")
    return num_shards


class _WriteShard(beam.DoFn):
    def __init__(self, output_dir: str, split: str, num_shards: int, compression: str):
        self._output_dir = output_dir
        self._split = split
        self._num_shards = num_shards
        self._compression = compression

    def process(self, element: tuple[int, Iterable[tuple[int, bytes]]]):
        shard, keyed_records = element
        records = sorted(keyed_records, key=lambda item: item[0])
        name = schema.shard_name(self._split, shard, self._num_shards, self._compression)
        path = schema.join_path(self._output_dir, name)
        storage.write_tfrecords(path, (record for _, record in records), self._compression)
        _LOGGER.info("wrote %s (%d records)", path, len(records))
        yield self._split, name, len(records)


class WriteShards(beam.PTransform):
    """Write `(index, serialized_example)` pairs of one split; output `(split, file name, count)`.

    A shard that receives no record (fewer records than shards) is still written, empty, so the
    file set is the same for every run.
    """

    def __init__(self, output_dir: str, split: str, num_shards: int, compression: str = ""):
        super().__init__()
        self._output_dir = output_dir
        self._split = split
        self._num_shards = validate_num_shards(num_shards)
        self._compression = compression

    def expand(self, records):
        num_shards = self._num_shards
        keyed = records | "KeyByShard" >> beam.Map(lambda item: (item[0] % num_shards, item))
        empty = (records.pipeline
                 | "AllShards" >> beam.Create([(shard, None) for shard in range(num_shards)]))
        return (
            (keyed, empty)
            | "FlattenWithEmpty" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "DropPlaceholders" >> beam.MapTuple(
                lambda shard, items: (shard, [item for item in items if item is not None]))
            | "WriteShard" >> beam.ParDo(
                _WriteShard(self._output_dir, self._split, num_shards, self._compression))
        )


@dataclasses.dataclass(frozen=True)
class ManifestTemplate:
    """Every manifest field but the splits, which come from the shards actually written."""

    name: str
    image_shape: tuple[int, int, int]
    label_meaning: str
    num_classes: int
    seed: int
    source_fingerprint: str
    factors: dict[str, int] = dataclasses.field(default_factory=dict)
    compression: str = ""
    options: dict = dataclasses.field(default_factory=dict)


def _write_manifest(output_dir: str, template: ManifestTemplate,
                    shards: list[tuple[str, str, int]]) -> str:
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, name, count in shards:
        splits.setdefault(split, []).append((name, count))
    manifest = schema.Manifest(
        name=template.name,
        image_shape=tuple(template.image_shape),
        splits={
            split: schema.SplitInfo(sum(count for _, count in files), tuple(sorted(name for name, _ in files)))
            for split, files in splits.items()
        },
        label_meaning=template.label_meaning,
        num_classes=template.num_classes,
        seed=template.seed,
        source_fingerprint=template.source_fingerprint,
        factors=dict(template.factors),
        compression=template.compression,
        options=dict(template.options),
    )
    path = schema.write_manifest(output_dir, manifest)
    _LOGGER.info("wrote %s", path)
    return path


class WriteManifest(beam.PTransform):
    """Write `dataset.json` once every shard of every split has been written.

    The input is the flattened output of every `WriteShards`; `ToList` makes the manifest wait
    for all of them, on any runner.
    """

    def __init__(self, output_dir: str, template: ManifestTemplate):
        super().__init__()
        self._output_dir = output_dir
        self._template = template

    def expand(self, shard_results):
        output_dir, template = self._output_dir, self._template
        return (
            shard_results
            | "CollectShards" >> beam.combiners.ToList()
            | "WriteManifestFile" >> beam.Map(lambda shards: _write_manifest(output_dir, template, shards))
        )
