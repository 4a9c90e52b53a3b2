"""The container image that every component runs in, and the factory that binds a function to it.

Components are lightweight Python components: KFP ships each function's source inside the
compiled spec and runs it in the project image, where `preprocessing`, `trainer` and kfp are
installed (docker/Dockerfile). The image is chosen when a pipeline is compiled: the `--image`
flag of `split-pipeline compile`, else the `SPLIT_PIPELINE_IMAGE` environment variable, else
`DEFAULT_IMAGE`.
"""

from __future__ import annotations

import os
from typing import Callable

from kfp import dsl
from kfp.dsl import python_component

DEFAULT_IMAGE = "split-pipeline:0.1.0"
IMAGE_ENV = "SPLIT_PIPELINE_IMAGE"


def resolve_image(image: str | None = None) -> str:
    """Return `image`, else the `SPLIT_PIPELINE_IMAGE` environment variable, else `DEFAULT_IMAGE`."""
    return image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def make_component(function: Callable, image: str | None = None) -> python_component.PythonComponent:
    """Turn `function` into a lightweight component that runs in `image`.

    The image already contains kfp (a project dependency), so the component skips the `pip install
    kfp` preamble, which would also need network access inside the container.
    """
    return dsl.component(function, base_image=resolve_image(image), install_kfp_package=False)
