"""Submit a preset's pipeline to a Kubeflow Pipelines host through `kfp.Client`.

The run carries the compiled spec itself (`create_run_from_pipeline_package`), so nothing has
to be uploaded beforehand. The client makes these requests to the host's v2beta1 API:
GET healthz (inside `kfp.Client()`), GET experiments (by name), POST experiments (when the
experiment does not exist yet) and POST runs.

Credentials come from the environment and are never printed:

- `KF_PIPELINES_TOKEN`: a bearer token (for example `gcloud auth print-access-token`, or a
  Kubeflow service-account token), sent as `Authorization: Bearer ...`;
- `KF_PIPELINES_SA_TOKEN_PATH`: a file holding a token that the cluster refreshes (kfp's
  `ServiceAccountTokenVolumeCredentials`), read before each request;
- otherwise what `kfp.Client` reads itself, such as `KF_PIPELINES_IAP_OAUTH2_CLIENT_ID` for
  hosts behind Identity-Aware Proxy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import tempfile
import warnings
from typing import Any, Iterator, Mapping

import kfp
import kfp_server_api
import urllib3
from kfp.client import set_volume_credentials

from pipelines import experiments

TOKEN_ENV = "KF_PIPELINES_TOKEN"
SERVICE_ACCOUNT_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"

# urllib3 names the connection object in its reasons: "<...HTTPConnection object at 0x7f...>: Failed ...".
_CONNECTION_OBJECT = re.compile(r"<[^>]+ object at 0x[0-9a-f]+>:\s*")


class SubmitError(RuntimeError):
    """A submission that the host rejected or that never reached it."""


@dataclasses.dataclass(frozen=True)
class SubmitResult:
    """The created run."""

    run_id: str
    experiment: str
    run_url: str


def make_client(host: str) -> kfp.Client:
    """Connect to `host` with the credentials of the environment (see the module docstring)."""
    token = os.environ.get(TOKEN_ENV)
    token_path = os.environ.get(SERVICE_ACCOUNT_TOKEN_PATH_ENV)
    with warnings.catch_warnings():
        # kfp warns on every construction that it needs a v2 backend, which this project assumes.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.client")
        if token:
            return kfp.Client(host=host, existing_token=token)
        if token_path:
            return kfp.Client(host=host,
                              credentials=set_volume_credentials.ServiceAccountTokenVolumeCredentials(token_path))
        return kfp.Client(host=host)


def submit(preset: str, host: str, arguments: Mapping[str, Any], experiment: str = "Default",
           run_name: str | None = None, pipeline_root: str | None = None,
           settings: experiments.BuildSettings | None = None) -> SubmitResult:
    """Compile the pipeline of `preset`, create a run of it on `host` and return the run.

    Raises SubmitError with a one-line message when the host cannot be reached or rejects a request.
    """
    name = experiments.pipeline_name(preset)
    with tempfile.TemporaryDirectory() as folder:
        path = experiments.compile_pipeline(preset, os.path.join(folder, f"{name}.yaml"), settings)
        try:
            # kfp prints the experiment and run links, and it logs each connection retry and each
            # failed health check with a traceback. The caller prints one line for the outcome.
            with contextlib.redirect_stdout(io.StringIO()), _library_logging_muted():
                client = make_client(host)
                result = client.create_run_from_pipeline_package(
                    path, arguments=dict(arguments), run_name=run_name or name,
                    experiment_name=experiment, pipeline_root=pipeline_root)
        except urllib3.exceptions.HTTPError as error:
            reason = _CONNECTION_OBJECT.sub("", str(getattr(error, "reason", None) or error))
            raise SubmitError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
        except kfp_server_api.ApiException as error:
            raise SubmitError(f"{host} rejected the request: HTTP {error.status} {error.reason}"
                              f"{_server_message(error.body)}") from None
        except TimeoutError as error:
            raise SubmitError(f"health check of {host} failed: {error}") from None
    return SubmitResult(run_id=result.run_id, experiment=experiment,
                        run_url=f"{host.rstrip('/')}/#/runs/details/{result.run_id}")


@contextlib.contextmanager
def _library_logging_muted() -> Iterator[None]:
    """Drop log records up to ERROR while kfp and urllib3 talk to the host.

    A level on the urllib3 logger would not hold: kfp_server_api resets it to WARNING whenever
    it builds its configuration.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _server_message(body: Any) -> str:
    """Return the error message of a KFP error response as ": message", or "" when it has none."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not body:
        return ""
    try:
        payload = json.loads(body)
    except (TypeError, ValueError):
        payload = {"message": body}
    if not isinstance(payload, dict):
        return ""
    message = payload.get("message") or payload.get("error")
    if not message:
        return ""
    return ": " + " ".join(str(message).split())[:300]
