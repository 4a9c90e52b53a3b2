"""The four stages bound to one image, as KFP components."""

from __future__ import annotations

import dataclasses

from kfp.dsl import python_component

from components import evaluate, export_figures, image, prepare_data, train


@dataclasses.dataclass(frozen=True)
class Components:
    """The four stages, bound to one image."""

    prepare_data: python_component.PythonComponent
    train: python_component.PythonComponent
    evaluate: python_component.PythonComponent
    export_figures: python_component.PythonComponent


def build_components(image_name: str | None = None) -> Components:
    """Bind every stage to `image_name` (default: `image.resolve_image()`)."""
    return Components(
        prepare_data=image.make_component(prepare_data.prepare_data, image_name),
        train=image.make_component(train.train, image_name),
        evaluate=image.make_component(evaluate.evaluate, image_name),
        export_figures=image.make_component(export_figures.export_figures, image_name),
    )
