"""KFP v2 components: one thin typed wrapper per stage around the library.

| component | inputs | outputs |
|---|---|---|
| `prepare-data` | split-data flags | `dataset` (Dataset, metadata = manifest) |
| `train` | `dataset`, preset, config fields | `run` (Model: the run directory) |
| `evaluate` | `run`, `dataset` | `metrics` (Metrics), `confusion_matrix` (ClassificationMetrics), `table` (Markdown) |
| `export-figures` | `run`, `dataset`, `metrics` | `report` (HTML), `figures` (Artifact: a folder of PNGs) |

Each module contains the plain function, and `components.stages.build_components` binds them to
an image. This file imports nothing: component bodies import `components.convert` inside the
KFP executor, where importing the kfp SDK again would be circular.
"""
