"""
Interceptors for the plain-HTTP proxy: ACME HTTP-01 answers and the redirect to HTTPS.

Both are `prevu.proxy.hooks.Interceptor`s; the proxy asks them, in order,
before routing. The challenge answer comes first so that the redirect never
hides `/.well-known/acme-challenge/`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from attrs import define, field, frozen

from prevu.proxy.hooks import Reply, RequestHead

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@define
class Http01Tokens:
    """The HTTP-01 key authorizations being offered right now, by token."""

    _tokens: dict[str, str] = field(factory=dict)

    def add(self, token: str, key_authorization: str) -> None:
        self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        return self._tokens.get(token)

    def snapshot(self) -> Mapping[str, str]:
        return dict(self._tokens)


@frozen
class AcmeChallengeInterceptor:
    """Answers `GET /.well-known/acme-challenge/<token>` with its key authorization."""

    tokens: Http01Tokens

    def intercept(self, head: RequestHead) -> Reply | None:
        if not head.target.startswith(CHALLENGE_PREFIX):
            return None
        if head.method not in (b"GET", b"HEAD"):
            return Reply(405, [(b"allow", b"GET, HEAD"), (b"content-length", b"0")])
        token = head.target[len(CHALLENGE_PREFIX) :].split(b"?", 1)[0].decode("latin-1")
        answer = self.tokens.get(token)
        if answer is None:
            return Reply(
                404,
                [(b"content-type", b"text/plain"), (b"content-length", b"10")],
                b"not found\n",
            )
        body = answer.encode("ascii")
        return Reply(
            200,
            [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
            body if head.method == b"GET" else b"",
        )


@frozen
class HttpsRedirect:
    """
    Sends plain-HTTP requests to the same URL over HTTPS.

    308 keeps the method and body (a POST stays a POST); `https_port` is left
    out of the URL when it is 443. A request from a `trusted_proxies` address
    that already says `X-Forwarded-Proto: https` was TLS at the edge and passes.
    Challenge paths are never redirected.
    """

    https_port: int = 443
    trusted_proxies: tuple[Network, ...] = ()

    def intercept(self, head: RequestHead) -> Reply | None:
        if head.scheme != "http" or head.target.startswith(CHALLENGE_PREFIX):
            return None
        if self._forwarded_https(head):
            return None
        host = _hostname(head.host)
        if not host:
            return None
        port = "" if self.https_port == 443 else f":{self.https_port}"
        target = head.target.decode("latin-1")
        if not target.startswith("/"):
            target = "/"
        location = f"https://{host}{port}{target}".encode("latin-1")
        return Reply(
            308,
            [
                (b"location", location),
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(location) + 1).encode()),
            ],
            location + b"\n",
        )

    def _forwarded_https(self, head: RequestHead) -> bool:
        if head.header(b"x-forwarded-proto") != b"https" or not self.trusted_proxies:
            return False
        try:
            client = ipaddress.ip_address(head.client)
        except ValueError:
            return False
        return any(client in network for network in self.trusted_proxies)


def _hostname(host: str) -> str:
    """The Host header without its port; bracketed IPv6 literals keep their brackets."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else ""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if not name or any(c in name for c in "/\\@ ?#"):
        return ""
    return name.lower()
