"""The documentation's runnable examples run, and its links between pages resolve.

A fenced block whose info string is `python runnable` or `bash runnable` (README.md and
docs/*.md) is run on its own in a subprocess against this session's private, flushed
redis-servers; any other block is for reading only (docs/development.md, "Runnable
examples in the docs").
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.processes import process_env
from workers.dev.servers import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNABLE = {"python runnable": "python", "bash runnable": "bash"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BLOCK_TIMEOUT_S = 60


def _name(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def _without_code(text: str) -> str:
    """The page with fenced blocks and inline code blanked out (links and headings only)."""
    text = FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)
    return re.sub(r"`[^`\n]*`", "``", text)


def runnable_blocks() -> list[tuple[str, str, str]]:
    """(id, language, code) of every marked block, id = page:line of the fence."""
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            info = match.group(1).strip()
            if info in RUNNABLE:
                line = text.count("\n", 0, match.start()) + 1
                blocks.append((f"{_name(page)}:{line}", RUNNABLE[info], match.group(2)))
            else:
                assert "runnable" not in info, f"{_name(page)}: unknown fence info {info!r}"
    return blocks


BLOCKS = runnable_blocks()


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            anchor = github_anchor(match.group(1))
            seen = counts.get(anchor, 0)
            counts[anchor] = seen + 1
            found.add(anchor if seen == 0 else f"{anchor}-{seen}")
    return found


@pytest.mark.parametrize(
    ("language", "code"), [(lang, code) for _, lang, code in BLOCKS], ids=[b[0] for b in BLOCKS]
)
def test_runnable_block_runs(language: str, code: str, redis_env: dict[str, str], tmp_path: Path) -> None:
    env = process_env(redis_env)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # `python` is the project's
    env["REPORTS_DIR"] = str(tmp_path / "reports")
    if language == "python":
        script = tmp_path / "block.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout}\n{result.stderr}\n--- block:\n{code}"
    )


def test_every_service_page_has_a_runnable_example() -> None:
    pages = {block_id.split(":")[0] for block_id, _, _ in BLOCKS}
    for name in ("jobs", "email", "reports", "cache", "sessions", "ratelimit", "realtime"):
        assert f"docs/{name}.md" in pages, f"docs/{name}.md has no runnable example"


def test_links_between_pages_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(_without_code(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{_name(page)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{_name(page)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
