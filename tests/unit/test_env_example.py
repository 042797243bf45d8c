""".env.example reads the same in bash, `docker run --env-file` and python-dotenv.

Each reader has its own rules: bash executes the file (`set -a; . ./.env`), docker takes
every `NAME=value` line literally (quotes and `# ...` included), dotenv strips quotes and
inline comments. The file keeps to what all three agree on; these tests read it with each.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from cache.settings import Settings
from workers.dev.servers import PROJECT_ROOT

ENV_EXAMPLE = PROJECT_ROOT / ".env.example"


def docker_env_file(path: Path) -> dict[str, str]:
    """The variables `docker run --env-file` sets, by docker's documented rules.

    A line is `NAME=value`, taken literally after `=`; a line starting with `#` is a comment;
    blank lines are skipped; leading blanks are dropped. A bare `NAME` would copy the caller's
    variable, and a name with a blank is refused: neither belongs in the example.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        assert equals, f"line {number}: {name!r} has no '=' (docker would copy it from the caller)"
        assert name and not re.search(r"\s", name), f"line {number}: docker refuses the name {name!r}"
        values[name] = value
    return values


def bash_set_a(path: Path) -> dict[str, str]:
    """The environment after `set -a; . FILE` in a clean bash; a syntax or command error fails."""
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", 'set -a; . "$1"; env -0', "bash", str(path)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), f"bash could not source {path}: {result.stderr}"
    return dict(item.split("=", 1) for item in result.stdout.split("\0") if item)


def readings(path: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    """The file's variables as docker, bash (only those names) and python-dotenv read them."""
    docker = docker_env_file(path)
    bash = bash_set_a(path)
    return docker, {name: bash.get(name, "<unset>") for name in docker}, dotenv_values(path)


def test_bash_docker_and_dotenv_read_every_variable_alike() -> None:
    docker, bash, dotenv = readings(ENV_EXAMPLE)
    assert len(docker) > 50
    assert bash == docker
    assert dotenv == docker


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("LOG_FORMAT=text  # text or json", "docker keeps the inline comment"),
        ("MAIL_FROM='KRYONIX <no-reply@kryonix.local>'", "docker keeps the quotes"),
        ("SMTP_HOST=mail.example.com ", "bash and dotenv drop the trailing blank"),
    ],
)
def test_the_comparison_catches_lines_the_readers_disagree_on(tmp_path: Path, line: str, why: str) -> None:
    sample = tmp_path / "sample.env"
    sample.write_text(f"# a comment\n{line}\n")
    docker, bash, dotenv = readings(sample)
    assert bash != docker or dotenv != docker, why


def test_bash_stops_on_an_unquoted_display_name(tmp_path: Path) -> None:
    sample = tmp_path / "sample.env"
    sample.write_text("MAIL_FROM=KRYONIX <no-reply@kryonix.local>\nLOG_FORMAT=text\n")
    with pytest.raises(AssertionError, match="syntax error"):
        bash_set_a(sample)


def test_every_variable_has_its_comment_on_the_line_above() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    assignment = re.compile(r"(# )?[A-Z][A-Z0-9_]*=")
    for number, line in enumerate(lines):
        if assignment.match(line):
            above = lines[number - 1]
            assert above.startswith("# ") and not assignment.match(above), f"{line!r} has no comment above it"
            assert "#" not in line.partition("=")[2], f"{line!r}: a comment belongs on the line above"


def test_the_values_are_the_defaults() -> None:
    values = {name: value or "" for name, value in dotenv_values(ENV_EXAMPLE).items()}
    assert Settings.from_env(values) == Settings.from_env({})
