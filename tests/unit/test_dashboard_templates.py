"""rq-dashboard's templates as the dashboard serves them (marker `security`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import rq_dashboard

from workers.dashboard.templates import REPLACEMENTS, TemplateChanged, patch_source

pytestmark = pytest.mark.security

TEMPLATES = Path(rq_dashboard.__file__).parent / "templates" / "rq_dashboard"


def _all() -> dict[str, str]:
    return {str(p.relative_to(TEMPLATES)): p.read_text() for p in sorted(TEMPLATES.rglob("*.*"))}


def test_no_template_inserts_raw_html_after_patching() -> None:
    originals = _all()
    assert any("<%=" in source for source in originals.values()), "the fix has something to do"
    for name, source in originals.items():
        patched = patch_source(name, source)
        assert "<%=" not in patched, name
        assert ".text(d." not in patched, f"{name}: escaped twice"


def test_the_queue_name_goes_into_script_as_json_and_the_inline_script_has_the_nonce() -> None:
    jobs_js = patch_source("scripts/jobs.js", (TEMPLATES / "scripts" / "jobs.js").read_text())
    assert "'{{ queue.name }}'" not in jobs_js
    assert "{{ queue.name|tojson|safe }}" in jobs_js
    base = patch_source("base.html", (TEMPLATES / "base.html").read_text())
    assert base.count('nonce="{{ csp_nonce() }}"') == 1
    assert "<script>" not in base and base.count("<script") == 5  # four files, one nonce-bearing block


def test_every_replacement_targets_an_existing_template() -> None:
    assert {name for name, *_ in REPLACEMENTS} <= set(_all())


def test_a_changed_upstream_template_fails_loudly() -> None:
    with pytest.raises(TemplateChanged, match=r"jobs\.html"):
        patch_source("jobs.html", "<div>rewritten upstream</div>")
