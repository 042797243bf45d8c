"""Email templates: jinja2 with autoescaped HTML, StrictUndefined and locale fallback.

Layout on disk (`jobs/templates/email/`):

    <locale>/layout.html, <locale>/layout.txt        the shared frame of every email
    <locale>/<template>/subject.txt                  one line
    <locale>/<template>/body.txt, body.html          the two alternatives

A template is looked up along its locale's fallback chain (`pt_BR` -> `pt` -> `en`);
the first locale that has the template supplies all its parts, and the layout and any
include are then looked up along that locale's chain, so an email never mixes languages.
Every template exists in `en`.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from cache.errors import ConfigError
from jobs.email.validation import (
    DEFAULT_LOCALE,
    EmailValidationError,
    check_locale,
    control_character,
    describe_character,
)
from jobs.errors import JobError

TEMPLATE_ROOT = Path(__file__).resolve().parent.parent / "templates" / "email"
PARTS = ("subject.txt", "body.txt", "body.html")
PRODUCT_NAME = "KRYONIX"
# Names the renderer supplies; a caller's context may not set them.
PROVIDED = frozenset({"product_name", "locale", "subject", "year"})
MAX_SUBJECT_LENGTH = 255

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# `{# optional: download_url, name #}` in a template part: these may be left out of the
# context and are then None (every other variable is required).
_OPTIONAL = re.compile(r"\{#-?\s*optional:\s*([A-Za-z_][A-Za-z0-9_,\s]*?)\s*-?#\}")


class TemplatesMissing(JobError, ConfigError):
    """The templates directory is not there: an installation problem no retry can fix."""


@dataclass(frozen=True)
class RenderedParts:
    subject: str
    text: str
    html: str
    locale: str


def locale_chain(locale: str) -> tuple[str, ...]:
    """`pt_BR` -> (`pt_BR`, `pt`, `en`); `en` -> (`en`,). Pure."""
    chain = [locale]
    if "_" in locale:
        chain.append(locale.split("_", 1)[0])
    if DEFAULT_LOCALE not in chain:
        chain.append(DEFAULT_LOCALE)
    return tuple(chain)


def format_datetime(value: object, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """The `datetime` filter: an aware datetime in UTC, or an ISO string as given."""
    if isinstance(value, dt.datetime):
        moment = value.astimezone(dt.UTC) if value.tzinfo else value
        return moment.strftime(fmt)
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


# The digit group separator of each language the templates ship in; others fall back to English.
THOUSANDS_SEPARATORS = {"en": ",", "pt": "."}


def format_count(value: object, singular: str, plural: str, *, locale: str = DEFAULT_LOCALE) -> str:
    """The `count` filter: `45,000 rows`, `1 row` (`45.000 linhas` in pt). Pure.

    Digits are grouped by the locale's separator; exactly one takes the singular.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise EmailValidationError(f"the count filter needs an integer, got {value!r}")
    separator = next(
        (THOUSANDS_SEPARATORS[part] for part in locale_chain(locale) if part in THOUSANDS_SEPARATORS), ","
    )
    return f"{value:,}".replace(",", separator) + " " + (singular if value == 1 else plural)


class TemplateLibrary:
    """The email templates under `root`; environments and variable lists are cached.

    Thread-safe for rendering (jinja2 environments are); safe to share in a process.
    """

    def __init__(self, root: Path = TEMPLATE_ROOT) -> None:
        self.root = root
        self._envs: dict[str, jinja2.Environment] = {}
        self._resolved: dict[tuple[str, str], str] = {}
        self._variables: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {}
        self._parts: dict[tuple[str, str], tuple[jinja2.Template, ...]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every template available (those present in the default locale)."""
        base = self.root / DEFAULT_LOCALE
        if not base.is_dir():
            raise TemplatesMissing(
                f"email templates directory {base} is missing: the installation is incomplete "
                f"(jobs/templates/email/ ships with the package)"
            )
        return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / PARTS[0]).exists())

    def resolve_locale(self, name: str, locale: str) -> str:
        """The locale whose variant of `name` is used for `locale`.

        Raises:
            EmailValidationError: no such template, or a malformed name or locale.
            TemplatesMissing: the templates directory itself is missing (a ConfigError).
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise EmailValidationError(
                f"template name must be lowercase letters, digits and '_', got {name!r}"
            )
        check_locale(locale)
        found = self._resolved.get((name, locale))
        if found is not None:
            return found
        for candidate in locale_chain(locale):
            if (self.root / candidate / name / PARTS[0]).is_file():
                # Templates ship with the code (auto_reload is off too): resolve once per process.
                self._resolved[(name, locale)] = candidate
                return candidate
        raise EmailValidationError(f"unknown email template {name!r}; available: {', '.join(self.names())}")

    def environment(self, locale: str) -> jinja2.Environment:
        env = self._envs.get(locale)
        if env is None:
            with self._lock:
                env = self._envs.get(locale)
                if env is None:
                    env = self._build_environment(locale)
                    self._envs[locale] = env
        return env

    def _build_environment(self, locale: str) -> jinja2.Environment:
        loader = jinja2.ChoiceLoader(
            [jinja2.FileSystemLoader(self.root / candidate) for candidate in locale_chain(locale)]
        )
        env = jinja2.Environment(
            loader=loader,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        env.filters["datetime"] = format_datetime
        env.filters["count"] = functools.partial(format_count, locale=locale)
        env.globals["product_name"] = PRODUCT_NAME
        return env

    def _compiled_parts(self, name: str, resolved: str) -> tuple[jinja2.Template, ...]:
        """The compiled subject, text and HTML of `name` in its resolved locale, once per process.

        Like the resolved locale and the variable lists: templates ship with the code and
        `auto_reload` is off, so skipping jinja2's cache lookup per part changes nothing.
        Each part's globals become one plain dict: jinja2 copies them into every render's
        context, and copying its ChainMap was a fifth of a trial render. The environment's
        globals are set once, when it is built, so the copy stays equal to them.
        """
        key = (name, resolved)
        found = self._parts.get(key)
        if found is None:
            env = self.environment(resolved)
            found = tuple(env.get_template(f"{name}/{part}") for part in PARTS)
            for template in found:
                template.globals = dict(template.globals)
            self._parts[key] = found
        return found

    def required_variables(self, name: str, locale: str) -> frozenset[str]:
        """Variables the caller must supply for `name` in `locale` (layout and includes too)."""
        return self._discover(name, locale)[0]

    def optional_variables(self, name: str, locale: str) -> frozenset[str]:
        """Variables declared `{# optional: ... #}`: None when the caller leaves them out."""
        return self._discover(name, locale)[1]

    def _discover(self, name: str, locale: str) -> tuple[frozenset[str], frozenset[str]]:
        resolved = self.resolve_locale(name, locale)
        key = (name, resolved)
        found = self._variables.get(key)
        if found is None:
            env = self.environment(resolved)
            assert env.loader is not None
            used: set[str] = set()
            optional: set[str] = set()
            pending = [f"{name}/{part}" for part in PARTS]
            seen: set[str] = set()
            while pending:
                template_name = pending.pop()
                if template_name in seen:
                    continue
                seen.add(template_name)
                source = env.loader.get_source(env, template_name)[0]
                tree = env.parse(source)
                used |= meta.find_undeclared_variables(tree)
                for declared in _OPTIONAL.findall(source):
                    optional |= {v.strip() for v in declared.split(",") if v.strip()}
                pending.extend(t for t in meta.find_referenced_templates(tree) if t is not None)
            found = (frozenset(used - PROVIDED - optional), frozenset(optional))
            self._variables[key] = found
        return found

    def check_context(
        self, name: str, locale: str, context: Mapping[str, Any], what: str = "context"
    ) -> None:
        """Refuse a context that lacks a variable the template needs.

        Raises:
            EmailValidationError: names the template, the locale variant and the missing variables.
        """
        missing = self.required_variables(name, locale) - context.keys()
        if missing:
            resolved = self.resolve_locale(name, locale)
            raise EmailValidationError(
                f"{what} for template {name!r} ({resolved}) is missing variable(s): "
                f"{', '.join(sorted(missing))} (pass None for an empty optional value)"
            )

    def render(
        self, name: str, locale: str, context: Mapping[str, Any], *, now: dt.datetime
    ) -> RenderedParts:
        """Render the subject and both bodies. Pure apart from reading the (cached) templates.

        Raises:
            EmailValidationError: unknown template, missing variable or attribute (StrictUndefined),
                a template error, or a subject that is empty, too long or spans lines.
        """
        resolved = self.resolve_locale(name, locale)
        defaults = dict.fromkeys(self.optional_variables(name, resolved))
        values = {**defaults, **context, "locale": resolved, "year": now.year}
        try:
            subject_part, text_part, html_part = self._compiled_parts(name, resolved)
            subject = subject_part.render(values).strip()
            values["subject"] = subject
            text = text_part.render(values)
            html = html_part.render(values)
        except jinja2.TemplateError as exc:
            raise EmailValidationError(f"template {name!r} ({resolved}) cannot be rendered: {exc}") from None
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise EmailValidationError(
                f"template {name!r} ({resolved}) cannot be rendered: {type(exc).__name__}: {exc}"
            ) from None
        if not subject:
            raise EmailValidationError(f"template {name!r} ({resolved}) rendered an empty subject")
        char = control_character(subject)
        if char is not None:
            problem = (
                "spans several lines"
                if char in "\r\n"
                else f"contains a {describe_character(char)} character"
            )
            raise EmailValidationError(
                f"subject of template {name!r} {problem} (header injection refused): {subject!r}"
            )
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise EmailValidationError(f"subject is {len(subject)} characters, over {MAX_SUBJECT_LENGTH}")
        return RenderedParts(subject=subject, text=text, html=html, locale=resolved)


_default: TemplateLibrary | None = None


def default_library() -> TemplateLibrary:
    """The shipped templates, one library per process."""
    global _default
    if _default is None:
        _default = TemplateLibrary()
    return _default
