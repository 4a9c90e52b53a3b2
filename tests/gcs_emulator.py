"""A pytest fixture that serves a Google Cloud Storage bucket from a local emulator.

`gcs_bucket` starts `gcp-storage-emulator` (a test dependency) in memory on a free port of
127.0.0.1, creates one bucket, points google-cloud-storage at it with `STORAGE_EMULATOR_HOST`
for the duration of the test, and stops the emulator afterwards. Import the fixture into a test
module to use it: `from tests.gcs_emulator import gcs_bucket`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

HOST = "127.0.0.1"
BUCKET = "split-test"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _wait_until_listening(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with status {process.returncode} before listening")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not listen on {HOST}:{port} within {START_TIMEOUT_S} s")


@pytest.fixture
def gcs_bucket(monkeypatch) -> Iterator[str]:
    """Yield `gs://BUCKET` of a fresh in-memory emulator that lives as long as the test."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", HOST, "--port", str(port),
         "--in-memory", "--default-bucket", BUCKET, "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_listening(port, process)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{HOST}:{port}")
        yield f"gs://{BUCKET}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
