"""Tests of `split-pipeline submit` against a recording HTTP server on 127.0.0.1.

The server responds to the v2beta1 requests that kfp.Client 2.17.3 makes for a run from a compiled
package: GET healthz, GET experiments (by name), POST experiments, POST runs.
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import urllib.parse

import pytest
import yaml

from components import image
from pipelines import experiments

TOKEN = "test-token-5d41402abc4b2a76"
PRESET = "digits-split-gmvae"
EXPERIMENT_ID = "experiment-0001"
RUN_ID = "run-0001"


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Respond to the Kubeflow Pipelines API requests minimally and record every request."""

    requests: list[dict] = []
    reject_runs = False

    def log_message(self, format, *args):  # noqa: A002 - the signature of BaseHTTPRequestHandler.
        del format, args  # Quiet: the test reads `requests` instead.

    def _record(self, body: dict | None) -> str:
        url = urllib.parse.urlsplit(self.path)
        self.requests.append({"method": self.command, "path": url.path,
                              "query": urllib.parse.parse_qs(url.query), "body": body,
                              "authorization": self.headers.get("Authorization")})
        return url.path

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - the name http.server dispatches to.
        path = self._record(None)
        if path == "/apis/v2beta1/healthz":
            self._reply(200, {"multi_user": False})
        elif path == "/apis/v2beta1/experiments":
            self._reply(200, {})  # No experiment of that name yet.
        else:
            self._reply(404, {"error": "not found", "message": f"no route {path}"})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self._record(body)
        if path == "/apis/v2beta1/experiments":
            self._reply(200, {"experiment_id": EXPERIMENT_ID, "display_name": body.get("display_name")})
        elif path == "/apis/v2beta1/runs" and self.reject_runs:
            self._reply(400, {"error": "invalid spec", "message": "pipeline spec is invalid:\nunknown field"})
        elif path == "/apis/v2beta1/runs":
            self._reply(200, {"run_id": RUN_ID, "display_name": body.get("display_name"),
                              "experiment_id": body.get("experiment_id")})
        else:
            self._reply(404, {"error": "not found", "message": f"no route {path}"})


@pytest.fixture
def server():
    RecordingHandler.requests = []
    RecordingHandler.reject_runs = False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _submit(host: str, *arguments: str, home: pathlib.Path) -> subprocess.CompletedProcess:
    """Run `split-pipeline submit` in a fresh process, so that its output is exactly a user's output."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("KF_PIPELINES_SA_TOKEN_PATH", "SPLIT_PIPELINE_IMAGE", "KF_PIPELINES_ENDPOINT")}
    # kfp.Client reads and may write ~/.config/kfp/context.json; a test home keeps the user's apart.
    env.update(HOME=str(home), KF_PIPELINES_TOKEN=TOKEN)
    command = [sys.executable, "-m", "pipelines.cli", "submit", "--host", host, "--preset", PRESET, *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_submit_creates_run_with_spec_and_parameters(server, tmp_path):
    host = f"http://127.0.0.1:{server.server_address[1]}"

    result = _submit(host, "--experiment", "digits", "--param", "training_steps=30", "--param", "beta=2.5",
                     "--param", "renders_per_digit=2", "--pipeline_root", "gs://bucket/root", home=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"submitted run {RUN_ID} of split-{PRESET} to experiment digits:"
                                     f" {host}/#/runs/details/{RUN_ID}")
    calls = [(request["method"], request["path"]) for request in RecordingHandler.requests]
    assert calls == [("GET", "/apis/v2beta1/healthz"), ("GET", "/apis/v2beta1/experiments"),
                     ("POST", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/runs")]
    assert all(request["authorization"] == f"Bearer {TOKEN}" for request in RecordingHandler.requests)

    experiment_filter = json.loads(RecordingHandler.requests[1]["query"]["filter"][0])
    assert experiment_filter["predicates"][0]["stringValue"] == "digits"
    assert RecordingHandler.requests[2]["body"]["display_name"] == "digits"

    run = RecordingHandler.requests[3]["body"]
    assert run["experiment_id"] == EXPERIMENT_ID
    assert run["display_name"] == f"split-{PRESET}"
    assert run["runtime_config"] == {"parameters": {"training_steps": 30, "beta": 2.5, "renders_per_digit": 2},
                                     "pipeline_root": "gs://bucket/root"}
    expected_path = experiments.compile_pipeline(PRESET, str(tmp_path / "expected.yaml"),
                                                 experiments.BuildSettings(image=image.DEFAULT_IMAGE))
    expected_spec = yaml.safe_load(pathlib.Path(expected_path).read_text())
    assert run["pipeline_spec"] == json.loads(json.dumps(expected_spec))


def test_submit_never_prints_token(server, tmp_path):
    host = f"http://127.0.0.1:{server.server_address[1]}"

    result = _submit(host, home=tmp_path)

    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout
    assert TOKEN not in result.stderr


def test_submit_to_closed_port_is_one_line_error(tmp_path):
    host = f"http://127.0.0.1:{_closed_port()}"

    result = _submit(host, home=tmp_path)

    error_lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith(f"split-pipeline submit: error: cannot reach Kubeflow Pipelines at {host}: ")
    assert "Connection refused" in error_lines[0]
    assert result.stdout == ""


def test_submit_rejected_run_is_one_line_error(server, tmp_path):
    RecordingHandler.reject_runs = True
    host = f"http://127.0.0.1:{server.server_address[1]}"

    result = _submit(host, home=tmp_path)

    error_lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert error_lines == [f"split-pipeline submit: error: {host} rejected the request: HTTP 400 Bad Request:"
                           " pipeline spec is invalid: unknown field"]


def test_submit_rejects_unknown_parameter_before_connecting(server, tmp_path):
    host = f"http://127.0.0.1:{server.server_address[1]}"

    result = _submit(host, "--param", "gamma=1", home=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith(f"split-pipeline submit: error: --param gamma: split-{PRESET} has no such parameter")
    assert RecordingHandler.requests == []
