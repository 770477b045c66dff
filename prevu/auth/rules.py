"""
The rules of reviewer access that are not cryptography: where `next` may
point, which cookies are set with which attributes, who the client is, and
whether a request wants HTML. Pure functions over values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from attrs import frozen

from prevu.config import Config
from prevu.endpoints import endpoint_port

SESSION_COOKIE = "prevu_session"
CSRF_COOKIE = "prevu_csrf"
HANDOFF_PARAM = "prevu_auth"
SHARE_PARAM = "prevu_share"
BYPASS_HEADER = b"x-prevu-bypass"
USER_HEADER = b"x-prevu-user"
SHARE_USER = "~share"
BYPASS_USER = "~bypass"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@frozen
class AuthSettings:
    """What the login pages and the gate need to know about the deployment."""

    public_url: str
    domain: str
    session_ttl: float = 12 * 3600.0
    trusted_proxies: tuple[Network, ...] = ()
    http_port: int | None = None
    https_port: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> AuthSettings:
        return cls(
            public_url=config.server.public_url.rstrip("/"),
            domain=config.server.domain.lower().strip("."),
            session_ttl=config.auth.session_ttl,
            trusted_proxies=config.server.trusted_proxies,
            http_port=endpoint_port(config.server.http),
            https_port=endpoint_port(config.server.https),
        )

    def proxy_port(self, scheme: str) -> int | None:
        """The port prevu's proxy listens on for `scheme`, if known."""
        return self.https_port if scheme == "https" else self.http_port

    @property
    def origin(self) -> str:
        """The Origin browsers send for pages of the control app (scheme://host[:port])."""
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    @property
    def control_host(self) -> str:
        """The host name of `public_url`."""
        return (urlsplit(self.public_url).hostname or "").lower()

    @property
    def secure(self) -> bool:
        """Cookies get `Secure` when the control app is reached over HTTPS."""
        return self.public_url.startswith("https://")

    @property
    def cookie_domain(self) -> str | None:
        """
        The `Domain` attribute of the session cookie, or None for host-only.

        Browsers refuse a `Domain` that is a single label (Chromium drops
        `Domain=localhost` and `Domain=.localhost` set from
        `prevu.localhost`, checked with Chromium 13x), so for such domains the
        cookie is host-only and each preview host gets its own cookie through
        a login handoff (see docs/auth.md).
        """
        return self.domain if "." in self.domain else None

    def under_domain(self, host: str) -> bool:
        """Whether `host` is a host under `.<domain>`."""
        return host.endswith("." + self.domain) and len(host) > len(self.domain) + 1

    def covered_by_cookie(self, host: str) -> bool:
        """
        Whether the domain-wide session cookie reaches `host`: only when one is
        set, which needs the control host itself under the domain.
        """
        domain = self.cookie_domain
        if domain is None:
            return False

        def under(name: str) -> bool:
            return name == domain or name.endswith("." + domain)

        return under(self.control_host) and under(host)

    def login_url(self, next_url: str | None = None) -> str:
        """The login page, with `next` when given."""
        if next_url is None:
            return f"{self.public_url}/login"
        return f"{self.public_url}/login?next={quote(next_url, safe='')}"

    def home(self) -> str:
        return f"{self.public_url}/"


def safe_next(settings: AuthSettings, value: str | None) -> str | None:
    """
    `value` if it is a safe place to send a reviewer after login, else None.

    Allowed: http(s) URLs on the control host or on a host under
    `.<domain>` (any port), and paths on the control host (``/x``, not
    ``//x``). Refused: other schemes and hosts, user info, backslashes and
    control characters (which browsers "fix" into other hosts).
    """
    if not value or len(value) > 4096:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in value):
        return None
    if value.startswith("/"):
        if value.startswith("//"):
            return None
        return settings.public_url + value
    try:
        parts = urlsplit(value)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - the property validates the port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if host == settings.control_host or settings.under_domain(host):
        return value
    return None


def parse_cookies(headers: Iterable[bytes]) -> list[tuple[str, str]]:
    """All name=value pairs of the `Cookie` header lines, in order, duplicates kept."""
    pairs: list[tuple[str, str]] = []
    for header in headers:
        for item in header.decode("latin-1").split(";"):
            name, equals, value = item.strip().partition("=")
            if equals and name:
                pairs.append((name.strip(), value.strip().strip('"')))
    return pairs


def cookie_values(headers: Iterable[bytes], name: str) -> list[str]:
    """Every value sent for cookie `name` (a host-only and a domain cookie may both come)."""
    return [value for key, value in parse_cookies(headers) if key == name]


def set_cookie(
    name: str,
    value: str,
    *,
    max_age: float | None,
    secure: bool,
    domain: str | None = None,
    path: str = "/",
) -> bytes:
    """A `Set-Cookie` header value: always HttpOnly and SameSite=Lax."""
    parts = [f"{name}={value}", f"Path={path}"]
    if domain:
        parts.append(f"Domain={domain}")
    if max_age is not None:
        parts.append(f"Max-Age={max(0, int(max_age))}")
    parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    parts.append("SameSite=Lax")
    return "; ".join(parts).encode("latin-1")


def accepts_html(accept: bytes | None) -> bool:
    """Whether a request's Accept header asks for an HTML page (a browser)."""
    if not accept:
        return False
    return b"text/html" in accept.lower()


def client_address(peer: str, forwarded_for: Sequence[bytes], trusted: Sequence[Network]) -> str:
    """
    The address to throttle: the peer, or when the peer is a proxy we trust
    (loopback, where prevu's own proxy connects from, or `trusted_proxies`),
    the last address that proxy put in X-Forwarded-For.
    """
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not (address.is_loopback or any(address in network for network in trusted)):
        return peer
    entries = [e.strip() for line in forwarded_for for e in line.decode("latin-1").split(",")]
    for entry in reversed([e for e in entries if e]):
        try:
            candidate = ipaddress.ip_address(entry)
        except ValueError:
            return peer
        if not any(candidate in network for network in trusted):
            return str(candidate)
    return peer


def request_origin(scheme: str, host: str, public_url: str, proxy_port: int | None = None) -> str:
    """
    ``scheme://host[:port]`` of a request. When the host comes without its
    port and `public_url` names an explicit port (prevu reached on a
    non-standard port, as with the embedded defaults), the proxy's own port
    for `scheme` is assumed (else public_url's); when public_url has no port,
    neither does the origin (standard ports, or a load balancer in front).
    """
    bare = host.rsplit("]", 1)[-1]
    if ":" in bare:
        return f"{scheme}://{host}"
    try:
        parts = urlsplit(public_url)
        port = parts.port
    except ValueError:
        port = None
    if port:
        if proxy_port:
            port = proxy_port
        if port != (443 if scheme == "https" else 80):
            return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def split_param(target: str, name: str) -> tuple[str | None, str]:
    """The value of query parameter `name` in a request target, and the target without it."""
    parts = urlsplit(target)
    if not parts.query:
        return None, target
    found: str | None = None
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == name and found is None:
            found = value
        elif key != name:
            kept.append((key, value))
    if found is None:
        return None, target
    return found, urlunsplit(("", "", parts.path or "/", urlencode(kept), parts.fragment))


def add_param(url: str, name: str, value: str) -> str:
    """`url` with one more query parameter."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), (name, value)])
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, parts.fragment))


def share_url(public_url: str, host: str, token: str) -> str:
    """The URL of a share link: the preview host, with public_url's scheme and port."""
    parts = urlsplit(public_url)
    netloc = host + (f":{parts.port}" if parts.port else "")
    return add_param(urlunsplit((parts.scheme, netloc, "/", "", "")), SHARE_PARAM, token)
