"""Tests of typed pipeline parameters and `--param NAME=VALUE` parsing."""

from __future__ import annotations

import inspect

import pytest

from pipelines.parameters import PipelineParameter, check_required, parse_assignments

PARAMETERS = [
    PipelineParameter("steps", int, 10, "training steps"),
    PipelineParameter("beta", float, 1.0, "KL weight"),
    PipelineParameter("model", str, "lgvae", "model family"),
    PipelineParameter("dense_bg", bool, False, "dense background"),
    PipelineParameter("source", str, None, "raw data folder"),
]


def test_parse_assignments_converts_types():
    values = parse_assignments(["steps=20", "beta=2.5", "model=gmvae", "dense_bg=true", "source=gs://b/svhn"],
                               PARAMETERS, "split-x")

    assert values == {"steps": 20, "beta": 2.5, "model": "gmvae", "dense_bg": True, "source": "gs://b/svhn"}
    assert isinstance(values["steps"], int)


def test_parse_assignments_keeps_last_value():
    assert parse_assignments(["steps=1", "steps=2"], PARAMETERS, "split-x") == {"steps": 2}


def test_parse_assignments_keeps_equals_in_value():
    assert parse_assignments(["model=a=b"], PARAMETERS, "split-x") == {"model": "a=b"}


@pytest.mark.parametrize("assignment, message", [
    ("steps=1.5", r"--param steps=1.5: expected an integer"),
    ("beta=abc", r"--param beta=abc: expected a number"),
    ("beta=nan", r"--param beta=nan: expected a finite number"),
    ("dense_bg=maybe", r"--param dense_bg=maybe: expected true or false"),
    ("gamma=1", r"--param gamma: split-x has no such parameter; choose one of beta, dense_bg"),
    ("steps", r"expected NAME=VALUE"),
    ("=3", r"expected NAME=VALUE"),
])
def test_parse_assignments_rejects_bad_values(assignment, message):
    with pytest.raises(ValueError, match=message):
        parse_assignments([assignment], PARAMETERS, "split-x")


def test_check_required_names_missing_parameter():
    with pytest.raises(ValueError, match=r"split-x needs --param source=VALUE: raw data folder"):
        check_required({"steps": 3}, PARAMETERS, "split-x")

    check_required({"source": "/data"}, PARAMETERS, "split-x")


def test_signature_parameter_has_default_unless_required():
    assert PARAMETERS[0].signature_parameter().default == 10
    assert PARAMETERS[4].signature_parameter().default is inspect.Parameter.empty
    assert PARAMETERS[4].required
    assert not PARAMETERS[0].required


def test_parameter_rejects_unsupported_type():
    with pytest.raises(ValueError, match="is not one of bool, int, float, str"):
        PipelineParameter("shape", list, [], "a list")
