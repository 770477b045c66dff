"""
Which requests the proxy forwards, and what it answers itself: pure rules.

`admit` takes a parsed request head and returns either a `Forward` (the
upstream, the head to send it, the body's framing) or a `LocalReply` (the
bytes prevu answers with). The checks run in this order, the first that
applies wins:

1. 505 for an HTTP version other than 1.0 and 1.1;
2. 405 for CONNECT;
3. 400 for a target that is neither origin-form nor a valid absolute form
   (whose host then replaces the Host header), for a number of Host headers
   other than one, and for a Host that is not a host name (RFC 9110 §7.2);
4. 501 for a transfer coding other than chunked;
5. 413 for a Content-Length over `max_body`;
6. the interceptors' reply (ACME HTTP-01, the redirect to HTTPS), in order;
7. 404 when no route serves the host;
8. the access gate's reply (login redirect, 401) for a private route;
9. the page of a preview that is not ready (`prevu.proxy.pages`): 503 with
   Retry-After while it is built or woken (the reply asks for the wake-up,
   see `LocalReply.wake`), 503 naming the failure, 410 once it was removed;
10. 400 for an Upgrade request with a body; otherwise the request is forwarded.

The header rules the parser applies while reading a head live here too:
which names the proxy handles itself (`SPECIAL`), and which a client may
never send in any spelling (`spoofing`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from attrs import define, field

from prevu.proxy.forwarding import (
    FORWARDED,
    HeaderPieces,
    ParsedHead,
    forward_head,
    value,
    values,
)
from prevu.proxy.hooks import AccessGate, Allow, Interceptor, Reply, RequestHead
from prevu.proxy.http import HOP_BY_HOP, REQUEST_OWN, page, simple_response
from prevu.proxy.pages import PageLinks, robots, state_page
from prevu.routing import Route, RouteRegistry, Upstream, normalize_host

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Request headers the proxy reads, rewrites or drops itself (Host aside).
SPECIAL: Final = (REQUEST_OWN | HOP_BY_HOP) - {b"host"}
# First letters (both cases) of every name that may need a look: a header
# whose name starts otherwise (Accept*, Referer, Sec-*, ...) skips lower().
SPECIAL_FIRST: Final = frozenset(
    letter
    for name in (*SPECIAL, b"host", b"forwarded", b"x-real-ip", b"x-forwarded-", b"x-prevu-")
    for letter in (name[0], name[:1].upper()[0])
)
# Never passed on from a client, in any spelling (`_` for `-` included): they
# claim an identity or an origin that only prevu may state.
SPOOF_PREFIXES: Final = (b"x-forwarded-", b"x-prevu-")
SPOOF_NAMES: Final = frozenset({b"forwarded", b"x-real-ip"})
# Host: a reg-name, IPv4 or [IPv6] literal, and an optional port (RFC 9110 §7.2).
_HOST = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]{1,5})?$")
_HOST_CACHE_SIZE = 4096


def spoofing(lower: bytes) -> bool:
    """A client header (lower-case name) that claims an identity or origin only prevu may state."""
    return lower in SPOOF_NAMES or lower.startswith(SPOOF_PREFIXES)


def dropped_in_any_spelling(lower: bytes) -> bool:
    """
    A header name (lower case, maybe with `_`) that is never passed on as sent.

    Some servers read `_` as `-`: X-Prevu_User or Content_Length never go
    through in any role. Trailers follow the same rule.
    """
    normal = lower.replace(b"_", b"-")
    return normal in SPECIAL or normal == b"host" or spoofing(normal)


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """Split an absolute-form target (http://host/path?q) into origin form and host."""
    lower = target[:8].lower()
    for prefix in (b"http://", b"https://"):
        if lower.startswith(prefix):
            rest = target[len(prefix) :]
            end = min(
                (i for i in (rest.find(c) for c in (b"/", b"?", b"#")) if i != -1),
                default=len(rest),
            )
            host, path = rest[:end], rest[end:]
            if path[:1] != b"/":
                path = b"/" + path
            return path.partition(b"#")[0], host or None
    return target, None


# Forward and LocalReply are built for every request: plain slotted classes
# (attrs' @frozen initialiser is measurably slower on this path).
@define(slots=True)
class Forward:
    """A request to send upstream: where, the head to send, and the body's framing."""

    route: Route
    upstream: Upstream
    method: bytes
    head: bytes  # the upstream request head, ending with the blank line
    host: str  # the route lookup key (for error pages and logs)
    chunked: bool  # the request body is chunked
    content_length: int | None
    keep_alive: bool  # the client allows another request after this one
    client_http11: bool
    upgrade: bool  # an Upgrade request, forwarded as such
    trusted: bool  # the route is prevu's own (its responses may set prevu's cookies)
    user: str | None  # whom the login gate named (for the pages of a failing upstream)


@define(slots=True)
class LocalReply:
    """A response prevu writes itself (in its turn among pipelined requests)."""

    data: bytes
    close: bool  # the connection closes after it
    wake: Route | None = None  # a sleeping preview this request asks to wake


@define
class Policy:
    """
    What the rules consult besides the head, for one proxy endpoint.

    Holds the host cache: clients repeat their Host, and validating and
    normalizing it runs for every request.
    """

    scheme: str
    routes: RouteRegistry
    gate: AccessGate
    interceptors: tuple[Interceptor, ...] = ()
    max_body: int = 1 << 30
    retry_after: int = 5  # seconds, in the 503's Retry-After
    trusted_proxies: tuple[Network, ...] = ()
    links: PageLinks = field(factory=PageLinks)  # where the proxy's own pages link to (logs, login)
    scheme_bytes: bytes = field(init=False)
    host_names: dict[bytes, str] = field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.scheme_bytes = self.scheme.encode()

    def host_name(self, raw_host: bytes) -> str:
        """The route lookup key for a Host value, "" when it is not a host name (cached)."""
        host = self.host_names.get(raw_host)
        if host is None:
            if len(self.host_names) >= _HOST_CACHE_SIZE:
                self.host_names.clear()
            valid = _HOST.match(raw_host) is not None
            host = normalize_host(raw_host.decode("latin-1")) if valid else ""
            self.host_names[raw_host] = host
        return host

    def trusts(self, client_ip: str) -> bool:
        """Whether `client_ip` is a trusted proxy whose X-Forwarded-* are extended."""
        if not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


def admit(head: ParsedHead, policy: Policy) -> Forward | LocalReply:
    """Forward the request described by `head`, or say what prevu answers (checks above)."""
    method = head.method
    head_only = method == b"HEAD"
    if head.version not in ("1.1", "1.0"):
        return _local(head, 505, "HTTP Version Not Supported", "Use HTTP/1.1.", "", head_only)
    if method == b"CONNECT":
        return _local(head, 405, "Method Not Allowed", "CONNECT is not supported.", "", head_only)
    target = head.url
    hosts = head.hosts
    if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
        target, host_from_target = origin_form(target)
        if host_from_target is None:
            return _local(head, 400, "Bad Request", "Invalid request target.", "", head_only)
        hosts = [host_from_target]
    if len(hosts) != 1:
        return _local(
            head, 400, "Bad Request", "The request needs exactly one Host header.", "", head_only
        )
    raw_host = hosts[0]
    host = policy.host_name(raw_host)
    if not host:
        return _local(
            head, 400, "Bad Request", "The Host header is not a host name.", "", head_only
        )
    chunked = False
    content_length = None
    if head.special is not None:
        transfer_encoding = value(head, b"transfer-encoding")
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != b"chunked":
                return _local(
                    head,
                    501,
                    "Not Implemented",
                    "Only the chunked transfer coding is supported.",
                    host,
                    head_only,
                )
            chunked = True
        length = value(head, b"content-length")
        content_length = int(length) if length is not None else None
        if content_length is not None and content_length > policy.max_body:
            return _local(
                head, 413, "Content Too Large", "The request body is too large.", host, head_only
            )

    # What the hooks see is built once, and only when a hook is asked.
    hook_head: RequestHead | None = None
    if policy.interceptors:
        hook_head = _hook_head(head, target, raw_host, host, policy)
        for interceptor in policy.interceptors:
            reply = interceptor.intercept(hook_head)
            if reply is not None:
                return _hook_reply(head, reply, head_only)

    route = policy.routes.table.lookup(host)
    if route is None:
        return _local(
            head,
            404,
            "Not Found",
            "No preview or route is served at this address.",
            host,
            head_only,
        )
    user: bytes | None = None
    user_name: str | None = None
    if route.access == "private":
        if hook_head is None:
            hook_head = _hook_head(head, target, raw_host, host, policy)
        decision = policy.gate.check(route, hook_head)
        if not isinstance(decision, Allow):
            return _hook_reply(head, decision, head_only, robots(route))
        user_name = decision.user
        if user_name is not None:
            user = user_name.encode("utf-8")
    if route.state != "ready" or route.upstream is None:
        return _not_ready(head, route, host, head_only, policy, user_name)

    # An upgrade exactly when llhttp treats the request as one, so that the
    # two never disagree about where the HTTP stream ends.
    upgrade = head.upgrade
    if upgrade and (chunked or content_length):
        # llhttp hands everything after an Upgrade head to the new protocol,
        # so a body here has no safe meaning.
        return _local(
            head, 400, "Bad Request", "An Upgrade request cannot carry a body.", host, head_only
        )
    upstream_head = forward_head(
        head,
        target,
        raw_host,
        content_length=content_length,
        chunked=chunked,
        upgrade=upgrade,
        user=user,
        route_trusted=route.trusted,
        # Only a head with special headers can carry X-Forwarded-* to extend.
        client_trusted=head.special is not None and policy.trusts(head.client_ip),
        scheme=policy.scheme_bytes,
    )
    return Forward(
        route,
        route.upstream,
        method,
        upstream_head,
        host,
        chunked,
        content_length,
        head.keep_alive,
        head.version == "1.1",
        upgrade,
        route.trusted,
        user_name,
    )


def must_close(head: ParsedHead) -> bool:
    """Whether a reply prevu writes itself must close the connection."""
    if not head.keep_alive:
        return True
    # The client waits for 100 Continue before sending its body, which will
    # now never be read: only closing keeps the two sides in step.
    expect = value(head, b"expect")
    return expect is not None and b"100-continue" in expect.lower()


def hook_headers(head: ParsedHead, raw_host: bytes) -> list[tuple[bytes, bytes]]:
    """
    What interceptors and the gate see, names in lower case: the forwarded
    headers plus Host, cookies, the bypass token and the client's
    X-Forwarded-* (whether to believe those is the hook's call).
    """
    pieces: HeaderPieces = head.headers
    seen = [(b"host", raw_host)]
    seen += [(pieces[i].lower(), pieces[i + 2]) for i in range(0, len(pieces), 4)]
    for name in (b"cookie", b"x-prevu-bypass", *FORWARDED):
        seen += [(name, found) for found in values(head, name)]
    return seen


def _hook_head(
    head: ParsedHead, target: bytes, raw_host: bytes, host: str, policy: Policy
) -> RequestHead:
    return RequestHead(
        head.method, target, host, policy.scheme, head.client_ip, hook_headers(head, raw_host)
    )


def _hook_reply(
    head: ParsedHead, reply: Reply, head_only: bool, extra: list[tuple[bytes, bytes]] | None = None
) -> LocalReply:
    """The answer an interceptor or the gate gave (plus `extra` headers), framed."""
    close = must_close(head)
    headers = reply.headers + extra if extra else reply.headers
    data = simple_response(reply.status, reply.body, headers, close=close, head_only=head_only)
    return LocalReply(data, close)


def _local(
    head: ParsedHead, status: int, title: str, message: str, host: str, head_only: bool
) -> LocalReply:
    """An error page; only a 404 leaves the connection open (the request was well formed)."""
    close = status != 404 or must_close(head)
    data = simple_response(
        status, page(status, title, message, host), close=close, head_only=head_only
    )
    return LocalReply(data, close)


def _not_ready(
    head: ParsedHead,
    route: Route,
    host: str,
    head_only: bool,
    policy: Policy,
    user: str | None,
) -> LocalReply:
    """The page of a preview built, woken, failed, removed or awaiting approval (`pages`)."""
    reply = state_page(route, host, user, policy.links, policy.retry_after)
    close = must_close(head)
    data = simple_response(
        reply.status, reply.body, reply.headers, close=close, head_only=head_only
    )
    return LocalReply(data, close, route if route.state == "sleeping" else None)
