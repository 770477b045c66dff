"""
The proxy's AccessGate: who may pass to a private route.

A request to a private route passes with, in this order: the repository's
bypass header (`X-Prevu-Bypass`), a login handoff or share link in the query
(answered with a redirect that sets a host-only cookie and drops the token
from the URL), or a `prevu_session` cookie holding a session or a share
token for this host. Otherwise a browser is sent to the login page with
`next=` and any other client gets `401`.
"""

from __future__ import annotations

from attrs import define
from twisted.logger import Logger

from prevu.auth.authority import Authority
from prevu.auth.rules import (
    BYPASS_HEADER,
    BYPASS_USER,
    HANDOFF_PARAM,
    SESSION_COOKIE,
    SHARE_PARAM,
    SHARE_USER,
    accepts_html,
    cookie_values,
    request_origin,
    set_cookie,
    split_param,
)
from prevu.auth.tokens import (
    HANDOFF_TTL,
    check_bypass,
    decode_handoff,
    decode_share,
    encode_session,
)
from prevu.proxy.hooks import Allow, Decision, Reply, RequestHead
from prevu.reactors import ReactorTime
from prevu.routing import Route, normalize_host

NO_STORE = (b"cache-control", b"no-store")
log = Logger()


def redirect(location: str, *cookies: bytes) -> Reply:
    """A 302 to `location`, setting `cookies`."""
    body = f'<!doctype html><a href="{_escape(location)}">Continue</a>\n'.encode()
    headers = [
        (b"location", location.encode("latin-1", "replace")),
        (b"content-type", b"text/html; charset=utf-8"),
        NO_STORE,
    ]
    headers += [(b"set-cookie", cookie) for cookie in cookies]
    return Reply(302, headers, body)


def header(head: RequestHead, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), whatever case the client sent."""
    for key, value in head.headers:
        if key.lower() == name:
            return value
    return None


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


@define
class AuthGate:
    """Checks sessions, share links and bypass tokens in front of private routes."""

    authority: Authority
    clock: ReactorTime

    def check(self, route: Route, head: RequestHead) -> Decision:
        """Allow the request, or refuse it with a redirect to login or a 401."""
        if route.access != "private":
            return Allow()
        return self.decide(head, route.repo, route.host)

    def decide(self, head: RequestHead, repo: str | None, route_host: str) -> Decision:
        """
        The decision for a private route of `repo` (None for a fixed route)
        whose host (or pattern) is `route_host`.
        """
        signer = self.authority.signer
        now = self.clock.seconds()
        host = normalize_host(head.host)
        secure = head.scheme == "https"

        bypass = header(head, BYPASS_HEADER)
        if bypass and check_bypass(signer, bypass.decode("latin-1"), repo, route_host):
            return Allow(user=BYPASS_USER)

        raw_host = header(head, b"host")
        origin = request_origin(
            head.scheme,
            raw_host.decode("latin-1").strip() if raw_host else head.host,
            self.authority.settings.public_url,
            self.authority.settings.proxy_port(head.scheme),
        )
        target = head.target.decode("latin-1")
        handoff, target = split_param(target, HANDOFF_PARAM)
        if handoff is not None:
            session = decode_handoff(signer, handoff, host, now)
            if (
                session is not None
                and session.sid not in self.authority.revoked
                and self.authority.spend(handoff, now + HANDOFF_TTL, now)
            ):
                cookie = set_cookie(
                    SESSION_COOKIE,
                    encode_session(signer, session),
                    max_age=session.expires - now,
                    secure=secure,
                )
                log.info("login handoff for {user} to {host}", user=session.user, host=host)
                return redirect(f"{origin}{target}", cookie)
        share_token, target = split_param(target, SHARE_PARAM)
        if share_token is not None:
            share = decode_share(signer, share_token, host, now)
            if share is not None:
                if head.method not in (b"GET", b"HEAD"):
                    return Allow(user=SHARE_USER)
                cookie = set_cookie(
                    SESSION_COOKIE, share_token, max_age=share.expires - now, secure=secure
                )
                return redirect(f"{origin}{target}", cookie)

        cookie_headers = (v for k, v in head.headers if k.lower() == b"cookie")
        values = cookie_values(cookie_headers, SESSION_COOKIE)
        for session in self.authority.sessions(values, now):
            if session.allows_repo(repo):
                return Allow(user=session.user)
        for value in values:
            if decode_share(signer, value, host, now) is not None:
                return Allow(user=SHARE_USER)
        return self.refuse(head, f"{origin}{target}")

    def refuse(self, head: RequestHead, url: str) -> Reply:
        """302 to the login page for browsers, 401 for everyone else."""
        if accepts_html(header(head, b"accept")):
            return redirect(self.authority.settings.login_url(url))
        return Reply(
            401,
            [(b"content-type", b"text/plain; charset=utf-8"), NO_STORE],
            b"login required: log in at " + self.authority.settings.login_url().encode() + b"\n",
        )
