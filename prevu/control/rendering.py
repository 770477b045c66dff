"""
The control app's HTML pages come from Jinja2 templates with autoescaping.

Templates live in `prevu/control/templates/` and the few lines of our own
JavaScript and nothing else in `prevu/control/static/` (both package data,
shipped by `pip install .`). Every value is escaped by Jinja2's autoescape
(https://jinja.palletsprojects.com/en/3.1.x/api/#autoescaping); no page is
assembled from Python strings. `Pages.render` answers an `Answer` with the
control app's security headers.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from attrs import frozen
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from prevu.control.responses import NO_STORE, Answer, Headers, Outcome

PAGE_POLICY = (
    b"default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
    b"img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""Pages may run only prevu's own script and talk only to prevu (the SSE streams)."""

LOGIN_POLICY = (
    b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
)
"""
The login pages run no script. No form-action: Chromium applies it to the
redirect after POST /login, which goes on to the preview's host.
"""

STATIC_TYPES = {"live.js": b"text/javascript; charset=utf-8"}
"""The static files the control app serves at `/static/<name>`, with their types."""


def html_headers(policy: bytes = PAGE_POLICY) -> Headers:
    """The headers of every HTML page of the control app."""
    return (
        (b"content-type", b"text/html; charset=utf-8"),
        *NO_STORE,
        (b"content-security-policy", policy),
        (b"referrer-policy", b"same-origin"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-robots-tag", b"noindex"),
    )


@frozen
class Pages:
    """The template environment (loaded once, at start-up) and the static files."""

    environment: Environment

    @classmethod
    def load(cls) -> Pages:
        """The templates of the installed package; raises jinja2's errors on a broken one."""
        environment = Environment(
            loader=PackageLoader("prevu.control", "templates"),
            autoescape=select_autoescape(("html",), default_for_string=True, default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        return cls(environment)

    def text(self, name: str, **context: Any) -> str:
        """Template `name` rendered with `context`."""
        return self.environment.get_template(name).render(**context)

    def render(
        self, name: str, outcome: Outcome = "ok", policy: bytes = PAGE_POLICY, **context: Any
    ) -> Answer:
        """Template `name` as an HTML answer with `outcome`."""
        body = self.text(name, **context).encode("utf-8")
        return Answer(outcome, body, html_headers(policy))

    @staticmethod
    def static(name: str) -> Answer:
        """`/static/<name>`: one of `STATIC_TYPES`, else not_found."""
        kind = STATIC_TYPES.get(name)
        if kind is None:
            return Answer("not_found", b"no such file\n", ((b"content-type", b"text/plain"),))
        body = resources.files("prevu.control").joinpath("static", name).read_bytes()
        headers = (
            (b"content-type", kind),
            (b"cache-control", b"public, max-age=300"),
            (b"x-content-type-options", b"nosniff"),
        )
        return Answer("ok", body, headers)


@functools.cache
def default_pages() -> Pages:
    """The package's templates, loaded on first use and shared (they never change)."""
    return Pages.load()
