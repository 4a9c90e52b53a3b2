"""Shared fixtures: small prepared datasets made by the real Beam jobs."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory) -> pathlib.Path:
    """A small digits dataset (about 320 train and 80 test images) written by `split-data digits`."""
    from preprocessing import cli

    output = tmp_path_factory.mktemp("tiny_digits")
    status = cli.main(["digits", "--output", str(output), "--renders_per_digit", "1",
                       "--max_source_digits", "400", "--num_shards", "2", "--seed", "5"])
    assert status == 0
    return output
