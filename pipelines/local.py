"""Run a preset's pipeline on this machine with kfp.local's SubprocessRunner.

Each task runs as a subprocess of the current Python environment, not in the image (no
Docker). Artifacts are folders and files under the pipeline root:
`ROOT/split-<preset>-<timestamp>/<task>/<output>`, so the train task's `run` output is the run
directory. kfp.local ignores the accelerator and CPU/memory requests.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import sys
import time
import warnings
from typing import Any, Mapping

from kfp import local

from pipelines import experiments

# kfp 2.17.3 reports a failed task as "... Inner task failed: NAME." with terminal colours.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_TASK = re.compile(r"Inner task failed: '?([^'.]+)'?\.?$")


def _import_task_dispatcher() -> None:
    """Import kfp.local's task dispatcher so that the repository's docker/ folder cannot break it.

    kfp 2.17.3 imports the Docker SDK when the dispatcher loads and treats an ImportError as "no
    Docker". Without the SDK, and with the repository root on sys.path (`python -m pytest`, or
    `python -m` run from the root), `import docker` finds the docker/ folder as a namespace
    package instead, and the dispatcher fails with AttributeError. Hiding the namespace package
    for that one import gives kfp the ImportError it expects; an installed SDK is left alone.
    """
    if "kfp.local.task_dispatcher" in sys.modules:
        return
    imported = sys.modules.get("docker")
    if imported is not None:
        is_namespace_folder = getattr(imported, "__file__", None) is None
    else:
        spec = importlib.util.find_spec("docker")
        is_namespace_folder = spec is not None and spec.origin is None
    if not is_namespace_folder:
        importlib.import_module("kfp.local.task_dispatcher")
        return

    sys.modules["docker"] = None  # `import docker` now raises ImportError.
    try:
        importlib.import_module("kfp.local.task_dispatcher")
    finally:
        if imported is None:
            del sys.modules["docker"]
        else:
            sys.modules["docker"] = imported


class LocalRunError(RuntimeError):
    """A local pipeline run that failed; `task` names the failed task when kfp reported it."""

    def __init__(self, message: str, task: str | None) -> None:
        super().__init__(message)
        self.task = task


@dataclasses.dataclass(frozen=True)
class LocalRunResult:
    """The output locations of a finished local run, and its headline table."""

    pipeline: str
    pipeline_root: str
    run_dir: str
    metrics_path: str
    report_path: str
    table: str
    seconds: float

    @property
    def metrics_json(self) -> str:
        """The run directory's metrics.json, which evaluation writes beside the checkpoints."""
        return os.path.join(self.run_dir, "metrics.json")

    @property
    def run_folder(self) -> str:
        """The folder of this pipeline run under the pipeline root, one subfolder per task."""
        return os.path.dirname(os.path.dirname(self.run_dir))

    @property
    def run_report(self) -> str:
        """The run directory's figures/report.html, which the HTML artifact copies."""
        return os.path.join(self.run_dir, "figures", "report.html")


def run_local(preset: str, pipeline_root: str, arguments: Mapping[str, Any],
              enable_caching: bool = True) -> LocalRunResult:
    """Run the pipeline of `preset` with `arguments` under `pipeline_root`; raise LocalRunError on failure.

    The pipeline is built without retries, because a local failure repeats on every attempt.
    With `enable_caching`, a prepare-data task whose inputs equal those of an earlier run under
    the same root reuses that run's dataset (kfp.local keeps its cache in ROOT/.kfp_cache).
    """
    _import_task_dispatcher()
    pipeline = experiments.build_pipeline(preset, experiments.BuildSettings(train_retries=0))
    pipeline_root = os.path.abspath(pipeline_root)
    os.makedirs(pipeline_root, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
               raise_on_error=True, enable_caching=enable_caching)

    start = time.perf_counter()
    with warnings.catch_warnings():
        # kfp.local warns that the project image is not a Python image, and that the accelerator
        # and resource requests have no local effect. Both are expected here.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"kfp\.local")
        warnings.filterwarnings("ignore", message=r".*no effect in the current local runner.*")
        try:
            task = pipeline(**arguments)
        except RuntimeError as error:
            message = _ANSI_ESCAPE.sub("", str(error)).strip()
            match = _FAILED_TASK.search(message)
            failed_task = match.group(1) if match else None
            if failed_task:
                message = f"task {failed_task} of {experiments.pipeline_name(preset)} failed; its log is above"
            raise LocalRunError(message, failed_task) from None
    seconds = time.perf_counter() - start

    outputs = task.outputs
    table_path = outputs["table"].path
    with open(table_path) as handle:
        table = handle.read().rstrip("\n")
    return LocalRunResult(
        pipeline=experiments.pipeline_name(preset),
        pipeline_root=pipeline_root,
        run_dir=outputs["run"].path,
        metrics_path=outputs["metrics"].path,
        report_path=outputs["report"].path,
        table=table,
        seconds=seconds,
    )
