"""
The route table: which upstream serves a `Host`.

Pure core. A `RouteTable` is an immutable snapshot: exact hosts in a dict (O(1)),
`*.suffix` wildcards in a second dict keyed by suffix, looked up from the most
specific suffix to the least. `RouteRegistry` holds the current table and
rebuilds and swaps it whole whenever one of its sources (static `[[routes]]`,
previews, ...) changes, so a lookup never sees a half-updated table. It is
called on the reactor thread only; worker threads hand results back through
the reactor first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal
from urllib.parse import urlsplit

from attrs import define, field, frozen

Access = Literal["private", "public"]
RouteState = Literal["ready", "building", "sleeping", "failed", "closed", "awaiting"]
"""What the proxy does for a route: forward ("ready"), wake and wait ("sleeping"),
or answer a page saying so ("building", "failed", "closed", "awaiting";
`prevu.proxy.pages`)."""

ROBOTS_HEADER = b"X-Robots-Tag: noindex\r\n"
"""The response header line of a `noindex` route, encoded once."""


@frozen
class Upstream:
    """Where requests for a route go: an HTTP/1.1 server at host:port."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """Parse ``http://host:port`` (port defaults to 80)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected http://host[:port], got {url!r}")
        return cls(parts.hostname, parts.port or 80)

    @property
    def key(self) -> tuple[str, int]:
        """The connection pool key."""
        return (self.host, self.port)


@frozen
class Route:
    """
    One host (or `*.domain` pattern) and what serves it.

    `state` other than "ready" makes the proxy answer a page instead of
    forwarding (`prevu.proxy.pages`): a self-refreshing 503 while a preview is
    built or woken from sleep ("building", "sleeping"), a 503 naming the
    failure ("failed", with the preview's error as `detail`), a 410 saying
    the preview was removed ("closed", `since` the close, seconds since the
    epoch), a 503 saying a fork's commit awaits a maintainer's approval
    before it is built ("awaiting", `commit` that commit's SHA). `preview`
    names the preview behind the route, if any; `repo` its repository (for
    per-repo access checks). Only a `trusted` route (prevu's control app) is
    sent the reviewer's session cookie.

    `noindex` routes (previews, unless their `[[repos]]` entry says
    `noindex = false`; never `[[routes]]`) get `X-Robots-Tag: noindex` on
    every response; the header line is encoded once, here, as
    `response_headers` (b"" otherwise), so the proxy's hot path only joins it.
    """

    host: str
    upstream: Upstream | None
    access: Access = "public"
    state: RouteState = "ready"
    preview: str | None = None
    repo: str | None = None
    trusted: bool = False  # prevu's own control app: it receives the session cookie
    detail: str | None = None  # why a "failed" route failed (the preview's error)
    since: float | None = None  # when a "closed" route's preview was closed (epoch seconds)
    noindex: bool = False  # X-Robots-Tag: noindex on every response
    commit: str | None = None  # the fork commit an "awaiting" route's preview waits on (SHA)
    response_headers: bytes = field(init=False, default=b"", eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.state == "ready" and self.upstream is None:
            raise ValueError(f"a ready route needs an upstream: {self.host}")
        if self.noindex:
            object.__setattr__(self, "response_headers", ROBOTS_HEADER)

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")


def normalize_host(host: str) -> str:
    """Lower-case a Host header value and strip its port and trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host.rstrip(".")


@frozen
class RouteTable:
    """An immutable snapshot of all routes."""

    exact: Mapping[str, Route] = field(factory=dict)
    wildcards: Mapping[str, Route] = field(factory=dict)

    @classmethod
    def build(cls, routes: Iterable[Route]) -> RouteTable:
        """Index routes; a later route for the same host wins."""
        exact: dict[str, Route] = {}
        wildcards: dict[str, Route] = {}
        for route in routes:
            if route.is_wildcard:
                wildcards[route.host[2:]] = route
            else:
                exact[route.host] = route
        return cls(exact, wildcards)

    def lookup(self, host: str) -> Route | None:
        """The route for an already normalized host, most specific first."""
        route = self.exact.get(host)
        if route is not None or not self.wildcards:
            return route
        dot = host.find(".")
        while dot != -1:
            suffix = host[dot + 1 :]
            route = self.wildcards.get(suffix)
            if route is not None:
                return route
            dot = host.find(".", dot + 1)
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcards)

    def __iter__(self) -> Iterator[Route]:
        yield from self.exact.values()
        yield from self.wildcards.values()


RouteListener = Callable[[RouteTable], None]


@define
class RouteRegistry:
    """
    The current route table, fed by named sources.

    Each source ("static", "previews", ...) owns its routes; `replace` swaps a
    source's routes and `put`/`remove` change one. Sources listed earlier in
    `priority` win when two sources claim the same host. Listeners (the ACME
    issuer, metrics) are told about every new table.
    """

    priority: tuple[str, ...] = ("control", "static", "previews")
    _sources: dict[str, dict[str, Route]] = field(factory=dict)
    table: RouteTable = field(factory=RouteTable)
    _listeners: list[RouteListener] = field(factory=list)

    def replace(self, source: str, routes: Iterable[Route]) -> None:
        """Make `routes` the whole of `source`'s routes."""
        self._sources[source] = {route.host: route for route in routes}
        self._rebuild()

    def put(self, source: str, route: Route) -> None:
        """Add or change one route of `source`."""
        self._sources.setdefault(source, {})[route.host] = route
        self._rebuild()

    def remove(self, source: str, host: str) -> Route | None:
        """Drop one route of `source`; returns it, or None if it was not there."""
        route = self._sources.get(source, {}).pop(host, None)
        if route is not None:
            self._rebuild()
        return route

    def get(self, source: str, host: str) -> Route | None:
        """The route `source` holds for `host` (exactly as put), or None."""
        return self._sources.get(source, {}).get(host)

    def routes(self, source: str) -> tuple[Route, ...]:
        """The routes `source` currently owns."""
        return tuple(self._sources.get(source, {}).values())

    def lookup(self, host: str) -> Route | None:
        """The route for a raw Host header value."""
        return self.table.lookup(normalize_host(host))

    def listen(self, listener: RouteListener) -> None:
        """Call `listener` with each new table (and once now)."""
        self._listeners.append(listener)
        listener(self.table)

    def _rebuild(self) -> None:
        ordered = sorted(
            self._sources,
            key=lambda s: self.priority.index(s) if s in self.priority else len(self.priority),
            reverse=True,
        )
        self.table = RouteTable.build(
            route for source in ordered for route in self._sources[source].values()
        )
        for listener in self._listeners:
            listener(self.table)
