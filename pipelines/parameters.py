"""Typed pipeline parameters and the `--param NAME=VALUE` values of the command line."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Iterable, Mapping

# Python types a parameter may have -> the word that error messages use for it.
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclasses.dataclass(frozen=True)
class PipelineParameter:
    """One input of a pipeline: its name, Python type, default and help text.

    A parameter whose default is None is required: it has no default, and every run must give
    it a value. (kfp.local 2.17.3 cannot pass an unset optional integer, so optional parameters
    always have a value.)
    """

    name: str
    type: type
    default: Any
    help: str

    def __post_init__(self) -> None:
        if self.type not in TYPE_WORDS:
            raise ValueError(f"parameter {self.name}: type {self.type!r} is not one of bool, int, float, str")

    @property
    def required(self) -> bool:
        return self.default is None

    def signature_parameter(self) -> inspect.Parameter:
        """Return the parameter as it appears in a pipeline function's signature."""
        default = inspect.Parameter.empty if self.required else self.default
        return inspect.Parameter(self.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                 annotation=self.type)

    def parse(self, text: str) -> Any:
        """Convert a command-line value to the parameter's type; raise ValueError naming the parameter."""
        if self.type is str:
            return text
        if self.type is bool:
            if text.lower() not in BOOLEAN_WORDS:
                raise ValueError(f"--param {self.name}={text}: expected {TYPE_WORDS[bool]}")
            return BOOLEAN_WORDS[text.lower()]
        try:
            value = self.type(text)
        except ValueError:
            raise ValueError(f"--param {self.name}={text}: expected {TYPE_WORDS[self.type]}") from None
        if self.type is float and not math.isfinite(value):
            raise ValueError(f"--param {self.name}={text}: expected a finite number")
        return value


def parse_assignments(assignments: Iterable[str], parameters: Iterable[PipelineParameter],
                      pipeline: str) -> dict[str, Any]:
    """Parse `NAME=VALUE` strings against `parameters`; raise ValueError on the first bad one.

    A later assignment of the same name replaces an earlier one, as repeated flags do.
    """
    by_name = {parameter.name: parameter for parameter in parameters}
    values: dict[str, Any] = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ValueError(f"--param {assignment!r}: expected NAME=VALUE")
        if name not in by_name:
            raise ValueError(f"--param {name}: {pipeline} has no such parameter; choose one of "
                             f"{', '.join(sorted(by_name))}")
        values[name] = by_name[name].parse(text)
    return values


def check_required(values: Mapping[str, Any], parameters: Iterable[PipelineParameter], pipeline: str) -> None:
    """Raise ValueError naming the first required parameter that `values` does not set."""
    for parameter in parameters:
        if parameter.required and parameter.name not in values:
            raise ValueError(f"{pipeline} needs --param {parameter.name}=VALUE: {parameter.help}")
