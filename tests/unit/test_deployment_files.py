"""The Dockerfile and supervisord.conf, checked without a Docker engine (marker `ops`).

No engine runs here, so the image cannot be built in CI; these checks catch what
would break the build or the container: a COPY of something missing or ignored, a
command the package does not have, an environment that disagrees with the README.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from workers.cli.main import main
from workers.cli.supervise import RQ_ENVIRONMENT
from workers.dev.servers import PROJECT_ROOT

pytestmark = pytest.mark.ops

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def _dockerignore() -> list[str]:
    lines = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str) -> bool:
    return any(
        fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/")
        for pattern in _dockerignore()
    )


def test_every_copy_source_exists_and_is_not_ignored() -> None:
    copies = [rest.split()[:-1] for keyword, rest in _instructions() if keyword == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), f"COPY {source}: no such file in the build context"
            assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _instructions():
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_rq_environment_matches_the_readme_and_imports() -> None:
    env = _env()
    readme = (PROJECT_ROOT / "README.md").read_text()
    for name, value in RQ_ENVIRONMENT.items():
        assert env[name] == value
        assert f"export {name}={value}" in readme, f"README does not document {name}={value}"
        module, _, attribute = value.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute)
    for name in ("KRYONIX_RUN_DIR", "KRYONIX_EMAIL_WORKERS", "KRYONIX_REPORT_WORKERS"):
        assert name in env, f"supervisord.conf needs {name}"


def _exec_form(rest: str) -> list[str]:
    return list(json.loads(rest[rest.index("[") :]))


@pytest.mark.parametrize("keyword", ["CMD", "HEALTHCHECK"])
def test_commands_the_image_runs_exist_in_the_package(keyword: str) -> None:
    [rest] = [rest for k, rest in _instructions() if k == keyword]
    command = _exec_form(rest)
    assert command[:3] == ["python", "-m", "workers"]
    result = CliRunner().invoke(main, [*command[3:], "--help"])
    assert result.exit_code == 0, result.output


def test_image_runs_as_non_root_on_a_slim_base() -> None:
    instructions = _instructions()
    assert next(rest for k, rest in instructions if k == "FROM").endswith("-slim")
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_supervisord_programs_run_existing_commands() -> None:
    parser = configparser.RawConfigParser()
    parser.read(PROJECT_ROOT / "supervisord.conf")
    programs = {s.split(":", 1)[1]: parser[s] for s in parser.sections() if s.startswith("program:")}
    assert set(programs) == {"email-worker", "report-worker", "scheduler", "dashboard"}
    assert programs["email-worker"]["command"] == "python -m workers worker email", "one queue per process"
    assert programs["report-worker"]["command"] == "python -m workers worker report"
    for name, program in programs.items():
        words = program["command"].split()
        if words[:3] == ["python", "-m", "workers"]:
            assert CliRunner().invoke(main, [*words[3:], "--help"]).exit_code == 0, name
        assert program["stopsignal"] == "TERM"
        assert program["killasgroup"] == "true"
        assert program["stdout_logfile"] == "/dev/stdout"
    assert int(programs["report-worker"]["stopwaitsecs"]) > 1800, "longer than a report job's timeout"
    text = (PROJECT_ROOT / "supervisord.conf").read_text().lower()
    assert "password" not in re.sub(r"^;.*$", "", text, flags=re.MULTILINE), "no secrets in the file"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = _dockerignore()
    for expected in (".git", ".venv", "var"):
        assert expected in patterns
    assert Path(PROJECT_ROOT / ".dockerignore").exists()
