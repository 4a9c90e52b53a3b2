"""Tests of `split-pipeline list` and of the checks that `run` makes before it starts anything."""

from __future__ import annotations

import pytest

from pipelines import cli, experiments
from trainer import presets


def test_list_names_every_pipeline(capsys):
    status = cli.main(["list"])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert [line.split(":")[0] for line in lines] == sorted(experiments.pipeline_names())
    assert "split-svhn-split-gmvae-clustering: lggmvae on svhn, 3000000 steps; needs --param source=..." in lines
    assert "split-digits-split-gmvae: lggmvae on digits, 1500 steps" in lines


def test_list_preset_shows_parameters(capsys):
    status = cli.main(["list", "--preset", "digits-split-gmvae"])

    out = capsys.readouterr().out
    assert status == 0
    assert "  renders_per_digit (int, default 10): " in out
    assert "  training_steps (int, default 1500): " in out
    assert "  accelerator_count (int, default 1): " in out
    assert len(out.splitlines()) == 1 + len(experiments.pipeline_parameters("digits-split-gmvae"))


@pytest.mark.parametrize("argv, message", [
    (["run", "--preset", "digits-gmvae"], "run needs --local"),
    (["run", "--local", "--preset", "digits"], "--preset 'digits' is not known"),
    (["run", "--local", "--preset", "digits-gmvae", "--param", "batch_size=big"],
     "--param batch_size=big: expected an integer"),
    (["run", "--local", "--preset", "svhn-gmvae-clustering"],
     "split-svhn-gmvae-clustering needs --param source=VALUE"),
    (["list", "--preset", "digits"], "--preset 'digits' is not known"),
])
def test_bad_invocation_is_one_line_error(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    status = cli.main(argv)

    error = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_INVALID
    assert len(error) == 1
    assert error[0].startswith(f"split-pipeline {argv[0]}: error: ")
    assert message in error[0]
    assert list(tmp_path.iterdir()) == []


def test_every_preset_has_a_pipeline():
    assert sorted(experiments.pipeline_names().values()) == sorted(presets.PRESETS)
