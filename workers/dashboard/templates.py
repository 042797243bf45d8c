"""rq-dashboard 0.9's own templates, loaded through a loader that fixes three things.

Each fix is an exact text replacement checked at load time: if an rq-dashboard
release changes the text, the page fails loudly instead of silently losing the fix.

1. Underscore's `<%= %>` inserts raw HTML; the job page used it for description,
   meta, exc_info and result, so text chosen by an end user (an email display name)
   ran as script in the operator's browser. Every `<%=` becomes `<%-` (underscore's
   escaping form) on every page; the list page's own `$('<div/>').text(..).html()`
   escaping is dropped so nothing is escaped twice.
2. `jobs.js` writes the queue name (from the URL) into a JS string with `'{{ }}'`,
   and `.js` templates are not autoescaped: it is written with `tojson` instead.
3. The one inline `<script>` of `base.html` gets the per-request CSP nonce
   (`workers.dashboard.guard`), so the policy needs no 'unsafe-inline'.
4. A job's description (its call, arguments included: thousands of characters on one
   line for a report) kept the list's table as wide as the text, the Age and Delete
   columns off-screen. The list lays its columns out to the page's width and cuts the
   description with an ellipsis; the whole text is the cell's tooltip and on the job page.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from jinja2 import BaseLoader, Environment

PREFIX = "rq_dashboard/"

# The job list's columns: Age and Actions fixed, the description cut to what is left.
JOBS_TABLE_CSS = """
        <style>
            table#jobs { table-layout: fixed; width: 100%; }
            table#jobs th:nth-child(2) { width: 10em; }
            table#jobs th:nth-child(3) { width: 12em; }
            table#jobs span.description { display: block; }
            table#jobs pre.exc_info, table#jobs div.job_id { overflow-wrap: anywhere; }
        </style>
"""
MAIN_CSS = (
    """<link href="{{ url_for('rq_dashboard.static', filename='css/main.css') }}" rel="stylesheet">\n"""
)

# (template, text in rq-dashboard 0.9, replacement, times it occurs)
REPLACEMENTS: tuple[tuple[str, str, str, int], ...] = (
    (
        "jobs.html",
        """<span class="description ellipsify"><%- $('<div/>').text(d.description).html() %></span>""",
        """<span class="description ellipsify" title="<%- d.description %>"><%- d.description %></span>""",
        1,
    ),
    ("jobs.html", "<%- $('<div/>').text(d.exc_info).html() %>", "<%- d.exc_info %>", 1),
    ("scripts/jobs.js", "$(this).val('{{ queue.name }}');", "$(this).val({{ queue.name|tojson|safe }});", 1),
    ("base.html", MAIN_CSS, MAIN_CSS + JOBS_TABLE_CSS, 1),
    (
        "base.html",
        '<script type="text/javascript">\n',
        '<script type="text/javascript" nonce="{{ csp_nonce() }}">\n',
        1,
    ),
)

_RAW_INTERPOLATION = re.compile(r"<%=")


class TemplateChanged(RuntimeError):
    """rq-dashboard's template text is not what a fix expects: review this module."""


def patch_source(name: str, source: str) -> str:
    """The fixed text of template `name` (relative to `rq_dashboard/`). Pure.

    Raises:
        TemplateChanged: a replacement's text does not occur as often as expected.
    """
    source = _RAW_INTERPOLATION.sub("<%-", source)
    for template, old, new, count in REPLACEMENTS:
        if template != name:
            continue
        if source.count(old) != count:
            raise TemplateChanged(f"rq-dashboard template {name}: expected {count}x {old!r}")
        source = source.replace(old, new)
    return source


class PatchedLoader(BaseLoader):
    """Wraps the app's loader; rq-dashboard's templates come back fixed."""

    def __init__(self, inner: BaseLoader) -> None:
        self.inner = inner

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self.inner.get_source(environment, template)
        if template.startswith(PREFIX):
            source = patch_source(template.removeprefix(PREFIX), source)
        return source, filename, uptodate

    def list_templates(self) -> list[str]:
        return self.inner.list_templates()


def install(environment: Environment) -> None:
    """Route every template of `environment` (the Flask app's) through PatchedLoader."""
    if environment.loader is None:
        raise TemplateChanged("the Flask app has no template loader")
    environment.loader = PatchedLoader(environment.loader)
