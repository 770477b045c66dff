"""
The pages the proxy answers for a preview that cannot be forwarded to: pure rendering.

A route's `state` (`prevu.routing.Route`, published by the orchestrator)
says what the preview is doing; these functions turn it into the response
prevu writes itself, after the login gate has let the request through
(docs/proxy.md, "Pages for previews that do not answer"):

- "building": 503, `Retry-After`, refreshes itself, links to the live log;
- "sleeping": the same while the preview wakes up;
- "failed": 503 saying it failed; a signed-in reviewer (one the gate named)
  is shown why (the preview's error) and a link to its logs at
  `<public_url>/previews/{id}`; anyone else (a public preview's visitor, a
  share link's guest) is told the state and given the login to see more,
  unless no way to log in is configured (`PageLinks.login_configured`
  False: the dashboard is open to all, so its reason and logs link are too);
- "closed": 410 saying the preview was removed (and when);
- "awaiting": 503 saying a fork's commit awaits a maintainer's approval
  before prevu builds it, and how a maintainer approves (the
  `/preview approve` command on the pull request); a signed-in reviewer is
  shown the exact command (with the commit) and a link to the preview's
  page, anyone else the login (see `awaiting_page` for the status chosen);
- a ready preview whose upstream refuses connections ("crashed"): 503
  saying it is not answering, with the same links as "failed".

Everything a user controls (errors, repository names, preview ids, hosts)
is escaped with `html.escape`; URLs are percent-quoted before escaping.
Only requests for such routes render anything: forwarded traffic never
calls this module. A `noindex` route's pages carry `X-Robots-Tag: noindex`.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from urllib.parse import quote

from attrs import frozen

from prevu.proxy.http import html_page
from prevu.routing import Route

Headers = list[tuple[bytes, bytes]]
SIGNED_IN_NOT = ("~",)
"""Gate user names starting so (`~bypass`, `~share`) are not a reviewer who logged in."""


@frozen
class PageReply:
    """A page to answer with: status, headers (without framing ones) and HTML body."""

    status: int
    headers: Headers
    body: bytes


@frozen
class PageLinks:
    """
    Where the pages link to: prevu's control app at `public_url` (no trailing
    slash; "" when unknown: the pages then carry no links). `login_configured`
    False (no `[auth] users_file` nor `[auth.github]`): nobody can log in and
    the dashboard needs no session (docs/auth.md), so a failed preview's page
    shows everyone its reason and logs link instead of a login that cannot work.
    """

    public_url: str = ""
    login_configured: bool = True

    def logs(self, preview: str | None) -> str | None:
        """The preview's page with its logs (`<public_url>/previews/{id}`), or None."""
        if not self.public_url or not preview:
            return None
        return f"{self.public_url}/previews/{quote(preview, safe='')}"

    def login(self, next_url: str | None) -> str | None:
        """The login page, sending the reviewer on to `next_url` afterwards, or None."""
        if not self.public_url:
            return None
        if next_url is None:
            return f"{self.public_url}/login"
        return f"{self.public_url}/login?next={quote(next_url, safe='')}"


def signed_in(user: str | None) -> bool:
    """Whether the gate's `user` is a reviewer who logged in (not a bypass or share token)."""
    return user is not None and not user.startswith(SIGNED_IN_NOT)


def robots(route: Route) -> Headers:
    """The `X-Robots-Tag` header of a `noindex` route, as a header list (empty otherwise)."""
    return [(b"X-Robots-Tag", b"noindex")] if route.noindex else []


def _link(url: str | None, text: str) -> str:
    if url is None:
        return ""
    return f'<p><a id=prevu-link href="{html.escape(url)}">{html.escape(text)}</a></p>'


def _subject(route: Route) -> str:
    if route.repo:
        return f"The preview of <b>{html.escape(route.repo)}</b>"
    return "This preview"


def _shows_details(user: str | None, links: PageLinks) -> bool:
    """Whether a page shows the reason, logs link or exact command: to a signed-in
    reviewer, or to anyone when no login is configured (`PageLinks.login_configured`)."""
    return signed_in(user) or not links.login_configured


def _details(route: Route, user: str | None, links: PageLinks, logs_text: str) -> str:
    """The reason and logs link for a signed-in reviewer; the login link for anyone else."""
    logs = links.logs(route.preview)
    if _shows_details(user, links):
        reason = (
            f"<p class=reason id=prevu-reason>{html.escape(route.detail)}</p>"
            if route.detail
            else ""
        )
        return reason + _link(logs, logs_text)
    return _link(links.login(logs), "Log in to see why, and its logs")


def state_page(
    route: Route, host: str, user: str | None, links: PageLinks, retry_after: int
) -> PageReply:
    """
    The page for a route whose `state` is not "ready" (see the module docstring).

    `host` is the requested host (shown on the page), `user` whom the login
    gate named (None: nobody, e.g. a public preview), `retry_after` seconds
    for the waiting pages. Raises ValueError for a "ready" route.
    """
    state = route.state
    headers = robots(route)
    logs = links.logs(route.preview)
    if state in ("building", "sleeping"):
        if state == "sleeping":
            message = "This preview was asleep and is waking up. This page refreshes by itself."
        else:
            message = "This preview is being built. This page refreshes by itself."
        note = (
            f"<p class=reason>{html.escape(route.detail)}</p>"
            if route.detail and signed_in(user)
            else ""
        )
        body = f"<p>{html.escape(message)}</p>{note}" + _link(logs, "Follow the live log")
        headers.append((b"Retry-After", b"%d" % retry_after))
        return PageReply(
            503, headers, html_page(503, "Preview not ready yet", body, host, retry_after)
        )
    if state == "failed":
        body = f"<p id=prevu-state>{_subject(route)} failed.</p>" + _details(
            route, user, links, "See its build and run logs"
        )
        return PageReply(503, headers, html_page(503, "Preview failed", body, host))
    if state == "closed":
        when = ""
        if route.since is not None:
            stamp = datetime.fromtimestamp(route.since, UTC).strftime("%Y-%m-%d %H:%M UTC")
            when = f" on {stamp}"
        body = (
            f"<p id=prevu-state>{_subject(route)} was removed{when}: its pull request "
            "was closed or the preview was destroyed.</p>"
        )
        return PageReply(410, headers, html_page(410, "Preview removed", body, host))
    if state == "awaiting":
        return awaiting_page(route, host, user, links)
    raise ValueError(f"no page for a {state!r} route: {route.host}")


APPROVE = "/preview approve"
"""The pull request command that approves a fork's commit (`prevu.forge.commands`)."""


def awaiting_page(route: Route, host: str, user: str | None, links: PageLinks) -> PageReply:
    """
    The page of a fork pull request's preview whose commit awaits approval.

    503 Service Unavailable, like the other pages of a preview that exists
    but cannot answer yet: the address is right (not 404) and the preview
    is not gone (not 410), so monitors and crawlers treat it as temporary and
    cache nothing. No `Retry-After` and no self-refresh: the wait depends on a
    maintainer, not on a build, and a page reloading itself for hours would
    only load the proxy. A signed-in reviewer (or anyone, when no login is
    configured) is shown the exact command, `/preview approve <sha>` (the
    commit's first 7 hex digits, as the pull request comment shows it), and
    the link to the preview's page; anyone else the plain command and the login.
    """
    logs = links.logs(route.preview)
    reviewer = _shows_details(user, links)
    command = APPROVE
    if reviewer and route.commit:
        command = f"{APPROVE} {route.commit[:7]}"
    body = (
        f"<p id=prevu-state>{_subject(route)} awaits a maintainer's approval: its pull "
        "request comes from a fork, and prevu builds no fork code until a maintainer "
        "has reviewed it.</p>"
        "<p>To approve it, a maintainer comments "
        f"<code id=prevu-command>{html.escape(command)}</code> on the pull request.</p>"
    )
    if reviewer:
        body += _link(logs, "See the preview's page")
    else:
        body += _link(links.login(logs), "Log in to see the preview's page")
    return PageReply(503, robots(route), html_page(503, "Preview awaits approval", body, host))


def crashed_page(route: Route, host: str, user: str | None, links: PageLinks) -> PageReply:
    """
    The 503 for a ready preview whose upstream refuses connections (its app
    stopped or crashed): says so, with the reason and logs link for a
    signed-in reviewer (or anyone, when no login is configured), the login
    for anyone else.
    """
    body = (
        f"<p id=prevu-state>{_subject(route)} is not answering: its app may have "
        "stopped or crashed.</p>"
        + _details(route, user, links, "See its run logs")
    )
    return PageReply(503, robots(route), html_page(503, "Preview not answering", body, host))
