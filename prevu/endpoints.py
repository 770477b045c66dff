"""
Twisted server endpoint strings (`tcp:8000:interface=127.0.0.1`), parsed once.

Pure core: `parse_endpoint` reads a description into an `Endpoint` value
(kind, interface, port, backlog, the other options) or raises `EndpointError`
saying why it is invalid; the config validates `[server] http/https/control`
with it, and everything else asks the value: the port a proxy listens on
(`endpoint_port`), the loopback address that reaches a listener
(`loopback_address`), the description with a listen backlog (`with_backlog`).

The grammar is Twisted's (`twisted.internet.endpoints.serverFromString`):
fields split on `:`, `key=value` fields are options, the others positional,
and a backslash escapes the next character. The kinds and options accepted are
those of Twisted's own server parsers (`tcp`, `tcp6`, `ssl`, `unix`,
`systemd`, `stdio`); a plugin kind from another package is refused, since
prevu cannot tell what it listens on. Nothing here opens a socket.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import frozen

from prevu.errors import EndpointError

DEFAULT_BACKLOG = 1024
"""
The listen backlog prevu asks for on proxy endpoints. Twisted's default is 50:
under a burst the kernel then drops SYNs and clients wait a second to retry.
"""

_SIGNATURES: Mapping[str, tuple[tuple[str, ...], frozenset[str]]] = {
    # kind: (positional names in Twisted's order, every option it takes)
    "tcp": (("port", "interface", "backlog"), frozenset({"port", "interface", "backlog"})),
    "tcp6": (("port", "backlog", "interface"), frozenset({"port", "interface", "backlog"})),
    "ssl": (
        ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog"),
        frozenset(
            {"port", "privateKey", "certKey", "sslmethod", "interface", "backlog",
             "extraCertChain", "dhParameters"}
        ),
    ),
    "unix": (("address", "mode", "backlog", "lockfile"),
             frozenset({"address", "mode", "backlog", "lockfile"})),
    "systemd": ((), frozenset({"domain", "index", "name"})),
    "stdio": ((), frozenset()),
}
_REQUIRED: Mapping[str, str] = {
    "tcp": "port", "tcp6": "port", "ssl": "port", "unix": "address", "systemd": "domain"
}
_NUMBERS = frozenset({"port", "backlog", "index"})
_DEFAULT_INTERFACE: Mapping[str, str] = {"tcp": "", "tcp6": "::", "ssl": ""}


@frozen
class Address:
    """A host (IP address literal) and TCP port to connect to."""

    host: str
    port: int


@frozen
class Endpoint:
    """
    One parsed server endpoint description.

    `kind` is the parser name (`tcp`, `tcp6`, `ssl`, `unix`, `systemd`,
    `stdio`); `port` is the TCP port (None for the kinds without one);
    `interface` is the address listened on as written (`""` for all IPv4
    addresses with `tcp`/`ssl`, `"::"` by default with `tcp6`); `backlog` is
    the listen backlog when given; `options` holds every option by name,
    positional ones included, as strings.
    """

    description: str
    kind: str
    options: Mapping[str, str]

    @property
    def port(self) -> int | None:
        """The TCP port (0: any free port), or None for unix, systemd and stdio."""
        value = self.options.get("port")
        return int(value) if value is not None else None

    @property
    def interface(self) -> str:
        """The interface listened on, as written (Twisted's default when not given)."""
        return self.options.get("interface", _DEFAULT_INTERFACE.get(self.kind, ""))

    @property
    def backlog(self) -> int | None:
        """The listen backlog when the description gives one."""
        value = self.options.get("backlog")
        return int(value) if value is not None else None

    @property
    def tcp(self) -> bool:
        """True for the kinds that listen on a TCP port."""
        return self.kind in ("tcp", "tcp6", "ssl")


def _split(text: str, separator: str) -> list[str]:
    """`text` split on every unescaped `separator`; escapes are kept for the next step."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out: list[str] = []
    escaped = False
    for char in text:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def parse_endpoint(description: str) -> Endpoint:
    """
    `description` as an Endpoint; EndpointError(description, reason) when it
    is not a server endpoint string Twisted's own parsers accept.
    """

    def refuse(reason: str) -> EndpointError:
        return EndpointError(description, reason)

    fields = _split(description, ":")
    kind = _unescape(fields[0])
    signature = _SIGNATURES.get(kind)
    if signature is None:
        kinds = ", ".join(sorted(_SIGNATURES))
        raise refuse(f"unknown endpoint type {kind!r} (one of {kinds})")
    positional_names, known = signature
    options: dict[str, str] = {}
    positional = 0
    for raw in fields[1:]:
        name, equals, value = (_unescape(part) for part in _split_once(raw))
        if not equals:
            if positional >= len(positional_names):
                raise refuse(f"too many positional fields for {kind}: {raw!r}")
            name, value = positional_names[positional], name
            positional += 1
        elif name not in known:
            raise refuse(f"unknown option {name!r} for {kind}")
        if name in options:
            raise refuse(f"{name} is given twice")
        if name in _NUMBERS and not (value.isascii() and value.isdigit()):
            raise refuse(f"{name} must be a whole number, got {value!r}")
        options[name] = value
    required = _REQUIRED.get(kind)
    if required is not None and required not in options:
        raise refuse(f"{kind} needs a {required}")
    if "port" in options and int(options["port"]) > 65535:
        raise refuse(f"port {options['port']} is over 65535")
    return Endpoint(description=description, kind=kind, options=options)


def _split_once(raw: str) -> tuple[str, str, str]:
    """`name`, `=`, `value` when `raw` holds an unescaped `=`; else (`raw`, "", "")."""
    parts = _split(raw, "=")
    if len(parts) == 1:
        return raw, "", ""
    return parts[0], "=", raw[len(parts[0]) + 1 :]


def endpoint_port(description: str | None) -> int | None:
    """The TCP port `description` listens on; None without one (unix) or when invalid."""
    if not description:
        return None
    try:
        return parse_endpoint(description).port
    except EndpointError:
        return None


def loopback_address(description: str) -> Address | None:
    """
    Where a local client reaches the listener of `description` (tcp and tcp6
    only): its interface, with the wildcard addresses replaced by loopback
    (`0.0.0.0`/none → `127.0.0.1`, `::` → `::1`). None for other kinds, port
    0 or an invalid description.
    """
    try:
        endpoint = parse_endpoint(description)
    except EndpointError:
        return None
    if endpoint.kind not in ("tcp", "tcp6") or not endpoint.port:
        return None
    interface = endpoint.interface
    if interface in ("", "0.0.0.0"):
        interface = "127.0.0.1" if endpoint.kind == "tcp" else "::1"
    elif interface == "::":
        interface = "::1"
    return Address(interface, endpoint.port)


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """`description` with `backlog=` added when it is TCP (tcp, tcp6, ssl) and gives none."""
    try:
        endpoint = parse_endpoint(description)
    except EndpointError:
        return description
    if endpoint.tcp and endpoint.backlog is None:
        return f"{description}:backlog={backlog}"
    return description
